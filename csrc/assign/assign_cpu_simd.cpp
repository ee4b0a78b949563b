// AVX2 versions of the assignment solver's inner loops (assign_cpu_simd.h): 4 columns per step in
// double precision (float costs widened on load). Compiled for AVX2 per function and reached
// through lap_kernels<T>() (and, in the sanitized C++ checks, directly). x86 builds only.
#include "assign/assign_cpu_simd.h"

#if PVO_X86

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace pyvision_ops {
namespace lap {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

PVO_TARGET_AVX2 inline __m256d load4(const double* p) { return _mm256_loadu_pd(p); }
PVO_TARGET_AVX2 inline __m256d load4(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }

// the four 64-bit lane masks of a compare, as four 32-bit masks
PVO_TARGET_AVX2 inline __m128i lane_mask32(__m256d mask) {
  const __m256i low_dwords = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  return _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castpd_si256(mask), low_dwords));
}

inline void offer(RowMin2& r, double h, int32_t j) {
  if (h < r.u2) {
    if (h >= r.u1) {
      r.u2 = h;
      r.j2 = j;
    } else {
      r.u2 = r.u1;
      r.j2 = r.j1;
      r.u1 = h;
      r.j1 = j;
    }
  }
}

// Per-lane smallest and second smallest with their columns: h is offered to one lane set.
struct Min2Lanes {
  __m256d m1, m2, i1, i2;  // indices held as int64 bit patterns
};

// Values by min/max (no blends: blendv is the bottleneck of these loops), indices by three
// blends. Ties keep the earlier column as the smallest and record the later as the second.
PVO_TARGET_AVX2 inline void min2_step(Min2Lanes& s, __m256d h, __m256d jd) {
  const __m256d lt1 = _mm256_cmp_pd(h, s.m1, _CMP_LT_OQ);
  const __m256d lt2 = _mm256_cmp_pd(h, s.m2, _CMP_LT_OQ);
  s.i2 = _mm256_blendv_pd(_mm256_blendv_pd(s.i2, jd, lt2), s.i1, lt1);
  s.i1 = _mm256_blendv_pd(s.i1, jd, lt1);
  s.m2 = _mm256_min_pd(s.m2, _mm256_max_pd(s.m1, h));
  s.m1 = _mm256_min_pd(s.m1, h);
}

PVO_TARGET_AVX2 inline void min2_offer_lanes(RowMin2& result, const Min2Lanes& s) {
  alignas(32) double a1[4], a2[4];
  alignas(32) int64_t b1[4], b2[4];
  _mm256_store_pd(a1, s.m1);
  _mm256_store_pd(a2, s.m2);
  _mm256_store_si256(reinterpret_cast<__m256i*>(b1), _mm256_castpd_si256(s.i1));
  _mm256_store_si256(reinterpret_cast<__m256i*>(b2), _mm256_castpd_si256(s.i2));
  for (int l = 0; l < 4; ++l) {
    if (b1[l] >= 0) offer(result, a1[l], static_cast<int32_t>(b1[l]));
    if (b2[l] >= 0) offer(result, a2[l], static_cast<int32_t>(b2[l]));
  }
}

// Two independent lane sets (columns j..j+3 and j+4..j+7) halve the blend dependency chain.
template <typename T>
PVO_TARGET_AVX2 RowMin2 row_min2_impl(const T* c, const double* v, int32_t m) {
  RowMin2 result{kInf, kInf, -1, -1};
  int32_t j = 0;
  if (m >= 8) {
    const __m256d inf = _mm256_set1_pd(kInf);
    const __m256d none = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
    Min2Lanes a{inf, inf, none, none}, b{inf, inf, none, none};
    __m256i ja = _mm256_setr_epi64x(0, 1, 2, 3), jb = _mm256_setr_epi64x(4, 5, 6, 7);
    const __m256i step = _mm256_set1_epi64x(8);
    for (; j + 8 <= m; j += 8) {
      min2_step(a, _mm256_sub_pd(load4(c + j), load4(v + j)), _mm256_castsi256_pd(ja));
      min2_step(b, _mm256_sub_pd(load4(c + j + 4), load4(v + j + 4)), _mm256_castsi256_pd(jb));
      ja = _mm256_add_epi64(ja, step);
      jb = _mm256_add_epi64(jb, step);
    }
    min2_offer_lanes(result, a);
    min2_offer_lanes(result, b);
  }
  for (; j < m; ++j) offer(result, static_cast<double>(c[j]) - v[j], j);
  if (result.j1 < 0) result.j1 = 0;  // every entry is +inf: the caller sees u1 = +inf
  return result;
}

