// CUDA glue of the distance family: pairwise_distance, pairwise_topk and _mine_triplets with the
// checks, row preparation (prepare_distance_rows: the same centred rows, norms and original rows
// as the CPU path) and semantics of distance_cpu.cpp, the device guard, the current stream and a
// launch check after every launcher. The other ops of the family are CompositeExplicitAutograd
// (distance_composite.cpp).
//
// Scratch: nothing of size N x M is formed beyond pairwise_distance's own output. pairwise_topk
// and the miners other than float32 batch-hard work on blocks of query (anchor) rows whose
// scratch stays within kScratchBytes (at least one row):
//   * pairwise_topk: per block, the tile kernel writes the selection keys (the distance, negated
//     for largest, NaN as +inf) of the block's rows against all of y; ATen's topk (unsorted)
//     gives each row's k-th smallest key t; topk_collect_kernel takes every key < t and then the
//     smallest indices with key == t (the CPU's tie rule: smaller index first); a stable ATen sort
//     of those k candidates by key gives the (key, index) order; topk_finish_kernel writes the
//     values (NaN pairs recomputed as the CPU does) and indices.
//   * batch_hard (float32): fused into the tiles (no scratch; packed atomics), symmetric when
//     every embedding is an anchor. Other dtypes: key blocks + batch_hard_block_kernel.
//   * semi_hard / semi_hard_window / hard: key blocks, then the warp kernels; the triplets of
//     each block are compacted with ATen (nonzero / masked_select, or counts + exclusive cumsum
//     and one read-back of the block's total); "hard" with max_triplets keeps a running
//     selection of the hardest (stable ATen sort by violation, then back to (a, p, n) order).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/cuda_launch.h"
#include "distance/distance.h"
#include "distance/distance_checks.h"
#include "distance/distance_kernel.h"
#include "distance/distance_mining.h"

namespace pyvision_ops {
namespace {

// Upper bound of the scratch of one block of pairwise_topk or of the block miners.
constexpr int64_t kScratchBytes = int64_t{256} << 20;

DistanceSides sides_of(const PreparedRows& x, const PreparedRows& y) {
  DistanceSides s;
  s.x_orig = x.orig.const_data_ptr();
  s.x_centered = x.centered.const_data_ptr();
  s.x_norms = x.norms.const_data_ptr();
  s.x_n = x.orig.size(1);
  s.y_orig = y.orig.const_data_ptr();
  s.y_centered = y.centered.const_data_ptr();
  s.y_norms = y.norms.const_data_ptr();
  s.y_n = y.orig.size(1);
  s.dim = x.orig.size(2);
  return s;
}

// The prepared rows must be what the kernels assume: contiguous (B, n, D) / (B, n), one dtype.
void check_prepared(const PreparedRows& rows, at::ScalarType compute) {
  TORCH_INTERNAL_ASSERT(rows.orig.dim() == 3 && rows.centered.sizes() == rows.orig.sizes() &&
                        rows.norms.dim() == 2 && rows.norms.size(0) == rows.orig.size(0) &&
                        rows.norms.size(1) == rows.orig.size(1));
  TORCH_INTERNAL_ASSERT(rows.orig.is_contiguous() && rows.centered.is_contiguous() && rows.norms.is_contiguous());
  TORCH_INTERNAL_ASSERT(rows.orig.scalar_type() == compute && rows.centered.scalar_type() == compute &&
                        rows.norms.scalar_type() == compute);
}

int64_t element_size(at::ScalarType compute) { return compute == at::kDouble ? 8 : 4; }

// --- pairwise_distance -----------------------------------------------------------------------

at::Tensor pairwise_distance_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& y_opt,
                                  c10::string_view metric_name) {
  constexpr const char* op = "pairwise_distance";
  const at::Tensor y = y_opt.has_value() ? *y_opt : at::Tensor();
  const DistanceMetric metric = parse_distance_metric(op, metric_name);
  const int64_t batch = check_pairwise_inputs(op, x, y);
  const int64_t n = x.size(-2), m = y.defined() ? y.size(-2) : n;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 2);
  shape.push_back(n);
  shape.push_back(m);
  if (batch * n * m == 0) return at::empty(shape, x.options());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::ScalarType compute = distance_compute_dtype(x.scalar_type());
  PreparedRows xr, yr;
  prepare_distance_rows(metric, x, y, batch, xr, yr);
  // x against itself: the same rows (cosine_augmented_rows: a side of their own)
  const PreparedRows& ys = yr.orig.defined() ? yr : xr;
  check_prepared(xr, compute);
  check_prepared(ys, compute);
  at::Tensor out = at::empty({batch, n, m}, x.options().dtype(compute));
  DistanceTileArgs args;
  args.metric = metric;
  args.output = DistanceOutput::Values;
  args.sides = sides_of(xr, ys);
  args.batch_begin = 0;
  args.batch_count = batch;
  args.row_begin = 0;
  args.rows = n;
  args.out = out.mutable_data_ptr();
  args.ld = m;
  check_cuda_launch(launch_distance_tiles(scalar_kind(compute), args, at::cuda::getCurrentCUDAStream()), op,
                    "distance_tiles_kernel");
  at::Tensor result = out.reshape(shape);
  if (result.scalar_type() != x.scalar_type()) result = result.to(x.scalar_type());
  return result;
}

