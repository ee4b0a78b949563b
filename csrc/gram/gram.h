// Gram matrices: the geometry shared by the CPU and CUDA kernels. No torch headers.
//
// Features are read in place in one of two dense layouts:
//   planar        F[n][c][l]  (N, C, H*W contiguous)          G = F F^T
//   channels-last X[n][l][c]  (N, H*W, C: NHWC memory)          G = X^T X
// Only the upper triangle (c <= c') is computed; the lower one is its mirror, so G is exactly
// symmetric.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace pyvision_ops {

struct GramParams {
  int64_t batch = 0;
  int64_t channels = 0;  // C
  int64_t length = 0;    // L = H * W
  bool channels_last = false;
  double scale = 1.0;  // 1 / (C * L) when normalised, else 1

  PVO_HOST_DEVICE int64_t feature_offset(int64_t n, int64_t c, int64_t l) const {
    return channels_last ? (n * length + l) * channels + c : (n * channels + c) * length + l;
  }
};

// Tiles of the upper triangle: pair index -> (row tile, column tile) with row <= column, in
// row-major order over the triangle, for `tiles` tiles per side.
PVO_HOST_DEVICE PVO_INLINE void triangle_tile(int64_t pair, int64_t tiles, int64_t& row, int64_t& column) {
  int64_t r = 0;
  int64_t remaining = pair;
  while (remaining >= tiles - r) {
    remaining -= tiles - r;
    ++r;
  }
  row = r;
  column = r + remaining;
}

PVO_HOST_DEVICE PVO_INLINE int64_t triangle_tile_count(int64_t tiles) { return tiles * (tiles + 1) / 2; }

}  // namespace pyvision_ops
