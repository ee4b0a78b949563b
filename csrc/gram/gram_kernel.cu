// CUDA Gram kernels, upper-triangle tiles only, mirrored into the lower triangle. No torch headers.
//
// gram_tile_kernel (float32, float64; float16/bfloat16 where the loaded image predates sm_80):
//   one 64x64 tile per block (16x16 threads, 4x4 outputs each), features staged through shared
//   memory in chunks of 16 along L, float32 accumulation (float64 for float64).
// gram_mma_kernel (float16, bfloat16 on sm_80+): tensor cores (ldmatrix + mma.sync m16n8k16,
//   float32 accumulators). One 128x128 tile per block, 8 warps of 64x32 each; L staged in chunks
//   of 32 through a 3-stage cp.async pipeline (2-byte loads where 16-byte copies do not line up); when
//   the tiles cannot fill the GPU, L is split over blockIdx.y and gram_split_reduce_kernel sums
//   the float32 partial tiles in a fixed order (deterministic) and mirrors them.
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "common/cuda_check.h"
#include "common/cuda_dispatch.cuh"
#include "gram/gram_kernel.h"

namespace pyvision_ops {
namespace {

constexpr int kTile = kGramTile;
constexpr int kThreadsPerSide = kGramTileSide;  // 16 x 16 threads, each 4 x 4 outputs

template <typename scalar_t>
__global__ void __launch_bounds__(kGramTileThreads)
    gram_tile_kernel(const GramParams p, const scalar_t* __restrict__ features,
                     acc_type<scalar_t>* __restrict__ gram) {
  using acc_t = acc_type<scalar_t>;
  // +1 column of padding: the loaders write along the tile's rows.
  __shared__ acc_t a_tile[kGramTileChunk][kTile + 1];
  __shared__ acc_t b_tile[kGramTileChunk][kTile + 1];
  const int64_t tiles = (p.channels + kTile - 1) / kTile;
  int64_t tile_row, tile_col;
  triangle_tile(blockIdx.x, tiles, tile_row, tile_col);
  const int64_t row0 = tile_row * kTile, col0 = tile_col * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int thread = ty * kThreadsPerSide + tx;
  const auto load = [features](int64_t offset) { return static_cast<acc_t>(to_acc(features[offset])); };
  for (int64_t n = blockIdx.y; n < p.batch; n += gridDim.y) {
    acc_t acc[kGramTilePer][kGramTilePer] = {};
    for (int64_t l0 = 0; l0 < p.length; l0 += kGramTileChunk) {
      gram_tile_stage<acc_t>(p, n, l0, row0, col0, thread, load, a_tile, b_tile);
      __syncthreads();
      gram_tile_accumulate<acc_t>(a_tile, b_tile, tx, ty, acc);
      __syncthreads();
    }
    gram_tile_write<acc_t>(p, gram + n * p.channels * p.channels, row0, col0, tx, ty, acc);
  }
}

// ------------------------------------------------------------------------------------------------
// Tensor-core path (float16, bfloat16)
// ------------------------------------------------------------------------------------------------

constexpr int kMmaThreads = kGramMmaThreads;
constexpr int kMmaWarps = kMmaThreads / 32;
constexpr int kMmaStages = kGramMmaStages;
constexpr int kM16 = kGramMmaM16;
constexpr int kN8 = kGramMmaN8;
constexpr int kStageBytes = kGramMmaStageBytes;
constexpr int kMmaSmemBytes = kGramMmaSmemBytes;
constexpr int kTileElements = kGramMmaTileElements;
static_assert(kGramMmaTile == 2 * kGramMmaWarpRows && kMmaWarps == 2 * kGramMmaWarpsPerRow,
              "8 warps tile the block tile");
static_assert(kGramMmaChunk % 16 == 0 && kGramMmaTile % 16 == 0, "whole 16x16 blocks");
static_assert(kGramMmaPlanarPitch % 8 == 0 && kGramMmaChannelsLastPitch % 8 == 0, "16-byte aligned rows");
static_assert(kStageBytes % 128 == 0, "each staged operand starts 128-byte aligned");

// 16-byte global -> shared copy; with `valid` false nothing is read and the 16 bytes are zeroed.
__device__ PVO_INLINE void cp_async_16(unsigned shared_address, const void* global_source, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int source_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address), "l"(global_source),
               "r"(source_bytes)
               : "memory");
#endif
}

