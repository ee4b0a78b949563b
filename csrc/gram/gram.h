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

// The CUDA-core tile kernel (gram_tile_kernel: float32, float64, and 16-bit types where the
// loaded image predates sm_80): one kGramTile^2 tile of the upper triangle per block of
// kGramTileSide^2 threads, each thread 4 x 4 outputs (rows ty * 4 + r, columns tx * 4 + c); the
// features of the tile's rows and columns staged through shared memory kGramTileChunk positions
// of L at a time, zero past C and L, accumulated in acc_t. What one thread does between the
// kernel's barriers is below; tests/cpp/gram_mma_emulated.cpp runs it for every thread on the host.
constexpr int kGramTile = 64;
constexpr int kGramTileChunk = 16;
constexpr int kGramTileSide = 16;  // 16 x 16 threads
constexpr int kGramTileThreads = kGramTileSide * kGramTileSide;
constexpr int kGramTilePer = kGramTile / kGramTileSide;  // 4 x 4 outputs per thread

// Thread `thread`'s part of staging chunk [l0, l0 + kGramTileChunk) for batch item n:
// elements e = thread, thread + 256, ... of the 64 x 16 chunk of each operand, consecutive
// threads along the dimension contiguous in memory (L planar, C channels-last).
// load(offset) converts features[offset] to acc_t.
template <typename acc_t, typename Load>
PVO_HOST_DEVICE PVO_INLINE void gram_tile_stage(const GramParams& p, int64_t n, int64_t l0, int64_t row0, int64_t col0,
                                                int thread, const Load& load,
                                                acc_t (&a_tile)[kGramTileChunk][kGramTile + 1],
                                                acc_t (&b_tile)[kGramTileChunk][kGramTile + 1]) {
  for (int e = thread; e < kGramTile * kGramTileChunk; e += kGramTileThreads) {
    const int i = p.channels_last ? e % kGramTile : e / kGramTileChunk;
    const int k = p.channels_last ? e / kGramTile : e % kGramTileChunk;
    const int64_t l = l0 + k;
    const int64_t ra = row0 + i, rb = col0 + i;
    a_tile[k][i] = (ra < p.channels && l < p.length) ? load(p.feature_offset(n, ra, l)) : acc_t(0);
    b_tile[k][i] = (rb < p.channels && l < p.length) ? load(p.feature_offset(n, rb, l)) : acc_t(0);
  }
}

// Thread (tx, ty)'s products over a staged chunk.
template <typename acc_t>
PVO_HOST_DEVICE PVO_INLINE void gram_tile_accumulate(const acc_t (&a_tile)[kGramTileChunk][kGramTile + 1],
                                                     const acc_t (&b_tile)[kGramTileChunk][kGramTile + 1], int tx,
                                                     int ty, acc_t (&acc)[kGramTilePer][kGramTilePer]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int k = 0; k < kGramTileChunk; ++k) {
    acc_t a[kGramTilePer], b[kGramTilePer];
    for (int q = 0; q < kGramTilePer; ++q) {
      a[q] = a_tile[k][ty * kGramTilePer + q];
      b[q] = b_tile[k][tx * kGramTilePer + q];
    }
    for (int r = 0; r < kGramTilePer; ++r) {
      for (int c = 0; c < kGramTilePer; ++c) acc[r][c] += a[r] * b[c];
    }
  }
}

