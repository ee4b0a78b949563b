// Launch checking for the torch-free .cu files: launchers return the cudaError_t of the launch
// and the glue turns a failure into a torch error (PVO_CHECK_CUDA).
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
