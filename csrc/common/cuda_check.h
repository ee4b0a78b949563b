// Error handling of the torch-free CUDA launchers: every launcher returns the cudaError_t of its
// launches, and the glue turns a failure into a torch error naming the op and the kernel with
// check_cuda_launch (common/cuda_launch.h).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#define PVO_RETURN_IF_CUDA_ERROR(expr)          \
  do {                                          \
    cudaError_t pvo_status_ = (expr);           \
    if (pvo_status_ != cudaSuccess) {           \
      return pvo_status_;                       \
    }                                           \
  } while (0)

// After a <<<...>>> launch: the configuration error, if any, of that launch.
#define PVO_RETURN_LAST_LAUNCH_ERROR() return cudaGetLastError()

namespace pyvision_ops {

// Devices whose once_per_device values are kept (others compute theirs on every call).
constexpr int kDeviceSlots = 64;

// A fact about the current device (a kernel's image, its occupancy) asked of the driver once:
// compute(device, &value) runs the first time for each device and must give a non-zero value;
// `slots` (one per device, zero-initialised, static at the caller) keeps it for later calls.
template <typename Compute>
cudaError_t once_per_device(std::atomic<int64_t> (&slots)[kDeviceSlots], Compute compute, int64_t* value) {
  int device = 0;
  PVO_RETURN_IF_CUDA_ERROR(cudaGetDevice(&device));
  const bool kept = device >= 0 && device < kDeviceSlots;
  if (kept) {
    const int64_t known = slots[device].load(std::memory_order_acquire);
    if (known != 0) {
      *value = known;
      return cudaSuccess;
    }
  }
  PVO_RETURN_IF_CUDA_ERROR(compute(device, value));
  if (kept) slots[device].store(*value, std::memory_order_release);
  return cudaSuccess;
}

}  // namespace pyvision_ops
