// The distance family's CUDA tile kernels (distance_tiles_kernel and batch_hard_tiles_kernel of
// csrc/distance/distance_kernel.cu) replayed on the host, block by block and thread by thread,
// with the kernels' own tile code from csrc/distance/distance_cuda_tile.h: the thread geometry
// (DistanceTile::local), the loader that stages the rows through shared memory
// (DistanceTileLoader), the per-pair epilogue (distance_fast_value / distance_exact_value /
// distance_output_value) and the packed batch-hard offers of distance_mining.h. The kernels'
// control flow is restated here in their order: tile_dot's double-buffered steps (one fma chain
// per pair over k = 0 .. D-1), the grid-stride loops over row tiles and batch items (run with a
// grid of 2 where there are more, as past 65535 on the GPU), the symmetric early exit, the row
// merges over the 16 lanes of a half-warp (xor shuffles 8, 4, 2, 1), the column merges (xor 16,
// then the 8 warps through shared memory), the 64-bit atomicMax / atomicMin and the exact pairs.
//
// Checks: every shared slot tile_dot reads was written in the current refill by exactly one
// thread (each refill starts from NaN poison), every output element inside the block is written
// exactly once and nothing outside it (ld > M leaves a gap that must stay untouched), and the
// results equal a float64 brute force bit for bit: the embeddings are small integers (shifted by
// an integer vector for the centred rows), so every dot product, norm and squared distance is
// exact in float32 and the metric values are the same whichever form (fast or exact) computes
// them. Clustered rows (large, nearly equal) send pairs down the exact path; NaN rows, zero
// dimensions, ties (few distinct values, few labels), no positives and no negatives are
// included. Batch-hard picks must match the rules of distance_mining.h (largest key > -inf
// among same-label others, smallest key < +inf among other labels, the smallest index on ties),
// written out here from those rules.
// Usage: distance_tiles_emulated [quick]. Prints "bad N" (N failures).
#include "distance/distance_cuda_tile.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "expect.h"

using namespace pyvision_ops;

