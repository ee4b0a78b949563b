// The attention family's CUDA kernels: the direct, one-thread-per-row form of the algorithm of
// attention_cpu.cpp, on the shared rules of attention.h (masking, online softmax, dropout hash);
// each thread's row is a function of attention_rows.h. float32 and float64 (the glue widens half
// types). Never run on a GPU (tests/cpp/attention_rows_replayed.cpp runs the rows on the host).
#include <cuda_runtime.h>

#include <cstdint>

#include "attention/attention.h"
#include "attention/attention_rows.h"
#include "attention/attention_kernel.h"
#include "common/cuda_check.h"
#include "common/cuda_dispatch.cuh"

namespace pyvision_ops {
namespace {

template <typename T>
__global__ void attention_forward_kernel(const AttentionParams p, const T* __restrict__ q, const T* __restrict__ k,
                                         const T* __restrict__ v, T* __restrict__ out, T* __restrict__ lse,
                                         T* __restrict__ stats) {
  const int64_t rows = p.batch * p.heads * p.q_len;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    attention_forward_row<T>(p, q, k, v, out, lse, stats, row);
  }
}

// dK, dV of one key row over the queries of every head of its group.
template <typename T>
__global__ void attention_backward_kv_kernel(const AttentionParams p, const T* __restrict__ q, const T* __restrict__ k,
                                             const T* __restrict__ v, const T* __restrict__ go,
                                             const T* __restrict__ stats, const T* __restrict__ delta,
                                             T* __restrict__ dk, T* __restrict__ dv) {
  const int64_t rows = p.batch * p.kv_heads * p.kv_len;
  for (int64_t key_row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; key_row < rows;
       key_row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    attention_backward_kv_row<T>(p, q, k, v, go, stats, delta, dk, dv, key_row);
  }
}

// dQ of one query row over its keys.
template <typename T>
__global__ void attention_backward_q_kernel(const AttentionParams p, const T* __restrict__ q, const T* __restrict__ k,
                                            const T* __restrict__ v, const T* __restrict__ go,
                                            const T* __restrict__ stats, const T* __restrict__ delta,
                                            T* __restrict__ dq) {
  const int64_t rows = p.batch * p.heads * p.q_len;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    attention_backward_q_row<T>(p, q, k, v, go, stats, delta, dq, row);
  }
}

}  // namespace

cudaError_t launch_attention_forward(ScalarKind scalar, const AttentionParams& p, const void* q, const void* k,
                                     const void* v, void* out, void* lse, void* stats, cudaStream_t stream) {
  const int64_t rows = p.batch * p.heads * p.q_len;
  if (rows <= 0) return cudaSuccess;
  return dispatch_float_double(scalar, [&](auto tag) {
    using T = decltype(tag);
    attention_forward_kernel<T><<<blocks_for(rows, 128), 128, 0, stream>>>(
        p, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(out),
        static_cast<T*>(lse), static_cast<T*>(stats));
    PVO_RETURN_LAST_LAUNCH_ERROR();
  });
}

cudaError_t launch_attention_backward(ScalarKind scalar, const AttentionParams& p, const void* q, const void* k,
                                      const void* v, const void* grad_out, const void* stats, const void* delta,
                                      void* dq, void* dk, void* dv, cudaStream_t stream) {
  const int64_t q_rows = p.batch * p.heads * p.q_len, kv_rows = p.batch * p.kv_heads * p.kv_len;
  if (q_rows <= 0 || kv_rows <= 0) return cudaSuccess;
  return dispatch_float_double(scalar, [&](auto tag) {
    using T = decltype(tag);
    attention_backward_kv_kernel<T><<<blocks_for(kv_rows, 128), 128, 0, stream>>>(
        p, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
        static_cast<const T*>(grad_out), static_cast<const T*>(stats), static_cast<const T*>(delta),
        static_cast<T*>(dk), static_cast<T*>(dv));
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return status;
    attention_backward_q_kernel<T><<<blocks_for(q_rows, 128), 128, 0, stream>>>(
        p, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
        static_cast<const T*>(grad_out), static_cast<const T*>(stats), static_cast<const T*>(delta),
        static_cast<T*>(dq));
    PVO_RETURN_LAST_LAUNCH_ERROR();
  });
}

}  // namespace pyvision_ops
