// The attention family's CPU tile kernels, selected through one table: the portable templates
// here (also used for float64; they define the semantics) and the AVX2 float32 entries in
// attention_cpu_simd.cpp. Torch-free.
//
// Every product of the forward and backward is written as C (m x n) (+)= A (m x k) B (k x n) with
// row-major A and B (leading dimensions lda, ldb): the glue transposes K (and, in the backward, Q
// and dO) once per head so that each product reads rows contiguously.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/cpu_features.h"

namespace pyvision_ops {

struct AttentionCpuKernels {
  // c[i * ldc + j] (+)= sum_{p < k} a[i * lda + p] * b[p * ldb + j] for i < m, j < n.
  void (*gemm)(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
               int64_t ldc, bool accumulate);
  // x[j] = exp(x[j] * scale - shift) for j < n, with x[j] * scale - shift rounded once (-inf
  // entries give 0 for scale > 0); returns the sum of the results.
  float (*exp_sum)(float* x, int64_t n, float scale, float shift);
  // The largest of x[0..n) (-inf for n = 0; NaN if any entry is NaN, so that a NaN score reaches
  // the row's output as in torch).
  float (*row_max)(const float* x, int64_t n);
  // x[j] = x[j] * scale + add[j] for j < n (add[j] = 0 where add is null); returns the largest
  // result as row_max does (NaN if any is NaN).
  float (*scale_add_max)(float* x, int64_t n, float scale, const float* add);
  // gemm with accumulate = false that also folds the largest entry of each row i of the result
  // into row_max[i] (a NaN entry makes it NaN), so the softmax needs no separate pass for it.
  void (*gemm_row_max)(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                       float* c, int64_t ldc, float* row_max);
  // The online-softmax step of one tile without a mask (attention_softmax_tile_portable).
  void (*softmax_tile)(float* s, int64_t rows, int64_t cols, int64_t lds, float scale, const float* raw_max, float* m,
                       float* l, float* acc, int64_t ev);
  // The score product of a tile whose rows see every key, with the exp in its epilogue against
  // the running maxima of the earlier tiles (attention_gemm_exp_portable).
  bool (*gemm_exp)(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                   float* c, int64_t ldc, float scale, const float* shift, float* row_sum);
  // The backward's weights: x[j] = exp((x[j] * scale - m) - log_l), x[j] * scale - m rounded once
  // (as the forward's exp rounds it; -inf entries give 0 for scale > 0).
  void (*exp_shifted)(float* x, int64_t n, float scale, float m, float log_l);
};

// How far a scaled score may exceed its row's running maximum before gemm_exp gives up: the
// weights it writes are then at most e^8 (about 3e3), which the float32 sums and P V absorb.
constexpr float kLazyRescaleLimit = 8.0f;

template <typename T>
void attention_gemm_portable(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                             T* c, int64_t ldc, bool accumulate) {
  for (int64_t i = 0; i < m; ++i) {
    T* row = c + i * ldc;
    if (!accumulate) {
      for (int64_t j = 0; j < n; ++j) row[j] = T(0);
    }
    for (int64_t p = 0; p < k; ++p) {
      const T aip = a[i * lda + p];
      const T* brow = b + p * ldb;
      for (int64_t j = 0; j < n; ++j) row[j] += aip * brow[j];
    }
  }
}

template <typename T>
T attention_exp_sum_portable(T* x, int64_t n, T scale, T shift) {
  T sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    const T v = x[j] == -INFINITY ? T(0) : std::exp(std::fma(x[j], scale, -shift));
    x[j] = v;
    sum += v;
  }
  return sum;
}

template <typename T>
T attention_row_max_portable(const T* x, int64_t n) {
  T best = -INFINITY;
  // Once best is NaN no comparison is true: it stays NaN.
  for (int64_t j = 0; j < n; ++j) best = (x[j] > best || x[j] != x[j]) ? x[j] : best;
  return best;
}

template <typename T>
T attention_scale_add_max_portable(T* x, int64_t n, T scale, const T* add) {
  T best = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    const T v = add ? x[j] * scale + add[j] : x[j] * scale;
    x[j] = v;
    best = (v > best || v != v) ? v : best;
  }
  return best;
}

template <typename T>
void attention_gemm_row_max_portable(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                                     int64_t ldb, T* c, int64_t ldc, T* row_max) {
  attention_gemm_portable<T>(m, n, k, a, lda, b, ldb, c, ldc, false);
  for (int64_t i = 0; i < m; ++i) {
    const T best = attention_row_max_portable<T>(c + i * ldc, n);
    row_max[i] = (best > row_max[i] || best != best) ? best : row_max[i];
  }
}

