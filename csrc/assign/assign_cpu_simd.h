// The assignment family's CPU kernel table: the inner loops of the CPU solver (assign_jv.h), each
// a pass over one row of costs and the column arrays, and the entry checks and transposes that
// prepare a problem. Portable versions here, AVX2 versions in assign_cpu_simd.cpp, selected by
// lap_kernels<T>() (common/cpu_features.h). Costs are float or double; duals and distances are
// double.
#pragma once

#include <cstdint>
#include <limits>

#include "common/cpu_features.h"

namespace pyvision_ops {
namespace lap {

struct RowMin2 {
  double u1, u2;   // smallest and second smallest c[j] - v[j] (+inf when absent)
  int32_t j1, j2;  // their columns (j2 = -1 when m == 1)
};

template <typename T>
struct LapKernels {
  // min and second min of c[j] - v[j] over j < m (m >= 1)
  RowMin2 (*row_min2)(const T* c, const double* v, int32_t m);
  // open[j] = c[j] - v[j], pred[j] = row
  void (*start_row)(const T* c, const double* v, int32_t m, double* open, int32_t* pred, int32_t row);
  // min over the open columns (open[j] > -inf); +inf when none
  double (*open_min)(const double* open, int32_t m);
  // appends every open column with open[j] == value to out and closes it (open[j] = -inf)
  int32_t (*close_at)(double* open, int32_t m, double value, int32_t* out);
  // r = c[j] - v[j] - h; where r < open[j]: open[j] = r, pred[j] = row; appends to out the
  // updated columns with r <= mind; returns how many
  int32_t (*scan_row)(const T* c, const double* v, double h, double mind, double* open, int32_t* pred, int32_t row,
                      int32_t m, int32_t* out);
  // column minima so far: where c[j] < v[j]: v[j] = c[j], y[j] = row
  void (*column_min)(const T* c, int32_t m, double* v, int32_t* y, int32_t row);
  // NaN or -inf anywhere in c[0..count)
  bool (*any_invalid)(const T* c, int64_t count);
  // dst (cols x rows) = src (rows x cols)^T, and whether src holds NaN or -inf
  bool (*transpose_check)(const T* src, int32_t rows, int32_t cols, T* dst);
  // transpose_check that also gives each row j of dst its smallest entry (mins[j].u1, .j1; .u2
  // and .j2 are not meaningful); null where not written (float only)
  bool (*transpose_check_min)(const T* src, int32_t rows, int32_t cols, T* dst, RowMin2* mins);
  // the same in the source's row order, with the running minima in min_value / min_row (cols
  // entries of scratch each); null where not written (double only)
  bool (*transpose_check_min_rows)(const T* src, int32_t rows, int32_t cols, T* dst, RowMin2* mins, double* min_value,
                                   int64_t* min_row);
};

template <typename T>
RowMin2 row_min2_portable(const T* c, const double* v, int32_t m) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  RowMin2 r{static_cast<double>(c[0]) - v[0], inf, 0, -1};
  for (int32_t j = 1; j < m; ++j) {
    const double h = static_cast<double>(c[j]) - v[j];
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
  return r;
}

template <typename T>
void start_row_portable(const T* c, const double* v, int32_t m, double* open, int32_t* pred, int32_t row) {
  for (int32_t j = 0; j < m; ++j) {
    open[j] = static_cast<double>(c[j]) - v[j];
    pred[j] = row;
  }
}

inline double open_min_portable(const double* open, int32_t m) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  double best = inf;
  for (int32_t j = 0; j < m; ++j) {
    if (open[j] > -inf && open[j] < best) best = open[j];
  }
  return best;
}

inline int32_t close_at_portable(double* open, int32_t m, double value, int32_t* out) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  int32_t count = 0;
  for (int32_t j = 0; j < m; ++j) {
    if (open[j] == value) {
      out[count++] = j;
      open[j] = -inf;
    }
  }
  return count;
}