template <typename T>
PVO_TARGET_AVX2 void start_row_impl(const T* c, const double* v, int32_t m, double* open, int32_t* pred, int32_t row) {
  const __m128i rows = _mm_set1_epi32(row);
  int32_t j = 0;
  for (; j + 4 <= m; j += 4) {
    _mm256_storeu_pd(open + j, _mm256_sub_pd(load4(c + j), load4(v + j)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(pred + j), rows);
  }
  start_row_portable(c + j, v + j, m - j, open + j, pred + j, row);
}

template <typename T>
PVO_TARGET_AVX2 int32_t scan_row_impl(const T* c, const double* v, double h, double mind, double* open, int32_t* pred,
                               int32_t row, int32_t m, int32_t* out) {
  const __m256d hv = _mm256_set1_pd(h), mv = _mm256_set1_pd(mind);
  const __m128i rows = _mm_set1_epi32(row);
  int32_t count = 0, j = 0;
  // 8 columns per step, stores only where a distance dropped (rare once the search is deep)
  for (; j + 8 <= m; j += 8) {
    const __m256d ra = _mm256_sub_pd(_mm256_sub_pd(load4(c + j), load4(v + j)), hv);
    const __m256d rb = _mm256_sub_pd(_mm256_sub_pd(load4(c + j + 4), load4(v + j + 4)), hv);
    const __m256d oa = _mm256_loadu_pd(open + j);
    const __m256d ob = _mm256_loadu_pd(open + j + 4);
    const __m256d ua = _mm256_cmp_pd(ra, oa, _CMP_LT_OQ);
    const __m256d ub = _mm256_cmp_pd(rb, ob, _CMP_LT_OQ);
    if (_mm256_movemask_pd(_mm256_or_pd(ua, ub)) == 0) continue;
    _mm256_storeu_pd(open + j, _mm256_blendv_pd(oa, ra, ua));
    _mm256_storeu_pd(open + j + 4, _mm256_blendv_pd(ob, rb, ub));
    _mm_maskstore_epi32(pred + j, lane_mask32(ua), rows);
    _mm_maskstore_epi32(pred + j + 4, lane_mask32(ub), rows);
    int reached = _mm256_movemask_pd(_mm256_and_pd(ua, _mm256_cmp_pd(ra, mv, _CMP_LE_OQ))) |
                  (_mm256_movemask_pd(_mm256_and_pd(ub, _mm256_cmp_pd(rb, mv, _CMP_LE_OQ))) << 4);
    while (reached) {
      out[count++] = j + __builtin_ctz(reached);
      reached &= reached - 1;
    }
  }
  for (; j + 4 <= m; j += 4) {
    const __m256d r = _mm256_sub_pd(_mm256_sub_pd(load4(c + j), load4(v + j)), hv);
    const __m256d o = _mm256_loadu_pd(open + j);
    const __m256d update = _mm256_cmp_pd(r, o, _CMP_LT_OQ);
    if (_mm256_movemask_pd(update) == 0) continue;
    _mm256_storeu_pd(open + j, _mm256_blendv_pd(o, r, update));
    _mm_maskstore_epi32(pred + j, lane_mask32(update), rows);
    int reached = _mm256_movemask_pd(_mm256_and_pd(update, _mm256_cmp_pd(r, mv, _CMP_LE_OQ)));
    while (reached) {
      out[count++] = j + __builtin_ctz(reached);
      reached &= reached - 1;
    }
  }
  const int32_t tail = scan_row_portable(c + j, v + j, h, mind, open + j, pred + j, row, m - j, out + count);
  for (int32_t e = count; e < count + tail; ++e) out[e] += j;  // the tail's columns are relative to j
  return count + tail;
}

template <typename T>
PVO_TARGET_AVX2 void column_min_impl(const T* c, int32_t m, double* v, int32_t* y, int32_t row) {
  const __m128i rows = _mm_set1_epi32(row);
  int32_t j = 0;
  for (; j + 4 <= m; j += 4) {
    const __m256d cj = load4(c + j);
    const __m256d vj = _mm256_loadu_pd(v + j);
    const __m256d lower = _mm256_cmp_pd(cj, vj, _CMP_LT_OQ);
    if (_mm256_movemask_pd(lower) == 0) continue;
    _mm256_storeu_pd(v + j, _mm256_blendv_pd(vj, cj, lower));
    _mm_maskstore_epi32(y + j, lane_mask32(lower), rows);
  }
  column_min_portable(c + j, m - j, v + j, y + j, row);
}

// lanes that are NaN or -inf (not greater than -inf, unordered included)
PVO_TARGET_AVX2 inline __m256d invalid_lanes(__m256d x) {
  return _mm256_cmp_pd(x, _mm256_set1_pd(-kInf), _CMP_NGT_UQ);
}
PVO_TARGET_AVX2 inline __m128 invalid_lanes(__m128 x) {
  return _mm_cmp_ps(x, _mm_set1_ps(-std::numeric_limits<float>::infinity()), _CMP_NGT_UQ);
}

}  // namespace

