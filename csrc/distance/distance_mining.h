// The per-pair and per-candidate rules of triplet mining, shared by the CUDA kernels
// (distance_kernel.cu) and their torch-free reference check (tests/cpp/distance_mining_agrees.cpp);
// the CPU miners of distance_cpu.cpp state the same rules inline. Torch-free.
//
// Keys: every rule compares mining keys (mining_key in distance.h: larger = farther; "dot" is
// negated), indices are embedding indices, and candidates are offered in increasing index order
// by each scanner (one thread, or one lane of a warp striding by 32), so that strict comparisons
// keep the smallest index among equal keys; scanners are then merged with the combine_* rules,
// which break ties by index explicitly (the result does not depend on the merge order).
//
// What the CPU code does, and these rules reproduce, at the edges:
//   * batch-hard positive: the largest key > -inf (a -inf or NaN key is never chosen);
//     negative: the smallest key < +inf. No such candidate: the anchor is skipped.
//   * semi-hard: the nearest negative with kp < key < +inf (the CPU's buckets start at +inf and
//     keep only keys strictly below), else the farthest negative (largest key > -inf); an anchor
//     whose negatives are all -inf / NaN is skipped.
//   * window: 0 < dn - dp <= margin (pytorch-metric-learning's form, gap rounded in the key
//     type, as the CPU); hard: v = (dp - dn) + margin > 0 (v rounded in the key type).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/host_device.h"

