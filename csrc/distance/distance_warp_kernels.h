// The warp-per-row kernels of the distance family (distance_kernel.cu: top-k collection and the
// miners on key blocks) as host-and-device templates over a `Warp`: the kernels pass one whose
// members are the CUDA intrinsics, tests/cpp/distance_warps_replayed.cpp one that runs 32 host
// threads in lockstep. Torch-free and CUDA-free.
//
// A Warp gives lane() (0..31), first() and stride() (this warp's first row of a grid-stride loop
// over rows, and the number of warps in the grid), ballot(predicate) (bit l: lane l's predicate)
// and shfl_xor(value, offset) (lane l gets lane l ^ offset's value; long long, float, double).
// Every lane of a warp takes part in every ballot and shuffle (the loops below are uniform over
// the warp), as __ballot_sync / __shfl_xor_sync with the full mask require.
#pragma once

#include <cstdint>

#include "common/host_device.h"
#include "distance/distance_mining.h"

namespace pyvision_ops {

// A block of mining keys (launch_distance_tiles with MiningKeys): keys[r * ld + j] for the anchor
// anchor_begin + r (r < rows) and the embedding j (j < n); labels (n,) int64.
struct MiningBlockArgs {
  const void* keys = nullptr;
  int64_t rows = 0, n = 0, ld = 0;
  const int64_t* labels = nullptr;
  int64_t anchor_begin = 0;
};

constexpr int kMiningWarpSize = 32;

PVO_HOST_DEVICE inline int warp_popcount(unsigned v) {
#if defined(__CUDA_ARCH__)
  return __popc(v);
#else
  return __builtin_popcount(v);
#endif
}
PVO_HOST_DEVICE inline unsigned lanes_below(int lane) { return (1u << lane) - 1u; }

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename T, typename Warp>
PVO_HOST_DEVICE inline MiningCandidate<T> shuffle_candidate(const Warp& warp, const MiningCandidate<T>& c, int offset) {
  MiningCandidate<T> o;
  o.key = warp.shfl_xor(c.key, offset);
  o.index = warp.shfl_xor(static_cast<long long>(c.index), offset);
  return o;
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename Warp>
PVO_HOST_DEVICE inline int64_t warp_sum(const Warp& warp, int64_t v) {
  for (int offset = kMiningWarpSize / 2; offset >= 1; offset >>= 1) {
    v += warp.shfl_xor(static_cast<long long>(v), offset);
  }
  return v;
}

// Pair w of a key block: anchor row r (embedding `anchor`, label `label`) and candidate positive
// p; returns whether p is a positive of the anchor (same label, not the anchor).
PVO_HOST_DEVICE inline bool mining_pair(const MiningBlockArgs& a, int64_t w, int64_t& r, int64_t& p, int64_t& anchor,
                                        int64_t& label) {
  r = w / a.n;
  p = w % a.n;
  anchor = a.anchor_begin + r;
  label = a.labels[anchor];
  return is_mining_positive(label, a.labels[p], anchor, p);
}

// topk_collect_kernel: rows of keys and their thresholds, see launch_topk_collect.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename T, typename Warp>
PVO_HOST_DEVICE inline void topk_collect_rows(const Warp& warp, const T* keys, int64_t rows, int64_t m, int64_t ld,
                                             const T* thresholds, int64_t k, T* out_keys, int64_t* out_indices) {
  const int lane = warp.lane();
  for (int64_t w = warp.first(); w < rows; w += warp.stride()) {
    const T* row = keys + w * ld;
    const T t = thresholds[w];
    int64_t below = 0;
    for (int64_t j = lane; j < m; j += kMiningWarpSize) below += row[j] < t ? 1 : 0;
    below = warp_sum(warp, below);
    const int64_t take_below = below < k ? below : k;
    const int64_t take_equal = k - take_below;
    T* ok = out_keys + w * k;
    int64_t* oi = out_indices + w * k;
    int64_t seen_below = 0, seen_equal = 0;
    for (int64_t j0 = 0; j0 < m; j0 += kMiningWarpSize) {
      if (seen_below >= below && seen_equal >= take_equal) break;  // uniform over the warp
      const int64_t j = j0 + lane;
      const T v = j < m ? row[j] : T(0);
      const bool is_below = j < m && v < t;
      const bool is_equal = j < m && v == t;
      const unsigned ballot_below = warp.ballot(is_below);
      const unsigned ballot_equal = warp.ballot(is_equal);
      if (is_below) {
        const int64_t q = seen_below + warp_popcount(ballot_below & lanes_below(lane));
        if (q < take_below) {
          ok[q] = v;
          oi[q] = j;
        }
      }
      if (is_equal) {
        const int64_t q = seen_equal + warp_popcount(ballot_equal & lanes_below(lane));
        if (q < take_equal) {
          ok[take_below + q] = v;
          oi[take_below + q] = j;
        }
      }
      seen_below += warp_popcount(ballot_below);
      seen_equal += warp_popcount(ballot_equal);
    }
    // Only if t was not the k-th smallest key of the row (never with a correct threshold): the
    // missing slots get index -1 instead of being left unwritten.
    const int64_t found_equal = seen_equal < take_equal ? seen_equal : take_equal;
    for (int64_t q = take_below + found_equal + lane; q < k; q += kMiningWarpSize) {
      ok[q] = t;
      oi[q] = -1;
    }
  }
}

// batch_hard_block_kernel: one warp per anchor row of a key block (launch_batch_hard_block).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename T, typename Warp>
PVO_HOST_DEVICE inline void batch_hard_block_rows(const Warp& warp, const MiningBlockArgs a, int64_t* positive,
                                                 int64_t* negative) {
  const T* keys = static_cast<const T*>(a.keys);
  const int lane = warp.lane();
  for (int64_t w = warp.first(); w < a.rows; w += warp.stride()) {
    const int64_t anchor = a.anchor_begin + w;
    const int64_t label = a.labels[anchor];
    const T* row = keys + w * a.ld;
    BatchHardState<T> st;
    for (int64_t j = lane; j < a.n; j += kMiningWarpSize) batch_hard_offer(st, label, anchor, a.labels[j], j, row[j]);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int offset = kMiningWarpSize / 2; offset >= 1; offset >>= 1) {
      st.positive = combine_farthest(st.positive, shuffle_candidate(warp, st.positive, offset));
      st.negative = combine_nearest(st.negative, shuffle_candidate(warp, st.negative, offset));
    }
    if (lane == 0) {
      positive[w] = st.positive.index;
      negative[w] = st.negative.index;
    }
  }
}

// semi_hard_block_kernel: one warp per (anchor, positive) pair (launch_semi_hard_block).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename T, typename Warp>
PVO_HOST_DEVICE inline void semi_hard_block_rows(const Warp& warp, const MiningBlockArgs a, int64_t* negative) {
  const T* keys = static_cast<const T*>(a.keys);
  const int lane = warp.lane();
  const int64_t pairs = a.rows * a.n;
  for (int64_t w = warp.first(); w < pairs; w += warp.stride()) {
    int64_t r, p, anchor, label;
    if (!mining_pair(a, w, r, p, anchor, label)) {
      if (lane == 0) negative[w] = -1;
      continue;
    }
    const T* row = keys + r * a.ld;
    const T kp = row[p];
    SemiHardState<T> st;
    for (int64_t j = lane; j < a.n; j += kMiningWarpSize) {
      if (is_mining_negative(label, a.labels[j])) semi_hard_offer(st, kp, row[j], j);
    }
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int offset = kMiningWarpSize / 2; offset >= 1; offset >>= 1) {
      SemiHardState<T> other;
      other.nearest_farther = shuffle_candidate(warp, st.nearest_farther, offset);
      other.farthest = shuffle_candidate(warp, st.farthest, offset);
      st = combine_semi_hard(st, other);
    }
    if (lane == 0) negative[w] = semi_hard_choice(st);
  }
}