template <typename T>
int32_t scan_row_portable(const T* c, const double* v, double h, double mind, double* open, int32_t* pred,
                          int32_t row, int32_t m, int32_t* out) {
  int32_t count = 0;
  for (int32_t j = 0; j < m; ++j) {
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
void column_min_portable(const T* c, int32_t m, double* v, int32_t* y, int32_t row) {
  for (int32_t j = 0; j < m; ++j) {
    const double cj = static_cast<double>(c[j]);
    if (cj < v[j]) {
      v[j] = cj;
      y[j] = row;
    }
  }
}

// NaN or -inf anywhere in c[0..count): portable and AVX2
template <typename T>
bool any_invalid_portable(const T* c, int64_t count) {
  bool bad = false;
  for (int64_t e = 0; e < count; ++e) bad |= !(c[e] > -std::numeric_limits<T>::infinity());
  return bad;
}
bool any_invalid_avx2(const double* c, int64_t count);
bool any_invalid_avx2(const float* c, int64_t count);

// dst (cols x rows) = src (rows x cols)^T, and whether src holds NaN or -inf
template <typename T>
bool transpose_check_portable(const T* src, int32_t rows, int32_t cols, T* dst) {
  bool bad = false;
  for (int32_t i = 0; i < rows; ++i) {
    const T* s = src + static_cast<int64_t>(i) * cols;
    for (int32_t j = 0; j < cols; ++j) {
      bad |= !(s[j] > -std::numeric_limits<T>::infinity());
      dst[static_cast<int64_t>(j) * rows + i] = s[j];
    }
  }
  return bad;
}
bool transpose_check_avx2(const double* src, int32_t rows, int32_t cols, double* dst);
bool transpose_check_avx2(const float* src, int32_t rows, int32_t cols, float* dst);

// transpose_check_avx2 that also gives each row j of dst (column j of the source) its smallest
// entry: mins[j].u1 and .j1 (the first smallest; .u2/.j2 are not meaningful).
bool transpose_check_min_avx2(const float* src, int32_t rows, int32_t cols, float* dst, RowMin2* mins);
// The same in the source's row order (the order that streams well from memory), with the running
// minima in min_value / min_row (cols entries of scratch each).
bool transpose_check_min_rows_avx2(const double* src, int32_t rows, int32_t cols, double* dst, RowMin2* mins,
                                   double* min_value, int64_t* min_row);

// The AVX2 kernels (assign_cpu_simd.cpp, x86 builds only), also called directly by the sanitized
// C++ checks in tests/cpp.
RowMin2 row_min2_avx2(const double* c, const double* v, int32_t m);
RowMin2 row_min2_avx2(const float* c, const double* v, int32_t m);
void start_row_avx2(const double* c, const double* v, int32_t m, double* open, int32_t* pred, int32_t row);
void start_row_avx2(const float* c, const double* v, int32_t m, double* open, int32_t* pred, int32_t row);
double open_min_avx2(const double* open, int32_t m);
int32_t close_at_avx2(double* open, int32_t m, double value, int32_t* out);
int32_t scan_row_avx2(const double* c, const double* v, double h, double mind, double* open, int32_t* pred,
                      int32_t row, int32_t m, int32_t* out);
int32_t scan_row_avx2(const float* c, const double* v, double h, double mind, double* open, int32_t* pred,
                      int32_t row, int32_t m, int32_t* out);
void column_min_avx2(const double* c, int32_t m, double* v, int32_t* y, int32_t row);
void column_min_avx2(const float* c, int32_t m, double* v, int32_t* y, int32_t row);

// The AVX2 table for T (assign_cpu_simd.cpp), nullptr where the build has none.
template <typename T>
const LapKernels<T>* lap_avx2_kernels();
template <>
const LapKernels<double>* lap_avx2_kernels<double>();
template <>
const LapKernels<float>* lap_avx2_kernels<float>();

template <typename T>
const LapKernels<T>& lap_portable_kernels() {
  static constexpr LapKernels<T> portable{&row_min2_portable<T>,
                                          &start_row_portable<T>,
                                          &open_min_portable,
                                          &close_at_portable,
                                          &scan_row_portable<T>,
                                          &column_min_portable<T>,
                                          &any_invalid_portable<T>,
                                          &transpose_check_portable<T>,
                                          nullptr,
                                          nullptr};
  return portable;
}

// The table to use now (see common/cpu_features.h).
template <typename T>
const LapKernels<T>& lap_kernels() {
  return select_cpu_kernels(lap_portable_kernels<T>(), lap_avx2_kernels<T>());
}

template <typename T>
bool any_invalid(const T* c, int64_t count) {
  return lap_kernels<T>().any_invalid(c, count);
}
template <typename T>
bool transpose_check(const T* src, int32_t rows, int32_t cols, T* dst) {
  return lap_kernels<T>().transpose_check(src, rows, cols, dst);
}

}  // namespace lap
}  // namespace pyvision_ops
