// CPU kernels of the distance family: pairwise distances, the fused k-nearest search and triplet
// mining, all on the tile engine of distance_tiles.h (parallel over groups of 64 rows of x, or
// of anchors). Each op differs only in its sink: pairwise_distance writes the tiles into the
// output, pairwise_topk keeps a per-row candidate buffer, the miners reduce (batch-hard) or keep
// one row block of distances (the other strategies) per task.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "distance/distance.h"
#include "distance/distance_checks.h"
#include "distance/distance_hierarchical.h"
#include "distance/distance_tiles.h"

namespace pyvision_ops {
namespace {

// Prepared rows plus their packed panels (B, panels * 16 * D).
struct PackedRows {
  PreparedRows rows;
  at::Tensor packed;
  int64_t n = 0, dim = 0;
};

template <typename T>
void pack_rows_parallel(const DistanceTileOps<T>& ops, PackedRows& side) {
  const int64_t batch = side.rows.centered.size(0);
  const int64_t panels = distance_panels(side.n);
  side.packed = at::empty({batch, std::max<int64_t>(panels, 1) * kDistancePanel * std::max<int64_t>(side.dim, 1)},
                          side.rows.centered.options());
  const T* src = side.rows.centered.data_ptr<T>();
  T* dst = side.packed.data_ptr<T>();
  const int64_t stride = side.packed.size(1);
  at::parallel_for(0, batch * panels, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / panels, p = t % panels;
      const int64_t r0 = p * kDistancePanel;
      ops.pack(src + (b * side.n + r0) * side.dim, std::min(kDistancePanel, side.n - r0), side.dim,
               dst + b * stride + p * kDistancePanel * side.dim);
    }
  });
}

template <typename T>
DistanceSide<T> side_of(const PackedRows& s, int64_t b) {
  return DistanceSide<T>{s.rows.orig.data_ptr<T>() + b * s.n * s.dim, s.rows.norms.data_ptr<T>() + b * s.n,
                         s.packed.data_ptr<T>() + b * s.packed.size(1), s.n};
}

// Prepares and packs x and y (y undefined: x against itself, then y_side aliases x_side).
template <typename T>
void prepare_sides(DistanceMetric metric, const at::Tensor& x, const at::Tensor& y, int64_t batch, PackedRows& xs,
                   PackedRows& ys, bool centre_from_y = false) {
  const DistanceTileOps<T> ops;
  prepare_distance_rows(metric, x, y, batch, xs.rows, ys.rows, centre_from_y);
  xs.n = xs.rows.orig.size(1);
  xs.dim = xs.rows.orig.size(2);  // D + 2 for cosine_augmented_rows
  pack_rows_parallel(ops, xs);
  if (ys.rows.orig.defined()) {
    ys.n = ys.rows.orig.size(1);
    ys.dim = ys.rows.orig.size(2);
    pack_rows_parallel(ops, ys);
  } else {
    ys = xs;
  }
}

// --- pairwise_distance -----------------------------------------------------------------------

template <typename T>
struct MatrixSink {
  T* out;  // this batch item's (N, M)
  int64_t ld;
  T* target(int64_t i, int64_t j0) { return out + i * ld + j0; }
  void consume(int64_t, int64_t, const T*, int64_t) {}
};


template <typename T>
void pairwise_distance_kernel(DistanceMetric metric, const PackedRows& xs, const PackedRows& ys, int64_t batch,
                              T* out, int64_t ld) {
  const DistanceTileOps<T> ops;
  const int64_t groups = (xs.n + kDistanceGroupRows - 1) / kDistanceGroupRows;
  at::parallel_for(0, batch * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> tile(kDistancePanel * kDistanceTileCols);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / groups, g = t % groups;
      const int64_t r0 = g * kDistanceGroupRows;
      MatrixSink<T> sink{out + b * xs.n * ld, ld};
      distance_row_group(ops, metric, side_of<T>(xs, b), side_of<T>(ys, b), xs.dim, r0,
                         std::min(kDistanceGroupRows, xs.n - r0), tile.data(), sink);
    }
  });
}

at::Tensor pairwise_distance_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& y_opt,
                                 c10::string_view metric_name) {
  constexpr const char* op = "pairwise_distance";
  const at::Tensor y = y_opt.has_value() ? *y_opt : at::Tensor();
  const DistanceMetric metric = parse_distance_metric(op, metric_name);
  const int64_t batch = check_pairwise_inputs(op, x, y);
  const int64_t n = x.size(-2), m = y.defined() ? y.size(-2) : n, dim = x.size(-1);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 2);
  shape.push_back(n);
  shape.push_back(m);
  if (batch * n * m == 0) return at::empty(shape, x.options());
  const at::ScalarType compute = distance_compute_dtype(x.scalar_type());
  at::Tensor out = at::empty({batch, n, m}, x.options().dtype(compute));
  PackedRows xs, ys;
  AT_DISPATCH_FLOATING_TYPES(compute, op, [&] {
    prepare_sides<scalar_t>(metric, x, y, batch, xs, ys);
    pairwise_distance_kernel<scalar_t>(metric, xs, ys, batch, out.data_ptr<scalar_t>(), m);
  });
  (void)dim;
  return out.to(x.scalar_type()).reshape(shape);
}

// --- pairwise_topk ---------------------------------------------------------------------------

// The k best (smallest key, then smallest index) of one row. Candidates arrive with increasing
// index, so one that is not strictly below the current k-th key `worst` is refused without
// touching the storage. Up to kHeapMaxK a max-heap (by key, then index) of the k best keeps
// `worst` exact at O(log k) per insertion; larger k use a buffer of up to `cap` candidates that
// is cut back to k (nth_element) when full, `worst` being the k-th key of the last cut.
constexpr int64_t kHeapMaxK = 64;

template <typename T>
struct RowSelection {
  std::vector<std::pair<T, int64_t>> items;
  T worst = std::numeric_limits<T>::infinity();
  int64_t k = 0, cap = 0;
  bool heap = false;

