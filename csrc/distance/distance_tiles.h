// The CPU tile engine of the distance family: walks x's rows in groups (kDistanceGroupRows, or
// up to 256 rows for pairwise_topk) against all of y's rows, one tile (a 16-row panel of x times 256 columns of y) at a time, and
// hands each finished row segment (metric values, exact where needed; distance.h) to a sink.
// Nothing of size N x M is formed unless the sink asks for it. Torch-free: the float32 tiles go
// through the kernel table (distance_cpu_simd.h), float64 through the portable templates.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "distance/distance.h"
#include "distance/distance_cpu_simd.h"

namespace pyvision_ops {

constexpr int64_t kDistanceGroupRows = 4 * kDistancePanel;  // x rows per task (y blocks reused 4x)
constexpr int64_t kDistanceTileCols = kDistanceBlockPanels * kDistancePanel;

// One batch item's side (x or y): original rows (exact form), squared norms of the centred rows
// and the packed centred rows, n rows of dim features.
template <typename T>
struct DistanceSide {
  const T* orig;
  const T* norms;
  const T* packed;
  int64_t n;
};

template <typename T>
struct DistanceTileOps;

template <>
struct DistanceTileOps<float> {
  const DistanceCpuKernels& k = distance_cpu_kernels();
  void pack(const float* src, int64_t rows, int64_t dim, float* packed) const { k.pack_rows(src, rows, dim, packed); }
  void dot_tile(const float* a, int64_t rows_a, const float* b, int64_t panels_b, int64_t kc, int64_t panel_stride,
                bool accumulate, float* tile, int64_t ld) const {
    k.dot_tile(a, rows_a, b, panels_b, kc, panel_stride, accumulate, tile, ld);
  }
  int64_t finish_row(DistanceMetric m, const float* dot, int64_t cols, float nx, const float* ny, float* out) const {
    return k.finish_row(m, dot, cols, nx, ny, out);
  }
  float exact_sq(const float* x, const float* y, int64_t dim) const { return k.exact_sq(x, y, dim); }
  void argmin_row(const float* dot, const float* norm_c, int64_t cols, int64_t j0, float* best, float* second,
                  int64_t* arg) const {
    k.argmin_row(dot, norm_c, cols, j0, best, second, arg);
  }
  int64_t finish_select(DistanceMetric m, const float* dot, int64_t cols, float nx, const float* ny, float bound,
                        bool negate, float* out, int32_t* picked) const {
    return k.finish_select(m, dot, cols, nx, ny, bound, negate, out, picked);
  }
  void weight_rows(const DistanceBackwardWeights<float>& w, int64_t row0, int64_t rows, int64_t k0, int64_t kc,
                   float* a, float* sums) const {
    k.weight_rows(w, row0, rows, k0, kc, a, sums);
  }
  void weight_cols(const DistanceBackwardWeights<float>& w, int64_t col0, int64_t cols, int64_t k0, int64_t kc,
                   float* a, float* sums) const {
    k.weight_cols(w, col0, cols, k0, kc, a, sums);
  }
};

template <>
struct DistanceTileOps<double> {
  void pack(const double* src, int64_t rows, int64_t dim, double* packed) const {
    distance_pack_rows_portable(src, rows, dim, packed);
  }
  void dot_tile(const double* a, int64_t rows_a, const double* b, int64_t panels_b, int64_t kc,
                int64_t panel_stride, bool accumulate, double* tile, int64_t ld) const {
    distance_dot_tile_portable(a, rows_a, b, panels_b, kc, panel_stride, accumulate, tile, ld);
  }
  int64_t finish_row(DistanceMetric m, const double* dot, int64_t cols, double nx, const double* ny,
                     double* out) const {
    return distance_finish_row_portable(m, dot, cols, nx, ny, out);
  }
  double exact_sq(const double* x, const double* y, int64_t dim) const { return distance_exact_sq_portable(x, y, dim); }
  void argmin_row(const double* dot, const double* norm_c, int64_t cols, int64_t j0, double* best, double* second,
                  int64_t* arg) const {
    distance_argmin_row_portable<double>(dot, norm_c, cols, j0, best, second, arg);
  }
  int64_t finish_select(DistanceMetric m, const double* dot, int64_t cols, double nx, const double* ny, double bound,
                        bool negate, double* out, int32_t* picked) const {
    return distance_finish_select_portable(m, dot, cols, nx, ny, bound, negate, out, picked);
  }
  void weight_rows(const DistanceBackwardWeights<double>& w, int64_t row0, int64_t rows, int64_t k0, int64_t kc,
                   double* a, double* sums) const {
    distance_weight_rows_portable(w, row0, rows, k0, kc, a, sums);
  }
  void weight_cols(const DistanceBackwardWeights<double>& w, int64_t col0, int64_t cols, int64_t k0, int64_t kc,
                   double* a, double* sums) const {
    distance_weight_cols_portable(w, col0, cols, k0, kc, a, sums);
  }
};

inline int64_t distance_panels(int64_t rows) { return (rows + kDistancePanel - 1) / kDistancePanel; }

// Rows [row_begin, row_begin + rows) of x (row_begin a multiple of 16) against every row of y,
// one block of 16 panels of y (kDistanceTileCols columns) against all the rows at a time. For each x row r and each tile of columns [j0, j0 + cols) the engine
// writes the metric values into sink.target(r, j0) (at least kDistanceTileCols elements) and
// then calls sink.consume(r, j0, values, cols); rows arrive with increasing j0. `tile` is
// scratch of kDistancePanel * kDistanceTileCols elements.
// A selecting sink (one with offer()) may instead take only the values below a bound: where
// sink.selective(r, bound, negate) is true, the values of row r whose key (the value, or minus
// the value with `negate`) is below `bound` arrive one by one as sink.offer(r, j, value) with
// increasing j (others may arrive too: offer() tests again), and consume() is not called.
template <typename T, typename Sink>
void distance_row_group(const DistanceTileOps<T>& ops, DistanceMetric metric, const DistanceSide<T>& x,
                        const DistanceSide<T>& y, int64_t dim, int64_t row_begin, int64_t rows, T* tile, Sink& sink) {
  const int64_t panels_y = distance_panels(y.n);
  const int64_t row_end = row_begin + rows;
  for (int64_t jb = 0; jb < panels_y; jb += kDistanceBlockPanels) {
    const int64_t nb = std::min(kDistanceBlockPanels, panels_y - jb);
    const int64_t j0 = jb * kDistancePanel;
    const int64_t cols = std::min(nb * kDistancePanel, y.n - j0);
    for (int64_t r0 = row_begin; r0 < row_end; r0 += kDistancePanel) {
      const int64_t rows_a = std::min(kDistancePanel, row_end - r0);
      ops.dot_tile(x.packed + (r0 / kDistancePanel) * dim * kDistancePanel, rows_a,
                   y.packed + jb * dim * kDistancePanel, nb, dim, dim * kDistancePanel, false, tile, kDistanceTileCols);
      for (int64_t r = 0; r < rows_a; ++r) {
        const int64_t i = r0 + r;
        if constexpr (requires { sink.offer(i, j0, T(0)); }) {
          T bound;
          bool negate;
          if (sink.selective(i, bound, negate)) {
            T* values = sink.target(i, j0);
            int32_t* picked = sink.picked();
            const int64_t count = ops.finish_select(metric, tile + r * kDistanceTileCols, cols, x.norms[i], y.norms + j0,
                                                    bound, negate, values, picked);
            for (int64_t q = 0; q < count; ++q) {
              const int64_t j = picked[q];
              T v = values[j];
              if (metric != DistanceMetric::Dot && v < T(0)) {
                v = finish_distance(metric, ops.exact_sq(x.orig + i * dim, y.orig + (j0 + j) * dim, dim));
              }
              sink.offer(i, j0 + j, v);
            }
            continue;
          }
        }
        T* out = sink.target(i, j0);
        const int64_t flagged = ops.finish_row(metric, tile + r * kDistanceTileCols, cols, x.norms[i], y.norms + j0, out);
        if (flagged > 0) {
          const T* xi = x.orig + i * dim;
          for (int64_t j = 0; j < cols; ++j) {
            if (out[j] < T(0)) out[j] = finish_distance(metric, ops.exact_sq(xi, y.orig + (j0 + j) * dim, dim));
          }
        }
        sink.consume(i, j0, out, cols);
      }
    }
  }
}

}  // namespace pyvision_ops
