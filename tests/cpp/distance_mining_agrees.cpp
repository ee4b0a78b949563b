// The mining and selection rules of the CUDA kernels (csrc/distance/distance_mining.h, and the
// algorithms of distance_kernel.cu / distance_cuda.cpp restated here on the host) against copies
// of the CPU algorithms of csrc/distance/distance_cpu.cpp, on random small problems with many
// exact ties (integer keys), -0 / +0, infinities and (batch-hard) NaN keys:
//   * batch-hard: the CPU sink vs (a) 32 emulated warp lanes (stride-32 scans, xor-shuffle merge
//     with combine_farthest / combine_nearest) and (b) the packed 64-bit candidates merged in a
//     random order (as tiles, lanes and atomics merge them);
//   * semi-hard: the CPU's bucket algorithm vs semi_hard_negative and the emulated warp;
//   * window / hard: the CPU's loops vs window_or_hard_triplet in the count + ordered fill form,
//     and the CPU's max_triplets selection vs the block-wise running selection of the CUDA glue;
//   * pairwise_topk: the CPU's RowSelection vs threshold (k-th smallest key) + collect (keys < t,
//     then the first keys == t, in index order) + stable sort by key;
//   * order_bits: monotone in the float order, -0 == +0.
// Prints "bad N" (N failures).
#include "distance/distance_mining.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

using namespace pyvision_ops;

