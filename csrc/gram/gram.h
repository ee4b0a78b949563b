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

// Inverse of triangle_tile: the pair index of (row, column), row <= column.
PVO_HOST_DEVICE PVO_INLINE int64_t triangle_tile_index(int64_t row, int64_t column, int64_t tiles) {
  return row * tiles - row * (row - 1) / 2 + (column - row);
}

// Geometry of the tensor-core (float16/bfloat16) CUDA kernel, kept here as host-and-device
// functions so that host code can check the index maps. A block owns one kGramMmaTile^2 tile of
// the upper triangle of G and a range of L-chunks (split-K); the features of the tile's rows and
// of its columns ("operands") are staged in shared memory kGramMmaChunk positions of L at a time,
// zero past C and past L, each in the layout they have in memory:
//   planar         [tile row][k], k contiguous
//   channels-last  [k][tile row], tile row contiguous
constexpr int kGramMmaTile = 128;
constexpr int kGramMmaChunk = 32;
constexpr int kGramMmaThreads = 256;  // 8 warps, each 64 rows x 32 columns of the tile
// Row pitch (elements) of a staged operand. The +8 (16 bytes) puts the 8 rows an ldmatrix reads
// at once in 8 distinct 16-byte bank groups, and keeps every row 16-byte aligned for cp.async.
constexpr int kGramMmaPlanarPitch = kGramMmaChunk + 8;      // 40
constexpr int kGramMmaChannelsLastPitch = kGramMmaTile + 8;  // 136
// Elements of one staged operand, either layout (the larger of the two).
constexpr int kGramMmaStageElements = kGramMmaTile * kGramMmaPlanarPitch > kGramMmaChunk * kGramMmaChannelsLastPitch
                                          ? kGramMmaTile * kGramMmaPlanarPitch
                                          : kGramMmaChunk * kGramMmaChannelsLastPitch;
// Fewest chunks a split-K part gets: shorter parts spend more on the pipeline fill and on the
// float32 partial tile (64 KB) than they save.
constexpr int64_t kGramMmaMinChunksPerSplit = 8;
constexpr int64_t kGramMmaMaxSplits = 32;

// Index, within a staged operand, of tile row `row` (0..kGramMmaTile-1), chunk position `k`
// (0..kGramMmaChunk-1). Linear in (row, k).
PVO_HOST_DEVICE constexpr int gram_mma_stage_index(bool channels_last, int row, int k) {
  return channels_last ? k * kGramMmaChannelsLastPitch + row : row * kGramMmaPlanarPitch + k;
}

// Staging one operand: thread `thread` makes copies q = 0..gram_mma_copies(...)-1 of `width`
// elements (8: one 16-byte cp.async; 1: one 2-byte load) that run along the dimension contiguous
// in memory (k planar, the tile row channels-last); consecutive threads take consecutive copies
// along it, so a warp reads contiguous memory. Copy q of a thread starts at (row, k).
PVO_HOST_DEVICE constexpr int gram_mma_copy_width(bool vector) { return vector ? 8 : 1; }
PVO_HOST_DEVICE constexpr int gram_mma_copies_along(bool channels_last, bool vector) {
  return (channels_last ? kGramMmaTile : kGramMmaChunk) / gram_mma_copy_width(vector);
}
// Lines (planar: tile rows; channels-last: positions k) one pass of all threads covers.
PVO_HOST_DEVICE constexpr int gram_mma_lines_per_pass(bool channels_last, bool vector) {
  return kGramMmaThreads / gram_mma_copies_along(channels_last, vector);
}
PVO_HOST_DEVICE constexpr int gram_mma_copies(bool channels_last, bool vector) {
  return (channels_last ? kGramMmaChunk : kGramMmaTile) / gram_mma_lines_per_pass(channels_last, vector);
}
PVO_HOST_DEVICE PVO_INLINE void gram_mma_copy_start(bool channels_last, bool vector, int thread, int q, int& row,
                                                     int& k) {
  const int along = gram_mma_copies_along(channels_last, vector);
  const int line = thread / along + q * gram_mma_lines_per_pass(channels_last, vector);
  const int offset = (thread % along) * gram_mma_copy_width(vector);
  row = channels_last ? offset : line;
  k = channels_last ? line : offset;
}

// ldmatrix.x4 over a 16 (rows) x 16 (k) block of a staged operand: the (row, k) whose 8
// contiguous elements lane `lane` points at. The four 8x8 matrices are, in register order,
//   A operand (mma row-major A, rows = G rows):  (rows 0-7, k 0-7) (rows 8-15, k 0-7)
//                                                (rows 0-7, k 8-15) (rows 8-15, k 8-15)
//   B operand (mma column-major B, rows = G columns, two n8 blocks):
//                                                (rows 0-7, k 0-7) (rows 0-7, k 8-15)
//                                                (rows 8-15, k 0-7) (rows 8-15, k 8-15)
// Lane l addresses line l % 8 of matrix l / 8, a line being 8 elements contiguous in shared
// memory: along k (planar, plain ldmatrix) or along rows (channels-last, ldmatrix .trans).
PVO_HOST_DEVICE PVO_INLINE void gram_mma_ldmatrix_lane(bool channels_last, bool b_operand, int lane, int& row,
                                                        int& k) {
  const int matrix = lane / 8, line = lane % 8;
  const int row_block = b_operand ? matrix / 2 : matrix % 2;
  const int k_block = b_operand ? matrix % 2 : matrix / 2;
  row = row_block * 8 + (channels_last ? 0 : line);
  k = k_block * 8 + (channels_last ? line : 0);
}

// mma.m16n8k16 float32 accumulator d[e], e = 0..3, of lane `lane`: (row, column) in the 16x8 block.
PVO_HOST_DEVICE PVO_INLINE void gram_mma_accumulator_coords(int lane, int e, int& row, int& column) {
  row = lane / 4 + (e / 2) * 8;
  column = (lane % 4) * 2 + e % 2;
}

// Split-K: how many parts the L-chunks of every tile are cut into, so that about `slots`
// blocks (SMs x resident blocks) have work when the triangle tiles alone (`tile_blocks`, over the
// whole batch) are too few. Parts hold gram_mma_chunks_per_split consecutive chunks, none empty.
PVO_HOST_DEVICE PVO_INLINE int64_t gram_mma_chunks_per_split(int64_t chunks, int64_t splits) {
  return (chunks + splits - 1) / splits;
}

PVO_HOST_DEVICE PVO_INLINE int64_t gram_mma_split_count(int64_t tile_blocks, int64_t chunks, int64_t slots) {
  if (tile_blocks <= 0 || chunks <= 0 || tile_blocks >= slots) return 1;
  int64_t splits = slots / tile_blocks;
  const int64_t by_length = chunks / kGramMmaMinChunksPerSplit;
  if (splits > by_length) splits = by_length;
  if (splits > kGramMmaMaxSplits) splits = kGramMmaMaxSplits;
  if (splits <= 1) return 1;
  const int64_t per_split = gram_mma_chunks_per_split(chunks, splits);
  return (chunks + per_split - 1) / per_split;
}

}  // namespace pyvision_ops
