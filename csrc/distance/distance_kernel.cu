// CUDA kernels of the distance family (launchers: distance_kernel.h). No torch headers.
//
// The distance tile (tile_dot + the epilogue of distance_cuda_tile.h), shared by every op:
//   one block of 16 x 16 threads computes one tile of (x row, y row) pairs: 128 x 128 for float32
//   (8 x 8 per thread), 64 x 64 for float64 (4 x 4 per thread). The centred rows are staged through
//   shared memory 8 positions k at a time (double-buffered, one barrier per step; the next step's
//   global loads are issued before the current step's products), k-major so that a thread reads
//   its rows and columns as 16-byte vectors. Each pair's dot product is one fma chain over
//   k = 0 .. D-1 in the compute dtype, so (i, j) and (j, i) get bit-identical values in every tile
//   of every kernel. Then, per pair, the math of distance.h: d2 = n_x + n_y - 2 dot; where
//   needs_exact_distance, the exact form from the original rows (global memory, rare);
//   finish_distance. Rows or columns past the end read as zero and are never written.
//   Grid: x = column tiles (of y), y = row tiles (grid-stride past 65535), z = batch items
//   (grid-stride past 65535).
//
// distance_tiles_kernel: writes each pair's value, or a key derived from it (DistanceOutput),
//   into a row-major buffer (pairwise_distance's output, pairwise_topk's and the miners' bounded
//   scratch blocks).
// batch_hard_tiles_kernel (float32): the batch-hard reduction fused into the tiles. Each thread
//   folds its 8 x 8 keys into packed (key, index) candidates (distance_mining.h) per row and, for
//   symmetric inputs, per column; rows are merged over the 16 lanes that share them with shuffles,
//   columns over the two lane halves by a shuffle and over the 8 warps through shared memory; one
//   64-bit atomicMax / atomicMin per anchor and tile merges the tiles. Symmetric inputs (every
//   embedding is an anchor): only tiles with row tile <= column tile are computed.
// topk_collect_kernel: one warp per query row; with the row's k-th smallest key t (from ATen's
//   topk in the glue), the candidates with key < t and then the first ones with key == t, in
//   index order (ballot ranks), so that ties keep the smaller index.
// topk_finish_kernel: one thread per output element: keys back to values (NaN recomputed).
// batch_hard_block_kernel / semi_hard_block_kernel / window_count_kernel / window_fill_kernel:
//   one warp per anchor (batch-hard) or per (anchor, positive) pair of a key block; lanes scan
//   the row's candidates in increasing index with stride 32 and merge with the tie rules of
//   distance_mining.h; the window/hard fill writes in increasing negative index (ballot ranks).
#include <cstdint>

#include "common/cuda_check.h"
#include "common/cuda_dispatch.cuh"
#include "distance/distance.h"
#include "distance/distance_hierarchical.h"
#include "distance/distance_kernel.h"
#include "distance/distance_mining.h"
#include "distance/distance_warp_kernels.h"

