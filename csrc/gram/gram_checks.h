// Torch-side checks of the Gram family shared by the CPU kernels, the CUDA glue and the composite
// operators (gram_composite.cpp): argument checks and the in-place feature view.
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

// The CPU kernel of dF = S F (gram_cpu.cpp) for a symmetric S (N, C, C) and a view (N, C, L)
// planar or (N, L, C) channels-last of the same dtype: float32 with C a multiple of 16, or
// float64 with C a multiple of 8, C <= 2048, where the family's kernel table has the packed
// kernels (AVX2); an undefined tensor where it does not apply (the caller then uses bmm). The
// result has the view's shape.
at::Tensor symmetric_times_features_cpu(const at::Tensor& symmetric, const at::Tensor& view, bool channels_last);

}  // namespace pyvision_ops
