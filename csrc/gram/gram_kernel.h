// Launcher of the CUDA Gram kernels. Torch-free: the glue (gram_cuda.cpp) passes the dense
// feature view, the geometry, the element kind, a float32 workspace and the current stream.
#pragma once

#include <cuda_runtime.h>

#include "common/host_device.h"
#include "gram/gram.h"

namespace pyvision_ops {

// How launch_gram_matrix will run on the current device: float16/bfloat16 go to tensor cores
// (where the loaded kernel image was built for sm_80 or newer), with L split into `splits` parts
// when the triangle tiles alone cannot fill the GPU; the parts' float32 partial tiles go to a
// workspace of `workspace_elements` floats that the caller allocates.
struct GramLaunchPlan {
  bool tensor_cores = false;
  int64_t splits = 1;
  int64_t workspace_elements = 0;
};

cudaError_t plan_gram_matrix(const GramParams& p, ScalarKind scalar, const void* features, GramLaunchPlan* plan);

// gram (N, C, C) in float32 (float64 for Float64 features) = scale * F F^T, upper-triangle
// tiles computed once and mirrored (G exactly symmetric). `plan` comes from plan_gram_matrix with
// the same arguments; `workspace` holds plan.workspace_elements floats (may be null when 0).
cudaError_t launch_gram_matrix(const GramParams& p, ScalarKind scalar, const GramLaunchPlan& plan,
                               const void* features, void* gram, float* workspace, cudaStream_t stream);

}  // namespace pyvision_ops