namespace {

int64_t exact_pairs = 0;  // pairs of the current case that took the exact form

constexpr int kThreads = kDistanceTileThreads;
constexpr int kSide = kDistanceTileSide;
constexpr int kK = kDistanceTileK;
constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;

template <typename T>
bool same_bits(T a, T b) {
  if (a != a && b != b) return true;  // NaN == NaN
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// One item's rows, as the glue prepares them: original, centred (original - shift), and the
// squared norms of the centred rows; n rows of dim features.
template <typename T>
struct Rows {
  int64_t n = 0, dim = 0;
  std::vector<T> orig, centered, norms;
  std::vector<double> exact;  // the original rows as doubles (the reference)
};

template <typename T>
using Acc = std::vector<std::array<std::array<T, DistanceTile<T>::kPer>, DistanceTile<T>::kPer>>;

// tile_dot for one block: acc[thread][r][c] = sum_k x[x0 + local(ty, r)][k] * y[y0 + local(tx, c)][k].
template <typename T>
Acc<T> tile_dot(const T* x, int64_t x0, int64_t x_end, const T* y, int64_t y0, int64_t y_end, int64_t dim) {
  using S = DistanceTile<T>;
  Acc<T> acc(kThreads);
  for (auto& a : acc) {
    for (auto& row : a) row.fill(T(0));
  }
  const int64_t steps = (dim + kK - 1) / kK;
  if (steps == 0) return acc;
  DistanceTileShared<T> s;
  int writes_a[2][kK][S::kPitch], writes_b[2][kK][S::kPitch];
  const T poison = std::numeric_limits<T>::quiet_NaN();
  std::vector<DistanceTileLoader<T>> load_x, load_y;
  for (int t = 0; t < kThreads; ++t) {
    load_x.emplace_back(x, x0, x_end, dim, t);
    load_y.emplace_back(y, y0, y_end, dim, t);
  }
  std::vector<std::array<T, S::kLoads>> ra(kThreads), rb(kThreads);
  auto fetch_all = [&](int64_t k0) {
    for (int t = 0; t < kThreads; ++t) {
      T a[S::kLoads], b[S::kLoads];
      load_x[t].fetch(k0, a);
      load_y[t].fetch(k0, b);
      for (int q = 0; q < S::kLoads; ++q) {
        ra[t][q] = a[q];
        rb[t][q] = b[q];
      }
    }
  };
  auto store_all = [&](int buffer) {
    for (int k = 0; k < kK; ++k) {
      for (int i = 0; i < S::kPitch; ++i) {
        s.a[buffer][k][i] = s.b[buffer][k][i] = poison;
        writes_a[buffer][k][i] = writes_b[buffer][k][i] = 0;
      }
    }
    for (int t = 0; t < kThreads; ++t) {
      T a[S::kLoads], b[S::kLoads];
      for (int q = 0; q < S::kLoads; ++q) {
        a[q] = ra[t][q];
        b[q] = rb[t][q];
        const int lk = load_x[t].lk, row = load_x[t].slot_row(q);
        EXPECT(lk >= 0 && lk < kK && row >= 0 && row < S::kSize, "store slot (%d, %d) outside", lk, row);
        if (lk < 0 || lk >= kK || row < 0 || row >= S::kSize) continue;
        EXPECT(++writes_a[buffer][lk][row] == 1, "slot (%d, %d) of a step written twice", lk, row);
        ++writes_b[buffer][lk][row];
      }
      load_x[t].store(s.a[buffer], a);
      load_y[t].store(s.b[buffer], b);
    }
  };
  fetch_all(0);
  store_all(0);
  // __syncthreads()
  for (int64_t step = 0; step < steps; ++step) {
    const int cur = static_cast<int>(step & 1);
    const bool more = step + 1 < steps;
    if (more) fetch_all((step + 1) * kK);
    for (int t = 0; t < kThreads; ++t) {
      const int tx = t % kSide, ty = t / kSide;
      for (int kk = 0; kk < kK; ++kk) {
        T a[S::kPer], b[S::kPer];
        for (int v = 0; v < S::kVec; ++v) {
          // The four 16-byte vector reads of the kernel: rows ty * kVec + v and kHalf + ty * kVec + v.
          const int ra0 = ty * S::kVec + v, ra1 = S::kHalf + ty * S::kVec + v;
          const int rb0 = tx * S::kVec + v, rb1 = S::kHalf + tx * S::kVec + v;
          EXPECT(writes_a[cur][kk][ra0] == 1 && writes_a[cur][kk][ra1] == 1 && writes_b[cur][kk][rb0] == 1 &&
                     writes_b[cur][kk][rb1] == 1,
                 "a read of an unstaged slot");
          a[v] = s.a[cur][kk][ra0];
          a[S::kVec + v] = s.a[cur][kk][ra1];
          b[v] = s.b[cur][kk][rb0];
          b[S::kVec + v] = s.b[cur][kk][rb1];
        }
        for (int r = 0; r < S::kPer; ++r) {
          for (int c = 0; c < S::kPer; ++c) acc[t][r][c] = std::fma(a[r], b[c], acc[t][r][c]);
        }
      }
    }
    if (more) store_all(cur ^ 1);
    // __syncthreads()
  }
  return acc;
}

// ---- distance_tiles_kernel ----------------------------------------------------------------

template <typename T>
struct TilesCase {
  DistanceMetric metric;
  DistanceOutput output;
  std::vector<Rows<T>> x, y;  // per batch item
  int64_t batch_begin, batch_count, row_begin, rows, ld;
};

template <typename T>
T reference_value(DistanceMetric metric, const Rows<T>& x, int64_t i, const Rows<T>& y, int64_t j) {
  double dot = 0.0, d2 = 0.0;
  for (int64_t k = 0; k < x.dim; ++k) {
    const double a = x.exact[i * x.dim + k], b = y.exact[j * y.dim + k];
    dot += a * b;
    d2 += (a - b) * (a - b);
  }
  if (metric == DistanceMetric::Dot) return static_cast<T>(dot);
  if (d2 != d2) return std::numeric_limits<T>::quiet_NaN();
  return metric == DistanceMetric::Euclidean ? std::sqrt(static_cast<T>(d2)) : static_cast<T>(d2);
}

template <typename T>
T reference_output(DistanceOutput output, DistanceMetric metric, T v) {
  const T inf = std::numeric_limits<T>::infinity();
  switch (output) {
    case DistanceOutput::SmallestKeys: return v != v ? inf : v;
    case DistanceOutput::LargestKeys: return v != v ? inf : -v;
    case DistanceOutput::MiningKeys: return metric == DistanceMetric::Dot ? -v : v;
    default: return v;
  }
}

template <typename T>
void check_distance_tiles(const TilesCase<T>& c, const char* label) {
  using S = DistanceTile<T>;
  const int64_t y_n = c.y[0].n, dim = c.y[0].dim;
  const int64_t col_tiles = (y_n + S::kSize - 1) / S::kSize;
  const int64_t row_tiles = (c.rows + S::kSize - 1) / S::kSize;
  const int64_t grid_y = row_tiles < 2 ? row_tiles : 2, grid_z = c.batch_count < 2 ? c.batch_count : 2;
  const int64_t x_end = c.row_begin + c.rows;
  const T sentinel = T(-12345);
  std::vector<T> out(static_cast<size_t>(c.batch_count * c.rows * c.ld), sentinel);
  std::vector<int> writes(out.size(), 0);
  auto write = [&](int64_t at, T v) {
    EXPECT(at >= 0 && at < static_cast<int64_t>(out.size()), "%s: output index %lld outside", label,
           static_cast<long long>(at));
    if (at < 0 || at >= static_cast<int64_t>(out.size())) return;
    ++writes[at];
    out[at] = v;
  };
  for (int64_t bx = 0; bx < col_tiles; ++bx) {
    for (int64_t by = 0; by < grid_y; ++by) {
      for (int64_t gz = 0; gz < grid_z; ++gz) {
        const int64_t y0 = bx * S::kSize;
        for (int64_t bz = gz; bz < c.batch_count; bz += grid_z) {
          const Rows<T>& xi = c.x[c.batch_begin + bz];
          const Rows<T>& yi = c.y[c.batch_begin + bz];
          for (int64_t bi = by; bi < row_tiles; bi += grid_y) {
            const int64_t x0 = c.row_begin + bi * S::kSize;
            const Acc<T> acc = tile_dot(xi.centered.data(), x0, x_end, yi.centered.data(), y0, y_n, dim);
            for (int t = 0; t < kThreads; ++t) {
              const int tx = t % kSide, ty = t / kSide;
              unsigned long long exact = 0;
              for (int r = 0; r < S::kPer; ++r) {
                const int64_t i = x0 + S::local(ty, r);
                if (i >= x_end) continue;
                const T norm_x = xi.norms[i];
                for (int cc = 0; cc < S::kPer; ++cc) {
                  const int64_t j = y0 + S::local(tx, cc);
                  if (j >= y_n) continue;
                  T v;
                  if (distance_fast_value(c.metric, acc[t][r][cc], norm_x, yi.norms[j], v)) {
                    write((bz * c.rows + (i - c.row_begin)) * c.ld + j, distance_output_value(c.output, c.metric, v));
                  } else {
                    exact |= distance_pair_bit<T>(r, cc);
                    ++exact_pairs;
                  }
                }
              }
              while (exact != 0) {
                const int bit = __builtin_ctzll(exact);
                exact &= exact - 1;
                const int64_t i = x0 + S::local(ty, bit / S::kPer), j = y0 + S::local(tx, bit % S::kPer);
                const T v = distance_exact_value(c.metric, xi.orig.data() + i * dim, yi.orig.data() + j * dim, dim);
                write((bz * c.rows + (i - c.row_begin)) * c.ld + j, distance_output_value(c.output, c.metric, v));
              }
            }
          }
        }
      }
    }
  }
  int64_t wrong = 0;
  for (int64_t b = 0; b < c.batch_count; ++b) {
    for (int64_t r = 0; r < c.rows; ++r) {
      for (int64_t j = 0; j < c.ld; ++j) {
        const int64_t at = (b * c.rows + r) * c.ld + j;
        bool ok;
        if (j < y_n) {
          const T v = reference_value(c.metric, c.x[c.batch_begin + b], c.row_begin + r, c.y[c.batch_begin + b], j);
          const T expected = reference_output(c.output, c.metric, v);
          ok = writes[at] == 1 && same_bits(out[at], expected);
          if (!ok && ++wrong <= 3) {
            EXPECT(false, "%s: item %lld row %lld col %lld: %.9g written %d times, expected %.9g", label,
                   static_cast<long long>(b), static_cast<long long>(r), static_cast<long long>(j),
                   static_cast<double>(out[at]), writes[at], static_cast<double>(expected));
          }
        } else {
          ok = writes[at] == 0 && same_bits(out[at], sentinel);
          if (!ok && ++wrong <= 3) EXPECT(false, "%s: the gap past M was written", label);
        }
      }
    }
  }
  if (wrong > 3) EXPECT(false, "%s: %lld wrong elements in all", label, static_cast<long long>(wrong));
  std::printf("%-72s exact pairs %6lld %s\n", label, static_cast<long long>(exact_pairs), wrong == 0 ? "ok" : "WRONG");
}

// ---- batch_hard_tiles_kernel (float32) -----------------------------------------------------

struct BatchHardCase {
  DistanceMetric metric;
  Rows<float> x, y;  // x: anchors anchor_offset .. anchor_offset + x.n - 1 of y's embeddings
  std::vector<int64_t> labels;  // y.n
  int64_t anchor_offset;
  bool symmetric;
};

void check_batch_hard(const BatchHardCase& c, const char* label) {
  using S = DistanceTile<float>;
  const int64_t x_n = c.x.n, y_n = c.y.n, dim = c.y.dim;
  const int64_t col_tiles = (y_n + S::kSize - 1) / S::kSize;
  const int64_t row_tiles = (x_n + S::kSize - 1) / S::kSize;
  const int64_t grid_y = row_tiles < 2 ? row_tiles : 2;
  // An anchor's candidates from x = y's rows, or from x's own rows when symmetric (then x is y).
  std::vector<unsigned long long> best_positive(static_cast<size_t>(x_n), kNoFarthestPacked);
  std::vector<unsigned long long> best_negative(static_cast<size_t>(x_n), kNoNearestPacked);
  auto atomic_max = [&](int64_t at, unsigned long long v) {
    EXPECT(at >= 0 && at < x_n, "%s: atomicMax at %lld outside", label, static_cast<long long>(at));
    if (at >= 0 && at < x_n && v > best_positive[at]) best_positive[at] = v;
  };
  auto atomic_min = [&](int64_t at, unsigned long long v) {
    EXPECT(at >= 0 && at < x_n, "%s: atomicMin at %lld outside", label, static_cast<long long>(at));
    if (at >= 0 && at < x_n && v < best_negative[at]) best_negative[at] = v;
  };
  for (int64_t bj = 0; bj < col_tiles; ++bj) {
    for (int64_t by = 0; by < grid_y; ++by) {
      const int64_t y0 = bj * S::kSize;
      int64_t column_label[S::kSize], row_label[S::kSize];
      for (int t = 0; t < S::kSize; ++t) column_label[t] = y0 + t < y_n ? c.labels[y0 + t] : 0;
      for (int64_t bi = by; bi < row_tiles; bi += grid_y) {
        if (c.symmetric && bi > bj) break;
        const int64_t x0 = bi * S::kSize;
        Acc<float> acc = tile_dot(c.x.centered.data(), x0, x_n, c.y.centered.data(), y0, y_n, dim);
        const int row_limit = static_cast<int>(x_n - x0 < S::kSize ? x_n - x0 : S::kSize);
        const int col_limit = static_cast<int>(y_n - y0 < S::kSize ? y_n - y0 : S::kSize);
        for (int t = 0; t < S::kSize; ++t) row_label[t] = t < row_limit ? c.labels[c.anchor_offset + x0 + t] : 0;
        std::vector<unsigned long long> same(kThreads, 0), exact(kThreads, 0);
        for (int t = 0; t < kThreads; ++t) {
          const int tx = t % kSide, ty = t / kSide;
          for (int r = 0; r < S::kPer; ++r) {
            const int lr = S::local(ty, r);
            if (lr >= row_limit) continue;
            const float norm_x = c.x.norms[x0 + lr];
            for (int cc = 0; cc < S::kPer; ++cc) {
              const int lc = S::local(tx, cc);
              if (lc >= col_limit) continue;
              float v;
              if (distance_fast_value(c.metric, acc[t][r][cc], norm_x, c.y.norms[y0 + lc], v)) {
                acc[t][r][cc] = mining_key(c.metric, v);
              } else {
                exact[t] |= distance_pair_bit<float>(r, cc);
                ++exact_pairs;
              }
              if (row_label[lr] == column_label[lc]) same[t] |= distance_pair_bit<float>(r, cc);
            }
          }
        }
        // Rows: per r, each thread's offers, then the xor butterfly over the half-warp.
        for (int r = 0; r < S::kPer; ++r) {
          std::vector<unsigned long long> positive(kThreads, kNoFarthestPacked), negative(kThreads, kNoNearestPacked);
          for (int t = 0; t < kThreads; ++t) {
            const int tx = t % kSide, ty = t / kSide;
            const int lr = S::local(ty, r);
            const int64_t self = c.anchor_offset + x0 + lr - y0;
            if (lr >= row_limit) continue;
            for (int cc = 0; cc < S::kPer; ++cc) {
              const int lc = S::local(tx, cc);
              const unsigned long long bit = distance_pair_bit<float>(r, cc);
              if (lc < col_limit && (exact[t] & bit) == 0) {
                batch_hard_offer_packed(positive[t], negative[t], (same[t] & bit) != 0, lc == self, y0 + lc,
                                        acc[t][r][cc]);
              }
            }
          }
          for (int offset = kSide / 2; offset >= 1; offset >>= 1) {
            const std::vector<unsigned long long> p = positive, n = negative;  // every lane reads before writing
            for (int t = 0; t < kThreads; ++t) {
              positive[t] = std::max(p[t], p[t ^ offset]);
              negative[t] = std::min(n[t], n[t ^ offset]);
            }
          }
          for (int t = 0; t < kThreads; ++t) {
            const int tx = t % kSide, ty = t / kSide;
            const int lr = S::local(ty, r);
            if (tx == 0 && lr < row_limit) {
              if (positive[t] != kNoFarthestPacked) atomic_max(x0 + lr, positive[t]);
              if (negative[t] != kNoNearestPacked) atomic_min(x0 + lr, negative[t]);
            }
          }
        }
        // Columns (symmetric, off the diagonal).
        if (c.symmetric && bi != bj) {
          unsigned long long column_positive[kWarps][S::kSize], column_negative[kWarps][S::kSize];
          int column_writes[kWarps][S::kSize] = {};
          for (int cc = 0; cc < S::kPer; ++cc) {
            std::vector<unsigned long long> positive(kThreads, kNoFarthestPacked), negative(kThreads, kNoNearestPacked);
            for (int t = 0; t < kThreads; ++t) {
              const int tx = t % kSide, ty = t / kSide;
              const int lc = S::local(tx, cc);
              if (lc >= col_limit) continue;
              for (int r = 0; r < S::kPer; ++r) {
                const int lr = S::local(ty, r);
                const unsigned long long bit = distance_pair_bit<float>(r, cc);
                if (lr < row_limit && (exact[t] & bit) == 0) {
                  batch_hard_offer_packed(positive[t], negative[t], (same[t] & bit) != 0, false, x0 + lr,
                                          acc[t][r][cc]);
                }
              }
            }
            const std::vector<unsigned long long> p = positive, n = negative;
            for (int t = 0; t < kThreads; ++t) {
              positive[t] = std::max(p[t], p[t ^ kSide]);
              negative[t] = std::min(n[t], n[t ^ kSide]);
            }
            for (int t = 0; t < kThreads; ++t) {
              const int tx = t % kSide, lane = t % kWarp, warp = t / kWarp;
              if (lane < kSide) {
                const int slot = S::local(tx, cc);
                EXPECT(++column_writes[warp][slot] == 1, "%s: column buffer (%d, %d) written twice", label, warp, slot);
                column_positive[warp][slot] = positive[t];
                column_negative[warp][slot] = negative[t];
              }
            }
          }
          // __syncthreads()
          for (int t = 0; t < S::kSize; ++t) {
            unsigned long long positive = kNoFarthestPacked, negative = kNoNearestPacked;
            for (int w = 0; w < kWarps; ++w) {
              EXPECT(column_writes[w][t] == 1, "%s: column buffer (%d, %d) read unwritten", label, w, t);
              positive = std::max(positive, column_positive[w][t]);
              negative = std::min(negative, column_negative[w][t]);
            }
            const int64_t j = y0 + t;
            if (j < y_n) {
              if (positive != kNoFarthestPacked) atomic_max(j, positive);
              if (negative != kNoNearestPacked) atomic_min(j, negative);
            }
          }
        }
        // The exact pairs.
        for (int t = 0; t < kThreads; ++t) {
          const int tx = t % kSide, ty = t / kSide;
          unsigned long long pending = exact[t];
          while (pending != 0) {
            const int bit = __builtin_ctzll(pending);
            pending &= pending - 1;
            const int64_t i = x0 + S::local(ty, bit / S::kPer), j = y0 + S::local(tx, bit % S::kPer);
            const float key = mining_key(
                c.metric, distance_exact_value(c.metric, c.x.orig.data() + i * dim, c.y.orig.data() + j * dim, dim));
            const bool same_label = ((same[t] >> bit) & 1ull) != 0;
            unsigned long long positive = kNoFarthestPacked, negative = kNoNearestPacked;
            batch_hard_offer_packed(positive, negative, same_label, j == c.anchor_offset + i, j, key);
            if (positive != kNoFarthestPacked) atomic_max(i, positive);
            if (negative != kNoNearestPacked) atomic_min(i, negative);
            if (c.symmetric && bi != bj) {
              const float column_key = mining_key(
                  c.metric, distance_exact_value(c.metric, c.x.orig.data() + j * dim, c.y.orig.data() + i * dim, dim));
              positive = kNoFarthestPacked;
              negative = kNoNearestPacked;
              batch_hard_offer_packed(positive, negative, same_label, i == j, i, column_key);
              if (positive != kNoFarthestPacked) atomic_max(j, positive);
              if (negative != kNoNearestPacked) atomic_min(j, negative);
            }
          }
        }
      }
    }
  }
  // The rules, written out: per anchor, over every other embedding.
  int64_t wrong = 0;
  for (int64_t a = 0; a < x_n; ++a) {
    const int64_t anchor = c.anchor_offset + a;
    int64_t want_positive = -1, want_negative = -1;
    float positive_key = 0.0f, negative_key = 0.0f;
    for (int64_t j = 0; j < y_n; ++j) {
      const float v = reference_value(c.metric, c.x, a, c.y, j);
      const float key = c.metric == DistanceMetric::Dot ? -v : v;
      if (key != key) continue;  // NaN keys are never chosen
      if (c.labels[j] == c.labels[anchor]) {
        if (j == anchor || key == -INFINITY) continue;
        if (want_positive < 0 || key > positive_key) {
          want_positive = j;
          positive_key = key;
        }
      } else if (key < INFINITY) {
        if (want_negative < 0 || key < negative_key) {
          want_negative = j;
          negative_key = key;
        }
      }
    }
    const int64_t got_positive = unpack_farthest(best_positive[a]), got_negative = unpack_nearest(best_negative[a]);
    if (got_positive != want_positive || got_negative != want_negative) {
      if (++wrong <= 3) {
        EXPECT(false, "%s: anchor %lld: positive %lld negative %lld, expected %lld and %lld", label,
               static_cast<long long>(anchor), static_cast<long long>(got_positive),
               static_cast<long long>(got_negative), static_cast<long long>(want_positive),
               static_cast<long long>(want_negative));
      }
    }
  }
  if (wrong > 3) EXPECT(false, "%s: %lld wrong anchors in all", label, static_cast<long long>(wrong));
  std::printf("%-72s exact pairs %6lld %s\n", label, static_cast<long long>(exact_pairs), wrong == 0 ? "ok" : "WRONG");
}

// ---- inputs ---------------------------------------------------------------------------------

enum class Kind { Small, Clustered, WithNaN };

template <typename T>
Rows<T> make_rows(int64_t n, int64_t dim, Kind kind, const std::vector<int>& shift, std::mt19937& rng) {
  Rows<T> rows;
  rows.n = n;
  rows.dim = dim;
  rows.exact.resize(static_cast<size_t>(n * dim));
  std::uniform_int_distribution<int> small(-3, 3), noise(-1, 1);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < dim; ++k) {
      // Clustered: every row (of x and of y) near the same point 57..63 per dimension.
      const int v = kind == Kind::Clustered ? 60 + static_cast<int>(k % 7) - 3 + noise(rng) : small(rng);
      rows.exact[i * dim + k] = v;
    }
  }
  if (kind == Kind::WithNaN && n > 2 && dim > 0) rows.exact[(n / 2) * dim] = std::nan("");
  rows.orig.assign(rows.exact.begin(), rows.exact.end());
  rows.centered.resize(rows.orig.size());
  rows.norms.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    T norm = 0;
    for (int64_t k = 0; k < dim; ++k) {
      const T v = rows.orig[i * dim + k] - static_cast<T>(shift[k]);
      rows.centered[i * dim + k] = v;
      norm += v * v;
    }
    rows.norms[i] = norm;
  }
  return rows;
}