// --- pairwise_topk ---------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> pairwise_topk_cuda(const at::Tensor& x, const at::Tensor& y, int64_t k,
                                                      c10::string_view metric_name, bool largest) {
  constexpr const char* op = "pairwise_topk";
  const DistanceMetric metric = parse_distance_metric(op, metric_name);
  const int64_t batch = check_topk_inputs(op, x, y, k);
  const int64_t n = x.size(-2), m = y.size(-2);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 2);
  shape.push_back(n);
  shape.push_back(k);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::ScalarType compute = distance_compute_dtype(x.scalar_type());
  at::Tensor values = at::empty({batch, n, k}, x.options().dtype(compute));
  at::Tensor indices = at::empty({batch, n, k}, x.options().dtype(at::kLong));
  if (batch * n > 0) {
    PreparedRows xr, yr;
    prepare_distance_rows(metric, x, y, batch, xr, yr);
    check_prepared(xr, compute);
    check_prepared(yr, compute);
    const DistanceSides sides = sides_of(xr, yr);
    const ScalarKind kind = scalar_kind(compute);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    // Bytes per query row: its keys against y, and the k candidates through topk, the collect
    // kernel, the sort and the gather (values and int64 indices each).
    const int64_t elem = element_size(compute);
    const int64_t per_row = m * elem + 4 * k * (elem + 8);
    const int64_t rows_budget = std::max<int64_t>(1, kScratchBytes / per_row);
    // Whole batch items per block when they fit, else row blocks of one item.
    const int64_t items = n <= rows_budget ? std::min(batch, rows_budget / n) : 1;
    const int64_t rows = n <= rows_budget ? n : rows_budget;
    at::Tensor scratch = at::empty({items * rows, m}, x.options().dtype(compute));
    for (int64_t b0 = 0; b0 < batch; b0 += items) {
      const int64_t item_count = std::min(items, batch - b0);
      for (int64_t r0 = 0; r0 < n; r0 += rows) {
        const int64_t row_count = std::min(rows, n - r0);
        const int64_t block_rows = item_count * row_count;
        at::Tensor keys = scratch.narrow(0, 0, block_rows);
        DistanceTileArgs tiles;
        tiles.metric = metric;
        tiles.output = largest ? DistanceOutput::LargestKeys : DistanceOutput::SmallestKeys;
        tiles.sides = sides;
        tiles.batch_begin = b0;
        tiles.batch_count = item_count;
        tiles.row_begin = r0;
        tiles.rows = row_count;
        tiles.out = keys.mutable_data_ptr();
        tiles.ld = m;
        check_cuda_launch(launch_distance_tiles(kind, tiles, stream), op, "distance_tiles_kernel");
        // The k-th smallest key of each row (the largest of the k smallest).
        const at::Tensor threshold =
            std::get<0>(at::topk(keys, k, /*dim=*/1, /*largest=*/false, /*sorted=*/false)).amax(1).contiguous();
        at::Tensor chosen_keys = at::empty({block_rows, k}, keys.options());
        at::Tensor chosen_indices = at::empty({block_rows, k}, indices.options());
        check_cuda_launch(launch_topk_collect(kind, keys.const_data_ptr(), block_rows, m, m, threshold.const_data_ptr(), k,
                                              chosen_keys.mutable_data_ptr(), chosen_indices.mutable_data_ptr<int64_t>(),
                                              stream),
                          op, "topk_collect_kernel");
        // Candidates arrive in index order within equal keys: a stable sort keeps it.
        auto sorted = at::sort(chosen_keys, /*stable=*/true, /*dim=*/1, /*descending=*/false);
        const at::Tensor sorted_keys = std::get<0>(sorted).contiguous();
        const at::Tensor sorted_indices = chosen_indices.gather(1, std::get<1>(sorted)).contiguous();
        TopkFinishArgs finish;
        finish.metric = metric;
        finish.largest = largest;
        finish.sides = sides;
        finish.batch_begin = b0;
        finish.batch_count = item_count;
        finish.row_begin = r0;
        finish.rows = row_count;
        finish.k = k;
        finish.keys = sorted_keys.const_data_ptr();
        finish.indices = sorted_indices.const_data_ptr<int64_t>();
        finish.out_values = values.mutable_data_ptr();
        finish.out_indices = indices.mutable_data_ptr<int64_t>();
        check_cuda_launch(launch_topk_finish(kind, finish, stream), op, "topk_finish_kernel");
      }
    }
  }
  values = values.reshape(shape);
  indices = indices.reshape(shape);
  if (values.scalar_type() != x.scalar_type()) values = values.to(x.scalar_type());
  return {values, indices};
}

