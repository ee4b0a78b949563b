// CUDA Gram kernel: one 64x64 tile of the upper triangle per block (16x16 threads, 4x4 outputs
// each), features staged through shared memory in chunks of 16 along L, float32 accumulation
// (float64 for float64). No torch headers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/cuda_check.h"
#include "gram/gram_kernel.h"

namespace pyvision_ops {
namespace {

constexpr int kTile = 64;
constexpr int kChunk = 16;
constexpr int kThreadsPerSide = 16;  // 16 x 16 threads, each 4 x 4 outputs

template <typename T> struct GramAcc { using type = float; };
template <> struct GramAcc<double> { using type = double; };

__device__ PVO_INLINE float widen(float v) { return v; }
__device__ PVO_INLINE double widen(double v) { return v; }
__device__ PVO_INLINE float widen(__half v) { return __half2float(v); }
__device__ PVO_INLINE float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerSide * kThreadsPerSide)
    gram_tile_kernel(const GramParams p, const scalar_t* __restrict__ features,
                     typename GramAcc<scalar_t>::type* __restrict__ gram) {
  using acc_t = typename GramAcc<scalar_t>::type;
  // +1 column of padding: the loaders write along the tile's rows.
  __shared__ acc_t a_tile[kChunk][kTile + 1];
  __shared__ acc_t b_tile[kChunk][kTile + 1];
  const int64_t C = p.channels, L = p.length;
  const int64_t tiles = (C + kTile - 1) / kTile;
  int64_t tile_row, tile_col;
  triangle_tile(blockIdx.x, tiles, tile_row, tile_col);
  const int64_t row0 = tile_row * kTile, col0 = tile_col * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int thread = ty * kThreadsPerSide + tx;
  for (int64_t n = blockIdx.y; n < p.batch; n += gridDim.y) {
    acc_t acc[4][4] = {};
    for (int64_t l0 = 0; l0 < L; l0 += kChunk) {
      // 64 x 16 elements per operand, 4 per thread. Planar: consecutive threads walk L;
      // channels-last: consecutive threads walk C (both contiguous in memory).
      for (int e = thread; e < kTile * kChunk; e += kThreadsPerSide * kThreadsPerSide) {
        int i, k;
        if (p.channels_last) {
          i = e % kTile;
          k = e / kTile;
        } else {
          k = e % kChunk;
          i = e / kChunk;
        }
        const int64_t l = l0 + k;
        const int64_t ra = row0 + i, rb = col0 + i;
        a_tile[k][i] = (ra < C && l < L) ? static_cast<acc_t>(widen(features[p.feature_offset(n, ra, l)])) : acc_t(0);
        b_tile[k][i] = (rb < C && l < L) ? static_cast<acc_t>(widen(features[p.feature_offset(n, rb, l)])) : acc_t(0);
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        acc_t a[4], b[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          a[q] = a_tile[k][ty * 4 + q];
          b[q] = b_tile[k][tx * 4 + q];
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[r][c] += a[r] * b[c];
        }
      }
      __syncthreads();
    }
    acc_t* g = gram + n * C * C;
    const acc_t scale = static_cast<acc_t>(p.scale);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t gr = row0 + ty * 4 + r, gc = col0 + tx * 4 + c;
        if (gr < C && gc < C && gc >= gr) {
          const acc_t v = acc[r][c] * scale;
          g[gr * C + gc] = v;
          g[gc * C + gr] = v;
        }
      }
    }
  }
}

}  // namespace

cudaError_t launch_gram_matrix(const GramParams& p, ScalarKind scalar, const void* features, void* gram,
                               cudaStream_t stream) {
  if (p.batch == 0 || p.channels == 0) return cudaSuccess;
  const int64_t tiles = (p.channels + kTile - 1) / kTile;
  const dim3 grid(static_cast<unsigned int>(triangle_tile_count(tiles)),
                  static_cast<unsigned int>(p.batch < 65535 ? p.batch : 65535));
  const dim3 block(kThreadsPerSide, kThreadsPerSide);
  switch (scalar) {
    case ScalarKind::Float32:
      gram_tile_kernel<float><<<grid, block, 0, stream>>>(p, static_cast<const float*>(features),
                                                          static_cast<float*>(gram));
      break;
    case ScalarKind::Float64:
      gram_tile_kernel<double><<<grid, block, 0, stream>>>(p, static_cast<const double*>(features),
                                                           static_cast<double*>(gram));
      break;
    case ScalarKind::Float16:
      gram_tile_kernel<__half><<<grid, block, 0, stream>>>(p, static_cast<const __half*>(features),
                                                           static_cast<float*>(gram));
      break;
    case ScalarKind::BFloat16:
      gram_tile_kernel<__nv_bfloat16><<<grid, block, 0, stream>>>(p, static_cast<const __nv_bfloat16*>(features),
                                                                  static_cast<float*>(gram));
      break;
  }
  PVO_RETURN_LAST_LAUNCH_ERROR();
}

}  // namespace pyvision_ops
