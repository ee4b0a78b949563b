// CUDA kernels of the pooling family. No torch headers: see unpool_kernel.h for the contract.
// One thread per element of the tensor being written, in its memory order (planar or
// channels-last), so that writes are coalesced; offsets are 64-bit, or 32-bit where every tensor of
// the launch has fewer than 2^30 elements (dispatch_offset). The values
// moved are read in place through p.values (any strides, unpool.h). What a thread of an unpooling
// kernel computes for its element is in unpool_cuda_elements.h (replayed on the host by
// tests/cpp/unpool_kernels_replayed.cpp).
#include <algorithm>
#include <climits>
#include <type_traits>

#include "common/cuda_check.h"
#include "common/cuda_dispatch.cuh"
#include "unpool/unpool_cuda_elements.h"
#include "unpool/unpool_kernel.h"

namespace pyvision_ops {
namespace {

constexpr int kThreads = kThreadsPerBlock;

template <typename T> __device__ PVO_INLINE T zero_value() { return from_acc<T>(0); }

__device__ PVO_INLINE void record_bad(long long* status, int64_t logical) {
  atomicMin(reinterpret_cast<unsigned long long*>(status), static_cast<unsigned long long>(logical));
}

__global__ void reset_status_kernel(long long* status) {
  status[0] = LLONG_MAX;
  status[1] = 0;
}

// ---------------------------------------------------------------------------------------------
// max_pool2d_with_indices
// ---------------------------------------------------------------------------------------------

template <typename scalar_t, typename index_t, bool Compact, typename offset_t>
__global__ void max_pool2d_forward_kernel(const PoolParams p, const scalar_t* __restrict__ x,
                                          scalar_t* __restrict__ values, index_t* __restrict__ indices) {
  using acc_t = acc_type<scalar_t>;
  const offset_t out_w = static_cast<offset_t>(p.out_w);
  const offset_t out_plane = static_cast<offset_t>(p.out_h * p.out_w);
  const int64_t in_plane = p.in_h * p.in_w;
  const offset_t channels = static_cast<offset_t>(p.channels);
  const offset_t total = static_cast<offset_t>(p.batch * p.channels * p.out_h * p.out_w);
  for (offset_t linear = blockIdx.x * blockDim.x + threadIdx.x; linear < total; linear += gridDim.x * blockDim.x) {
    offset_t n, c, s;
    element_coords<offset_t>(linear, channels, out_plane, p.channels_last, n, c, s);
    const int64_t oh = s / out_w;
    const int64_t ow = s - (s / out_w) * out_w;
    // Element (n, c, pos) of x: the layout decides the base and the step between positions.
    const int64_t base = element_offset(n, c, 0, p.channels, in_plane, p.channels_last);
    const int64_t step = p.channels_last ? p.channels : 1;
    acc_t best;
    int64_t best_flat, best_local;
    pool_window_argmax<acc_t>(
        p, oh, ow, [&](int64_t pos) { return to_acc(x[base + pos * step]); }, best, best_flat, best_local);
    values[linear] = from_acc<scalar_t>(best);
    indices[linear] = static_cast<index_t>(Compact ? best_local : best_flat);
  }
}

// ---------------------------------------------------------------------------------------------
// Unpooling: write-once tile kernel, scatter fallback, gather backward
// ---------------------------------------------------------------------------------------------

template <typename scalar_t, typename index_t, bool Compact, typename offset_t>
__global__ void tile_unpool_kernel(const UnpoolParams p, const scalar_t* __restrict__ source,
                                   const index_t* __restrict__ indices, scalar_t* __restrict__ target,
                                   long long* status) {
  const offset_t total = static_cast<offset_t>(p.batch * p.channels * p.target_plane());
  for (offset_t linear = blockIdx.x * blockDim.x + threadIdx.x; linear < total; linear += gridDim.x * blockDim.x) {
    offset_t n, c, window;
    bool outside = false;
    const bool take = tile_unpool_element<index_t, Compact, offset_t>(p, indices, linear, n, c, window, outside);
    // One thread per window checks that its index stays inside the window; otherwise the glue
    // redoes the whole tensor with claim + resolve (which also names bad indices).
    if (outside) status[1] = 1;
    target[linear] = take ? source[p.values.at(n, c, window, p.source_size)] : zero_value<scalar_t>();
  }
}

template <typename scalar_t, typename target_t, typename index_t, bool Compact, bool Accumulate, typename offset_t>
__global__ void scatter_kernel(const UnpoolParams p, const scalar_t* __restrict__ source,
                               const index_t* __restrict__ indices, target_t* __restrict__ target,
                               long long* status) {
  const int64_t source_plane = p.source_plane();
  const int64_t target_plane = p.target_plane();
  const offset_t total = static_cast<offset_t>(p.batch * p.channels * source_plane);
  for (offset_t linear = blockIdx.x * blockDim.x + threadIdx.x; linear < total; linear += gridDim.x * blockDim.x) {
    int64_t n, c, s;
    const int64_t t = source_element_target<index_t, Compact, offset_t>(p, indices, linear, n, c, s);
    if (t < 0) {
      record_bad(status, (n * p.channels + c) * source_plane + s);
      continue;
    }
    const int64_t at = element_offset(n, c, t, p.channels, target_plane, p.channels_last);
    const scalar_t value = source[p.values.at(n, c, s, p.source_size)];
    if constexpr (Accumulate) {
      atomicAdd(target + at, static_cast<target_t>(value));
    } else {
      target[at] = value;
    }
  }
}

// Deterministic unpooling when several windows may name one target element: PyTorch's CPU loop
// lets the last source element in raster order win, so each target element keeps the largest
// source position that names it (claim), and is then read from that position (resolve).
template <typename index_t, bool Compact, typename offset_t, typename winner_t>
__global__ void claim_kernel(const UnpoolParams p, const index_t* __restrict__ indices, winner_t* __restrict__ winner,
                             long long* status) {
  const int64_t source_plane = p.source_plane();
  const int64_t target_plane = p.target_plane();
  const offset_t total = static_cast<offset_t>(p.batch * p.channels * source_plane);
  for (offset_t linear = blockIdx.x * blockDim.x + threadIdx.x; linear < total; linear += gridDim.x * blockDim.x) {
    int64_t n, c, s;
    const int64_t t = source_element_target<index_t, Compact, offset_t>(p, indices, linear, n, c, s);
    const int64_t plane = n * p.channels + c;
    if (t < 0) {
      record_bad(status, plane * source_plane + s);
      continue;
    }
    atomicMax(winner + plane * target_plane + t, static_cast<winner_t>(s));
  }
}

template <typename scalar_t, typename offset_t, typename winner_t>
__global__ void resolve_kernel(const UnpoolParams p, const scalar_t* __restrict__ source,
                               const winner_t* __restrict__ winner, scalar_t* __restrict__ target) {
  const int64_t target_plane = p.target_plane();
  const offset_t total = static_cast<offset_t>(p.batch * p.channels * target_plane);
  for (offset_t linear = blockIdx.x * blockDim.x + threadIdx.x; linear < total; linear += gridDim.x * blockDim.x) {
    int64_t plane, n, c, t;
    target_element<offset_t>(p, linear, plane, n, c, t);
    const winner_t w = winner[plane * target_plane + t];
    target[linear] = w < 0 ? zero_value<scalar_t>() : source[p.values.at(n, c, static_cast<int64_t>(w), p.source_size)];
  }
}

template <typename scalar_t, typename index_t, bool Compact, typename offset_t>
__global__ void gather_kernel(const UnpoolParams p, const scalar_t* __restrict__ target,
                              const index_t* __restrict__ indices, scalar_t* __restrict__ source,
                              long long* status) {
  const int64_t source_plane = p.source_plane();
  const offset_t total = static_cast<offset_t>(p.batch * p.channels * source_plane);
  for (offset_t linear = blockIdx.x * blockDim.x + threadIdx.x; linear < total; linear += gridDim.x * blockDim.x) {
    int64_t n, c, s;
    const int64_t t = source_element_target<index_t, Compact, offset_t>(p, indices, linear, n, c, s);
    if (t < 0) {
      record_bad(status, (n * p.channels + c) * source_plane + s);
      source[linear] = zero_value<scalar_t>();
      continue;
    }
    source[linear] = target[p.values.at(n, c, t, p.target_size)];
  }
}

}  // namespace

cudaError_t launch_reset_status(long long* status, cudaStream_t stream) {
  reset_status_kernel<<<1, 1, 0, stream>>>(status);
  PVO_RETURN_LAST_LAUNCH_ERROR();
}

cudaError_t launch_max_pool2d_forward(const PoolParams& p, ScalarKind scalar, bool compact, const void* x,
                                      void* values, void* indices, cudaStream_t stream) {
  const int64_t total = p.batch * p.channels * p.out_h * p.out_w;
  if (total == 0) return cudaSuccess;
  const int64_t largest = std::max(total, p.batch * p.channels * p.in_h * p.in_w);
  return dispatch_scalar(scalar, [&](auto tag) {
    using scalar_t = decltype(tag);
    return dispatch_offset(largest, [&](auto offset_tag) {
      using offset_t = decltype(offset_tag);
      const auto* x_data = static_cast<const scalar_t*>(x);
      auto* out_data = static_cast<scalar_t*>(values);
      if (compact) {
        max_pool2d_forward_kernel<scalar_t, uint8_t, true, offset_t>
            <<<blocks_for(total), kThreads, 0, stream>>>(p, x_data, out_data, static_cast<uint8_t*>(indices));
      } else {
        max_pool2d_forward_kernel<scalar_t, int64_t, false, offset_t>
            <<<blocks_for(total), kThreads, 0, stream>>>(p, x_data, out_data, static_cast<int64_t*>(indices));
      }
      PVO_RETURN_LAST_LAUNCH_ERROR();
    });
  });
}

cudaError_t launch_tile_unpool(const UnpoolParams& p, ScalarKind scalar, IndexKind index, const void* source,
                               const void* indices, void* target, long long* status, cudaStream_t stream) {
  const int64_t total = p.batch * p.channels * p.target_plane();
  if (total == 0) return cudaSuccess;
  return dispatch_scalar(scalar, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    return dispatch_index(index, [&](auto index_tag, auto compact_tag) {
      using index_t = decltype(index_tag);
      return dispatch_offset(total, [&](auto offset_tag) {
        using offset_t = decltype(offset_tag);
        tile_unpool_kernel<scalar_t, index_t, decltype(compact_tag)::value, offset_t>
            <<<blocks_for(total), kThreads, 0, stream>>>(p, static_cast<const scalar_t*>(source),
                                                         static_cast<const index_t*>(indices),
                                                         static_cast<scalar_t*>(target), status);
        PVO_RETURN_LAST_LAUNCH_ERROR();
      });
    });
  });
}