// --- triplet mining ----------------------------------------------------------------------------

using Triplets = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Triplets empty_triplets(const at::Tensor& labels) {
  return {at::empty({0}, labels.options()), at::empty({0}, labels.options()), at::empty({0}, labels.options())};
}

// Anchors (anchor_begin + a) with both a positive and a negative, from per-anchor indices.
Triplets compact_batch_hard(const at::Tensor& positive, const at::Tensor& negative, int64_t anchor_begin) {
  const at::Tensor valid = positive.ge(0).logical_and_(negative.ge(0));
  at::Tensor anchor = valid.nonzero().reshape({-1});
  if (anchor_begin != 0) anchor = anchor + anchor_begin;
  return {anchor, positive.masked_select(valid), negative.masked_select(valid)};
}

// float32 batch-hard fused into the distance tiles.
Triplets batch_hard_fused(DistanceMetric metric, const PreparedRows& xr, const PreparedRows& yr,
                          const at::Tensor& labels, int64_t anchor_begin, int64_t anchors, int64_t n) {
  constexpr const char* op = "mine_triplets";
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool symmetric = anchor_begin == 0 && anchors == n;
  // Packed candidates in int64 storage: 0 = kNoFarthestPacked, -1 (all bits) = kNoNearestPacked.
  at::Tensor best_positive = at::zeros({anchors}, labels.options());
  at::Tensor best_negative = at::full({anchors}, -1, labels.options());
  static_assert(kNoFarthestPacked == 0ull && kNoNearestPacked == ~0ull, "the initial packed candidates");
  BatchHardTileArgs args;
  args.metric = metric;
  // x's rows for the anchors even when they are the embeddings themselves: with cosine a short
  // (zero) row's augmented row differs on its two sides ([u, f, 0] against [u, 0, f]), so that two
  // zero rows are at distance 1. The dot of an x row with a y row stays symmetric in the pair,
  // which the symmetric kernel's reuse of a tile for both orders relies on.
  args.sides = sides_of(xr, yr);
  args.labels = labels.const_data_ptr<int64_t>();
  args.anchor_offset = symmetric ? 0 : anchor_begin;
  args.symmetric = symmetric;
  args.best_positive = reinterpret_cast<unsigned long long*>(best_positive.mutable_data_ptr<int64_t>());
  args.best_negative = reinterpret_cast<unsigned long long*>(best_negative.mutable_data_ptr<int64_t>());
  check_cuda_launch(launch_batch_hard_tiles(args, stream), op, "batch_hard_tiles_kernel");
  at::Tensor positive = at::empty({anchors}, labels.options());
  at::Tensor negative = at::empty({anchors}, labels.options());
  check_cuda_launch(launch_batch_hard_unpack(args.best_positive, args.best_negative, anchors,
                                             positive.mutable_data_ptr<int64_t>(), negative.mutable_data_ptr<int64_t>(),
                                             stream),
                    op, "batch_hard_unpack_kernel");
  return compact_batch_hard(positive, negative, anchor_begin);
}