PVO_TARGET_AVX2 bool any_invalid_avx2(const double* c, int64_t count) {
  __m256d bad = _mm256_setzero_pd();
  int64_t e = 0;
  for (; e + 4 <= count; e += 4) bad = _mm256_or_pd(bad, invalid_lanes(_mm256_loadu_pd(c + e)));
  return _mm256_movemask_pd(bad) != 0 || any_invalid_portable(c + e, count - e);
}

PVO_TARGET_AVX2 bool any_invalid_avx2(const float* c, int64_t count) {
  __m128 bad = _mm_setzero_ps();
  int64_t e = 0;
  for (; e + 4 <= count; e += 4) bad = _mm_or_ps(bad, invalid_lanes(_mm_loadu_ps(c + e)));
  return _mm_movemask_ps(bad) != 0 || any_invalid_portable(c + e, count - e);
}

// Stores the transpose of the 4x4 block whose rows are r0..r3 into dst rows d, d + ld, ...
PVO_TARGET_AVX2 inline void store_transposed4(__m256d r0, __m256d r1, __m256d r2, __m256d r3, double* d, int64_t ld) {
  const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
  const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
  _mm256_storeu_pd(d, _mm256_permute2f128_pd(t0, t2, 0x20));
  _mm256_storeu_pd(d + ld, _mm256_permute2f128_pd(t1, t3, 0x20));
  _mm256_storeu_pd(d + 2 * ld, _mm256_permute2f128_pd(t0, t2, 0x31));
  _mm256_storeu_pd(d + 3 * ld, _mm256_permute2f128_pd(t1, t3, 0x31));
}

PVO_TARGET_AVX2 inline void store_transposed4(__m128 r0, __m128 r1, __m128 r2, __m128 r3, float* d, int64_t ld) {
  _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
  _mm_storeu_ps(d, r0);
  _mm_storeu_ps(d + ld, r1);
  _mm_storeu_ps(d + 2 * ld, r2);
  _mm_storeu_ps(d + 3 * ld, r3);
}

// the source's ragged edge (rows [row0, rows) x columns [col0, cols) ...) element by element
template <typename T>
inline bool transpose_check_edge(const T* src, int32_t rows, int32_t cols, T* dst, int32_t row0, int32_t row1,
                                 int32_t col0, int32_t col1) {
  bool any = false;
  for (int64_t r = row0; r < row1; ++r) {
    for (int64_t c = col0; c < col1; ++c) {
      const T x = src[r * cols + c];
      any |= !(x > -std::numeric_limits<T>::infinity());
      dst[c * rows + r] = x;
    }
  }
  return any;
}

