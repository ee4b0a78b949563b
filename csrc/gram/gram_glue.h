// Torch-side helpers of the Gram family shared by the CPU and CUDA glue: checks, the in-place
// feature view, and the operators built on gram_matrix (backward, fused style loss), which are
// device-generic and registered once for CompositeExplicitAutograd.
#pragma once

#include <ATen/ATen.h>

#include "gram/gram.h"

namespace pyvision_ops {

struct GramInput {
  at::Tensor view;  // dense (N, C, L) planar or (N, L, C) channels-last, no copy when possible
  GramParams params;
};

// Checks `features` ((N, C, H, W) or (N, C, L), floating) and returns its in-place view.
GramInput prepare_gram_input(const char* op, const at::Tensor& features, bool normalize);

// The dtype the kernels accumulate in: float64 for float64, float32 otherwise.
at::ScalarType gram_compute_dtype(at::ScalarType dtype);

// The CPU kernel of dF = S F (gram_cpu.cpp) for a symmetric float32 S (N, C, C) and a planar
// float32 view (N, C, L), with AVX2 + FMA; an undefined tensor where it does not apply.
at::Tensor symmetric_times_planar_cpu(const at::Tensor& symmetric, const at::Tensor& view);

}  // namespace pyvision_ops
