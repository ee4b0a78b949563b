// The AVX2 float32 tile kernels of the distance family (distance_cpu_simd.h), compiled for
// AVX2 + FMA per function and reached through distance_cpu_kernels(). Nothing here on other
// architectures.
#include "distance/distance_cpu_simd.h"

#include <algorithm>
#include <cmath>

#if PVO_X86
#include <immintrin.h>

#include "common/avx2_panel.h"
#endif

namespace pyvision_ops {

#if PVO_X86

namespace {

constexpr int64_t P = kDistancePanel;
using avx2_panel::micro_kernel;
using avx2_panel::transpose8_store;
static_assert(avx2_panel::kRows == kDistancePanel, "the shared panel height");

// Full panels by 8x8 transposes; scalar for the last dim % 8 positions and a partial panel.
// `packed` must be 32-byte aligned.
PVO_TARGET_AVX2 void pack_rows_avx2(const float* src, int64_t rows, int64_t dim, float* packed) {
  const int64_t panels = (rows + P - 1) / P;
  const int64_t dim8 = dim - dim % 8;
  for (int64_t p = 0; p < panels; ++p) {
    float* dst = packed + p * dim * P;
    const int64_t r0 = p * P;
    int64_t k_done = 0;
    if (r0 + P <= rows) {
      for (int64_t half = 0; half < 2; ++half) {
        const float* block = src + (r0 + 8 * half) * dim;
        for (int64_t k = 0; k < dim8; k += 8) {
          __m256 r[8];
          for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(block + i * dim + k);
          transpose8_store(r, dst + k * P + 8 * half);
        }
      }
      k_done = dim8;
    }
    for (int64_t k = k_done; k < dim; ++k) {
      for (int64_t r = 0; r < P; ++r) dst[k * P + r] = r0 + r < rows ? src[(r0 + r) * dim + k] : 0.0f;
    }
  }
}

template <bool kAccumulate>
PVO_TARGET_AVX2 void panel_rows(const float* a, int64_t rows_a, const float* b, int64_t kc, float* c, int64_t ldc) {
  // 16 rows = 6 + 6 + 4; fewer rows round up to the next micro-kernel (the panel is zero-padded,
  // and the tile has 16 rows), so only rows_a rows are meaningful.
  int64_t r = 0;
  while (r < rows_a) {
    if (r + 4 >= rows_a || r == 12) {
      micro_kernel<4, kAccumulate>(a + r, b, kc, c + r * ldc, ldc);
      r += 4;
    } else {
      micro_kernel<6, kAccumulate>(a + r, b, kc, c + r * ldc, ldc);
      r += 6;
    }
  }
}

PVO_TARGET_AVX2 void dot_tile_avx2(const float* a, int64_t rows_a, const float* b, int64_t panels_b, int64_t kc,
                                   int64_t panel_stride, bool accumulate, float* tile, int64_t ld) {
  if (kc == 0) {
    if (accumulate) return;
    for (int64_t r = 0; r < rows_a; ++r) {
      for (int64_t j = 0; j < panels_b * P; ++j) tile[r * ld + j] = 0.0f;
    }
    return;
  }
  for (int64_t k0 = 0; k0 < kc; k0 += kDistanceChunk) {
    const int64_t chunk = kc - k0 < kDistanceChunk ? kc - k0 : kDistanceChunk;
    for (int64_t pb = 0; pb < panels_b; ++pb) {
      const float* bp = b + pb * panel_stride + k0 * P;
      float* c = tile + pb * P;
      if (k0 == 0 && !accumulate) {
        panel_rows<false>(a + k0 * P, rows_a, bp, chunk, c, ld);
      } else {
        panel_rows<true>(a + k0 * P, rows_a, bp, chunk, c, ld);
      }
    }
  }
}

// The metric's values of eight squared distances (finish_distance; a negative d2 from rounding
// is clamped to 0 under the square root).
template <DistanceMetric M>
PVO_TARGET_AVX2 inline __m256 finish_values(__m256 d2) {
  if constexpr (M == DistanceMetric::Euclidean) return _mm256_sqrt_ps(_mm256_max_ps(d2, _mm256_setzero_ps()));
  if constexpr (M == DistanceMetric::Cosine) return _mm256_mul_ps(d2, _mm256_set1_ps(0.5f));
  return d2;
}

// The scalar form of one entry of finish_row (the last cols % 8): false where the exact form
// is needed.
template <DistanceMetric M>
inline bool finish_one(float dot, float norm_x, float norm_y, float& value) {
  const float d2 = norm_x + norm_y - 2.0f * dot;
  if (needs_exact_distance(d2, norm_x, norm_y)) return false;
  value = finish_distance(M, d2);
  return true;
}

template <DistanceMetric M>
PVO_TARGET_AVX2 int64_t finish_row_metric(const float* dot, int64_t cols, float norm_x, const float* norm_y,
                                          float* out) {
  const __m256 nx = _mm256_set1_ps(norm_x), minus_two = _mm256_set1_ps(-2.0f);
  const __m256 fraction = _mm256_set1_ps(kExactFraction), flag = _mm256_set1_ps(-1.0f);
  int64_t flagged = 0;
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) {
    const __m256 sum = _mm256_add_ps(nx, _mm256_loadu_ps(norm_y + j));
    const __m256 d2 = _mm256_fmadd_ps(minus_two, _mm256_loadu_ps(dot + j), sum);
    const __m256 ok = _mm256_cmp_ps(d2, _mm256_mul_ps(fraction, sum), _CMP_GE_OQ);
    _mm256_storeu_ps(out + j, _mm256_blendv_ps(flag, finish_values<M>(d2), ok));
    flagged += 8 - __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(ok)));
  }
  for (; j < cols; ++j) {
    if (!finish_one<M>(dot[j], norm_x, norm_y[j], out[j])) {
      out[j] = -1.0f;
      ++flagged;
    }
  }
  return flagged;
}