  void reset(int64_t k_, int64_t cap_) {
    k = k_;
    cap = cap_;
    heap = k <= kHeapMaxK;
    items.clear();
    worst = std::numeric_limits<T>::infinity();
  }
  static bool better(const std::pair<T, int64_t>& a, const std::pair<T, int64_t>& b) {
    return a.first < b.first || (a.first == b.first && a.second < b.second);
  }
  void cut() {
    std::nth_element(items.begin(), items.begin() + (k - 1), items.end(), better);
    items.resize(k);
    worst = items[k - 1].first;
    for (const auto& it : items) worst = std::max(worst, it.first);
  }
  void push(T key, int64_t j) {
    const bool filling = static_cast<int64_t>(items.size()) < k;
    if (!filling && !(key < worst)) return;
    if (heap) {
      if (!filling) {
        std::pop_heap(items.begin(), items.end(), better);
        items.back() = {key, j};
      } else {
        items.emplace_back(key, j);
      }
      std::push_heap(items.begin(), items.end(), better);
      if (static_cast<int64_t>(items.size()) == k) worst = items.front().first;
      return;
    }
    items.emplace_back(key, j);
    if (static_cast<int64_t>(items.size()) >= cap) cut();
  }
  void finish() {
    std::sort(items.begin(), items.end(), better);
    items.resize(std::min<int64_t>(k, items.size()));
  }
};

// One pair's metric value straight from the rows (exact form; plain product for "dot").
template <typename T>
T pair_value(const DistanceTileOps<T>& ops, DistanceMetric metric, const DistanceSide<T>& x, const DistanceSide<T>& y,
             int64_t dim, int64_t i, int64_t j) {
  const T* xi = x.orig + i * dim;
  const T* yj = y.orig + j * dim;
  if (metric == DistanceMetric::Dot) {
    T s = 0;
    for (int64_t k = 0; k < dim; ++k) s += xi[k] * yj[k];
    return s;
  }
  return finish_distance(metric, ops.exact_sq(xi, yj, dim));
}

// A selecting sink of the tile engine: until a row holds k candidates every value is consumed;
// after that the engine offers only the positions whose key is strictly below the row's k-th
// key at the start of the segment (finish_select, vectorised), which push() tests again against
// the k-th key of the moment (it only decreases).
template <typename T>
struct TopkSink {
  std::vector<T> segment = std::vector<T>(kDistanceTileCols);
  std::vector<int32_t> positions = std::vector<int32_t>(kDistanceTileCols);
  RowSelection<T>* rows;  // one selection per row of the group, row r0 + i at rows[i]
  int64_t r0;
  bool largest;
  T* target(int64_t, int64_t) { return segment.data(); }
  int32_t* picked() { return positions.data(); }
  static T key_of(T value, bool largest) {
    const T key = largest ? -value : value;
    return key != key ? std::numeric_limits<T>::infinity() : key;  // NaN last, as torch.topk
  }
  bool selective(int64_t i, T& bound, bool& negate) const {
    const RowSelection<T>& sel = rows[i - r0];
    if (static_cast<int64_t>(sel.items.size()) < sel.k) return false;
    bound = sel.worst;  // a NaN key counts as +inf, never below it: finish_select drops it
    negate = largest;
    return true;
  }
  void offer(int64_t i, int64_t j, T value) { rows[i - r0].push(key_of(value, largest), j); }
  void consume(int64_t i, int64_t j0, const T* values, int64_t cols) {
    RowSelection<T>& sel = rows[i - r0];
    for (int64_t j = 0; j < cols; ++j) sel.push(key_of(values[j], largest), j0 + j);
  }
};

// Rows of x per task of pairwise_topk: a multiple of 16 from kDistanceGroupRows up to
// kTopkGroupRows, the largest that still gives every thread 4 tasks. A block of y's panels
// (128 KiB at D = 128) then serves up to 16 panels of x while it is in L2, and all of y is
// read from memory once per group instead of once per 64 rows.
constexpr int64_t kTopkGroupRows = 16 * kDistancePanel;

int64_t topk_group_rows(int64_t batch, int64_t n) {
  const int64_t tasks = 4 * std::max<int64_t>(at::get_num_threads(), 1);
  const int64_t per_item = std::max<int64_t>((tasks + batch - 1) / batch, 1);
  const int64_t rows = (n + per_item - 1) / per_item;
  const int64_t rounded = (rows + kDistancePanel - 1) / kDistancePanel * kDistancePanel;
  return std::clamp(rounded, kDistanceGroupRows, kTopkGroupRows);
}

std::tuple<at::Tensor, at::Tensor> pairwise_topk_cpu(const at::Tensor& x, const at::Tensor& y, int64_t k,
                                                     c10::string_view metric_name, bool largest) {
  constexpr const char* op = "pairwise_topk";
  const DistanceMetric metric = parse_distance_metric(op, metric_name);
  const int64_t batch = check_topk_inputs(op, x, y, k);
  const int64_t n = x.size(-2);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 2);
  shape.push_back(n);
  shape.push_back(k);
  const at::ScalarType compute = distance_compute_dtype(x.scalar_type());
  at::Tensor values = at::empty({batch, n, k}, x.options().dtype(compute));
  at::Tensor indices = at::empty({batch, n, k}, x.options().dtype(at::kLong));
  if (batch * n > 0) {
    PackedRows xs, ys;
    AT_DISPATCH_FLOATING_TYPES(compute, op, [&] {
      prepare_sides<scalar_t>(metric, x, y, batch, xs, ys);
      const DistanceTileOps<scalar_t> ops;
      const int64_t group_rows = topk_group_rows(batch, n);
      const int64_t groups = (n + group_rows - 1) / group_rows;
      scalar_t* vals = values.data_ptr<scalar_t>();
      int64_t* idx = indices.data_ptr<int64_t>();
      at::parallel_for(0, batch * groups, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> tile(kDistancePanel * kDistanceTileCols);
        std::vector<RowSelection<scalar_t>> sel(group_rows);
        for (int64_t t = begin; t < end; ++t) {
          const int64_t b = t / groups, g = t % groups;
          const int64_t r0 = g * group_rows, rows = std::min(group_rows, n - r0);
          for (auto& s : sel) s.reset(k, std::max<int64_t>(2 * k, k + 256));
          TopkSink<scalar_t> sink;
          sink.rows = sel.data();
          sink.r0 = r0;
          sink.largest = largest;
          distance_row_group(ops, metric, side_of<scalar_t>(xs, b), side_of<scalar_t>(ys, b), xs.dim, r0, rows,
                             tile.data(), sink);
          for (int64_t r = 0; r < rows; ++r) {
            RowSelection<scalar_t>& s = sel[r];
            s.finish();
            const int64_t i = r0 + r, base = (b * n + i) * k;
            for (int64_t q = 0; q < k; ++q) {
              const int64_t j = s.items[q].second;
              const scalar_t key = s.items[q].first;
              idx[base + q] = j;
              // An infinite key may stand for a NaN value: take the pair's value again.
              vals[base + q] = std::isinf(key) ? pair_value(ops, metric, side_of<scalar_t>(xs, b), side_of<scalar_t>(ys, b),
                                                            xs.dim, i, j)
                                               : (largest ? -key : key);
            }
          }
        }
      });
    });
  }
  values = values.reshape(shape);
  indices = indices.reshape(shape);
  if (values.scalar_type() != x.scalar_type()) values = values.to(x.scalar_type());
  return {values, indices};
}