__device__ PVO_INLINE void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most `kPending` of this thread's committed copy groups are still in flight.
template <int kPending>
__device__ PVO_INLINE void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

// Four 8x8 matrices of 16-bit elements (see gram_mma_ldmatrix_lane); .trans for channels-last.
template <bool kTranspose>
__device__ PVO_INLINE void ldmatrix_x4(unsigned (&r)[4], unsigned shared_address) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if (kTranspose) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address)
                 : "memory");
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address)
                 : "memory");
  }
#endif
}

// d += a b: m16n8k16, row-major A, column-major B, float32 accumulators.
template <typename scalar_t>
__device__ PVO_INLINE void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if (std::is_same<scalar_t, __nv_bfloat16>::value) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

// Stages the part's chunk `local` into `operand` (a staged operand in shared memory): this
// thread's copies of GramMmaStager (gram.h), by cp.async or 2-byte loads, zeros past C and L.
template <bool kChannelsLast, bool kVector>
__device__ PVO_INLINE void stage_operand(const GramMmaStager<kChannelsLast, kVector>& stager,
                                         const unsigned short* __restrict__ features, unsigned short* operand,
                                         int64_t local) {
  stager.stage(local, [=](int index, int64_t offset, bool valid) {
    if (kVector) {
      cp_async_16(static_cast<unsigned>(__cvta_generic_to_shared(operand + index)), valid ? features + offset : features,
                  valid);
    } else {
      operand[index] = valid ? features[offset] : static_cast<unsigned short>(0);  // +0 in either type
    }
  });
}

// grid: (triangle tiles, L splits, batch items (looped past 65535)); kMmaThreads threads;
// kMmaSmemBytes of dynamic shared memory. Block (t, s) multiplies L-chunks
// [s * chunks_per_split, (s + 1) * chunks_per_split) for tile t. With one split it writes
// scale * tile into G's upper triangle and its mirror; with several, the raw float32 tile
// (all 128 x 128, zero-padded) into workspace[n][s][t] for gram_split_reduce_kernel.
template <typename scalar_t, bool kChannelsLast, bool kVector>
__global__ void __launch_bounds__(kMmaThreads, 2)
    gram_mma_kernel(const GramParams p, const unsigned short* __restrict__ features, float* __restrict__ gram,
                    float* __restrict__ workspace, int64_t chunks_per_split) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // Never launched: plan_gram_matrix sends images built for older archs to gram_tile_kernel
  // (the PTX helpers above are empty there).
  __trap();