// Thread (tx, ty)'s outputs: scale * acc into G's upper triangle (column >= row, inside C) and
// its mirror, `g` being batch item n's C x C matrix.
template <typename acc_t>
PVO_HOST_DEVICE PVO_INLINE void gram_tile_write(const GramParams& p, acc_t* g, int64_t row0, int64_t col0, int tx,
                                                int ty, const acc_t (&acc)[kGramTilePer][kGramTilePer]) {
  const int64_t C = p.channels;
  const acc_t scale = static_cast<acc_t>(p.scale);
  for (int r = 0; r < kGramTilePer; ++r) {
    for (int c = 0; c < kGramTilePer; ++c) {
      const int64_t gr = row0 + ty * kGramTilePer + r, gc = col0 + tx * kGramTilePer + c;
      if (gr < C && gc < C && gc >= gr) {
        const acc_t v = acc[r][c] * scale;
        g[gr * C + gc] = v;
        g[gc * C + gr] = v;
      }
    }
  }
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

// The block: kGramMmaThreads threads in 8 warps, 2 (down) x 4 (across) warp tiles of
// kGramMmaWarpRows x kGramMmaWarpCols, each warp holding kGramMmaM16 x kGramMmaN8 mma.m16n8k16
// accumulators (4 floats per lane each). Shared memory: kGramMmaStages stages of two staged
// operands (tile rows, then tile columns; a diagonal tile uses only the first).
constexpr int kGramMmaStages = 3;
constexpr int kGramMmaWarpRows = 64;
constexpr int kGramMmaWarpCols = 32;
constexpr int kGramMmaWarpsPerRow = kGramMmaTile / kGramMmaWarpCols;  // 4
constexpr int kGramMmaM16 = kGramMmaWarpRows / 16;                   // 4
constexpr int kGramMmaN8 = kGramMmaWarpCols / 8;                     // 4
constexpr int kGramMmaStageBytes = kGramMmaStageElements * 2;
constexpr int kGramMmaSmemBytes = kGramMmaStages * 2 * kGramMmaStageBytes;
constexpr int kGramMmaTileElements = kGramMmaTile * kGramMmaTile;

// First tile row and column of warp `warp`'s 64 x 32 part of the block tile.
PVO_HOST_DEVICE PVO_INLINE void gram_mma_warp_origin(int warp, int& row, int& column) {
  row = (warp / kGramMmaWarpsPerRow) * kGramMmaWarpRows;
  column = (warp % kGramMmaWarpsPerRow) * kGramMmaWarpCols;
}

// In a diagonal tile only the upper triangle is written: the 16 x 8 accumulator block (i, j)
// of a warp is skipped when it lies wholly below the diagonal (its first row past its last
// column), and a warp all of whose blocks are skipped does no products at all.
PVO_HOST_DEVICE PVO_INLINE bool gram_mma_block_skipped(bool diagonal, int warp_row, int warp_col, int i, int j) {
  return diagonal && warp_row + 16 * i > warp_col + 8 * j + 7;
}
PVO_HOST_DEVICE PVO_INLINE bool gram_mma_warp_idle(bool diagonal, int warp_row, int warp_col) {
  return diagonal && warp_row > warp_col + kGramMmaWarpCols - 1;
}

// Byte offset, within a staged operand, of the 8 elements lane `lane` points ldmatrix.x4 at for
// the 16 x 16 block whose first tile row is `first_row` and first chunk position is `first_k`.
// gram_mma_stage_index is linear, so the kernel adds block steps to the offset of block (0, 0).
PVO_HOST_DEVICE PVO_INLINE unsigned gram_mma_ldmatrix_byte(bool channels_last, bool b_operand, int lane, int first_row,
                                                           int first_k) {
  int row, k;
  gram_mma_ldmatrix_lane(channels_last, b_operand, lane, row, k);
  return 2u * static_cast<unsigned>(gram_mma_stage_index(channels_last, first_row + row, first_k + k));
}

// Element offset of split `split`'s float32 partial tile of tile `tile` for batch item `n` in the
// split-K workspace (splits x tiles partial tiles of kGramMmaTileElements per item).
PVO_HOST_DEVICE PVO_INLINE int64_t gram_mma_partial_offset(int64_t n, int64_t splits, int64_t split,
                                                           int64_t tile_count, int64_t tile) {
  return ((n * splits + split) * tile_count + tile) * static_cast<int64_t>(kGramMmaTileElements);
}

// One thread's part of staging one operand (the features of channels [first_channel,
// first_channel + kGramMmaTile) over a chunk of L), see gram_mma_copy_start. Offsets are elements
// from the features' base; nothing outside [0, C) x [0, L) is named as valid, and the caller
// zeroes the slots of invalid copies. The CUDA kernel copies with cp.async (16 bytes) or 2-byte
// loads; tests/cpp/gram_mma_emulated.cpp with host copies.
template <bool kChannelsLast, bool kVector>
struct GramMmaStager {
  static constexpr int kCopies = gram_mma_copies(kChannelsLast, kVector);
  static constexpr int kLinesPerPass = gram_mma_lines_per_pass(kChannelsLast, kVector);
  // Slot step between copies q and q + 1 (kLinesPerPass lines).
  static constexpr int kIndexStep =
      gram_mma_stage_index(kChannelsLast, kChannelsLast ? 0 : kLinesPerPass, kChannelsLast ? kLinesPerPass : 0);

  int64_t first_offset;  // copy 0 at the part's first chunk
  int64_t copy_step;     // between copies q and q + 1 (kLinesPerPass lines)
  int64_t chunk_step;    // between consecutive chunks
  int64_t rows_left;     // C - channel of copy 0
  int64_t length_left;   // L - position of copy 0 in the part's first chunk
  int shared_index;      // slot of copy 0 in a staged operand

  PVO_HOST_DEVICE PVO_INLINE GramMmaStager(const GramParams& p, int64_t n, int64_t first_channel,
                                           int64_t first_position, int thread) {
    int row, k;
    gram_mma_copy_start(kChannelsLast, kVector, thread, 0, row, k);
    const int64_t c = first_channel + row, l = first_position + k;
    first_offset = p.feature_offset(n, c, l);
    copy_step = static_cast<int64_t>(kLinesPerPass) * (kChannelsLast ? p.channels : p.length);
    chunk_step = kChannelsLast ? kGramMmaChunk * p.channels : kGramMmaChunk;
    rows_left = p.channels - c;
    length_left = p.length - l;
    shared_index = gram_mma_stage_index(kChannelsLast, row, k);
  }

  // Calls copy(slot, offset, valid) for each of this thread's copies of the part's chunk `local`:
  // `slot` in the staged operand, `offset` of the first element in the features.
  template <typename Copy>
  PVO_HOST_DEVICE PVO_INLINE void stage(int64_t local, Copy&& copy) const {
    // Copy q is q * kLinesPerPass lines (rows planar, positions channels-last) past copy 0.
    int64_t offset = first_offset + local * chunk_step;
    const int64_t chunk_length_left = length_left - local * kGramMmaChunk;
    // Lines left inside C (planar) or inside L (channels-last) from copy 0; the other bound is
    // the same for every copy. With 16-byte copies the contiguous dimension is a multiple of 8
    // and copies start at multiples of 8: a copy is wholly inside or wholly outside.
    const int64_t lines_left = kChannelsLast ? chunk_length_left : rows_left;
    const bool other_inside = kChannelsLast ? rows_left > 0 : chunk_length_left > 0;
    // The 2-byte path has 16 copies: unrolled 4 at a time, so that their 64-bit addresses do not
    // all stay live beside the accumulators.
#if defined(__CUDA_ARCH__)
#pragma unroll(kVector ? kCopies : 4)
#endif
    for (int q = 0; q < kCopies; ++q, offset += copy_step) {
      copy(shared_index + q * kIndexStep, offset, other_inside && lines_left > q * kLinesPerPass);
    }
  }
};

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
