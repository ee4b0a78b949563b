// Portability macros for code shared by the CPU (C++) and CUDA (nvcc) builds.
// Headers that include only this file can be used from .cu files, which must stay free of
// torch headers so that nvcc compiles them quickly.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PVO_HOST_DEVICE __host__ __device__
#define PVO_INLINE __forceinline__
#else
#define PVO_HOST_DEVICE
#define PVO_INLINE inline
#endif

namespace pyvision_ops {

// Element types the kernels are instantiated for. The torch glue maps at::ScalarType onto
// these so that .cu files never see a torch header.
enum class ScalarKind : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// Index tensors accepted by the pooling family.
enum class IndexKind : int { Int64 = 0, Int32 = 1, Uint8Compact = 2 };

}  // namespace pyvision_ops
