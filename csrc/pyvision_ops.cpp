// Every operator schema of the library, declared once. Kernels register per dispatch key in
// csrc/<family>/<family>_{cpu,cuda}.cpp; fake kernels and autograd are registered in Python
// (pyvision_ops/ops/<family>.py). The Python module itself is csrc/python_module.cpp.
#include <torch/library.h>

TORCH_LIBRARY(pyvision_ops, m) {
  // --- 1. max pooling with indices and max unpooling --------------------------------------
  m.def("max_pool2d_with_indices(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode, bool compact) -> (Tensor, Tensor)");
  m.def("_max_pool2d_backward(Tensor grad_output, Tensor indices, int[2] input_size, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation, bool compact) -> Tensor");
  m.def("max_unpool1d(Tensor x, Tensor indices, int[1] kernel_size, int[1] stride, int[1] padding, "
        "int[1] output_size) -> Tensor");
  m.def("max_unpool2d(Tensor x, Tensor indices, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] output_size) -> Tensor");
  m.def("max_unpool3d(Tensor x, Tensor indices, int[3] kernel_size, int[3] stride, int[3] padding, "
        "int[3] output_size) -> Tensor");
  m.def("_max_unpool_backward(Tensor grad_output, Tensor indices, int[] kernel_size, int[] stride, "
        "int[] padding, int[] dilation) -> Tensor");

  // --- 2. Gram matrix and style loss ---------------------------------------------------------
  m.def("gram_matrix(Tensor features, bool normalize) -> Tensor");
  m.def("_gram_matrix_backward(Tensor grad_gram, Tensor features, bool normalize) -> Tensor");
  // reduction: 0 = sum, 1 = mean. Returns (loss, gram); the Gram is kept for the backward.
  m.def("_style_loss_forward(Tensor features, Tensor target_gram, bool normalize, int reduction) -> (Tensor, Tensor)");
  m.def("_style_loss_backward(Tensor grad_loss, Tensor grad_gram, Tensor features, Tensor gram, "
        "Tensor target_gram, bool normalize, int reduction) -> Tensor");

  // --- 5. Hungarian (linear sum) assignment ----------------------------------------------------
  // cost (N, M) or (B, N, M), float32/float64 -> (row_ind, col_ind) int64 (K,) or (B, K), K = min(N, M).
  m.def("linear_sum_assignment(Tensor cost, bool maximize) -> (Tensor, Tensor)");
  // Several problems of different shapes in one call: costs = the row-major problems concatenated
  // (1-D), shapes = [n0, m0, n1, m1, ...]. Returns the row and column indices concatenated, K_p =
  // min(n_p, m_p) per problem, in problem order.
  m.def("_linear_sum_assignment_packed(Tensor costs, int[] shapes, bool maximize) -> (Tensor, Tensor)");
  // The CUDA kernel's algorithm (csrc/assign/sap_team.h) run by one CPU thread per problem: lets
  // the CPU test suite exercise the code the GPU runs. Same contract as linear_sum_assignment.
  m.def("_linear_sum_assignment_team_reference(Tensor cost, bool maximize) -> (Tensor, Tensor)");
}

