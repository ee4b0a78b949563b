// Schemas of the assignment family (linear sum assignment).
// Kernels: assign_cpu.cpp, assign_cuda.cpp; fake kernels: pyvision_ops/ops/assign.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pyvision_ops, m) {
  // cost (N, M) or (B, N, M), float32/float64 -> (row_ind, col_ind) int64 (K,) or (B, K), K = min(N, M).
  m.def("linear_sum_assignment(Tensor cost, bool maximize) -> (Tensor, Tensor)");
  // Several problems of different shapes in one call: costs = the row-major problems concatenated
  // (1-D), shapes = [n0, m0, n1, m1, ...]. Returns the row and column indices concatenated, K_p =
  // min(n_p, m_p) per problem, in problem order.
  m.def("_linear_sum_assignment_packed(Tensor costs, SymInt[] shapes, bool maximize) -> (Tensor, Tensor)");
  // The CUDA kernel's algorithm (csrc/assign/assign_sap_team.h) run by one CPU thread per problem: lets
  // the CPU test suite exercise the code the GPU runs. Same contract as linear_sum_assignment.
  m.def("_linear_sum_assignment_team_reference(Tensor cost, bool maximize) -> (Tensor, Tensor)");
}
