// The distance family's CPU tile kernels, selected through one table: the portable versions here
// (templates, also used for float64; they define the semantics), the AVX2 float32 versions in
// distance_cpu_simd.cpp. Torch-free.
//
// Layout: rows (of x or y, already shifted by the centre, see distance.h) are packed into
// "panels" of kDistancePanel rows, k-major: panel p holds rows 16 p .. 16 p + 15 as
// packed[p][k][r] (zero past the last row), so one position k of a panel is one 64-byte line.
// A tile is the product of one row panel of x and a run of panels of y: an outer-product
// micro-kernel (6 or 4 rows of the x panel broadcast, the y panel's 16 columns in two registers)
// keeps 12 accumulators in registers over the whole of k.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/cpu_features.h"
#include "distance/distance.h"

namespace pyvision_ops {

constexpr int64_t kDistancePanel = 16;      // rows per panel
constexpr int64_t kDistanceBlockPanels = 16;  // y panels per tile (256 columns)
constexpr int64_t kDistanceChunk = 384;      // positions k per micro-kernel pass

// The weights W of the fused backward (design/distance.md): w(i, j) = 2 G_ij (sqeuclidean),
// G_ij / O_ij where O_ij > 0 and 0 elsewhere (euclidean), G_ij (dot); G is read in its own
// strides (gi, gj; 0 for an expanded gradient), O (the forward's values) with row stride ldo.
template <typename T>
struct DistanceBackwardWeights {
  DistanceMetric metric;
  const T* G;
  int64_t gi, gj;
  const T* O;
  int64_t ldo;
  T operator()(int64_t i, int64_t j) const {
    const T g = G[i * gi + j * gj];
    if (metric == DistanceMetric::SqEuclidean) return T(2) * g;
    if (metric == DistanceMetric::Euclidean) {
      const T o = O[i * ldo + j];
      return o > T(0) ? g / o : T(0);
    }
    return g;
  }
};

struct DistanceCpuKernels {
  // Packs `rows` contiguous rows of length dim into ceil(rows / 16) panels (16 * dim each).
  void (*pack_rows)(const float* src, int64_t rows, int64_t dim, float* packed);
  // tile[r * ld + j] (+)= sum_{k < kc} a[k][r] * b[j / 16][k][j % 16] for r < rows_a (<= 16)
  // and j < 16 * panels_b: `a` points into one panel, `b` into the first of panels_b panels
  // that lie panel_stride elements apart (a sub-range of k: both pointers offset by 16 k0).
  // accumulate: add to the tile instead of overwriting it.
  void (*dot_tile)(const float* a, int64_t rows_a, const float* b, int64_t panels_b, int64_t kc,
                   int64_t panel_stride, bool accumulate, float* tile, int64_t ld);
  // One tile row to metric values: out[j] = finish_distance(metric, d2) with
  // d2 = norm_x + norm_y[j] - 2 dot[j], or -1 where needs_exact_distance(d2, ...) (the caller
  // recomputes those); "dot" copies. Returns how many entries were set to -1.
  int64_t (*finish_row)(DistanceMetric metric, const float* dot, int64_t cols, float norm_x, const float* norm_y,
                        float* out);
  // exact_sq_distance of two rows.
  float (*exact_sq)(const float* x, const float* y, int64_t dim);
  // finish_row and a bound in one pass over the tile row: the positions j (increasing) that
  // need the exact form or whose key is strictly below `bound` go to `picked` (room for cols
  // entries), and their values (-1 for the exact form, as finish_row) to out[j]; other entries
  // of `out` are left as they are. The key is the value, or minus the value with `negate`; NaN
  // never passes. Returns how many positions were picked.
  int64_t (*finish_select)(DistanceMetric metric, const float* dot, int64_t cols, float norm_x, const float* norm_y,
                           float bound, bool negate, float* out, int32_t* picked);
  // One panel of W's rows over a chunk of its columns, packed k-major for dot_tile:
  // a[k * 16 + r] = w(row0 + r, k0 + k) for r < rows (<= 16; 0 for the other rows of the
  // panel) and k < kc; sums[r] += the sum over k of those weights, added in order of k.
  void (*weight_rows)(const DistanceBackwardWeights<float>& w, int64_t row0, int64_t rows, int64_t k0, int64_t kc,
                      float* a, float* sums);
  // The same for W's columns (a panel of W^T's rows): a[k * 16 + r] = w(k0 + k, col0 + r).
  void (*weight_cols)(const DistanceBackwardWeights<float>& w, int64_t col0, int64_t cols, int64_t k0, int64_t kc,
                      float* a, float* sums);
  // The k-means assignment's row scan: over j < cols, q_j = norm_c[j] - 2 dot[j]; *best / *arg
  // become the smallest q seen so far and its column j0 + j (the first of equal ones), *second
  // the second smallest (ties included).
  void (*argmin_row)(const float* dot, const float* norm_c, int64_t cols, int64_t j0, float* best, float* second,
                     int64_t* arg);
};

// --- portable entries (templates: the float64 path uses them too) -------------------------

template <typename T>
void distance_pack_rows_portable(const T* src, int64_t rows, int64_t dim, T* packed) {
  const int64_t panels = (rows + kDistancePanel - 1) / kDistancePanel;
  for (int64_t p = 0; p < panels; ++p) {
    T* dst = packed + p * dim * kDistancePanel;
    for (int64_t r = 0; r < kDistancePanel; ++r) {
      const int64_t row = p * kDistancePanel + r;
      if (row < rows) {
        const T* s = src + row * dim;
        for (int64_t k = 0; k < dim; ++k) dst[k * kDistancePanel + r] = s[k];
      } else {
        for (int64_t k = 0; k < dim; ++k) dst[k * kDistancePanel + r] = T(0);
      }
    }
  }
}

template <typename T>
void distance_dot_tile_portable(const T* a, int64_t rows_a, const T* b, int64_t panels_b, int64_t kc,
                                int64_t panel_stride, bool accumulate, T* tile, int64_t ld) {
  for (int64_t pb = 0; pb < panels_b; ++pb) {
    const T* bp = b + pb * panel_stride;
    for (int64_t r = 0; r < rows_a; ++r) {
      T acc[kDistancePanel] = {};
      for (int64_t k = 0; k < kc; ++k) {
        const T x = a[k * kDistancePanel + r];
        for (int64_t j = 0; j < kDistancePanel; ++j) acc[j] += x * bp[k * kDistancePanel + j];
      }
      T* out = tile + r * ld + pb * kDistancePanel;
      for (int64_t j = 0; j < kDistancePanel; ++j) out[j] = accumulate ? out[j] + acc[j] : acc[j];
    }
  }
}

template <typename T>
int64_t distance_finish_row_portable(DistanceMetric metric, const T* dot, int64_t cols, T norm_x, const T* norm_y,
                                     T* out) {
  if (metric == DistanceMetric::Dot) {
    for (int64_t j = 0; j < cols; ++j) out[j] = dot[j];
    return 0;
  }
  int64_t flagged = 0;
  for (int64_t j = 0; j < cols; ++j) {
    const T d2 = norm_x + norm_y[j] - T(2) * dot[j];
    if (needs_exact_distance(d2, norm_x, norm_y[j])) {
      out[j] = T(-1);
      ++flagged;
    } else {
      out[j] = finish_distance(metric, d2);
    }
  }
  return flagged;
}

template <typename T>
T distance_exact_sq_portable(const T* x, const T* y, int64_t dim) {
  return exact_sq_distance<T, T>(x, y, dim);
}

template <typename T>
int64_t distance_finish_select_portable(DistanceMetric metric, const T* dot, int64_t cols, T norm_x, const T* norm_y,
                                        T bound, bool negate, T* out, int32_t* picked) {
  int64_t count = 0;
  for (int64_t j = 0; j < cols; ++j) {
    T value = dot[j];
    if (metric != DistanceMetric::Dot) {
      const T d2 = norm_x + norm_y[j] - T(2) * dot[j];
      if (needs_exact_distance(d2, norm_x, norm_y[j])) {
        out[j] = T(-1);
        picked[count++] = static_cast<int32_t>(j);
        continue;
      }
      value = finish_distance(metric, d2);
    }
    if ((negate ? -value : value) < bound) {
      out[j] = value;
      picked[count++] = static_cast<int32_t>(j);
    }
  }
  return count;
}

template <typename T>
void distance_weight_rows_portable(const DistanceBackwardWeights<T>& w, int64_t row0, int64_t rows, int64_t k0,
                                   int64_t kc, T* a, T* sums) {
  for (int64_t r = 0; r < kDistancePanel; ++r) {
    if (r >= rows) {
      for (int64_t k = 0; k < kc; ++k) a[k * kDistancePanel + r] = T(0);
      continue;
    }
    T s = T(0);
    for (int64_t k = 0; k < kc; ++k) {
      const T v = w(row0 + r, k0 + k);
      a[k * kDistancePanel + r] = v;
      s += v;
    }
    sums[r] += s;
  }
}

template <typename T>
void distance_weight_cols_portable(const DistanceBackwardWeights<T>& w, int64_t col0, int64_t cols, int64_t k0,
                                   int64_t kc, T* a, T* sums) {
  for (int64_t r = 0; r < kDistancePanel; ++r) {
    if (r >= cols) {
      for (int64_t k = 0; k < kc; ++k) a[k * kDistancePanel + r] = T(0);
      continue;
    }
    T s = T(0);
    for (int64_t k = 0; k < kc; ++k) {
      const T v = w(k0 + k, col0 + r);
      a[k * kDistancePanel + r] = v;
      s += v;
    }
    sums[r] += s;
  }
}

template <typename T>
void distance_argmin_row_portable(const T* dot, const T* norm_c, int64_t cols, int64_t j0, T* best, T* second,
                                  int64_t* arg) {
  T b = *best, s = *second;
  int64_t a = *arg;
  for (int64_t j = 0; j < cols; ++j) {
    const T q = norm_c[j] - T(2) * dot[j];
    if (q < b) {
      s = b;
      b = q;
      a = j0 + j;
    } else if (q < s) {
      s = q;
    }
  }
  *best = b;
  *second = s;
  *arg = a;
}

inline const DistanceCpuKernels& distance_portable_kernels() {
  static const DistanceCpuKernels table{distance_pack_rows_portable<float>, distance_dot_tile_portable<float>,
                                        distance_finish_row_portable<float>, distance_exact_sq_portable<float>,
                                        distance_finish_select_portable<float>, distance_weight_rows_portable<float>,
                                        distance_weight_cols_portable<float>, distance_argmin_row_portable<float>};
  return table;
}

// The AVX2 table (x86 builds), nullptr elsewhere.
const DistanceCpuKernels* distance_avx2_kernels();

inline const DistanceCpuKernels& distance_cpu_kernels() {
  return select_cpu_kernels(distance_portable_kernels(), distance_avx2_kernels());
}

}  // namespace pyvision_ops
