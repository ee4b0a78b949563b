// The attention family's tensor-core kernels (float16 / bfloat16 inputs, float32 accumulation),
// FlashAttention-2's structure with `mma.sync.m16n8k16`.
//
// Forward: a block of 4 warps owns 64 queries of one (batch, head); its Q tile stays in shared
// memory; key tiles of 64 keys (K and V) are loaded into shared memory one after the other; each
// warp multiplies its 16 query rows against the key tile (S = Q K^T, 8 accumulator tiles of
// 16 x 8), applies the scale and the mask rule of attention.h (attention_mask_term: causal,
// additive mask, keys past S), takes the online-softmax step of attention.h per row (the row's 64
// scores live in the 4 lanes of a lane group: two shuffles give its maximum), turns P into the A
// operand of the next product in registers (the accumulator layout of two adjacent 8-key tiles is
// the operand layout of one 16-key slice) and adds P V into its output accumulators. Causal blocks
// stop at the last key tile their last query sees. The row sums stay per lane and are added across
// the group once at the end.
//
// Backward: see the section below (two kernels, dK / dV and dQ, no atomics).
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .row.col, 16-bit inputs): lane = 4 g + t;
//   A (16 x 16, row-major): a0 = (g, 2t..2t+1), a1 = (g + 8, 2t..), a2 = (g, 2t + 8..), a3 = (g + 8, 2t + 8..)
//   B (16 x 8, "col"):      b0 = (k = 2t..2t+1, n = g), b1 = (k = 2t + 8.., n = g)
//   C (16 x 8, float):      c0, c1 = (g, 2t..2t+1), c2, c3 = (g + 8, 2t..2t+1)
// so for S = Q K^T the B operand pairs are adjacent elements of one K row in shared memory.
//
// Scope: E == Ev in {64, 128}, no dropout (the glue sends other calls to the float32 kernels).
// Never run on a GPU (tests/test_attention_mma_emulation.py replays both directions on the CPU).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
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
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // never launched: attention_mma_supported rejects images built for older archs
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
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
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // never launched: attention_mma_supported rejects images built for older archs
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
  }
};

// max(a, b), NaN when either is (fmaxf drops NaN).
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || b != b) ? NAN : fmaxf(a, b); }

// ROWS x D elements of a row-major (.., D) matrix into a shared tile with row stride D + pad,
// zeros past `valid` rows; 16-byte vectors (D is a multiple of 8, rows are 16-byte aligned).
template <typename H, int D, int ROWS>
__device__ void load_rows(H* tile, const H* src, int64_t valid) {
  constexpr int kVectorsPerRow = D / 8;
  for (int idx = threadIdx.x; idx < ROWS * kVectorsPerRow; idx += kMmaThreads) {
    const int r = idx / kVectorsPerRow, c = (idx % kVectorsPerRow) * 8;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (r < valid) value = *reinterpret_cast<const uint4*>(src + static_cast<int64_t>(r) * D + c);
    *reinterpret_cast<uint4*>(tile + r * (D + kSmemPad) + c) = value;
  }
}

// acc (16 x 8 NT tiles, rows of `a_rows`) += A B over k = D, A's rows from shared rows
// a_rows[r0 ..] (row-major, stride kStride), B = X^T for shared rows x[n * 8 + g] (so that
// b0, b1 are adjacent pairs of one X row): the S = Q K^T form.
template <typename H, int D, int NT>
__device__ __forceinline__ void mma_rows_times_rows_t(float acc[NT][4], const H* a_rows, const H* x) {
  constexpr int kStride = D + kSmemPad;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int kk = 0; kk < D; kk += 16) {
    uint32_t a[4];
    a[0] = *reinterpret_cast<const uint32_t*>(a_rows + g * kStride + kk + 2 * t);
    a[1] = *reinterpret_cast<const uint32_t*>(a_rows + (g + 8) * kStride + kk + 2 * t);
    a[2] = *reinterpret_cast<const uint32_t*>(a_rows + g * kStride + kk + 8 + 2 * t);
    a[3] = *reinterpret_cast<const uint32_t*>(a_rows + (g + 8) * kStride + kk + 8 + 2 * t);
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const H* xrow = x + (n * 8 + g) * kStride + kk;
      HalfPair<H>::mma(acc[n], a, *reinterpret_cast<const uint32_t*>(xrow + 2 * t),
                       *reinterpret_cast<const uint32_t*>(xrow + 8 + 2 * t));
    }
  }
}

