// CUDA glue of the Gram family: the same checks and in-place view as the CPU path (gram_checks),
// device guard, current stream, launch check. The derived ops (backward, style loss) are
// device-generic and registered in gram_composite.cpp.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_launch.h"
#include "gram/gram_checks.h"
#include "gram/gram_kernel.h"

namespace pyvision_ops {
namespace {

at::Tensor gram_matrix_cuda(const at::Tensor& features, bool normalize) {
  const GramInput in = prepare_gram_input("gram_matrix", features, normalize);
  const GramParams& p = in.params;
  const c10::cuda::CUDAGuard guard(features.device());
  const at::ScalarType compute = gram_compute_dtype(features.scalar_type());
  at::Tensor gram = at::empty({p.batch, p.channels, p.channels}, features.options().dtype(compute));
  if (gram.numel() == 0) return gram.to(features.scalar_type());
  if (p.length == 0) return gram.zero_().to(features.scalar_type());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const ScalarKind scalar = scalar_kind(features.scalar_type());
  GramLaunchPlan plan;
  check_cuda_launch(plan_gram_matrix(p, scalar, in.view.const_data_ptr(), &plan), "gram_matrix", "plan_gram_matrix");
  // Split-K partial tiles (float16/bfloat16 on tensor cores, when the tiles alone are too few).
  const at::Tensor workspace = plan.workspace_elements > 0
                                   ? at::empty({plan.workspace_elements}, features.options().dtype(at::kFloat))
                                   : at::Tensor();
  check_cuda_launch(launch_gram_matrix(p, scalar, plan, in.view.const_data_ptr(), gram.mutable_data_ptr(),
                                       workspace.defined() ? workspace.mutable_data_ptr<float>() : nullptr, stream),
                    "gram_matrix", plan.tensor_cores ? "gram_mma_kernel" : "gram_tile_kernel");
  return gram.to(features.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(pyvision_ops, CUDA, m) { m.impl("gram_matrix", &gram_matrix_cuda); }

}  // namespace pyvision_ops
