// Launchers of the distance family's CUDA kernels (distance_kernel.cu). Torch-free: the glue
// (distance_cuda.cpp) passes the rows prepared by prepare_distance_rows (compute dtype, float32 or
// float64, contiguous), raw output pointers, the element kind and the current stream. Every
// launcher returns the cudaError_t of its launches (cudaSuccess, without launching, when there
// is nothing to do).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/host_device.h"
#include "distance/distance.h"
#include "distance/distance_cuda_tile.h"
#include "distance/distance_warp_kernels.h"

namespace pyvision_ops {

// The prepared rows of x and y (PreparedRows of distance_checks.h) of every batch item:
// orig / centered (batch, n, dim) and norms (batch, n), all in the compute dtype. y may alias x.
struct DistanceSides {
  const void* x_orig = nullptr;
  const void* x_centered = nullptr;
  const void* x_norms = nullptr;
  int64_t x_n = 0;
  const void* y_orig = nullptr;
  const void* y_centered = nullptr;
  const void* y_norms = nullptr;
  int64_t y_n = 0;
  int64_t dim = 0;
};

// What launch_distance_tiles writes for a pair: DistanceOutput (distance_cuda_tile.h).

// The rows [row_begin, row_begin + rows) of x of the batch items [batch_begin, batch_begin +
// batch_count) against every row of y of the same item:
//   out[((b - batch_begin) * rows + (i - row_begin)) * ld + j], j < y_n <= ld, compute dtype.
struct DistanceTileArgs {
  DistanceMetric metric = DistanceMetric::SqEuclidean;
  DistanceOutput output = DistanceOutput::Values;
  DistanceSides sides;
  int64_t batch_begin = 0, batch_count = 0;
  int64_t row_begin = 0, rows = 0;
  void* out = nullptr;
  int64_t ld = 0;
};
cudaError_t launch_distance_tiles(ScalarKind scalar, const DistanceTileArgs& args, cudaStream_t stream);

// --- pairwise_topk --------------------------------------------------------------------------

// For each of `rows` rows of keys (keys[r * ld + j], j < m) and its threshold t[r] (the k-th
// smallest key of the row): the k selected candidates, every j with key < t in increasing j,
// then the smallest j with key == t until there are k, written to out_keys / out_indices
// (rows, k). A stable sort of each row by key then gives the (key, index) order.
cudaError_t launch_topk_collect(ScalarKind scalar, const void* keys, int64_t rows, int64_t m, int64_t ld,
                                const void* thresholds, int64_t k, void* out_keys, int64_t* out_indices,
                                cudaStream_t stream);

// The chunk's sorted candidates (keys, indices (rows_total, k), row r of the chunk is x row
// row_begin + r % rows of batch item batch_begin + r / rows) to values / indices (batch, x_n, k):
// value = -key for `largest`, else key; an infinite key (it may stand for a NaN) is replaced by
// the pair's value recomputed from the original rows, as the CPU op does.
struct TopkFinishArgs {
  DistanceMetric metric = DistanceMetric::SqEuclidean;
  bool largest = false;
  DistanceSides sides;
  int64_t batch_begin = 0, batch_count = 0;
  int64_t row_begin = 0, rows = 0;
  int64_t k = 0;
  const void* keys = nullptr;
  const int64_t* indices = nullptr;
  void* out_values = nullptr;
  int64_t* out_indices = nullptr;
};
cudaError_t launch_topk_finish(ScalarKind scalar, const TopkFinishArgs& args, cudaStream_t stream);

// --- triplet mining ---------------------------------------------------------------------------

// Batch-hard over float32 rows, fused with the distance tiles (no distance matrix): anchors are
// the x rows (embedding anchor_offset + i), candidates the y rows (embedding j); best_positive /
// best_negative (x_n) hold packed candidates (distance_mining.h) and must start at
// kNoFarthestPacked / kNoNearestPacked. `symmetric` (x and y the same rows, anchor_offset 0):
// only the tiles on and above the diagonal are computed, each serving its rows and its columns.
// Needs y_n < 2^31.
struct BatchHardTileArgs {
  DistanceMetric metric = DistanceMetric::SqEuclidean;
  DistanceSides sides;
  const int64_t* labels = nullptr;
  int64_t anchor_offset = 0;
  bool symmetric = false;
  unsigned long long* best_positive = nullptr;
  unsigned long long* best_negative = nullptr;
};
cudaError_t launch_batch_hard_tiles(const BatchHardTileArgs& args, cudaStream_t stream);

// positive[a] / negative[a] = the index of the packed candidates (-1: none), a < anchors.
cudaError_t launch_batch_hard_unpack(const unsigned long long* best_positive, const unsigned long long* best_negative,
                                     int64_t anchors, int64_t* positive, int64_t* negative, cudaStream_t stream);

// A block of mining keys: MiningBlockArgs (distance_warp_kernels.h).

// Batch-hard on a key block (any compute dtype): positive[r] / negative[r], -1 for none.
cudaError_t launch_batch_hard_block(ScalarKind scalar, const MiningBlockArgs& args, int64_t* positive,
                                    int64_t* negative, cudaStream_t stream);

// Semi-hard: negative[r * n + p] = the chosen negative of (anchor_begin + r, p) for every
// positive p, -1 for non-positives and for anchors without a usable negative.
cudaError_t launch_semi_hard_block(ScalarKind scalar, const MiningBlockArgs& args, int64_t* negative,
                                   cudaStream_t stream);

// "semi_hard_window" (hard = false) / "hard": counts[r * n + p] = the number of negatives kept
// for (anchor_begin + r, p) (0 for non-positives); then, with offsets the exclusive prefix sums
// of counts (total = their sum), the triplets at [offsets[r * n + p], + counts) in increasing
// negative index, and (violation non-null, "hard") their violations in the compute dtype.
cudaError_t launch_window_count(ScalarKind scalar, const MiningBlockArgs& args, bool hard, double margin,
                                int64_t* counts, cudaStream_t stream);
cudaError_t launch_window_fill(ScalarKind scalar, const MiningBlockArgs& args, bool hard, double margin,
                               const int64_t* offsets, int64_t total, int64_t* anchor, int64_t* positive,
                               int64_t* negative, void* violation, cudaStream_t stream);

// --- hierarchical triplet loss (distance_hierarchical.h) ------------------------------------

// One thread per entry (a, j) of the distances d (n, n) (compute dtype, contiguous), classes (n,)
// in [0, p) and margins (p, p): term[a * n + j] and count[a * n + j] of hierarchical_entry, in
// the compute dtype. Either output may be null (not written).
cudaError_t launch_hierarchical_entries(ScalarKind scalar, const void* distances, const int64_t* classes,
                                        const void* margins, int64_t n, int64_t p, void* term, void* count,
                                        cudaStream_t stream);

}  // namespace pyvision_ops
