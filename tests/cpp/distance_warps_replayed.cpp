// The distance family's warp-per-row CUDA kernels (topk_collect, batch_hard_block,
// semi_hard_block, window_count, window_fill of csrc/distance/distance_kernel.cu) run on the
// host: their bodies are the templates of csrc/distance/distance_warp_kernels.h, called here with
// a Warp of 32 std::threads that meet at a barrier for every ballot and shuffle, so the lanes run
// in lockstep as on the GPU (a lane that skipped a ballot or shuffle would leave the others
// waiting: the barrier gives up after 20 s and the program fails). Grids of 1 to 3 warps run the
// grid-stride loops over several rows per warp.
//
// References: top-k collection from its definition (keys below the threshold in increasing
// index, then the first keys equal to it; missing slots index -1 when the threshold is wrong);
// batch-hard from the rules of distance_mining.h written out (largest key > -inf among other
// same-label embeddings, smallest key < +inf among other labels, the smallest index on ties);
// semi-hard and the window / hard strategies with one sequential scanner over the same per-
// candidate rules (distance_mining_agrees.cpp checks those rules against the CPU miners), so that
// what is checked here is the lanes' stride-32 scans, the shuffle merges, the warp sums and the
// ballot ranks. Keys are small integers (many ties) with +-inf and NaN; every output starts
// poisoned and has its exact size (AddressSanitizer).
// Usage: distance_warps_replayed. Prints "bad N" (N failures).
#include "distance/distance_warp_kernels.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "expect.h"

using namespace pyvision_ops;

namespace {

constexpr int kLanes = kMiningWarpSize;

// A barrier for the 32 lanes that fails the program instead of hanging when lanes diverge. The
// waiters yield (32 threads on a 2-core machine: sleeping on a condition variable costs far more).
class LaneBarrier {
 public:
  void arrive_and_wait() {
    const uint64_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == kLanes) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(generation + 1, std::memory_order_release);
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    for (uint64_t spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      std::this_thread::yield();
      if (spins % 4096 == 4095 && std::chrono::steady_clock::now() - start > std::chrono::seconds(20)) {
        std::printf("FAIL: the lanes of a warp diverged (a ballot or shuffle some lanes never reached)\nbad 1\n");
        std::fflush(stdout);
        std::_Exit(3);
      }
    }
  }

 private:
  std::atomic<int> arrived_{0};
  std::atomic<uint64_t> generation_{0};
};

struct WarpShared {
  LaneBarrier barrier;
  uint64_t slots[kLanes] = {};
};

struct HostWarp {
  WarpShared* shared;
  int lane_;
  int64_t first_, stride_;

  int lane() const { return lane_; }
  int64_t first() const { return first_; }
  int64_t stride() const { return stride_; }
  unsigned ballot(bool predicate) const {
    shared->slots[lane_] = predicate ? 1 : 0;
    shared->barrier.arrive_and_wait();
    unsigned mask = 0;
    for (int l = 0; l < kLanes; ++l) mask |= shared->slots[l] ? (1u << l) : 0u;
    shared->barrier.arrive_and_wait();  // every lane has read the slots before they are reused
    return mask;
  }
  template <typename V>
  V shfl_xor(V value, int offset) const {
    static_assert(sizeof(V) <= sizeof(uint64_t), "64-bit lanes");
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(V));
    shared->slots[lane_] = bits;
    shared->barrier.arrive_and_wait();
    const uint64_t other = shared->slots[lane_ ^ offset];
    shared->barrier.arrive_and_wait();
    V out;
    std::memcpy(&out, &other, sizeof(V));
    return out;
  }
};

// A grid of `warps` warps, each 32 lanes running body(warp); warps run one after another.
template <typename Body>
void launch_warps(int64_t warps, const Body& body) {
  for (int64_t w = 0; w < warps; ++w) {
    WarpShared shared;
    std::vector<std::thread> lanes;
    for (int l = 0; l < kLanes; ++l) {
      lanes.emplace_back([&, l] { body(HostWarp{&shared, l, w, warps}); });
    }
    for (auto& t : lanes) t.join();
  }
}

template <typename T>
T key_value(int code) {
  // codes 0..9: small integers with ties; 10: +inf, 11: -inf, 12: NaN
  if (code == 10) return std::numeric_limits<T>::infinity();
  if (code == 11) return -std::numeric_limits<T>::infinity();
  if (code == 12) return std::numeric_limits<T>::quiet_NaN();
  return static_cast<T>(code % 5) - T(1);
}

// ---- top-k collection -------------------------------------------------------------------------

