#include "gram/gram_cpu_simd.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PVO_HAVE_GRAM_AVX2 1
#else
#define PVO_HAVE_GRAM_AVX2 0
#endif

namespace pyvision_ops {

#if PVO_HAVE_GRAM_AVX2

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

bool cpu_has_f16c() {
  static const bool has = __builtin_cpu_supports("f16c");
  return has;
}

namespace {

// --- widening loads -----------------------------------------------------------------------

template <GramSource S>
struct Source;

template <>
struct Source<GramSource::Float32> {
  using type = float;
  __attribute__((target("avx2,fma,f16c"))) static inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
  static inline float load1(const float* p) { return *p; }
};

template <>
struct Source<GramSource::Float16> {
  using type = uint16_t;
  __attribute__((target("avx2,fma,f16c"))) static inline __m256 load8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  __attribute__((target("avx2,fma,f16c"))) static inline float load1(const uint16_t* p) { return _cvtsh_ss(*p); }
};

template <>
struct Source<GramSource::BFloat16> {
  using type = uint16_t;
  __attribute__((target("avx2,fma,f16c"))) static inline __m256 load8(const uint16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static inline float load1(const uint16_t* p) {
    const uint32_t bits = static_cast<uint32_t>(*p) << 16;
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
  }
};

// --- packing ------------------------------------------------------------------------------

// Transposes the 8x8 block rows[i][0..7] and stores column j at dst + j * kGramPanel.
__attribute__((target("avx2,fma,f16c"))) inline void transpose8_store(const __m256 r[8], float* dst) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_store_ps(dst + 0 * kGramPanel, _mm256_permute2f128_ps(s0, s4, 0x20));
  _mm256_store_ps(dst + 1 * kGramPanel, _mm256_permute2f128_ps(s1, s5, 0x20));
  _mm256_store_ps(dst + 2 * kGramPanel, _mm256_permute2f128_ps(s2, s6, 0x20));
  _mm256_store_ps(dst + 3 * kGramPanel, _mm256_permute2f128_ps(s3, s7, 0x20));
  _mm256_store_ps(dst + 4 * kGramPanel, _mm256_permute2f128_ps(s0, s4, 0x31));
  _mm256_store_ps(dst + 5 * kGramPanel, _mm256_permute2f128_ps(s1, s5, 0x31));
  _mm256_store_ps(dst + 6 * kGramPanel, _mm256_permute2f128_ps(s2, s6, 0x31));
  _mm256_store_ps(dst + 7 * kGramPanel, _mm256_permute2f128_ps(s3, s7, 0x31));
}

// Planar rows: each panel is a blocked 8x8 transpose of 16 rows; scalar for the last positions
// (kc % 8) and for a partial last panel (zero past C).
template <GramSource S>
__attribute__((target("avx2,fma,f16c"))) void pack_planar(const typename Source<S>::type* src, int64_t C, int64_t L,
                                                          int64_t l0, int64_t kc, float* packed) {
  const int64_t panels = (C + kGramPanel - 1) / kGramPanel;
  const int64_t kc8 = kc - kc % 8;
  for (int64_t p = 0; p < panels; ++p) {
    float* dst = packed + p * kc * kGramPanel;
    const int64_t r0 = p * kGramPanel;
    int64_t k_done = 0;
    if (r0 + kGramPanel <= C) {
      for (int64_t half = 0; half < 2; ++half) {
        const typename Source<S>::type* rows = src + (r0 + 8 * half) * L + l0;
        for (int64_t k = 0; k < kc8; k += 8) {
          __m256 r[8];
          for (int i = 0; i < 8; ++i) r[i] = Source<S>::load8(rows + i * L + k);
          transpose8_store(r, dst + k * kGramPanel + 8 * half);
        }
      }
      k_done = kc8;
    }
    for (int64_t k = k_done; k < kc; ++k) {
      for (int64_t r = 0; r < kGramPanel; ++r) {
        dst[k * kGramPanel + r] = r0 + r < C ? Source<S>::load1(src + (r0 + r) * L + l0 + k) : 0.0f;
      }
    }
  }
}

// Channels-last: position l's C values are contiguous; each panel takes 16 of them.
template <GramSource S>
__attribute__((target("avx2,fma,f16c"))) void pack_channels_last(const typename Source<S>::type* src, int64_t C,
                                                                 int64_t l0, int64_t kc, float* packed) {
  const int64_t panels = (C + kGramPanel - 1) / kGramPanel;
  const int64_t full = C / kGramPanel;
  for (int64_t k = 0; k < kc; ++k) {
    const typename Source<S>::type* row = src + (l0 + k) * C;
    for (int64_t p = 0; p < full; ++p) {
      float* dst = packed + (p * kc + k) * kGramPanel;
      _mm256_store_ps(dst, Source<S>::load8(row + p * kGramPanel));
      _mm256_store_ps(dst + 8, Source<S>::load8(row + p * kGramPanel + 8));
    }
    if (full < panels) {
      float* dst = packed + (full * kc + k) * kGramPanel;
      for (int64_t r = 0; r < kGramPanel; ++r) {
        const int64_t c = full * kGramPanel + r;
        dst[r] = c < C ? Source<S>::load1(row + c) : 0.0f;
      }
    }
  }
}

template <GramSource S>
void pack(bool channels_last, const void* src, int64_t C, int64_t L, int64_t l0, int64_t kc, float* packed) {
  const auto* typed = static_cast<const typename Source<S>::type*>(src);
  channels_last ? pack_channels_last<S>(typed, C, l0, kc, packed) : pack_planar<S>(typed, C, L, l0, kc, packed);
}

// --- the micro-kernel ---------------------------------------------------------------------

// c[r * ldc + j] += sum_k a[k * 16 + r] * b[k * 16 + j] for r < MR, j < 16: MR broadcasts of the
// row panel and two aligned loads of the column panel feed 2 * MR FMAs per position.
template <int MR, bool kAccumulate = true>
__attribute__((target("avx2,fma"))) inline void micro_kernel(const float* a, const float* b, int64_t kc, float* c,
                                                             int64_t ldc) {
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
    a += kGramPanel;
    b += kGramPanel;
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

}  // namespace

void gram_pack_panels_avx2(GramSource source, bool channels_last, const void* src, int64_t C, int64_t L, int64_t l0,
                           int64_t kc, float* packed) {
  switch (source) {
    case GramSource::Float32: return pack<GramSource::Float32>(channels_last, src, C, L, l0, kc, packed);
    case GramSource::Float16: return pack<GramSource::Float16>(channels_last, src, C, L, l0, kc, packed);
    case GramSource::BFloat16: return pack<GramSource::BFloat16>(channels_last, src, C, L, l0, kc, packed);
  }
}

void gram_panel_products_avx2(const float* packed, int64_t panels, int64_t kc, float* g, int64_t ldg,
                              int64_t full_panels, float* edge) {
  const int64_t panel_size = kc * kGramPanel;
  // Row panel outermost: its 6- and 4-row slices stay in L1 while the column panels stream
  // through from L2 (each column panel's cache lines are used whole).
  for (int64_t pa = 0; pa < panels; ++pa) {
    const float* a = packed + pa * panel_size;
    for (int64_t sub = 0; sub < kGramPanel; sub += 6) {
      for (int64_t pb = pa; pb < panels; ++pb) {
        const float* b = packed + pb * panel_size;
        float* c;
        int64_t ldc;
        if (pb < full_panels) {
          c = g + (pa * kGramPanel + sub) * ldg + pb * kGramPanel;
          ldc = ldg;
        } else {
          c = edge + (pa * kGramPanel + sub) * kGramPanel;
          ldc = kGramPanel;
        }
        if (sub < 12) {
          micro_kernel<6>(a + sub, b, kc, c, ldc);
        } else {
          micro_kernel<4>(a + sub, b, kc, c, ldc);
        }
      }
    }
  }
}

void gram_packed_item_avx2(GramSource source, bool channels_last, const void* item, int64_t C, int64_t L,
                           int64_t l_begin, int64_t l_end, int64_t kc, float* packed, float* edge, float* g) {
  const int64_t panels = (C + kGramPanel - 1) / kGramPanel, full_panels = C / kGramPanel;
  for (int64_t l0 = l_begin; l0 < l_end; l0 += kc) {
    const int64_t len = std::min(kc, l_end - l0);
    gram_pack_panels_avx2(source, channels_last, item, C, L, l0, len, packed);
    gram_panel_products_avx2(packed, panels, len, g, C, full_panels, edge);
  }
  // The blocks of the last, partial column panel were accumulated aside (16 wide).
  const int64_t c_edge = full_panels * kGramPanel;
  for (int64_t r = 0; r < C; ++r) {
    for (int64_t c = std::max(r, c_edge); c < C; ++c) g[r * C + c] = edge[r * kGramPanel + (c - c_edge)];
  }
}

void gram_pack_symmetric_avx2(const float* sym, int64_t C, float* packed) {
  const int64_t panels = (C + kGramPanel - 1) / kGramPanel;
  for (int64_t p = 0; p < panels; ++p) {
    float* dst = packed + p * C * kGramPanel;
    const int64_t c0 = p * kGramPanel, width = std::min(kGramPanel, C - c0);
    for (int64_t k = 0; k < C; ++k) {
      const float* row = sym + k * C + c0;  // = column k of rows c0.. (sym is symmetric)
      for (int64_t r = 0; r < width; ++r) dst[k * kGramPanel + r] = row[r];
      for (int64_t r = width; r < kGramPanel; ++r) dst[k * kGramPanel + r] = 0.0f;
    }
  }
}

void gram_symmetric_product_avx2(const float* packed_sym, const float* f, int64_t C, int64_t L, int64_t strip_begin,
                                 int64_t strip_end, float* strips, float* edge, float* out) {
  const int64_t panels = C / kGramPanel;
  const int64_t strip_size = C * kGramPanel;
  for (int64_t s0 = strip_begin; s0 < strip_end; s0 += kGramStripsPerPass) {
    const int64_t count = std::min(kGramStripsPerPass, strip_end - s0);
    const int64_t l_first = s0 * kGramPanel;
    // Pack `count` strips: strip i holds positions l_first + 16 i .. + 15 of every row, k-major
    // (zero past L); each row of f is read as one contiguous run.
    for (int64_t k = 0; k < C; ++k) {
      const float* row = f + k * L;
      for (int64_t i = 0; i < count; ++i) {
        float* dst = strips + i * strip_size + k * kGramPanel;
        const int64_t l0 = l_first + i * kGramPanel;
        if (l0 + kGramPanel <= L) {
          std::memcpy(dst, row + l0, kGramPanel * sizeof(float));
        } else {
          for (int64_t j = 0; j < kGramPanel; ++j) dst[j] = l0 + j < L ? row[l0 + j] : 0.0f;
        }
      }
    }
    // As in the forward: a 6- or 4-row slice of an S panel stays in L1 while the strips stream
    // through from L2; the sum over channels runs in chunks of kGramProductChunk (the first
    // stores, the others accumulate). A ragged last strip goes to `edge` (C x 16).
    bool ragged = false;
    for (int64_t k0 = 0; k0 < C; k0 += kGramProductChunk) {
      const int64_t kc = std::min(kGramProductChunk, C - k0);
      const bool first = k0 == 0;
      for (int64_t pa = 0; pa < panels; ++pa) {
        const float* a = packed_sym + pa * strip_size + k0 * kGramPanel;
        for (int64_t sub = 0; sub < kGramPanel; sub += 6) {
          const int64_t c0 = pa * kGramPanel + sub;
          for (int64_t i = 0; i < count; ++i) {
            const float* b = strips + i * strip_size + k0 * kGramPanel;
            const int64_t l0 = l_first + i * kGramPanel;
            float* c = out + c0 * L + l0;
            int64_t ldc = L;
            if (l0 + kGramPanel > L) {
              c = edge + c0 * kGramPanel;
              ldc = kGramPanel;
              ragged = true;
            }
            if (sub < 12) {
              first ? micro_kernel<6, false>(a + sub, b, kc, c, ldc) : micro_kernel<6, true>(a + sub, b, kc, c, ldc);
            } else {
              first ? micro_kernel<4, false>(a + sub, b, kc, c, ldc) : micro_kernel<4, true>(a + sub, b, kc, c, ldc);
            }
          }
        }
      }
    }
    if (ragged) {
      const int64_t l0 = l_first + (count - 1) * kGramPanel;
      for (int64_t r = 0; r < C; ++r) {
        for (int64_t j = 0; l0 + j < L; ++j) out[r * L + l0 + j] = edge[r * kGramPanel + j];
      }
    }
  }
}

void gram_symmetric_product_channels_last_avx2(const float* packed_sym, const float* x, int64_t C, int64_t L,
                                               int64_t block_begin, int64_t block_end, float* panel, float* edge,
                                               float* out) {
  const int64_t panels = C / kGramPanel;
  const int64_t panel_size = C * kGramPanel;
  for (int64_t block = block_begin; block < block_end; ++block) {
    const int64_t l0 = block * kGramPanel, rows = std::min(kGramPanel, L - l0);
    // The block's 16 positions as one k-major panel (the forward's planar packing, with the
    // positions as rows and the channels as the packed dimension; zero past L).
    pack_planar<GramSource::Float32>(x + l0 * C, rows, C, 0, C, panel);
    // A slice of the position panel stays in L1 while S's panels stream through from L2.
    for (int64_t k0 = 0; k0 < C; k0 += kGramProductChunk) {
      const int64_t kc = std::min(kGramProductChunk, C - k0);
      const bool first = k0 == 0;
      for (int64_t sub = 0; sub < rows; sub += 6) {
        const int64_t mr = sub < 12 ? 6 : 4;
        // Rows past L go through `edge` (16 x C), copied out below.
        const bool whole = sub + mr <= rows;
        for (int64_t pb = 0; pb < panels; ++pb) {
          const float* a = panel + k0 * kGramPanel + sub;
          const float* b = packed_sym + pb * panel_size + k0 * kGramPanel;
          float* c = (whole ? out + (l0 + sub) * C : edge + sub * C) + pb * kGramPanel;
          if (mr == 6) {
            first ? micro_kernel<6, false>(a, b, kc, c, C) : micro_kernel<6, true>(a, b, kc, c, C);
          } else {
            first ? micro_kernel<4, false>(a, b, kc, c, C) : micro_kernel<4, true>(a, b, kc, c, C);
          }
        }
      }
    }
    for (int64_t sub = 0; sub < rows; sub += 6) {
      const int64_t mr = sub < 12 ? 6 : 4;
      if (sub + mr <= rows) continue;
      for (int64_t r = sub; r < rows; ++r) std::memcpy(out + (l0 + r) * C, edge + r * C, C * sizeof(float));
    }
  }
}

#else

bool cpu_has_avx2_fma() { return false; }
bool cpu_has_f16c() { return false; }
void gram_pack_panels_avx2(GramSource, bool, const void*, int64_t, int64_t, int64_t, int64_t, float*) {}
void gram_panel_products_avx2(const float*, int64_t, int64_t, float*, int64_t, int64_t, float*) {}
void gram_packed_item_avx2(GramSource, bool, const void*, int64_t, int64_t, int64_t, int64_t, int64_t, float*, float*,
                           float*) {}
void gram_pack_symmetric_avx2(const float*, int64_t, float*) {}
void gram_symmetric_product_avx2(const float*, const float*, int64_t, int64_t, int64_t, int64_t, float*, float*,
                                 float*) {}
void gram_symmetric_product_channels_last_avx2(const float*, const float*, int64_t, int64_t, int64_t, int64_t, float*,
                                               float*, float*) {}

#endif

void gram_finish_upper(float* g, const float* const* partials, int64_t extra, int64_t C, float scale) {
  for (int64_t r0 = 0; r0 < C; r0 += kGramPanel) {
    const int64_t r1 = std::min(C, r0 + kGramPanel);
    for (int64_t c0 = r0; c0 < C; c0 += kGramPanel) {
      const int64_t c1 = std::min(C, c0 + kGramPanel);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = std::max(r, c0); c < c1; ++c) {
          float v = g[r * C + c];
          for (int64_t s = 0; s < extra; ++s) v += partials[s][r * C + c];
          v *= scale;
          g[r * C + c] = v;
          g[c * C + r] = v;
        }
      }
    }
  }
}

}  // namespace pyvision_ops
