// C++ entry points for users of the shared library (CMakeLists.txt): each calls the operator
// through the PyTorch dispatcher, so the CPU or CUDA kernel is chosen from the inputs' device,
// exactly as torch.ops.pyvision_ops.<name> does from Python.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>

namespace pyvision_ops {

inline std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices(const at::Tensor& x, at::IntArrayRef kernel_size,
                                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                                  at::IntArrayRef dilation, bool ceil_mode,
                                                                  bool compact) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pyvision_ops::max_pool2d_with_indices", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                                                 at::IntArrayRef, at::IntArrayRef, bool, bool)>();
  return op.call(x, kernel_size, stride, padding, dilation, ceil_mode, compact);
}

inline at::Tensor max_unpool2d(const at::Tensor& x, const at::Tensor& indices, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pyvision_ops::max_unpool2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef)>();
  return op.call(x, indices, kernel_size, stride, padding, output_size);
}

}  // namespace pyvision_ops
