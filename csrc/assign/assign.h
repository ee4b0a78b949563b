// Linear sum assignment: what the CPU solver, the CUDA kernel and their glue share. Torch-free,
// usable from .cu files.
//
// A batch is a list of problems (one cost matrix each, row-major, contiguous). Every solver
// works on the orientation with no more rows than columns ("wide"): a tall problem (n > m) is
// solved on its transpose and the result mapped back so that rows come out ascending.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace pyvision_ops {

// Per-problem outcome, ordered by precedence when a batch reports several (SciPy checks the
// entries before it solves).
enum AssignStatus : int32_t {
  kAssignOk = 0,
  kAssignInfeasible = 1,  // no complete matching avoids the +inf pairs
  kAssignInvalid = 2,     // NaN or -inf among the costs
};

struct AssignProblem {
  int64_t cost_offset;     // element offset of the (n, m) row-major matrix in the cost buffer
  int64_t out_offset;      // offset of this problem's min(n, m) results in the row/col outputs
  int32_t rows;            // n
  int32_t cols;            // m
  int64_t scratch_offset;  // CUDA: this problem's doubles in the scratch (its ints at twice this)
};

// NaN and -inf are invalid; +inf forbids a pair; every finite value is a cost.
template <typename T>
PVO_HOST_DEVICE PVO_INLINE bool assign_invalid_entry(T c) {
  return !(c > -static_cast<T>(INFINITY));
}

// The cost of pair (r, c) of the wide orientation: the matrix as stored, or its transpose.
template <typename T>
PVO_HOST_DEVICE PVO_INLINE double wide_cost(const T* cost, int32_t n_stored_cols, bool transposed, int32_t r,
                                            int32_t c) {
  return transposed ? static_cast<double>(cost[static_cast<int64_t>(c) * n_stored_cols + r])
                    : static_cast<double>(cost[static_cast<int64_t>(r) * n_stored_cols + c]);
}

// Writes the matching of one problem to (row_out, col_out), rows ascending. col4row[r] is the
// column matched to wide row r (every wide row is matched). For a transposed problem the wide
// rows are the stored columns: row_of_stored (size n_stored_rows, scratch) is filled with -1
// first and then inverted.
PVO_HOST_DEVICE PVO_INLINE void assign_write_result(const int32_t* col4row, int32_t wide_rows, bool transposed,
                                                    int32_t n_stored_rows, int32_t* row_of_stored,
                                                    int64_t* row_out, int64_t* col_out) {
  if (!transposed) {
    for (int32_t r = 0; r < wide_rows; ++r) {
      row_out[r] = r;
      col_out[r] = col4row[r];
    }
    return;
  }
  for (int32_t i = 0; i < n_stored_rows; ++i) row_of_stored[i] = -1;
  for (int32_t r = 0; r < wide_rows; ++r) row_of_stored[col4row[r]] = r;
  int64_t k = 0;
  for (int32_t i = 0; i < n_stored_rows; ++i) {
    if (row_of_stored[i] >= 0) {
      row_out[k] = i;
      col_out[k] = row_of_stored[i];
      ++k;
    }
  }
}

}  // namespace pyvision_ops