// --- triplet mining ----------------------------------------------------------------------------

// Triplets of one task's anchors, concatenated in task order at the end.
using TripletList = std::vector<std::array<int64_t, 3>>;

template <typename T>
struct BatchHardSink {
  std::vector<T> segment = std::vector<T>(kDistanceTileCols);
  const int64_t* labels;  // all N labels
  int64_t anchor_offset;  // x row i is embedding anchor_offset + i
  DistanceMetric metric;
  int64_t r0;
  std::array<T, kDistanceGroupRows> best_pos, best_neg;
  std::array<int64_t, kDistanceGroupRows> pos, neg;

  void reset(int64_t r0_) {
    r0 = r0_;
    best_pos.fill(-std::numeric_limits<T>::infinity());
    best_neg.fill(std::numeric_limits<T>::infinity());
    pos.fill(-1);
    neg.fill(-1);
  }
  T* target(int64_t, int64_t) { return segment.data(); }
  void consume(int64_t i, int64_t j0, const T* values, int64_t cols) {
    const int64_t r = i - r0, a = anchor_offset + i;
    const int64_t la = labels[a];
    T bp = best_pos[r], bn = best_neg[r];
    int64_t ip = pos[r], in = neg[r];
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t e = j0 + j;
      const T key = mining_key(metric, values[j]);
      if (labels[e] == la) {
        if (e != a && key > bp) {
          bp = key;
          ip = e;
        }
      } else if (key < bn) {
        bn = key;
        in = e;
      }
    }
    best_pos[r] = bp;
    best_neg[r] = bn;
    pos[r] = ip;
    neg[r] = in;
  }
};

// Keeps the task's rows of distances (rows x N) for the strategies that need whole rows.
template <typename T>
struct RowBlockSink {
  T* block;
  int64_t ld, r0;
  T* target(int64_t i, int64_t j0) { return block + (i - r0) * ld + j0; }
  void consume(int64_t, int64_t, const T*, int64_t) {}
};

// FaceNet / TF-Addons semi-hard for one anchor: per positive p (increasing index), the nearest
// negative strictly farther than p, else the farthest negative. The positives' keys are sorted;
// each negative falls into the bucket b = #positives with key < its key, and a suffix minimum
// over the buckets answers every positive at once.
template <typename T>
void semi_hard_anchor(const T* keys, const int64_t* labels, int64_t n, int64_t a, TripletList& out,
                      std::vector<std::pair<T, int64_t>>& positives, std::vector<std::pair<T, int64_t>>& bucket) {
  const int64_t la = labels[a];
  positives.clear();
  for (int64_t j = 0; j < n; ++j) {
    if (labels[j] == la && j != a) positives.emplace_back(keys[j], j);
  }
  if (positives.empty()) return;
  std::vector<std::pair<T, int64_t>> sorted = positives;
  std::sort(sorted.begin(), sorted.end());
  const int64_t np = static_cast<int64_t>(sorted.size());
  const T inf = std::numeric_limits<T>::infinity();
  bucket.assign(np + 1, {inf, -1});
  T far = -inf;
  int64_t far_idx = -1;
  for (int64_t j = 0; j < n; ++j) {
    if (labels[j] == la) continue;
    const T v = keys[j];
    if (v > far) {
      far = v;
      far_idx = j;
    }
    const int64_t b = std::lower_bound(sorted.begin(), sorted.end(), v,
                                       [](const std::pair<T, int64_t>& p, T value) { return p.first < value; }) -
                      sorted.begin();
    if (v < bucket[b].first) bucket[b] = {v, j};
  }
  if (far_idx < 0) return;  // no negative
  // suffix[s] = the best negative over buckets s..np; positive at sorted position s needs s + 1.
  for (int64_t b = np - 1; b >= 0; --b) {
    if (bucket[b + 1].second >= 0 &&
        (bucket[b].second < 0 || bucket[b + 1].first < bucket[b].first ||
         (bucket[b + 1].first == bucket[b].first && bucket[b + 1].second < bucket[b].second))) {
      bucket[b] = bucket[b + 1];
    }
  }
  // Positives with equal keys: each needs #positives-with-key <= its key, i.e. the first
  // sorted position past its run of equal keys.
  for (const auto& p : positives) {
    const int64_t s = std::upper_bound(sorted.begin(), sorted.end(), p.first,
                                       [](T value, const std::pair<T, int64_t>& q) { return value < q.first; }) -
                      sorted.begin();
    const int64_t nidx = bucket[s].second >= 0 ? bucket[s].second : far_idx;
    out.push_back({a, p.second, nidx});
  }
}

