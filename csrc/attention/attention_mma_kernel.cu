// The attention family's tensor-core forward (float16 / bfloat16 inputs, float32 accumulation),
// FlashAttention-2's structure with `mma.sync.m16n8k16`: a block of 4 warps owns 64 queries of
// one (batch, head); its Q tile stays in shared memory; key tiles of 64 keys (K and V) are loaded
// into shared memory one after the other; each warp multiplies its 16 query rows against the key
// tile (S = Q K^T, 8 accumulator tiles of 16 x 8), applies the scale and the mask rule of
// attention.h (attention_mask_term: causal, additive mask, keys past S), takes the online-softmax
// step of attention.h per row (the row's 64 scores live in the 4 lanes of a lane group: two
// shuffles give its maximum), turns P into the A operand of the next product in registers (the
// accumulator layout of two adjacent 8-key tiles is the operand layout of one 16-key slice) and
// adds P V into its output accumulators. Causal blocks stop at the last key tile their last query
// sees. The row sums stay per lane and are added across the group once at the end.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .row.col, 16-bit inputs): lane = 4 g + t;
//   A (16 x 16, row-major): a0 = (g, 2t..2t+1), a1 = (g + 8, 2t..), a2 = (g, 2t + 8..), a3 = (g + 8, 2t + 8..)
//   B (16 x 8, "col"):      b0 = (k = 2t..2t+1, n = g), b1 = (k = 2t + 8.., n = g)
//   C (16 x 8, float):      c0, c1 = (g, 2t..2t+1), c2, c3 = (g + 8, 2t..2t+1)
// so for S = Q K^T the B operand pairs are adjacent elements of one K row in shared memory.
//
// Scope: E == Ev in {64, 128}, no dropout (the glue sends other calls to the float32 kernels).
// Never run on a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "attention/attention.h"
#include "attention/attention_kernel.h"
#include "common/cuda_check.h"