namespace {

int bad = 0;

void fail(const char* what, int trial) {
  if (bad < 20) std::printf("FAIL %s (trial %d)\n", what, trial);
  ++bad;
}

using Triplet = std::array<int64_t, 3>;
using TripletList = std::vector<Triplet>;

// ---- copies of the CPU algorithms (distance_cpu.cpp) -----------------------------------------

template <typename T>
void cpu_batch_hard(const T* keys, const int64_t* labels, int64_t n, int64_t a, int64_t& pos, int64_t& neg) {
  T bp = -std::numeric_limits<T>::infinity(), bn = std::numeric_limits<T>::infinity();
  int64_t ip = -1, in = -1;
  const int64_t la = labels[a];
  for (int64_t e = 0; e < n; ++e) {
    const T key = keys[e];
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
  pos = ip;
  neg = in;
}

template <typename T>
void cpu_semi_hard_anchor(const T* keys, const int64_t* labels, int64_t n, int64_t a, TripletList& out) {
  std::vector<std::pair<T, int64_t>> positives, bucket;
  const int64_t la = labels[a];
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
  if (far_idx < 0) return;
  for (int64_t b = np - 1; b >= 0; --b) {
    if (bucket[b + 1].second >= 0 &&
        (bucket[b].second < 0 || bucket[b + 1].first < bucket[b].first ||
         (bucket[b + 1].first == bucket[b].first && bucket[b + 1].second < bucket[b].second))) {
      bucket[b] = bucket[b + 1];
    }
  }
  for (const auto& p : positives) {
    const int64_t s = std::upper_bound(sorted.begin(), sorted.end(), p.first,
                                       [](T value, const std::pair<T, int64_t>& q) { return value < q.first; }) -
                      sorted.begin();
    const int64_t nidx = bucket[s].second >= 0 ? bucket[s].second : far_idx;
    out.push_back({a, p.second, nidx});
  }
}

template <typename T>
void cpu_window_anchor(const T* keys, const int64_t* labels, int64_t n, int64_t a, T margin, bool hard,
                       TripletList& out, std::vector<double>& violation) {
  const int64_t la = labels[a];
  std::vector<int64_t> negatives;
  for (int64_t j = 0; j < n; ++j) {
    if (labels[j] != la) negatives.push_back(j);
  }
  if (negatives.empty()) return;
  for (int64_t p = 0; p < n; ++p) {
    if (labels[p] != la || p == a) continue;
    const T dp = keys[p];
    if (hard) {
      for (int64_t e : negatives) {
        const T v = dp - keys[e] + margin;
        if (v > T(0)) {
          out.push_back({a, p, e});
          violation.push_back(static_cast<double>(v));
        }
      }
    } else {
      for (int64_t e : negatives) {
        const T gap = keys[e] - dp;
        if (gap > T(0) && gap <= margin) out.push_back({a, p, e});
      }
    }
  }
}

TripletList cpu_cap(const TripletList& all, const std::vector<double>& violation, int64_t cap) {
  if (static_cast<int64_t>(all.size()) <= cap) return all;
  std::vector<int64_t> order(all.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  auto harder = [&](int64_t u, int64_t v) { return violation[u] > violation[v] || (violation[u] == violation[v] && u < v); };
  if (cap > 0) std::nth_element(order.begin(), order.begin() + (cap - 1), order.end(), harder);
  order.resize(cap);
  std::sort(order.begin(), order.end());
  TripletList kept;
  for (int64_t i : order) kept.push_back(all[i]);
  return kept;
}

// The CPU's RowSelection: the k smallest (key, index), NaN as +inf, in that order.
template <typename T>
std::vector<std::pair<T, int64_t>> cpu_topk(const std::vector<T>& values, int64_t k, bool largest) {
  std::vector<std::pair<T, int64_t>> items;
  for (int64_t j = 0; j < static_cast<int64_t>(values.size()); ++j) {
    T key = largest ? -values[j] : values[j];
    if (key != key) key = std::numeric_limits<T>::infinity();
    items.emplace_back(key, j);
  }
  std::sort(items.begin(), items.end(), [](const std::pair<T, int64_t>& a, const std::pair<T, int64_t>& b) {
    return a.first < b.first || (a.first == b.first && a.second < b.second);
  });
  items.resize(k);
  return items;
}

// ---- the CUDA algorithms, emulated -----------------------------------------------------------

constexpr int kLanes = 32;

// __shfl_xor_sync merge tree over 32 lanes.
template <typename S, typename Combine>
S warp_reduce(std::vector<S> lanes, Combine combine) {
  for (int offset = kLanes / 2; offset >= 1; offset >>= 1) {
    std::vector<S> next(lanes.size());
    for (int l = 0; l < kLanes; ++l) next[l] = combine(lanes[l], lanes[l ^ offset]);
    lanes = next;
  }
  return lanes[0];
}

template <typename T>
void warp_batch_hard(const T* keys, const int64_t* labels, int64_t n, int64_t a, int64_t& pos, int64_t& neg) {
  std::vector<BatchHardState<T>> lanes(kLanes);
  for (int l = 0; l < kLanes; ++l) {
    for (int64_t j = l; j < n; j += kLanes) batch_hard_offer(lanes[l], labels[a], a, labels[j], j, keys[j]);
  }
  const BatchHardState<T> s = warp_reduce(lanes, [](const BatchHardState<T>& x, const BatchHardState<T>& y) {
    BatchHardState<T> r;
    r.positive = combine_farthest(x.positive, y.positive);
    r.negative = combine_nearest(x.negative, y.negative);
    return r;
  });
  pos = s.positive.index;
  neg = s.negative.index;
}

// Packed candidates offered in a random order, merged by max / min (any merge order of tiles,
// lanes and atomics gives the same).
void packed_batch_hard(const float* keys, const int64_t* labels, int64_t n, int64_t a, std::mt19937& rng, int64_t& pos,
                       int64_t& neg) {
  std::vector<int64_t> order(n);
  for (int64_t j = 0; j < n; ++j) order[j] = j;
  std::shuffle(order.begin(), order.end(), rng);
  unsigned long long best_pos = kNoFarthestPacked, best_neg = kNoNearestPacked;
  for (int64_t j : order) {
    unsigned long long p = kNoFarthestPacked, q = kNoNearestPacked;
    batch_hard_offer_packed(p, q, labels[j] == labels[a], j == a, j, keys[j]);
    best_pos = std::max(best_pos, p);
    best_neg = std::min(best_neg, q);
  }
  pos = unpack_farthest(best_pos);
  neg = unpack_nearest(best_neg);
}

template <typename T>
int64_t warp_semi_hard(const T* keys, const int64_t* labels, int64_t n, int64_t a, int64_t p) {
  const T kp = keys[p];
  std::vector<SemiHardState<T>> lanes(kLanes);
  for (int l = 0; l < kLanes; ++l) {
    for (int64_t j = l; j < n; j += kLanes) {
      if (is_mining_negative(labels[a], labels[j])) semi_hard_offer(lanes[l], kp, keys[j], j);
    }
  }
  return semi_hard_choice(warp_reduce(lanes, [](const SemiHardState<T>& x, const SemiHardState<T>& y) {
    return combine_semi_hard(x, y);
  }));
}

// Count, then fill in increasing negative index (as window_count_kernel / window_fill_kernel).
template <typename T>
void gpu_window_anchor(const T* keys, const int64_t* labels, int64_t n, int64_t a, T margin, bool hard, TripletList& out,
                       std::vector<double>& violation) {
  for (int64_t p = 0; p < n; ++p) {
    if (!is_mining_positive(labels[a], labels[p], a, p)) continue;
    int64_t count = 0;
    T v;
    for (int64_t j = 0; j < n; ++j) {
      if (is_mining_negative(labels[a], labels[j]) && window_or_hard_triplet(hard, keys[p], keys[j], margin, &v)) ++count;
    }
    int64_t written = 0;
    for (int64_t j = 0; j < n; ++j) {
      if (is_mining_negative(labels[a], labels[j]) && window_or_hard_triplet(hard, keys[p], keys[j], margin, &v)) {
        out.push_back({a, p, j});
        if (hard) violation.push_back(static_cast<double>(v));
        ++written;
      }
    }
    if (written != count) fail("window count != fill", -1);
  }
}

// The glue's HardSelection over blocks of triplets (in order).
TripletList gpu_cap(const TripletList& all, const std::vector<double>& violation, int64_t cap, int64_t block) {
  TripletList kept;
  std::vector<double> kept_v;
  for (size_t b0 = 0; b0 < all.size(); b0 += block) {
    const size_t b1 = std::min(all.size(), b0 + block);
    kept.insert(kept.end(), all.begin() + b0, all.begin() + b1);
    kept_v.insert(kept_v.end(), violation.begin() + b0, violation.begin() + b1);
    if (static_cast<int64_t>(kept.size()) <= cap) continue;
    std::vector<int64_t> order(kept.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    std::stable_sort(order.begin(), order.end(), [&](int64_t u, int64_t v) { return kept_v[u] > kept_v[v]; });
    order.resize(cap);
    std::sort(order.begin(), order.end());
    TripletList k2;
    std::vector<double> v2;
    for (int64_t i : order) {
      k2.push_back(kept[i]);
      v2.push_back(kept_v[i]);
    }
    kept.swap(k2);
    kept_v.swap(v2);
  }
  return kept;
}

template <typename T>
std::vector<std::pair<T, int64_t>> gpu_topk(const std::vector<T>& values, int64_t k, bool largest) {
  const int64_t m = static_cast<int64_t>(values.size());
  std::vector<T> keys(m);
  for (int64_t j = 0; j < m; ++j) {
    const T v = values[j];
    keys[j] = v != v ? std::numeric_limits<T>::infinity() : (largest ? -v : v);  // output_value
  }
  // The threshold: the largest of any k smallest keys (a radix select's -0 / +0 order may pick
  // either zero; both compare equal).
  std::vector<T> sorted = keys;
  std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end());
  const T t = sorted[k - 1];
  int64_t below = 0;
  for (T v : keys) below += v < t ? 1 : 0;
  const int64_t take_below = std::min(below, k), take_equal = k - take_below;
  std::vector<std::pair<T, int64_t>> chosen(k, {t, -1});
  int64_t seen_below = 0, seen_equal = 0;
  for (int64_t j = 0; j < m; ++j) {
    if (keys[j] < t) {
      if (seen_below < take_below) chosen[seen_below] = {keys[j], j};
      ++seen_below;
    } else if (keys[j] == t) {
      if (seen_equal < take_equal) chosen[take_below + seen_equal] = {keys[j], j};
      ++seen_equal;
    }
  }
  std::stable_sort(chosen.begin(), chosen.end(),
                   [](const std::pair<T, int64_t>& a, const std::pair<T, int64_t>& b) { return a.first < b.first; });
  return chosen;
}

// ---- random problems -------------------------------------------------------------------------

template <typename T>
std::vector<T> random_keys(std::mt19937& rng, int64_t n, bool with_nan) {
  std::uniform_int_distribution<int> value(-3, 6), special(0, 19);
  std::vector<T> keys(n);
  for (auto& k : keys) {
    k = static_cast<T>(value(rng)) * static_cast<T>(0.5);
    const int s = special(rng);
    if (s == 0) k = std::numeric_limits<T>::infinity();
    if (s == 1) k = -std::numeric_limits<T>::infinity();
    if (s == 2) k = -T(0);
    if (s == 3 && with_nan) k = std::numeric_limits<T>::quiet_NaN();
  }
  return keys;
}

std::vector<int64_t> random_labels(std::mt19937& rng, int64_t n) {
  std::uniform_int_distribution<int> classes(1, 5);
  std::uniform_int_distribution<int64_t> label(0, classes(rng) - 1);
  std::vector<int64_t> labels(n);
  for (auto& l : labels) l = label(rng) * 1000000007LL - 3;  // not small, some negative
  return labels;
}

template <typename T>
void check_mining(std::mt19937& rng, int trials, const char* type) {
  std::uniform_int_distribution<int64_t> size(1, 80);
  for (int trial = 0; trial < trials; ++trial) {
    const int64_t n = size(rng);
    const std::vector<int64_t> labels = random_labels(rng, n);
    const std::vector<T> keys_nan = random_keys<T>(rng, n, true);
    const std::vector<T> keys = random_keys<T>(rng, n, false);
    const T margin = static_cast<T>(std::uniform_int_distribution<int>(0, 6)(rng)) * static_cast<T>(0.5);
    TripletList cpu_sh, gpu_sh, cpu_w, gpu_w, cpu_h, gpu_h;
    std::vector<double> cpu_hv, gpu_hv, unused;
    for (int64_t a = 0; a < n; ++a) {
      int64_t p0, n0, p1, n1;
      cpu_batch_hard(keys_nan.data(), labels.data(), n, a, p0, n0);
      warp_batch_hard(keys_nan.data(), labels.data(), n, a, p1, n1);
      if (p0 != p1 || n0 != n1) fail("batch-hard warp", trial);
      if (std::is_same<T, float>::value) {
        packed_batch_hard(reinterpret_cast<const float*>(keys_nan.data()), labels.data(), n, a, rng, p1, n1);
        if (p0 != p1 || n0 != n1) fail("batch-hard packed", trial);
      }
      cpu_semi_hard_anchor(keys.data(), labels.data(), n, a, cpu_sh);
      for (int64_t p = 0; p < n; ++p) {
        if (!is_mining_positive(labels[a], labels[p], a, p)) continue;
        const int64_t serial = semi_hard_negative(keys.data(), labels.data(), n, a, p);
        const int64_t warp = warp_semi_hard(keys.data(), labels.data(), n, a, p);
        if (serial != warp) fail("semi-hard serial vs warp", trial);
        if (warp >= 0) gpu_sh.push_back({a, p, warp});
      }
      cpu_window_anchor(keys.data(), labels.data(), n, a, margin, false, cpu_w, unused);
      gpu_window_anchor(keys.data(), labels.data(), n, a, margin, false, gpu_w, unused);
      cpu_window_anchor(keys.data(), labels.data(), n, a, margin, true, cpu_h, cpu_hv);
      gpu_window_anchor(keys.data(), labels.data(), n, a, margin, true, gpu_h, gpu_hv);
    }
    if (cpu_sh != gpu_sh) fail("semi-hard", trial);
    if (cpu_w != gpu_w) fail("semi_hard_window", trial);
    if (cpu_h != gpu_h || cpu_hv != gpu_hv) fail("hard", trial);
    for (int64_t cap : {int64_t{0}, int64_t{1}, int64_t{3}, int64_t{17}, static_cast<int64_t>(cpu_h.size())}) {
      const int64_t block = std::uniform_int_distribution<int64_t>(1, 40)(rng);
      if (cpu_cap(cpu_h, cpu_hv, cap) != gpu_cap(gpu_h, gpu_hv, cap, block)) fail("hard max_triplets", trial);
    }
  }
  std::printf("%s mining: %d trials\n", type, trials);
}

template <typename T>
void check_topk(std::mt19937& rng, int trials, const char* type) {
  std::uniform_int_distribution<int64_t> size(1, 120);
  for (int trial = 0; trial < trials; ++trial) {
    const int64_t m = size(rng);
    const int64_t k = std::uniform_int_distribution<int64_t>(1, m)(rng);
    const bool largest = trial % 2 == 1;
    const std::vector<T> values = random_keys<T>(rng, m, true);
    const auto expected = cpu_topk(values, k, largest);
    const auto got = gpu_topk(values, k, largest);
    for (int64_t q = 0; q < k; ++q) {
      if (expected[q].second != got[q].second || !(expected[q].first == got[q].first)) {
        fail("topk", trial);
        break;
      }
    }
  }
  std::printf("%s topk: %d trials\n", type, trials);
}

void check_order_bits(std::mt19937& rng) {
  std::vector<float> v = {-INFINITY, -3.5f, -1e-40f, -0.0f, 0.0f, 1e-45f, 1e-40f, 1.0f, 3.4e38f, INFINITY};
  std::uniform_real_distribution<float> u(-10.0f, 10.0f);
  for (int i = 0; i < 200; ++i) v.push_back(u(rng));
  for (float a : v) {
    for (float b : v) {
      const uint32_t oa = order_bits(a), ob = order_bits(b);
      if ((a < b) != (oa < ob) || (a == b) != (oa == ob)) fail("order_bits", 0);
    }
  }
  // Real candidates never pack to the "none" words.
  for (float a : v) {
    if (pack_farthest(a, 0xffffffffu) == kNoFarthestPacked || pack_nearest(a, 0xffffffffu) == kNoNearestPacked) {
      fail("packed none", 0);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int trials = argc > 1 ? std::atoi(argv[1]) : 300;
  std::mt19937 rng(12345);
  check_order_bits(rng);
  check_mining<float>(rng, trials, "float32");
  check_mining<double>(rng, trials, "float64");
  check_topk<float>(rng, trials * 4, "float32");
  check_topk<double>(rng, trials * 4, "float64");
  std::printf("bad %d\n", bad);
  return bad == 0 ? 0 : 1;
}
