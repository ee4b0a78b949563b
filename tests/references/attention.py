"""Independent float64 references of the ``attention`` op family (scaled dot-product attention).

``reference_attention`` is the textbook formula written out in float64 on the CPU:

    scores = (Q K^T) * scale            scale = 1/sqrt(E) unless given
    scores = where(mask, scores, -inf)  boolean mask (True = attend), or scores + mask (additive)
    scores = where(j <= i, scores, -inf) is_causal, top-left aligned (as PyTorch)
    lse    = logsumexp(scores, -1)      -inf for a fully masked row
    P      = softmax(scores, -1)        a fully masked row gives P = 0 (the contract; torch's
                                        kernels used to give NaN there)
    P      = P * keep / (1 - p)         dropout, when a keep mask is supplied
    out    = P V

Grouped-query heads repeat each key/value head Hq / Hkv times (query head h reads kv head
h // (Hq / Hkv)). 3-D inputs (B, L, E) are one head. Everything stays on the autograd graph: a
float64 CPU leaf passed in receives the exact gradient through PyTorch's autograd (and a fully
masked row has zero gradients, since P there is a constant 0).

``torch_sdpa_math`` is ``F.scaled_dot_product_attention`` forced onto its math backend in
float64, a second, independently written oracle against which the tests check this one.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "causal_mask",
    "philox4x32_10",
    "reference_attention",
    "reference_attention_weights",
    "reference_dropout_keep",
    "reference_scores",
    "torch_sdpa_math",
]


def _f64(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A float64 CPU copy that stays on the autograd graph (booleans stay boolean)."""
    if t is None:
        return None
    if t.dtype == torch.bool:
        return t.to(device="cpu")
    return t.to(device="cpu", dtype=torch.float64)


def causal_mask(L: int, S: int) -> torch.Tensor:
    """(L, S) boolean, True where key j is visible to query i (j <= i: top-left aligned)."""
    return torch.ones(L, S, dtype=torch.bool).tril()


def _as_4d(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(1) if t.dim() == 3 else t


def reference_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """The scaled, masked scores (B, Hq, L, S) in float64 (-inf where masked)."""
    q, k = _as_4d(_f64(query)), _as_4d(_f64(key))
    assert q.dim() == 4 and k.dim() == 4, "reference: 3-D or 4-D inputs"
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        assert enable_gqa and hq % hkv == 0, f"reference: Hq={hq}, Hkv={hkv}"
        k = k.repeat_interleave(hq // hkv, dim=1)
    E = q.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(E)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    L, S = scores.shape[-2], scores.shape[-1]
    if attn_mask is not None:
        m = _f64(attn_mask)
        if query.dim() == 3 and m.dim() == 3:  # (B, L, S) for a 3-D query: one head
            m = m.unsqueeze(1)
        if m.dtype == torch.bool:
            scores = scores.masked_fill(~m, float("-inf"))
        else:
            scores = scores + m
    if is_causal:
        scores = scores.masked_fill(~causal_mask(L, S), float("-inf"))
    return scores


def reference_attention_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(P, lse): the softmax weights (B, Hq, L, S) -- zeros on a fully masked row -- and the
    row log-sum-exp (B, Hq, L) of the scaled, masked scores (-inf on a fully masked row)."""
    scores = reference_scores(query, key, attn_mask, is_causal, scale, enable_gqa)
    lse = torch.logsumexp(scores, dim=-1)
    dead = torch.isneginf(scores).all(dim=-1, keepdim=True)  # also True for S == 0
    safe = scores.masked_fill(dead, 0.0)  # no -inf - -inf = NaN on the dead rows, nor in their gradient
    weights = torch.softmax(safe, dim=-1).masked_fill(dead, 0.0)
    return weights, lse


def reference_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    keep: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) in float64 on the CPU: out (B, Hq, L, Ev) (or (B, L, Ev) for 3-D inputs), lse
    (B, Hq, L) (or (B, L)). ``keep`` is a boolean keep mask broadcastable to (B, Hq, L, S): the
    weights are multiplied by keep / (1 - dropout_p). Without ``keep``, ``dropout_p`` must be 0
    (dropout is random; the tests recover the op's own mask and hand it in)."""
    assert keep is not None or dropout_p == 0.0, "reference: pass the keep mask to model dropout"
    weights, lse = reference_attention_weights(query, key, attn_mask, is_causal, scale, enable_gqa)
    v = _as_4d(_f64(value))
    hq, hkv = weights.shape[1], v.shape[1]
    if hq != hkv:
        v = v.repeat_interleave(hq // hkv, dim=1)
    if keep is not None:
        if dropout_p >= 1.0:
            weights = weights * 0.0
        else:
            weights = weights * keep.to(device="cpu", dtype=torch.float64) / (1.0 - dropout_p)
    out = torch.matmul(weights, v)
    if query.dim() == 3:
        out, lse = out.squeeze(1), lse.squeeze(1)
    return out, lse


def torch_sdpa_math(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` on its math backend, float64 on the CPU, no dropout."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, m = _f64(query), _f64(key), _f64(value), _f64(attn_mask)
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=m, dropout_p=0.0, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
        )


# --------------------------------------------------------------------------------------------
# the dropout mask: Philox4x32-10 as documented in csrc/attention/attention.h
# --------------------------------------------------------------------------------------------

_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def philox4x32_10(counter, key):
    """Philox4x32-10 (Salmon et al., SC 2011) on NumPy uint64 arrays holding 32-bit words:
    ``counter`` a tuple of four arrays, ``key`` a tuple of two; returns the four output words.
    Written from the paper (checked in the tests against Random123's known-answer vectors)."""
    import numpy as np

    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _MASK32 for c in counter)
    k0, k1 = (np.asarray(k, dtype=np.uint64) & _MASK32 for k in key)
    for _ in range(10):
        p0 = np.uint64(_PHILOX_M0) * c0  # < 2^64: no overflow
        p1 = np.uint64(_PHILOX_M1) * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & np.uint64(_MASK32)
        hi1, lo1 = p1 >> np.uint64(32), p1 & np.uint64(_MASK32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + np.uint64(_PHILOX_W0)) & np.uint64(_MASK32)
        k1 = (k1 + np.uint64(_PHILOX_W1)) & np.uint64(_MASK32)
    return c0, c1, c2, c3


def reference_dropout_keep(seed: int, B: int, H: int, L: int, S: int, p: float) -> torch.Tensor:
    """The documented keep mask (B, H, L, S) of a call with ``seed``: weight (i, j) of head (b, h)
    is kept when u >= p, u = (word >> 8) / 2^24 of Philox4x32-10 under key (seed low, seed high)
    at counter (j / 4 low, j / 4 high, row low, row high), row = (b H + h) L + i, word j % 4."""
    import numpy as np

    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    rows = np.arange(B * H * L, dtype=np.uint64)[:, None]
    quads = np.arange((S + 3) // 4, dtype=np.uint64)[None, :]
    rows, quads = np.broadcast_arrays(rows, quads)
    words = philox4x32_10(
        (quads & np.uint64(_MASK32), quads >> np.uint64(32), rows & np.uint64(_MASK32), rows >> np.uint64(32)),
        (np.uint64(seed & _MASK32), np.uint64(seed >> 32)),
    )
    lanes = np.stack(words, axis=-1).reshape(B * H * L, -1)[:, :S]  # key j = 4 quad + lane
    u = (lanes >> np.uint64(8)).astype(np.float64) / 16777216.0
    return torch.from_numpy(u >= p).reshape(B, H, L, S)
