// Launcher of the CUDA Gram kernel. Torch-free: the glue (gram_cuda.cpp) passes the dense
// feature view, the geometry, the element kind and the current stream.
#pragma once

#include <cuda_runtime.h>

#include "common/host_device.h"
#include "gram/gram.h"

namespace pyvision_ops {

// gram (N, C, C) in float32 (float64 for Float64 features) = scale * F F^T, upper-triangle
// tiles computed once and mirrored.
cudaError_t launch_gram_matrix(const GramParams& p, ScalarKind scalar, const void* features, void* gram,
                               cudaStream_t stream);

}  // namespace pyvision_ops
