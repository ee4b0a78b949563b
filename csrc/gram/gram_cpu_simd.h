// The packed AVX2 Gram kernel (float32 accumulation). Torch-free; chosen at run time when the
// CPU reports AVX2 + FMA (+ F16C for float16 sources).
//
// Layout: the features of one batch item, positions [l0, l0 + kc) of L, are packed into
// "panels" of kGramPanel rows: panel p holds rows 16p .. 16p+15 as packed[p][k][r] (16 floats per
// position k, one cache line), zero for rows past C. G's upper triangle is then a set of 16x16
// blocks (pa, pb), pa <= pb, each the product of panel pa and panel pb over k: an outer-product
// micro-kernel (6 or 4 rows of panel pa broadcast, 16 columns of panel pb in two registers)
// accumulates it in registers. Packing once per chunk makes every load of the inner loop a full,
// aligned cache line; the triangle is ~half the multiply-adds of F F^T.
#pragma once

#include <cstdint>

namespace pyvision_ops {

constexpr int64_t kGramPanel = 16;

// Element types a panel can be packed from (widened to float32 while packing).
enum class GramSource : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

bool cpu_has_avx2_fma();
bool cpu_has_f16c();

// Packs positions [l0, l0 + kc) of every row into ceil(C / 16) panels at `packed` (64-byte
// aligned, panels * 16 * kc floats). planar: row c of the item starts at src + c * L (element
// offsets, elements of `source`); channels-last: position l starts at src + l * C.
void gram_pack_panels_avx2(GramSource source, bool channels_last, const void* src, int64_t C, int64_t L, int64_t l0,
                           int64_t kc, float* packed);

// For every block pa <= pb of the `panels` panels packed at `packed` (kc positions each):
// block += panel_pa x panel_pb^T, where block (pa, pb) is the 16x16 float array at
// blocks[pa][pb] = block_at(pa, pb): full blocks (pb < full_panels) live in G itself
// (g + 16 pa * ldg + 16 pb, row stride ldg); blocks of the last, partial panel in `edge`
// (edge + 256 pa, row stride 16). Entries below the diagonal of diagonal blocks are also
// written (the caller mirrors over them).
void gram_panel_products_avx2(const float* packed, int64_t panels, int64_t kc, float* g, int64_t ldg,
                              int64_t full_panels, float* edge);

// One batch item, positions [l_begin, l_end) of L, in chunks of kc: packs each chunk into
// `packed` (panels * 16 * kc floats, 64-byte aligned) and accumulates the upper triangle into g
// (C x C, row stride C, zeroed by the caller); `edge` (panels * 256 floats, zeroed by the
// caller) collects the partial last column panel, copied into g at the end. Entries below the
// diagonal are left unspecified.
void gram_packed_item_avx2(GramSource source, bool channels_last, const void* item, int64_t C, int64_t L,
                           int64_t l_begin, int64_t l_end, int64_t kc, float* packed, float* edge, float* g);

// Adds the `extra` partial sums (C x C each, upper triangles) to g's upper triangle in order,
// scales it and mirrors it into the lower triangle, 16 x 16 blocks at a time. Portable.
void gram_finish_upper(float* g, const float* const* partials, int64_t extra, int64_t C, float scale);

// --- the backward product dF = S F for a symmetric S (C x C) and planar F (C x L) ------------
//
// The same micro-kernel with the roles changed: rows of dF from 16-row panels of S (row k of S
// is column k of the panel's rows, since S is symmetric: contiguous copies), columns from
// "strips" of 16 positions of F (k-major, also contiguous copies); written straight into the
// fresh output. C must be a multiple of 16 (the caller falls back to bmm otherwise). For
// channels-last features the roles of the operands swap (dX = X S).
constexpr int64_t kGramStripsPerPass = 16;   // strips packed together: 256 positions of L
constexpr int64_t kGramProductChunk = 256;   // channels summed per micro-kernel call

// Packs S (C x C, row-major, symmetric) into C / 16 panels of C x 16 floats.
void gram_pack_symmetric_avx2(const float* sym, int64_t C, float* packed_sym);

// out[c][l] = sum_k S[c][k] f[k][l] for the positions of strips [strip_begin, strip_end) (16
// positions each; the last may be ragged): f and out are C x L, row stride L. Scratch:
// `strips`, kGramStripsPerPass * C * 16 floats, 64-byte aligned; `edge`, C * 16 floats.
void gram_symmetric_product_avx2(const float* packed_sym, const float* f, int64_t C, int64_t L, int64_t strip_begin,
                                 int64_t strip_end, float* strips, float* edge, float* out);

// Channels-last: out[l][c] = sum_k x[l][k] S[k][c] (x and out L x C, row stride C) for the
// 16-position blocks [block_begin, block_end): each block is packed into one k-major panel
// (`panel`, C * 16 floats, 64-byte aligned) and multiplied by S's panels; rows past L go
// through `edge` (16 * C floats).
void gram_symmetric_product_channels_last_avx2(const float* packed_sym, const float* x, int64_t C, int64_t L,
                                               int64_t block_begin, int64_t block_end, float* panel, float* edge,
                                               float* out);

}  // namespace pyvision_ops