// 4x4 blocks transposed in registers (8x8 tiles measured no different), ragged edges by element.
PVO_TARGET_AVX2 bool transpose_check_avx2(const double* src, int32_t rows, int32_t cols, double* dst) {
  __m256d bad = _mm256_setzero_pd();
  const int64_t ls = cols, ld = rows;
  const int32_t rows4 = rows & ~3, cols4 = cols & ~3;
  for (int32_t i = 0; i < rows4; i += 4) {
    for (int32_t j = 0; j < cols4; j += 4) {
      const double* s = src + i * ls + j;
      const __m256d r0 = _mm256_loadu_pd(s), r1 = _mm256_loadu_pd(s + ls);
      const __m256d r2 = _mm256_loadu_pd(s + 2 * ls), r3 = _mm256_loadu_pd(s + 3 * ls);
      bad = _mm256_or_pd(_mm256_or_pd(bad, _mm256_or_pd(invalid_lanes(r0), invalid_lanes(r1))),
                         _mm256_or_pd(invalid_lanes(r2), invalid_lanes(r3)));
      store_transposed4(r0, r1, r2, r3, dst + j * ld + i, ld);
    }
  }
  const bool edges = transpose_check_edge(src, rows, cols, dst, 0, rows4, cols4, cols) |
                     transpose_check_edge(src, rows, cols, dst, rows4, rows, 0, cols);
  return edges || _mm256_movemask_pd(bad) != 0;
}

PVO_TARGET_AVX2 bool transpose_check_avx2(const float* src, int32_t rows, int32_t cols, float* dst) {
  __m128 bad = _mm_setzero_ps();
  const int64_t ls = cols, ld = rows;
  const int32_t rows4 = rows & ~3, cols4 = cols & ~3;
  for (int32_t i = 0; i < rows4; i += 4) {
    for (int32_t j = 0; j < cols4; j += 4) {
      const float* s = src + i * ls + j;
      const __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + ls);
      const __m128 r2 = _mm_loadu_ps(s + 2 * ls), r3 = _mm_loadu_ps(s + 3 * ls);
      bad = _mm_or_ps(_mm_or_ps(bad, _mm_or_ps(invalid_lanes(r0), invalid_lanes(r1))),
                      _mm_or_ps(invalid_lanes(r2), invalid_lanes(r3)));
      store_transposed4(r0, r1, r2, r3, dst + j * ld + i, ld);
    }
  }
  const bool edges = transpose_check_edge(src, rows, cols, dst, 0, rows4, cols4, cols) |
                     transpose_check_edge(src, rows, cols, dst, rows4, rows, 0, cols);
  return edges || _mm_movemask_ps(bad) != 0;
}

