// Launchers of the attention family's CUDA kernels (attention_kernel.cu). Torch-free: the glue
// (attention_cuda.cpp) passes the inputs prepared by prepare_attention_inputs (compute dtype,
// float32 or float64, contiguous, layouts of attention.h), the params and the current stream.
// Each launcher returns the cudaError_t of its launches.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "attention/attention.h"
#include "common/host_device.h"

namespace pyvision_ops {

// out (B, Hq, L, Ev), lse (B, Hq, L) and stats (B, Hq, L, 2) = (m, log l): one thread per query
// row, an online softmax over the row's visible keys.
cudaError_t launch_attention_forward(ScalarKind scalar, const AttentionParams& p, const void* q, const void* k,
                                     const void* v, void* out, void* lse, void* stats, cudaStream_t stream);

// Whether launch_attention_forward_mma takes this call: float16 / bfloat16, E == Ev in {64, 128},
// no dropout, at most 65535 (batch, head) pairs, and the current device runs an image built for
// sm_80 or newer. The data must be 16-byte aligned (the glue copies a tensor that is not).
bool attention_mma_supported(ScalarKind scalar, const AttentionParams& p);

// The tensor-core forward (attention_mma_kernel.cu): q, k, v contiguous in their own 16-bit dtype,
// out (B, Hq, L, Ev), lse and stats in float32, as launch_attention_forward's.
cudaError_t launch_attention_forward_mma(ScalarKind scalar, const AttentionParams& p, const void* q, const void* k,
                                         const void* v, float* out, float* lse, float* stats, cudaStream_t stream);

// The tensor-core backward (attention_mma_kernel.cu) for the calls attention_mma_supported takes:
// q, k, v, grad_out contiguous in their 16-bit dtype, stats (B, Hq, L, 2) and delta (B, Hq, L) in
// float32; dq (B, Hq, L, E), dk, dv (B, Hkv, S, E) float32, every element written (two kernels, one
// writer per element, no atomics).
cudaError_t launch_attention_backward_mma(ScalarKind scalar, const AttentionParams& p, const void* q, const void* k,
                                          const void* v, const void* grad_out, const float* stats,
                                          const float* delta, float* dq, float* dk, float* dv, cudaStream_t stream);

// dk, dv (B, Hkv, S, E / Ev): one thread per key row, over the queries of every head of its group;
// dq (B, Hq, L, E): one thread per query row, over its keys. delta (B, Hq, L) = rowsum(dO * O).
// No atomics: every output element has one writer.
cudaError_t launch_attention_backward(ScalarKind scalar, const AttentionParams& p, const void* q, const void* k,
                                      const void* v, const void* grad_out, const void* stats, const void* delta,
                                      void* dq, void* dk, void* dv, cudaStream_t stream);

}  // namespace pyvision_ops
