// The packed AVX2 Gram kernels and the Gram family's CPU kernel table. Torch-free. The table's
// AVX2 entries exist on x86 builds and are used when cpu_capability() allows AVX2 (which
// includes FMA and F16C); its portable entries are null: those CPUs run the portable tile loops
// of gram_cpu.cpp and the bmm backward.
//
// Layout: the features of one batch item, positions [l0, l0 + kc) of L, are packed into
// "panels" of P rows (P = 16 for float32 accumulation, 8 for float64: one cache line per
// position): panel p holds rows P p .. P p + P - 1 as packed[p][k][r], zero for rows past C. G's
// upper triangle is then a set of P x P blocks (pa, pb), pa <= pb, each the product of panel pa
// and panel pb over k: an outer-product micro-kernel (6 or 4 rows of panel pa broadcast, panel
// pb's P columns in two registers) accumulates it in registers. Packing once per chunk makes
// every load of the inner loop a full, aligned cache line; the triangle is ~half the
// multiply-adds of F F^T.
#pragma once

#include <cstdint>

#include "common/cpu_features.h"

namespace pyvision_ops {

// Rows per panel: one 64-byte cache line of the accumulation type.
template <typename T>
inline constexpr int64_t kGramPanelOf = int64_t{64} / static_cast<int64_t>(sizeof(T));
constexpr int64_t kGramPanel = kGramPanelOf<float>;  // 16

// Element types a float32 panel can be packed from (widened while packing).
enum class GramSource : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };


// One batch item, positions [l_begin, l_end) of L, in chunks of kc: packs each chunk into
// `packed` (panels * P * kc elements, 64-byte aligned) and accumulates the upper triangle into g
// (C x C, row stride C, zeroed by the caller); `edge` (panels * P * P elements, zeroed by the
// caller) collects the partial last column panel, copied into g at the end. Entries below the
// diagonal are left unspecified. planar: row c of the item starts at item + c * L (elements of
// the source type); channels-last: position l starts at item + l * C.
// The AVX2 kernels below are defined on x86 builds only; kernels reach them through the table.
void gram_packed_item_avx2(GramSource source, bool channels_last, const void* item, int64_t C, int64_t L,
                           int64_t l_begin, int64_t l_end, int64_t kc, float* packed, float* edge, float* g);
void gram_packed_item_avx2(bool channels_last, const double* item, int64_t C, int64_t L, int64_t l_begin,
                           int64_t l_end, int64_t kc, double* packed, double* edge, double* g);

// Adds the `extra` partial sums (C x C each, upper triangles) to g's upper triangle in order,
// scales it and mirrors it into the lower triangle, 16 x 16 blocks at a time. Portable.
void gram_finish_upper(float* g, const float* const* partials, int64_t extra, int64_t C, float scale);
void gram_finish_upper(double* g, const double* const* partials, int64_t extra, int64_t C, double scale);

// --- the backward product dF = S F for a symmetric S (C x C) and planar F (C x L) ------------
//
// The same micro-kernels with the roles changed: rows of dF from P-row panels of S (row k of S
// is column k of the panel's rows, since S is symmetric: contiguous copies), columns from
// "strips" of P positions of F (k-major, also contiguous copies); written straight into the
// fresh output. C must be a multiple of P (the caller falls back to bmm otherwise). For
// channels-last features the roles of the operands swap (dX = X S).
constexpr int64_t kGramStripsPerPass = 16;   // strips packed together
constexpr int64_t kGramProductChunk = 256;   // channels summed per micro-kernel call

// Packs S (C x C, row-major, symmetric) into C / P panels of C x P elements.
void gram_pack_symmetric_avx2(const float* sym, int64_t C, float* packed_sym);
void gram_pack_symmetric_avx2(const double* sym, int64_t C, double* packed_sym);

// out[c][l] = sum_k S[c][k] f[k][l] for the positions of strips [strip_begin, strip_end) (P
// positions each; the last may be ragged): f and out are C x L, row stride L. Scratch:
// `strips`, kGramStripsPerPass * C * P elements, 64-byte aligned; `edge`, C * P elements.
void gram_symmetric_product_avx2(const float* packed_sym, const float* f, int64_t C, int64_t L, int64_t strip_begin,
                                 int64_t strip_end, float* strips, float* edge, float* out);
void gram_symmetric_product_avx2(const double* packed_sym, const double* f, int64_t C, int64_t L, int64_t strip_begin,
                                 int64_t strip_end, double* strips, double* edge, double* out);

// Channels-last: out[l][c] = sum_k x[l][k] S[k][c] (x and out L x C, row stride C) for the
// P-position blocks [block_begin, block_end): each block is packed into one k-major panel
// (`panel`, C * P elements, 64-byte aligned) and multiplied by S's panels; rows past L go
// through `edge` (P * C elements).
void gram_symmetric_product_channels_last_avx2(const float* packed_sym, const float* x, int64_t C, int64_t L,
                                               int64_t block_begin, int64_t block_end, float* panel, float* edge,
                                               float* out);
void gram_symmetric_product_channels_last_avx2(const double* packed_sym, const double* x, int64_t C, int64_t L,
                                               int64_t block_begin, int64_t block_end, double* panel, double* edge,
                                               double* out);

// --- the family's kernel table ------------------------------------------------------------

// The packed kernels of one accumulation type T (float: float32/float16/bfloat16 sources;
// double: float64, whose `source` argument is ignored).
template <typename T>
struct GramPackedKernels {
  void (*pack_item)(GramSource source, bool channels_last, const void* item, int64_t C, int64_t L, int64_t l_begin,
                    int64_t l_end, int64_t kc, T* packed, T* edge, T* g);
  void (*pack_symmetric)(const T* sym, int64_t C, T* packed_sym);
  void (*symmetric_product)(const T* packed_sym, const T* f, int64_t C, int64_t L, int64_t strip_begin,
                            int64_t strip_end, T* strips, T* edge, T* out);
  void (*symmetric_product_channels_last)(const T* packed_sym, const T* x, int64_t C, int64_t L, int64_t block_begin,
                                          int64_t block_end, T* panel, T* edge, T* out);
};

struct GramCpuKernels {
  const GramPackedKernels<float>* packed_f32;   // null: no packed kernels (portable loops)
  const GramPackedKernels<double>* packed_f64;  // null: no packed kernels (portable loops)
};

// The AVX2 table (gram_cpu_simd.cpp), nullptr where the build has none.
const GramCpuKernels* gram_avx2_kernels();

// The table to use now (see common/cpu_features.h).
inline const GramCpuKernels& gram_cpu_kernels() {
  static constexpr GramCpuKernels portable{nullptr, nullptr};
  return select_cpu_kernels(portable, gram_avx2_kernels());
}

}  // namespace pyvision_ops
