// AVX2 versions of the pooling family's row kernels (unpool_cpu_simd.h); compiled for AVX2 per
// function and reached only through unpool_cpu_kernels(). Nothing here on other architectures.
#include "unpool/unpool_cpu_simd.h"

#if PVO_X86
#include <immintrin.h>
#endif

namespace pyvision_ops {

#if PVO_X86

namespace {

// Even and odd elements of the 16 floats a[0..7], b[0..7], each as 8 lanes in order.
PVO_TARGET_AVX2 inline __m256 even_lanes(__m256 a, __m256 b) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
}
PVO_TARGET_AVX2 inline __m256 odd_lanes(__m256 a, __m256 b) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
}

// 8 lane masks (32-bit) of "offset == d" for 8 int64 offsets held in d_lo (lanes 0-3), d_hi (4-7).
PVO_TARGET_AVX2 inline __m256 lanes_equal(__m256i d_lo, __m256i d_hi, int64_t offset) {
  const __m256i target = _mm256_set1_epi64x(offset);
  const __m256 lo = _mm256_castsi256_ps(_mm256_cmpeq_epi64(d_lo, target));
  const __m256 hi = _mm256_castsi256_ps(_mm256_cmpeq_epi64(d_hi, target));
  return even_lanes(lo, hi);  // each 64-bit mask is two equal halves: take one per lane, in order
}

// PyTorch's rule for replacing the running max: v > best, or v is NaN.
PVO_TARGET_AVX2 inline __m256 takes_over(__m256 v, __m256 best) {
  return _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

PVO_TARGET_AVX2 void max_pool2x2_row_avx2(const float* r0, const float* r1, float* values, int64_t* flat,
                                          uint8_t* compact, int64_t count, int64_t base, int64_t row_width) {
  int64_t ow = 0;
  const __m256i one = _mm256_set1_epi32(1), two = _mm256_set1_epi32(2), three = _mm256_set1_epi32(3);
  for (; ow + 8 <= count; ow += 8) {
    const __m256 r0a = _mm256_loadu_ps(r0 + 2 * ow), r0b = _mm256_loadu_ps(r0 + 2 * ow + 8);
    const __m256 r1a = _mm256_loadu_ps(r1 + 2 * ow), r1b = _mm256_loadu_ps(r1 + 2 * ow + 8);
    const __m256 a = even_lanes(r0a, r0b), b = odd_lanes(r0a, r0b);
    const __m256 c = even_lanes(r1a, r1b), d = odd_lanes(r1a, r1b);
    __m256 best = a;
    __m256i code = _mm256_setzero_si256();
    __m256 take = takes_over(b, best);
    best = _mm256_blendv_ps(best, b, take);
    code = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(code), _mm256_castsi256_ps(one), take));
    take = takes_over(c, best);
    best = _mm256_blendv_ps(best, c, take);
    code = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(code), _mm256_castsi256_ps(two), take));
    take = takes_over(d, best);
    best = _mm256_blendv_ps(best, d, take);
    code = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(code), _mm256_castsi256_ps(three), take));
    _mm256_storeu_ps(values + ow, best);
    if (compact) {
      // 8 codes (0..3) in 32-bit lanes to 8 bytes.
      const __m128i lo = _mm256_castsi256_si128(code), hi = _mm256_extracti128_si256(code, 1);
      const __m128i words = _mm_packus_epi32(lo, hi);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(compact + ow), _mm_packus_epi16(words, words));
    } else {
      // flat = base + (code >> 1) * W + 2 * (ow + lane) + (code & 1), in 64 bits.
      const __m256i lane_lo = _mm256_setr_epi64x(0, 2, 4, 6), lane_hi = _mm256_setr_epi64x(8, 10, 12, 14);
      const __m256i start = _mm256_set1_epi64x(base + 2 * ow);
      const __m256i width = _mm256_set1_epi64x(row_width);
      const __m256i c_lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(code));
      const __m256i c_hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(code, 1));
      const __m256i one64 = _mm256_set1_epi64x(1);
      const __m256i f_lo = _mm256_add_epi64(
          _mm256_add_epi64(start, lane_lo),
          _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(c_lo, 1), width), _mm256_and_si256(c_lo, one64)));
      const __m256i f_hi = _mm256_add_epi64(
          _mm256_add_epi64(start, lane_hi),
          _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(c_hi, 1), width), _mm256_and_si256(c_hi, one64)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(flat + ow), f_lo);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(flat + ow + 4), f_hi);
    }
  }
  for (; ow < count; ++ow) max_pool2x2_window(r0, r1, values, flat, compact, ow, base, row_width);
}

// Masks of windows pw .. pw + 7 whose index selects (kh, kw) = (0,0), (0,1), (1,0), (1,1).
struct WindowMasks {
  __m256 m0, m1, m2, m3;
};