namespace {

PVO_TARGET_AVX2 inline __m256d widen4(__m128 x) { return _mm256_cvtps_pd(x); }

// float32: column blocks of 4 outer, rows inner: the 4 columns' running minimum and its row stay
// in registers (lanes = columns, two chains for even and odd rows) while their 4x4 blocks are
// checked and transposed. (float64 uses transpose_check_min_rows, which streams better.)
PVO_TARGET_AVX2 bool transpose_check_min_columns(const float* src, int32_t rows, int32_t cols, float* dst, RowMin2* mins) {
  using T = float;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const int32_t rows4 = rows & ~3, cols4 = cols & ~3;
  const __m256d inf = _mm256_set1_pd(kInf), none = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
  const __m256i two = _mm256_set1_epi64x(2);
  __m256d bad = _mm256_setzero_pd();
  bool any = false;
  for (int32_t j = 0; j < cols4; j += 4) {
    __m256d m_even = inf, m_odd = inf, i_even = none, i_odd = none;
    __m256i index_even = _mm256_setzero_si256(), index_odd = _mm256_set1_epi64x(1);
    for (int32_t i = 0; i < rows4; i += 4) {
      const T* p = src + static_cast<int64_t>(i) * cols + j;
      const __m128 f0 = _mm_loadu_ps(p), f1 = _mm_loadu_ps(p + cols);
      const __m128 f2 = _mm_loadu_ps(p + 2 * static_cast<int64_t>(cols));
      const __m128 f3 = _mm_loadu_ps(p + 3 * static_cast<int64_t>(cols));
      store_transposed4(f0, f1, f2, f3, dst + static_cast<int64_t>(j) * rows + i, rows);
      const __m256d r[4] = {widen4(f0), widen4(f1), widen4(f2), widen4(f3)};
      // NaN here (a pair is unordered when either is NaN); -inf shows up as a minimum below
      bad = _mm256_or_pd(bad, _mm256_or_pd(_mm256_cmp_pd(r[0], r[1], _CMP_UNORD_Q),
                                           _mm256_cmp_pd(r[2], r[3], _CMP_UNORD_Q)));
      for (int k = 0; k < 4; k += 2) {
        const __m256d lt_even = _mm256_cmp_pd(r[k], m_even, _CMP_LT_OQ);
        const __m256d lt_odd = _mm256_cmp_pd(r[k + 1], m_odd, _CMP_LT_OQ);
        m_even = _mm256_min_pd(m_even, r[k]);
        m_odd = _mm256_min_pd(m_odd, r[k + 1]);
        i_even = _mm256_blendv_pd(i_even, _mm256_castsi256_pd(index_even), lt_even);
        i_odd = _mm256_blendv_pd(i_odd, _mm256_castsi256_pd(index_odd), lt_odd);
        index_even = _mm256_add_epi64(index_even, two);
        index_odd = _mm256_add_epi64(index_odd, two);
      }
    }
    alignas(32) double a[4], b[4];
    alignas(32) int64_t ia[4], ib[4];
    _mm256_store_pd(a, m_even);
    _mm256_store_pd(b, m_odd);
    _mm256_store_si256(reinterpret_cast<__m256i*>(ia), _mm256_castpd_si256(i_even));
    _mm256_store_si256(reinterpret_cast<__m256i*>(ib), _mm256_castpd_si256(i_odd));
    for (int k = 0; k < 4; ++k) {
      RowMin2 m{kInf, kInf, -1, -1};
      if (ia[k] >= 0) offer(m, a[k], static_cast<int32_t>(ia[k]));
      if (ib[k] >= 0) offer(m, b[k], static_cast<int32_t>(ib[k]));
      for (int32_t i = rows4; i < rows; ++i) {  // ragged rows
        const T x = src[static_cast<int64_t>(i) * cols + j + k];
        any |= !(x > kNegInf);
        dst[static_cast<int64_t>(j + k) * rows + i] = x;
        offer(m, static_cast<double>(x), i);
      }
      any |= m.u1 == -kInf;
      mins[j + k] = m;
    }
  }
  for (int32_t j = cols4; j < cols; ++j) {  // ragged columns
    RowMin2 m{kInf, kInf, -1, -1};
    for (int32_t i = 0; i < rows; ++i) {
      const T x = src[static_cast<int64_t>(i) * cols + j];
      any |= !(x > kNegInf);
      dst[static_cast<int64_t>(j) * rows + i] = x;
      offer(m, static_cast<double>(x), i);
    }
    mins[j] = m;
  }
  return any || _mm256_movemask_pd(bad) != 0;
}

// Row-band order (reads whole rows, like transpose_check_avx2) with the columns' running minima
// kept in memory (value, row), 4 columns per vector: one read of the matrix in its own order.
PVO_TARGET_AVX2 bool transpose_check_min_rows(const double* src, int32_t rows, int32_t cols, double* dst, RowMin2* mins,
                                       double* min_value, int64_t* min_row) {
  const int64_t ls = cols, ld = rows;
  const int32_t rows4 = rows & ~3, cols4 = cols & ~3;
  for (int32_t j = 0; j < cols4; j += 4) {
    _mm256_storeu_pd(min_value + j, _mm256_set1_pd(kInf));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(min_row + j), _mm256_set1_epi64x(-1));
  }
  __m256d bad = _mm256_setzero_pd();
  for (int32_t i = 0; i < rows4; i += 4) {
    const __m256i i0 = _mm256_set1_epi64x(i), i1 = _mm256_set1_epi64x(i + 1);
    const __m256i i2 = _mm256_set1_epi64x(i + 2), i3 = _mm256_set1_epi64x(i + 3);
    for (int32_t j = 0; j < cols4; j += 4) {
      const double* s = src + i * ls + j;
      // prefetch the band two ahead, a line per row every 8 columns (300x100 problems streaming
      // from memory: 67-77 -> 45-61 us per problem on the development VM)
      if ((j & 7) == 0 && i + 8 < rows4) {
        const double* ahead = s + 8 * ls;
        for (int k = 0; k < 4; ++k) _mm_prefetch(reinterpret_cast<const char*>(ahead + k * ls), _MM_HINT_T0);
      }
      const __m256d r0 = _mm256_loadu_pd(s), r1 = _mm256_loadu_pd(s + ls);
      const __m256d r2 = _mm256_loadu_pd(s + 2 * ls), r3 = _mm256_loadu_pd(s + 3 * ls);
      bad = _mm256_or_pd(bad, _mm256_or_pd(_mm256_cmp_pd(r0, r1, _CMP_UNORD_Q), _mm256_cmp_pd(r2, r3, _CMP_UNORD_Q)));
      store_transposed4(r0, r1, r2, r3, dst + j * ld + i, ld);
      // the first smallest of the 4 rows per column, then against the running minimum
      const __m256d b01 = _mm256_cmp_pd(r1, r0, _CMP_LT_OQ), b23 = _mm256_cmp_pd(r3, r2, _CMP_LT_OQ);
      const __m256d m01 = _mm256_min_pd(r0, r1), m23 = _mm256_min_pd(r2, r3);
      const __m256d x01 = _mm256_blendv_pd(_mm256_castsi256_pd(i0), _mm256_castsi256_pd(i1), b01);
      const __m256d x23 = _mm256_blendv_pd(_mm256_castsi256_pd(i2), _mm256_castsi256_pd(i3), b23);
      const __m256d b = _mm256_cmp_pd(m23, m01, _CMP_LT_OQ);
      const __m256d m4 = _mm256_min_pd(m01, m23);
      const __m256d x4 = _mm256_blendv_pd(x01, x23, b);
      const __m256d old = _mm256_loadu_pd(min_value + j);
      const __m256d better = _mm256_cmp_pd(m4, old, _CMP_LT_OQ);
      _mm256_storeu_pd(min_value + j, _mm256_min_pd(old, m4));
      __m256i* index = reinterpret_cast<__m256i*>(min_row + j);
      _mm256_storeu_si256(index, _mm256_castpd_si256(_mm256_blendv_pd(
                                     _mm256_castsi256_pd(_mm256_loadu_si256(index)), x4, better)));
    }
  }
  bool any = _mm256_movemask_pd(bad) != 0;
  for (int32_t j = 0; j < cols4; ++j) {
    RowMin2 m{kInf, kInf, -1, -1};
    if (min_row[j] >= 0) offer(m, min_value[j], static_cast<int32_t>(min_row[j]));
    mins[j] = m;
  }
  for (int32_t i = rows4; i < rows; ++i) {  // ragged rows, all columns
    for (int32_t j = 0; j < cols4; ++j) {
      const double x = src[i * ls + j];
      any |= !(x > -kInf);
      dst[j * ld + i] = x;
      offer(mins[j], x, i);
    }
  }
  for (int32_t j = cols4; j < cols; ++j) {  // ragged columns, all rows
    RowMin2 m{kInf, kInf, -1, -1};
    for (int32_t i = 0; i < rows; ++i) {
      const double x = src[i * ls + j];
      any |= !(x > -kInf);
      dst[j * ld + i] = x;
      offer(m, x, i);
    }
    mins[j] = m;
  }
  for (int32_t j = 0; j < cols; ++j) any |= mins[j].u1 == -kInf;
  return any;
}

}  // namespace

