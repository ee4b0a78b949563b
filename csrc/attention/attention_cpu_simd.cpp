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

// The largest lane of v (no NaN lanes: callers track NaN separately).
PVO_TARGET_AVX2 inline float hmax_ps(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}

// exp(x) for the softmax's arguments x = s * scale - m <= 0 (up to rounding; the caller's
// maximum m bounds them). n = round(x log2 e) comes from one fma with 1.5 * 2^23 + 127, which
// leaves n + 127 in the low mantissa bits (so 2^n is those bits shifted into the exponent
// field); r = x - n ln2 with ln2 split in two (exact product); exp(r) for |r| <= ln2 / 2 is
// 1 + r + c2 r^2 + ... + c5 r^5 in Horner form (coefficients fitted for relative error on that
// interval; about 3 ulp from exp over [-87, 0], reduction included). max(-87.9, x) keeps
// NaN lanes (max_ps returns its second operand when either is NaN) and sends everything below,
// -inf included, to n = -127, whose exponent field is 0: those lanes give +0 without a compare.
// A NaN lane stays NaN (NaN times the finite 2^n). No upper clamp: arguments above 0 are
// rounding residues of the maximum.
PVO_TARGET_AVX2 inline __m256 exp_softmax_ps(__m256 x) {
  const __m256 magic = _mm256_set1_ps(12582912.0f + 127.0f);
  x = _mm256_max_ps(_mm256_set1_ps(-87.9f), x);
  const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
  const __m256 n = _mm256_sub_ps(t, magic);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 poly = _mm256_set1_ps(8.312525227665901e-3f);
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(4.1890114545822144e-2f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.6667114198207855e-1f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(4.99992311000824e-1f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f));
  return _mm256_mul_ps(poly, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23)));
}

// exp(x) for any float32 lanes: exp_softmax_ps after min(88.3, x) (which keeps NaN lanes, as
// max_ps does; exp(88.3) is finite and n = 127 at most).
PVO_TARGET_AVX2 inline __m256 exp_ps(__m256 x) { return exp_softmax_ps(_mm256_min_ps(_mm256_set1_ps(88.3f), x)); }

// C[MR x 8 NV] (+)= A[MR x k] B[k x 8 NV]: MR broadcasts of A's rows and NV loads of B's row feed
// MR * NV FMAs per position; the accumulators are named variables so that they stay in registers
// over all of k (MR = 6, NV = 2: 12 accumulators, 2 loads + 6 broadcasts per 12 FMAs). With MAX,
// the largest entry of each of the MR result rows is folded into row_max[r] from the registers.
// What the block does with its result: store it (accumulate: add it to C), also fold the row
// maxima (MAX), or store the softmax weights exp(result * scale - shift[r]) and add them to the
// 8-lane row sums row_sum8[r] (EXP; gemm_exp).
enum Epilogue { kStore = 0, kStoreMax = 1, kExp = 2 };

struct ExpEpilogue {
  float scale;
  const float* shift;  // per row of the block
  float* row_sum8;     // 8 lanes per row of the block
  __m256* over;        // lanes where result * scale - shift > kLazyRescaleLimit
};