template <typename T>
void window_anchor(const T* keys, const int64_t* labels, int64_t n, int64_t a, T margin, bool hard, TripletList& out,
                   std::vector<int64_t>& negatives, std::vector<T>& violation_out, bool keep_violation) {
  const int64_t la = labels[a];
  negatives.clear();
  for (int64_t j = 0; j < n; ++j) {
    if (labels[j] != la) negatives.push_back(j);
  }
  if (negatives.empty()) return;
  for (int64_t p = 0; p < n; ++p) {
    if (labels[p] != la || p == a) continue;
    const T dp = keys[p];
    if (hard) {
      for (int64_t e : negatives) {
        const T v = (dp - keys[e]) + margin;
        if (v > T(0)) {
          out.push_back({a, p, e});
          if (keep_violation) violation_out.push_back(v);
        }
      }
    } else {
      // pytorch-metric-learning's test, in its form: 0 < d_an - d_ap <= margin.
      for (int64_t e : negatives) {
        const T gap = keys[e] - dp;
        if (gap > T(0) && gap <= margin) out.push_back({a, p, e});
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mine_triplets_cpu(const at::Tensor& embeddings,
                                                                 const at::Tensor& labels_in,
                                                                 c10::string_view strategy_name, double margin,
                                                                 c10::string_view metric_name, int64_t max_triplets,
                                                                 int64_t anchor_begin, int64_t anchor_end) {
  constexpr const char* op = "mine_triplets";
  const TripletStrategy strategy = parse_triplet_strategy(op, strategy_name);
  const DistanceMetric metric = parse_distance_metric(op, metric_name);
  const at::Tensor labels = check_mining_inputs(op, embeddings, labels_in);
  TORCH_CHECK_VALUE(std::isfinite(margin), op, ": margin must be finite, got ", margin);
  const int64_t n = embeddings.size(0);
  if (anchor_end < 0) anchor_end = n;
  TORCH_CHECK_VALUE(0 <= anchor_begin && anchor_begin <= anchor_end && anchor_end <= n, op,
                    ": anchor range must lie in [0, N = ", n, "], got [", anchor_begin, ", ", anchor_end, ")");
  check_finite_embeddings(op, embeddings);
  const int64_t anchors = anchor_end - anchor_begin;
  TripletList all;
  std::vector<double> all_violation;
  const bool keep_violation = strategy == TripletStrategy::Hard && max_triplets >= 0;
  if (anchors > 0) {
    const at::Tensor x = embeddings.narrow(0, anchor_begin, anchors);
    const at::ScalarType compute = distance_compute_dtype(embeddings.scalar_type());
    const int64_t* lab = labels.data_ptr<int64_t>();
    const int64_t groups = (anchors + kDistanceGroupRows - 1) / kDistanceGroupRows;
    std::vector<TripletList> per_task(groups);
    std::vector<std::vector<double>> per_task_violation(groups);
    AT_DISPATCH_FLOATING_TYPES(compute, op, [&] {
      using T = scalar_t;
      PackedRows xs, ys;
      // (cosine with a zero row: prepare_distance_rows makes two sides of cosine_augmented_rows,
      // which the anchors' slice of x shares with pairwise_distance(embeddings))
      if (anchors == n) {
        // All anchors: one prepared set serves both sides (as pairwise_distance(embeddings)).
        prepare_sides<T>(metric, embeddings, at::Tensor(), 1, xs, ys);
      } else {
        prepare_sides<T>(metric, x, embeddings, 1, xs, ys, /*centre_from_y=*/true);
      }
      const DistanceTileOps<T> ops;
      const DistanceSide<T> xside = side_of<T>(xs, 0), yside = side_of<T>(ys, 0);
      const int64_t ld = n;
      at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> tile(kDistancePanel * kDistanceTileCols);
        if (strategy == TripletStrategy::BatchHard) {
          BatchHardSink<T> sink;
          sink.labels = lab;
          sink.anchor_offset = anchor_begin;
          sink.metric = metric;
          for (int64_t g = begin; g < end; ++g) {
            const int64_t r0 = g * kDistanceGroupRows, rows = std::min(kDistanceGroupRows, anchors - r0);
            sink.reset(r0);
            distance_row_group(ops, metric, xside, yside, xs.dim, r0, rows, tile.data(), sink);
            for (int64_t r = 0; r < rows; ++r) {
              if (sink.pos[r] >= 0 && sink.neg[r] >= 0) per_task[g].push_back({anchor_begin + r0 + r, sink.pos[r], sink.neg[r]});
            }
          }
          return;
        }
        std::vector<T> block(kDistanceGroupRows * ld);
        std::vector<std::pair<T, int64_t>> positives, bucket;
        std::vector<int64_t> negatives;
        std::vector<T> violation;
        for (int64_t g = begin; g < end; ++g) {
          const int64_t r0 = g * kDistanceGroupRows, rows = std::min(kDistanceGroupRows, anchors - r0);
          RowBlockSink<T> sink{block.data(), ld, r0};
          distance_row_group(ops, metric, xside, yside, xs.dim, r0, rows, tile.data(), sink);
          for (int64_t r = 0; r < rows; ++r) {
            T* keys = block.data() + r * ld;
            if (metric == DistanceMetric::Dot) {
              for (int64_t j = 0; j < n; ++j) keys[j] = -keys[j];
            }
            const int64_t a = anchor_begin + r0 + r;
            if (strategy == TripletStrategy::SemiHard) {
              semi_hard_anchor(keys, lab, n, a, per_task[g], positives, bucket);
            } else {
              violation.clear();
              window_anchor(keys, lab, n, a, static_cast<T>(margin), strategy == TripletStrategy::Hard, per_task[g],
                            negatives, violation, keep_violation);
              for (T v : violation) per_task_violation[g].push_back(static_cast<double>(v));
            }
          }
        }
      });
    });
    size_t total = 0;
    for (const auto& t : per_task) total += t.size();
    all.reserve(total);
    if (keep_violation) all_violation.reserve(total);
    for (int64_t g = 0; g < groups; ++g) {
      all.insert(all.end(), per_task[g].begin(), per_task[g].end());
      if (keep_violation) all_violation.insert(all_violation.end(), per_task_violation[g].begin(), per_task_violation[g].end());
    }
  }
  if (keep_violation && static_cast<int64_t>(all.size()) > max_triplets) {
    // The hardest max_triplets (largest violation; ties: lexicographically smallest), then back
    // in lexicographic order (the list is already lexicographic, so order by position).
    std::vector<int64_t> order(all.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    auto harder = [&](int64_t u, int64_t v) {
      return all_violation[u] > all_violation[v] || (all_violation[u] == all_violation[v] && u < v);
    };
    if (max_triplets > 0) std::nth_element(order.begin(), order.begin() + (max_triplets - 1), order.end(), harder);
    order.resize(max_triplets);
    std::sort(order.begin(), order.end());
    TripletList kept;
    kept.reserve(order.size());
    for (int64_t i : order) kept.push_back(all[i]);
    all.swap(kept);
  }
  const int64_t count = static_cast<int64_t>(all.size());
  at::Tensor anchor = at::empty({count}, labels.options()), positive = at::empty({count}, labels.options()),
             negative = at::empty({count}, labels.options());
  int64_t* pa = anchor.data_ptr<int64_t>();
  int64_t* pp = positive.data_ptr<int64_t>();
  int64_t* pn = negative.data_ptr<int64_t>();
  for (int64_t t = 0; t < count; ++t) {
    pa[t] = all[t][0];
    pp[t] = all[t][1];
    pn[t] = all[t][2];
  }
  return {anchor, positive, negative};
}


// --- pairwise_distance backward (sqeuclidean, euclidean, dot) -----------------------------------
//
// grad_x = rowsum(W) x - W y and grad_y = colsum(W) y - W^T x with W = 2 G (sqeuclidean),
// G / O (euclidean, 0 where O = 0) or G (dot, without the rowsum terms). W is never stored:
// a task (4 panels of 16 rows of W for grad_x, 4 panels of 16 columns for grad_y) builds its
// panels of W one chunk of 384 positions at a time, straight from G (read in its own strides:
// the expanded gradient of out.sum() costs nothing) and O, in the k-major layout the tile
// kernel reads, and multiplies them by the matching chunk of y's (x's) column panels while
// both are in cache. G and O are read twice (once per product), nothing of size N x M is
// written.

// Column panels of a row-major (n, dim) array: panel q holds columns 16 q .. 16 q + 15 as
// packed[q][i][c] (zero past dim), i.e. the k-major layout of the columns.
template <typename T>
void pack_columns(const T* src, int64_t n, int64_t dim, T* packed) {
  const int64_t panels = distance_panels(dim);
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      T* dst = packed + q * n * kDistancePanel;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t c = 0; c < kDistancePanel; ++c) {
          const int64_t d = q * kDistancePanel + c;
          dst[i * kDistancePanel + c] = d < dim ? src[i * dim + d] : T(0);
        }
      }
    }
  });
}