bool transpose_check_min_rows_avx2(const double* src, int32_t rows, int32_t cols, double* dst, RowMin2* mins,
                                   double* min_value, int64_t* min_row) {
  return transpose_check_min_rows(src, rows, cols, dst, mins, min_value, min_row);
}
bool transpose_check_min_avx2(const float* src, int32_t rows, int32_t cols, float* dst, RowMin2* mins) {
  return transpose_check_min_columns(src, rows, cols, dst, mins);
}

void column_min_avx2(const double* c, int32_t m, double* v, int32_t* y, int32_t row) {
  column_min_impl(c, m, v, y, row);
}
void column_min_avx2(const float* c, int32_t m, double* v, int32_t* y, int32_t row) {
  column_min_impl(c, m, v, y, row);
}

RowMin2 row_min2_avx2(const double* c, const double* v, int32_t m) { return row_min2_impl(c, v, m); }
RowMin2 row_min2_avx2(const float* c, const double* v, int32_t m) { return row_min2_impl(c, v, m); }
void start_row_avx2(const double* c, const double* v, int32_t m, double* open, int32_t* pred, int32_t row) {
  start_row_impl(c, v, m, open, pred, row);
}
void start_row_avx2(const float* c, const double* v, int32_t m, double* open, int32_t* pred, int32_t row) {
  start_row_impl(c, v, m, open, pred, row);
}

