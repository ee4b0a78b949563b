// The attention family (fused scaled-dot-product attention): parameters, the masking rule, the
// online-softmax step and the dropout hash, shared by the CPU kernels (attention_cpu.cpp) and the
// CUDA kernels (attention_kernel.cu). Torch-free.
//
// Layouts (the glue makes them so): q (B, Hq, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev), out
// (B, Hq, L, Ev) contiguous in the compute dtype (float32, or float64 for float64 inputs); lse
// (B, Hq, L) the log-sum-exp of row i's scores, -inf for a fully masked row. Query head h reads
// kv head h / (Hq / Hkv) (grouped-query attention; Hq == Hkv without it). The mask, when there is
// one, is read through four element strides (b, h, i, j), 0 for a broadcast dim, so a (B, 1, 1, S)
// padding mask is never expanded in memory.
//
// Score of (i, j): s = scale * q_i . k_j, plus the float mask's value, or -inf where the boolean
// mask is false or (causal, top-left aligned as PyTorch) j > i. A row whose scores are all -inf
// has no weights: its output is 0, its lse -inf and its gradients 0 (never NaN).
//
// Dropout: weight (i, j) of head (b, h) is kept when the uniform number u(b, h, i, j) >= p and then
// scaled by 1 / (1 - p); u comes from Philox4x32-10 keyed by the call's 64-bit seed with the
// counter (j / 4, (b Hq + h) L + i), lane j % 4, so the forward, the backward and both devices
// draw the same mask. The softmax normaliser is that of the weights before dropout (as
// dropout(softmax(s)) in PyTorch).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace pyvision_ops {

enum class AttentionMask : int { None = 0, Bool = 1, Additive = 2 };

constexpr int64_t kAttentionMaxHeadDim = 256;

struct AttentionParams {
  int64_t batch = 0, heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, head_dim = 0, value_dim = 0;
  double scale = 1.0;
  bool causal = false;
  AttentionMask mask_kind = AttentionMask::None;
  const void* mask = nullptr;  // uint8 (bool) or the compute dtype (additive)
  int64_t mask_stride[4] = {0, 0, 0, 0};
  double dropout = 0.0;
  uint64_t seed = 0;

  PVO_HOST_DEVICE int64_t group() const { return heads / kv_heads; }
};

// exp and log of the compute type on either device.
template <typename T>
PVO_HOST_DEVICE inline T attention_exp(T v) {
#if defined(__CUDA_ARCH__)
  return exp(v);
#else
  return std::exp(v);
#endif
}

template <typename T>
PVO_HOST_DEVICE inline T attention_log(T v) {
#if defined(__CUDA_ARCH__)
  return log(v);
#else
  return std::log(v);
#endif
}

// The additive contribution of the mask and the causal rule to score (i, j) of head (b, h):
// 0, the float mask's value, or -inf.
template <typename Acc>
PVO_HOST_DEVICE inline Acc attention_mask_term(const AttentionParams& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (p.causal && j > i) return -INFINITY;
  if (p.mask_kind == AttentionMask::None) return Acc(0);
  const int64_t offset = b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2] + j * p.mask_stride[3];
  if (p.mask_kind == AttentionMask::Bool) {
    return static_cast<const uint8_t*>(p.mask)[offset] ? Acc(0) : Acc(-INFINITY);
  }
  return static_cast<const Acc*>(p.mask)[offset];
}

// The online-softmax step for one row: the running maximum m and sum l become those of the row
// so far plus a block whose maximum is block_max; returns the factor the running output (and l)
// must be multiplied by. A row that is still fully masked keeps m = -inf, l = 0, factor 1.
template <typename Acc>
PVO_HOST_DEVICE inline Acc online_softmax_rescale(Acc* m, Acc block_max) {
  const Acc m_new = *m > block_max ? *m : block_max;
  if (m_new == -INFINITY) return Acc(1);
  const Acc factor = *m == -INFINITY ? Acc(0) : attention_exp(*m - m_new);
  *m = m_new;
  return factor;
}

// exp(s - m) for a score against the row's running maximum (or, in the backward, its lse); 0 for
// a masked score or a fully masked row.
template <typename Acc>
PVO_HOST_DEVICE inline Acc softmax_weight(Acc s, Acc m) {
  return (s == -INFINITY || m == -INFINITY) ? Acc(0) : attention_exp(s - m);
}

// The row's output normaliser and lse from its final m and l.
template <typename Acc>
PVO_HOST_DEVICE inline Acc attention_row_lse(Acc m, Acc l) {
  return l > Acc(0) ? m + attention_log(l) : Acc(-INFINITY);
}

// --- dropout -----------------------------------------------------------------------------------

PVO_HOST_DEVICE inline uint32_t philox_mulhi(uint32_t a, uint32_t b, uint32_t* lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *lo = static_cast<uint32_t>(product);
  return static_cast<uint32_t>(product >> 32);
}

// Philox4x32-10 (Salmon et al., SC 2011): four 32-bit outputs of the counter c under key k.
PVO_HOST_DEVICE inline void philox4x32(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    uint32_t lo0, lo1;
    const uint32_t hi0 = philox_mulhi(0xD2511F53u, c[0], &lo0);
    const uint32_t hi1 = philox_mulhi(0xCD9E8D57u, c[2], &lo1);
    const uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// The four uniform numbers in [0, 1) (24-bit) of keys 4 q .. 4 q + 3 of row `row` ((b Hq + h) L + i).
PVO_HOST_DEVICE inline void dropout_uniforms(uint64_t seed, int64_t row, int64_t quad, float u[4]) {
  uint32_t c[4] = {static_cast<uint32_t>(quad), static_cast<uint32_t>(static_cast<uint64_t>(quad) >> 32),
                   static_cast<uint32_t>(row), static_cast<uint32_t>(static_cast<uint64_t>(row) >> 32)};
  philox4x32(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  for (int lane = 0; lane < 4; ++lane) u[lane] = static_cast<float>(c[lane] >> 8) * (1.0f / 16777216.0f);
}

// Whether weight (row, j) survives dropout with probability p (p = 0: always).
PVO_HOST_DEVICE inline bool dropout_keep(uint64_t seed, double p, int64_t row, int64_t j) {
  if (p <= 0.0) return true;
  float u[4];
  dropout_uniforms(seed, row, j / 4, u);
  return static_cast<double>(u[j % 4]) >= p;
}

}  // namespace pyvision_ops
