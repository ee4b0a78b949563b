// The AVX2 float32 tile kernels of the distance family (distance_cpu_simd.h), compiled for
// AVX2 + FMA per function and reached through distance_cpu_kernels(). Nothing here on other
// architectures.
#include "distance/distance_cpu_simd.h"

#if PVO_X86
#include <immintrin.h>

#include "common/avx2_panel.h"
#endif

namespace pyvision_ops {

#if PVO_X86

namespace {

constexpr int64_t P = kDistancePanel;
using avx2_panel::micro_kernel;
using avx2_panel::transpose8_store;
static_assert(avx2_panel::kRows == kDistancePanel, "the shared panel height");

// Full panels by 8x8 transposes; scalar for the last dim % 8 positions and a partial panel.
// `packed` must be 32-byte aligned.
PVO_TARGET_AVX2 void pack_rows_avx2(const float* src, int64_t rows, int64_t dim, float* packed) {
  const int64_t panels = (rows + P - 1) / P;
  const int64_t dim8 = dim - dim % 8;
  for (int64_t p = 0; p < panels; ++p) {
    float* dst = packed + p * dim * P;
    const int64_t r0 = p * P;
    int64_t k_done = 0;
    if (r0 + P <= rows) {
      for (int64_t half = 0; half < 2; ++half) {
        const float* block = src + (r0 + 8 * half) * dim;
        for (int64_t k = 0; k < dim8; k += 8) {
          __m256 r[8];
          for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(block + i * dim + k);
          transpose8_store(r, dst + k * P + 8 * half);
        }
      }
      k_done = dim8;
    }
    for (int64_t k = k_done; k < dim; ++k) {
      for (int64_t r = 0; r < P; ++r) dst[k * P + r] = r0 + r < rows ? src[(r0 + r) * dim + k] : 0.0f;
    }
  }
}

template <bool kAccumulate>
PVO_TARGET_AVX2 void panel_rows(const float* a, int64_t rows_a, const float* b, int64_t kc, float* c, int64_t ldc) {
  // 16 rows = 6 + 6 + 4; fewer rows round up to the next micro-kernel (the panel is zero-padded,
  // and the tile has 16 rows), so only rows_a rows are meaningful.
  int64_t r = 0;
  while (r < rows_a) {
    if (r + 4 >= rows_a || r == 12) {
      micro_kernel<4, kAccumulate>(a + r, b, kc, c + r * ldc, ldc);
      r += 4;
    } else {
      micro_kernel<6, kAccumulate>(a + r, b, kc, c + r * ldc, ldc);
      r += 6;
    }
  }
}

PVO_TARGET_AVX2 void dot_tile_avx2(const float* a, int64_t rows_a, const float* b, int64_t panels_b, int64_t kc,
                                   int64_t panel_stride, bool accumulate, float* tile, int64_t ld) {
  if (kc == 0) {
    if (accumulate) return;
    for (int64_t r = 0; r < rows_a; ++r) {
      for (int64_t j = 0; j < panels_b * P; ++j) tile[r * ld + j] = 0.0f;
    }
    return;
  }
  for (int64_t k0 = 0; k0 < kc; k0 += kDistanceChunk) {
    const int64_t chunk = kc - k0 < kDistanceChunk ? kc - k0 : kDistanceChunk;
    for (int64_t pb = 0; pb < panels_b; ++pb) {
      const float* bp = b + pb * panel_stride + k0 * P;
      float* c = tile + pb * P;
      if (k0 == 0 && !accumulate) {
        panel_rows<false>(a + k0 * P, rows_a, bp, chunk, c, ld);
      } else {
        panel_rows<true>(a + k0 * P, rows_a, bp, chunk, c, ld);
      }
    }
  }
}

PVO_TARGET_AVX2 int64_t finish_row_avx2(DistanceMetric metric, const float* dot, int64_t cols, float norm_x,
                                        const float* norm_y, float* out) {
  if (metric == DistanceMetric::Dot) {
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) _mm256_storeu_ps(out + j, _mm256_loadu_ps(dot + j));
    for (; j < cols; ++j) out[j] = dot[j];
    return 0;
  }
  const __m256 nx = _mm256_set1_ps(norm_x), minus_two = _mm256_set1_ps(-2.0f);
  const __m256 fraction = _mm256_set1_ps(kExactFraction), flag = _mm256_set1_ps(-1.0f), half = _mm256_set1_ps(0.5f);
  int64_t flagged = 0;
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) {
    const __m256 sum = _mm256_add_ps(nx, _mm256_loadu_ps(norm_y + j));
    const __m256 d2 = _mm256_fmadd_ps(minus_two, _mm256_loadu_ps(dot + j), sum);
    const __m256 ok = _mm256_cmp_ps(d2, _mm256_mul_ps(fraction, sum), _CMP_GE_OQ);
    __m256 value = d2;
    if (metric == DistanceMetric::Euclidean) {
      value = _mm256_sqrt_ps(_mm256_max_ps(d2, _mm256_setzero_ps()));
    } else if (metric == DistanceMetric::Cosine) {
      value = _mm256_mul_ps(d2, half);
    }
    _mm256_storeu_ps(out + j, _mm256_blendv_ps(flag, value, ok));
    flagged += 8 - __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(ok)));
  }
  for (; j < cols; ++j) {
    const float d2 = norm_x + norm_y[j] - 2.0f * dot[j];
    if (needs_exact_distance(d2, norm_x, norm_y[j])) {
      out[j] = -1.0f;
      ++flagged;
    } else {
      out[j] = finish_distance(metric, d2);
    }
  }
  return flagged;
}