PVO_TARGET_AVX2 int64_t finish_row_avx2(DistanceMetric metric, const float* dot, int64_t cols, float norm_x,
                                        const float* norm_y, float* out) {
  switch (metric) {
    case DistanceMetric::Euclidean: return finish_row_metric<DistanceMetric::Euclidean>(dot, cols, norm_x, norm_y, out);
    case DistanceMetric::Cosine: return finish_row_metric<DistanceMetric::Cosine>(dot, cols, norm_x, norm_y, out);
    case DistanceMetric::SqEuclidean:
      return finish_row_metric<DistanceMetric::SqEuclidean>(dot, cols, norm_x, norm_y, out);
    default: break;
  }
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) _mm256_storeu_ps(out + j, _mm256_loadu_ps(dot + j));
  for (; j < cols; ++j) out[j] = dot[j];
  return 0;
}

PVO_TARGET_AVX2 float exact_sq_avx2(const float* x, const float* y, int64_t dim) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= dim; k += 16) {
    const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(y + k));
    const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(x + k + 8), _mm256_loadu_ps(y + k + 8));
    s0 = _mm256_fmadd_ps(d0, d0, s0);
    s1 = _mm256_fmadd_ps(d1, d1, s1);
  }
  for (; k + 8 <= dim; k += 8) {
    const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(y + k));
    s0 = _mm256_fmadd_ps(d0, d0, s0);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(s0, s1));
  float tail = 0.0f;
  for (; k < dim; ++k) {
    const float d = x[k] - y[k];
    tail += d * d;
  }
  return (((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))) + tail;
}

