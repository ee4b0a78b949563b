// The one-thread-per-row CUDA kernels of the attention family (attention_kernel.cu) as
// host-and-device functions: each call does one row's work, the forward of query row `row`, the
// dK / dV of key row `key_row`, the dQ of query row `row`. The kernels run one thread per row;
// tests/cpp/attention_rows_replayed.cpp runs every row on the host. float32 and float64,
// the layouts and rules of attention.h. Torch-free and CUDA-free.
//
// Backward inputs: stats (rows, 2) = (m, log l) of the forward's row, delta (rows) = sum_e dO * O.
// A pair of weight 0 (masked, causal, or underflowed) is skipped, so a NaN in dO reaches only
// the pairs of positive weight (the CPU kernels visit the pairs of every key tile they do not skip).
#pragma once

#include <cmath>
#include <cstdint>

#include "attention/attention.h"
#include "common/host_device.h"

namespace pyvision_ops {

template <typename T>
PVO_HOST_DEVICE inline T attention_fma(T a, T b, T c) {
#if defined(__CUDA_ARCH__)
  return fma(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// Score (i, j) of head (b, h): scale q_i . k_j plus the mask term, one dot product in order of e.
template <typename T>
PVO_HOST_DEVICE inline T attention_row_score(const AttentionParams& p, const T* qi, const T* kj, int64_t b, int64_t h,
                                             int64_t i, int64_t j) {
  const T mask = attention_mask_term<T>(p, b, h, i, j);
  if (mask == -INFINITY) return mask;
  T dot = 0;
  for (int64_t e = 0; e < p.head_dim; ++e) dot += qi[e] * kj[e];
  // One rounding, written out: the forward and both backward kernels recompute this score and
  // must agree to the bit (with a huge finite additive mask an unfused product would not).
  return attention_fma(dot, static_cast<T>(p.scale), mask);
}

// The softmax weight of score s in the row with stats (m, log l): exp((s - m) - log l).
template <typename T>
PVO_HOST_DEVICE inline T attention_stats_weight(T s, const T* stats) {
  const T m = stats[0];
  if (s == -INFINITY || m == -INFINITY) return T(0);
  return attention_exp((s - m) - stats[1]);
}

template <typename T>
PVO_HOST_DEVICE inline T attention_dropout_factor(const AttentionParams& p, int64_t row, int64_t j) {
  if (p.dropout <= 0.0) return T(1);
  if (p.dropout >= 1.0) return T(0);
  return dropout_keep(p.seed, p.dropout, row, j) ? static_cast<T>(1.0 / (1.0 - p.dropout)) : T(0);
}

// Query row `row` of (B, Hq, L): out, lse, stats.
template <typename T>
PVO_HOST_DEVICE inline void attention_forward_row(const AttentionParams& p, const T* q, const T* k, const T* v, T* out,
                                                  T* lse, T* stats, int64_t row) {
  const int64_t bh = row / p.q_len, i = row % p.q_len, b = bh / p.heads, h = bh % p.heads;
  const int64_t kvh = b * p.kv_heads + h / p.group();
  const T* qi = q + row * p.head_dim;
  T* o = out + row * p.value_dim;
  for (int64_t e = 0; e < p.value_dim; ++e) o[e] = T(0);
  T m = -INFINITY, l = 0;
  const int64_t keys = p.causal ? (i + 1 < p.kv_len ? i + 1 : p.kv_len) : p.kv_len;
  for (int64_t j = 0; j < keys; ++j) {
    const T s = attention_row_score<T>(p, qi, k + (kvh * p.kv_len + j) * p.head_dim, b, h, i, j);
    const T factor = online_softmax_rescale(&m, s);
    if (m == -INFINITY) continue;
    const T w = softmax_weight(s, m);
    l = l * factor + w;
    const T wd = w * attention_dropout_factor<T>(p, row, j);
    const T* vj = v + (kvh * p.kv_len + j) * p.value_dim;
    for (int64_t e = 0; e < p.value_dim; ++e) o[e] = o[e] * factor + wd * vj[e];
  }
  const T inv = l > T(0) ? T(1) / l : T(0);
  for (int64_t e = 0; e < p.value_dim; ++e) o[e] *= inv;
  lse[row] = attention_row_lse(m, l);
  stats[2 * row] = m;
  stats[2 * row + 1] = l > T(0) ? attention_log(l) : T(-INFINITY);
}

// dK, dV of key row `key_row` of (B, Hkv, S) over the queries of every head of its group.
template <typename T>
PVO_HOST_DEVICE inline void attention_backward_kv_row(const AttentionParams& p, const T* q, const T* k, const T* v,
                                                      const T* go, const T* stats, const T* delta, T* dk, T* dv,
                                                      int64_t key_row) {
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
      const T w = attention_stats_weight<T>(attention_row_score<T>(p, qi, kj, b, h, i, j), stats + 2 * row);
      if (w == T(0)) continue;
      const T f = attention_dropout_factor<T>(p, row, j);
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

// dQ of query row `row` over its keys.
template <typename T>
PVO_HOST_DEVICE inline void attention_backward_q_row(const AttentionParams& p, const T* q, const T* k, const T* v,
                                                     const T* go, const T* stats, const T* delta, T* dq, int64_t row) {
  const int64_t bh = row / p.q_len, i = row % p.q_len, b = bh / p.heads, h = bh % p.heads;
  const int64_t kvh = b * p.kv_heads + h / p.group();
  const T* qi = q + row * p.head_dim;
  const T* gi = go + row * p.value_dim;
  T* dqi = dq + row * p.head_dim;
  for (int64_t e = 0; e < p.head_dim; ++e) dqi[e] = T(0);
  const int64_t keys = p.causal ? (i + 1 < p.kv_len ? i + 1 : p.kv_len) : p.kv_len;
  for (int64_t j = 0; j < keys; ++j) {
    const T* kj = k + (kvh * p.kv_len + j) * p.head_dim;
    const T w = attention_stats_weight<T>(attention_row_score<T>(p, qi, kj, b, h, i, j), stats + 2 * row);
    if (w == T(0)) continue;
    const T* vj = v + (kvh * p.kv_len + j) * p.value_dim;
    T dp = 0;
    for (int64_t e = 0; e < p.value_dim; ++e) dp += gi[e] * vj[e];
    const T ds = w * (dp * attention_dropout_factor<T>(p, row, j) - delta[row]) * static_cast<T>(p.scale);
    for (int64_t e = 0; e < p.head_dim; ++e) dqi[e] += ds * kj[e];
  }
}

}  // namespace pyvision_ops
