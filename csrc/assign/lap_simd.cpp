// AVX2 versions of the assignment solver's inner loops (lap_kernels.h): 4 columns per step in
// double precision (float costs widened on load). Compiled for the avx2 target per function and
// used only when the CPU reports AVX2.
#include <immintrin.h>

#include <cstdint>
#include <limits>

#include "assign/lap_kernels.h"

namespace pyvision_ops {
namespace lap {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

#define PVO_AVX2 __attribute__((target("avx2")))

PVO_AVX2 inline __m256d load4(const double* p) { return _mm256_loadu_pd(p); }
PVO_AVX2 inline __m256d load4(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }

// the four 64-bit lane masks of a compare, as four 32-bit masks
PVO_AVX2 inline __m128i lane_mask32(__m256d mask) {
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

template <typename T>
PVO_AVX2 RowMin2 row_min2_impl(const T* c, const double* v, int32_t m) {
  RowMin2 result{kInf, kInf, -1, -1};
  int32_t j = 0;
  if (m >= 4) {
    __m256d m1 = _mm256_set1_pd(kInf), m2 = m1;
    __m256d i1 = _mm256_castsi256_pd(_mm256_set1_epi64x(-1)), i2 = i1;
    __m256i jv = _mm256_setr_epi64x(0, 1, 2, 3);
    const __m256i step = _mm256_set1_epi64x(4);
    for (; j + 4 <= m; j += 4) {
      const __m256d h = _mm256_sub_pd(load4(c + j), load4(v + j));
      const __m256d lt1 = _mm256_cmp_pd(h, m1, _CMP_LT_OQ);
      const __m256d lt2 = _mm256_cmp_pd(h, m2, _CMP_LT_OQ);
      const __m256d jd = _mm256_castsi256_pd(jv);
      const __m256d new_m2 = _mm256_blendv_pd(_mm256_blendv_pd(m2, h, lt2), m1, lt1);
      const __m256d new_i2 = _mm256_blendv_pd(_mm256_blendv_pd(i2, jd, lt2), i1, lt1);
      m1 = _mm256_blendv_pd(m1, h, lt1);
      i1 = _mm256_blendv_pd(i1, jd, lt1);
      m2 = new_m2;
      i2 = new_i2;
      jv = _mm256_add_epi64(jv, step);
    }
    alignas(32) double a1[4], a2[4];
    alignas(32) int64_t b1[4], b2[4];
    _mm256_store_pd(a1, m1);
    _mm256_store_pd(a2, m2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(b1), _mm256_castpd_si256(i1));
    _mm256_store_si256(reinterpret_cast<__m256i*>(b2), _mm256_castpd_si256(i2));
    for (int l = 0; l < 4; ++l) {
      if (b1[l] >= 0) offer(result, a1[l], static_cast<int32_t>(b1[l]));
      if (b2[l] >= 0) offer(result, a2[l], static_cast<int32_t>(b2[l]));
    }
  }
  for (; j < m; ++j) offer(result, static_cast<double>(c[j]) - v[j], j);
  if (result.j1 < 0) result.j1 = 0;  // every entry is +inf: the caller sees u1 = +inf
  return result;
}

template <typename T>
PVO_AVX2 void start_row_impl(const T* c, const double* v, int32_t m, double* open, int32_t* pred, int32_t row) {
  const __m128i rows = _mm_set1_epi32(row);
  int32_t j = 0;
  for (; j + 4 <= m; j += 4) {
    _mm256_storeu_pd(open + j, _mm256_sub_pd(load4(c + j), load4(v + j)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(pred + j), rows);
  }
  for (; j < m; ++j) {
    open[j] = static_cast<double>(c[j]) - v[j];
    pred[j] = row;
  }
}

template <typename T>
PVO_AVX2 int32_t scan_row_impl(const T* c, const double* v, double h, double mind, double* open, int32_t* pred,
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
  for (; j < m; ++j) {
    const double r = static_cast<double>(c[j]) - v[j] - h;
    if (r < open[j]) {
      open[j] = r;
      pred[j] = row;
      if (r <= mind) out[count++] = j;
    }
  }
  return count;
}

template <typename T>
PVO_AVX2 void column_min_impl(const T* c, int32_t m, double* v, int32_t* y, int32_t row) {
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
  for (; j < m; ++j) {
    const double cj = static_cast<double>(c[j]);
    if (cj < v[j]) {
      v[j] = cj;
      y[j] = row;
    }
  }
}

}  // namespace

void column_min_avx2(const double* c, int32_t m, double* v, int32_t* y, int32_t row) {
  column_min_impl(c, m, v, y, row);
}
void column_min_avx2(const float* c, int32_t m, double* v, int32_t* y, int32_t row) {
  column_min_impl(c, m, v, y, row);
}

bool lap_avx2_available() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

RowMin2 row_min2_avx2(const double* c, const double* v, int32_t m) { return row_min2_impl(c, v, m); }
RowMin2 row_min2_avx2(const float* c, const double* v, int32_t m) { return row_min2_impl(c, v, m); }
void start_row_avx2(const double* c, const double* v, int32_t m, double* open, int32_t* pred, int32_t row) {
  start_row_impl(c, v, m, open, pred, row);
}
void start_row_avx2(const float* c, const double* v, int32_t m, double* open, int32_t* pred, int32_t row) {
  start_row_impl(c, v, m, open, pred, row);
}

PVO_AVX2 double open_min_avx2(const double* open, int32_t m) {
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

PVO_AVX2 int32_t close_at_avx2(double* open, int32_t m, double value, int32_t* out) {
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

}  // namespace lap
}  // namespace pyvision_ops
