#include "gram/gram_cpu_simd.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PVO_HAVE_AVX512_KERNELS 1
#else
#define PVO_HAVE_AVX512_KERNELS 0
#endif

namespace pyvision_ops {

#if PVO_HAVE_AVX512_KERNELS

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

__attribute__((target("avx512f"))) void gram_block4x4_avx512(const float* const a[4], const float* const b[4],
                                                              int64_t length, float* acc, int64_t ld) {
  __m512 s00 = _mm512_setzero_ps(), s01 = _mm512_setzero_ps(), s02 = _mm512_setzero_ps(), s03 = _mm512_setzero_ps();
  __m512 s10 = _mm512_setzero_ps(), s11 = _mm512_setzero_ps(), s12 = _mm512_setzero_ps(), s13 = _mm512_setzero_ps();
  __m512 s20 = _mm512_setzero_ps(), s21 = _mm512_setzero_ps(), s22 = _mm512_setzero_ps(), s23 = _mm512_setzero_ps();
  __m512 s30 = _mm512_setzero_ps(), s31 = _mm512_setzero_ps(), s32 = _mm512_setzero_ps(), s33 = _mm512_setzero_ps();
  int64_t l = 0;
// 16 FMAs on the loaded rows; a macro because a lambda would not inherit the avx512f target.
#define PVO_GRAM_STEP(a0, a1, a2, a3, b0, b1, b2, b3)                                   \
  do {                                                                                  \
    s00 = _mm512_fmadd_ps(a0, b0, s00); s01 = _mm512_fmadd_ps(a0, b1, s01);             \
    s02 = _mm512_fmadd_ps(a0, b2, s02); s03 = _mm512_fmadd_ps(a0, b3, s03);             \
    s10 = _mm512_fmadd_ps(a1, b0, s10); s11 = _mm512_fmadd_ps(a1, b1, s11);             \
    s12 = _mm512_fmadd_ps(a1, b2, s12); s13 = _mm512_fmadd_ps(a1, b3, s13);             \
    s20 = _mm512_fmadd_ps(a2, b0, s20); s21 = _mm512_fmadd_ps(a2, b1, s21);             \
    s22 = _mm512_fmadd_ps(a2, b2, s22); s23 = _mm512_fmadd_ps(a2, b3, s23);             \
    s30 = _mm512_fmadd_ps(a3, b0, s30); s31 = _mm512_fmadd_ps(a3, b1, s31);             \
    s32 = _mm512_fmadd_ps(a3, b2, s32); s33 = _mm512_fmadd_ps(a3, b3, s33);             \
  } while (0)
  for (; l + 16 <= length; l += 16) {
    const __m512 a0 = _mm512_loadu_ps(a[0] + l), a1 = _mm512_loadu_ps(a[1] + l);
    const __m512 a2 = _mm512_loadu_ps(a[2] + l), a3 = _mm512_loadu_ps(a[3] + l);
    const __m512 b0 = _mm512_loadu_ps(b[0] + l), b1 = _mm512_loadu_ps(b[1] + l);
    const __m512 b2 = _mm512_loadu_ps(b[2] + l), b3 = _mm512_loadu_ps(b[3] + l);
    PVO_GRAM_STEP(a0, a1, a2, a3, b0, b1, b2, b3);
  }
  if (l < length) {
    const __mmask16 m = static_cast<__mmask16>((1u << (length - l)) - 1u);
    const __m512 a0 = _mm512_maskz_loadu_ps(m, a[0] + l), a1 = _mm512_maskz_loadu_ps(m, a[1] + l);
    const __m512 a2 = _mm512_maskz_loadu_ps(m, a[2] + l), a3 = _mm512_maskz_loadu_ps(m, a[3] + l);
    const __m512 b0 = _mm512_maskz_loadu_ps(m, b[0] + l), b1 = _mm512_maskz_loadu_ps(m, b[1] + l);
    const __m512 b2 = _mm512_maskz_loadu_ps(m, b[2] + l), b3 = _mm512_maskz_loadu_ps(m, b[3] + l);
    PVO_GRAM_STEP(a0, a1, a2, a3, b0, b1, b2, b3);
  }
#undef PVO_GRAM_STEP
  const __m512 sums[16] = {s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33};
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) acc[i * ld + j] += _mm512_reduce_add_ps(sums[i * 4 + j]);
  }
}

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

namespace {
__attribute__((target("avx2,fma"))) inline float horizontal_sum(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)));
}
}  // namespace

__attribute__((target("avx2,fma"))) void gram_block2x4_avx2(const float* const a[2], const float* const b[4],
                                                             int64_t length, float* acc, int64_t ld) {
  __m256 s00 = _mm256_setzero_ps(), s01 = _mm256_setzero_ps(), s02 = _mm256_setzero_ps(), s03 = _mm256_setzero_ps();
  __m256 s10 = _mm256_setzero_ps(), s11 = _mm256_setzero_ps(), s12 = _mm256_setzero_ps(), s13 = _mm256_setzero_ps();
  const float* a0p = a[0];
  const float* a1p = a[1];
  const float *b0p = b[0], *b1p = b[1], *b2p = b[2], *b3p = b[3];
  int64_t l = 0;
  for (; l + 8 <= length; l += 8) {
    const __m256 a0 = _mm256_loadu_ps(a0p + l), a1 = _mm256_loadu_ps(a1p + l);
    __m256 b = _mm256_loadu_ps(b0p + l);
    s00 = _mm256_fmadd_ps(a0, b, s00);
    s10 = _mm256_fmadd_ps(a1, b, s10);
    b = _mm256_loadu_ps(b1p + l);
    s01 = _mm256_fmadd_ps(a0, b, s01);
    s11 = _mm256_fmadd_ps(a1, b, s11);
    b = _mm256_loadu_ps(b2p + l);
    s02 = _mm256_fmadd_ps(a0, b, s02);
    s12 = _mm256_fmadd_ps(a1, b, s12);
    b = _mm256_loadu_ps(b3p + l);
    s03 = _mm256_fmadd_ps(a0, b, s03);
    s13 = _mm256_fmadd_ps(a1, b, s13);
  }
  float tail[2][4] = {};
  for (; l < length; ++l) {
    for (int j = 0; j < 4; ++j) {
      tail[0][j] += a0p[l] * b[j][l];
      tail[1][j] += a1p[l] * b[j][l];
    }
  }
  acc[0] += horizontal_sum(s00) + tail[0][0];
  acc[1] += horizontal_sum(s01) + tail[0][1];
  acc[2] += horizontal_sum(s02) + tail[0][2];
  acc[3] += horizontal_sum(s03) + tail[0][3];
  acc[ld + 0] += horizontal_sum(s10) + tail[1][0];
  acc[ld + 1] += horizontal_sum(s11) + tail[1][1];
  acc[ld + 2] += horizontal_sum(s12) + tail[1][2];
  acc[ld + 3] += horizontal_sum(s13) + tail[1][3];
}

#else

bool cpu_has_avx512() { return false; }
bool cpu_has_avx2_fma() { return false; }
void gram_block4x4_avx512(const float* const*, const float* const*, int64_t, float*, int64_t) {}
void gram_block2x4_avx2(const float* const*, const float* const*, int64_t, float*, int64_t) {}

#endif

}  // namespace pyvision_ops
