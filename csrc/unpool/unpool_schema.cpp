// Schemas of the pooling family (max pooling with indices, max unpooling, their backward ops).
// Kernels: unpool_cpu.cpp, unpool_cuda.cpp; fake kernels and autograd: pyvision_ops/ops/unpool.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pyvision_ops, m) {
  m.def("max_pool2d_with_indices(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode, bool compact) -> (Tensor, Tensor)");
  m.def("_max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[2] input_size, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation, bool compact) -> Tensor");
  m.def("max_unpool1d(Tensor x, Tensor indices, int[1] kernel_size, int[1] stride, int[1] padding, "
        "SymInt[1] output_size) -> Tensor");
  m.def("max_unpool2d(Tensor x, Tensor indices, int[2] kernel_size, int[2] stride, int[2] padding, "
        "SymInt[2] output_size) -> Tensor");
  m.def("max_unpool3d(Tensor x, Tensor indices, int[3] kernel_size, int[3] stride, int[3] padding, "
        "SymInt[3] output_size) -> Tensor");
  m.def("_max_unpool_backward(Tensor grad_output, Tensor indices, int[] kernel_size, int[] stride, "
        "int[] padding, int[] dilation) -> Tensor");
}