const char* metric_name(DistanceMetric m) {
  switch (m) {
    case DistanceMetric::SqEuclidean: return "sqeuclidean";
    case DistanceMetric::Euclidean: return "euclidean";
    case DistanceMetric::Dot: return "dot";
    default: return "?";
  }
}
const char* kind_name(Kind k) { return k == Kind::Small ? "small" : k == Kind::Clustered ? "clustered" : "nan"; }

template <typename T>
void distance_tiles_cases(bool quick, std::mt19937& rng) {
  struct Shape {
    int64_t x_n, y_n, dim;
  };
  const std::vector<Shape> shapes = quick ? std::vector<Shape>{{7, 5, 3}, {140, 70, 9}, {70, 300, 0}}
                                          : std::vector<Shape>{{1, 1, 1},     {7, 5, 3},     {129, 64, 8},
                                                               {140, 70, 9},  {300, 257, 17}, {70, 300, 0},
                                                               {64, 65, 40}};
  const DistanceOutput outputs[] = {DistanceOutput::Values, DistanceOutput::SmallestKeys, DistanceOutput::LargestKeys,
                                    DistanceOutput::MiningKeys};
  int index = 0;
  for (const Shape& shape : shapes) {
    for (DistanceMetric metric : {DistanceMetric::SqEuclidean, DistanceMetric::Euclidean, DistanceMetric::Dot}) {
      for (Kind kind : {Kind::Small, Kind::Clustered, Kind::WithNaN}) {
        if (metric == DistanceMetric::Dot && kind == Kind::Clustered) continue;  // sums past 2^24
        TilesCase<T> c;
        c.metric = metric;
        c.output = outputs[index++ % 4];
        std::vector<int> shift(static_cast<size_t>(shape.dim), 0);
        if (metric != DistanceMetric::Dot) {
          std::uniform_int_distribution<int> pick(-2, 2);
          for (auto& s : shift) s = kind == Kind::Clustered ? 50 : pick(rng);
        }
        const int64_t batch = 3;
        for (int64_t b = 0; b < batch; ++b) {
          c.x.push_back(make_rows<T>(shape.x_n, shape.dim, kind, shift, rng));
          c.y.push_back(make_rows<T>(shape.y_n, shape.dim, kind, shift, rng));
        }
        c.batch_begin = 1;
        c.batch_count = 2;
        c.row_begin = shape.x_n > 4 ? 3 : 0;
        c.rows = shape.x_n - c.row_begin - (shape.x_n > 6 ? 1 : 0);
        c.ld = shape.y_n + 3;
        char label[200];
        std::snprintf(label, sizeof(label), "tiles %s %s x_n=%lld y_n=%lld D=%lld %s output=%d rows [%lld, +%lld)",
                      sizeof(T) == 4 ? "f32" : "f64", metric_name(metric), static_cast<long long>(shape.x_n),
                      static_cast<long long>(shape.y_n), static_cast<long long>(shape.dim), kind_name(kind),
                      static_cast<int>(c.output), static_cast<long long>(c.row_begin), static_cast<long long>(c.rows));
        exact_pairs = 0;
        check_distance_tiles(c, label);
        // Clustered rows are the exact form's case (a zero dimension has no pairs to recompute).
        if (kind == Kind::Clustered && shape.dim > 0) EXPECT(exact_pairs > 0, "%s: no pair took the exact form", label);
      }
    }
  }
}