template <typename T>
void check_topk(int64_t rows, int64_t m, int64_t k, int64_t warps, bool wrong_threshold, std::mt19937& rng) {
  const int64_t ld = m + 2;
  std::vector<T> keys(static_cast<size_t>(rows * ld), T(-99));
  std::uniform_int_distribution<int> code(0, 10);  // SmallestKeys: NaN already mapped to +inf
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < m; ++j) keys[r * ld + j] = key_value<T>(code(rng));
  }
  std::vector<T> thresholds(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<T> sorted(keys.begin() + r * ld, keys.begin() + r * ld + m);
    std::sort(sorted.begin(), sorted.end());
    thresholds[r] = sorted[k - 1];
    if (wrong_threshold && r % 2 == 1) thresholds[r] = sorted[0] - T(1);  // below every key
  }
  std::vector<T> out_keys(static_cast<size_t>(rows * k), T(-12345));
  std::vector<int64_t> out_indices(out_keys.size(), -7);
  launch_warps(warps, [&](const HostWarp& warp) {
    topk_collect_rows<T>(warp, keys.data(), rows, m, ld, thresholds.data(), k, out_keys.data(), out_indices.data());
  });
  int64_t wrong = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T t = thresholds[r];
    std::vector<std::pair<T, int64_t>> want;
    for (int64_t j = 0; j < m && static_cast<int64_t>(want.size()) < k; ++j) {
      if (keys[r * ld + j] < t) want.push_back({keys[r * ld + j], j});
    }
    for (int64_t j = 0; j < m && static_cast<int64_t>(want.size()) < k; ++j) {
      if (keys[r * ld + j] == t) want.push_back({keys[r * ld + j], j});
    }
    while (static_cast<int64_t>(want.size()) < k) want.push_back({t, -1});
    for (int64_t q = 0; q < k; ++q) {
      const bool ok = out_indices[r * k + q] == want[q].second && out_keys[r * k + q] == want[q].first;
      if (!ok && ++wrong <= 3) {
        EXPECT(false, "topk rows=%lld m=%lld k=%lld: row %lld slot %lld = (%g, %lld), expected (%g, %lld)",
               static_cast<long long>(rows), static_cast<long long>(m), static_cast<long long>(k),
               static_cast<long long>(r), static_cast<long long>(q), static_cast<double>(out_keys[r * k + q]),
               static_cast<long long>(out_indices[r * k + q]), static_cast<double>(want[q].first),
               static_cast<long long>(want[q].second));
      }
    }
  }
  std::printf("topk %s rows=%lld m=%lld k=%lld warps=%lld%s: %s\n", sizeof(T) == 4 ? "f32" : "f64",
              static_cast<long long>(rows), static_cast<long long>(m), static_cast<long long>(k),
              static_cast<long long>(warps), wrong_threshold ? " (wrong thresholds)" : "", wrong == 0 ? "ok" : "WRONG");
}

// ---- miners on a key block ----------------------------------------------------------------------

template <typename T>
struct Block {
  std::vector<T> keys;
  std::vector<int64_t> labels;
  MiningBlockArgs args;
};

template <typename T>
Block<T> make_block(int64_t rows, int64_t n, int64_t anchor_begin, int64_t classes, std::mt19937& rng) {
  Block<T> b;
  const int64_t ld = n + 1;
  b.keys.assign(static_cast<size_t>(rows * ld), T(-99));
  std::uniform_int_distribution<int> code(0, 12);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < n; ++j) b.keys[r * ld + j] = key_value<T>(code(rng));
  }
  std::uniform_int_distribution<int64_t> label(0, classes - 1);
  b.labels.resize(static_cast<size_t>(n));
  for (auto& l : b.labels) l = label(rng);
  b.args.keys = b.keys.data();
  b.args.rows = rows;
  b.args.n = n;
  b.args.ld = ld;
  b.args.labels = b.labels.data();
  b.args.anchor_begin = anchor_begin;
  return b;
}