#endif
  extern __shared__ __align__(128) unsigned char gram_shared[];
  const unsigned shared_base = static_cast<unsigned>(__cvta_generic_to_shared(gram_shared));

  const int64_t C = p.channels, L = p.length;
  const int64_t tiles = (C + kGramMmaTile - 1) / kGramMmaTile;
  int64_t tile_row, tile_col;
  triangle_tile(blockIdx.x, tiles, tile_row, tile_col);
  const bool diagonal = tile_row == tile_col;  // rows and columns are the same channels: staged once
  const int64_t row0 = tile_row * kGramMmaTile, col0 = tile_col * kGramMmaTile;
  const int64_t chunks = (L + kGramMmaChunk - 1) / kGramMmaChunk;
  const int64_t chunk_begin = static_cast<int64_t>(blockIdx.y) * chunks_per_split;
  const int64_t chunk_end = chunk_begin + chunks_per_split < chunks ? chunk_begin + chunks_per_split : chunks;
  const int64_t my_chunks = chunk_end > chunk_begin ? chunk_end - chunk_begin : 0;

  const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  int warp_row, warp_col;
  gram_mma_warp_origin(warp, warp_row, warp_col);
  // In a diagonal tile, blocks wholly below the diagonal are never written: their products are
  // skipped (warp-uniform conditions), and a warp with only such blocks skips the loop body.
  const bool warp_idle = gram_mma_warp_idle(diagonal, warp_row, warp_col);
  // ldmatrix lane addresses (bytes) of the warp's first 16x16 A block and first B block.
  const unsigned a_lane = gram_mma_ldmatrix_byte(kChannelsLast, false, lane, warp_row, 0);
  const unsigned b_lane = gram_mma_ldmatrix_byte(kChannelsLast, true, lane, warp_col, 0);
  // Byte steps between 16x16 blocks: 16 rows, 16 positions of k.
  const unsigned rows16 = 2u * gram_mma_stage_index(kChannelsLast, 16, 0);
  const unsigned k16 = 2u * gram_mma_stage_index(kChannelsLast, 0, 16);
  const bool split = gridDim.y > 1;
  const float scale = static_cast<float>(p.scale);

  for (int64_t n = blockIdx.z; n < p.batch; n += gridDim.z) {
    float acc[kM16][kN8][4];
#pragma unroll
    for (int i = 0; i < kM16; ++i) {
#pragma unroll
      for (int j = 0; j < kN8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
      }
    }

    const int64_t first_position = chunk_begin * kGramMmaChunk;
    const GramMmaStager<kChannelsLast, kVector> row_stager(p, n, row0, first_position, thread);
    const GramMmaStager<kChannelsLast, kVector> col_stager(p, n, col0, first_position, thread);
    // Chunk `local` goes to stage local % kMmaStages: rows operand, then columns operand.
    auto stage_chunk = [&](int64_t local) {
      unsigned short* rows = reinterpret_cast<unsigned short*>(gram_shared) +
                             static_cast<int>(local % kMmaStages) * 2 * kGramMmaStageElements;
      stage_operand(row_stager, features, rows, local);
      if (!diagonal) stage_operand(col_stager, features, rows + kGramMmaStageElements, local);
    };

    // Pipeline: one commit group per chunk (empty past the end), kMmaStages - 1 chunks in flight.
#pragma unroll
    for (int s = 0; s < kMmaStages - 1; ++s) {
      if (s < my_chunks) stage_chunk(s);
      cp_async_commit();
    }
    for (int64_t local = 0; local < my_chunks; ++local) {
      cp_async_wait<kMmaStages - 2>();  // this thread's copies of chunk `local` have landed
      // Everyone's copies of chunk `local` are visible, and everyone is done with chunk
      // local - 1, whose stage the next line refills.
      __syncthreads();
      if (local + kMmaStages - 1 < my_chunks) stage_chunk(local + kMmaStages - 1);
      cp_async_commit();

      const unsigned a_stage = shared_base + static_cast<unsigned>(local % kMmaStages) * 2u * kStageBytes;
      const unsigned b_stage = diagonal ? a_stage : a_stage + kStageBytes;
      if (!warp_idle) {
#pragma unroll
        for (int kk = 0; kk < kGramMmaChunk / 16; ++kk) {
          unsigned b[kN8 / 2][4];  // each: two n8 blocks x (k 0-7, k 8-15)
#pragma unroll
          for (int j = 0; j < kN8 / 2; ++j) ldmatrix_x4<kChannelsLast>(b[j], b_stage + b_lane + j * rows16 + kk * k16);
#pragma unroll
          for (int i = 0; i < kM16; ++i) {
            unsigned a[4];
            ldmatrix_x4<kChannelsLast>(a, a_stage + a_lane + i * rows16 + kk * k16);
#pragma unroll
            for (int j = 0; j < kN8; ++j) {
              // Skip blocks wholly below the diagonal (first row past last column).
              if (!gram_mma_block_skipped(diagonal, warp_row, warp_col, i, j)) {
                mma_16816<scalar_t>(acc[i][j], a, b[j / 2][2 * (j % 2)], b[j / 2][2 * (j % 2) + 1]);
              }
            }
          }
        }
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with the stages before the next batch item refills them

    if (split) {
      // The whole tile, zero-padded, so that the reduction reads only written memory.
      float* part = workspace + gram_mma_partial_offset(n, gridDim.y, blockIdx.y, gridDim.x, blockIdx.x);
#pragma unroll
      for (int i = 0; i < kM16; ++i) {
#pragma unroll
        for (int j = 0; j < kN8; ++j) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            int r, c;
            gram_mma_accumulator_coords(lane, 2 * half, r, c);
            r += warp_row + 16 * i;
            c += warp_col + 8 * j;
            *reinterpret_cast<float2*>(part + r * kGramMmaTile + c) =
                make_float2(acc[i][j][2 * half], acc[i][j][2 * half + 1]);
          }
        }
      }
    } else {
      // Elements with column >= row inside C, written to (row, column) and (column, row).
      float* g = gram + n * C * C;
#pragma unroll
      for (int i = 0; i < kM16; ++i) {
#pragma unroll
        for (int j = 0; j < kN8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            int r, c;
            gram_mma_accumulator_coords(lane, e, r, c);
            const int64_t gr = row0 + warp_row + 16 * i + r, gc = col0 + warp_col + 8 * j + c;
            if (gr < C && gc < C && gc >= gr) {
              const float v = acc[i][j][e] * scale;
              g[gr * C + gc] = v;
              g[gc * C + gr] = v;
            }
          }
        }
      }
    }
  }
}

