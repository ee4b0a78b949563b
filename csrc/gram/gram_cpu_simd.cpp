// The packed AVX2 Gram kernels (gram_cpu_simd.h), compiled for AVX2 + FMA + F16C per function
// and reached through gram_cpu_kernels(); gram_finish_upper is portable. Nothing else here on
// other architectures.
#include "gram/gram_cpu_simd.h"

#include <algorithm>
#include <cstring>

#if PVO_X86
#include <immintrin.h>

#include "common/avx2_panel.h"
#endif

namespace pyvision_ops {

#if PVO_X86

namespace {

using avx2_panel::micro_kernel;
using avx2_panel::transpose8_store;
static_assert(avx2_panel::kRows == kGramPanel, "the shared panel height");

// --- widening loads -----------------------------------------------------------------------

template <GramSource S>
struct Source;

template <>
struct Source<GramSource::Float32> {
  using type = float;
  PVO_TARGET_AVX2 static inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
  static inline float load1(const float* p) { return *p; }
};

template <>
struct Source<GramSource::Float16> {
  using type = uint16_t;
  PVO_TARGET_AVX2 static inline __m256 load8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  PVO_TARGET_AVX2 static inline float load1(const uint16_t* p) { return _cvtsh_ss(*p); }
};

template <>
struct Source<GramSource::BFloat16> {
  using type = uint16_t;
  PVO_TARGET_AVX2 static inline __m256 load8(const uint16_t* p) {
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

template <typename T>
struct Geometry;  // panel width and micro-kernel rows per accumulation type
template <>
struct Geometry<float> {
  static constexpr int64_t kRows = 6;  // 16 = 6 + 6 + 4
};
template <>
struct Geometry<double> {
  static constexpr int64_t kRows = 4;  // 8 = 4 + 4
};

// --- packing ------------------------------------------------------------------------------

// Planar rows: each panel is a blocked 8x8 transpose of 16 rows; scalar for the last positions
// (kc % 8) and for a partial last panel (zero past C).
template <GramSource S>
PVO_TARGET_AVX2 void pack_planar(const typename Source<S>::type* src, int64_t C, int64_t L,
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
PVO_TARGET_AVX2 void pack_channels_last(const typename Source<S>::type* src, int64_t C,
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

// float64: 8-row panels (one cache line per position) through 4x4 transposes.
PVO_TARGET_AVX2 inline void transpose4_store(const __m256d r[4], double* dst) {
  const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
  const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
  constexpr int64_t P = kGramPanelOf<double>;
  _mm256_store_pd(dst + 0 * P, _mm256_permute2f128_pd(t0, t2, 0x20));
  _mm256_store_pd(dst + 1 * P, _mm256_permute2f128_pd(t1, t3, 0x20));
  _mm256_store_pd(dst + 2 * P, _mm256_permute2f128_pd(t0, t2, 0x31));
  _mm256_store_pd(dst + 3 * P, _mm256_permute2f128_pd(t1, t3, 0x31));
}

PVO_TARGET_AVX2 void pack_planar_f64(const double* src, int64_t C, int64_t L, int64_t l0,
                                                         int64_t kc, double* packed) {
  constexpr int64_t P = kGramPanelOf<double>;
  const int64_t panels = (C + P - 1) / P;
  const int64_t kc4 = kc - kc % 4;
  for (int64_t p = 0; p < panels; ++p) {
    double* dst = packed + p * kc * P;
    const int64_t r0 = p * P;
    int64_t k_done = 0;
    if (r0 + P <= C) {
      for (int64_t quarter = 0; quarter < 2; ++quarter) {
        const double* rows = src + (r0 + 4 * quarter) * L + l0;
        for (int64_t k = 0; k < kc4; k += 4) {
          __m256d r[4];
          for (int i = 0; i < 4; ++i) r[i] = _mm256_loadu_pd(rows + i * L + k);
          transpose4_store(r, dst + k * P + 4 * quarter);
        }
      }
      k_done = kc4;
    }
    for (int64_t k = k_done; k < kc; ++k) {
      for (int64_t r = 0; r < P; ++r) dst[k * P + r] = r0 + r < C ? src[(r0 + r) * L + l0 + k] : 0.0;
    }
  }
}

PVO_TARGET_AVX2 void pack_channels_last_f64(const double* src, int64_t C, int64_t l0, int64_t kc,
                                                                double* packed) {
  constexpr int64_t P = kGramPanelOf<double>;
  const int64_t panels = (C + P - 1) / P, full = C / P;
  for (int64_t k = 0; k < kc; ++k) {
    const double* row = src + (l0 + k) * C;
    for (int64_t p = 0; p < full; ++p) {
      double* dst = packed + (p * kc + k) * P;
      _mm256_store_pd(dst, _mm256_loadu_pd(row + p * P));
      _mm256_store_pd(dst + 4, _mm256_loadu_pd(row + p * P + 4));
    }
    if (full < panels) {
      double* dst = packed + (full * kc + k) * P;
      for (int64_t r = 0; r < P; ++r) dst[r] = full * P + r < C ? row[full * P + r] : 0.0;
    }
  }
}

// Packs rows [0, C) x positions [l0, l0 + kc) of a row-major C x L array (either type).
inline void pack_rows(const float* src, int64_t C, int64_t L, int64_t l0, int64_t kc, float* packed) {
  pack_planar<GramSource::Float32>(src, C, L, l0, kc, packed);
}
inline void pack_rows(const double* src, int64_t C, int64_t L, int64_t l0, int64_t kc, double* packed) {
  pack_planar_f64(src, C, L, l0, kc, packed);
}

// --- the micro-kernels --------------------------------------------------------------------

// float64: c[r * ldc + j] += sum_k a[k * 8 + r] * b[k * 8 + j] for r < 4, j < 8 (8 FMAs per
// position from 2 aligned loads and 4 broadcasts).
template <int MR, bool kAccumulate = true>
PVO_TARGET_AVX2 inline void micro_kernel_f64(const double* a, const double* b, int64_t kc,
                                                                 double* c, int64_t ldc) {
  static_assert(MR == 4, "micro-kernel rows");
  constexpr int64_t P = kGramPanelOf<double>;
  __m256d c00 = _mm256_setzero_pd(), c01 = _mm256_setzero_pd(), c10 = _mm256_setzero_pd(), c11 = _mm256_setzero_pd();
  __m256d c20 = _mm256_setzero_pd(), c21 = _mm256_setzero_pd(), c30 = _mm256_setzero_pd(), c31 = _mm256_setzero_pd();
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m256d b0 = _mm256_load_pd(b), b1 = _mm256_load_pd(b + 4);
    __m256d x = _mm256_broadcast_sd(a + 0);
    c00 = _mm256_fmadd_pd(x, b0, c00);
    c01 = _mm256_fmadd_pd(x, b1, c01);
    x = _mm256_broadcast_sd(a + 1);
    c10 = _mm256_fmadd_pd(x, b0, c10);
    c11 = _mm256_fmadd_pd(x, b1, c11);
    x = _mm256_broadcast_sd(a + 2);
    c20 = _mm256_fmadd_pd(x, b0, c20);
    c21 = _mm256_fmadd_pd(x, b1, c21);
    x = _mm256_broadcast_sd(a + 3);
    c30 = _mm256_fmadd_pd(x, b0, c30);
    c31 = _mm256_fmadd_pd(x, b1, c31);
    a += P;
    b += P;
  }
  const __m256d sums[4][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
  for (int r = 0; r < MR; ++r) {
    double* row = c + r * ldc;
    if constexpr (kAccumulate) {
      _mm256_storeu_pd(row, _mm256_add_pd(_mm256_loadu_pd(row), sums[r][0]));
      _mm256_storeu_pd(row + 4, _mm256_add_pd(_mm256_loadu_pd(row + 4), sums[r][1]));
    } else {
      _mm256_storeu_pd(row, sums[r][0]);
      _mm256_storeu_pd(row + 4, sums[r][1]);
    }
  }
}

// One micro-kernel call of `rows` rows (Geometry<T>::kRows, or the remainder of a panel).
template <bool kAccumulate>
inline void micro(const float* a, const float* b, int64_t kc, float* c, int64_t ldc, int64_t rows) {
  rows == 6 ? micro_kernel<6, kAccumulate>(a, b, kc, c, ldc) : micro_kernel<4, kAccumulate>(a, b, kc, c, ldc);
}
template <bool kAccumulate>
inline void micro(const double* a, const double* b, int64_t kc, double* c, int64_t ldc, int64_t) {
  micro_kernel_f64<4, kAccumulate>(a, b, kc, c, ldc);
}
template <typename T>
inline void micro(bool accumulate, const T* a, const T* b, int64_t kc, T* c, int64_t ldc, int64_t rows) {
  accumulate ? micro<true>(a, b, kc, c, ldc, rows) : micro<false>(a, b, kc, c, ldc, rows);
}

void pack_source(GramSource source, bool channels_last, const void* src, int64_t C, int64_t L, int64_t l0, int64_t kc,
                 float* packed) {
  switch (source) {
    case GramSource::Float32: return pack<GramSource::Float32>(channels_last, src, C, L, l0, kc, packed);
    case GramSource::Float16: return pack<GramSource::Float16>(channels_last, src, C, L, l0, kc, packed);
    case GramSource::BFloat16: return pack<GramSource::BFloat16>(channels_last, src, C, L, l0, kc, packed);
  }
}
void pack_source(bool channels_last, const double* src, int64_t C, int64_t L, int64_t l0, int64_t kc,
                 double* packed) {
  channels_last ? pack_channels_last_f64(src, C, l0, kc, packed) : pack_planar_f64(src, C, L, l0, kc, packed);
}

// Row panel outermost: its row slices stay in L1 while the column panels stream through from
// L2 (each column panel's cache lines are used whole).
template <typename T>
void panel_products(const T* packed, int64_t panels, int64_t kc, T* g, int64_t ldg, int64_t full_panels, T* edge) {
  constexpr int64_t P = kGramPanelOf<T>, kRows = Geometry<T>::kRows;
  const int64_t panel_size = kc * P;
  for (int64_t pa = 0; pa < panels; ++pa) {
    const T* a = packed + pa * panel_size;
    for (int64_t sub = 0; sub < P; sub += kRows) {
      const int64_t rows = std::min(kRows, P - sub);
      for (int64_t pb = pa; pb < panels; ++pb) {
        const T* b = packed + pb * panel_size;
        if (pb < full_panels) {
          micro<true>(a + sub, b, kc, g + (pa * P + sub) * ldg + pb * P, ldg, rows);
        } else {
          micro<true>(a + sub, b, kc, edge + (pa * P + sub) * P, P, rows);
        }
      }
    }
  }
}

template <typename T, typename Pack>
void packed_item(const Pack& pack_chunk, int64_t C, int64_t l_begin, int64_t l_end, int64_t kc, T* packed, T* edge,
                 T* g) {
  constexpr int64_t P = kGramPanelOf<T>;
  const int64_t panels = (C + P - 1) / P, full_panels = C / P;
  for (int64_t l0 = l_begin; l0 < l_end; l0 += kc) {
    const int64_t len = std::min(kc, l_end - l0);
    pack_chunk(l0, len, packed);
    panel_products(packed, panels, len, g, C, full_panels, edge);
  }
  // The blocks of the last, partial column panel were accumulated aside (P wide).
  const int64_t c_edge = full_panels * P;
  for (int64_t r = 0; r < C; ++r) {
    for (int64_t c = std::max(r, c_edge); c < C; ++c) g[r * C + c] = edge[r * P + (c - c_edge)];
  }
}

template <typename T>
void pack_symmetric(const T* sym, int64_t C, T* packed) {
  constexpr int64_t P = kGramPanelOf<T>;
  const int64_t panels = (C + P - 1) / P;
  for (int64_t p = 0; p < panels; ++p) {
    T* dst = packed + p * C * P;
    const int64_t c0 = p * P, width = std::min(P, C - c0);
    for (int64_t k = 0; k < C; ++k) {
      const T* row = sym + k * C + c0;  // = column k of rows c0.. (sym is symmetric)
      for (int64_t r = 0; r < width; ++r) dst[k * P + r] = row[r];
      for (int64_t r = width; r < P; ++r) dst[k * P + r] = T(0);
    }
  }
}

template <typename T>
void symmetric_product(const T* packed_sym, const T* f, int64_t C, int64_t L, int64_t strip_begin, int64_t strip_end,
                       T* strips, T* edge, T* out) {
  constexpr int64_t P = kGramPanelOf<T>, kRows = Geometry<T>::kRows;
  const int64_t panels = C / P;
  const int64_t strip_size = C * P;
  for (int64_t s0 = strip_begin; s0 < strip_end; s0 += kGramStripsPerPass) {
    const int64_t count = std::min(kGramStripsPerPass, strip_end - s0);
    const int64_t l_first = s0 * P;
    // Pack `count` strips: strip i holds positions l_first + P i .. + P - 1 of every row,
    // k-major (zero past L); each row of f is read as one contiguous run.
    for (int64_t k = 0; k < C; ++k) {
      const T* row = f + k * L;
      for (int64_t i = 0; i < count; ++i) {
        T* dst = strips + i * strip_size + k * P;
        const int64_t l0 = l_first + i * P;
        if (l0 + P <= L) {
          std::memcpy(dst, row + l0, P * sizeof(T));
        } else {
          for (int64_t j = 0; j < P; ++j) dst[j] = l0 + j < L ? row[l0 + j] : T(0);
        }
      }
    }
    // As in the forward: a row slice of an S panel stays in L1 while the strips stream through
    // from L2; the sum over channels runs in chunks of kGramProductChunk (the first stores, the
    // others accumulate). A ragged last strip goes to `edge` (C x P).
    bool ragged = false;
    for (int64_t k0 = 0; k0 < C; k0 += kGramProductChunk) {
      const int64_t kc = std::min(kGramProductChunk, C - k0);
      const bool accumulate = k0 > 0;
      for (int64_t pa = 0; pa < panels; ++pa) {
        const T* a = packed_sym + pa * strip_size + k0 * P;
        for (int64_t sub = 0; sub < P; sub += kRows) {
          const int64_t rows = std::min(kRows, P - sub), c0 = pa * P + sub;
          for (int64_t i = 0; i < count; ++i) {
            const T* b = strips + i * strip_size + k0 * P;
            const int64_t l0 = l_first + i * P;
            if (l0 + P <= L) {
              micro(accumulate, a + sub, b, kc, out + c0 * L + l0, L, rows);
            } else {
              micro(accumulate, a + sub, b, kc, edge + c0 * P, P, rows);
              ragged = true;
            }
          }
        }
      }
    }
    if (ragged) {
      const int64_t l0 = l_first + (count - 1) * P;
      for (int64_t r = 0; r < C; ++r) {
        for (int64_t j = 0; l0 + j < L; ++j) out[r * L + l0 + j] = edge[r * P + j];
      }
    }
  }
}

template <typename T>
void symmetric_product_channels_last(const T* packed_sym, const T* x, int64_t C, int64_t L, int64_t block_begin,
                                     int64_t block_end, T* panel, T* edge, T* out) {
  constexpr int64_t P = kGramPanelOf<T>, kRows = Geometry<T>::kRows;
  const int64_t panels = C / P;
  const int64_t panel_size = C * P;
  for (int64_t block = block_begin; block < block_end; ++block) {
    const int64_t l0 = block * P, rows = std::min(P, L - l0);
    // The block's P positions as one k-major panel (the forward's planar packing, with the
    // positions as rows and the channels as the packed dimension; zero past L).
    pack_rows(x + l0 * C, rows, C, 0, C, panel);
    // A slice of the position panel stays in L1 while S's panels stream through from L2; rows
    // past L go through `edge` (P x C), copied out below.
    for (int64_t k0 = 0; k0 < C; k0 += kGramProductChunk) {
      const int64_t kc = std::min(kGramProductChunk, C - k0);
      const bool accumulate = k0 > 0;
      for (int64_t sub = 0; sub < rows; sub += kRows) {
        const int64_t mr = std::min(kRows, P - sub);
        T* c_rows = sub + mr <= rows ? out + (l0 + sub) * C : edge + sub * C;
        for (int64_t pb = 0; pb < panels; ++pb) {
          micro(accumulate, panel + k0 * P + sub, packed_sym + pb * panel_size + k0 * P, kc, c_rows + pb * P, C, mr);
        }
      }
    }
    for (int64_t sub = 0; sub < rows; sub += kRows) {
      if (sub + std::min(kRows, P - sub) <= rows) continue;
      for (int64_t r = sub; r < rows; ++r) std::memcpy(out + (l0 + r) * C, edge + r * C, C * sizeof(T));
    }
  }
}

}  // namespace

void gram_packed_item_avx2(GramSource source, bool channels_last, const void* item, int64_t C, int64_t L,
                           int64_t l_begin, int64_t l_end, int64_t kc, float* packed, float* edge, float* g) {
  const auto pack_chunk = [&](int64_t l0, int64_t len, float* dst) {
    pack_source(source, channels_last, item, C, L, l0, len, dst);
  };
  packed_item(pack_chunk, C, l_begin, l_end, kc, packed, edge, g);
}

void gram_packed_item_avx2(bool channels_last, const double* item, int64_t C, int64_t L, int64_t l_begin,
                           int64_t l_end, int64_t kc, double* packed, double* edge, double* g) {
  const auto pack_chunk = [&](int64_t l0, int64_t len, double* dst) {
    pack_source(channels_last, item, C, L, l0, len, dst);
  };
  packed_item(pack_chunk, C, l_begin, l_end, kc, packed, edge, g);
}

void gram_pack_symmetric_avx2(const float* sym, int64_t C, float* packed) { pack_symmetric(sym, C, packed); }
void gram_pack_symmetric_avx2(const double* sym, int64_t C, double* packed) { pack_symmetric(sym, C, packed); }

void gram_symmetric_product_avx2(const float* packed_sym, const float* f, int64_t C, int64_t L, int64_t strip_begin,
                                 int64_t strip_end, float* strips, float* edge, float* out) {
  symmetric_product(packed_sym, f, C, L, strip_begin, strip_end, strips, edge, out);
}
void gram_symmetric_product_avx2(const double* packed_sym, const double* f, int64_t C, int64_t L, int64_t strip_begin,
                                 int64_t strip_end, double* strips, double* edge, double* out) {
  symmetric_product(packed_sym, f, C, L, strip_begin, strip_end, strips, edge, out);
}

void gram_symmetric_product_channels_last_avx2(const float* packed_sym, const float* x, int64_t C, int64_t L,
                                               int64_t block_begin, int64_t block_end, float* panel, float* edge,
                                               float* out) {
  symmetric_product_channels_last(packed_sym, x, C, L, block_begin, block_end, panel, edge, out);
}
void gram_symmetric_product_channels_last_avx2(const double* packed_sym, const double* x, int64_t C, int64_t L,
                                               int64_t block_begin, int64_t block_end, double* panel, double* edge,
                                               double* out) {
  symmetric_product_channels_last(packed_sym, x, C, L, block_begin, block_end, panel, edge, out);
}

const GramCpuKernels* gram_avx2_kernels() {
  static constexpr GramPackedKernels<float> f32{
      &gram_packed_item_avx2,
      static_cast<void (*)(const float*, int64_t, float*)>(&gram_pack_symmetric_avx2),
      static_cast<void (*)(const float*, const float*, int64_t, int64_t, int64_t, int64_t, float*, float*, float*)>(
          &gram_symmetric_product_avx2),
      static_cast<void (*)(const float*, const float*, int64_t, int64_t, int64_t, int64_t, float*, float*, float*)>(
          &gram_symmetric_product_channels_last_avx2)};
  static constexpr GramPackedKernels<double> f64{
      [](GramSource, bool channels_last, const void* item, int64_t C, int64_t L, int64_t l_begin, int64_t l_end,
         int64_t kc, double* packed, double* edge, double* g) {
        gram_packed_item_avx2(channels_last, static_cast<const double*>(item), C, L, l_begin, l_end, kc, packed, edge,
                              g);
      },
      static_cast<void (*)(const double*, int64_t, double*)>(&gram_pack_symmetric_avx2),
      static_cast<void (*)(const double*, const double*, int64_t, int64_t, int64_t, int64_t, double*, double*,
                           double*)>(&gram_symmetric_product_avx2),
      static_cast<void (*)(const double*, const double*, int64_t, int64_t, int64_t, int64_t, double*, double*,
                           double*)>(&gram_symmetric_product_channels_last_avx2)};
  static constexpr GramCpuKernels avx2{&f32, &f64};
  return &avx2;
}

#else

const GramCpuKernels* gram_avx2_kernels() { return nullptr; }

#endif

namespace {
template <typename T>
void finish_upper(T* g, const T* const* partials, int64_t extra, int64_t C, T scale) {
  constexpr int64_t B = 16;  // blocks of the mirror copy
  for (int64_t r0 = 0; r0 < C; r0 += B) {
    const int64_t r1 = std::min(C, r0 + B);
    for (int64_t c0 = r0; c0 < C; c0 += B) {
      const int64_t c1 = std::min(C, c0 + B);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = std::max(r, c0); c < c1; ++c) {
          T v = g[r * C + c];
          for (int64_t s = 0; s < extra; ++s) v += partials[s][r * C + c];
          v *= scale;
          g[r * C + c] = v;
          g[c * C + r] = v;
        }
      }
    }
  }
}
}  // namespace

void gram_finish_upper(float* g, const float* const* partials, int64_t extra, int64_t C, float scale) {
  finish_upper(g, partials, extra, C, scale);
}
void gram_finish_upper(double* g, const double* const* partials, int64_t extra, int64_t C, double scale) {
  finish_upper(g, partials, extra, C, scale);
}

}  // namespace pyvision_ops
