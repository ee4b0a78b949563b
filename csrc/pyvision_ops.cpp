// The operator namespace `pyvision_ops`, defined once. Every family declares its schemas in
// csrc/<family>/<family>_schema.cpp (TORCH_LIBRARY_FRAGMENT) and registers its kernels per
// dispatch key in csrc/<family>/<family>_{cpu,cuda}.cpp; fake kernels and autograd are
// registered in Python (pyvision_ops/ops/<family>.py). The Python module is python_module.cpp.
#include <torch/library.h>

TORCH_LIBRARY(pyvision_ops, m) {}
