// CUDA glue of linear_sum_assignment: the shared checks (assign_checks), tall dense batches
// transposed once on the device so that the kernel reads rows contiguously, the problem list and
// the scratch copied/allocated once per call, one launch for the whole batch, and one status
// read-back per call so that invalid or infeasible problems raise SciPy's ValueError.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

#include "assign/assign_checks.h"
#include "assign/assign_kernel.h"
#include "common/checks.h"
#include "common/cuda_launch.h"

namespace pyvision_ops {
namespace {

std::tuple<at::Tensor, at::Tensor> run_cuda(const char* op, AssignBatch batch, bool wide_layout) {
  const int64_t count = static_cast<int64_t>(batch.problems.size());
  if (count == 0) return {batch.rows, batch.cols};
  const c10::cuda::CUDAGuard guard(batch.cost.device());
  int64_t scratch = 0;
  int32_t max_wide_cols = 1;
  for (AssignProblem& p : batch.problems) {
    p.scratch_offset = scratch;
    scratch += assign_scratch_doubles(p.rows, p.cols);
    max_wide_cols = std::max(max_wide_cols, std::max(p.rows, p.cols));
  }
  const auto device = batch.cost.device();
  // the problem list: one host-to-device copy per call
  at::Tensor problems_host = at::empty({count * static_cast<int64_t>(sizeof(AssignProblem))}, at::kByte);
  std::memcpy(problems_host.mutable_data_ptr(), batch.problems.data(), count * sizeof(AssignProblem));
  at::Tensor problems = problems_host.to(device);
  at::Tensor scratch_d = at::empty({scratch}, batch.cost.options().dtype(at::kDouble));
  at::Tensor scratch_i = at::empty({2 * scratch}, batch.cost.options().dtype(at::kInt));
  at::Tensor status = at::empty({count}, batch.cost.options().dtype(at::kInt));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  check_cuda_launch(launch_linear_sum_assignment(
      scalar_kind(batch.cost.scalar_type()), batch.cost.const_data_ptr(),
      reinterpret_cast<const AssignProblem*>(problems.const_data_ptr()), count, max_wide_cols, wide_layout,
      scratch_d.mutable_data_ptr<double>(), scratch_i.mutable_data_ptr<int32_t>(),
      batch.rows.mutable_data_ptr<int64_t>(), batch.cols.mutable_data_ptr<int64_t>(),
      status.mutable_data_ptr<int32_t>(), stream), op, "lsa_kernel");
  const at::Tensor status_host = status.cpu();  // the one synchronisation of the call
  raise_assign_status(op, status_host.const_data_ptr<int32_t>(), count);
  return {batch.rows, batch.cols};
}

std::tuple<at::Tensor, at::Tensor> linear_sum_assignment_cuda(const at::Tensor& cost, bool maximize) {
  constexpr const char* op = "linear_sum_assignment";
  AssignBatch batch = prepare_assign_dense(op, cost, maximize);
  const int64_t n = cost.size(-2), m = cost.size(-1);
  if (n > m && !batch.problems.empty()) {
    // store every problem wide (m x n, contiguous rows): coalesced reads in the kernel
    const int64_t b = cost.dim() == 3 ? cost.size(0) : 1;
    batch.cost = batch.cost.view({b, n, m}).transpose(1, 2).contiguous();
  }
  return run_cuda(op, std::move(batch), true);
}

std::tuple<at::Tensor, at::Tensor> linear_sum_assignment_packed_cuda(const at::Tensor& costs,
                                                                      c10::IntArrayRef shapes, bool maximize) {
  constexpr const char* op = "linear_sum_assignment";
  return run_cuda(op, prepare_assign_packed(op, costs, shapes, maximize), false);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyvision_ops, CUDA, m) {
  m.impl("linear_sum_assignment", &linear_sum_assignment_cuda);
  m.impl("_linear_sum_assignment_packed", &linear_sum_assignment_packed_cuda);
}

}  // namespace pyvision_ops