template <int MR, int NV, int EPI = kStore>
PVO_TARGET_AVX2 inline void gemm_block(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                                       int64_t ldc, bool accumulate, float* row_max = nullptr,
                                       const ExpEpilogue* ex = nullptr) {
  constexpr bool MAX = EPI == kStoreMax;
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
  if constexpr (EPI == kExp) {
    const __m256 g = _mm256_set1_ps(ex->scale), limit = _mm256_set1_ps(kLazyRescaleLimit);
    __m256 over = *ex->over;
    for (int r = 0; r < MR; ++r) {
      const __m256 shift = _mm256_set1_ps(ex->shift[r]);
      __m256 total = _mm256_loadu_ps(ex->row_sum8 + 8 * r);
      for (int v = 0; v < NV; ++v) {
        const __m256 x = _mm256_fmsub_ps(sums[r][v], g, shift);
        over = _mm256_or_ps(over, _mm256_cmp_ps(x, limit, _CMP_GT_OQ));  // false for NaN
        const __m256 w = exp_softmax_ps(x);
        _mm256_storeu_ps(c + r * ldc + 8 * v, w);
        total = _mm256_add_ps(total, w);
      }
      _mm256_storeu_ps(ex->row_sum8 + 8 * r, total);
    }
    *ex->over = over;
    return;
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      float* dst = c + r * ldc + 8 * v;
      _mm256_storeu_ps(dst, accumulate ? _mm256_add_ps(_mm256_loadu_ps(dst), sums[r][v]) : sums[r][v]);
    }
  }
  if constexpr (MAX) {
    for (int r = 0; r < MR; ++r) {
      // max_ps returns its second operand when either is NaN, so NaN lanes are skipped by the
      // maximum and detected apart: a NaN score makes the row maximum NaN.
      __m256 best = _mm256_max_ps(sums[r][0], _mm256_set1_ps(-INFINITY));
      __m256 nan = _mm256_cmp_ps(sums[r][0], sums[r][0], _CMP_UNORD_Q);
      if constexpr (NV == 2) {
        best = _mm256_max_ps(sums[r][1], best);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(sums[r][1], sums[r][1], _CMP_UNORD_Q));
      }
      const float h = _mm256_movemask_ps(nan) ? NAN : hmax_ps(best);
      row_max[r] = (h > row_max[r] || h != h) ? h : row_max[r];
    }
  }
}

template <int NV, int EPI>
PVO_TARGET_AVX2 void gemm_columns(int64_t m, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                                  float* c, int64_t ldc, bool accumulate, float* row_max, const ExpEpilogue* ex) {
  constexpr bool MAX = EPI == kStoreMax;
  // The block's rows of the EXP epilogue's per-row arrays.
  const auto rows_from = [ex](int64_t i, ExpEpilogue& local) -> const ExpEpilogue* {
    if (EPI != kExp) return nullptr;
    local = *ex;
    local.shift += i;
    local.row_sum8 += 8 * i;
    return &local;
  };
  ExpEpilogue local{};
  int64_t i = 0;
  for (; i + 6 <= m; i += 6) {
    gemm_block<6, NV, EPI>(k, a + i * lda, lda, b, ldb, c + i * ldc, ldc, accumulate, row_max + (MAX ? i : 0),
                           rows_from(i, local));
  }
  a += i * lda;
  c += i * ldc;
  float* rm = row_max + (MAX ? i : 0);
  const ExpEpilogue* e = rows_from(i, local);
  switch (m - i) {
    case 5: gemm_block<5, NV, EPI>(k, a, lda, b, ldb, c, ldc, accumulate, rm, e); break;
    case 4: gemm_block<4, NV, EPI>(k, a, lda, b, ldb, c, ldc, accumulate, rm, e); break;
    case 3: gemm_block<3, NV, EPI>(k, a, lda, b, ldb, c, ldc, accumulate, rm, e); break;
    case 2: gemm_block<2, NV, EPI>(k, a, lda, b, ldb, c, ldc, accumulate, rm, e); break;
    case 1: gemm_block<1, NV, EPI>(k, a, lda, b, ldb, c, ldc, accumulate, rm, e); break;
    default: break;
  }
}

template <int EPI>
PVO_TARGET_AVX2 void gemm_any(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                              int64_t ldb, float* c, int64_t ldc, bool accumulate, float* row_max,
                              const ExpEpilogue* ex = nullptr) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) gemm_columns<2, EPI>(m, k, a, lda, b + j, ldb, c + j, ldc, accumulate, row_max, ex);
  for (; j + 8 <= n; j += 8) gemm_columns<1, EPI>(m, k, a, lda, b + j, ldb, c + j, ldc, accumulate, row_max, ex);
  if (j < n) {
    if constexpr (EPI == kStoreMax) {
      attention_gemm_row_max_portable<float>(m, n - j, k, a, lda, b + j, ldb, c + j, ldc, row_max);
    } else if constexpr (EPI == kStore) {
      attention_gemm_portable<float>(m, n - j, k, a, lda, b + j, ldb, c + j, ldc, accumulate);
    }
  }
}