// Sums the split-K partial tiles of gram_mma_kernel in split order, scales, and writes G's upper
// triangle and its mirror. grid: (triangle tiles * 16 blocks of 32x32, batch items (looped));
// 32x8 threads. The mirror goes through shared memory so that both writes are coalesced and
// carry the same float.
constexpr int kReduceSide = 32;
constexpr int kReduceRows = 8;
constexpr int kReduceBlocksPerSide = kGramMmaTile / kReduceSide;  // 4
constexpr int kReduceBlocksPerTile = kReduceBlocksPerSide * kReduceBlocksPerSide;

__global__ void __launch_bounds__(kReduceSide * kReduceRows)
    gram_split_reduce_kernel(const GramParams p, const float* __restrict__ workspace, int64_t splits,
                             float* __restrict__ gram) {
  __shared__ float block_values[kReduceSide][kReduceSide + 1];
  const int64_t C = p.channels;
  const int64_t tiles = (C + kGramMmaTile - 1) / kGramMmaTile;
  const int64_t tile_count = triangle_tile_count(tiles);
  const int64_t tile = blockIdx.x / kReduceBlocksPerTile;
  const int sub = static_cast<int>(blockIdx.x % kReduceBlocksPerTile);
  const int sub_row = sub / kReduceBlocksPerSide, sub_col = sub % kReduceBlocksPerSide;
  int64_t tile_row, tile_col;
  triangle_tile(tile, tiles, tile_row, tile_col);
  // Block-uniform exits, before any barrier: wholly below the diagonal, or wholly past C.
  if (tile_row == tile_col && sub_row > sub_col) return;
  const int64_t r0 = tile_row * kGramMmaTile + sub_row * kReduceSide;
  const int64_t c0 = tile_col * kGramMmaTile + sub_col * kReduceSide;
  if (r0 >= C || c0 >= C) return;
  const float scale = static_cast<float>(p.scale);
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t n = blockIdx.y; n < p.batch; n += gridDim.y) {
    float* g = gram + n * C * C;
#pragma unroll
    for (int q = 0; q < kReduceSide / kReduceRows; ++q) {
      const int r = ty + q * kReduceRows;
      const int64_t e = static_cast<int64_t>(sub_row * kReduceSide + r) * kGramMmaTile + sub_col * kReduceSide + tx;
      float sum = 0.0f;
      for (int64_t s = 0; s < splits; ++s) sum += workspace[gram_mma_partial_offset(n, splits, s, tile_count, tile) + e];
      const float v = sum * scale;
      block_values[r][tx] = v;
      const int64_t gr = r0 + r, gc = c0 + tx;
      if (gr < C && gc < C && gc >= gr) g[gr * C + gc] = v;
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kReduceSide / kReduceRows; ++q) {
      const int cl = ty + q * kReduceRows;
      const int64_t gr = r0 + tx, gc = c0 + cl;
      if (gr < C && gc < C && gc > gr) g[gc * C + gr] = block_values[tx][cl];
    }
    __syncthreads();  // block_values is read before the next batch item overwrites it
  }
}

