// The one launch check of the CUDA glue (<family>_cuda.cpp): a launcher's cudaError_t becomes a
// torch error that names the op and the kernel.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

namespace pyvision_ops {

inline void check_cuda_launch(cudaError_t status, const char* op, const char* kernel) {
  TORCH_CHECK(status == cudaSuccess, op, ": CUDA kernel ", kernel, " failed: ", cudaGetErrorName(status), " (",
              cudaGetErrorString(status), ")");
}

}  // namespace pyvision_ops
