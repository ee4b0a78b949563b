// CUDA glue of the pooling family: the same checks and layouts as the CPU path (unpool_checks),
// device guard, current stream, allocation, and a launch check after every kernel. The values
// moved are passed in place with their strides (p.values), never copied.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "common/cuda_launch.h"
#include "unpool/unpool_checks.h"
#include "unpool/unpool_kernel.h"

namespace pyvision_ops {
namespace {

// Small device buffer the kernels report into (see unpool_kernel.h), reset on the stream.
at::Tensor new_status(const at::Tensor& like, cudaStream_t stream, const char* op) {
  at::Tensor status = at::empty({2}, like.options().dtype(at::kLong));
  check_cuda_launch(launch_reset_status(reinterpret_cast<long long*>(status.mutable_data_ptr<int64_t>()), stream), op,
               "reset_status");
  return status;
}

long long* status_ptr(at::Tensor& status) { return reinterpret_cast<long long*>(status.mutable_data_ptr<int64_t>()); }

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices_cuda(const at::Tensor& x_in, c10::IntArrayRef kernel_size,
                                                                c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                                c10::IntArrayRef dilation, bool ceil_mode,
                                                                bool compact) {
  const PoolParams p = make_pool_params(x_in, kernel_size, stride, padding, dilation, ceil_mode, compact);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = dense_in_layout(x_in, p.channels_last);
  const std::vector<int64_t> out_sizes = {p.batch, p.channels, p.out_h, p.out_w};
  at::Tensor values = empty_in_layout(out_sizes, x.options(), p.channels_last);
  at::Tensor indices = empty_in_layout(out_sizes, x.options().dtype(compact ? at::kByte : at::kLong), p.channels_last);
  if (values.numel() == 0) return {values, indices};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  check_cuda_launch(launch_max_pool2d_forward(p, scalar_kind(x.scalar_type()), compact, x.const_data_ptr(),
                                         values.mutable_data_ptr(), indices.mutable_data_ptr(), stream),
               "max_pool2d_with_indices", "max_pool2d_forward");
  return {values, indices};
}

// Unpool (accumulate=false) or pooling backward: a new target tensor of `target_sizes`.
at::Tensor source_to_target_cuda(const char* op, const at::Tensor& source, const at::Tensor& indices_in,
                                 UnpoolParams p, c10::IntArrayRef target_sizes, bool accumulate) {
  const c10::cuda::CUDAGuard guard(source.device());
  const at::Tensor indices = dense_in_layout(indices_in, p.channels_last);
  at::Tensor target = empty_in_layout(target_sizes, source.options(), p.channels_last);
  if (target.numel() == 0) return target;
  if (source.numel() == 0) return target.zero_();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const ScalarKind scalar = scalar_kind(source.scalar_type());
  const IndexKind index = index_kind(indices, op);
  at::Tensor status = new_status(source, stream, op);
  p.values = strided_view(source);

  if (!accumulate && windows_tile_target(p)) {
    check_cuda_launch(launch_tile_unpool(p, scalar, index, source.const_data_ptr(), indices.const_data_ptr(),
                                    target.mutable_data_ptr(), status_ptr(status), stream),
                 op, "tile_unpool");
    // One small device-to-host read: did some index leave its window? (Then redo by scatter.)
    const at::Tensor host = status.cpu();
    if (host.const_data_ptr<int64_t>()[1] == 0) return target;
  }
  if (!accumulate) {
    // Any indices, duplicates included: deterministic claim + resolve (last in raster order wins).
    const bool wide = p.source_plane() >= (int64_t{1} << 31);
    at::Tensor winner = at::full({p.batch * p.channels * p.target_plane()}, -1,
                                 source.options().dtype(wide ? at::kLong : at::kInt));
    check_cuda_launch(launch_claim_resolve(p, scalar, index, source.const_data_ptr(), indices.const_data_ptr(),
                                      winner.mutable_data_ptr(), wide, target.mutable_data_ptr(), status_ptr(status),
                                      stream),
                 op, "claim_resolve");
  } else {
    // Pooling backward with overlapping windows: gradients add up (half types sum in float32).
    const bool widen = source.scalar_type() == at::kHalf || source.scalar_type() == at::kBFloat16;
    const at::Tensor scattered = widen ? source.to(at::kFloat) : source;
    p.values = strided_view(scattered);
    at::Tensor destination =
        widen ? empty_in_layout(target_sizes, source.options().dtype(at::kFloat), p.channels_last) : target;
    destination.zero_();
    check_cuda_launch(launch_scatter(p, scalar_kind(scattered.scalar_type()), index, true, scattered.const_data_ptr(),
                                indices.const_data_ptr(), destination.mutable_data_ptr(), status_ptr(status), stream),
                 op, "scatter");
    if (widen) target.copy_(destination);
  }
  // Errors must surface as exceptions naming the index, so the first bad position is read back.
  const at::Tensor host = status.cpu();
  const int64_t bad = host.const_data_ptr<int64_t>()[0];
  if (bad != kNoBadIndex) raise_bad_index(op, indices, p, bad, index == IndexKind::Uint8Compact);
  return target;
}

template <int64_t Dims>
at::Tensor max_unpool_cuda(const at::Tensor& x, const at::Tensor& indices, c10::IntArrayRef kernel_size,
                           c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef output_size) {
  static const char* names[] = {"", "max_unpool1d", "max_unpool2d", "max_unpool3d"};
  const UnpoolParams p = make_unpool_params(names[Dims], Dims, x, indices, kernel_size, stride, padding, output_size);
  std::vector<int64_t> sizes = {p.batch, p.channels};
  sizes.insert(sizes.end(), output_size.begin(), output_size.end());
  return source_to_target_cuda(names[Dims], x, indices, p, sizes, /*accumulate=*/false);
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices,
                                    c10::IntArrayRef input_size, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                    c10::IntArrayRef padding, c10::IntArrayRef dilation, bool compact) {
  const UnpoolParams p =
      make_pool_backward_params(grad_output, indices, input_size, kernel_size, stride, padding, dilation, compact);
  const std::vector<int64_t> sizes = {p.batch, p.channels, input_size[0], input_size[1]};
  const bool overlap = windows_overlap(p);
  if (overlap) {
    // Overlapping windows add their gradients with float atomicAdd (scatter_kernel), in an order
    // that varies from run to run; without overlap every element has one writer. PyTorch's own
    // rule: raise (or warn) under torch.use_deterministic_algorithms(True).
    at::globalContext().alertNotDeterministic(
        "max_pool2d_with_indices backward on CUDA with overlapping windows (pyvision_ops::_max_pool2d_backward)");
  }
  // Windows of padding only add a zero to element 0 of their plane (x + 0 is exact, so the
  // atomics' order changes nothing the windows themselves would not).
  PoolBackwardRewrite rewrite;
  if (pool_backward_without_padding_only(p, grad_output, indices, input_size, kernel_size, stride, padding, dilation,
                                         rewrite)) {
    return source_to_target_cuda("_max_pool2d_backward", rewrite.grad_output, rewrite.indices, rewrite.params, sizes,
                                 /*accumulate=*/true);
  }
  return source_to_target_cuda("_max_pool2d_backward", grad_output, indices, p, sizes, overlap);
}

at::Tensor gather_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices_in, UnpoolParams p) {
  constexpr const char* op = "_max_unpool_backward";
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor indices = dense_in_layout(indices_in, p.channels_last);
  p.values = strided_view(grad_output);
  at::Tensor grad_x = empty_in_layout(indices.sizes(), grad_output.options(), p.channels_last);
  if (grad_x.numel() == 0) return grad_x;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const IndexKind index = index_kind(indices, op);
  at::Tensor status = new_status(grad_output, stream, op);
  check_cuda_launch(launch_gather(p, scalar_kind(grad_output.scalar_type()), index, grad_output.const_data_ptr(),
                             indices.const_data_ptr(), grad_x.mutable_data_ptr(), status_ptr(status), stream),
               op, "gather");
  const at::Tensor host = status.cpu();
  const int64_t bad = host.const_data_ptr<int64_t>()[0];
  if (bad != kNoBadIndex) raise_bad_index(op, indices, p, bad, index == IndexKind::Uint8Compact);
  return grad_x;
}

at::Tensor max_unpool_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices,
                                    c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                    c10::IntArrayRef dilation) {
  const UnpoolParams p = make_unpool_backward_params(grad_output, indices, kernel_size, stride, padding, dilation);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  // The adjoint of the pooling backward: a window of padding only gathers nothing (zero).
  at::Tensor flat, padding_only;
  if (unpool_backward_without_padding_only(p, indices, flat, padding_only)) {
    return gather_backward_cuda(grad_output, flat, p).masked_fill_(padding_only, 0);
  }
  return gather_backward_cuda(grad_output, indices, p);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyvision_ops, CUDA, m) {
  m.impl("max_pool2d_with_indices", &max_pool2d_with_indices_cuda);
  m.impl("_max_pool2d_backward", &max_pool2d_backward_cuda);
  m.impl("max_unpool1d", &max_unpool_cuda<1>);
  m.impl("max_unpool2d", &max_unpool_cuda<2>);
  m.impl("max_unpool3d", &max_unpool_cuda<3>);
  m.impl("_max_unpool_backward", &max_unpool_backward_cuda);
}

}  // namespace pyvision_ops