using MmaKernel = void (*)(const GramParams, const unsigned short*, float*, float*, int64_t);

template <typename scalar_t>
MmaKernel mma_kernel_for(bool channels_last, bool vector) {
  if (channels_last) return vector ? gram_mma_kernel<scalar_t, true, true> : gram_mma_kernel<scalar_t, true, false>;
  return vector ? gram_mma_kernel<scalar_t, false, true> : gram_mma_kernel<scalar_t, false, false>;
}

constexpr int kMmaKernelVariants = 8;  // {float16, bfloat16} x {planar, channels-last} x {2-, 16-byte}

// The tensor-core kernel for these features, or null (float32 / float64); *variant (if given)
// gets its index below kMmaKernelVariants.
MmaKernel select_mma_kernel(const GramParams& p, ScalarKind scalar, const void* features, int* variant = nullptr) {
  // 16-byte copies need the contiguous dimension a multiple of 8 elements and an aligned base
  // (a sliced channels-last view may start anywhere).
  const int64_t contiguous = p.channels_last ? p.channels : p.length;
  const bool vector = contiguous % 8 == 0 && reinterpret_cast<std::uintptr_t>(features) % 16 == 0;
  if (variant != nullptr) {
    *variant = (scalar == ScalarKind::BFloat16 ? 4 : 0) + (p.channels_last ? 2 : 0) + (vector ? 1 : 0);
  }
  switch (scalar) {
    case ScalarKind::Float16:
      return mma_kernel_for<__half>(p.channels_last, vector);
    case ScalarKind::BFloat16:
      return mma_kernel_for<__nv_bfloat16>(p.channels_last, vector);
    default:
      return nullptr;
  }
}

// How many blocks of `kernel` the current device holds at once (multiprocessors x resident
// blocks), or 0 where the kernel cannot run there (an image older than compute_80 holds only the
// trap stub; or not one block fits). Asked of the driver once per device and variant (this also
// raises the kernel's dynamic shared memory limit on that device); later calls read the cache.
cudaError_t mma_capacity(MmaKernel kernel, int variant, int64_t* capacity) {
  static std::atomic<int64_t> known[kMmaKernelVariants][kDeviceSlots] = {};  // capacity, or -1 for none
  int64_t blocks = 0;
  PVO_RETURN_IF_CUDA_ERROR(once_per_device(
      known[variant],
      [kernel](int device, int64_t* value) -> cudaError_t {
        cudaFuncAttributes attributes;
        PVO_RETURN_IF_CUDA_ERROR(cudaFuncGetAttributes(&attributes, kernel));
        int multiprocessors = 0, resident = 0;
        if (attributes.ptxVersion >= 80) {
          PVO_RETURN_IF_CUDA_ERROR(
              cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMmaSmemBytes));
          PVO_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device));
          PVO_RETURN_IF_CUDA_ERROR(
              cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kMmaThreads, kMmaSmemBytes));
        }
        const int64_t count = static_cast<int64_t>(multiprocessors) * (resident > 0 ? resident : 0);
        *value = count > 0 ? count : -1;
        return cudaSuccess;
      },
      &blocks));
  *capacity = blocks > 0 ? blocks : 0;
  return cudaSuccess;
}

