// The distance family (pairwise distances, fused k-nearest search, triplet mining): metrics,
// strategies and the per-pair math shared by the CPU kernels and the CUDA kernels. Torch-free.
//
// How a distance is computed (every op of the family, both devices):
//   1. The rows of x and y are shifted by one common centre c (the mean of all rows of the
//      batch item, computed in float64): distances are translation invariant, and after the
//      shift the squared norms n_x = |x - c|^2, n_y = |y - c|^2 measure the spread of the data
//      instead of its distance from the origin (for a cluster of points near 5e5 the norms
//      are those of the cluster's spread, not 1e11).
//   2. d2 = n_x + n_y - 2 (x - c).(y - c), the matrix-product form (a GEMM tile on the CPU).
//   3. When d2 < kExactFraction * (n_x + n_y) the cancellation in step 2 may have cost more
//      than the contract's 1e-5 relative error, and the pair is recomputed from the original
//      rows as sum_k (x_k - y_k)^2 (exact_sq_distance): a difference of two float32 values is
//      rounded once, so this form is accurate to a few ulps for any pair, and is exactly 0 for
//      equal rows. NaN anywhere in a pair also lands here (the comparison is false) and
//      propagates.
//   The bound behind kExactFraction: a float32 dot product of length D accumulated in one FMA
//   chain errs by at most ~D u |x||y| (u = 2^-24) and in practice by ~sqrt(D) u |x||y|; with
//   |x||y| <= (n_x + n_y) / 2 the error of step 2 is ~sqrt(D) u (n_x + n_y), below 1e-5 d2 once
//   d2 >= kExactFraction (n_x + n_y) for D up to ~10^4. The pairs that fall below it are the
//   near neighbours relative to the data's spread, a small fraction in any realistic batch.
// "cosine" is the squared euclidean distance of the unit rows divided by 2 (1 - cos without the
// cancellation of 1 - x.y / |x||y|); "dot" is the plain product, with no centring.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace pyvision_ops {

enum class DistanceMetric : int { SqEuclidean = 0, Euclidean = 1, Cosine = 2, Dot = 3 };

enum class TripletStrategy : int { BatchHard = 0, SemiHard = 1, SemiHardWindow = 2, Hard = 3 };

// Pairs with d2 below this fraction of n_x + n_y are recomputed from the original rows.
constexpr float kExactFraction = 0.5f;

// The eps of torch.nn.functional.cosine_similarity: a row's norm is clamped to at least this
// before it divides the row, so a zero row is a zero unit row (distance 1 to everything).
constexpr double kCosineNormEps = 1e-8;

// Whether the matrix-product form of d2 must be replaced by the exact form (also true for NaN).
template <typename T>
PVO_HOST_DEVICE inline bool needs_exact_distance(T d2, T norm_x, T norm_y) {
  return !(d2 >= static_cast<T>(kExactFraction) * (norm_x + norm_y));
}

// sum_k (x_k - y_k)^2 in the accumulation type, four partial sums (as the vector kernels).
template <typename T, typename Acc>
PVO_HOST_DEVICE inline Acc exact_sq_distance(const T* x, const T* y, int64_t dim) {
  Acc s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t k = 0;
  for (; k + 4 <= dim; k += 4) {
    const Acc d0 = static_cast<Acc>(x[k]) - static_cast<Acc>(y[k]);
    const Acc d1 = static_cast<Acc>(x[k + 1]) - static_cast<Acc>(y[k + 1]);
    const Acc d2 = static_cast<Acc>(x[k + 2]) - static_cast<Acc>(y[k + 2]);
    const Acc d3 = static_cast<Acc>(x[k + 3]) - static_cast<Acc>(y[k + 3]);
    s0 += d0 * d0;
    s1 += d1 * d1;
    s2 += d2 * d2;
    s3 += d3 * d3;
  }
  for (; k < dim; ++k) {
    const Acc d = static_cast<Acc>(x[k]) - static_cast<Acc>(y[k]);
    s0 += d * d;
  }
  return (s0 + s1) + (s2 + s3);
}

// The metric's value from the squared distance of the (unit, for cosine) rows, or from the dot
// product for "dot".
template <typename T>
PVO_HOST_DEVICE inline T finish_distance(DistanceMetric metric, T d2_or_dot) {
  switch (metric) {
    case DistanceMetric::Euclidean: return sqrt(d2_or_dot);
    case DistanceMetric::Cosine: return d2_or_dot * static_cast<T>(0.5);
    default: return d2_or_dot;
  }
}

// Mining compares "distance-like" values where larger means farther: the similarity "dot" is
// negated (the hardest negative is the most similar one).
template <typename T>
PVO_HOST_DEVICE inline T mining_key(DistanceMetric metric, T value) {
  return metric == DistanceMetric::Dot ? -value : value;
}

}  // namespace pyvision_ops