// A scratch array from the torch allocator (64-byte aligned, unlike std::vector).
template <typename T>
struct Buffer {
  at::Tensor storage;
  explicit Buffer(int64_t n)
      : storage(at::empty({std::max<int64_t>(n, 1)},
                          at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value))) {}
  T* data() { return storage.data_ptr<T>(); }
  const T* data() const { return storage.data_ptr<T>(); }
};

template <typename T>
void distance_backward_kernel(DistanceMetric metric, const T* G, std::array<int64_t, 3> gs, const T* O, const T* X,
                              const T* Y, int64_t batch, int64_t n, int64_t m, int64_t dim, bool need_x, bool need_y,
                              T* gx, T* gy) {
  const DistanceTileOps<T> ops;
  const int64_t pn = distance_panels(n), pm = distance_panels(m), pd = distance_panels(dim);
  const int64_t ldt = pd * kDistancePanel;
  const bool plain = metric == DistanceMetric::Dot;
  constexpr int64_t kGroup = 4;
  constexpr int64_t kChunk = kDistanceChunk;
  Buffer<T> x_cols(need_y ? pd * n * kDistancePanel : 0), y_cols(need_x ? pd * m * kDistancePanel : 0);
  for (int64_t b = 0; b < batch; ++b) {
    const DistanceBackwardWeights<T> w{metric, G + b * gs[0], gs[1], gs[2], O + b * n * m, m};
    const T* Xb = X + b * n * dim;
    const T* Yb = Y + b * m * dim;
    if (need_x) pack_columns(Yb, m, dim, y_cols.data());
    if (need_y) pack_columns(Xb, n, dim, x_cols.data());
    const int64_t groups_x = need_x ? (pn + kGroup - 1) / kGroup : 0;
    const int64_t groups_y = need_y ? (pm + kGroup - 1) / kGroup : 0;
    at::parallel_for(0, groups_x + groups_y, 1, [&](int64_t begin, int64_t end) {
      Buffer<T> panels(kGroup * kChunk * kDistancePanel);
      std::vector<T> tile(kGroup * kDistancePanel * ldt);
      std::vector<T> sums(kGroup * kDistancePanel);
      for (int64_t t = begin; t < end; ++t) {
        const bool for_x = t < groups_x;
        const int64_t g = for_x ? t : t - groups_x;
        const int64_t rows_total = for_x ? n : m, k_len = for_x ? m : n;
        const int64_t p_begin = g * kGroup, p_end = std::min(for_x ? pn : pm, p_begin + kGroup);
        const T* cols = for_x ? y_cols.data() : x_cols.data();
        std::fill(sums.begin(), sums.end(), T(0));
        for (int64_t k0 = 0; k0 < k_len; k0 += kChunk) {
          const int64_t kc = std::min(kChunk, k_len - k0);
          // Rows of W (for x: each row's chunk is contiguous in G and O) or columns of W (for
          // y: row i of W holds position k = i of all 16 columns of a panel), panel by panel.
          for (int64_t p = p_begin; p < p_end; ++p) {
            T* a = panels.data() + (p - p_begin) * kChunk * kDistancePanel;
            T* sum = sums.data() + (p - p_begin) * kDistancePanel;
            const int64_t e0 = p * kDistancePanel, count = std::min(kDistancePanel, rows_total - e0);
            if (for_x) {
              ops.weight_rows(w, e0, count, k0, kc, a, sum);
            } else {
              ops.weight_cols(w, e0, count, k0, kc, a, sum);
            }
          }
          for (int64_t p = p_begin; p < p_end; ++p) {
            ops.dot_tile(panels.data() + (p - p_begin) * kChunk * kDistancePanel,
                         std::min(kDistancePanel, rows_total - p * kDistancePanel), cols + k0 * kDistancePanel, pd, kc,
                         k_len * kDistancePanel, k0 > 0, tile.data() + (p - p_begin) * kDistancePanel * ldt, ldt);
          }
        }
        for (int64_t p = p_begin; p < p_end; ++p) {
          const int64_t rows = std::min(kDistancePanel, rows_total - p * kDistancePanel);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = p * kDistancePanel + r;
            const T scale = plain ? T(0) : sums[(p - p_begin) * kDistancePanel + r];
            const T* own = (for_x ? Xb : Yb) + i * dim;
            T* dst = (for_x ? gx + b * n * dim : gy + b * m * dim) + i * dim;
            const T* prod = tile.data() + ((p - p_begin) * kDistancePanel + r) * ldt;
            if (k_len == 0) {
              for (int64_t d = 0; d < dim; ++d) dst[d] = T(0);
            } else {
              for (int64_t d = 0; d < dim; ++d) dst[d] = plain ? prod[d] : scale * own[d] - prod[d];
            }
          }
        }
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor> pairwise_distance_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                  const c10::optional<at::Tensor>& y_opt,
                                                                  const at::Tensor& out, c10::string_view metric_name,
                                                                  std::array<bool, 2> mask) {
  constexpr const char* op = "pairwise_distance_backward";
  const at::Tensor y = y_opt.has_value() ? *y_opt : at::Tensor();
  const DistanceMetric metric = parse_distance_metric(op, metric_name);
  const int64_t batch = check_pairwise_inputs(op, x, y);
  check_pairwise_backward_inputs(op, grad, out, x, y);
  if (metric == DistanceMetric::Cosine) return pairwise_distance_backward_composite(grad, x, y_opt, out, metric_name, mask);
  const bool self = !y.defined();
  const int64_t n = x.size(-2), dim = x.size(-1), m = self ? n : y.size(-2);
  const bool need_x = mask[0], need_y = self ? mask[0] : mask[1];
  const at::ScalarType compute = distance_compute_dtype(x.scalar_type());
  at::Tensor gx = need_x ? at::empty({batch, n, dim}, x.options().dtype(compute)) : at::Tensor();
  at::Tensor gy = need_y ? at::empty({batch, m, dim}, x.options().dtype(compute)) : at::Tensor();
  if (batch * n * m * dim > 0 && (need_x || need_y)) {
    const at::Tensor X = x.reshape({batch, n, dim}).to(compute).contiguous();
    const at::Tensor Y = self ? X : y.reshape({batch, m, dim}).to(compute).contiguous();
    at::Tensor G = grad.to(compute).reshape({batch, n, m});
    const at::Tensor O = out.reshape({batch, n, m}).to(compute).contiguous();
    AT_DISPATCH_FLOATING_TYPES(compute, op, [&] {
      distance_backward_kernel<scalar_t>(metric, G.data_ptr<scalar_t>(), {G.stride(0), G.stride(1), G.stride(2)},
                                         O.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), Y.data_ptr<scalar_t>(), batch,
                                         n, m, dim, need_x, need_y, need_x ? gx.data_ptr<scalar_t>() : nullptr,
                                         need_y ? gy.data_ptr<scalar_t>() : nullptr);
    });
  } else {
    if (need_x) gx.zero_();
    if (need_y) gy.zero_();
  }
  auto finish = [](const at::Tensor& g, const at::Tensor& like) { return g.to(like.scalar_type()).reshape(like.sizes()); };
  if (self) {
    if (!need_x) return {at::empty({0}, x.options()), at::empty({0}, x.options())};
    return {finish(gx + gy, x), at::empty({0}, x.options())};
  }
  return {need_x ? finish(gx, x) : at::empty({0}, x.options()), need_y ? finish(gy, y) : at::empty({0}, y.options())};
}


// --- the triplet loss over mined indices (batch_hard_triplet_loss) ----------------------------
//
// Rows are read in place by index, so the loss and its gradient need no gathered (T, D) copies:
// the backward writes one (N, D) gradient. The forward is parallel over triplets (per-triplet
// terms, then one ordered sum); the backward's scatter is serial over triplets (T D work), so
// the result does not depend on the thread count.

template <typename T>
T triplet_row_distance(DistanceMetric metric, const T* u, const T* v, int64_t dim) {
  if (metric == DistanceMetric::Cosine) {
    T uv = 0, uu = 0, vv = 0;
    for (int64_t k = 0; k < dim; ++k) {
      uv += u[k] * v[k];
      uu += u[k] * u[k];
      vv += v[k] * v[k];
    }
    const T eps = static_cast<T>(kCosineNormEps);
    return T(1) - uv / (std::max(std::sqrt(uu), eps) * std::max(std::sqrt(vv), eps));
  }
  const T d2 = exact_sq_distance<T, T>(u, v, dim);
  return metric == DistanceMetric::Euclidean ? std::sqrt(d2) : d2;
}

// out_u += c * dd/du, out_v += c * dd/dv for d = d(u, v) (value `d`).
template <typename T>
void add_triplet_row_grads(DistanceMetric metric, const T* u, const T* v, int64_t dim, T d, T c, T* out_u, T* out_v) {
  if (metric == DistanceMetric::SqEuclidean) {
    for (int64_t k = 0; k < dim; ++k) {
      const T g = T(2) * c * (u[k] - v[k]);
      out_u[k] += g;
      out_v[k] -= g;
    }
  } else if (metric == DistanceMetric::Euclidean) {
    if (!(d > T(0))) return;
    for (int64_t k = 0; k < dim; ++k) {
      const T g = c * (u[k] - v[k]) / d;
      out_u[k] += g;
      out_v[k] -= g;
    }
  } else {
    T uu = 0, vv = 0;
    for (int64_t k = 0; k < dim; ++k) {
      uu += u[k] * u[k];
      vv += v[k] * v[k];
    }
    const T eps = static_cast<T>(kCosineNormEps);
    const T lu = std::sqrt(uu), lv = std::sqrt(vv);
    const T nu = std::max(lu, eps), nv = std::max(lv, eps);
    const T cos = T(1) - d;
    for (int64_t k = 0; k < dim; ++k) {
      const T uh = u[k] / nu, vh = v[k] / nv;
      out_u[k] += c * (lu <= eps ? -vh / nu : -(vh - cos * uh) / nu);
      out_v[k] += c * (lv <= eps ? -uh / nv : -(uh - cos * vh) / nv);
    }
  }
}

template <typename T>
T triplet_term(DistanceMetric metric, const T* e, int64_t dim, int64_t a, int64_t p, int64_t n, T margin, bool soft,
               T* d_ap, T* d_an) {
  *d_ap = triplet_row_distance(metric, e + a * dim, e + p * dim, dim);
  *d_an = triplet_row_distance(metric, e + a * dim, e + n * dim, dim);
  const T z = *d_ap - *d_an;
  if (soft) return z > T(20) ? z : std::log1p(std::exp(z));
  return std::max(z + margin, T(0));
}

at::Tensor triplet_loss_indexed_cpu(const at::Tensor& embeddings, const at::Tensor& a_in, const at::Tensor& p_in,
                                    const at::Tensor& n_in, double margin, c10::string_view metric_name, bool soft) {
  constexpr const char* op = "batch_hard_triplet_loss";
  const DistanceMetric metric = parse_distance_metric(op, metric_name);
  check_indexed_triplets(op, embeddings, a_in, p_in, n_in);
  const at::ScalarType compute = distance_compute_dtype(embeddings.scalar_type());
  const at::Tensor e = embeddings.to(compute).contiguous();
  const at::Tensor a = a_in.contiguous(), p = p_in.contiguous(), n = n_in.contiguous();
  const int64_t count = a.numel(), dim = e.size(1);
  at::Tensor loss = at::zeros({}, e.options());
  if (count == 0) return loss.to(embeddings.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(compute, op, [&] {
    using T = scalar_t;
    std::vector<T> terms(count);
    const T* ep = e.data_ptr<T>();
    const int64_t *pa = a.data_ptr<int64_t>(), *pp = p.data_ptr<int64_t>(), *pn = n.data_ptr<int64_t>();
    at::parallel_for(0, count, 256, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        T dap, dan;
        terms[t] = triplet_term(metric, ep, dim, pa[t], pp[t], pn[t], static_cast<T>(margin), soft, &dap, &dan);
      }
    });
    T total = 0;
    for (T v : terms) total += v;
    loss.fill_(total / static_cast<T>(count));
  });
  return loss.to(embeddings.scalar_type());
}

at::Tensor triplet_loss_indexed_backward_cpu(const at::Tensor& grad, const at::Tensor& embeddings,
                                             const at::Tensor& a_in, const at::Tensor& p_in, const at::Tensor& n_in,
                                             double margin, c10::string_view metric_name, bool soft) {
  constexpr const char* op = "batch_hard_triplet_loss_backward";
  const DistanceMetric metric = parse_distance_metric(op, metric_name);
  check_indexed_triplets(op, embeddings, a_in, p_in, n_in);
  const at::ScalarType compute = distance_compute_dtype(embeddings.scalar_type());
  const at::Tensor e = embeddings.to(compute).contiguous();
  const at::Tensor a = a_in.contiguous(), p = p_in.contiguous(), n = n_in.contiguous();
  const int64_t count = a.numel(), dim = e.size(1);
  at::Tensor g = at::zeros_like(e);
  if (count > 0) {
    AT_DISPATCH_FLOATING_TYPES(compute, op, [&] {
      using T = scalar_t;
      const T w = grad.to(compute).item<T>() / static_cast<T>(count);
      const T* ep = e.data_ptr<T>();
      T* gp = g.data_ptr<T>();
      const int64_t *pa = a.data_ptr<int64_t>(), *pp = p.data_ptr<int64_t>(), *pn = n.data_ptr<int64_t>();
      for (int64_t t = 0; t < count; ++t) {
        T dap, dan;
        triplet_term(metric, ep, dim, pa[t], pp[t], pn[t], static_cast<T>(margin), soft, &dap, &dan);
        const T z = dap - dan;
        const T slope = soft ? T(1) / (T(1) + std::exp(-z)) : (z + static_cast<T>(margin) > T(0) ? T(1) : T(0));
        const T c = w * slope;
        if (c == T(0)) continue;
        add_triplet_row_grads(metric, ep + pa[t] * dim, ep + pp[t] * dim, dim, dap, c, gp + pa[t] * dim,
                              gp + pp[t] * dim);
        add_triplet_row_grads(metric, ep + pa[t] * dim, ep + pn[t] * dim, dim, dan, -c, gp + pa[t] * dim,
                              gp + pn[t] * dim);
      }
    });
  }
  return g.to(embeddings.scalar_type());
}

// --- k-means assignment ------------------------------------------------------------------------

// Rows of x in panels of 16 against the packed centroids: the dot-product tile of the family's
// kernels gives q_j = |c_j|^2 - 2 x.c_j for 256 centroids at a time (|x - c_j|^2 - |x|^2, the form
// scikit-learn's Lloyd step compares), and a row keeps its best and second-best q. Where the two
// are closer than the rounding of that form can tell apart (64 eps (|x|^2 + max |c|^2)), the row
// is decided again from the exact sums of squared differences. The returned distance is always
// the exact form for the chosen centroid.
template <typename T>
void kmeans_assign_impl(const at::Tensor& x, const at::Tensor& c, int64_t* labels, T* distances) {
  const DistanceTileOps<T> ops;
  const int64_t n = x.size(0), dim = x.size(1), k = c.size(0);
  const int64_t c_panels = distance_panels(k);
  const int64_t width = std::max<int64_t>(dim, 1);
  at::Tensor packed = at::empty({c_panels * kDistancePanel * width}, x.options());
  const T* cp = c.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  ops.pack(cp, k, dim, packed.data_ptr<T>());
  const T* pc = packed.data_ptr<T>();
  std::vector<T> cn(k);
  T cmax = 0;
  for (int64_t j = 0; j < k; ++j) {
    double s = 0;
    for (int64_t e = 0; e < dim; ++e) s += static_cast<double>(cp[j * dim + e]) * cp[j * dim + e];
    cn[j] = static_cast<T>(s);
    cmax = std::max(cmax, cn[j]);
  }
  const T eps = std::numeric_limits<T>::epsilon();
  const int64_t x_panels = distance_panels(n);
  at::parallel_for(0, x_panels, 4, [&](int64_t begin, int64_t end) {
    // Aligned scratch (the AVX2 kernels use aligned loads on packed panels).
    at::Tensor scratch = at::empty({kDistancePanel * width + kDistancePanel * kDistanceTileCols}, x.options());
    T* xpanel = scratch.data_ptr<T>();
    T* tile = xpanel + kDistancePanel * width;
    std::array<T, kDistancePanel> best, second;
    std::array<int64_t, kDistancePanel> arg;
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t r0 = panel * kDistancePanel, rows = std::min(kDistancePanel, n - r0);
      ops.pack(xp + r0 * dim, rows, dim, xpanel);
      best.fill(std::numeric_limits<T>::infinity());
      second.fill(std::numeric_limits<T>::infinity());
      arg.fill(0);
      for (int64_t jb = 0; jb < c_panels; jb += kDistanceBlockPanels) {
        const int64_t nb = std::min(kDistanceBlockPanels, c_panels - jb);
        const int64_t j0 = jb * kDistancePanel, cols = std::min(nb * kDistancePanel, k - j0);
        ops.dot_tile(xpanel, rows, pc + jb * kDistancePanel * width, nb, dim, kDistancePanel * width, false, tile,
                     kDistanceTileCols);
        for (int64_t r = 0; r < rows; ++r) {
          ops.argmin_row(tile + r * kDistanceTileCols, cn.data() + j0, cols, j0, &best[r], &second[r], &arg[r]);
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = r0 + r;
        const T* xi = xp + i * dim;
        int64_t label = arg[r];
        T xn = 0;
        for (int64_t e = 0; e < dim; ++e) xn += xi[e] * xi[e];
        // Not finite (NaN or inf in x or c) or too close to call: decide from the exact form.
        if (!(second[r] - best[r] > T(64) * eps * (xn + cmax))) {
          T exact_best = std::numeric_limits<T>::infinity();
          label = 0;
          for (int64_t j = 0; j < k; ++j) {
            const T d = ops.exact_sq(xi, cp + j * dim, dim);
            if (d < exact_best) {
              exact_best = d;
              label = j;
            }
          }
        }
        labels[i] = label;
        distances[i] = ops.exact_sq(xi, cp + label * dim, dim);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> kmeans_assign_cpu(const at::Tensor& x_in, const at::Tensor& c_in) {
  constexpr const char* op = "kmeans";
  check_kmeans_assign_inputs(op, x_in, c_in);
  const at::ScalarType compute = distance_compute_dtype(x_in.scalar_type());
  const at::Tensor x = x_in.to(compute).contiguous(), c = c_in.to(compute).contiguous();
  at::Tensor labels = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  at::Tensor distances = at::empty({x.size(0)}, x.options());
  if (x.size(0) > 0) {
    AT_DISPATCH_FLOATING_TYPES(compute, op, [&] {
      kmeans_assign_impl<scalar_t>(x, c, labels.data_ptr<int64_t>(), distances.data_ptr<scalar_t>());
    });
  }
  return {labels, distances.to(x_in.scalar_type())};
}

// --- hierarchical triplet loss (distance_hierarchical.h) ---------------------------------------

// Row a of d compacted: the distances to a's positives and the shifted distances e_an to its
// negatives, with their columns.
template <typename T>
struct HierarchicalRow {
  std::vector<T> pos, neg;
  std::vector<int64_t> pos_col, neg_col;

  void load(const T* d_row, const int64_t* classes, const T* alpha_row, int64_t n, int64_t a) {
    pos.clear();
    neg.clear();
    pos_col.clear();
    neg_col.clear();
    const int64_t ca = classes[a];
    for (int64_t j = 0; j < n; ++j) {
      if (classes[j] == ca) {
        if (j == a) continue;
        pos.push_back(d_row[j]);
        pos_col.push_back(j);
      } else {
        neg.push_back(d_row[j] - alpha_row[classes[j]]);
        neg_col.push_back(j);
      }
    }
  }
};

// The sum over the row's negatives of hierarchical_hinge(d_ap, e), eight partial sums so the
// loop vectorises.
template <typename T>
double hierarchical_positive_sum(T d_ap, const T* e, int64_t count) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t t = 0;
  for (; t + 8 <= count; t += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += hierarchical_hinge(d_ap, e[t + l]);
  }
  double total = 0;
  for (; t < count; ++t) total += hierarchical_hinge(d_ap, e[t]);
  for (int l = 0; l < 8; ++l) total += acc[l];
  return total;
}

at::Tensor hierarchical_triplet_loss_cpu(const at::Tensor& distances, const at::Tensor& classes,
                                         const at::Tensor& margins) {
  constexpr const char* op = "hierarchical_triplet_loss";
  const HierarchicalInputs in = check_hierarchical_inputs(op, distances, classes, margins);
  at::Tensor loss = at::zeros({}, in.distances.options());
  if (in.triplets == 0) return loss.to(distances.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(in.distances.scalar_type(), op, [&] {
    using T = scalar_t;
    const T* d = in.distances.data_ptr<T>();
    const T* alpha = in.margins.data_ptr<T>();
    const int64_t* cls = in.classes.data_ptr<int64_t>();
    const int64_t n = in.n, p = in.p;
    std::vector<double> per_anchor(n, 0.0);
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      HierarchicalRow<T> row;
      for (int64_t a = begin; a < end; ++a) {
        row.load(d + a * n, cls, alpha + cls[a] * p, n, a);
        double total = 0;
        for (const T d_ap : row.pos) {
          total += hierarchical_positive_sum(d_ap, row.neg.data(), static_cast<int64_t>(row.neg.size()));
        }
        per_anchor[a] = total;
      }
    });
    // Summed in row order: the result does not depend on the thread count.
    double total = 0;
    for (double v : per_anchor) total += v;
    loss.fill_(total / (2.0 * in.triplets));
  });
  return loss.to(distances.scalar_type());
}

at::Tensor hierarchical_triplet_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& distances,
                                                  const at::Tensor& classes, const at::Tensor& margins) {
  constexpr const char* op = "hierarchical_triplet_loss_backward";
  const HierarchicalInputs in = check_hierarchical_inputs(op, distances, classes, margins);
  TORCH_CHECK_VALUE(grad.numel() == 1, op, ": grad must be the loss's gradient (one element), got shape ",
                    shape_string(grad.sizes()));
  at::Tensor out = at::zeros({in.n, in.n}, in.distances.options());
  if (in.triplets > 0) {
    AT_DISPATCH_FLOATING_TYPES(in.distances.scalar_type(), op, [&] {
      using T = scalar_t;
      const T scale = static_cast<T>(grad.to(at::kDouble).item<double>() / (2.0 * in.triplets));
      const T* d = in.distances.data_ptr<T>();
      const T* alpha = in.margins.data_ptr<T>();
      const int64_t* cls = in.classes.data_ptr<int64_t>();
      T* g = out.data_ptr<T>();
      const int64_t n = in.n, p = in.p;
      at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
        HierarchicalRow<T> row;
        std::vector<T> neg_count;
        for (int64_t a = begin; a < end; ++a) {
          row.load(d + a * n, cls, alpha + cls[a] * p, n, a);
          const int64_t negs = static_cast<int64_t>(row.neg.size());
          neg_count.assign(negs, T(0));
          const T* e = row.neg.data();
          T* nc = neg_count.data();
          T* g_row = g + a * n;
          for (size_t i = 0; i < row.pos.size(); ++i) {
            const T d_ap = row.pos[i];
            T active = 0;
            for (int64_t t = 0; t < negs; ++t) {
              const T hit = hierarchical_active(d_ap, e[t]) ? T(1) : T(0);
              active += hit;
              nc[t] += hit;
            }
            g_row[row.pos_col[i]] = scale * active;
          }
          for (int64_t t = 0; t < negs; ++t) g_row[row.neg_col[t]] = -scale * nc[t];
        }
      });
    });
  }
  return out.to(distances.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(pyvision_ops, CPU, m) {
  m.impl("pairwise_distance", &pairwise_distance_cpu);
  m.impl("pairwise_topk", &pairwise_topk_cpu);
  m.impl("_mine_triplets", &mine_triplets_cpu);
  m.impl("_pairwise_distance_backward", &pairwise_distance_backward_cpu);
  m.impl("_triplet_loss_indexed", &triplet_loss_indexed_cpu);
  m.impl("_triplet_loss_indexed_backward", &triplet_loss_indexed_backward_cpu);
  m.impl("_kmeans_assign", &kmeans_assign_cpu);
  m.impl("_hierarchical_triplet_loss", &hierarchical_triplet_loss_cpu);
  m.impl("_hierarchical_triplet_loss_backward", &hierarchical_triplet_loss_backward_cpu);
}

}  // namespace pyvision_ops
