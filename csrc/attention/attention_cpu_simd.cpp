// The AVX2 float32 attention kernels (attention_cpu_simd.h), compiled for AVX2 + FMA per
// function and reached through attention_cpu_kernels(). Nothing here on other architectures.
#include "attention/attention_cpu_simd.h"

#include <algorithm>
#include <cmath>

#if PVO_X86
#include <immintrin.h>
#endif

namespace pyvision_ops {

#if PVO_X86

namespace {

// C[MR x 8 NV] (+)= A[MR x k] B[k x 8 NV]: MR broadcasts of A's rows and NV loads of B's row feed
// MR * NV FMAs per position; the accumulators are named variables so that they stay in registers
// over all of k (MR = 6, NV = 2: 12 accumulators, 2 loads + 6 broadcasts per 12 FMAs).
template <int MR, int NV>
PVO_TARGET_AVX2 inline void gemm_block(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                                       int64_t ldc, bool accumulate) {
  static_assert(MR >= 1 && MR <= 6 && (NV == 1 || NV == 2), "gemm block shape");
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  const float* a1 = a + lda;
  const float* a2 = a + 2 * lda;
  const float* a3 = a + 3 * lda;
  const float* a4 = a + 4 * lda;
  const float* a5 = a + 5 * lda;
#pragma GCC unroll 4
  for (int64_t p = 0; p < k; ++p) {
    const __m256 b0 = _mm256_loadu_ps(b + p * ldb);
    const __m256 b1 = NV == 2 ? _mm256_loadu_ps(b + p * ldb + 8) : b0;
    __m256 x = _mm256_broadcast_ss(a + p);
    c00 = _mm256_fmadd_ps(x, b0, c00);
    if constexpr (NV == 2) c01 = _mm256_fmadd_ps(x, b1, c01);
    if constexpr (MR > 1) {
      x = _mm256_broadcast_ss(a1 + p);
      c10 = _mm256_fmadd_ps(x, b0, c10);
      if constexpr (NV == 2) c11 = _mm256_fmadd_ps(x, b1, c11);
    }
    if constexpr (MR > 2) {
      x = _mm256_broadcast_ss(a2 + p);
      c20 = _mm256_fmadd_ps(x, b0, c20);
      if constexpr (NV == 2) c21 = _mm256_fmadd_ps(x, b1, c21);
    }
    if constexpr (MR > 3) {
      x = _mm256_broadcast_ss(a3 + p);
      c30 = _mm256_fmadd_ps(x, b0, c30);
      if constexpr (NV == 2) c31 = _mm256_fmadd_ps(x, b1, c31);
    }
    if constexpr (MR > 4) {
      x = _mm256_broadcast_ss(a4 + p);
      c40 = _mm256_fmadd_ps(x, b0, c40);
      if constexpr (NV == 2) c41 = _mm256_fmadd_ps(x, b1, c41);
    }
    if constexpr (MR > 5) {
      x = _mm256_broadcast_ss(a5 + p);
      c50 = _mm256_fmadd_ps(x, b0, c50);
      if constexpr (NV == 2) c51 = _mm256_fmadd_ps(x, b1, c51);
    }
  }
  const __m256 sums[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      float* dst = c + r * ldc + 8 * v;
      _mm256_storeu_ps(dst, accumulate ? _mm256_add_ps(_mm256_loadu_ps(dst), sums[r][v]) : sums[r][v]);
    }
  }
}

template <int NV>
PVO_TARGET_AVX2 void gemm_columns(int64_t m, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                                  float* c, int64_t ldc, bool accumulate) {
  int64_t i = 0;
  for (; i + 6 <= m; i += 6) gemm_block<6, NV>(k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate);
  switch (m - i) {
    case 5: gemm_block<5, NV>(k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate); break;
    case 4: gemm_block<4, NV>(k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate); break;
    case 3: gemm_block<3, NV>(k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate); break;
    case 2: gemm_block<2, NV>(k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate); break;
    case 1: gemm_block<1, NV>(k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate); break;
    default: break;
  }
}

PVO_TARGET_AVX2 void gemm_avx2(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                               int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) gemm_columns<2>(m, k, a, lda, b + j, ldb, c + j, ldc, accumulate);
  for (; j + 8 <= n; j += 8) gemm_columns<1>(m, k, a, lda, b + j, ldb, c + j, ldc, accumulate);
  if (j < n) attention_gemm_portable<float>(m, n - j, k, a, lda, b + j, ldb, c + j, ldc, accumulate);
}