// The hardest `cap` of the triplets kept so far plus a block's (both in (a, p, n) order, the
// block's after every kept one): largest violation first, ties to the earlier (smaller) triplet,
// then back in (a, p, n) order. As the CPU's selection over the whole list.
struct HardSelection {
  int64_t cap = 0;
  at::Tensor anchor, positive, negative, violation;

  void add(const at::Tensor& a, const at::Tensor& p, const at::Tensor& ng, const at::Tensor& v) {
    if (!anchor.defined()) {
      anchor = a;
      positive = p;
      negative = ng;
      violation = v;
    } else {
      anchor = at::cat({anchor, a});
      positive = at::cat({positive, p});
      negative = at::cat({negative, ng});
      violation = at::cat({violation, v});
    }
    if (anchor.size(0) <= cap) return;
    const at::Tensor hardest =
        std::get<1>(at::sort(violation, /*stable=*/true, /*dim=*/0, /*descending=*/true)).narrow(0, 0, cap);
    const at::Tensor keep = std::get<0>(at::sort(hardest));
    anchor = anchor.index_select(0, keep);
    positive = positive.index_select(0, keep);
    negative = negative.index_select(0, keep);
    violation = violation.index_select(0, keep);
  }
};

// Every strategy on blocks of anchor rows' mining keys (rows x N scratch).
Triplets mine_blocks(TripletStrategy strategy, DistanceMetric metric, double margin, int64_t max_triplets,
                     const PreparedRows& xr, const PreparedRows& yr, const at::Tensor& labels, int64_t anchor_begin,
                     int64_t anchors, int64_t n, at::ScalarType compute) {
  constexpr const char* op = "mine_triplets";
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const ScalarKind kind = scalar_kind(compute);
  const DistanceSides sides = sides_of(xr, yr);
  // Per anchor row: its keys, the dense int64 result (negatives or counts), the offsets and
  // ATen's temporaries of the compaction.
  const int64_t per_row = n * (element_size(compute) + 40);
  const int64_t block = std::min(anchors, std::max<int64_t>(1, kScratchBytes / per_row));
  at::Tensor keys = at::empty({block, n}, labels.options().dtype(compute));
  const bool hard = strategy == TripletStrategy::Hard;
  const bool keep_violation = hard && max_triplets >= 0;
  std::vector<at::Tensor> pieces_a, pieces_p, pieces_n;
  HardSelection selection;
  selection.cap = max_triplets;
  at::Tensor bh_positive, bh_negative;
  if (strategy == TripletStrategy::BatchHard) {
    bh_positive = at::empty({anchors}, labels.options());
    bh_negative = at::empty({anchors}, labels.options());
  }
  for (int64_t r0 = 0; r0 < anchors; r0 += block) {
    const int64_t rows = std::min(block, anchors - r0);
    DistanceTileArgs tiles;
    tiles.metric = metric;
    tiles.output = DistanceOutput::MiningKeys;
    tiles.sides = sides;
    tiles.batch_begin = 0;
    tiles.batch_count = 1;
    tiles.row_begin = r0;
    tiles.rows = rows;
    tiles.out = keys.mutable_data_ptr();
    tiles.ld = n;
    check_cuda_launch(launch_distance_tiles(kind, tiles, stream), op, "distance_tiles_kernel");
    MiningBlockArgs blk;
    blk.keys = keys.const_data_ptr();
    blk.rows = rows;
    blk.n = n;
    blk.ld = n;
    blk.labels = labels.const_data_ptr<int64_t>();
    blk.anchor_begin = anchor_begin + r0;
    switch (strategy) {
      case TripletStrategy::BatchHard: {
        check_cuda_launch(launch_batch_hard_block(kind, blk, bh_positive.mutable_data_ptr<int64_t>() + r0,
                                                  bh_negative.mutable_data_ptr<int64_t>() + r0, stream),
                          op, "batch_hard_block_kernel");
        break;
      }
      case TripletStrategy::SemiHard: {
        at::Tensor chosen = at::empty({rows * n}, labels.options());
        check_cuda_launch(launch_semi_hard_block(kind, blk, chosen.mutable_data_ptr<int64_t>(), stream), op,
                          "semi_hard_block_kernel");
        const at::Tensor found = chosen.ge(0);
        const at::Tensor pair = found.nonzero().reshape({-1});  // r * n + p, in (a, p) order
        pieces_a.push_back(at::div(pair, n, "trunc") + (anchor_begin + r0));
        pieces_p.push_back(at::remainder(pair, n));
        pieces_n.push_back(chosen.masked_select(found));
        break;
      }
      case TripletStrategy::SemiHardWindow:
      case TripletStrategy::Hard: {
        at::Tensor counts = at::empty({rows * n}, labels.options());
        check_cuda_launch(launch_window_count(kind, blk, hard, margin, counts.mutable_data_ptr<int64_t>(), stream), op,
                          "window_count_kernel");
        const int64_t total = counts.sum().item<int64_t>();  // the block's one read-back
        if (total == 0) break;
        const at::Tensor offsets = (at::cumsum(counts, 0) - counts).contiguous();
        at::Tensor a = at::empty({total}, labels.options()), p = at::empty({total}, labels.options()),
                   ng = at::empty({total}, labels.options());
        at::Tensor v = keep_violation ? at::empty({total}, keys.options()) : at::Tensor();
        check_cuda_launch(launch_window_fill(kind, blk, hard, margin, offsets.const_data_ptr<int64_t>(), total,
                                             a.mutable_data_ptr<int64_t>(), p.mutable_data_ptr<int64_t>(),
                                             ng.mutable_data_ptr<int64_t>(), keep_violation ? v.mutable_data_ptr() : nullptr,
                                             stream),
                          op, "window_fill_kernel");
        if (keep_violation) {
          selection.add(a, p, ng, v);
        } else {
          pieces_a.push_back(a);
          pieces_p.push_back(p);
          pieces_n.push_back(ng);
        }
        break;
      }
    }
  }
  if (strategy == TripletStrategy::BatchHard) return compact_batch_hard(bh_positive, bh_negative, anchor_begin);
  if (keep_violation) {
    if (!selection.anchor.defined()) return empty_triplets(labels);
    return {selection.anchor, selection.positive, selection.negative};
  }
  if (pieces_a.empty()) return empty_triplets(labels);
  return {at::cat(pieces_a), at::cat(pieces_p), at::cat(pieces_n)};
}