cudaError_t launch_scatter(const UnpoolParams& p, ScalarKind scalar, IndexKind index, bool accumulate,
                           const void* source, const void* indices, void* target, long long* status,
                           cudaStream_t stream) {
  const int64_t total = p.batch * p.channels * p.source_plane();
  if (total == 0) return cudaSuccess;
  return dispatch_scalar(scalar, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    return dispatch_index(index, [&](auto index_tag, auto compact_tag) {
      using index_t = decltype(index_tag);
      constexpr bool compact = decltype(compact_tag)::value;
      const auto* s = static_cast<const scalar_t*>(source);
      const auto* i = static_cast<const index_t*>(indices);
      const int64_t largest = std::max(total, p.batch * p.channels * p.target_plane());
      return dispatch_offset(largest, [&](auto offset_tag) {
        using offset_t = decltype(offset_tag);
        if (!accumulate) {
          scatter_kernel<scalar_t, scalar_t, index_t, compact, false, offset_t>
              <<<blocks_for(total), kThreads, 0, stream>>>(p, s, i, static_cast<scalar_t*>(target), status);
        } else if constexpr (std::is_same_v<scalar_t, double>) {
          scatter_kernel<scalar_t, double, index_t, compact, true, offset_t>
              <<<blocks_for(total), kThreads, 0, stream>>>(p, s, i, static_cast<double*>(target), status);
        } else if constexpr (std::is_same_v<scalar_t, float>) {
          scatter_kernel<scalar_t, float, index_t, compact, true, offset_t>
              <<<blocks_for(total), kThreads, 0, stream>>>(p, s, i, static_cast<float*>(target), status);
        } else {
          return cudaErrorInvalidValue;  // the glue accumulates half types in a float32 buffer
        }
        PVO_RETURN_LAST_LAUNCH_ERROR();
      });
    });
  });
}