PVO_TARGET_AVX2 void gemm_avx2(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                               int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  gemm_any<kStore>(m, n, k, a, lda, b, ldb, c, ldc, accumulate, nullptr);
}

PVO_TARGET_AVX2 void gemm_row_max_avx2(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                                       int64_t ldb, float* c, int64_t ldc, float* row_max) {
  gemm_any<kStoreMax>(m, n, k, a, lda, b, ldb, c, ldc, false, row_max);
}

// attention_gemm_exp_portable: the exp in the blocks' epilogue (while the scores are in
// registers), 64 rows at a time; column counts that are not a multiple of 8 take the portable
// form.
PVO_TARGET_AVX2 bool gemm_exp_avx2(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                                   int64_t ldb, float* c, int64_t ldc, float scale, const float* shift,
                                   float* row_sum) {
  if (n % 8 != 0) return attention_gemm_exp_portable<float>(m, n, k, a, lda, b, ldb, c, ldc, scale, shift, row_sum);
  constexpr int64_t kRows = 64;
  alignas(32) float sums8[kRows * 8];
  __m256 over = _mm256_setzero_ps();
  for (int64_t i0 = 0; i0 < m; i0 += kRows) {
    const int64_t rows = std::min(kRows, m - i0);
    std::fill(sums8, sums8 + rows * 8, 0.0f);
    const ExpEpilogue ex{scale, shift + i0, sums8, &over};
    gemm_any<kExp>(rows, n, k, a + i0 * lda, lda, b, ldb, c + i0 * ldc, ldc, false, nullptr, &ex);
    if (_mm256_movemask_ps(over)) return false;
    for (int64_t r = 0; r < rows; ++r) {
      const float* t = sums8 + 8 * r;
      row_sum[i0 + r] += ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
    }
  }
  return true;
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

PVO_TARGET_AVX2 void exp_shifted_avx2(float* x, int64_t n, float scale, float m, float log_l) {
  const __m256 g = _mm256_set1_ps(scale), mv = _mm256_set1_ps(m), lv = _mm256_set1_ps(log_l);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    _mm256_storeu_ps(x + j, exp_ps(_mm256_sub_ps(_mm256_fmsub_ps(_mm256_loadu_ps(x + j), g, mv), lv)));
  }
  if (j < n) {
    alignas(32) float tail[8];
    const int64_t rest = n - j;
    for (int64_t t = 0; t < 8; ++t) tail[t] = t < rest ? std::fma(x[j + t], scale, -m) - log_l : -INFINITY;
    _mm256_store_ps(tail, exp_ps(_mm256_load_ps(tail)));
    for (int64_t t = 0; t < rest; ++t) x[j + t] = tail[t];
  }
}

PVO_TARGET_AVX2 float row_max_avx2(const float* x, int64_t n) {
  __m256 best = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
  int64_t j = 0;
  // max_ps returns its second operand when either is NaN: NaN lanes are skipped by the maximum
  // and collected in `nan`; any NaN makes the result NaN (attention_row_max_portable's rule).
  for (; j + 8 <= n; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    best = _mm256_max_ps(v, best);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, best);
  float total = _mm256_movemask_ps(nan) ? NAN : lanes[0];
  for (int t = 1; t < 8; ++t) total = lanes[t] > total ? lanes[t] : total;
  for (; j < n; ++j) total = (x[j] > total || x[j] != x[j]) ? x[j] : total;
  return total;
}

PVO_TARGET_AVX2 float scale_add_max_avx2(float* x, int64_t n, float scale, const float* add) {
  const __m256 g = _mm256_set1_ps(scale);
  __m256 best = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + j), g);
    if (add) v = _mm256_add_ps(v, _mm256_loadu_ps(add + j));
    _mm256_storeu_ps(x + j, v);
    best = _mm256_max_ps(v, best);  // NaN lanes collected apart, as in row_max_avx2
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, best);
  float total = _mm256_movemask_ps(nan) ? NAN : lanes[0];
  for (int t = 1; t < 8; ++t) total = lanes[t] > total ? lanes[t] : total;
  for (; j < n; ++j) {
    const float v = add ? x[j] * scale + add[j] : x[j] * scale;
    x[j] = v;
    total = (v > total || v != v) ? v : total;
  }
  return total;
}

