// CUDA kernel of linear_sum_assignment: one thread block per problem runs sap_solve (assign_sap_team.h,
// the code the CPU tests run with a team of one) with the block as the team. Each Dijkstra step
// scans the current row with one column per thread (strided when m > blockDim) and settles the
// next column with a block arg-min: warp shuffles, one partial per warp in shared memory (double
// buffered), one __syncthreads, then every thread folds the partials itself. No torch headers.
#include <cstdint>

#include "assign/assign_kernel.h"
#include "assign/assign_sap_team.h"
#include "common/cuda_check.h"
#include "common/cuda_dispatch.cuh"

namespace pyvision_ops {
namespace {

constexpr int kMaxThreads = 1024;
constexpr int kMaxWarps = kMaxThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ PVO_INLINE SapCandidate shuffle_down(const SapCandidate& c, int offset) {
  SapCandidate o;
  o.value = __shfl_down_sync(kFullMask, c.value, offset);
  o.matched = __shfl_down_sync(kFullMask, c.matched, offset);
  o.col = __shfl_down_sync(kFullMask, c.col, offset);
  return o;
}

// A thread block as a sap_solve team. blockDim.x is a multiple of 32.
struct BlockTeam {
  SapCandidate (*partials)[kMaxWarps];  // [2][kMaxWarps] in shared memory
  int buffer;

  __device__ int rank() const { return threadIdx.x; }
  __device__ int size() const { return blockDim.x; }
  __device__ bool leader() const { return threadIdx.x == 0; }
  __device__ void sync() { __syncthreads(); }
  __device__ bool any(bool flag) { return __syncthreads_or(flag ? 1 : 0) != 0; }

  __device__ SapCandidate reduce_min(SapCandidate c) {
    for (int offset = 16; offset > 0; offset >>= 1) {
      const SapCandidate other = shuffle_down(c, offset);
      if (sap_better(other, c)) c = other;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    if (lane == 0) partials[buffer][warp] = c;
    __syncthreads();
    // Every thread folds the partials in the same order, so all get the same winner. The other
    // buffer is written next time: readers of this one are done by the barrier of that call.
    SapCandidate best = partials[buffer][0];
    for (int w = 1; w < warps; ++w) {
      if (sap_better(partials[buffer][w], best)) best = partials[buffer][w];
    }
    buffer ^= 1;
    return best;
  }
};

template <typename T>
__global__ void __launch_bounds__(kMaxThreads) lsa_kernel(const T* __restrict__ cost,
                                                          const AssignProblem* __restrict__ problems,
                                                          bool wide_layout, double* scratch_d, int32_t* scratch_i,
                                                          int64_t* rows_out, int64_t* cols_out, int32_t* status) {
  __shared__ SapCandidate partials[2][kMaxWarps];
  const AssignProblem p = problems[blockIdx.x];
  const bool tall = p.rows > p.cols;
  const int32_t n = tall ? p.cols : p.rows, m = tall ? p.rows : p.cols;
  const bool read_transposed = tall && !wide_layout;
  const int32_t stored_cols = read_transposed ? p.cols : m;
  SapWorkspace ws = sap_workspace_layout(n, m);
  ws.bind(scratch_d + p.scratch_offset, scratch_i + 2 * p.scratch_offset);
  BlockTeam team{partials, 0};
  const int32_t result = sap_solve(team, cost + p.cost_offset, stored_cols, read_transposed, n, m, ws);
  if (threadIdx.x == 0) {
    status[blockIdx.x] = result;
    if (result == kAssignOk) {
      assign_write_result(ws.col4row, n, tall, p.rows, ws.scratch_rows, rows_out + p.out_offset,
                          cols_out + p.out_offset);
    }
  }
}

}  // namespace

int64_t assign_scratch_doubles(int32_t rows, int32_t cols) {
  const int32_t n = rows < cols ? rows : cols, m = rows < cols ? cols : rows;
  return static_cast<int64_t>(sap_workspace_layout(n, m).doubles);
}

cudaError_t launch_linear_sum_assignment(ScalarKind kind, const void* cost, const AssignProblem* problems,
                                         int64_t count, int32_t max_wide_cols, bool wide_layout, double* scratch_d,
                                         int32_t* scratch_i, int64_t* rows, int64_t* cols, int32_t* status,
                                         cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  if (count > 0x7fffffff) return cudaErrorInvalidValue;
  const int64_t rounded = ((static_cast<int64_t>(max_wide_cols) + 31) / 32) * 32;  // no int32 overflow
  const int threads = static_cast<int>(rounded < 32 ? 32 : (rounded > kMaxThreads ? kMaxThreads : rounded));
  const dim3 grid(static_cast<unsigned>(count));
  return dispatch_float_double(kind, [&](auto tag) {
    using T = decltype(tag);
    lsa_kernel<T><<<grid, threads, 0, stream>>>(static_cast<const T*>(cost), problems, wide_layout, scratch_d,
                                                scratch_i, rows, cols, status);
    PVO_RETURN_LAST_LAUNCH_ERROR();
  });
}

}  // namespace pyvision_ops