// One key tile's online-softmax step for rows that see every key of the tile (no mask, scale > 0):
// s (rows x cols, leading dimension lds) holds the raw scores q . k and raw_max their row maxima.
// Per row r: the running maximum m[r] becomes max(m[r], raw_max[r] * scale); s becomes
// exp(s * scale - m[r]) (0 for the whole row while m[r] is -inf); l[r] (the running sum of
// weights) and the row of acc (rows x ev, the running P V) are rescaled by exp(m_old - m_new), and
// l[r] gains the row's new weights.
template <typename T>
void attention_softmax_tile_portable(T* s, int64_t rows, int64_t cols, int64_t lds, T scale, const T* raw_max, T* m,
                                     T* l, T* acc, int64_t ev) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = s + r * lds;
    const T block_max = raw_max[r] * scale;
    const T old = m[r];
    const T m_new = old > block_max ? old : block_max;
    if (m_new == -INFINITY) {
      for (int64_t c = 0; c < cols; ++c) row[c] = T(0);
      continue;
    }
    const T factor = old == m_new ? T(1) : (old == -INFINITY ? T(0) : std::exp(old - m_new));
    m[r] = m_new;
    l[r] = l[r] * factor + attention_exp_sum_portable<T>(row, cols, scale, m_new);
    if (factor != T(1)) {
      T* a = acc + r * ev;
      for (int64_t e = 0; e < ev; ++e) a[e] *= factor;
    }
  }
}

// Lazy rescaling (as in FlashAttention-4): for rows whose running maximum m[i] is finite,
// c[i][j] = exp((a b)[i][j] * scale - shift[i]) and row_sum[i] += sum_j c[i][j], without first
// taking the tile's maxima. Returns false, leaving c and row_sum unspecified, when some
// (a b)[i][j] * scale - shift[i] exceeds kLazyRescaleLimit: the caller redoes the tile with the
// new maxima (the online-softmax step). Keeping shift[i] while the scores stay below it + limit
// changes nothing in the result: the output is acc / l and the saved lse is m + log l, both
// independent of the shift. A NaN score gives a NaN weight (and output), as the step does.
template <typename T>
bool attention_gemm_exp_portable(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                                 T* c, int64_t ldc, T scale, const T* shift, T* row_sum) {
  attention_gemm_portable<T>(m, n, k, a, lda, b, ldb, c, ldc, false);
  for (int64_t i = 0; i < m; ++i) {
    T* row = c + i * ldc;
    T sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      const T x = std::fma(row[j], scale, -shift[i]);
      if (x > static_cast<T>(kLazyRescaleLimit)) return false;
      row[j] = std::exp(x);
      sum += row[j];
    }
    row_sum[i] += sum;
  }
  return true;
}

template <typename T>
void attention_exp_shifted_portable(T* x, int64_t n, T scale, T m, T log_l) {
  for (int64_t j = 0; j < n; ++j) x[j] = x[j] == -INFINITY ? T(0) : std::exp(std::fma(x[j], scale, -m) - log_l);
}

inline void attention_gemm_f32_portable(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                                        int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  attention_gemm_portable<float>(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
}

inline float attention_exp_sum_f32_portable(float* x, int64_t n, float scale, float shift) {
  return attention_exp_sum_portable<float>(x, n, scale, shift);
}

inline float attention_row_max_f32_portable(const float* x, int64_t n) {
  return attention_row_max_portable<float>(x, n);
}

inline float attention_scale_add_max_f32_portable(float* x, int64_t n, float scale, const float* add) {
  return attention_scale_add_max_portable<float>(x, n, scale, add);
}

inline void attention_gemm_row_max_f32_portable(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                                                const float* b, int64_t ldb, float* c, int64_t ldc, float* row_max) {
  attention_gemm_row_max_portable<float>(m, n, k, a, lda, b, ldb, c, ldc, row_max);
}

inline void attention_softmax_tile_f32_portable(float* s, int64_t rows, int64_t cols, int64_t lds, float scale,
                                                const float* raw_max, float* m, float* l, float* acc, int64_t ev) {
  attention_softmax_tile_portable<float>(s, rows, cols, lds, scale, raw_max, m, l, acc, ev);
}

inline bool attention_gemm_exp_f32_portable(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                                            const float* b, int64_t ldb, float* c, int64_t ldc, float scale,
                                            const float* shift, float* row_sum) {
  return attention_gemm_exp_portable<float>(m, n, k, a, lda, b, ldb, c, ldc, scale, shift, row_sum);
}

inline void attention_exp_shifted_f32_portable(float* x, int64_t n, float scale, float m, float log_l) {
  attention_exp_shifted_portable<float>(x, n, scale, m, log_l);
}

// The AVX2 table (attention_cpu_simd.cpp), nullptr where the build has none.
const AttentionCpuKernels* attention_avx2_kernels();

// The table to use now (see common/cpu_features.h).
inline const AttentionCpuKernels& attention_cpu_kernels() {
  static constexpr AttentionCpuKernels portable{&attention_gemm_f32_portable, &attention_exp_sum_f32_portable,
                                                      &attention_row_max_f32_portable,
                                                      &attention_scale_add_max_f32_portable,
                                                      &attention_gemm_row_max_f32_portable,
                                                      &attention_softmax_tile_f32_portable,
                                                      &attention_gemm_exp_f32_portable,
                                                      &attention_exp_shifted_f32_portable};
  return select_cpu_kernels(portable, attention_avx2_kernels());
}

}  // namespace pyvision_ops
