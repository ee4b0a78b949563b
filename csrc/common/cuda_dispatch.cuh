// What every .cu file shares: element-type and index-type dispatch, grid sizing for grid-stride
// loops, and the accumulator type of each element type. Torch-free (only CUDA headers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/host_device.h"

namespace pyvision_ops {

// Threads per block of the one-element-per-thread kernels.
constexpr int kThreadsPerBlock = 256;

// Blocks for `total` elements of a grid-stride loop with `threads` per block, at least one and
// capped so that the grid stays launchable (the loop covers the rest).
inline unsigned int blocks_for(int64_t total, int threads = kThreadsPerBlock) {
  const int64_t blocks = (total + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > (int64_t{1} << 20) ? (int64_t{1} << 20) : blocks));
}

// Accumulation type: float32 for every element type but float64.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using acc_type = typename AccType<T>::type;

__device__ PVO_INLINE float to_acc(float v) { return v; }
__device__ PVO_INLINE double to_acc(double v) { return v; }
__device__ PVO_INLINE float to_acc(__half v) { return __half2float(v); }
__device__ PVO_INLINE float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ PVO_INLINE T from_acc(acc_type<T> v);
template <> __device__ PVO_INLINE float from_acc<float>(float v) { return v; }
template <> __device__ PVO_INLINE double from_acc<double>(double v) { return v; }
template <> __device__ PVO_INLINE __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ PVO_INLINE __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Calls f(scalar_t{}) with the CUDA element type of `kind`; cudaErrorInvalidValue otherwise.
template <typename F>
cudaError_t dispatch_scalar(ScalarKind kind, F&& f) {
  switch (kind) {
    case ScalarKind::Float32: return f(float{});
    case ScalarKind::Float64: return f(double{});
    case ScalarKind::Float16: return f(__half{});
    case ScalarKind::BFloat16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// The same for kernels written for float32 and float64 only (the glue converts other types).
template <typename F>
cudaError_t dispatch_float_double(ScalarKind kind, F&& f) {
  switch (kind) {
    case ScalarKind::Float32: return f(float{});
    case ScalarKind::Float64: return f(double{});
    default: return cudaErrorInvalidValue;
  }
}

// Calls f(index_t{}, std::bool_constant<compact>{}) for an index kind of the pooling family.
template <typename F>
cudaError_t dispatch_index(IndexKind kind, F&& f) {
  switch (kind) {
    case IndexKind::Int64: return f(int64_t{}, std::false_type{});
    case IndexKind::Int32: return f(int32_t{}, std::false_type{});
    case IndexKind::Uint8Compact: return f(uint8_t{}, std::true_type{});
  }
  return cudaErrorInvalidValue;
}

// Calls f(offset_t{}) with int32_t when every tensor of the launch is small enough for 32-bit
// offsets (with room for the grid-stride increment), else int64_t: 32-bit division and modulo
// are far cheaper on the GPU.
template <typename F>
cudaError_t dispatch_offset(int64_t largest, F&& f) {
  if (largest < (int64_t{1} << 30)) return f(int32_t{});
  return f(int64_t{});
}

}  // namespace pyvision_ops