template <typename T>
void check_miners(int64_t rows, int64_t n, int64_t anchor_begin, int64_t classes, int64_t warps, std::mt19937& rng) {
  const Block<T> b = make_block<T>(rows, n, anchor_begin, classes, rng);
  const MiningBlockArgs& a = b.args;
  const int64_t pairs = rows * n;
  char label[160];
  std::snprintf(label, sizeof(label), "miners %s rows=%lld n=%lld anchors from %lld classes=%lld warps=%lld",
                sizeof(T) == 4 ? "f32" : "f64", static_cast<long long>(rows), static_cast<long long>(n),
                static_cast<long long>(anchor_begin), static_cast<long long>(classes), static_cast<long long>(warps));
  int64_t wrong = 0;
  auto fail = [&](const char* what, int64_t at, int64_t got, int64_t want) {
    if (++wrong <= 3) {
      EXPECT(false, "%s: %s[%lld] = %lld, expected %lld", label, what, static_cast<long long>(at),
             static_cast<long long>(got), static_cast<long long>(want));
    }
  };
  // batch-hard
  std::vector<int64_t> positive(static_cast<size_t>(rows), -7), negative(static_cast<size_t>(rows), -7);
  launch_warps(warps, [&](const HostWarp& warp) { batch_hard_block_rows<T>(warp, a, positive.data(), negative.data()); });
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t anchor = anchor_begin + r;
    int64_t want_p = -1, want_n = -1;
    T key_p = 0, key_n = 0;
    for (int64_t j = 0; j < n; ++j) {
      const T key = b.keys[r * a.ld + j];
      if (key != key) continue;
      if (b.labels[j] == b.labels[anchor]) {
        if (j != anchor && key > -INFINITY && (want_p < 0 || key > key_p)) want_p = j, key_p = key;
      } else if (key < INFINITY && (want_n < 0 || key < key_n)) {
        want_n = j, key_n = key;
      }
    }
    if (positive[r] != want_p) fail("batch-hard positive", r, positive[r], want_p);
    if (negative[r] != want_n) fail("batch-hard negative", r, negative[r], want_n);
  }
  // semi-hard
  std::vector<int64_t> semi(static_cast<size_t>(pairs), -7);
  launch_warps(warps, [&](const HostWarp& warp) { semi_hard_block_rows<T>(warp, a, semi.data()); });
  for (int64_t w = 0; w < pairs; ++w) {
    const int64_t r = w / n, p = w % n, anchor = anchor_begin + r;
    int64_t want = -1;
    if (is_mining_positive(b.labels[anchor], b.labels[p], anchor, p)) {
      SemiHardState<T> st;  // one scanner, every candidate in increasing index
      for (int64_t j = 0; j < n; ++j) {
        if (is_mining_negative(b.labels[anchor], b.labels[j])) semi_hard_offer(st, b.keys[r * a.ld + p], b.keys[r * a.ld + j], j);
      }
      want = semi_hard_choice(st);
    }
    if (semi[w] != want) fail("semi-hard negative", w, semi[w], want);
  }
  // window / hard: count, exclusive prefix sums, fill
  for (bool hard : {false, true}) {
    const T margin = T(1.5);
    std::vector<int64_t> counts(static_cast<size_t>(pairs), -7);
    launch_warps(warps, [&](const HostWarp& warp) { window_count_rows<T>(warp, a, hard, margin, counts.data()); });
    std::vector<int64_t> offsets(static_cast<size_t>(pairs), 0);
    std::vector<int64_t> want_anchor, want_positive, want_negative;
    std::vector<T> want_violation;
    for (int64_t w = 0; w < pairs; ++w) {
      const int64_t r = w / n, p = w % n, anchor = anchor_begin + r;
      offsets[w] = static_cast<int64_t>(want_anchor.size());
      int64_t count = 0;
      if (is_mining_positive(b.labels[anchor], b.labels[p], anchor, p)) {
        for (int64_t j = 0; j < n; ++j) {
          T violation = T(0);
          if (is_mining_negative(b.labels[anchor], b.labels[j]) &&
              window_or_hard_triplet(hard, b.keys[r * a.ld + p], b.keys[r * a.ld + j], margin, &violation)) {
            want_anchor.push_back(anchor);
            want_positive.push_back(p);
            want_negative.push_back(j);
            want_violation.push_back(violation);
            ++count;
          }
        }
      }
      if (counts[w] != count) fail(hard ? "hard count" : "window count", w, counts[w], count);
    }
    const int64_t total = static_cast<int64_t>(want_anchor.size());
    std::vector<int64_t> out_anchor(static_cast<size_t>(total), -7), out_positive(out_anchor), out_negative(out_anchor);
    std::vector<T> out_violation(static_cast<size_t>(total), T(-12345));
    launch_warps(warps, [&](const HostWarp& warp) {
      window_fill_rows<T>(warp, a, hard, margin, offsets.data(), total, out_anchor.data(), out_positive.data(),
                          out_negative.data(), hard ? out_violation.data() : nullptr);
    });
    for (int64_t o = 0; o < total; ++o) {
      if (out_anchor[o] != want_anchor[o]) fail("fill anchor", o, out_anchor[o], want_anchor[o]);
      if (out_positive[o] != want_positive[o]) fail("fill positive", o, out_positive[o], want_positive[o]);
      if (out_negative[o] != want_negative[o]) fail("fill negative", o, out_negative[o], want_negative[o]);
      if (hard && !(out_violation[o] == want_violation[o]) && ++wrong <= 3) {
        EXPECT(false, "%s: fill violation[%lld] = %g, expected %g", label, static_cast<long long>(o),
               static_cast<double>(out_violation[o]), static_cast<double>(want_violation[o]));
      }
    }
  }
  std::printf("%-80s %s\n", label, wrong == 0 ? "ok" : "WRONG");
}

}  // namespace

int main() {
  std::mt19937 rng(99);
  for (int64_t warps : {1, 3}) {
    check_topk<float>(4, 70, 5, warps, false, rng);
    check_topk<float>(3, 31, 31, warps, false, rng);
    check_topk<double>(5, 100, 40, warps, true, rng);
    check_topk<double>(2, 1, 1, warps, false, rng);
    check_miners<float>(3, 70, 10, 3, warps, rng);
    check_miners<double>(4, 33, 0, 2, warps, rng);
    check_miners<float>(2, 40, 5, 1, warps, rng);   // one label: no negatives
    check_miners<float>(2, 29, 3, 40, warps, rng);  // (almost) all labels distinct: few positives
  }
  std::printf("bad %d\n", failures);
  return 0;
}