// attention_softmax_tile_portable with the exp and the sums in AVX2: the new maxima and the
// rescale factors exp(m_old - m_new) of 8 rows at a time in one vector, then the rows.
PVO_TARGET_AVX2 void softmax_tile_avx2(float* s, int64_t rows, int64_t cols, int64_t lds, float scale,
                                       const float* raw_max, float* m, float* l, float* acc, int64_t ev) {
  const __m256 g = _mm256_set1_ps(scale);
  alignas(32) float m_new[8], factor[8], old[8], raw[8];
  for (int64_t r0 = 0; r0 < rows; r0 += 8) {
    const int64_t nr = std::min<int64_t>(8, rows - r0);
    for (int64_t t = 0; t < 8; ++t) {
      old[t] = t < nr ? m[r0 + t] : -INFINITY;
      raw[t] = t < nr ? raw_max[r0 + t] : -INFINITY;
    }
    // max_ps(o, x) returns x when either is NaN: a NaN raw maximum (a NaN score) makes m_new NaN,
    // as the portable rule does; a NaN old maximum has already made l and the row of acc NaN.
    const __m256 o = _mm256_load_ps(old);
    const __m256 mn = _mm256_max_ps(o, _mm256_mul_ps(_mm256_load_ps(raw), g));
    _mm256_store_ps(m_new, mn);
    // exp(0) = 1 exactly and exp(-inf) = 0; rows whose maximum is still -inf are skipped below.
    _mm256_store_ps(factor, exp_softmax_ps(_mm256_sub_ps(o, mn)));
    for (int64_t t = 0; t < nr; ++t) {
      const int64_t r = r0 + t;
      float* row = s + r * lds;
      if (m_new[t] == -INFINITY) {
        std::fill(row, row + cols, 0.0f);
        continue;
      }
      m[r] = m_new[t];
      float sum;
      if (cols % 16 == 0) {
        const __m256 shift = _mm256_set1_ps(m_new[t]);
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        for (int64_t j = 0; j < cols; j += 16) {
          const __m256 v0 = exp_softmax_ps(_mm256_fmsub_ps(_mm256_loadu_ps(row + j), g, shift));
          const __m256 v1 = exp_softmax_ps(_mm256_fmsub_ps(_mm256_loadu_ps(row + j + 8), g, shift));
          _mm256_storeu_ps(row + j, v0);
          _mm256_storeu_ps(row + j + 8, v1);
          s0 = _mm256_add_ps(s0, v0);
          s1 = _mm256_add_ps(s1, v1);
        }
        __m128 x = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
        x = _mm_add_ps(x, _mm_add_ps(_mm256_castps256_ps128(s1), _mm256_extractf128_ps(s1, 1)));
        x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
        sum = _mm_cvtss_f32(x);
      } else {
        sum = exp_sum_avx2(row, cols, scale, m_new[t]);
      }
      const float f = factor[t];
      l[r] = l[r] * f + sum;
      if (f != 1.0f) {
        float* a = acc + r * ev;
        const __m256 fv = _mm256_set1_ps(f);
        int64_t e = 0;
        for (; e + 8 <= ev; e += 8) _mm256_storeu_ps(a + e, _mm256_mul_ps(_mm256_loadu_ps(a + e), fv));
        for (; e < ev; ++e) a[e] *= f;
      }
    }
  }
}

}  // namespace

const AttentionCpuKernels* attention_avx2_kernels() {
  static const AttentionCpuKernels table{&gemm_avx2,          &exp_sum_avx2,      &row_max_avx2, &scale_add_max_avx2,
                                         &gemm_row_max_avx2, &softmax_tile_avx2, &gemm_exp_avx2,
                                         &exp_shifted_avx2};
  return &table;
}

#else

const AttentionCpuKernels* attention_avx2_kernels() { return nullptr; }

#endif

}  // namespace pyvision_ops
