// Schemas of the Gram family (Gram matrix, fused style loss, their backward ops).
// Kernels: gram_cpu.cpp, gram_cuda.cpp, gram_composite.cpp; fake kernels and autograd:
// pyvision_ops/ops/gram.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pyvision_ops, m) {
  m.def("gram_matrix(Tensor features, bool normalize) -> Tensor");
  m.def("_gram_matrix_backward(Tensor grad_gram, Tensor features, bool normalize) -> Tensor");
  // reduction: 0 = sum, 1 = mean. Returns (loss, gram); the Gram is kept for the backward.
  m.def("_style_loss_forward(Tensor features, Tensor target_gram, bool normalize, int reduction) -> (Tensor, Tensor)");
  m.def("_style_loss_backward(Tensor grad_loss, Tensor grad_gram, Tensor features, Tensor gram, "
        "Tensor target_gram, bool normalize, int reduction) -> Tensor");
}