// acc (16 x D) += W Y, W (16 x 16 KC) in accumulator tiles (w[2 kc], w[2 kc + 1] form the A
// operand of slice kc, rounded to H), Y (16 KC x D) shared rows (row-major, stride kStride).
template <typename H, int D, int KC>
__device__ __forceinline__ void mma_acc_times_rows(float acc[D / 8][4], const float w[2 * KC][4], const H* y) {
  constexpr int kStride = D + kSmemPad;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int kc = 0; kc < KC; ++kc) {
    uint32_t a[4];
    a[0] = HalfPair<H>::pack(w[2 * kc][0], w[2 * kc][1]);
    a[1] = HalfPair<H>::pack(w[2 * kc][2], w[2 * kc][3]);
    a[2] = HalfPair<H>::pack(w[2 * kc + 1][0], w[2 * kc + 1][1]);
    a[3] = HalfPair<H>::pack(w[2 * kc + 1][2], w[2 * kc + 1][3]);
    const H* y0 = y + (kc * 16 + 2 * t) * kStride;
    const H* y1 = y + (kc * 16 + 8 + 2 * t) * kStride;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int col = n * 8 + g;
      HalfPair<H>::mma(acc[n], a, HalfPair<H>::pack(y0[col], y0[kStride + col]),
                       HalfPair<H>::pack(y1[col], y1[kStride + col]));
    }
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

  load_rows<H, D, kMmaQueries>(qs, q + (bh * p.q_len + i0) * D, p.q_len - i0);

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
    load_rows<H, D, kMmaKeys>(ks, k + (kv * p.kv_len + j0) * D, p.kv_len - j0);
    load_rows<H, D, kMmaKeys>(vs, v + (kv * p.kv_len + j0) * D, p.kv_len - j0);
    __syncthreads();

    float s[kMmaKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kMmaKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    mma_rows_times_rows_t<H, D, kMmaKeys / 8>(s, qs + r0 * kStride, ks);  // S = Q K^T

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
        // NaN-propagating maximum: a row whose scores are all NaN (a NaN query) must not look
        // fully masked (its output is NaN, as in torch).
        block_max[c / 2] = (value > block_max[c / 2] || value != value) ? value : block_max[c / 2];
      }
    }
    float factor[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      block_max[r] = nan_max(block_max[r], __shfl_xor_sync(0xffffffffu, block_max[r], 1));
      block_max[r] = nan_max(block_max[r], __shfl_xor_sync(0xffffffffu, block_max[r], 2));
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
    mma_acc_times_rows<H, D, kMmaKeys / 16>(o, s, vs);
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

// --- backward ------------------------------------------------------------------------------
// Two kernels, each output element with one writer (no atomics): dK, dV per block of 64 keys of
// one (batch, kv head), over the query tiles of every query head of its group; dQ per block of 64
// queries of one (batch, head), over its key tiles. Both recompute the scores with the same
// products as the forward and the weights from the forward's per-row stats (m, log l):
// P = exp((s - m) - log l) (row_weight of attention_kernel.cu), dS = P (dP - delta) scale with
// dP = dO V^T and delta = rowsum(dO * O) from the glue. P and dS are rounded to the 16-bit type
// where they become the A operand of the next product (as FlashAttention-2 does); the sums stay
// float32.

constexpr int kMmaBwdQueries = 32;  // query tile of the dK, dV kernel

// The weight of score s (scaled and masked, -inf when masked) in the row with stats (m, log l).
__device__ __forceinline__ float mma_row_weight(float s, float m, float log_l) {
  return (s == -INFINITY || m == -INFINITY) ? 0.0f : __expf((s - m) - log_l);
}

// Block (64 keys of (b, kv head)); warp w owns keys j0 + 16 w .. + 16 as the rows of its
// transposed tiles S^T, P^T, dP^T, dS^T (16 keys x 32 queries); lane (g, t) holds keys
// j0 + 16 w + g (+ 8) and queries i0 + 8 n + 2 t (+ 1).
template <typename H, int D>
__global__ void __launch_bounds__(kMmaThreads)
    attention_backward_kv_mma_kernel(const AttentionParams p, const H* __restrict__ q, const H* __restrict__ k,
                                     const H* __restrict__ v, const H* __restrict__ go,
                                     const float* __restrict__ stats, const float* __restrict__ delta,
                                     float* __restrict__ dk, float* __restrict__ dv) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kStride = D + kSmemPad;
  H* ks = reinterpret_cast<H*>(smem_raw);
  H* vs = ks + kMmaKeys * kStride;
  H* qs = vs + kMmaKeys * kStride;
  H* gs = qs + kMmaBwdQueries * kStride;
  float* row_m = reinterpret_cast<float*>(gs + kMmaBwdQueries * kStride);
  float* row_log_l = row_m + kMmaBwdQueries;
  float* row_delta = row_log_l + kMmaBwdQueries;

  const int64_t bkv = blockIdx.y;
  const int64_t b = bkv / p.kv_heads, kvh = bkv % p.kv_heads;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kMmaKeys;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int r0 = warp * 16;
  const float scale = static_cast<float>(p.scale);
  const int64_t keys_j[2] = {j0 + r0 + g, j0 + r0 + g + 8};

  load_rows<H, D, kMmaKeys>(ks, k + (bkv * p.kv_len + j0) * D, p.kv_len - j0);
  load_rows<H, D, kMmaKeys>(vs, v + (bkv * p.kv_len + j0) * D, p.kv_len - j0);

  float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
#pragma unroll
    for (int c = 0; c < 4; ++c) dk_acc[n][c] = dv_acc[n][c] = 0.0f;
  }
  // Causal: query i sees key j only when j <= i, so the queries before j0 see none of the block.
  const int64_t first_query = p.causal ? (j0 / kMmaBwdQueries) * kMmaBwdQueries : 0;

  for (int64_t h = kvh * p.group(); h < (kvh + 1) * p.group(); ++h) {
    const int64_t bh = b * p.heads + h;
    for (int64_t i0 = first_query; i0 < p.q_len; i0 += kMmaBwdQueries) {
      __syncthreads();  // the previous query tile's readers are done (and, first, K, V are loaded)
      load_rows<H, D, kMmaBwdQueries>(qs, q + (bh * p.q_len + i0) * D, p.q_len - i0);
      load_rows<H, D, kMmaBwdQueries>(gs, go + (bh * p.q_len + i0) * D, p.q_len - i0);
      for (int r = threadIdx.x; r < kMmaBwdQueries; r += kMmaThreads) {
        const int64_t i = i0 + r;
        const bool valid = i < p.q_len;
        row_m[r] = valid ? stats[2 * (bh * p.q_len + i)] : -INFINITY;
        row_log_l[r] = valid ? stats[2 * (bh * p.q_len + i) + 1] : 0.0f;
        row_delta[r] = valid ? delta[bh * p.q_len + i] : 0.0f;
      }
      __syncthreads();

      constexpr int kQueryTiles = kMmaBwdQueries / 8;
      float s[kQueryTiles][4], dp[kQueryTiles][4];
#pragma unroll
      for (int n = 0; n < kQueryTiles; ++n) {
#pragma unroll
        for (int c = 0; c < 4; ++c) s[n][c] = dp[n][c] = 0.0f;
      }
      mma_rows_times_rows_t<H, D, kQueryTiles>(s, ks + r0 * kStride, qs);   // S^T = K Q^T
      mma_rows_times_rows_t<H, D, kQueryTiles>(dp, vs + r0 * kStride, gs);  // dP^T = V dO^T
#pragma unroll
      for (int n = 0; n < kQueryTiles; ++n) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int qr = n * 8 + 2 * t + (c % 2);
          const int64_t i = i0 + qr, j = keys_j[c / 2];
          float w = 0.0f;
          if (i < p.q_len && j < p.kv_len) {
            const float mask = attention_mask_term<float>(p, b, h, i, j);
            if (mask != -INFINITY) w = mma_row_weight(s[n][c] * scale + mask, row_m[qr], row_log_l[qr]);
          }
          s[n][c] = w;                                          // P^T
          dp[n][c] = w * (dp[n][c] - row_delta[qr]) * scale;    // dS^T
        }
      }
      mma_acc_times_rows<H, D, kQueryTiles / 2>(dv_acc, s, gs);   // dV += P^T dO
      mma_acc_times_rows<H, D, kQueryTiles / 2>(dk_acc, dp, qs);  // dK += dS^T Q
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t j = keys_j[r];
    if (j >= p.kv_len) continue;
    float* dkj = dk + (bkv * p.kv_len + j) * D;
    float* dvj = dv + (bkv * p.kv_len + j) * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      dkj[n * 8 + 2 * t] = dk_acc[n][2 * r];
      dkj[n * 8 + 2 * t + 1] = dk_acc[n][2 * r + 1];
      dvj[n * 8 + 2 * t] = dv_acc[n][2 * r];
      dvj[n * 8 + 2 * t + 1] = dv_acc[n][2 * r + 1];
    }
  }
}