Triplets mine_triplets_cuda(const at::Tensor& embeddings, const at::Tensor& labels_in, c10::string_view strategy_name,
                            double margin, c10::string_view metric_name, int64_t max_triplets, int64_t anchor_begin,
                            int64_t anchor_end) {
  constexpr const char* op = "mine_triplets";
  const TripletStrategy strategy = parse_triplet_strategy(op, strategy_name);
  const DistanceMetric metric = parse_distance_metric(op, metric_name);
  const at::Tensor labels = check_mining_inputs(op, embeddings, labels_in);
  TORCH_CHECK_VALUE(std::isfinite(margin), op, ": margin must be finite, got ", margin);
  const int64_t n = embeddings.size(0);
  if (anchor_end < 0) anchor_end = n;
  TORCH_CHECK_VALUE(0 <= anchor_begin && anchor_begin <= anchor_end && anchor_end <= n, op,
                    ": anchor range must lie in [0, N = ", n, "], got [", anchor_begin, ", ", anchor_end, ")");
  const c10::cuda::CUDAGuard guard(embeddings.device());
  check_finite_embeddings(op, embeddings);
  const int64_t anchors = anchor_end - anchor_begin;
  if (anchors == 0) return empty_triplets(labels);
  const at::ScalarType compute = distance_compute_dtype(embeddings.scalar_type());
  const at::Tensor x = embeddings.narrow(0, anchor_begin, anchors);
  PreparedRows xr, yr;
  prepare_distance_rows(metric, x, embeddings, 1, xr, yr, /*centre_from_y=*/true);
  check_prepared(xr, compute);
  check_prepared(yr, compute);
  if (strategy == TripletStrategy::BatchHard && compute == at::kFloat && n <= std::numeric_limits<int32_t>::max()) {
    return batch_hard_fused(metric, xr, yr, labels, anchor_begin, anchors, n);
  }
  return mine_blocks(strategy, metric, margin, max_triplets, xr, yr, labels, anchor_begin, anchors, n, compute);
}

