// The attention family's CUDA kernels: the direct, one-thread-per-row form of the algorithm of
// attention_cpu.cpp, on the shared rules of attention.h (masking, online softmax, dropout hash).
// float32 and float64 (the glue widens half types). Never run on a GPU.
#include <cuda_runtime.h>

#include <cstdint>

#include "attention/attention.h"
#include "attention/attention_kernel.h"
#include "common/cuda_check.h"
#include "common/cuda_dispatch.cuh"

namespace pyvision_ops {
namespace {

template <typename T>
__device__ T score(const AttentionParams& p, const T* qi, const T* kj, int64_t b, int64_t h, int64_t i, int64_t j) {
  const T mask = attention_mask_term<T>(p, b, h, i, j);
  if (mask == -INFINITY) return mask;
  T dot = 0;
  for (int64_t e = 0; e < p.head_dim; ++e) dot += qi[e] * kj[e];
  // One rounding, written out: the forward and both backward kernels recompute this score and
  // must agree to the bit (with a huge finite additive mask an unfused product would not).
  return fma(dot, static_cast<T>(p.scale), mask);
}

// The softmax weight of score s in the row with stats (m, log l): exp((s - m) - log l).
template <typename T>
__device__ T row_weight(T s, const T* stats) {
  const T m = stats[0];
  if (s == -INFINITY || m == -INFINITY) return T(0);
  return attention_exp((s - m) - stats[1]);
}

template <typename T>
__device__ T dropout_factor(const AttentionParams& p, int64_t row, int64_t j) {
  if (p.dropout <= 0.0) return T(1);
  if (p.dropout >= 1.0) return T(0);
  return dropout_keep(p.seed, p.dropout, row, j) ? static_cast<T>(1.0 / (1.0 - p.dropout)) : T(0);
}

template <typename T>
__global__ void attention_forward_kernel(const AttentionParams p, const T* __restrict__ q, const T* __restrict__ k,
                                         const T* __restrict__ v, T* __restrict__ out, T* __restrict__ lse,
                                         T* __restrict__ stats) {
  const int64_t rows = p.batch * p.heads * p.q_len;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bh = row / p.q_len, i = row % p.q_len, b = bh / p.heads, h = bh % p.heads;
    const int64_t kvh = b * p.kv_heads + h / p.group();
    const T* qi = q + row * p.head_dim;
    T* o = out + row * p.value_dim;
    for (int64_t e = 0; e < p.value_dim; ++e) o[e] = T(0);
    T m = -INFINITY, l = 0;
    const int64_t keys = p.causal ? (i + 1 < p.kv_len ? i + 1 : p.kv_len) : p.kv_len;
    for (int64_t j = 0; j < keys; ++j) {
      const T s = score<T>(p, qi, k + (kvh * p.kv_len + j) * p.head_dim, b, h, i, j);
      const T factor = online_softmax_rescale(&m, s);
      if (m == -INFINITY) continue;
      const T w = softmax_weight(s, m);
      l = l * factor + w;
      const T wd = w * dropout_factor<T>(p, row, j);
      const T* vj = v + (kvh * p.kv_len + j) * p.value_dim;
      for (int64_t e = 0; e < p.value_dim; ++e) o[e] = o[e] * factor + wd * vj[e];
    }
    const T inv = l > T(0) ? T(1) / l : T(0);
    for (int64_t e = 0; e < p.value_dim; ++e) o[e] *= inv;
    lse[row] = attention_row_lse(m, l);
    stats[2 * row] = m;
    stats[2 * row + 1] = l > T(0) ? attention_log(l) : T(-INFINITY);
  }
}

// dK, dV of one key row over the queries of every head of its group.
template <typename T>
__global__ void attention_backward_kv_kernel(const AttentionParams p, const T* __restrict__ q, const T* __restrict__ k,
                                             const T* __restrict__ v, const T* __restrict__ go,
                                             const T* __restrict__ stats, const T* __restrict__ delta,
                                             T* __restrict__ dk, T* __restrict__ dv) {
  const int64_t rows = p.batch * p.kv_heads * p.kv_len;
  for (int64_t key_row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; key_row < rows;
       key_row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bkv = key_row / p.kv_len, j = key_row % p.kv_len, b = bkv / p.kv_heads, kvh = bkv % p.kv_heads;
    const T* kj = k + key_row * p.head_dim;
    const T* vj = v + key_row * p.value_dim;
    T* dkj = dk + key_row * p.head_dim;
    T* dvj = dv + key_row * p.value_dim;
    for (int64_t e = 0; e < p.head_dim; ++e) dkj[e] = T(0);
    for (int64_t e = 0; e < p.value_dim; ++e) dvj[e] = T(0);
    for (int64_t h = kvh * p.group(); h < (kvh + 1) * p.group(); ++h) {
      const int64_t bh = b * p.heads + h;
      for (int64_t i = p.causal ? j : 0; i < p.q_len; ++i) {
        const int64_t row = bh * p.q_len + i;
        const T* qi = q + row * p.head_dim;
        const T* gi = go + row * p.value_dim;
        const T w = row_weight<T>(score<T>(p, qi, kj, b, h, i, j), stats + 2 * row);
        if (w == T(0)) continue;
        const T f = dropout_factor<T>(p, row, j);
        T dp = 0;
        for (int64_t e = 0; e < p.value_dim; ++e) {
          dvj[e] += w * f * gi[e];
          dp += gi[e] * vj[e];
        }
        const T ds = w * (dp * f - delta[row]) * static_cast<T>(p.scale);
        for (int64_t e = 0; e < p.head_dim; ++e) dkj[e] += ds * qi[e];
      }
    }
  }
}

// dQ of one query row over its keys.
template <typename T>
__global__ void attention_backward_q_kernel(const AttentionParams p, const T* __restrict__ q, const T* __restrict__ k,
                                            const T* __restrict__ v, const T* __restrict__ go,
                                            const T* __restrict__ stats, const T* __restrict__ delta,
                                            T* __restrict__ dq) {
  const int64_t rows = p.batch * p.heads * p.q_len;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bh = row / p.q_len, i = row % p.q_len, b = bh / p.heads, h = bh % p.heads;
    const int64_t kvh = b * p.kv_heads + h / p.group();
    const T* qi = q + row * p.head_dim;
    const T* gi = go + row * p.value_dim;
    T* dqi = dq + row * p.head_dim;
    for (int64_t e = 0; e < p.head_dim; ++e) dqi[e] = T(0);
    const int64_t keys = p.causal ? (i + 1 < p.kv_len ? i + 1 : p.kv_len) : p.kv_len;
    for (int64_t j = 0; j < keys; ++j) {
      const T* kj = k + (kvh * p.kv_len + j) * p.head_dim;
      const T w = row_weight<T>(score<T>(p, qi, kj, b, h, i, j), stats + 2 * row);
      if (w == T(0)) continue;
      const T* vj = v + (kvh * p.kv_len + j) * p.value_dim;
      T dp = 0;
      for (int64_t e = 0; e < p.value_dim; ++e) dp += gi[e] * vj[e];
      const T ds = w * (dp * dropout_factor<T>(p, row, j) - delta[row]) * static_cast<T>(p.scale);
      for (int64_t e = 0; e < p.head_dim; ++e) dqi[e] += ds * kj[e];
    }
  }
}

}  // namespace