// Block (64 queries of (b, h)), warp w owns queries i0 + 16 w .. + 16 (the forward's layout);
// per key tile: S = Q K^T, dP = dO V^T (8 accumulator tiles of 8 keys each), P and dS, then
// dQ += dS K.
template <typename H, int D>
__global__ void __launch_bounds__(kMmaThreads)
    attention_backward_q_mma_kernel(const AttentionParams p, const H* __restrict__ q, const H* __restrict__ k,
                                    const H* __restrict__ v, const H* __restrict__ go,
                                    const float* __restrict__ stats, const float* __restrict__ delta,
                                    float* __restrict__ dq) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kStride = D + kSmemPad;
  H* qs = reinterpret_cast<H*>(smem_raw);
  H* gs = qs + kMmaQueries * kStride;
  H* ks = gs + kMmaQueries * kStride;
  H* vs = ks + kMmaKeys * kStride;

  const int64_t bh = blockIdx.y;
  const int64_t b = bh / p.heads, h = bh % p.heads;
  const int64_t kv = b * p.kv_heads + h / p.group();
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kMmaQueries;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int r0 = warp * 16;
  const float scale = static_cast<float>(p.scale);

  load_rows<H, D, kMmaQueries>(qs, q + (bh * p.q_len + i0) * D, p.q_len - i0);
  load_rows<H, D, kMmaQueries>(gs, go + (bh * p.q_len + i0) * D, p.q_len - i0);
  const int64_t rows_i[2] = {i0 + r0 + g, i0 + r0 + g + 8};
  float m[2], log_l[2], row_delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool valid = rows_i[r] < p.q_len;
    m[r] = valid ? stats[2 * (bh * p.q_len + rows_i[r])] : -INFINITY;
    log_l[r] = valid ? stats[2 * (bh * p.q_len + rows_i[r]) + 1] : 0.0f;
    row_delta[r] = valid ? delta[bh * p.q_len + rows_i[r]] : 0.0f;
  }

  float dq_acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) dq_acc[n][0] = dq_acc[n][1] = dq_acc[n][2] = dq_acc[n][3] = 0.0f;
  const int64_t last_query = (i0 + kMmaQueries < p.q_len ? i0 + kMmaQueries : p.q_len) - 1;
  const int64_t keys = p.causal ? (last_query + 1 < p.kv_len ? last_query + 1 : p.kv_len) : p.kv_len;

  for (int64_t j0 = 0; j0 < keys; j0 += kMmaKeys) {
    __syncthreads();
    load_rows<H, D, kMmaKeys>(ks, k + (kv * p.kv_len + j0) * D, p.kv_len - j0);
    load_rows<H, D, kMmaKeys>(vs, v + (kv * p.kv_len + j0) * D, p.kv_len - j0);
    __syncthreads();

    constexpr int kKeyTiles = kMmaKeys / 8;
    float s[kKeyTiles][4], dp[kKeyTiles][4];
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int c = 0; c < 4; ++c) s[n][c] = dp[n][c] = 0.0f;
    }
    mma_rows_times_rows_t<H, D, kKeyTiles>(s, qs + r0 * kStride, ks);   // S = Q K^T
    mma_rows_times_rows_t<H, D, kKeyTiles>(dp, gs + r0 * kStride, vs);  // dP = dO V^T
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t i = rows_i[c / 2], j = j0 + n * 8 + 2 * t + (c % 2);
        float w = 0.0f;
        if (i < p.q_len && j < p.kv_len) {
          const float mask = attention_mask_term<float>(p, b, h, i, j);
          if (mask != -INFINITY) w = mma_row_weight(s[n][c] * scale + mask, m[c / 2], log_l[c / 2]);
        }
        dp[n][c] = w * (dp[n][c] - row_delta[c / 2]) * scale;  // dS
      }
    }
    mma_acc_times_rows<H, D, kKeyTiles / 2>(dq_acc, dp, ks);  // dQ += dS K
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = rows_i[r];
    if (i >= p.q_len) continue;
    float* dst = dq + (bh * p.q_len + i) * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      dst[n * 8 + 2 * t] = dq_acc[n][2 * r];
      dst[n * 8 + 2 * t + 1] = dq_acc[n][2 * r + 1];
    }
  }
}

