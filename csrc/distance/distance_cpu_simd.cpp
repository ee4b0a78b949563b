// The AVX2 float32 tile kernels of the distance family (distance_cpu_simd.h), compiled for
// AVX2 + FMA per function and reached through distance_cpu_kernels(). Nothing here on other
// architectures.
#include "distance/distance_cpu_simd.h"

#if PVO_X86
#include <immintrin.h>
#endif

namespace pyvision_ops {

#if PVO_X86

namespace {

constexpr int64_t P = kDistancePanel;

// Transposes the 8x8 block r[i][0..7] and stores column j at dst + j * P.
PVO_TARGET_AVX2 inline void transpose8_store(const __m256 r[8], float* dst) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_store_ps(dst + 0 * P, _mm256_permute2f128_ps(s0, s4, 0x20));
  _mm256_store_ps(dst + 1 * P, _mm256_permute2f128_ps(s1, s5, 0x20));
  _mm256_store_ps(dst + 2 * P, _mm256_permute2f128_ps(s2, s6, 0x20));
  _mm256_store_ps(dst + 3 * P, _mm256_permute2f128_ps(s3, s7, 0x20));
  _mm256_store_ps(dst + 4 * P, _mm256_permute2f128_ps(s0, s4, 0x31));
  _mm256_store_ps(dst + 5 * P, _mm256_permute2f128_ps(s1, s5, 0x31));
  _mm256_store_ps(dst + 6 * P, _mm256_permute2f128_ps(s2, s6, 0x31));
  _mm256_store_ps(dst + 7 * P, _mm256_permute2f128_ps(s3, s7, 0x31));
}

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

// c[r * ldc + j] (+)= sum_k a[k * 16 + r] * b[k * 16 + j] for r < MR, j < 16.
template <int MR, bool kAccumulate>
PVO_TARGET_AVX2 inline void micro_kernel(const float* a, const float* b, int64_t kc, float* c, int64_t ldc) {
  static_assert(MR == 4 || MR == 6, "micro-kernel rows");
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
    __m256 x = _mm256_broadcast_ss(a + 0);
    c00 = _mm256_fmadd_ps(x, b0, c00);
    c01 = _mm256_fmadd_ps(x, b1, c01);
    x = _mm256_broadcast_ss(a + 1);
    c10 = _mm256_fmadd_ps(x, b0, c10);
    c11 = _mm256_fmadd_ps(x, b1, c11);
    x = _mm256_broadcast_ss(a + 2);
    c20 = _mm256_fmadd_ps(x, b0, c20);
    c21 = _mm256_fmadd_ps(x, b1, c21);
    x = _mm256_broadcast_ss(a + 3);
    c30 = _mm256_fmadd_ps(x, b0, c30);
    c31 = _mm256_fmadd_ps(x, b1, c31);
    if constexpr (MR == 6) {
      x = _mm256_broadcast_ss(a + 4);
      c40 = _mm256_fmadd_ps(x, b0, c40);
      c41 = _mm256_fmadd_ps(x, b1, c41);
      x = _mm256_broadcast_ss(a + 5);
      c50 = _mm256_fmadd_ps(x, b0, c50);
      c51 = _mm256_fmadd_ps(x, b1, c51);
    }
    a += P;
    b += P;
  }
  const __m256 sums[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int r = 0; r < MR; ++r) {
    float* row = c + r * ldc;
    if constexpr (kAccumulate) {
      _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), sums[r][0]));
      _mm256_storeu_ps(row + 8, _mm256_add_ps(_mm256_loadu_ps(row + 8), sums[r][1]));
    } else {
      _mm256_storeu_ps(row, sums[r][0]);
      _mm256_storeu_ps(row + 8, sums[r][1]);
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

}  // namespace

const DistanceCpuKernels* distance_avx2_kernels() {
  static const DistanceCpuKernels table{pack_rows_avx2, dot_tile_avx2, finish_row_avx2, exact_sq_avx2};
  return &table;
}

#else

const DistanceCpuKernels* distance_avx2_kernels() { return nullptr; }

#endif

}  // namespace pyvision_ops