PVO_TARGET_AVX2 inline WindowMasks window_masks(const int64_t* flat, const uint8_t* compact, int64_t pw,
                                                int64_t row_start, int64_t row_width) {
  WindowMasks m;
  if (compact) {
    const __m256i code = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(compact + pw)));
    m.m0 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(code, _mm256_setzero_si256()));
    m.m1 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(code, _mm256_set1_epi32(1)));
    m.m2 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(code, _mm256_set1_epi32(2)));
    m.m3 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(code, _mm256_set1_epi32(3)));
  } else {
    // Offset of each index from its window's top-left target position.
    const __m256i start = _mm256_set1_epi64x(row_start + 2 * pw);
    const __m256i d_lo = _mm256_sub_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(flat + pw)),
                                          _mm256_add_epi64(start, _mm256_setr_epi64x(0, 2, 4, 6)));
    const __m256i d_hi = _mm256_sub_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(flat + pw + 4)),
                                          _mm256_add_epi64(start, _mm256_setr_epi64x(8, 10, 12, 14)));
    m.m0 = lanes_equal(d_lo, d_hi, 0);
    m.m1 = lanes_equal(d_lo, d_hi, 1);
    m.m2 = lanes_equal(d_lo, d_hi, row_width);
    m.m3 = lanes_equal(d_lo, d_hi, row_width + 1);
  }
  return m;
}

PVO_TARGET_AVX2 inline int64_t matched_windows(const WindowMasks& m) {
  const int hit = _mm256_movemask_ps(_mm256_or_ps(_mm256_or_ps(m.m0, m.m1), _mm256_or_ps(m.m2, m.m3)));
  return __builtin_popcount(static_cast<unsigned>(hit));
}

PVO_TARGET_AVX2 int64_t max_unpool2x2_fill_row_avx2(uint32_t value_bits, const int64_t* flat, const uint8_t* compact,
                                                     uint32_t* out, int64_t count, int64_t row_start,
                                                     int64_t row_width) {
  const __m256 value = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(value_bits)));
  int64_t matches = 0;
  int64_t pw = 0;
  for (; pw + 8 <= count; pw += 8) {
    const WindowMasks m = window_masks(flat, compact, pw, row_start, row_width);
    const __m256 inside = _mm256_or_ps(_mm256_or_ps(m.m0, m.m1), _mm256_or_ps(m.m2, m.m3));
    matches += __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(inside)));
    _mm256_storeu_ps(reinterpret_cast<float*>(out + pw), _mm256_and_ps(value, inside));
  }
  return matches + max_unpool2x2_fill_row_portable(value_bits, flat ? flat + pw : nullptr, compact ? compact + pw : nullptr,
                                                   out + pw, count - pw, row_start + 2 * pw, row_width);
}

PVO_TARGET_AVX2 int64_t max_unpool2x2_row_avx2(const float* source, const int64_t* flat, const uint8_t* compact,
                                               float* t0, float* t1, int64_t count, int64_t row_start,
                                               int64_t row_width) {
  int64_t matches = 0;
  int64_t pw = 0;
  for (; pw + 8 <= count; pw += 8) {
    const __m256 v = _mm256_loadu_ps(source + pw);
    const WindowMasks m = window_masks(flat, compact, pw, row_start, row_width);
    matches += matched_windows(m);
    const __m256 m0 = m.m0, m1 = m.m1, m2 = m.m2, m3 = m.m3;
    // Interleave (value or 0) for kw = 0 and kw = 1 into each target row.
    const __m256 a0 = _mm256_and_ps(v, m0), b0 = _mm256_and_ps(v, m1);
    const __m256 a1 = _mm256_and_ps(v, m2), b1 = _mm256_and_ps(v, m3);
    const __m256 lo0 = _mm256_unpacklo_ps(a0, b0), hi0 = _mm256_unpackhi_ps(a0, b0);
    const __m256 lo1 = _mm256_unpacklo_ps(a1, b1), hi1 = _mm256_unpackhi_ps(a1, b1);
    _mm256_storeu_ps(t0 + 2 * pw, _mm256_permute2f128_ps(lo0, hi0, 0x20));
    _mm256_storeu_ps(t0 + 2 * pw + 8, _mm256_permute2f128_ps(lo0, hi0, 0x31));
    _mm256_storeu_ps(t1 + 2 * pw, _mm256_permute2f128_ps(lo1, hi1, 0x20));
    _mm256_storeu_ps(t1 + 2 * pw + 8, _mm256_permute2f128_ps(lo1, hi1, 0x31));
  }
  for (; pw < count; ++pw) matches += max_unpool2x2_window(source, flat, compact, t0, t1, pw, row_start, row_width);
  return matches;
}

}  // namespace

const UnpoolCpuKernels* unpool_avx2_kernels() {
  static constexpr UnpoolCpuKernels avx2{&max_pool2x2_row_avx2, &max_unpool2x2_row_avx2,
                                         &max_unpool2x2_fill_row_avx2};
  return &avx2;
}

#else

const UnpoolCpuKernels* unpool_avx2_kernels() { return nullptr; }

#endif

}  // namespace pyvision_ops