template <typename H, int D>
cudaError_t launch_mma_backward(const AttentionParams& p, const void* q, const void* k, const void* v,
                                const void* grad_out, const float* stats, const float* delta, float* dq, float* dk,
                                float* dv, cudaStream_t stream) {
  constexpr int kStride = D + kSmemPad;
  const size_t kv_smem = sizeof(H) * static_cast<size_t>(2 * kMmaKeys + 2 * kMmaBwdQueries) * kStride +
                         sizeof(float) * 3 * kMmaBwdQueries;
  const size_t q_smem = sizeof(H) * static_cast<size_t>(2 * kMmaQueries + 2 * kMmaKeys) * kStride;
  cudaError_t status = cudaFuncSetAttribute(attention_backward_kv_mma_kernel<H, D>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kv_smem));
  if (status != cudaSuccess) return status;
  status = cudaFuncSetAttribute(attention_backward_q_mma_kernel<H, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(q_smem));
  if (status != cudaSuccess) return status;
  const int64_t key_tiles = (p.kv_len + kMmaKeys - 1) / kMmaKeys, kv_heads = p.batch * p.kv_heads;
  const int64_t query_tiles = (p.q_len + kMmaQueries - 1) / kMmaQueries, heads = p.batch * p.heads;
  if (key_tiles > 0x7fffffff || query_tiles > 0x7fffffff || kv_heads > 65535 || heads > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  const H* qh = static_cast<const H*>(q);
  const H* kh = static_cast<const H*>(k);
  const H* vh = static_cast<const H*>(v);
  const H* gh = static_cast<const H*>(grad_out);
  attention_backward_kv_mma_kernel<H, D>
      <<<dim3(static_cast<unsigned int>(key_tiles), static_cast<unsigned int>(kv_heads)), kMmaThreads, kv_smem,
         stream>>>(p, qh, kh, vh, gh, stats, delta, dk, dv);
  status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  attention_backward_q_mma_kernel<H, D>
      <<<dim3(static_cast<unsigned int>(query_tiles), static_cast<unsigned int>(heads)), kMmaThreads, q_smem,
         stream>>>(p, qh, kh, vh, gh, stats, delta, dq);
  PVO_RETURN_LAST_LAUNCH_ERROR();
}

}  // namespace