// finish_row_avx2's values and exact-form flags and, on the values, the test of the bound
// (value < bound, or -value < bound as value > -bound with kNegate); NaN fails both. A block
// of eight is blended and stored only when one of its positions is picked.
template <DistanceMetric M, bool kNegate>
PVO_TARGET_AVX2 int64_t finish_select_metric(const float* dot, int64_t cols, float norm_x, const float* norm_y,
                                             float bound, float* out, int32_t* picked) {
  const __m256 nx = _mm256_set1_ps(norm_x), minus_two = _mm256_set1_ps(-2.0f);
  const __m256 fraction = _mm256_set1_ps(kExactFraction), flag = _mm256_set1_ps(-1.0f);
  const __m256 limit = _mm256_set1_ps(kNegate ? -bound : bound);
  int64_t count = 0;
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) {
    const __m256 dots = _mm256_loadu_ps(dot + j);
    __m256 value = dots;
    __m256 ok = _mm256_setzero_ps();
    unsigned mask = 0;
    if constexpr (M != DistanceMetric::Dot) {
      const __m256 sum = _mm256_add_ps(nx, _mm256_loadu_ps(norm_y + j));
      const __m256 d2 = _mm256_fmadd_ps(minus_two, dots, sum);
      ok = _mm256_cmp_ps(d2, _mm256_mul_ps(fraction, sum), _CMP_GE_OQ);
      mask = ~static_cast<unsigned>(_mm256_movemask_ps(ok)) & 0xFFu;
      value = finish_values<M>(d2);
    }
    const __m256 pass = kNegate ? _mm256_cmp_ps(value, limit, _CMP_GT_OQ) : _mm256_cmp_ps(value, limit, _CMP_LT_OQ);
    mask |= static_cast<unsigned>(_mm256_movemask_ps(pass));
    if (mask == 0) continue;
    if constexpr (M != DistanceMetric::Dot) value = _mm256_blendv_ps(flag, value, ok);
    _mm256_storeu_ps(out + j, value);
    while (mask != 0) {
      picked[count++] = static_cast<int32_t>(j + __builtin_ctz(mask));
      mask &= mask - 1;
    }
  }
  for (; j < cols; ++j) {
    float value = dot[j];
    if constexpr (M != DistanceMetric::Dot) {
      if (!finish_one<M>(dot[j], norm_x, norm_y[j], value)) {
        out[j] = -1.0f;
        picked[count++] = static_cast<int32_t>(j);
        continue;
      }
    }
    if ((kNegate ? -value : value) < bound) {
      out[j] = value;
      picked[count++] = static_cast<int32_t>(j);
    }
  }
  return count;
}

template <bool kNegate>
PVO_TARGET_AVX2 int64_t finish_select_sign(DistanceMetric metric, const float* dot, int64_t cols, float norm_x,
                                           const float* norm_y, float bound, float* out, int32_t* picked) {
  switch (metric) {
    case DistanceMetric::Euclidean:
      return finish_select_metric<DistanceMetric::Euclidean, kNegate>(dot, cols, norm_x, norm_y, bound, out, picked);
    case DistanceMetric::Cosine:
      return finish_select_metric<DistanceMetric::Cosine, kNegate>(dot, cols, norm_x, norm_y, bound, out, picked);
    case DistanceMetric::Dot:
      return finish_select_metric<DistanceMetric::Dot, kNegate>(dot, cols, norm_x, norm_y, bound, out, picked);
    default:
      return finish_select_metric<DistanceMetric::SqEuclidean, kNegate>(dot, cols, norm_x, norm_y, bound, out, picked);
  }
}

PVO_TARGET_AVX2 int64_t finish_select_avx2(DistanceMetric metric, const float* dot, int64_t cols, float norm_x,
                                           const float* norm_y, float bound, bool negate, float* out,
                                           int32_t* picked) {
  return negate ? finish_select_sign<true>(metric, dot, cols, norm_x, norm_y, bound, out, picked)
                : finish_select_sign<false>(metric, dot, cols, norm_x, norm_y, bound, out, picked);
}

