// Launcher of the CUDA assignment kernel. Torch-free: the glue (assign_cuda.cpp) passes the
// device copy of the problem list, the scratch, the outputs and the current stream.
#pragma once

#include <cuda_runtime.h>

#include "assign/assign.h"
#include "common/host_device.h"

namespace pyvision_ops {

// The scratch one problem needs on the device: sap_workspace_layout(n, m).doubles doubles (and
// twice as many int32) for the wide sizes n = min(rows, cols), m = max(rows, cols).
int64_t assign_scratch_doubles(int32_t rows, int32_t cols);

// Solves `count` problems, one thread block each (block size from the widest problem,
// max_wide_cols). cost: float32 or float64 (ScalarKind). wide_layout: every tall problem is
// stored already transposed (wide, contiguous rows); otherwise tall problems are read through
// their transpose. status[p] receives an AssignStatus.
cudaError_t launch_linear_sum_assignment(ScalarKind kind, const void* cost, const AssignProblem* problems,
                                         int64_t count, int32_t max_wide_cols, bool wide_layout, double* scratch_d,
                                         int32_t* scratch_i, int64_t* rows, int64_t* cols, int32_t* status,
                                         cudaStream_t stream);

}  // namespace pyvision_ops
