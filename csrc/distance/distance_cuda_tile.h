// The CUDA distance tile of distance_kernel.cu, as host-and-device code: its geometry (which
// thread holds which rows and columns), the loader that stages the rows through shared memory,
// and the per-pair epilogue. The kernels compile this; tests/cpp/distance_tiles_emulated.cpp runs
// it on the host. Torch-free and CUDA-free.
//
// One block of 16 x 16 threads computes one tile of (x row, y row) pairs: 128 x 128 for float32
// (8 x 8 per thread), 64 x 64 for float64 (4 x 4 per thread). A thread's rows (and columns) are
// two runs of kVec consecutive tile rows, one in each half of the tile, at ty * kVec (tx * kVec
// for columns), so that it reads them from shared memory as 16-byte vectors.
#pragma once

#include <cstdint>

#include "common/host_device.h"
#include "distance/distance.h"
#include "distance/distance_mining.h"

namespace pyvision_ops {

// What launch_distance_tiles writes for a pair whose metric value is v:
//   Values: v;  SmallestKeys: v, NaN -> +inf;  LargestKeys: -v, NaN -> +inf (the keys
//   pairwise_topk selects the k smallest of);  MiningKeys: mining_key(metric, v).
enum class DistanceOutput : int { Values = 0, SmallestKeys = 1, LargestKeys = 2, MiningKeys = 3 };

constexpr int kDistanceTileThreads = 256;  // 16 x 16
constexpr int kDistanceTileSide = 16;
constexpr int kDistanceTileK = 8;  // positions k per shared-memory step

template <typename T>
struct DistanceTileWidth;  // elements per 16-byte vector
template <>
struct DistanceTileWidth<float> {
  static constexpr int kValue = 4;
};
template <>
struct DistanceTileWidth<double> {
  static constexpr int kValue = 2;
};

template <typename T>
struct DistanceTile {
  static constexpr int kVec = DistanceTileWidth<T>::kValue;
  static constexpr int kPer = 2 * kVec;                      // rows (columns) per thread: 8 float, 4 double
  static constexpr int kSize = kDistanceTileSide * kPer;     // rows (columns) per tile: 128 float, 64 double
  static constexpr int kHalf = kSize / 2;
  static constexpr int kPitch = kSize + 4;                   // conflict-free k-major stores, 16-byte rows
  static constexpr int kLoads = kSize * kDistanceTileK / kDistanceTileThreads;  // elements per thread and operand

  // Tile row of the thread's r-th row (t = ty), or column (t = tx).
  PVO_HOST_DEVICE static PVO_INLINE int local(int t, int r) { return (r / kVec) * kHalf + t * kVec + r % kVec; }
};
static_assert(DistanceTile<float>::kLoads * kDistanceTileThreads == DistanceTile<float>::kSize * kDistanceTileK,
              "whole float tiles");
static_assert(DistanceTile<double>::kLoads * kDistanceTileThreads == DistanceTile<double>::kSize * kDistanceTileK,
              "whole double tiles");
static_assert((DistanceTile<float>::kPitch * sizeof(float)) % 16 == 0 &&
                  (DistanceTile<double>::kPitch * sizeof(double)) % 16 == 0,
              "16-byte aligned shared rows");

// The shared staging buffers: two steps (double-buffered) of kDistanceTileK positions, k-major.
template <typename T>
struct DistanceTileShared {
  T a[2][kDistanceTileK][DistanceTile<T>::kPitch];
  T b[2][kDistanceTileK][DistanceTile<T>::kPitch];
};

// Stages one operand: element e = thread + q * 256 of a step is tile row e / kDistanceTileK =
// lr + 32 q (lr = thread / kDistanceTileK), position k0 + e % kDistanceTileK = k0 + lk, the same
// position for every q. Rows at or past `end` and positions past dim read as zero.
template <typename T>
struct DistanceTileLoader {
  static constexpr int kRowStep = kDistanceTileThreads / kDistanceTileK;  // 32 rows between a thread's elements
  static constexpr int kLoads = DistanceTile<T>::kLoads;
  const T* base;     // row first + lr, position lk
  int64_t row_step;  // kRowStep * dim
  int64_t k_left;    // dim - lk
  unsigned valid;    // bit q: row lr + 32 q exists
  int lr, lk;

  PVO_HOST_DEVICE PVO_INLINE DistanceTileLoader(const T* rows, int64_t first, int64_t end, int64_t dim, int thread) {
    lr = thread / kDistanceTileK;
    lk = thread % kDistanceTileK;
    valid = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int q = 0; q < kLoads; ++q) {
      if (first + lr + q * kRowStep < end) valid |= 1u << q;
    }
    // Only dereferenced at valid rows and positions.
    base = rows + ((valid & 1u) ? (first + lr) * dim + lk : 0);
    row_step = kRowStep * dim;
    k_left = dim - lk;
  }
  PVO_HOST_DEVICE PVO_INLINE void fetch(int64_t k0, T (&reg)[kLoads]) const {
    const bool k_inside = k0 < k_left;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int q = 0; q < kLoads; ++q) {
      reg[q] = (k_inside && ((valid >> q) & 1u)) ? base[q * row_step + k0] : T(0);
    }
  }
  // Element q's slot in a k-major step buffer: dst[lk][lr + q * kRowStep].
  PVO_HOST_DEVICE PVO_INLINE int slot_row(int q) const { return lr + q * kRowStep; }
  PVO_HOST_DEVICE PVO_INLINE void store(T (&dst)[kDistanceTileK][DistanceTile<T>::kPitch], const T (&reg)[kLoads]) const {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int q = 0; q < kLoads; ++q) dst[lk][slot_row(q)] = reg[q];
  }
};

// One pair's metric value (distance.h; the CPU's finish_row + exact recomputation), in two
// parts so that the tile epilogues keep the exact form, which reads the original rows from
// global memory, out of their unrolled loops: distance_fast_value gives the value from the dot
// product of centred rows, or false where needs_exact_distance asks for distance_exact_value.
template <typename T>
PVO_HOST_DEVICE PVO_INLINE bool distance_fast_value(DistanceMetric metric, T dot, T norm_x, T norm_y, T& value) {
  if (metric == DistanceMetric::Dot) {
    value = dot;
    return true;
  }
  const T d2 = norm_x + norm_y - T(2) * dot;
  if (needs_exact_distance(d2, norm_x, norm_y)) return false;
  value = finish_distance(metric, d2);
  return true;
}
template <typename T>
PVO_HOST_DEVICE PVO_INLINE T distance_exact_value(DistanceMetric metric, const T* x_orig, const T* y_orig, int64_t dim) {
  return finish_distance(metric, exact_sq_distance<T, T>(x_orig, y_orig, dim));
}

// Bit r * kPer + c of a thread's 8 x 8 (4 x 4) pairs.
template <typename T>
PVO_HOST_DEVICE PVO_INLINE unsigned long long distance_pair_bit(int r, int c) {
  return 1ull << (r * DistanceTile<T>::kPer + c);
}

template <typename T>
PVO_HOST_DEVICE PVO_INLINE T distance_output_value(DistanceOutput output, DistanceMetric metric, T v) {
  switch (output) {
    case DistanceOutput::SmallestKeys: return v != v ? mining_infinity<T>() : v;
    case DistanceOutput::LargestKeys: return v != v ? mining_infinity<T>() : -v;
    case DistanceOutput::MiningKeys: return mining_key(metric, v);
    default: return v;
  }
}

}  // namespace pyvision_ops