namespace pyvision_ops {
namespace {

constexpr int kMmaQueries = 64;  // per block: 4 warps x 16 rows
constexpr int kMmaKeys = 64;     // per key tile
constexpr int kMmaThreads = 128;
constexpr int kSmemPad = 8;      // 16 bytes of padding per shared row: rows start in different banks

template <typename H>
struct HalfPair;

template <>
struct HalfPair<__half> {
  __device__ static uint32_t pack(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
  __device__ static uint32_t pack(__half lo, __half hi) {
    const __half2 v = __halves2half2(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
  __device__ static void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct HalfPair<__nv_bfloat16> {
  __device__ static uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
  __device__ static uint32_t pack(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    const __nv_bfloat162 v = __halves2bfloat162(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
  __device__ static void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// rows x D elements of a row-major (.., D) matrix into a shared tile with row stride D + pad,
// zeros past `valid` rows; 16-byte vectors (D is a multiple of 8, rows are 16-byte aligned).
template <typename H, int D>
__device__ void load_tile(H* tile, const H* src, int64_t valid) {
  constexpr int kVectorsPerRow = D / 8;
  for (int idx = threadIdx.x; idx < kMmaKeys * kVectorsPerRow; idx += kMmaThreads) {
    const int r = idx / kVectorsPerRow, c = (idx % kVectorsPerRow) * 8;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (r < valid) value = *reinterpret_cast<const uint4*>(src + static_cast<int64_t>(r) * D + c);
    *reinterpret_cast<uint4*>(tile + r * (D + kSmemPad) + c) = value;
  }
}

template <typename H, int D>
__global__ void __launch_bounds__(kMmaThreads)
    attention_forward_mma_kernel(const AttentionParams p, const H* __restrict__ q, const H* __restrict__ k,
                                 const H* __restrict__ v, float* __restrict__ out, float* __restrict__ lse,
                                 float* __restrict__ stats) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  H* qs = reinterpret_cast<H*>(smem_raw);
  H* ks = qs + kMmaQueries * (D + kSmemPad);
  H* vs = ks + kMmaKeys * (D + kSmemPad);
  constexpr int kStride = D + kSmemPad;

  const int64_t bh = blockIdx.y;
  const int64_t b = bh / p.heads, h = bh % p.heads;
  const int64_t kv = b * p.kv_heads + h / p.group();
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kMmaQueries;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int r0 = warp * 16;  // the warp's first row in the block's tile

  load_tile<H, D>(qs, q + (bh * p.q_len + i0) * D, p.q_len - i0);

  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows r0 + g and r0 + g + 8
  const int64_t rows_i[2] = {i0 + r0 + g, i0 + r0 + g + 8};
  const float scale = static_cast<float>(p.scale);
  const int64_t last_query = (i0 + kMmaQueries < p.q_len ? i0 + kMmaQueries : p.q_len) - 1;
  const int64_t keys = p.causal ? (last_query + 1 < p.kv_len ? last_query + 1 : p.kv_len) : p.kv_len;

  for (int64_t j0 = 0; j0 < keys; j0 += kMmaKeys) {
    __syncthreads();  // the previous tile's readers are done (and, the first time, Q is loaded)
    load_tile<H, D>(ks, k + (kv * p.kv_len + j0) * D, p.kv_len - j0);
    load_tile<H, D>(vs, v + (kv * p.kv_len + j0) * D, p.kv_len - j0);
    __syncthreads();

    float s[kMmaKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kMmaKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D; kk += 16) {
      uint32_t a[4];
      a[0] = *reinterpret_cast<const uint32_t*>(qs + (r0 + g) * kStride + kk + 2 * t);
      a[1] = *reinterpret_cast<const uint32_t*>(qs + (r0 + g + 8) * kStride + kk + 2 * t);
      a[2] = *reinterpret_cast<const uint32_t*>(qs + (r0 + g) * kStride + kk + 8 + 2 * t);
      a[3] = *reinterpret_cast<const uint32_t*>(qs + (r0 + g + 8) * kStride + kk + 8 + 2 * t);
#pragma unroll
      for (int n = 0; n < kMmaKeys / 8; ++n) {
        const H* krow = ks + (n * 8 + g) * kStride + kk;
        HalfPair<H>::mma(s[n], a, *reinterpret_cast<const uint32_t*>(krow + 2 * t),
                         *reinterpret_cast<const uint32_t*>(krow + 8 + 2 * t));
      }
    }

    // Scale and mask (attention.h's rule), then the online-softmax step of the lane's two rows.
    float block_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kMmaKeys / 8; ++n) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t i = rows_i[c / 2], j = j0 + n * 8 + 2 * t + (c % 2);
        float value = -INFINITY;
        if (j < p.kv_len && i < p.q_len) {
          const float mask = attention_mask_term<float>(p, b, h, i, j);
          value = mask == -INFINITY ? -INFINITY : s[n][c] * scale + mask;
        }
        s[n][c] = value;
        block_max[c / 2] = value > block_max[c / 2] ? value : block_max[c / 2];
      }
    }
    float factor[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      block_max[r] = fmaxf(block_max[r], __shfl_xor_sync(0xffffffffu, block_max[r], 1));
      block_max[r] = fmaxf(block_max[r], __shfl_xor_sync(0xffffffffu, block_max[r], 2));
      factor[r] = online_softmax_rescale(&m[r], block_max[r]);
      l[r] *= factor[r];
    }
#pragma unroll
    for (int n = 0; n < kMmaKeys / 8; ++n) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const float w = softmax_weight(s[n][c], m[c / 2]);
        s[n][c] = w;
        l[c / 2] += w;
      }
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[n][0] *= factor[0];
      o[n][1] *= factor[0];
      o[n][2] *= factor[1];
      o[n][3] *= factor[1];
    }

    // O += P V: keys in slices of 16 (accumulator tiles 2 kc and 2 kc + 1 form the A operand).
#pragma unroll
    for (int kc = 0; kc < kMmaKeys / 16; ++kc) {
      uint32_t a[4];
      a[0] = HalfPair<H>::pack(s[2 * kc][0], s[2 * kc][1]);
      a[1] = HalfPair<H>::pack(s[2 * kc][2], s[2 * kc][3]);
      a[2] = HalfPair<H>::pack(s[2 * kc + 1][0], s[2 * kc + 1][1]);
      a[3] = HalfPair<H>::pack(s[2 * kc + 1][2], s[2 * kc + 1][3]);
      const H* v0 = vs + (kc * 16 + 2 * t) * kStride;
      const H* v1 = vs + (kc * 16 + 8 + 2 * t) * kStride;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const int col = n * 8 + g;
        const uint32_t b0 = HalfPair<H>::pack(v0[col], v0[kStride + col]);
        const uint32_t b1 = HalfPair<H>::pack(v1[col], v1[kStride + col]);
        HalfPair<H>::mma(o[n], a, b0, b1);
      }
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = rows_i[r];
    if (i >= p.q_len) continue;
    const int64_t row = bh * p.q_len + i;
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    float* dst = out + row * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      dst[n * 8 + 2 * t] = o[n][2 * r] * inv;
      dst[n * 8 + 2 * t + 1] = o[n][2 * r + 1] * inv;
    }
    if (t == 0) {
      lse[row] = attention_row_lse(m[r], l[r]);
      stats[2 * row] = m[r];
      stats[2 * row + 1] = l[r] > 0.0f ? attention_log(l[r]) : -INFINITY;
    }
  }
}

template <typename H, int D>
cudaError_t launch_mma(const AttentionParams& p, const void* q, const void* k, const void* v, float* out, float* lse,
                       float* stats, cudaStream_t stream) {
  const size_t smem = sizeof(H) * static_cast<size_t>(kMmaQueries + 2 * kMmaKeys) * (D + kSmemPad);
  const cudaError_t attribute = cudaFuncSetAttribute(attention_forward_mma_kernel<H, D>,
                                                     cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                     static_cast<int>(smem));
  if (attribute != cudaSuccess) return attribute;
  const int64_t tiles = (p.q_len + kMmaQueries - 1) / kMmaQueries;
  const int64_t heads = p.batch * p.heads;
  if (tiles > 0x7fffffff || heads > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned int>(tiles), static_cast<unsigned int>(heads));
  attention_forward_mma_kernel<H, D><<<grid, kMmaThreads, smem, stream>>>(
      p, static_cast<const H*>(q), static_cast<const H*>(k), static_cast<const H*>(v), out, lse, stats);
  PVO_RETURN_LAST_LAUNCH_ERROR();
}

}  // namespace

bool attention_mma_supported(ScalarKind scalar, const AttentionParams& p) {
  return (scalar == ScalarKind::Float16 || scalar == ScalarKind::BFloat16) && p.head_dim == p.value_dim &&
         (p.head_dim == 64 || p.head_dim == 128) && p.dropout <= 0.0 && p.batch * p.heads <= 65535;
}

cudaError_t launch_attention_forward_mma(ScalarKind scalar, const AttentionParams& p, const void* q, const void* k,
                                         const void* v, float* out, float* lse, float* stats, cudaStream_t stream) {
  if (!attention_mma_supported(scalar, p)) return cudaErrorInvalidValue;
  if (p.batch * p.heads * p.q_len <= 0 || p.kv_len <= 0) return cudaSuccess;
  if (scalar == ScalarKind::Float16) {
    return p.head_dim == 64 ? launch_mma<__half, 64>(p, q, k, v, out, lse, stats, stream)
                            : launch_mma<__half, 128>(p, q, k, v, out, lse, stats, stream);
  }
  return p.head_dim == 64 ? launch_mma<__nv_bfloat16, 64>(p, q, k, v, out, lse, stats, stream)
                          : launch_mma<__nv_bfloat16, 128>(p, q, k, v, out, lse, stats, stream);
}

}  // namespace pyvision_ops