void batch_hard_cases(bool quick, std::mt19937& rng) {
  struct Shape {
    int64_t n, dim, classes;
  };
  const std::vector<Shape> shapes = quick ? std::vector<Shape>{{9, 3, 3}, {300, 5, 4}, {140, 0, 3}}
                                          : std::vector<Shape>{{1, 2, 1},     {2, 1, 2},     {9, 3, 3},
                                                               {128, 8, 5},   {129, 9, 1},   {300, 5, 4},
                                                               {140, 0, 3},   {260, 17, 300}, {257, 4, 2}};
  for (const Shape& shape : shapes) {
    for (DistanceMetric metric : {DistanceMetric::SqEuclidean, DistanceMetric::Euclidean, DistanceMetric::Dot}) {
      for (Kind kind : {Kind::Small, Kind::Clustered, Kind::WithNaN}) {
        if (metric == DistanceMetric::Dot && kind == Kind::Clustered) continue;
        for (bool symmetric : {true, false}) {
          BatchHardCase c;
          c.metric = metric;
          c.symmetric = symmetric;
          std::vector<int> shift(static_cast<size_t>(shape.dim), 0);
          if (metric != DistanceMetric::Dot) {
            for (auto& s : shift) s = kind == Kind::Clustered ? 50 : 1;
          }
          c.y = make_rows<float>(shape.n, shape.dim, kind, shift, rng);
          std::uniform_int_distribution<int64_t> label(0, shape.classes - 1);
          c.labels.resize(static_cast<size_t>(shape.n));
          for (auto& l : c.labels) l = label(rng);
          if (symmetric) {
            c.anchor_offset = 0;
            c.x = c.y;
          } else {
            // A block of anchors from the middle: rows [offset, offset + count) of y.
            c.anchor_offset = shape.n / 3;
            const int64_t count = shape.n - c.anchor_offset - shape.n / 4 > 0 ? shape.n - c.anchor_offset - shape.n / 4 : 1;
            c.x.n = count;
            c.x.dim = shape.dim;
            const auto first = static_cast<size_t>(c.anchor_offset * shape.dim), last = first + count * shape.dim;
            c.x.orig.assign(c.y.orig.begin() + first, c.y.orig.begin() + last);
            c.x.centered.assign(c.y.centered.begin() + first, c.y.centered.begin() + last);
            c.x.exact.assign(c.y.exact.begin() + first, c.y.exact.begin() + last);
            c.x.norms.assign(c.y.norms.begin() + c.anchor_offset, c.y.norms.begin() + c.anchor_offset + count);
          }
          char label_text[200];
          std::snprintf(label_text, sizeof(label_text), "batch-hard %s n=%lld D=%lld classes=%lld %s %s anchors [%lld, +%lld)",
                        metric_name(metric), static_cast<long long>(shape.n), static_cast<long long>(shape.dim),
                        static_cast<long long>(shape.classes), kind_name(kind), symmetric ? "symmetric" : "block",
                        static_cast<long long>(c.anchor_offset), static_cast<long long>(c.x.n));
          exact_pairs = 0;
          check_batch_hard(c, label_text);
          if (kind == Kind::Clustered && shape.dim > 0 && shape.n > 1) {
            EXPECT(exact_pairs > 0, "%s: no pair took the exact form", label_text);
          }
        }
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";
  std::mt19937 rng(2026);
  distance_tiles_cases<float>(quick, rng);
  distance_tiles_cases<double>(quick, rng);
  batch_hard_cases(quick, rng);
  std::printf("bad %d\n", failures);
  return 0;
}