// The hierarchical triplet loss: one kernel writes the per-entry terms or counts
// (hierarchical_entry), ATen reduces them (a fixed-order reduction: deterministic).
at::Tensor hierarchical_triplet_loss_cuda(const at::Tensor& distances, const at::Tensor& classes,
                                          const at::Tensor& margins) {
  constexpr const char* op = "hierarchical_triplet_loss";
  const c10::cuda::CUDAGuard guard(distances.device());
  const HierarchicalInputs in = check_hierarchical_inputs(op, distances, classes, margins);
  if (in.triplets == 0) return at::zeros({}, distances.options());
  at::Tensor term = at::empty({in.n, in.n}, in.distances.options());
  check_cuda_launch(launch_hierarchical_entries(scalar_kind(in.distances.scalar_type()), in.distances.const_data_ptr(),
                                                in.classes.const_data_ptr<int64_t>(), in.margins.const_data_ptr(),
                                                in.n, in.p, term.mutable_data_ptr(), nullptr,
                                                at::cuda::getCurrentCUDAStream()),
                    op, "hierarchical_entries_kernel");
  return (term.sum() / (2.0 * in.triplets)).to(distances.scalar_type());
}

at::Tensor hierarchical_triplet_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& distances,
                                                   const at::Tensor& classes, const at::Tensor& margins) {
  constexpr const char* op = "hierarchical_triplet_loss_backward";
  const c10::cuda::CUDAGuard guard(distances.device());
  const HierarchicalInputs in = check_hierarchical_inputs(op, distances, classes, margins);
  TORCH_CHECK_VALUE(grad.numel() == 1, op, ": grad must be the loss's gradient (one element), got shape ",
                    shape_string(grad.sizes()));
  check_same_device(distances, grad, op, "distances", "grad");
  if (in.triplets == 0) return at::zeros({in.n, in.n}, distances.options());
  at::Tensor count = at::empty({in.n, in.n}, in.distances.options());
  check_cuda_launch(launch_hierarchical_entries(scalar_kind(in.distances.scalar_type()), in.distances.const_data_ptr(),
                                                in.classes.const_data_ptr<int64_t>(), in.margins.const_data_ptr(),
                                                in.n, in.p, nullptr, count.mutable_data_ptr(),
                                                at::cuda::getCurrentCUDAStream()),
                    op, "hierarchical_entries_kernel");
  const at::Tensor scale = grad.reshape({}).to(in.distances.scalar_type()) / (2.0 * in.triplets);
  return (count * scale).to(distances.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(pyvision_ops, CUDA, m) {
  m.impl("pairwise_distance", &pairwise_distance_cuda);
  m.impl("pairwise_topk", &pairwise_topk_cuda);
  m.impl("_mine_triplets", &mine_triplets_cuda);
  m.impl("_hierarchical_triplet_loss", &hierarchical_triplet_loss_cuda);
  m.impl("_hierarchical_triplet_loss_backward", &hierarchical_triplet_loss_backward_cuda);
}

}  // namespace pyvision_ops