cudaError_t launch_claim_resolve(const UnpoolParams& p, ScalarKind scalar, IndexKind index, const void* source,
                                 const void* indices, void* winner, bool wide_winner, void* target, long long* status,
                                 cudaStream_t stream) {
  const int64_t source_total = p.batch * p.channels * p.source_plane();
  const int64_t target_total = p.batch * p.channels * p.target_plane();
  if (target_total == 0) return cudaSuccess;
  return dispatch_scalar(scalar, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    return dispatch_index(index, [&](auto index_tag, auto compact_tag) {
      using index_t = decltype(index_tag);
      constexpr bool compact = decltype(compact_tag)::value;
      return dispatch_offset(std::max(source_total, target_total), [&](auto offset_tag) {
        using offset_t = decltype(offset_tag);
        auto run = [&](auto winner_tag) {
          using winner_t = decltype(winner_tag);
          auto* w = static_cast<winner_t*>(winner);
          if (source_total > 0) {
            claim_kernel<index_t, compact, offset_t, winner_t><<<blocks_for(source_total), kThreads, 0, stream>>>(
                p, static_cast<const index_t*>(indices), w, status);
            PVO_RETURN_IF_CUDA_ERROR(cudaGetLastError());
          }
          resolve_kernel<scalar_t, offset_t, winner_t><<<blocks_for(target_total), kThreads, 0, stream>>>(
              p, static_cast<const scalar_t*>(source), w, static_cast<scalar_t*>(target));
          PVO_RETURN_LAST_LAUNCH_ERROR();
        };
        return wide_winner ? run(static_cast<long long>(0)) : run(static_cast<int>(0));
      });
    });
  });
}

cudaError_t launch_gather(const UnpoolParams& p, ScalarKind scalar, IndexKind index, const void* target,
                          const void* indices, void* source, long long* status, cudaStream_t stream) {
  const int64_t total = p.batch * p.channels * p.source_plane();
  if (total == 0) return cudaSuccess;
  return dispatch_scalar(scalar, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    return dispatch_index(index, [&](auto index_tag, auto compact_tag) {
      using index_t = decltype(index_tag);
      const int64_t largest = std::max(total, p.batch * p.channels * p.target_plane());
      return dispatch_offset(largest, [&](auto offset_tag) {
        using offset_t = decltype(offset_tag);
        gather_kernel<scalar_t, index_t, decltype(compact_tag)::value, offset_t>
            <<<blocks_for(total), kThreads, 0, stream>>>(p, static_cast<const scalar_t*>(target),
                                                         static_cast<const index_t*>(indices),
                                                         static_cast<scalar_t*>(source), status);
        PVO_RETURN_LAST_LAUNCH_ERROR();
      });
    });
  });
}

}  // namespace pyvision_ops
