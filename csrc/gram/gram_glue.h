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

// The CPU kernel of dF = S F (gram_cpu.cpp) for a symmetric S (N, C, C) and a view (N, C, L)
// planar or (N, L, C) channels-last of the same dtype: float32 with C a multiple of 16, or
// float64 with C a multiple of 8, C <= 2048, on a CPU with AVX2 + FMA and the packed kernels
// allowed; an undefined tensor where it does not apply. The result has the view's shape.
at::Tensor symmetric_times_features_cpu(const at::Tensor& symmetric, const at::Tensor& view, bool channels_last);

// Whether the CPU Gram ops may use the packed AVX2 kernels (default true; the CPU must also
// support them). Tests switch it off to exercise the portable loops and the bmm backward that
// CPUs without AVX2 run. set_gram_cpu_simd returns the previous setting.
bool gram_cpu_simd_enabled();
bool set_gram_cpu_simd(bool enabled);

}  // namespace pyvision_ops