int64_t mma_tile_count(const GramParams& p) {
  return triangle_tile_count((p.channels + kGramMmaTile - 1) / kGramMmaTile);
}

int64_t mma_chunk_count(const GramParams& p) { return (p.length + kGramMmaChunk - 1) / kGramMmaChunk; }

unsigned int batch_grid(int64_t batch) { return static_cast<unsigned int>(batch < 65535 ? batch : 65535); }

}  // namespace

cudaError_t plan_gram_matrix(const GramParams& p, ScalarKind scalar, const void* features, GramLaunchPlan* plan) {
  *plan = GramLaunchPlan{};
  int variant = 0;
  const MmaKernel kernel = select_mma_kernel(p, scalar, features, &variant);
  if (kernel == nullptr || p.batch == 0 || p.channels == 0 || p.length == 0) return cudaSuccess;
  int64_t capacity = 0;
  PVO_RETURN_IF_CUDA_ERROR(mma_capacity(kernel, variant, &capacity));
  if (capacity < 1) return cudaSuccess;  // no tensor-core image, or no block fits: the CUDA-core kernel
  plan->tensor_cores = true;
  const int64_t tile_count = mma_tile_count(p);
  plan->splits = gram_mma_split_count(tile_count * p.batch, mma_chunk_count(p), capacity);
  plan->workspace_elements = plan->splits > 1 ? plan->splits * p.batch * tile_count * kTileElements : 0;
  return cudaSuccess;
}

cudaError_t launch_gram_matrix(const GramParams& p, ScalarKind scalar, const GramLaunchPlan& plan,
                               const void* features, void* gram, float* workspace, cudaStream_t stream) {
  if (p.batch == 0 || p.channels == 0) return cudaSuccess;
  if (plan.tensor_cores) {
    const MmaKernel kernel = select_mma_kernel(p, scalar, features);
    if (kernel == nullptr || plan.splits < 1 || (plan.splits > 1 && workspace == nullptr)) return cudaErrorInvalidValue;
    const int64_t tile_count = mma_tile_count(p);
    const int64_t chunks_per_split = gram_mma_chunks_per_split(mma_chunk_count(p), plan.splits);
    const dim3 grid(static_cast<unsigned int>(tile_count), static_cast<unsigned int>(plan.splits), batch_grid(p.batch));
    kernel<<<grid, kMmaThreads, kMmaSmemBytes, stream>>>(p, static_cast<const unsigned short*>(features),
                                                         static_cast<float*>(gram), workspace, chunks_per_split);
    PVO_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    if (plan.splits > 1) {
      const dim3 reduce_grid(static_cast<unsigned int>(tile_count * kReduceBlocksPerTile), batch_grid(p.batch));
      gram_split_reduce_kernel<<<reduce_grid, dim3(kReduceSide, kReduceRows), 0, stream>>>(
          p, workspace, plan.splits, static_cast<float*>(gram));
    }
    PVO_RETURN_LAST_LAUNCH_ERROR();
  }
  const int64_t tiles = (p.channels + kTile - 1) / kTile;
  const dim3 grid(static_cast<unsigned int>(triangle_tile_count(tiles)), batch_grid(p.batch));
  const dim3 block(kThreadsPerSide, kThreadsPerSide);
  return dispatch_scalar(scalar, [&](auto tag) {
    using scalar_t = decltype(tag);
    gram_tile_kernel<scalar_t><<<grid, block, 0, stream>>>(p, static_cast<const scalar_t*>(features),
                                                           static_cast<acc_type<scalar_t>*>(gram));
    PVO_RETURN_LAST_LAUNCH_ERROR();
  });
}

}  // namespace pyvision_ops