// w(i, j .. j + 7) of one row i: O's row is contiguous; G is loaded, broadcast (an expanded
// gradient, gj = 0) or gathered. The weights of DistanceBackwardWeights, lane by lane.
template <DistanceMetric M>
PVO_TARGET_AVX2 inline __m256 row_weights8(const DistanceBackwardWeights<float>& w, int64_t i, int64_t j) {
  const float* gp = w.G + i * w.gi + j * w.gj;
  __m256 g;
  if (w.gj == 1) {
    g = _mm256_loadu_ps(gp);
  } else if (w.gj == 0) {
    g = _mm256_broadcast_ss(gp);
  } else {
    const int64_t s = w.gj;
    g = _mm256_setr_ps(gp[0], gp[s], gp[2 * s], gp[3 * s], gp[4 * s], gp[5 * s], gp[6 * s], gp[7 * s]);
  }
  if constexpr (M == DistanceMetric::SqEuclidean) return _mm256_mul_ps(_mm256_set1_ps(2.0f), g);
  if constexpr (M == DistanceMetric::Euclidean) {
    const __m256 o = _mm256_loadu_ps(w.O + i * w.ldo + j);
    return _mm256_and_ps(_mm256_cmp_ps(o, _mm256_setzero_ps(), _CMP_GT_OQ), _mm256_div_ps(g, o));
  }
  return g;
}

// Full panels: each half (8 rows) by blocks of 8 positions, computed along the rows and stored
// k-major with one 8x8 transpose; the row sums run over the stored positions in order of k, then
// over the last kc % 8 positions (scalar), as the portable loop adds them.
template <DistanceMetric M>
PVO_TARGET_AVX2 void weight_rows_metric(const DistanceBackwardWeights<float>& w, int64_t row0, int64_t k0, int64_t kc,
                                        float* a, float* sums) {
  const int64_t kc8 = kc - kc % 8;
  for (int64_t half = 0; half < 2; ++half) {
    const int64_t r0 = row0 + 8 * half;
    float* dst = a + 8 * half;
    __m256 s = _mm256_setzero_ps();
    for (int64_t kb = 0; kb < kc8; kb += 8) {
      __m256 r[8];
      for (int q = 0; q < 8; ++q) r[q] = row_weights8<M>(w, r0 + q, k0 + kb);
      transpose8_store(r, dst + kb * P);
      for (int64_t kk = 0; kk < 8; ++kk) s = _mm256_add_ps(s, _mm256_load_ps(dst + (kb + kk) * P));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, s);
    for (int q = 0; q < 8; ++q) {
      for (int64_t k = kc8; k < kc; ++k) {
        const float v = w(r0 + q, k0 + k);
        dst[k * P + q] = v;
        lanes[q] += v;
      }
      sums[8 * half + q] += lanes[q];
    }
  }
}

// Full panels: position k of the 16 columns is 16 consecutive weights of row k0 + k of W.
template <DistanceMetric M>
PVO_TARGET_AVX2 void weight_cols_metric(const DistanceBackwardWeights<float>& w, int64_t col0, int64_t k0, int64_t kc,
                                        float* a, float* sums) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 v0 = row_weights8<M>(w, k0 + k, col0), v1 = row_weights8<M>(w, k0 + k, col0 + 8);
    _mm256_storeu_ps(a + k * P, v0);
    _mm256_storeu_ps(a + k * P + 8, v1);
    s0 = _mm256_add_ps(s0, v0);
    s1 = _mm256_add_ps(s1, v1);
  }
  _mm256_storeu_ps(sums, _mm256_add_ps(_mm256_loadu_ps(sums), s0));
  _mm256_storeu_ps(sums + 8, _mm256_add_ps(_mm256_loadu_ps(sums + 8), s1));
}

// `a` must be 32-byte aligned (the transposes store aligned).
PVO_TARGET_AVX2 void weight_rows_avx2(const DistanceBackwardWeights<float>& w, int64_t row0, int64_t rows, int64_t k0,
                                      int64_t kc, float* a, float* sums) {
  if (rows < P) return distance_weight_rows_portable(w, row0, rows, k0, kc, a, sums);
  switch (w.metric) {
    case DistanceMetric::SqEuclidean:
      return weight_rows_metric<DistanceMetric::SqEuclidean>(w, row0, k0, kc, a, sums);
    case DistanceMetric::Euclidean: return weight_rows_metric<DistanceMetric::Euclidean>(w, row0, k0, kc, a, sums);
    default: return weight_rows_metric<DistanceMetric::Dot>(w, row0, k0, kc, a, sums);
  }
}

