// Error handling of the torch-free CUDA launchers: every launcher returns the cudaError_t of its
// launches, and the glue turns a failure into a torch error naming the op and the kernel with
// check_cuda_launch (common/cuda_launch.h).
#pragma once

#include <cuda_runtime.h>

#define PVO_RETURN_IF_CUDA_ERROR(expr)          \
  do {                                          \
    cudaError_t pvo_status_ = (expr);           \
    if (pvo_status_ != cudaSuccess) {           \
      return pvo_status_;                       \
    }                                           \
  } while (0)

// After a <<<...>>> launch: the configuration error, if any, of that launch.
#define PVO_RETURN_LAST_LAUNCH_ERROR() return cudaGetLastError()
