// Torch-side helpers of the assignment family shared by the CPU and CUDA glue: argument checks,
// the contiguous (maybe negated) cost buffer, the problem list, the outputs and the error report.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "assign/assign.h"

namespace pyvision_ops {

struct AssignBatch {
  at::Tensor cost;                      // contiguous float32/float64, negated when maximizing
  std::vector<AssignProblem> problems;  // one per matrix
  at::Tensor rows, cols;                // int64 outputs on the cost's device, shaped for the caller
};

// cost (N, M) or (B, N, M): checks it and lays out the batch.
AssignBatch prepare_assign_dense(const char* op, const at::Tensor& cost, bool maximize);

// costs: the problems' row-major matrices concatenated (1-D); shapes = [n0, m0, n1, m1, ...].
AssignBatch prepare_assign_packed(const char* op, const at::Tensor& costs, c10::IntArrayRef shapes,
                                  bool maximize);

// Raises SciPy's ValueError for the worst status of a batch (invalid before infeasible).
void raise_assign_status(const char* op, const int32_t* status, int64_t count);

}  // namespace pyvision_ops