// window_count_kernel: one warp per (anchor, positive) pair (launch_window_count).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename T, typename Warp>
PVO_HOST_DEVICE inline void window_count_rows(const Warp& warp, const MiningBlockArgs a, bool hard, T margin,
                                             int64_t* counts) {
  const T* keys = static_cast<const T*>(a.keys);
  const int lane = warp.lane();
  const int64_t pairs = a.rows * a.n;
  for (int64_t w = warp.first(); w < pairs; w += warp.stride()) {
    int64_t r, p, anchor, label;
    if (!mining_pair(a, w, r, p, anchor, label)) {
      if (lane == 0) counts[w] = 0;
      continue;
    }
    const T* row = keys + r * a.ld;
    const T dp = row[p];
    int64_t count = 0;
    for (int64_t j = lane; j < a.n; j += kMiningWarpSize) {
      T violation;
      if (is_mining_negative(label, a.labels[j]) && window_or_hard_triplet(hard, dp, row[j], margin, &violation)) ++count;
    }
    count = warp_sum(warp, count);
    if (lane == 0) counts[w] = count;
  }
}

// window_fill_kernel: one warp per (anchor, positive) pair, triplets in increasing negative
// index (ballot ranks), see launch_window_fill.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename T, typename Warp>
PVO_HOST_DEVICE inline void window_fill_rows(const Warp& warp, const MiningBlockArgs a, bool hard, T margin,
                                            const int64_t* offsets, int64_t total, int64_t* out_anchor,
                                            int64_t* out_positive, int64_t* out_negative, T* out_violation) {
  const T* keys = static_cast<const T*>(a.keys);
  const int lane = warp.lane();
  const int64_t pairs = a.rows * a.n;
  for (int64_t w = warp.first(); w < pairs; w += warp.stride()) {
    int64_t r, p, anchor, label;
    if (!mining_pair(a, w, r, p, anchor, label)) continue;
    const T* row = keys + r * a.ld;
    const T dp = row[p];
    const int64_t base = offsets[w];
    int64_t written = 0;
    for (int64_t j0 = 0; j0 < a.n; j0 += kMiningWarpSize) {
      const int64_t j = j0 + lane;
      T violation = T(0);
      const bool keep =
          j < a.n && is_mining_negative(label, a.labels[j]) && window_or_hard_triplet(hard, dp, row[j], margin, &violation);
      const unsigned ballot = warp.ballot(keep);
      if (keep) {
        const int64_t o = base + written + warp_popcount(ballot & lanes_below(lane));
        if (o < total) {
          out_anchor[o] = anchor;
          out_positive[o] = p;
          out_negative[o] = j;
          if (out_violation != nullptr) out_violation[o] = violation;
        }
      }
      written += warp_popcount(ballot);
    }
  }
}

}  // namespace pyvision_ops