namespace pyvision_ops {
namespace {

constexpr int kTileThreads = kDistanceTileThreads;  // 16 x 16
constexpr int kTileSide = kDistanceTileSide;
constexpr int kTileK = kDistanceTileK;
constexpr int kWarpSize = 32;
constexpr int kTileWarps = kTileThreads / kWarpSize;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kMaxGridYZ = 65535;
constexpr int64_t kMaxGridX = 2147483647;

// The tile geometry, loader and epilogue: distance_cuda_tile.h.
template <typename T>
using Tile = DistanceTile<T>;
template <typename T>
using TileShared = DistanceTileShared<T>;

__device__ PVO_INLINE void load_vec(const float* p, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
}
__device__ PVO_INLINE void load_vec(const double* p, double* out) {
  const double2 v = *reinterpret_cast<const double2*>(p);
  out[0] = v.x;
  out[1] = v.y;
}

__device__ PVO_INLINE float fused_multiply_add(float a, float b, float c) { return fmaf(a, b, c); }
__device__ PVO_INLINE double fused_multiply_add(double a, double b, double c) { return fma(a, b, c); }

// acc[r][c] = sum_k x[x0 + local(ty, r)][k] * y[y0 + local(tx, c)][k] over the centred rows (row
// pitch dim), rows at or past x_end / y_end counting as zero rows. Every thread of the block must
// call it (barriers); it ends with a barrier, so the shared buffers are free on return.
template <typename T>
__device__ PVO_INLINE void tile_dot(const T* __restrict__ x, int64_t x0, int64_t x_end, const T* __restrict__ y,
                                    int64_t y0, int64_t y_end, int64_t dim, TileShared<T>& s,
                                    T (&acc)[Tile<T>::kPer][Tile<T>::kPer]) {
  using S = Tile<T>;
  const int tx = static_cast<int>(threadIdx.x) % kTileSide, ty = static_cast<int>(threadIdx.x) / kTileSide;
#pragma unroll
  for (int r = 0; r < S::kPer; ++r) {
#pragma unroll
    for (int c = 0; c < S::kPer; ++c) acc[r][c] = T(0);
  }
  const int64_t steps = (dim + kTileK - 1) / kTileK;
  if (steps == 0) return;
  const int thread = static_cast<int>(threadIdx.x);
  const DistanceTileLoader<T> load_x(x, x0, x_end, dim, thread), load_y(y, y0, y_end, dim, thread);
  T ra[S::kLoads], rb[S::kLoads];
  load_x.fetch(0, ra);
  load_y.fetch(0, rb);
  load_x.store(s.a[0], ra);
  load_y.store(s.b[0], rb);
  __syncthreads();
  for (int64_t step = 0; step < steps; ++step) {
    const int cur = static_cast<int>(step & 1);
    const bool more = step + 1 < steps;
    if (more) {
      load_x.fetch((step + 1) * kTileK, ra);
      load_y.fetch((step + 1) * kTileK, rb);
    }
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      T a[S::kPer], b[S::kPer];
      load_vec(&s.a[cur][kk][ty * S::kVec], a);
      load_vec(&s.a[cur][kk][S::kHalf + ty * S::kVec], a + S::kVec);
      load_vec(&s.b[cur][kk][tx * S::kVec], b);
      load_vec(&s.b[cur][kk][S::kHalf + tx * S::kVec], b + S::kVec);
#pragma unroll
      for (int r = 0; r < S::kPer; ++r) {
#pragma unroll
        for (int c = 0; c < S::kPer; ++c) acc[r][c] = fused_multiply_add(a[r], b[c], acc[r][c]);
      }
    }
    // The other buffer was last read in the previous step, before its closing barrier.
    if (more) {
      load_x.store(s.a[cur ^ 1], ra);
      load_y.store(s.b[cur ^ 1], rb);
    }
    __syncthreads();
  }
}

// The next set bit of a mask (cleared).
__device__ PVO_INLINE int pop_lowest_bit(unsigned long long& mask) {
  const int bit = __ffsll(static_cast<long long>(mask)) - 1;
  mask &= mask - 1;
  return bit;
}

// Pointers of batch item b.
template <typename T>
struct ItemRows {
  const T *x_orig, *x_centered, *x_norms, *y_orig, *y_centered, *y_norms;
  __device__ PVO_INLINE ItemRows(const DistanceSides& s, int64_t b) {
    x_orig = static_cast<const T*>(s.x_orig) + b * s.x_n * s.dim;
    x_centered = static_cast<const T*>(s.x_centered) + b * s.x_n * s.dim;
    x_norms = static_cast<const T*>(s.x_norms) + b * s.x_n;
    y_orig = static_cast<const T*>(s.y_orig) + b * s.y_n * s.dim;
    y_centered = static_cast<const T*>(s.y_centered) + b * s.y_n * s.dim;
    y_norms = static_cast<const T*>(s.y_norms) + b * s.y_n;
  }
};

// ------------------------------------------------------------------------------------------------
// Distance tiles into a buffer
// ------------------------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kTileThreads, 2) distance_tiles_kernel(const DistanceTileArgs a) {
  using S = Tile<T>;
  __shared__ __align__(16) TileShared<T> shared;
  const DistanceSides& s = a.sides;
  const int64_t dim = s.dim;
  const int64_t row_tiles = (a.rows + S::kSize - 1) / S::kSize;
  const int64_t y0 = static_cast<int64_t>(blockIdx.x) * S::kSize;
  const int64_t x_end = a.row_begin + a.rows;
  const int tx = static_cast<int>(threadIdx.x) % kTileSide, ty = static_cast<int>(threadIdx.x) / kTileSide;
  T* out = static_cast<T*>(a.out);
  for (int64_t bz = blockIdx.z; bz < a.batch_count; bz += gridDim.z) {
    const ItemRows<T> item(s, a.batch_begin + bz);
    for (int64_t bi = blockIdx.y; bi < row_tiles; bi += gridDim.y) {
      const int64_t x0 = a.row_begin + bi * S::kSize;
      T acc[S::kPer][S::kPer];
      tile_dot(item.x_centered, x0, x_end, item.y_centered, y0, s.y_n, dim, shared, acc);
      unsigned long long exact = 0;  // pairs left for the exact form
#pragma unroll
      for (int r = 0; r < S::kPer; ++r) {
        const int64_t i = x0 + S::local(ty, r);
        if (i >= x_end) continue;
        const T norm_x = item.x_norms[i];
        T* out_row = out + (bz * a.rows + (i - a.row_begin)) * a.ld;
#pragma unroll
        for (int c = 0; c < S::kPer; ++c) {
          const int64_t j = y0 + S::local(tx, c);
          if (j >= s.y_n) continue;
          T v;
          if (distance_fast_value(a.metric, acc[r][c], norm_x, item.y_norms[j], v)) {
            out_row[j] = distance_output_value(a.output, a.metric, v);
          } else {
            exact |= distance_pair_bit<T>(r, c);
          }
        }
      }
      while (exact != 0) {
        const int bit = pop_lowest_bit(exact);
        const int64_t i = x0 + S::local(ty, bit / S::kPer), j = y0 + S::local(tx, bit % S::kPer);
        const T v = distance_exact_value(a.metric, item.x_orig + i * dim, item.y_orig + j * dim, dim);
        out[(bz * a.rows + (i - a.row_begin)) * a.ld + j] = distance_output_value(a.output, a.metric, v);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Batch-hard fused into the tiles (float32)
// ------------------------------------------------------------------------------------------------

__device__ PVO_INLINE unsigned long long max_u64(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
__device__ PVO_INLINE unsigned long long min_u64(unsigned long long a, unsigned long long b) { return a < b ? a : b; }

__global__ void __launch_bounds__(kTileThreads, 2) batch_hard_tiles_kernel(const BatchHardTileArgs a) {
  using S = Tile<float>;
  static_assert(S::kPer * S::kPer <= 64, "one bit per pair of a thread");
  __shared__ __align__(16) TileShared<float> shared;
  __shared__ unsigned long long column_positive[kTileWarps][S::kSize];
  __shared__ unsigned long long column_negative[kTileWarps][S::kSize];
  __shared__ int64_t column_label[S::kSize];
  __shared__ int64_t row_label[S::kSize];
  const DistanceSides& s = a.sides;
  const int64_t dim = s.dim;
  const int64_t row_tiles = (s.x_n + S::kSize - 1) / S::kSize;
  const int64_t bj = blockIdx.x;
  const int64_t y0 = bj * S::kSize;
  const int thread = static_cast<int>(threadIdx.x);
  const int tx = thread % kTileSide, ty = thread / kTileSide, lane = thread % kWarpSize, warp = thread / kWarpSize;
  const ItemRows<float> item(s, 0);
  for (int c = thread; c < S::kSize; c += kTileThreads) column_label[c] = y0 + c < s.y_n ? a.labels[y0 + c] : 0;
  __syncthreads();
  for (int64_t bi = blockIdx.y; bi < row_tiles; bi += gridDim.y) {
    if (a.symmetric && bi > bj) break;  // bi only grows; uniform over the block
    const int64_t x0 = bi * S::kSize;
    float acc[S::kPer][S::kPer];
    tile_dot(item.x_centered, x0, s.x_n, item.y_centered, y0, s.y_n, dim, shared, acc);
    // The keys, in place (except the pairs left for the exact form), and which of the thread's
    // pairs share a label. Tile-local 32-bit offsets keep the registers for the accumulators.
    const int row_limit = static_cast<int>(s.x_n - x0 < S::kSize ? s.x_n - x0 : S::kSize);
    const int col_limit = static_cast<int>(s.y_n - y0 < S::kSize ? s.y_n - y0 : S::kSize);
    __syncthreads();  // the previous tile's readers of row_label are done (tile_dot has no barrier for D = 0)
    if (thread < S::kSize) row_label[thread] = thread < row_limit ? a.labels[a.anchor_offset + x0 + thread] : 0;
    __syncthreads();
    const float* x_norms = item.x_norms + x0;
    const float* y_norms = item.y_norms + y0;
    unsigned long long same = 0, exact = 0;
#pragma unroll
    for (int r = 0; r < S::kPer; ++r) {
      const int lr = S::local(ty, r);
      if (lr >= row_limit) continue;
      const float norm_x = x_norms[lr];
#pragma unroll
      for (int c = 0; c < S::kPer; ++c) {
        const int lc = S::local(tx, c);
        if (lc >= col_limit) continue;
        float v;
        if (distance_fast_value(a.metric, acc[r][c], norm_x, y_norms[lc], v)) {
          acc[r][c] = mining_key(a.metric, v);
        } else {
          exact |= distance_pair_bit<float>(r, c);
        }
        if (row_label[lr] == column_label[lc]) same |= distance_pair_bit<float>(r, c);
      }
    }
    // Rows: anchor anchor_offset + i against the tile's columns. The 16 lanes of a half-warp
    // share ty, hence the rows.
#pragma unroll
    for (int r = 0; r < S::kPer; ++r) {
      const int lr = S::local(ty, r);
      // Within the tile, the candidate is the anchor itself where their offsets from the
      // tile's corner coincide (x0 + lr == y0 + lc - anchor_offset).
      const int64_t self = a.anchor_offset + x0 + lr - y0;
      unsigned long long positive = kNoFarthestPacked, negative = kNoNearestPacked;
      if (lr < row_limit) {
#pragma unroll
        for (int c = 0; c < S::kPer; ++c) {
          const int lc = S::local(tx, c);
          const unsigned long long bit = distance_pair_bit<float>(r, c);
          if (lc < col_limit && (exact & bit) == 0) {
            batch_hard_offer_packed(positive, negative, (same & bit) != 0, lc == self, y0 + lc, acc[r][c]);
          }
        }
      }
#pragma unroll
      for (int offset = kTileSide / 2; offset >= 1; offset >>= 1) {
        positive = max_u64(positive, __shfl_xor_sync(kFullMask, positive, offset));
        negative = min_u64(negative, __shfl_xor_sync(kFullMask, negative, offset));
      }
      if (tx == 0 && lr < row_limit) {
        if (positive != kNoFarthestPacked) atomicMax(a.best_positive + x0 + lr, positive);
        if (negative != kNoNearestPacked) atomicMin(a.best_negative + x0 + lr, negative);
      }
    }
    // Columns (symmetric, off the diagonal, so never i == j): anchor j against the tile's rows.
    // A column is held by one lane of each half-warp of every warp.
    if (a.symmetric && bi != bj) {
#pragma unroll
      for (int c = 0; c < S::kPer; ++c) {
        const int lc = S::local(tx, c);
        unsigned long long positive = kNoFarthestPacked, negative = kNoNearestPacked;
        if (lc < col_limit) {
#pragma unroll
          for (int r = 0; r < S::kPer; ++r) {
            const int lr = S::local(ty, r);
            const unsigned long long bit = distance_pair_bit<float>(r, c);
            if (lr < row_limit && (exact & bit) == 0) {
              batch_hard_offer_packed(positive, negative, (same & bit) != 0, false, x0 + lr, acc[r][c]);
            }
          }
        }
        positive = max_u64(positive, __shfl_xor_sync(kFullMask, positive, kTileSide));
        negative = min_u64(negative, __shfl_xor_sync(kFullMask, negative, kTileSide));
        if (lane < kTileSide) {
          column_positive[warp][S::local(tx, c)] = positive;
          column_negative[warp][S::local(tx, c)] = negative;
        }
      }
      __syncthreads();
      if (thread < S::kSize) {
        unsigned long long positive = kNoFarthestPacked, negative = kNoNearestPacked;
#pragma unroll
        for (int w = 0; w < kTileWarps; ++w) {
          positive = max_u64(positive, column_positive[w][thread]);
          negative = min_u64(negative, column_negative[w][thread]);
        }
        const int64_t j = y0 + thread;
        if (j < s.y_n) {
          if (positive != kNoFarthestPacked) atomicMax(a.best_positive + j, positive);
          if (negative != kNoNearestPacked) atomicMin(a.best_negative + j, negative);
        }
      }
      __syncthreads();  // the column buffers are rewritten by the next tile
    }
    // The pairs left for the exact form (rare): each merged on its own, for its row's anchor
    // and (symmetric, off the diagonal) its column's anchor.
    while (exact != 0) {
      const int bit = pop_lowest_bit(exact);
      const int64_t i = x0 + S::local(ty, bit / S::kPer), j = y0 + S::local(tx, bit % S::kPer);
      const float key = mining_key(a.metric, distance_exact_value(a.metric, item.x_orig + i * dim, item.y_orig + j * dim, dim));
      const bool same_label = ((same >> bit) & 1ull) != 0;
      unsigned long long positive = kNoFarthestPacked, negative = kNoNearestPacked;
      batch_hard_offer_packed(positive, negative, same_label, j == a.anchor_offset + i, j, key);
      if (positive != kNoFarthestPacked) atomicMax(a.best_positive + i, positive);
      if (negative != kNoNearestPacked) atomicMin(a.best_negative + i, negative);
      if (a.symmetric && bi != bj) {
        // Column j's own exact value (x_j against y_i): with cosine's augmented rows the two
        // orders put a short row's extra term in different partial sums, so the value can differ
        // from x_i against y_j in the last bit, and pairwise_distance's d(j, i) is this one.
        const float column_key =
            mining_key(a.metric, distance_exact_value(a.metric, item.x_orig + j * dim, item.y_orig + i * dim, dim));
        positive = kNoFarthestPacked;
        negative = kNoNearestPacked;
        batch_hard_offer_packed(positive, negative, same_label, i == j, i, column_key);
        if (positive != kNoFarthestPacked) atomicMax(a.best_positive + j, positive);
        if (negative != kNoNearestPacked) atomicMin(a.best_negative + j, negative);
      }
    }
  }
}

__global__ void batch_hard_unpack_kernel(const unsigned long long* __restrict__ best_positive,
                                         const unsigned long long* __restrict__ best_negative, int64_t anchors,
                                         int64_t* __restrict__ positive, int64_t* __restrict__ negative) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; a < anchors; a += stride) {
    positive[a] = unpack_farthest(best_positive[a]);
    negative[a] = unpack_nearest(best_negative[a]);
  }
}

// ------------------------------------------------------------------------------------------------
// Warp-per-row kernels (top-k selection, mining on key blocks)
// ------------------------------------------------------------------------------------------------

// The Warp of distance_warp_kernels.h on the device: the CUDA intrinsics, full mask.
struct DeviceWarp {
  __device__ PVO_INLINE int lane() const { return static_cast<int>(threadIdx.x) % kWarpSize; }
  __device__ PVO_INLINE int64_t first() const {
    return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  }
  __device__ PVO_INLINE int64_t stride() const { return static_cast<int64_t>(gridDim.x) * blockDim.x / kWarpSize; }
  __device__ PVO_INLINE unsigned ballot(bool predicate) const { return __ballot_sync(kFullMask, predicate); }
  template <typename V>
  __device__ PVO_INLINE V shfl_xor(V value, int offset) const {
    return __shfl_xor_sync(kFullMask, value, offset);
  }
};
static_assert(kWarpSize == kMiningWarpSize, "one warp size");

template <typename T>
__global__ void topk_collect_kernel(const T* __restrict__ keys, int64_t rows, int64_t m, int64_t ld,
                                    const T* __restrict__ thresholds, int64_t k, T* __restrict__ out_keys,
                                    int64_t* __restrict__ out_indices) {
  topk_collect_rows<T>(DeviceWarp{}, keys, rows, m, ld, thresholds, k, out_keys, out_indices);
}

template <typename T>
__global__ void topk_finish_kernel(const TopkFinishArgs a) {
  const DistanceSides& s = a.sides;
  const T* keys = static_cast<const T*>(a.keys);
  T* values = static_cast<T*>(a.out_values);
  const int64_t total = a.batch_count * a.rows * a.k;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const T inf = mining_infinity<T>();
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t r = e / a.k, q = e % a.k;
    const int64_t b = a.batch_begin + r / a.rows, i = a.row_begin + r % a.rows;
    const T key = keys[e];
    const int64_t j = a.indices[e];
    T v = a.largest ? -key : key;
    if ((key == inf || key == -inf) && j >= 0 && j < s.y_n) {
      // An infinite key may stand for a NaN value: the pair's value again, from the rows.
      const T* x = static_cast<const T*>(s.x_orig) + (b * s.x_n + i) * s.dim;
      const T* y = static_cast<const T*>(s.y_orig) + (b * s.y_n + j) * s.dim;
      if (a.metric == DistanceMetric::Dot) {
        T sum = 0;
        for (int64_t d = 0; d < s.dim; ++d) sum += x[d] * y[d];
        v = sum;
      } else {
        v = finish_distance(a.metric, exact_sq_distance<T, T>(x, y, s.dim));
      }
    }
    const int64_t o = (b * s.x_n + i) * a.k + q;
    values[o] = v;
    a.out_indices[o] = j;
  }
}

template <typename T>
__global__ void batch_hard_block_kernel(const MiningBlockArgs a, int64_t* __restrict__ positive,
                                        int64_t* __restrict__ negative) {
  batch_hard_block_rows<T>(DeviceWarp{}, a, positive, negative);
}

template <typename T>
__global__ void semi_hard_block_kernel(const MiningBlockArgs a, int64_t* __restrict__ negative) {
  semi_hard_block_rows<T>(DeviceWarp{}, a, negative);
}

template <typename T>
__global__ void window_count_kernel(const MiningBlockArgs a, bool hard, T margin, int64_t* __restrict__ counts) {
  window_count_rows<T>(DeviceWarp{}, a, hard, margin, counts);
}

template <typename T>
__global__ void window_fill_kernel(const MiningBlockArgs a, bool hard, T margin, const int64_t* __restrict__ offsets,
                                   int64_t total, int64_t* __restrict__ out_anchor, int64_t* __restrict__ out_positive,
                                   int64_t* __restrict__ out_negative, T* __restrict__ out_violation) {
  window_fill_rows<T>(DeviceWarp{}, a, hard, margin, offsets, total, out_anchor, out_positive, out_negative, out_violation);
}

unsigned int warp_blocks(int64_t warps) { return blocks_for(warps, kThreadsPerBlock / kWarpSize); }

dim3 tile_grid(int64_t col_tiles, int64_t row_tiles, int64_t batch) {
  return dim3(static_cast<unsigned int>(col_tiles), static_cast<unsigned int>(row_tiles < kMaxGridYZ ? row_tiles : kMaxGridYZ),
              static_cast<unsigned int>(batch < kMaxGridYZ ? batch : kMaxGridYZ));
}

}  // namespace

cudaError_t launch_distance_tiles(ScalarKind scalar, const DistanceTileArgs& args, cudaStream_t stream) {
  if (args.batch_count <= 0 || args.rows <= 0 || args.sides.y_n <= 0) return cudaSuccess;
  if (args.out == nullptr || args.ld < args.sides.y_n || args.row_begin < 0 ||
      args.row_begin + args.rows > args.sides.x_n || args.batch_begin < 0) {
    return cudaErrorInvalidValue;
  }
  return dispatch_float_double(scalar, [&](auto tag) {
    using T = decltype(tag);
    constexpr int64_t size = Tile<T>::kSize;
    const int64_t col_tiles = (args.sides.y_n + size - 1) / size;
    const int64_t row_tiles = (args.rows + size - 1) / size;
    if (col_tiles > kMaxGridX) return cudaErrorInvalidConfiguration;
    distance_tiles_kernel<T><<<tile_grid(col_tiles, row_tiles, args.batch_count), kTileThreads, 0, stream>>>(args);
    PVO_RETURN_LAST_LAUNCH_ERROR();
  });
}

cudaError_t launch_topk_collect(ScalarKind scalar, const void* keys, int64_t rows, int64_t m, int64_t ld,
                                const void* thresholds, int64_t k, void* out_keys, int64_t* out_indices,
                                cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (k < 1 || k > m || ld < m) return cudaErrorInvalidValue;
  return dispatch_float_double(scalar, [&](auto tag) {
    using T = decltype(tag);
    topk_collect_kernel<T><<<warp_blocks(rows), kThreadsPerBlock, 0, stream>>>(
        static_cast<const T*>(keys), rows, m, ld, static_cast<const T*>(thresholds), k, static_cast<T*>(out_keys),
        out_indices);
    PVO_RETURN_LAST_LAUNCH_ERROR();
  });
}

cudaError_t launch_topk_finish(ScalarKind scalar, const TopkFinishArgs& args, cudaStream_t stream) {
  const int64_t total = args.batch_count * args.rows * args.k;
  if (total <= 0) return cudaSuccess;
  return dispatch_float_double(scalar, [&](auto tag) {
    using T = decltype(tag);
    topk_finish_kernel<T><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(args);
    PVO_RETURN_LAST_LAUNCH_ERROR();
  });
}

cudaError_t launch_batch_hard_tiles(const BatchHardTileArgs& args, cudaStream_t stream) {
  const DistanceSides& s = args.sides;
  if (s.x_n <= 0 || s.y_n <= 0) return cudaSuccess;
  if (s.y_n > 2147483647 || (args.symmetric && (s.x_n != s.y_n || args.anchor_offset != 0))) {
    return cudaErrorInvalidValue;
  }
  constexpr int64_t size = Tile<float>::kSize;
  const int64_t col_tiles = (s.y_n + size - 1) / size;
  const int64_t row_tiles = (s.x_n + size - 1) / size;
  batch_hard_tiles_kernel<<<tile_grid(col_tiles, row_tiles, 1), kTileThreads, 0, stream>>>(args);
  PVO_RETURN_LAST_LAUNCH_ERROR();
}

cudaError_t launch_batch_hard_unpack(const unsigned long long* best_positive, const unsigned long long* best_negative,
                                     int64_t anchors, int64_t* positive, int64_t* negative, cudaStream_t stream) {
  if (anchors <= 0) return cudaSuccess;
  batch_hard_unpack_kernel<<<blocks_for(anchors), kThreadsPerBlock, 0, stream>>>(best_positive, best_negative, anchors,
                                                                                 positive, negative);
  PVO_RETURN_LAST_LAUNCH_ERROR();
}

cudaError_t launch_batch_hard_block(ScalarKind scalar, const MiningBlockArgs& args, int64_t* positive,
                                    int64_t* negative, cudaStream_t stream) {
  if (args.rows <= 0 || args.n <= 0) return cudaSuccess;
  return dispatch_float_double(scalar, [&](auto tag) {
    using T = decltype(tag);
    batch_hard_block_kernel<T><<<warp_blocks(args.rows), kThreadsPerBlock, 0, stream>>>(args, positive, negative);
    PVO_RETURN_LAST_LAUNCH_ERROR();
  });
}

cudaError_t launch_semi_hard_block(ScalarKind scalar, const MiningBlockArgs& args, int64_t* negative,
                                   cudaStream_t stream) {
  if (args.rows <= 0 || args.n <= 0) return cudaSuccess;
  return dispatch_float_double(scalar, [&](auto tag) {
    using T = decltype(tag);
    semi_hard_block_kernel<T><<<warp_blocks(args.rows * args.n), kThreadsPerBlock, 0, stream>>>(args, negative);
    PVO_RETURN_LAST_LAUNCH_ERROR();
  });
}

cudaError_t launch_window_count(ScalarKind scalar, const MiningBlockArgs& args, bool hard, double margin,
                                int64_t* counts, cudaStream_t stream) {
  if (args.rows <= 0 || args.n <= 0) return cudaSuccess;
  return dispatch_float_double(scalar, [&](auto tag) {
    using T = decltype(tag);
    window_count_kernel<T><<<warp_blocks(args.rows * args.n), kThreadsPerBlock, 0, stream>>>(
        args, hard, static_cast<T>(margin), counts);
    PVO_RETURN_LAST_LAUNCH_ERROR();
  });
}

cudaError_t launch_window_fill(ScalarKind scalar, const MiningBlockArgs& args, bool hard, double margin,
                               const int64_t* offsets, int64_t total, int64_t* anchor, int64_t* positive,
                               int64_t* negative, void* violation, cudaStream_t stream) {
  if (args.rows <= 0 || args.n <= 0 || total <= 0) return cudaSuccess;
  return dispatch_float_double(scalar, [&](auto tag) {
    using T = decltype(tag);
    window_fill_kernel<T><<<warp_blocks(args.rows * args.n), kThreadsPerBlock, 0, stream>>>(
        args, hard, static_cast<T>(margin), offsets, total, anchor, positive, negative, static_cast<T*>(violation));
    PVO_RETURN_LAST_LAUNCH_ERROR();
  });
}

template <typename T>
__global__ void hierarchical_entries_kernel(const T* __restrict__ d, const int64_t* __restrict__ classes,
                                            const T* __restrict__ margins, int64_t n, int64_t p, T* __restrict__ term,
                                            T* __restrict__ count) {
  const int64_t total = n * n;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t a = e / n, j = e % n;
    T t, c;
    hierarchical_entry<T, T>(d + a * n, classes, margins + classes[a] * p, n, a, j, &t, &c);
    if (term != nullptr) term[e] = t;
    if (count != nullptr) count[e] = c;
  }
}

cudaError_t launch_hierarchical_entries(ScalarKind scalar, const void* distances, const int64_t* classes,
                                        const void* margins, int64_t n, int64_t p, void* term, void* count,
                                        cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return dispatch_float_double(scalar, [&](auto tag) {
    using T = decltype(tag);
    hierarchical_entries_kernel<T><<<blocks_for(n * n), kThreadsPerBlock, 0, stream>>>(
        static_cast<const T*>(distances), classes, static_cast<const T*>(margins), n, p, static_cast<T*>(term),
        static_cast<T*>(count));
    PVO_RETURN_LAST_LAUNCH_ERROR();
  });
}

}  // namespace pyvision_ops