PVO_TARGET_AVX2 double open_min_avx2(const double* open, int32_t m) {
  const __m256d inf = _mm256_set1_pd(kInf), ninf = _mm256_set1_pd(-kInf);
  __m256d best = inf;
  int32_t j = 0;
  for (; j + 4 <= m; j += 4) {
    const __m256d o = _mm256_loadu_pd(open + j);
    best = _mm256_min_pd(best, _mm256_blendv_pd(o, inf, _mm256_cmp_pd(o, ninf, _CMP_EQ_OQ)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, best);
  double result = lanes[0];
  for (int l = 1; l < 4; ++l) result = lanes[l] < result ? lanes[l] : result;
  for (; j < m; ++j) {
    if (open[j] > -kInf && open[j] < result) result = open[j];
  }
  return result;
}

PVO_TARGET_AVX2 int32_t close_at_avx2(double* open, int32_t m, double value, int32_t* out) {
  const __m256d target = _mm256_set1_pd(value);
  int32_t count = 0, j = 0;
  for (; j + 4 <= m; j += 4) {
    int hit = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(open + j), target, _CMP_EQ_OQ));
    while (hit) {
      const int32_t k = j + __builtin_ctz(hit);
      out[count++] = k;
      open[k] = -kInf;
      hit &= hit - 1;
    }
  }
  for (; j < m; ++j) {
    if (open[j] == value) {
      out[count++] = j;
      open[j] = -kInf;
    }
  }
  return count;
}

int32_t scan_row_avx2(const double* c, const double* v, double h, double mind, double* open, int32_t* pred,
                      int32_t row, int32_t m, int32_t* out) {
  return scan_row_impl(c, v, h, mind, open, pred, row, m, out);
}
int32_t scan_row_avx2(const float* c, const double* v, double h, double mind, double* open, int32_t* pred,
                      int32_t row, int32_t m, int32_t* out) {
  return scan_row_impl(c, v, h, mind, open, pred, row, m, out);
}

template <>
const LapKernels<double>* lap_avx2_kernels<double>() {
  static constexpr LapKernels<double> avx2{
      static_cast<RowMin2 (*)(const double*, const double*, int32_t)>(&row_min2_avx2),
      static_cast<void (*)(const double*, const double*, int32_t, double*, int32_t*, int32_t)>(&start_row_avx2),
      &open_min_avx2,
      &close_at_avx2,
      static_cast<int32_t (*)(const double*, const double*, double, double, double*, int32_t*, int32_t, int32_t,
                              int32_t*)>(&scan_row_avx2),
      static_cast<void (*)(const double*, int32_t, double*, int32_t*, int32_t)>(&column_min_avx2),
      static_cast<bool (*)(const double*, int64_t)>(&any_invalid_avx2),
      static_cast<bool (*)(const double*, int32_t, int32_t, double*)>(&transpose_check_avx2),
      nullptr,
      &transpose_check_min_rows_avx2};
  return &avx2;
}

template <>
const LapKernels<float>* lap_avx2_kernels<float>() {
  static constexpr LapKernels<float> avx2{
      static_cast<RowMin2 (*)(const float*, const double*, int32_t)>(&row_min2_avx2),
      static_cast<void (*)(const float*, const double*, int32_t, double*, int32_t*, int32_t)>(&start_row_avx2),
      &open_min_avx2,
      &close_at_avx2,
      static_cast<int32_t (*)(const float*, const double*, double, double, double*, int32_t*, int32_t, int32_t,
                              int32_t*)>(&scan_row_avx2),
      static_cast<void (*)(const float*, int32_t, double*, int32_t*, int32_t)>(&column_min_avx2),
      static_cast<bool (*)(const float*, int64_t)>(&any_invalid_avx2),
      static_cast<bool (*)(const float*, int32_t, int32_t, float*)>(&transpose_check_avx2),
      &transpose_check_min_avx2,
      nullptr};
  return &avx2;
}

}  // namespace lap
}  // namespace pyvision_ops

#else  // not x86: the portable loops only

namespace pyvision_ops {
namespace lap {

template <>
const LapKernels<double>* lap_avx2_kernels<double>() {
  return nullptr;
}
template <>
const LapKernels<float>* lap_avx2_kernels<float>() {
  return nullptr;
}

}  // namespace lap
}  // namespace pyvision_ops

#endif
