// Input checks shared by every op's CPU and CUDA glue (one helper per kind of check).
// Messages name the argument, the expected and the actual value.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <string>
#include <vector>

#include "common/host_device.h"

namespace pyvision_ops {

inline std::string shape_string(c10::IntArrayRef sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < sizes.size(); ++i) {
    out << (i ? ", " : "") << sizes[i];
  }
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}

// A floating-point tensor of one of the dtypes every op supports.
inline void check_floating(const at::Tensor& t, const char* op, const char* arg) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              op, ": ", arg, " must be float32, float64, float16 or bfloat16, got ", dtype);
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* arg, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", arg, " must be ", dim, "-D ", layout, ", got ", t.dim(),
                    "-D tensor of shape ", shape_string(t.sizes()));
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op, const char* arg_a,
                              const char* arg_b) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", arg_a, " and ", arg_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

// Every element of a list argument must satisfy lower <= v (e.g. kernel_size >= 1).
inline void check_all_at_least(c10::IntArrayRef values, int64_t lower, size_t expected_len, const char* op,
                               const char* arg) {
  TORCH_CHECK_VALUE(values.size() == expected_len, op, ": ", arg, " must have ", expected_len,
                    " elements, got ", values.size(), " ", shape_string(values));
  for (auto v : values) {
    TORCH_CHECK_VALUE(v >= lower, op, ": ", arg, " must be >= ", lower, " in every dimension, got ",
                      shape_string(values));
  }
}

// Maps a torch dtype onto the kind the torch-free CUDA launchers take.
inline ScalarKind scalar_kind(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return ScalarKind::Float32;
    case at::kDouble: return ScalarKind::Float64;
    case at::kHalf: return ScalarKind::Float16;
    case at::kBFloat16: return ScalarKind::BFloat16;
    default: TORCH_CHECK(false, "unsupported dtype ", dtype);
  }
}

}  // namespace pyvision_ops

// One dtype dispatch for every CPU kernel: float32, float64, float16, bfloat16.
#define PVO_DISPATCH_FLOATING_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
