// Launchers of the pooling family's CUDA kernels. Torch-free: the glue (unpool_cuda.cpp) passes
// raw pointers into dense tensors, the geometry, the element kinds and the current stream.
// Every launcher returns the launch's cudaError_t.
#pragma once

#include <cuda_runtime.h>

#include "common/host_device.h"
#include "unpool/unpool.h"

namespace pyvision_ops {

// status[0]: smallest logical position (n * C + c) * plane + s of a bad index (INT64_MAX: none);
// status[1]: non-zero when the write-once tile kernel met an index outside its own window.
cudaError_t launch_reset_status(long long* status, cudaStream_t stream);

cudaError_t launch_max_pool2d_forward(const PoolParams& p, ScalarKind scalar, bool compact, const void* x,
                                      void* values, void* indices, cudaStream_t stream);

// Write-once unpooling when the windows tile the target (windows_tile_target(p)).
cudaError_t launch_tile_unpool(const UnpoolParams& p, ScalarKind scalar, IndexKind index, const void* source,
                               const void* indices, void* target, long long* status, cudaStream_t stream);

// Scatter into a zero-filled target (the pooling backward); `accumulate` adds (Float32/Float64
// targets only).
cudaError_t launch_scatter(const UnpoolParams& p, ScalarKind scalar, IndexKind index, bool accumulate,
                           const void* source, const void* indices, void* target, long long* status,
                           cudaStream_t stream);

// Deterministic overwrite unpooling for any indices (duplicates: the last source position in
// raster order wins, as PyTorch's CPU loop). `winner` is a workspace of N * C * target_plane
// elements (int32, or int64 when `wide_winner`) filled with -1 by the caller.
cudaError_t launch_claim_resolve(const UnpoolParams& p, ScalarKind scalar, IndexKind index, const void* source,
                                 const void* indices, void* winner, bool wide_winner, void* target, long long* status,
                                 cudaStream_t stream);

// source[i] = target[target_of(indices[i])]: the unpooling backward.
cudaError_t launch_gather(const UnpoolParams& p, ScalarKind scalar, IndexKind index, const void* target,
                          const void* indices, void* source, long long* status, cudaStream_t stream);

}  // namespace pyvision_ops