cudaError_t launch_attention_forward(ScalarKind scalar, const AttentionParams& p, const void* q, const void* k,
                                     const void* v, void* out, void* lse, void* stats, cudaStream_t stream) {
  const int64_t rows = p.batch * p.heads * p.q_len;
  if (rows <= 0) return cudaSuccess;
  return dispatch_float_double(scalar, [&](auto tag) {
    using T = decltype(tag);
    attention_forward_kernel<T><<<blocks_for(rows, 128), 128, 0, stream>>>(
        p, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(out),
        static_cast<T*>(lse), static_cast<T*>(stats));
    PVO_RETURN_LAST_LAUNCH_ERROR();
  });
}

cudaError_t launch_attention_backward(ScalarKind scalar, const AttentionParams& p, const void* q, const void* k,
                                      const void* v, const void* grad_out, const void* stats, const void* delta,
                                      void* dq, void* dk, void* dv, cudaStream_t stream) {
  const int64_t q_rows = p.batch * p.heads * p.q_len, kv_rows = p.batch * p.kv_heads * p.kv_len;
  if (q_rows <= 0 || kv_rows <= 0) return cudaSuccess;
  return dispatch_float_double(scalar, [&](auto tag) {
    using T = decltype(tag);
    attention_backward_kv_kernel<T><<<blocks_for(kv_rows, 128), 128, 0, stream>>>(
        p, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
        static_cast<const T*>(grad_out), static_cast<const T*>(stats), static_cast<const T*>(delta),
        static_cast<T*>(dk), static_cast<T*>(dv));
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return status;
    attention_backward_q_kernel<T><<<blocks_for(q_rows, 128), 128, 0, stream>>>(
        p, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
        static_cast<const T*>(grad_out), static_cast<const T*>(stats), static_cast<const T*>(delta),
        static_cast<T*>(dq));
    PVO_RETURN_LAST_LAUNCH_ERROR();
  });
}

}  // namespace pyvision_ops