namespace {

// Whether the image loaded for the current device holds the tensor-core kernels: PTX older than
// compute_80 (a build for sm_75, say, or its PTX JIT-compiled for a newer GPU) has only the trap
// stubs. Asked once per device (1 yes, -1 no).
bool mma_image_on_current_device() {
  static std::atomic<int64_t> known[kDeviceSlots] = {};
  int64_t usable = -1;
  const cudaError_t status = once_per_device(
      known,
      [](int, int64_t* value) {
        cudaFuncAttributes attributes;
        if (cudaFuncGetAttributes(&attributes, attention_forward_mma_kernel<__half, 64>) == cudaSuccess) {
          *value = attributes.ptxVersion >= 80 ? 1 : -1;
        } else {
          (void)cudaGetLastError();  // no image for this device: the CUDA-core kernels take the call
          *value = -1;
        }
        return cudaSuccess;
      },
      &usable);
  if (status != cudaSuccess) (void)cudaGetLastError();
  return status == cudaSuccess && usable > 0;
}

}  // namespace

bool attention_mma_supported(ScalarKind scalar, const AttentionParams& p) {
  return (scalar == ScalarKind::Float16 || scalar == ScalarKind::BFloat16) && p.head_dim == p.value_dim &&
         (p.head_dim == 64 || p.head_dim == 128) && p.dropout <= 0.0 && p.batch * p.heads <= 65535 &&
         mma_image_on_current_device();
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

cudaError_t launch_attention_backward_mma(ScalarKind scalar, const AttentionParams& p, const void* q, const void* k,
                                          const void* v, const void* grad_out, const float* stats,
                                          const float* delta, float* dq, float* dk, float* dv, cudaStream_t stream) {
  if (!attention_mma_supported(scalar, p)) return cudaErrorInvalidValue;
  if (p.batch * p.heads * p.q_len <= 0 || p.kv_len <= 0) return cudaSuccess;
  if (scalar == ScalarKind::Float16) {
    return p.head_dim == 64
               ? launch_mma_backward<__half, 64>(p, q, k, v, grad_out, stats, delta, dq, dk, dv, stream)
               : launch_mma_backward<__half, 128>(p, q, k, v, grad_out, stats, delta, dq, dk, dv, stream);
  }
  return p.head_dim == 64
             ? launch_mma_backward<__nv_bfloat16, 64>(p, q, k, v, grad_out, stats, delta, dq, dk, dv, stream)
             : launch_mma_backward<__nv_bfloat16, 128>(p, q, k, v, grad_out, stats, delta, dq, dk, dv, stream);
}

}  // namespace pyvision_ops