PVO_TARGET_AVX2 float exact_sq_avx2(const float* x, const float* y, int64_t dim) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= dim; k += 16) {
    const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(y + k));
    const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(x + k + 8), _mm256_loadu_ps(y + k + 8));
    s0 = _mm256_fmadd_ps(d0, d0, s0);
    s1 = _mm256_fmadd_ps(d1, d1, s1);
  }
  for (; k + 8 <= dim; k += 8) {
    const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(y + k));
    s0 = _mm256_fmadd_ps(d0, d0, s0);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(s0, s1));
  float tail = 0.0f;
  for (; k < dim; ++k) {
    const float d = x[k] - y[k];
    tail += d * d;
  }
  return (((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))) + tail;
}

// Eight values per compare; a block of eight without a key below the bound costs one compare,
// one movemask and one branch. v > -bound is -v < bound without negating the values.
PVO_TARGET_AVX2 int64_t select_below_avx2(const float* values, int64_t cols, float bound, bool negate,
                                          int32_t* picked) {
  int64_t count = 0;
  int64_t j = 0;
  if (negate) {
    const __m256 limit = _mm256_set1_ps(-bound);
    for (; j + 8 <= cols; j += 8) {
      unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(values + j), limit, _CMP_GT_OQ)));
      while (mask != 0) {
        picked[count++] = static_cast<int32_t>(j + __builtin_ctz(mask));
        mask &= mask - 1;
      }
    }
  } else {
    const __m256 limit = _mm256_set1_ps(bound);
    for (; j + 8 <= cols; j += 8) {
      unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(values + j), limit, _CMP_LT_OQ)));
      while (mask != 0) {
        picked[count++] = static_cast<int32_t>(j + __builtin_ctz(mask));
        mask &= mask - 1;
      }
    }
  }
  for (; j < cols; ++j) {
    const float key = negate ? -values[j] : values[j];
    if (key < bound) picked[count++] = static_cast<int32_t>(j);
  }
  return count;
}

}  // namespace

const DistanceCpuKernels* distance_avx2_kernels() {
  static const DistanceCpuKernels table{pack_rows_avx2, dot_tile_avx2, finish_row_avx2, exact_sq_avx2,
                                        select_below_avx2};
  return &table;
}

#else

const DistanceCpuKernels* distance_avx2_kernels() { return nullptr; }

#endif

}  // namespace pyvision_ops
