"""The tensor-core forward of csrc/attention/attention_mma_kernel.cu, run on the CPU.

The kernel has not run on a GPU. This file replays its algorithm step by step in Python: the same
tiles (4 warps x 16 query rows per block, key tiles of 64), the same register contents per lane
(which element of Q, K, P and V each lane puts into which fragment register, written with the
kernel's index expressions), an ``mma`` that assembles the 16 x 16, 16 x 8 and 16 x 8 matrices
from the lanes' registers by the PTX ISA's fragment layouts for ``mma.m16n8k16`` (.row.col,
16-bit inputs, float32 accumulators) and hands the product back the same way, the two shuffles
of the row maximum and of the row sum, and the 16-bit rounding of P. Its output, lse and stats
must match the float64 reference within 16-bit tolerances, for both 16-bit types, head dims 64
and 128, causal, a key-padding mask, lengths that are not multiples of the tiles and GQA.

What this cannot check: the PTX layouts themselves (taken from the ISA, not measured), shared
memory, synchronisation and the launch. The CUDA tests of test_attention.py run the kernel on a
GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from references.attention import reference_attention

LANES = torch.arange(32)
G, T = LANES // 4, LANES % 4
NEG_INF = float("-inf")


# Per lane, register and half: the (row, column) of the element it holds (PTX ISA layouts).
_PAIR = torch.arange(2)
_A_ROWS = torch.stack([G, G + 8, G, G + 8], 1)[:, :, None].expand(32, 4, 2)
_A_COLS = (torch.stack([2 * T, 2 * T, 2 * T + 8, 2 * T + 8], 1)[:, :, None] + _PAIR).expand(32, 4, 2)
_B_ROWS = torch.stack([2 * T, 2 * T + 8], 1)[:, :, None] + _PAIR  # k
_B_COLS = G[:, None, None].expand(32, 2, 2)  # n
_C_ROWS = torch.stack([G, G, G + 8, G + 8], 1)
_C_COLS = torch.stack([2 * T, 2 * T + 1, 2 * T, 2 * T + 1], 1)


def a_matrix(regs: torch.Tensor) -> torch.Tensor:
    """regs (32 lanes, 4 registers, 2 halves) -> the 16 x 16 A operand."""
    a = torch.zeros(16, 16, dtype=torch.float64)
    a[_A_ROWS, _A_COLS] = regs
    return a


def b_matrix(regs: torch.Tensor) -> torch.Tensor:
    """regs (32, 2, 2) -> the 16 x 8 B operand (k rows, n columns)."""
    b = torch.zeros(16, 8, dtype=torch.float64)
    b[_B_ROWS, _B_COLS] = regs
    return b


def mma(c: torch.Tensor, a_regs: torch.Tensor, b_regs: torch.Tensor) -> None:
    """c (32, 4) float32 accumulators += A B, by the C layout."""
    product = a_matrix(a_regs) @ b_matrix(b_regs)
    c += product[_C_ROWS, _C_COLS].float()


def shfl_xor_reduce(values: torch.Tensor, op) -> torch.Tensor:
    """__shfl_xor_sync over lane masks 1 and 2 (the 4 lanes of a group), as the kernel does."""
    for mask in (1, 2):
        values = op(values, values[LANES ^ mask])
    return values


def mask_term(mask, causal, b, h, i, j):
    if causal and j > i:
        return NEG_INF
    if mask is None:
        return 0.0
    return float(mask[b if mask.shape[0] > 1 else 0, h if mask.shape[1] > 1 else 0,
                      i if mask.shape[2] > 1 else 0, j if mask.shape[3] > 1 else 0])


def emulate(q, k, v, mask, causal, scale, half):
    """The kernel's forward for (B, Hq, L, D) 16-bit q and (B, Hkv, S, D) k, v."""
    B, Hq, L, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    group = Hq // Hkv
    out = torch.zeros(B, Hq, L, D)
    lse = torch.zeros(B, Hq, L)
    stats = torch.zeros(B, Hq, L, 2)
    for b in range(B):
        for h in range(Hq):
            kvh = h // group
            for i0 in range(0, L, 64):
                qs = torch.zeros(64, D, dtype=half)
                qs[:min(64, L - i0)] = q[b, h, i0:i0 + 64]
                last_query = min(i0 + 64, L) - 1
                keys = min(last_query + 1, S) if causal else S
                for warp in range(4):
                    r0 = warp * 16
                    o = torch.zeros(32, D // 8, 4)
                    m = torch.full((32, 2), NEG_INF)
                    l = torch.zeros(32, 2)
                    rows_i = torch.stack([i0 + r0 + G, i0 + r0 + G + 8], 1)
                    for j0 in range(0, keys, 64):
                        ks = torch.zeros(64, D, dtype=half)
                        vs = torch.zeros(64, D, dtype=half)
                        ks[:min(64, S - j0)] = k[b, kvh, j0:j0 + 64]
                        vs[:min(64, S - j0)] = v[b, kvh, j0:j0 + 64]
                        s = torch.zeros(32, 8, 4)
                        rows_times_rows_t(s, qs[r0:r0 + 16], ks)  # S = Q K^T, as mma_rows_times_rows_t
                        block_max = torch.full((32, 2), NEG_INF)
                        for lane in range(32):
                            t = int(T[lane])
                            for n in range(8):
                                for c in range(4):
                                    i, j = int(rows_i[lane, c // 2]), j0 + n * 8 + 2 * t + c % 2
                                    value = NEG_INF
                                    if j < S and i < L:
                                        term = mask_term(mask, causal, b, h, i, j)
                                        value = NEG_INF if term == NEG_INF else float(s[lane, n, c]) * scale + term
                                    s[lane, n, c] = value
                                    block_max[lane, c // 2] = max(block_max[lane, c // 2], value)
                        block_max = shfl_xor_reduce(block_max, torch.maximum)
                        factor = torch.ones(32, 2)
                        for lane in range(32):  # online_softmax_rescale (attention.h)
                            for r in range(2):
                                m_new = max(float(m[lane, r]), float(block_max[lane, r]))
                                if m_new == NEG_INF:
                                    continue
                                old = float(m[lane, r])
                                factor[lane, r] = 0.0 if old == NEG_INF else math.exp(old - m_new)
                                m[lane, r] = m_new
                        l *= factor
                        mm = m[:, None, [0, 0, 1, 1]]
                        w = torch.where((s == NEG_INF) | (mm == NEG_INF), torch.zeros(()), torch.exp(s - mm))
                        s = w
                        l += torch.stack([w[:, :, 0:2].sum((1, 2)), w[:, :, 2:4].sum((1, 2))], 1)
                        o *= factor[:, None, [0, 0, 1, 1]]
                        acc_times_rows(o, s, vs, half)  # O += P V, as mma_acc_times_rows
                    l = shfl_xor_reduce(l, torch.add)
                    for lane in range(32):
                        t = int(T[lane])
                        for r in range(2):
                            i = int(rows_i[lane, r])
                            if i >= L:
                                continue
                            total = float(l[lane, r])
                            inv = 1.0 / total if total > 0 else 0.0
                            for n in range(D // 8):
                                out[b, h, i, n * 8 + 2 * t] = o[lane, n, 2 * r] * inv
                                out[b, h, i, n * 8 + 2 * t + 1] = o[lane, n, 2 * r + 1] * inv
                            mr = float(m[lane, r])
                            lse[b, h, i] = mr + math.log(total) if total > 0 else NEG_INF
                            stats[b, h, i, 0] = mr
                            stats[b, h, i, 1] = math.log(total) if total > 0 else NEG_INF
    return out, lse, stats


CASES = [
    # name, B, Hq, Hkv, L, S, D, mask kind, causal
    ("plain_64", 1, 1, 1, 70, 130, 64, "none", False),
    ("causal_64", 1, 1, 1, 80, 80, 64, "none", True),
    ("pad_mask_128", 2, 1, 1, 20, 70, 128, "pad", False),
    ("gqa_64", 1, 2, 1, 17, 65, 64, "none", False),
]


@pytest.mark.slow
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mma_forward_emulation_matches_reference(case, half):
    name, B, Hq, Hkv, L, S, D, mask_kind, causal = case
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(B, Hq, L, D, generator=gen).to(half)
    k = torch.randn(B, Hkv, S, D, generator=gen).to(half)
    v = torch.randn(B, Hkv, S, D, generator=gen).to(half)
    mask = None
    if mask_kind == "pad":
        keep = torch.ones(B, 1, 1, S, dtype=torch.bool)
        keep[0, ..., S - 9:] = False
        keep[1, ..., :5] = False
        mask = torch.zeros(B, 1, 1, S).masked_fill(~keep, NEG_INF)
    scale = 1.0 / math.sqrt(D)
    out, lse, stats = emulate(q, k, v, mask, causal, scale, half)
    ref_out, ref_lse = reference_attention(q.double(), k.double(), v.double(), None if mask is None else mask.double(),
                                           0.0, causal, scale, Hq != Hkv, None)
    tol = 5e-3 if half == torch.float16 else 4e-2
    assert (out.double() - ref_out).abs().max() <= tol * ref_out.abs().max(), name
    assert torch.allclose(lse.double(), ref_lse, atol=1e-4, rtol=1e-5), name
    assert torch.allclose(stats[..., 0] + stats[..., 1], lse, atol=1e-5), name


# --- backward ---------------------------------------------------------------------------------
# attention_backward_kv_mma_kernel and attention_backward_q_mma_kernel, replayed with the same
# fragment helpers as the kernel (mma_rows_times_rows_t, mma_acc_times_rows) and the same tiles:
# 64 keys x query tiles of 32 for dK, dV (warp w: keys 16 w ..), 64 queries x key tiles of 64 for
# dQ (warp w: queries 16 w ..).

def rows_times_rows_t(acc: torch.Tensor, a_rows: torch.Tensor, x: torch.Tensor) -> None:
    """acc (32, NT, 4) += A X^T: A = 16 shared rows (a0..a3 adjacent pairs of rows g, g + 8),
    X^T's B registers = adjacent pairs of shared row x[n * 8 + g] (as mma_rows_times_rows_t)."""
    D = a_rows.shape[1]
    for kk in range(0, D, 16):
        a = a_rows.double()[_A_ROWS, kk + _A_COLS]
        for n in range(acc.shape[1]):
            bregs = x.double()[n * 8 + _B_COLS, kk + _B_ROWS]
            tile = acc[:, n, :].clone()
            mma(tile, a, bregs)
            acc[:, n, :] = tile


def acc_times_rows(acc: torch.Tensor, w: torch.Tensor, y: torch.Tensor, half) -> None:
    """acc (32, D / 8, 4) += W Y: W's A registers from accumulator tiles w[2 kc], w[2 kc + 1]
    rounded to the 16-bit type, Y's B registers = pairs of shared rows kc * 16 + 2t (+ 8), (+ 1)
    in column n * 8 + g (as mma_acc_times_rows)."""
    rnd = lambda x: x.to(half).double()  # noqa: E731
    for kc in range(w.shape[1] // 2):
        a = torch.zeros(32, 4, 2, dtype=torch.float64)
        a[:, 0] = rnd(w[:, 2 * kc, 0:2])
        a[:, 1] = rnd(w[:, 2 * kc, 2:4])
        a[:, 2] = rnd(w[:, 2 * kc + 1, 0:2])
        a[:, 3] = rnd(w[:, 2 * kc + 1, 2:4])
        for n in range(acc.shape[1]):
            bregs = y.double()[kc * 16 + _B_ROWS, n * 8 + _B_COLS]
            tile = acc[:, n, :].clone()
            mma(tile, a, bregs)
            acc[:, n, :] = tile


def full_mask_terms(mask, causal, B, Hq, L, S) -> torch.Tensor:
    """attention_mask_term for every (b, h, i, j), float32 (0, the mask's value or -inf)."""
    terms = torch.zeros(B, Hq, L, S)
    if mask is not None:
        terms = terms + mask.float()
    if causal:
        terms = terms.masked_fill(torch.ones(L, S, dtype=torch.bool).triu(1), NEG_INF)
    return terms


def row_weights(s, terms, m, log_l, scale):
    """P = exp((s scale + term - m) - log l), 0 where the term is -inf or the row is dead
    (mma_row_weight), in float32."""
    value = s * scale + terms
    w = torch.exp((value - m) - log_l)
    return torch.where((terms == NEG_INF) | (m == NEG_INF), torch.zeros(()), w)


def emulate_backward(q, k, v, go, mask, causal, scale, half, stats, delta):
    B, Hq, L, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    group = Hq // Hkv
    terms = full_mask_terms(mask, causal, B, Hq, L, S)
    dq = torch.zeros(B, Hq, L, D)
    dk = torch.zeros(B, Hkv, S, D)
    dv = torch.zeros(B, Hkv, S, D)

    def padded(src, start, rows):
        tile = torch.zeros(rows, D, dtype=half)
        part = src[start:start + rows]
        tile[:part.shape[0]] = part
        return tile

    # dK, dV: blocks of 64 keys, query tiles of 32.
    for b in range(B):
        for kvh in range(Hkv):
            for j0 in range(0, S, 64):
                ks, vs = padded(k[b, kvh], j0, 64), padded(v[b, kvh], j0, 64)
                first_query = (j0 // 32) * 32 if causal else 0
                for warp in range(4):
                    r0 = warp * 16
                    dk_acc = torch.zeros(32, D // 8, 4)
                    dv_acc = torch.zeros(32, D // 8, 4)
                    keys_j = torch.stack([j0 + r0 + G, j0 + r0 + G + 8], 1)  # (32, 2)
                    for h in range(kvh * group, (kvh + 1) * group):
                        for i0 in range(first_query, L, 32):
                            qs, gs = padded(q[b, h], i0, 32), padded(go[b, h], i0, 32)
                            s = torch.zeros(32, 4, 4)
                            dp = torch.zeros(32, 4, 4)
                            rows_times_rows_t(s, ks[r0:r0 + 16], qs)
                            rows_times_rows_t(dp, vs[r0:r0 + 16], gs)
                            # element (lane, n, c): key keys_j[lane, c // 2], query i0 + 8 n + 2 t + c % 2
                            qi = i0 + torch.arange(4)[None, :, None] * 8 + 2 * T[:, None, None] + torch.tensor([0, 1, 0, 1])
                            kj = keys_j[:, [0, 0, 1, 1]][:, None, :].expand(32, 4, 4)
                            valid = (qi < L) & (kj < S)
                            qc, kc = qi.clamp(max=L - 1), kj.clamp(max=S - 1)
                            term = torch.where(valid, terms[b, h, qc, kc], torch.full((), NEG_INF))
                            m = torch.where(valid, stats[b, h, qc, 0], torch.full((), NEG_INF))
                            log_l = torch.where(valid, stats[b, h, qc, 1], torch.zeros(()))
                            w = row_weights(s, term, m, log_l, scale)
                            d = torch.where(valid, delta[b, h, qc], torch.zeros(()))
                            ds = w * (dp - d) * scale
                            acc_times_rows(dv_acc, w, gs, half)
                            acc_times_rows(dk_acc, ds, qs, half)
                    for lane in range(32):
                        t = int(T[lane])
                        for r in range(2):
                            j = int(keys_j[lane, r])
                            if j >= S:
                                continue
                            for n in range(D // 8):
                                for c in range(2):
                                    dk[b, kvh, j, n * 8 + 2 * t + c] = dk_acc[lane, n, 2 * r + c]
                                    dv[b, kvh, j, n * 8 + 2 * t + c] = dv_acc[lane, n, 2 * r + c]

    # dQ: blocks of 64 queries, key tiles of 64.
    for b in range(B):
        for h in range(Hq):
            kvh = h // group
            for i0 in range(0, L, 64):
                qs, gs = padded(q[b, h], i0, 64), padded(go[b, h], i0, 64)
                last_query = min(i0 + 64, L) - 1
                keys = min(last_query + 1, S) if causal else S
                for warp in range(4):
                    r0 = warp * 16
                    rows_i = torch.stack([i0 + r0 + G, i0 + r0 + G + 8], 1)
                    dq_acc = torch.zeros(32, D // 8, 4)
                    for j0 in range(0, keys, 64):
                        ks, vs = padded(k[b, kvh], j0, 64), padded(v[b, kvh], j0, 64)
                        s = torch.zeros(32, 8, 4)
                        dp = torch.zeros(32, 8, 4)
                        rows_times_rows_t(s, qs[r0:r0 + 16], ks)
                        rows_times_rows_t(dp, gs[r0:r0 + 16], vs)
                        qi = rows_i[:, [0, 0, 1, 1]][:, None, :].expand(32, 8, 4)
                        kj = j0 + torch.arange(8)[None, :, None] * 8 + 2 * T[:, None, None] + torch.tensor([0, 1, 0, 1])
                        valid = (qi < L) & (kj < S)
                        qc, kc = qi.clamp(max=L - 1), kj.clamp(max=S - 1)
                        term = torch.where(valid, terms[b, h, qc, kc], torch.full((), NEG_INF))
                        m = torch.where(valid, stats[b, h, qc, 0], torch.full((), NEG_INF))
                        log_l = torch.where(valid, stats[b, h, qc, 1], torch.zeros(()))
                        w = row_weights(s, term, m, log_l, scale)
                        d = torch.where(valid, delta[b, h, qc], torch.zeros(()))
                        acc_times_rows(dq_acc, w * (dp - d) * scale, ks, half)
                    for lane in range(32):
                        t = int(T[lane])
                        for r in range(2):
                            i = int(rows_i[lane, r])
                            if i >= L:
                                continue
                            for n in range(D // 8):
                                for c in range(2):
                                    dq[b, h, i, n * 8 + 2 * t + c] = dq_acc[lane, n, 2 * r + c]
    return dq, dk, dv


BACKWARD_CASES = [
    # name, B, Hq, Hkv, L, S, D, mask kind, causal
    ("plain_64", 1, 1, 1, 70, 130, 64, "none", False),
    ("causal_64", 1, 1, 1, 80, 80, 64, "none", True),
    ("causal_gqa_short_keys_64", 1, 2, 1, 90, 40, 64, "none", True),
    ("pad_mask_dead_rows_128", 2, 1, 1, 20, 70, 128, "pad_dead", False),
]


@pytest.mark.slow
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("case", BACKWARD_CASES, ids=[c[0] for c in BACKWARD_CASES])
def test_mma_backward_emulation_matches_reference(case, half):
    """The two backward kernels on the emulated forward's stats (as the op feeds them: out rounded
    to the 16-bit type, delta = rowsum(dO O) in float32) against float64 autograd of the
    reference; a batch item whose keys are all masked has zero gradients."""
    name, B, Hq, Hkv, L, S, D, mask_kind, causal = case
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(B, Hq, L, D, generator=gen).to(half)
    k = torch.randn(B, Hkv, S, D, generator=gen).to(half)
    v = torch.randn(B, Hkv, S, D, generator=gen).to(half)
    go = torch.randn(B, Hq, L, D, generator=gen).to(half)
    mask = None
    if mask_kind == "pad_dead":
        keep = torch.ones(B, 1, 1, S, dtype=torch.bool)
        keep[0, ..., S - 9:] = False
        keep[1] = False  # every row of batch item 1 is fully masked
        mask = torch.zeros(B, 1, 1, S).masked_fill(~keep, NEG_INF)
    scale = 1.0 / math.sqrt(D)
    out, _, stats = emulate(q, k, v, mask, causal, scale, half)
    delta = (go.float() * out.to(half).float()).sum(-1)
    dq, dk, dv = emulate_backward(q, k, v, go, mask, causal, scale, half, stats, delta)

    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    ref_out, _ = reference_attention(*leaves, None if mask is None else mask.double(), 0.0, causal, scale,
                                     Hq != Hkv, None)
    ref = torch.autograd.grad(ref_out, leaves, go.double())
    tol = 1e-2 if half == torch.float16 else 6e-2
    for got, exp, what in zip((dq, dk, dv), ref, ("dq", "dk", "dv")):
        err = (got.double() - exp).abs().max().item()
        assert err <= tol * exp.abs().max().item(), f"{name} {what}: max error {err:.3g}, max {exp.abs().max():.3g}"
    if mask_kind == "pad_dead":
        assert torch.equal(dq[1], torch.zeros_like(dq[1])), "dead rows: dq"
        assert torch.equal(dk[1], torch.zeros_like(dk[1])) and torch.equal(dv[1], torch.zeros_like(dv[1]))