namespace pyvision_ops {

// A candidate of a reduction; index < 0: none yet.
template <typename T>
struct MiningCandidate {
  T key;
  int64_t index;
};

template <typename T>
PVO_HOST_DEVICE inline T mining_infinity() {
  return static_cast<T>(INFINITY);
}

// Start values: the farthest candidate starts at -inf, the nearest at +inf (strict offers then
// refuse -inf, resp. +inf, and NaN).
template <typename T>
PVO_HOST_DEVICE inline MiningCandidate<T> no_farthest() {
  return MiningCandidate<T>{-mining_infinity<T>(), -1};
}
template <typename T>
PVO_HOST_DEVICE inline MiningCandidate<T> no_nearest() {
  return MiningCandidate<T>{mining_infinity<T>(), -1};
}

// Offers (key, j), j larger than every index offered before to this scanner.
template <typename T>
PVO_HOST_DEVICE inline void offer_farthest(MiningCandidate<T>& best, T key, int64_t j) {
  if (key > best.key) {
    best.key = key;
    best.index = j;
  }
}
template <typename T>
PVO_HOST_DEVICE inline void offer_nearest(MiningCandidate<T>& best, T key, int64_t j) {
  if (key < best.key) {
    best.key = key;
    best.index = j;
  }
}

// Merges of two scanners' results: a candidate beats none; larger (smaller) key; then the
// smaller index. Commutative and associative (a total order on the valid candidates).
template <typename T>
PVO_HOST_DEVICE inline MiningCandidate<T> combine_farthest(const MiningCandidate<T>& a, const MiningCandidate<T>& b) {
  if (b.index < 0) return a;
  if (a.index < 0) return b;
  if (b.key > a.key || (b.key == a.key && b.index < a.index)) return b;
  return a;
}
template <typename T>
PVO_HOST_DEVICE inline MiningCandidate<T> combine_nearest(const MiningCandidate<T>& a, const MiningCandidate<T>& b) {
  if (b.index < 0) return a;
  if (a.index < 0) return b;
  if (b.key < a.key || (b.key == a.key && b.index < a.index)) return b;
  return a;
}

// Whether j is a positive / negative of anchor a (labels of a and j given).
PVO_HOST_DEVICE inline bool is_mining_positive(int64_t label_a, int64_t label_j, int64_t a, int64_t j) {
  return label_j == label_a && j != a;
}
PVO_HOST_DEVICE inline bool is_mining_negative(int64_t label_a, int64_t label_j) { return label_j != label_a; }

// Batch-hard: one scanner's state for one anchor.
template <typename T>
struct BatchHardState {
  MiningCandidate<T> positive = no_farthest<T>();
  MiningCandidate<T> negative = no_nearest<T>();
};
template <typename T>
PVO_HOST_DEVICE inline void batch_hard_offer(BatchHardState<T>& s, int64_t label_a, int64_t a, int64_t label_j,
                                             int64_t j, T key) {
  if (label_j == label_a) {
    if (j != a) offer_farthest(s.positive, key, j);
  } else {
    offer_nearest(s.negative, key, j);
  }
}

// Semi-hard: one scanner's state for one (anchor, positive) pair with positive key kp.
template <typename T>
struct SemiHardState {
  MiningCandidate<T> nearest_farther = no_nearest<T>();  // nearest negative with key > kp
  MiningCandidate<T> farthest = no_farthest<T>();        // farthest negative
};
template <typename T>
PVO_HOST_DEVICE inline void semi_hard_offer(SemiHardState<T>& s, T kp, T key, int64_t j) {
  offer_farthest(s.farthest, key, j);
  if (key > kp) offer_nearest(s.nearest_farther, key, j);
}
template <typename T>
PVO_HOST_DEVICE inline SemiHardState<T> combine_semi_hard(const SemiHardState<T>& a, const SemiHardState<T>& b) {
  SemiHardState<T> s;
  s.nearest_farther = combine_nearest(a.nearest_farther, b.nearest_farther);
  s.farthest = combine_farthest(a.farthest, b.farthest);
  return s;
}
// The chosen negative, or -1 when the anchor has no usable negative (then it yields nothing).
template <typename T>
PVO_HOST_DEVICE inline int64_t semi_hard_choice(const SemiHardState<T>& s) {
  if (s.farthest.index < 0) return -1;
  return s.nearest_farther.index >= 0 ? s.nearest_farther.index : s.farthest.index;
}

// The serial form for one (a, p) over keys[0, n) (the reference of the warp kernel).
template <typename T>
PVO_HOST_DEVICE inline int64_t semi_hard_negative(const T* keys, const int64_t* labels, int64_t n, int64_t a,
                                                  int64_t p) {
  const int64_t la = labels[a];
  const T kp = keys[p];
  SemiHardState<T> s;
  for (int64_t j = 0; j < n; ++j) {
    if (is_mining_negative(la, labels[j])) semi_hard_offer(s, kp, keys[j], j);
  }
  return semi_hard_choice(s);
}

// "semi_hard_window" and "hard": whether (a, p, n) with keys dp, dn is kept; `violation` gets
// dp - dn + margin for "hard" (unused for the window).
template <typename T>
PVO_HOST_DEVICE inline bool window_or_hard_triplet(bool hard, T dp, T dn, T margin, T* violation) {
  if (hard) {
    const T v = (dp - dn) + margin;
    *violation = v;
    return v > T(0);
  }
  const T gap = dn - dp;
  return gap > T(0) && gap <= margin;
}

// --- packed batch-hard candidates (float32 keys) ---------------------------------------------
// A float32 key and a 32-bit index in one 64-bit word whose unsigned order is the candidate
// order, so that one atomicMax / atomicMin merges candidates across thread blocks:
//   farthest: (order_bits(key) << 32) | (0xffffffff - index), maximised;
//   nearest:  (order_bits(key) << 32) | index, minimised.
// order_bits is monotone in the float order for non-NaN keys, with -0 and +0 mapped together
// (the float comparisons of the CPU treat them as equal). 0 (farthest) and ~0 (nearest) mean
// none: a real candidate never packs to them (their keys would be NaN bit patterns).
constexpr unsigned long long kNoFarthestPacked = 0ull;
constexpr unsigned long long kNoNearestPacked = ~0ull;

PVO_HOST_DEVICE inline uint32_t order_bits(float key) {
  if (key == 0.0f) key = 0.0f;  // -0 -> +0
  uint32_t u;
  memcpy(&u, &key, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
PVO_HOST_DEVICE inline unsigned long long pack_farthest(float key, uint32_t index) {
  return (static_cast<unsigned long long>(order_bits(key)) << 32) | static_cast<unsigned long long>(0xffffffffu - index);
}
PVO_HOST_DEVICE inline unsigned long long pack_nearest(float key, uint32_t index) {
  return (static_cast<unsigned long long>(order_bits(key)) << 32) | static_cast<unsigned long long>(index);
}
PVO_HOST_DEVICE inline int64_t unpack_farthest(unsigned long long packed) {
  return packed == kNoFarthestPacked ? -1 : static_cast<int64_t>(0xffffffffu - static_cast<uint32_t>(packed));
}
PVO_HOST_DEVICE inline int64_t unpack_nearest(unsigned long long packed) {
  return packed == kNoNearestPacked ? -1 : static_cast<int64_t>(static_cast<uint32_t>(packed));
}
// The packed offers of batch-hard (the candidate rules of batch_hard_offer): candidate j of an
// anchor, `same_label` whether their labels are equal, `self` whether j is the anchor.
PVO_HOST_DEVICE inline void batch_hard_offer_packed(unsigned long long& positive, unsigned long long& negative,
                                                    bool same_label, bool self, int64_t j, float key) {
  if (same_label) {
    if (!self && key > -INFINITY) {
      const unsigned long long c = pack_farthest(key, static_cast<uint32_t>(j));
      if (c > positive) positive = c;
    }
  } else if (key < INFINITY) {
    const unsigned long long c = pack_nearest(key, static_cast<uint32_t>(j));
    if (c < negative) negative = c;
  }
}

}  // namespace pyvision_ops