// exp(x) for float32 lanes: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two for an exact
// product), a degree-6 polynomial for exp(r) (Cephes' expf coefficients, ~1 ulp), times 2^n via
// the exponent bits. Lanes below -87.3 (and -inf) give 0, NaN lanes NaN.
PVO_TARGET_AVX2 inline __m256 exp_ps(__m256 x) {
  const __m256 low = _mm256_set1_ps(-87.3f);
  const __m256 underflow = _mm256_cmp_ps(x, low, _CMP_LT_OQ);
  const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  const __m256 input = x;
  x = _mm256_min_ps(_mm256_max_ps(x, low), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 poly = _mm256_set1_ps(1.9875691500e-4f);
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.3981999507e-3f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(8.3334519073e-3f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(4.1665795894e-2f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.6666665459e-1f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(5.0000001201e-1f));
  poly = _mm256_fmadd_ps(poly, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 result = _mm256_andnot_ps(underflow, _mm256_mul_ps(poly, _mm256_castsi256_ps(bits)));
  return _mm256_blendv_ps(result, input, nan);
}

PVO_TARGET_AVX2 float exp_sum_avx2(float* x, int64_t n, float scale, float shift) {
  const __m256 s = _mm256_set1_ps(shift), g = _mm256_set1_ps(scale);
  __m256 sum = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 v = exp_ps(_mm256_fmsub_ps(_mm256_loadu_ps(x + j), g, s));
    _mm256_storeu_ps(x + j, v);
    sum = _mm256_add_ps(sum, v);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  if (j < n) {
    alignas(32) float tail[8];
    const int64_t rest = n - j;
    for (int64_t t = 0; t < 8; ++t) tail[t] = t < rest ? std::fma(x[j + t], scale, -shift) : -INFINITY;
    _mm256_store_ps(tail, exp_ps(_mm256_load_ps(tail)));
    for (int64_t t = 0; t < rest; ++t) {
      x[j + t] = tail[t];
      total += tail[t];
    }
  }
  return total;
}

PVO_TARGET_AVX2 float row_max_avx2(const float* x, int64_t n) {
  __m256 best = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  // max_ps returns its second operand when either is NaN: NaN lanes of x are skipped.
  for (; j + 8 <= n; j += 8) best = _mm256_max_ps(_mm256_loadu_ps(x + j), best);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, best);
  float total = lanes[0];
  for (int t = 1; t < 8; ++t) total = lanes[t] > total ? lanes[t] : total;
  for (; j < n; ++j) total = x[j] > total ? x[j] : total;
  return total;
}

PVO_TARGET_AVX2 float scale_add_max_avx2(float* x, int64_t n, float scale, const float* add) {
  const __m256 g = _mm256_set1_ps(scale);
  __m256 best = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + j), g);
    if (add) v = _mm256_add_ps(v, _mm256_loadu_ps(add + j));
    _mm256_storeu_ps(x + j, v);
    best = _mm256_max_ps(v, best);  // NaN lanes skipped, as in row_max_avx2
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, best);
  float total = lanes[0];
  for (int t = 1; t < 8; ++t) total = lanes[t] > total ? lanes[t] : total;
  for (; j < n; ++j) {
    const float v = add ? x[j] * scale + add[j] : x[j] * scale;
    x[j] = v;
    total = v > total ? v : total;
  }
  return total;
}

}  // namespace

const AttentionCpuKernels* attention_avx2_kernels() {
  static const AttentionCpuKernels table{&gemm_avx2, &exp_sum_avx2, &row_max_avx2, &scale_add_max_avx2};
  return &table;
}

#else

const AttentionCpuKernels* attention_avx2_kernels() { return nullptr; }

#endif

}  // namespace pyvision_ops
