// CPU Gram kernel: upper-triangle tiles of G, parallel over (batch item, tile pair) with
// at::parallel_for. Planar float32 uses a 4x4 micro-kernel (AVX-512, or two AVX2 2x4 halves:
// dot products sharing their loads) over chunks of L that stay in L1/L2; other cases use
// portable loops.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "gram/gram.h"
#include "gram/gram_cpu_simd.h"
#include "gram/gram_glue.h"

namespace pyvision_ops {
namespace {

constexpr int64_t kTile = 64;        // rows of G per tile side (multiple of the 4x4 micro-tile)
constexpr int64_t kChunk = 512;      // elements of L per pass: 128 rows x 2 KB stay in L2

// Writes the tile's accumulators, scaled, into G and its mirror.
template <typename acc_t>
void store_tile(const GramParams& p, int64_t n, int64_t row0, int64_t col0, const acc_t* acc, acc_t* gram) {
  const int64_t C = p.channels;
  const acc_t scale = static_cast<acc_t>(p.scale);
  acc_t* g = gram + n * C * C;
  for (int64_t i = 0; i < kTile && row0 + i < C; ++i) {
    for (int64_t j = 0; j < kTile && col0 + j < C; ++j) {
      const int64_t r = row0 + i, c = col0 + j;
      if (c < r) continue;
      const acc_t v = acc[i * kTile + j] * scale;
      g[r * C + c] = v;
      g[c * C + r] = v;
    }
  }
}

template <typename acc_t>
void gram_planar(const GramParams& p, const acc_t* features, acc_t* gram) {
  const int64_t C = p.channels, L = p.length;
  const int64_t tiles = (C + kTile - 1) / kTile;
  const int64_t pairs = triangle_tile_count(tiles);
  const bool avx512 = std::is_same_v<acc_t, float> && cpu_has_avx512();
  const bool avx2 = std::is_same_v<acc_t, float> && !avx512 && cpu_has_avx2_fma();
  at::parallel_for(0, p.batch * pairs, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(kTile * kTile);
    std::vector<acc_t> zeros(std::min(L, kChunk), acc_t(0));  // stands in for rows past C
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / pairs;
      int64_t tile_row, tile_col;
      triangle_tile(task % pairs, tiles, tile_row, tile_col);
      const int64_t row0 = tile_row * kTile, col0 = tile_col * kTile;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const acc_t* base = features + n * C * L;
      for (int64_t l0 = 0; l0 < L; l0 += kChunk) {
        const int64_t len = std::min(kChunk, L - l0);
        for (int64_t i = 0; i < kTile && row0 + i < C; i += 4) {
          // On a diagonal tile only micro-tiles on or above the diagonal are needed.
          const int64_t j_start = tile_row == tile_col ? i : 0;
          for (int64_t j = j_start; j < kTile && col0 + j < C; j += 4) {
            if constexpr (std::is_same_v<acc_t, float>) {
              if (avx512 || avx2) {
                const float* a[4];
                const float* b[4];
                for (int k = 0; k < 4; ++k) {
                  a[k] = row0 + i + k < C ? base + (row0 + i + k) * L + l0 : zeros.data();
                  b[k] = col0 + j + k < C ? base + (col0 + j + k) * L + l0 : zeros.data();
                }
                float* out = acc.data() + i * kTile + j;
                if (avx512) {
                  gram_block4x4_avx512(a, b, len, out, kTile);
                } else {
                  gram_block2x4_avx2(a, b, len, out, kTile);
                  gram_block2x4_avx2(a + 2, b, len, out + 2 * kTile, kTile);
                }
                continue;
              }
            }
            for (int64_t ii = i; ii < i + 4 && row0 + ii < C; ++ii) {
              const acc_t* x = base + (row0 + ii) * L + l0;
              for (int64_t jj = j; jj < j + 4 && col0 + jj < C; ++jj) {
                const acc_t* y = base + (col0 + jj) * L + l0;
                acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
                for (int64_t l = 0; l < len; ++l) sum += x[l] * y[l];
                acc[ii * kTile + jj] += sum;
              }
            }
          }
        }
      }
      store_tile(p, n, row0, col0, acc.data(), gram);
    }
  });
}

// Channels-last: X (N, L, C) read in place; each position l adds the outer product of its row.
template <typename acc_t>
void gram_channels_last(const GramParams& p, const acc_t* features, acc_t* gram) {
  const int64_t C = p.channels, L = p.length;
  const int64_t tiles = (C + kTile - 1) / kTile;
  const int64_t pairs = triangle_tile_count(tiles);
  at::parallel_for(0, p.batch * pairs, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(kTile * kTile);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / pairs;
      int64_t tile_row, tile_col;
      triangle_tile(task % pairs, tiles, tile_row, tile_col);
      const int64_t row0 = tile_row * kTile, col0 = tile_col * kTile;
      const int64_t rows = std::min(kTile, C - row0), cols = std::min(kTile, C - col0);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t l = 0; l < L; ++l) {
        const acc_t* x = features + (n * L + l) * C;
        for (int64_t i = 0; i < rows; ++i) {
          const acc_t xi = x[row0 + i];
          const acc_t* xj = x + col0;
          acc_t* a = acc.data() + i * kTile;
          const int64_t j_start = tile_row == tile_col ? i : 0;
#pragma omp simd
          for (int64_t j = j_start; j < cols; ++j) a[j] += xi * xj[j];
        }
      }
      store_tile(p, n, row0, col0, acc.data(), gram);
    }
  });
}

at::Tensor gram_matrix_cpu(const at::Tensor& features, bool normalize) {
  const GramInput in = prepare_gram_input("gram_matrix", features, normalize);
  const GramParams& p = in.params;
  const at::ScalarType compute = gram_compute_dtype(features.scalar_type());
  at::Tensor gram = at::empty({p.batch, p.channels, p.channels}, features.options().dtype(compute));
  if (gram.numel() == 0) return gram.to(features.scalar_type());
  if (p.length == 0) return gram.zero_().to(features.scalar_type());
  // float16/bfloat16 are widened once to float32 (the accumulation type) on the CPU.
  const at::Tensor view = in.view.to(compute).contiguous();
  AT_DISPATCH_FLOATING_TYPES(compute, "gram_matrix_cpu", [&] {
    p.channels_last ? gram_channels_last<scalar_t>(p, view.const_data_ptr<scalar_t>(), gram.mutable_data_ptr<scalar_t>())
                    : gram_planar<scalar_t>(p, view.const_data_ptr<scalar_t>(), gram.mutable_data_ptr<scalar_t>());
  });
  return gram.to(features.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(pyvision_ops, CPU, m) { m.impl("gram_matrix", &gram_matrix_cpu); }

}  // namespace pyvision_ops