PVO_TARGET_AVX2 void weight_cols_avx2(const DistanceBackwardWeights<float>& w, int64_t col0, int64_t cols, int64_t k0,
                                      int64_t kc, float* a, float* sums) {
  if (cols < P) return distance_weight_cols_portable(w, col0, cols, k0, kc, a, sums);
  switch (w.metric) {
    case DistanceMetric::SqEuclidean:
      return weight_cols_metric<DistanceMetric::SqEuclidean>(w, col0, k0, kc, a, sums);
    case DistanceMetric::Euclidean: return weight_cols_metric<DistanceMetric::Euclidean>(w, col0, k0, kc, a, sums);
    default: return weight_cols_metric<DistanceMetric::Dot>(w, col0, k0, kc, a, sums);
  }
}

// Eight lanes each keep their best and second-best q and the best's column; lanes see columns
// in increasing order, so the first of equal values wins within a lane, and the merge below takes
// the smallest column among lanes with the same best. The second best overall is the smallest of
// the other lanes' bests and every lane's second.
PVO_TARGET_AVX2 void argmin_row_avx2(const float* dot, const float* norm_c, int64_t cols, int64_t j0, float* best,
                                     float* second, int64_t* arg) {
  int64_t j = 0;
  if (cols >= 8) {
    const __m256 two = _mm256_set1_ps(2.0f);
    __m256 b = _mm256_set1_ps(INFINITY), s = _mm256_set1_ps(INFINITY);
    __m256i a = _mm256_setzero_si256();
    __m256i col = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i step = _mm256_set1_epi32(8);
    for (; j + 8 <= cols; j += 8) {
      const __m256 q = _mm256_fnmadd_ps(two, _mm256_loadu_ps(dot + j), _mm256_loadu_ps(norm_c + j));
      const __m256 lower = _mm256_cmp_ps(q, b, _CMP_LT_OQ);
      s = _mm256_blendv_ps(_mm256_min_ps(s, q), b, lower);
      b = _mm256_blendv_ps(b, q, lower);
      a = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(col), lower));
      col = _mm256_add_epi32(col, step);
    }
    alignas(32) float lb[8], ls[8];
    alignas(32) int32_t la[8];
    _mm256_store_ps(lb, b);
    _mm256_store_ps(ls, s);
    _mm256_store_si256(reinterpret_cast<__m256i*>(la), a);
    int winner = -1;
    for (int l = 0; l < 8; ++l) {
      if (!(lb[l] < INFINITY)) continue;
      if (winner < 0 || lb[l] < lb[winner] || (lb[l] == lb[winner] && la[l] < la[winner])) winner = l;
    }
    float bb = *best, ss = *second;
    int64_t aa = *arg;
    if (winner >= 0) {
      float other = INFINITY;
      for (int l = 0; l < 8; ++l) {
        other = std::min(other, ls[l]);
        if (l != winner) other = std::min(other, lb[l]);
      }
      const float lane_best = lb[winner];
      if (lane_best < bb) {
        ss = std::min(bb, other);
        bb = lane_best;
        aa = j0 + la[winner];
      } else {
        ss = std::min(ss, std::min(lane_best, other));
      }
    } else {
      for (int l = 0; l < 8; ++l) ss = std::min(ss, ls[l]);
    }
    *best = bb;
    *second = ss;
    *arg = aa;
  }
  if (j < cols) distance_argmin_row_portable<float>(dot + j, norm_c + j, cols - j, j0 + j, best, second, arg);
}

}  // namespace

const DistanceCpuKernels* distance_avx2_kernels() {
  static const DistanceCpuKernels table{pack_rows_avx2, dot_tile_avx2,     finish_row_avx2,
                                        exact_sq_avx2,  finish_select_avx2, weight_rows_avx2,
                                        weight_cols_avx2, argmin_row_avx2};
  return &table;
}

#else

const DistanceCpuKernels* distance_avx2_kernels() { return nullptr; }

#endif

}  // namespace pyvision_ops
