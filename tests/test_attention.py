"""Op family `attention`: scaled_dot_product_attention (and its two internal ops,
``_attention_forward`` -> (out, lse, stats) and ``_attention_backward`` -> (dq, dk, dv)).

Oracles (tests/references/attention.py): softmax(Q K^T * scale + mask) V written out in float64 on
the CPU with the contract's rule for a fully masked row (zeros, zero gradients, lse -inf); it is
itself checked here against ``F.scaled_dot_product_attention`` on its math backend in float64.
Gradients come from autograd through that float64 formula, and from gradcheck (float64, finite
differences) on the op itself. Dropout is checked without assuming the hash (reproducibility
under ``torch.manual_seed``, the keep fraction, the mean over many seeds, the mask recovered with
an identity value matrix and the backward held to that mask), and against a NumPy Philox4x32-10
written from the paper for the documented counter layout (csrc/attention/attention.h).

Tolerances: float64 within 1e-10 of the largest reference value (gradients 1e-9); float32
within 2e-5 (gradients 1e-4); on CUDA float32 2e-4, float16 5e-3 and bfloat16 4e-2 of the
reference computed on the same rounded inputs (gradients a few times that). Each registered op
passes the shared contract (tests/contract.py), bitwise: the kernels are deterministic. CUDA
cases are marked ``needs_cuda`` and skip without a GPU.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pyvision_ops
from conftest import DEVICES, ERRORS, assert_unchanged, expect_error, needs_cuda
from contract import BadInput, EmptyCase, OpContract, Sample, check_reads_any_upstream_layout
from references.attention import (
    causal_mask,
    philox4x32_10,
    reference_attention,
    reference_attention_weights,
    reference_dropout_keep,
    torch_sdpa_math,
)

ops = torch.ops.pyvision_ops
sdpa = pyvision_ops.scaled_dot_product_attention

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
GRAD_TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
CUDA_TOL = {torch.float32: 2e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}
CUDA_GRAD_TOL = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 1e-1}
CUDA_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def randn(*shape: int, dtype=torch.float64, device="cpu", scale: float = 1.0, requires_grad: bool = False) -> torch.Tensor:
    t = (torch.randn(*shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


def qkv(B, Hq, Hkv, L, S, E, Ev, dtype=torch.float64, device="cpu", requires_grad=True, scale=1.0):
    return (
        randn(B, Hq, L, E, dtype=dtype, device=device, scale=scale, requires_grad=requires_grad),
        randn(B, Hkv, S, E, dtype=dtype, device=device, scale=scale, requires_grad=requires_grad),
        randn(B, Hkv, S, Ev, dtype=dtype, device=device, requires_grad=requires_grad),
    )


def default_scale(q: torch.Tensor, scale: Optional[float]) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "", floor: float = 0.0) -> None:
    """|actual - expected| <= tol * (|expected| + max(max |expected|, floor)) everywhere, no NaN/inf
    (compared in float64 on the CPU). ``floor``: the magnitude of related results (a gradient that
    cancels to 0, as dq with one key, is held to the rounding of its neighbours)."""
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().cpu().to(torch.float64)
    e = expected.detach().cpu().to(torch.float64)
    assert bool(torch.isfinite(a).all()), f"{what}: non-finite values {a[~torch.isfinite(a)][:5].tolist()}"
    if a.numel() == 0:
        return
    scale = max(float(e.abs().max()), floor)
    err = (a - e).abs()
    bound = tol * (e.abs() + scale)
    bad = err > bound
    if bool(bad.any()):
        worst = int(torch.argmax(torch.where(bad, err - bound, torch.zeros_like(err))))
        index = tuple(int(i) for i in np.unravel_index(worst, tuple(a.shape)))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} entries off; worst at {index}: got {a.flatten()[worst].item()!r}, "
            f"expected {e.flatten()[worst].item()!r} (tol {tol}, scale {scale:.3g})"
        )


def assert_lse_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "lse") -> None:
    """-inf exactly where the reference is -inf, else within tol * (1 + max |expected|) (a score's
    rounding scales with the largest scores, not with the row's own lse)."""
    a = actual.detach().cpu().to(torch.float64)
    e = expected.detach().cpu().to(torch.float64)
    assert tuple(a.shape) == tuple(e.shape), f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    dead = torch.isneginf(e)
    assert torch.equal(torch.isneginf(a), dead), f"{what}: -inf at {torch.nonzero(torch.isneginf(a) != dead)[:5].tolist()}"
    assert not bool(torch.isnan(a).any()), f"{what}: NaN"
    live = ~dead
    if bool(live.any()):
        err = (a[live] - e[live]).abs() / (1 + float(e[live].abs().max()))
        assert float(err.max()) <= tol, f"{what}: off by {float(err.max()):.3g} (relative to the largest), tol {tol}"


def make_mask(kind: str, B: int, H: int, L: int, S: int, dtype=torch.float64, device="cpu") -> Optional[torch.Tensor]:
    """Masks of every kind the op accepts (bool True = attend, or additive floats)."""
    def bools(*shape):
        return torch.rand(*shape) < 0.7

    def floats(*shape):
        return torch.randn(*shape, dtype=torch.float64)

    if kind == "none":
        m = None
    elif kind == "bool":
        m = bools(B, H, L, S)
    elif kind == "float":
        m = floats(B, H, L, S)
    elif kind == "float_with_inf":  # additive with -inf entries (and a fully -inf row)
        m = floats(B, H, L, S).masked_fill(torch.rand(B, H, L, S) < 0.3, NEG_INF)
        m[0, 0, L // 2] = NEG_INF
    elif kind == "bool_LS":
        m = bools(L, S)
    elif kind == "float_LS":
        m = floats(L, S)
    elif kind == "bool_B1LS":
        m = bools(B, 1, L, S)
    elif kind == "float_1HLS":
        m = floats(1, H, L, S)
    elif kind == "bool_HLS":  # 3-D: broadcast over the batch from the right
        m = bools(H, L, S)
    elif kind == "bool_S":  # 1-D: one padding pattern for every row
        m = bools(S)
        m[0] = True
    elif kind == "pad_B11S":  # key padding: batch b attends to its first n_b keys
        lengths = torch.randint(1, S + 1, (B,))
        m = (torch.arange(S)[None, :] < lengths[:, None]).reshape(B, 1, 1, S)
    elif kind == "float_pad_B11S":
        lengths = torch.randint(1, S + 1, (B,))
        m = torch.zeros(B, 1, 1, S, dtype=torch.float64).masked_fill(torch.arange(S)[None, None, None, :] >= lengths.reshape(B, 1, 1, 1), NEG_INF)
    elif kind == "bool_B1L1":  # whole query rows masked: fully masked rows
        m = bools(B, 1, L, 1)
    elif kind == "bool_expanded":  # a stride-0 view
        m = bools(1, 1, L, S).expand(B, H, L, S)
    elif kind == "float_transposed":  # not contiguous
        m = floats(B, H, S, L).transpose(-1, -2)
    elif kind == "float_big_negative":  # old-style padding: -1e9 instead of -inf (finite)
        m = torch.zeros(B, 1, L, S, dtype=torch.float64).masked_fill(torch.rand(B, 1, L, S) < 0.4, -1e9)
        m[..., 0] = 0.0  # no row fully at -1e9: its float32 scores would lose every digit
    else:
        raise ValueError(kind)
    if m is None:
        return None
    if m.dtype != torch.bool:
        m = m.to(dtype)
    return m.to(device)


def run_op(q, k, v, mask=None, is_causal=False, scale=None, enable_gqa=False, grad=None, dropout_p=0.0):
    """The public function's output and (q, k, v) gradients for the upstream ``grad``."""
    out = sdpa(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    if grad is None:
        return out, None
    grads = torch.autograd.grad(out, (q, k, v), grad)
    return out, grads


def reference_and_grads(q, k, v, mask=None, is_causal=False, scale=None, enable_gqa=False, grad=None, keep=None, dropout_p=0.0):
    """The float64 reference (out, lse) and its (q, k, v) gradients for ``grad``."""
    leaves = [t.detach().cpu().double().requires_grad_(True) for t in (q, k, v)]
    out, lse = reference_attention(*leaves, mask, dropout_p, is_causal, scale, enable_gqa or q.shape[-3] != k.shape[-3], keep)
    grads = None
    if grad is not None:
        grads = torch.autograd.grad(out, leaves, grad.detach().cpu().double())
    return out.detach(), lse.detach(), grads


def check_case(q, k, v, mask, is_causal, scale, enable_gqa, tol, grad_tol, what=""):
    """Output, lse (for 4-D inputs) and the three gradients against the float64 reference."""
    g = torch.randn(*q.shape[:-1], v.shape[-1], dtype=torch.float64).to(device=q.device, dtype=q.dtype)
    out, grads = run_op(q, k, v, mask, is_causal, scale, enable_gqa, g)
    ref, ref_lse, ref_grads = reference_and_grads(q, k, v, mask, is_causal, scale, enable_gqa, g)
    assert out.dtype == q.dtype and out.device == q.device
    assert_close_scaled(out, ref, tol, f"{what} out")
    floor = max(float(e.abs().max()) if e.numel() else 0.0 for e in ref_grads)
    for name, got, exp, x in zip("qkv", grads, ref_grads, (q, k, v)):
        assert got.dtype == x.dtype and tuple(got.shape) == tuple(x.shape), f"d{name}: {got.dtype} {tuple(got.shape)}"
        assert_close_scaled(got, exp, grad_tol, f"{what} d{name}", floor)
    if q.dim() == 4:
        out2, lse, lse_stats = ops._attention_forward(q.detach(), k.detach(), v.detach(), mask, 0.0, is_causal, default_scale(q, scale), 0)
        assert lse.shape == ref_lse.shape and lse.device == q.device
        assert lse.dtype == (torch.float64 if q.dtype == torch.float64 else torch.float32), lse.dtype
        assert_lse_close(lse, ref_lse, 10 * tol)
        assert torch.equal(out2, out.detach()), "the internal op and the public function differ"


# --------------------------------------------------------------------------------------------
# the references themselves
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "B,Hq,Hkv,L,S,E,Ev,mask_kind,causal,scale",
    [
        (2, 4, 2, 7, 5, 8, 3, "none", False, None),
        (2, 2, 2, 9, 4, 16, 16, "none", True, 0.7),
        (2, 2, 1, 3, 11, 5, 6, "none", True, None),
        (2, 3, 3, 6, 8, 4, 4, "bool", False, None),
        (2, 3, 3, 6, 8, 4, 4, "float_with_inf", False, 1.3),
        (2, 3, 3, 6, 8, 4, 4, "pad_B11S", False, None),
    ],
)
def test_reference_matches_torch_math_backend(B, Hq, Hkv, L, S, E, Ev, mask_kind, causal, scale):
    """Our float64 reference and torch's math backend agree (values and gradients), also on
    fully masked rows (torch's math backend gives zeros there too since 2.5)."""
    q, k, v = qkv(B, Hq, Hkv, L, S, E, Ev)
    mask = make_mask(mask_kind, B, Hq, L, S)
    ours, _ = reference_attention(q, k, v, mask, 0.0, causal, scale, Hq != Hkv)
    theirs = torch_sdpa_math(q, k, v, mask, causal, scale, Hq != Hkv)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ours)
    a = torch.autograd.grad(ours, (q, k, v), g)
    b = torch.autograd.grad(theirs, (q, k, v), g)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-11)


def test_reference_philox_known_answers():
    """Random123's known-answer vectors for Philox4x32-10 (kat_vectors)."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for counter, key, expected in cases:
        assert tuple(int(w) for w in philox4x32_10(counter, key)) == expected


# --------------------------------------------------------------------------------------------
# values and gradients against the float64 reference (CPU)
# --------------------------------------------------------------------------------------------

# (id, B, Hq, Hkv, L, S, E, Ev, mask kind, is_causal, scale)
CASES = [
    ("plain", 2, 3, 3, 9, 11, 16, 16, "none", False, None),
    ("L1", 2, 2, 2, 1, 13, 8, 8, "none", False, None),
    ("L1-S1", 1, 2, 2, 1, 1, 8, 4, "none", False, None),
    ("S1", 1, 2, 2, 7, 1, 8, 8, "none", False, None),
    ("L7-S63", 1, 2, 2, 7, 63, 16, 8, "none", False, None),
    ("L63-S65", 1, 2, 2, 63, 65, 8, 8, "none", False, None),
    ("L65-S7", 1, 2, 2, 65, 7, 8, 16, "none", False, None),
    ("L130-S130", 1, 1, 1, 130, 130, 8, 8, "none", False, None),
    ("L64-S64", 1, 1, 1, 64, 64, 8, 8, "none", False, None),
    ("E40-Ev8", 2, 2, 2, 9, 10, 40, 8, "none", False, None),
    ("E8-Ev96", 2, 2, 2, 9, 10, 8, 96, "none", False, None),
    ("E3-Ev5", 2, 2, 2, 9, 10, 3, 5, "none", False, None),
    ("scale0.37", 2, 2, 2, 9, 10, 16, 16, "none", False, 0.37),
    ("scale3", 2, 2, 2, 9, 10, 16, 16, "none", False, 3.0),
    ("scale0", 2, 2, 2, 9, 10, 16, 16, "none", False, 0.0),
    ("scale-negative", 2, 2, 2, 9, 10, 16, 16, "none", False, -0.5),
    # masks
    ("bool", 2, 3, 3, 9, 11, 8, 8, "bool", False, None),
    ("float", 2, 3, 3, 9, 11, 8, 8, "float", False, None),
    ("float-with-inf", 2, 3, 3, 9, 11, 8, 8, "float_with_inf", False, None),
    ("bool-LS", 2, 3, 3, 9, 11, 8, 8, "bool_LS", False, None),
    ("float-LS", 2, 3, 3, 9, 11, 8, 8, "float_LS", False, None),
    ("bool-B1LS", 2, 3, 3, 9, 11, 8, 8, "bool_B1LS", False, None),
    ("float-1HLS", 2, 3, 3, 9, 11, 8, 8, "float_1HLS", False, None),
    ("bool-HLS", 2, 3, 3, 9, 11, 8, 8, "bool_HLS", False, None),
    ("bool-S", 2, 3, 3, 9, 11, 8, 8, "bool_S", False, None),
    ("pad-B11S", 3, 2, 2, 9, 70, 8, 8, "pad_B11S", False, None),
    ("float-pad-B11S", 3, 2, 2, 9, 70, 8, 8, "float_pad_B11S", False, None),
    ("bool-B1L1", 2, 2, 2, 9, 11, 8, 8, "bool_B1L1", False, None),
    ("bool-expanded", 2, 3, 3, 9, 11, 8, 8, "bool_expanded", False, None),
    ("float-transposed", 2, 3, 3, 9, 11, 8, 8, "float_transposed", False, None),
    ("float-big-negative", 2, 2, 2, 9, 11, 8, 8, "float_big_negative", False, None),
    ("bool-L130-S65", 1, 2, 2, 130, 65, 8, 8, "bool", False, None),
    ("float-L65-S130", 1, 2, 2, 65, 130, 8, 8, "float", False, 0.2),
    # causal (top-left aligned)
    ("causal", 2, 2, 2, 9, 9, 8, 8, "none", True, None),
    ("causal-L<S", 2, 2, 2, 5, 12, 8, 8, "none", True, None),
    ("causal-L>S", 2, 2, 2, 12, 5, 8, 8, "none", True, None),
    ("causal-L130-S65", 1, 2, 2, 130, 65, 8, 8, "none", True, None),
    ("causal-L65-S130", 1, 2, 2, 65, 130, 8, 8, "none", True, None),
    ("causal-L1", 2, 2, 2, 1, 9, 8, 8, "none", True, None),
    # grouped-query heads
    ("gqa-6-2", 2, 6, 2, 9, 11, 8, 8, "none", False, None),
    ("gqa-4-1", 2, 4, 1, 9, 11, 8, 4, "none", False, None),
    ("gqa-6-3-bool-1HLS", 2, 6, 3, 9, 11, 8, 8, "float_1HLS", False, None),
    ("gqa-4-2-causal-L130", 1, 4, 2, 130, 70, 8, 8, "none", True, None),
    ("gqa-4-2-pad", 2, 4, 2, 9, 11, 16, 8, "pad_B11S", False, None),
    # head dims 8..256
    ("E8", 1, 2, 2, 9, 10, 8, 8, "none", False, None),
    ("E16", 1, 2, 2, 9, 10, 16, 16, "none", False, None),
    ("E40", 1, 2, 2, 9, 10, 40, 40, "bool", False, None),
    ("E64", 1, 2, 2, 9, 10, 64, 64, "none", True, None),
    ("E96", 1, 2, 2, 9, 10, 96, 96, "none", False, None),
    ("E128", 1, 2, 2, 9, 10, 128, 128, "float", False, None),
    ("E256", 1, 2, 2, 9, 10, 256, 256, "none", False, None),
    ("E256-L70-S66", 1, 1, 1, 70, 66, 256, 256, "bool_LS", False, None),
    ("E256-Ev1", 1, 1, 1, 9, 10, 256, 1, "none", False, None),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_reference(case, dtype):
    name, B, Hq, Hkv, L, S, E, Ev, mask_kind, causal, scale = case
    q, k, v = qkv(B, Hq, Hkv, L, S, E, Ev, dtype=dtype)
    mask = make_mask(mask_kind, B, Hq, L, S, dtype=dtype)
    check_case(q, k, v, mask, causal, scale, Hq != Hkv, TOL[dtype], GRAD_TOL[dtype], name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("mask_kind", ["none", "bool_LS", "bool_B1LS", "float_pad_B11S"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_3d_inputs_match_reference(mask_kind, causal, dtype):
    """(B, L, E) inputs are one head; a 3-D mask is (B, L, S)."""
    if causal and mask_kind != "none":
        pytest.skip("a mask and is_causal cannot be given together")
    B, L, S, E, Ev = 3, 10, 12, 8, 5
    q = randn(B, L, E, dtype=dtype, requires_grad=True)
    k = randn(B, S, E, dtype=dtype, requires_grad=True)
    v = randn(B, S, Ev, dtype=dtype, requires_grad=True)
    mask = make_mask(mask_kind, B, 1, L, S, dtype=dtype)
    if mask is not None and mask.dim() == 4:
        mask = mask[:, 0]  # (B, L, S) / (B, 1, S)
    check_case(q, k, v, mask, causal, None, False, TOL[dtype], GRAD_TOL[dtype], f"3-D {mask_kind}")
    assert sdpa(q, k, v, attn_mask=mask, is_causal=causal).shape == (B, L, Ev)


def test_mask_of_another_float_dtype():
    """An additive float32 or float16 mask on float64 inputs (torch accepts it) is added as its
    values; a float64 mask on float32 inputs too."""
    B, H, L, S, E = 2, 2, 6, 7, 8
    q, k, v = qkv(B, H, H, L, S, E, E)
    for mdtype in (torch.float32, torch.float16):
        mask = torch.randn(B, H, L, S).to(mdtype)
        check_case(q, k, v, mask, False, None, False, TOL[torch.float64], GRAD_TOL[torch.float64], f"{mdtype} mask")
    q32, k32, v32 = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    check_case(q32, k32, v32, torch.randn(L, S, dtype=torch.float64), False, None, False, TOL[torch.float32], GRAD_TOL[torch.float32], "float64 mask")


def test_enable_gqa_with_equal_heads():
    q, k, v = qkv(2, 3, 3, 5, 6, 8, 8)
    check_case(q, k, v, None, False, None, True, TOL[torch.float64], GRAD_TOL[torch.float64], "gqa, Hq == Hkv")


def test_gqa_head_mapping():
    """Query head h reads kv head h // (Hq / Hkv): kv heads with distinct values show which."""
    B, Hq, Hkv, L, S, E = 1, 6, 3, 4, 5, 8
    q, k, _ = qkv(B, Hq, Hkv, L, S, E, 1, requires_grad=False)
    v = torch.arange(Hkv, dtype=torch.float64).reshape(1, Hkv, 1, 1).expand(B, Hkv, S, 1).contiguous()
    out = sdpa(q, k, v, enable_gqa=True)
    expected = (torch.arange(Hq) // (Hq // Hkv)).double().reshape(1, Hq, 1, 1).expand(B, Hq, L, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("order", ["increasing", "decreasing", "alternating", "gentle"])
def test_online_softmax_across_many_key_tiles(order, dtype):
    """S = 700 keys (11 tiles of 64) whose scores grow tile after tile (every tile raises the
    running maximum: each rescales what came before), shrink, or alternate, at logits up to ~500.
    "gentle" grows by ~3.6 per tile, below kLazyRescaleLimit (8): the lazily rescaled tiles then
    hold weights above 1 against an older maximum, every third tile or so redoing the step."""
    B, H, L, S, E = 1, 2, 3, 700, 8
    base = torch.arange(S, dtype=torch.float64) / S * (40.0 if order == "gentle" else 500.0)
    if order == "decreasing":
        base = base.flip(0)
    elif order == "alternating":
        base = torch.where((torch.arange(S) // 64) % 2 == 0, base, -base)
    q = torch.full((B, H, L, E), 1.0, dtype=torch.float64) + 0.1 * torch.randn(B, H, L, E, dtype=torch.float64)
    k = base.reshape(1, 1, S, 1).expand(B, H, S, E) * (math.sqrt(E) / E) + torch.randn(B, H, S, E, dtype=torch.float64)
    v = torch.randn(B, H, S, 5, dtype=torch.float64)
    q, k, v = (t.to(dtype).contiguous().requires_grad_(True) for t in (q, k, v))
    check_case(q, k, v, None, False, None, False, 10 * TOL[dtype], 10 * GRAD_TOL[dtype], order)


@pytest.mark.parametrize("order", ["increasing", "alternating"])
def test_float32_dq_at_large_logits(order):
    """float32 dq at logits up to ~500 (the inputs of test_online_softmax_across_many_key_tiles)
    within 1e-4 of its scale of the float64 gradient of the same float32 inputs. PyTorch's CPU
    SDPA errs by 2e-5 here, ours by 2e-5 to 3e-5; before the backward rounded s * scale - m as the
    forward does, ours erred by 8e-4 to 1.6e-3 (an error that grew with the square of the logits:
    the weights' rounding broke sum_j dS_j = 0, and dQ = dS K multiplied that by |k|)."""
    torch.manual_seed(0)
    B, H, L, S, E = 1, 2, 3, 700, 8
    base = torch.arange(S, dtype=torch.float64) / S * 500.0
    if order == "alternating":
        base = torch.where((torch.arange(S) // 64) % 2 == 0, base, -base)
    q = torch.full((B, H, L, E), 1.0, dtype=torch.float64) + 0.1 * torch.randn(B, H, L, E, dtype=torch.float64)
    k = base.reshape(1, 1, S, 1).expand(B, H, S, E) * (math.sqrt(E) / E) + torch.randn(B, H, S, E, dtype=torch.float64)
    v = torch.randn(B, H, S, 5, dtype=torch.float64)
    g = torch.randn(B, H, L, 5, dtype=torch.float64)
    q32, k32, v32 = (t.float() for t in (q, k, v))
    q64, k64, v64 = (t.double().requires_grad_(True) for t in (q32, k32, v32))
    (expected,) = torch.autograd.grad(F.scaled_dot_product_attention(q64, k64, v64), q64, g)
    errors = []
    for attention in (sdpa, F.scaled_dot_product_attention):
        a, b, c = (t.clone().requires_grad_(True) for t in (q32, k32, v32))
        (dq,) = torch.autograd.grad(attention(a, b, c), a, g.float())
        errors.append(float((dq.double() - expected).abs().max()) / float(expected.abs().max()))
    ours, torchs = errors
    assert ours <= 1e-4, f"dq error {ours:.2e} of its scale (PyTorch's: {torchs:.2e})"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_cpu_half_inputs_computed_in_float32(dtype):
    """The docstring: float16/bfloat16 on the CPU are computed in float32 (output in the input's
    dtype, lse float32)."""
    B, Hq, Hkv, L, S, E, Ev = 2, 4, 2, 70, 67, 16, 8
    q, k, v = qkv(B, Hq, Hkv, L, S, E, Ev, dtype=dtype)
    mask = make_mask("bool_B1LS", B, Hq, L, S)
    check_case(q, k, v, mask, False, None, True, CUDA_TOL[dtype], CUDA_GRAD_TOL[dtype], f"cpu {dtype}")


# --------------------------------------------------------------------------------------------
# fully masked rows, empty key sets, large logits, NaN
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["bool", "float_inf", "pad_whole_batch", "gqa_bool"])
def test_fully_masked_rows_give_zeros_and_zero_gradients(kind, dtype):
    B, Hq, Hkv, L, S, E, Ev = 2, 4, 2 if kind == "gqa_bool" else 4, 70, 67, 8, 6
    q, k, v = qkv(B, Hq, Hkv, L, S, E, Ev, dtype=dtype)
    dead = torch.zeros(B, Hq, L, dtype=torch.bool)
    if kind == "pad_whole_batch":  # batch 1 has no valid key at all
        mask = torch.ones(B, 1, 1, S, dtype=torch.bool)
        mask[1] = False
        dead[1] = True
    else:
        keep = torch.rand(B, Hq, L, S) < 0.6
        rows = [(0, 0, 0), (0, 1, 63), (0, 1, 64), (1, 3, 69), (1, 2, 5)]
        for b, h, i in rows:
            keep[b, h, i] = False
            dead[b, h, i] = True
        mask = keep if kind != "float_inf" else torch.zeros(B, Hq, L, S, dtype=dtype).masked_fill(~keep, NEG_INF)
    g = torch.randn(B, Hq, L, Ev, dtype=dtype)
    out, (dq, dk, dv) = run_op(q, k, v, mask, enable_gqa=Hq != Hkv, grad=g)
    for name, t in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert bool(torch.isfinite(t).all()), f"{name} has NaN/inf"
    assert bool((out[dead] == 0).all()), "a fully masked row is not zero"
    assert bool((dq[dead] == 0).all()), "a fully masked row has a query gradient"
    _, lse, lse_stats = ops._attention_forward(q.detach(), k.detach(), v.detach(), mask, 0.0, False, default_scale(q, None), 0)
    assert bool(torch.isneginf(lse[dead]).all()), f"lse of a fully masked row: {lse[dead][:4].tolist()}"
    assert bool(torch.isfinite(lse[~dead]).all())
    ref, ref_lse, ref_grads = reference_and_grads(q, k, v, mask, enable_gqa=Hq != Hkv, grad=g)
    assert_close_scaled(out, ref, TOL[dtype], "out")
    assert_lse_close(lse, ref_lse, 10 * TOL[dtype])
    for name, got, exp in zip(("dq", "dk", "dv"), (dq, dk, dv), ref_grads):
        assert_close_scaled(got, exp, GRAD_TOL[dtype], name)
    if kind == "pad_whole_batch":
        assert bool((dk[1] == 0).all()) and bool((dv[1] == 0).all()), "keys nobody sees got gradients"


def test_fully_masked_rows_gradcheck():
    B, H, L, S, E = 1, 2, 4, 5, 3
    q, k, v = qkv(B, H, H, L, S, E, 2)
    mask = torch.rand(B, H, L, S) < 0.6
    mask[0, 0, 1] = False
    mask[0, 1, 3] = False
    assert torch.autograd.gradcheck(lambda q, k, v: sdpa(q, k, v, attn_mask=mask), (q, k, v))
    fmask = torch.zeros(B, H, L, S, dtype=torch.float64).masked_fill(~mask, NEG_INF)
    assert torch.autograd.gradcheck(lambda q, k, v: sdpa(q, k, v, attn_mask=fmask), (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_empty_key_set_gives_zeros(dtype):
    """S = 0: every row is fully masked (zeros, lse -inf, zero query gradient)."""
    q = randn(2, 3, 5, 4, dtype=dtype, requires_grad=True)
    k = randn(2, 3, 0, 4, dtype=dtype, requires_grad=True)
    v = randn(2, 3, 0, 6, dtype=dtype, requires_grad=True)
    out = sdpa(q, k, v)
    assert out.shape == (2, 3, 5, 6) and bool((out == 0).all())
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert bool((dq == 0).all()) and dk.shape == k.shape and dv.shape == v.shape
    _, lse, lse_stats = ops._attention_forward(q.detach(), k.detach(), v.detach(), None, 0.0, False, 0.5, 0)
    assert bool(torch.isneginf(lse).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("mode", ["plain", "causal", "bool_mask", "additive_1e4"])
def test_large_logits_stay_finite_and_correct(mode, dtype):
    """scale * |q . k| ~ 1e4: the online softmax must subtract the running maximum."""
    B, H, L, S, E = 2, 2, 70, 67, 16
    q, k, v = qkv(B, H, H, L, S, E, 8, dtype=dtype, scale=100.0)  # q . k ~ 4e4, scale 1/4 -> ~1e4
    mask = None
    if mode == "bool_mask":
        mask = torch.rand(B, 1, L, S) < 0.5
    elif mode == "additive_1e4":
        mask = (torch.randn(L, S, dtype=torch.float64) * 1e4).to(dtype)
    g = torch.randn(B, H, L, 8, dtype=dtype)
    out, grads = run_op(q, k, v, mask, mode == "causal", None, False, g)
    ref, ref_lse, ref_grads = reference_and_grads(q, k, v, mask, mode == "causal", None, False, g)
    _, lse, lse_stats = ops._attention_forward(q.detach(), k.detach(), v.detach(), mask, 0.0, mode == "causal", 0.25, 0)
    # float32 scores carry ~1e4 * 2^-24 * sqrt(E) of rounding: near-tied rows may shift weight.
    tol = 1e-9 if dtype == torch.float64 else 2e-3
    assert float(ref_lse[torch.isfinite(ref_lse)].abs().max()) > 1e3, "the test lost its large logits"
    assert_close_scaled(out, ref, tol, "out")
    assert_lse_close(lse, ref_lse, 1e-12 if dtype == torch.float64 else 1e-6)
    floor = max(float(e.abs().max()) for e in ref_grads)  # dq, dk ~ 0 on one-hot rows: rounding of a cancellation
    for name, got, exp in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert bool(torch.isfinite(got).all()), f"{name} not finite"
        if dtype == torch.float64:
            assert_close_scaled(got, exp, 1e-8, name, floor)
    assert_close_scaled(grads[2], ref_grads[2], tol, "dv")  # dv = P^T dO: as stable as the output


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("where", ["key", "value", "query"])
def test_nan_propagates_as_in_torch(where, causal, dtype):
    """A NaN in key row j (or value row j) makes every output row that sees key j NaN (in the
    value's column), and a NaN in query row j makes output row j NaN, as
    F.scaled_dot_product_attention does on every backend (math and CPU flash) -- never a silently
    dropped key, a NaN turned into a large finite score or a NaN row taken for a fully masked one,
    on any CPU path (L, S > 64: whole 64 x 64 tiles that every row sees take the fused
    softmax-tile path). Left unspecified: rows that cannot see key j under causal masking (torch's
    math backend makes them NaN too)."""
    B, H, L, S, E = 1, 2, 70, 130, 16
    q, k, v = qkv(B, H, H, L, S, E, 8, dtype=dtype, requires_grad=False)
    j = 5
    {"key": k, "value": v, "query": q}[where][0, 1, j, 3] = float("nan")
    out = sdpa(q, k, v, is_causal=causal)
    expected = torch_sdpa_math(q, k, v, is_causal=causal)
    first = j if causal or where == "query" else 0
    rows = slice(j, j + 1) if where == "query" else slice(first, None)
    seeing = out[0, 1, rows, 3:4] if where == "value" else out[0, 1, rows]
    assert bool(torch.isnan(expected[0, 1, rows]).any(-1).all())  # torch
    assert bool(torch.isnan(seeing).all()), (
        f"rows {rows} see the NaN {where}: NaN rows "
        f"{torch.nonzero(torch.isnan(out[0, 1]).any(-1)).flatten().tolist()}"
    )
    assert bool(torch.isfinite(out[0, 0]).all()), "the NaN leaked into another head"
    if where == "query":
        others = torch.ones(L, dtype=torch.bool)
        others[j] = False
        assert bool(torch.isfinite(out[0, 1, others]).all()), "a NaN query leaked into other rows"


def test_row_masked_by_big_finite_values_is_the_plain_softmax():
    """float64: a row whose additive mask is -1e9 everywhere is not fully masked: softmax is
    shift-invariant, so it gives the unmasked row (to the 1e-7 the -1e9 leaves of the scores)."""
    B, H, L, S, E = 1, 2, 6, 9, 8
    q, k, v = qkv(B, H, H, L, S, E, 4)
    mask = torch.zeros(B, 1, L, S, dtype=torch.float64)
    mask[0, 0, 2] = -1e9
    g = torch.randn(B, H, L, 4, dtype=torch.float64)
    out, grads = run_op(q, k, v, mask, grad=g)
    ref, _, ref_grads = reference_and_grads(q, k, v, None, grad=g)
    assert_close_scaled(out, ref, 1e-6, "out")
    for name, a, e in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close_scaled(a, e, 1e-5, name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", [0.7, 0.0, -0.4])
@pytest.mark.parametrize("mask_kind,causal", [("none", False), ("none", True), ("float_LS", False),
                                              ("pad_B11S", False), ("float_transposed", False)])
def test_scale_sign_paths(dtype, scale, mask_kind, causal):
    """The forward folds a positive scale into the exp and takes the maximum of the raw scores
    (no mask, or a mask contiguous along the keys); zero and negative scales, and masks strided
    along the keys, scale first. Every combination over several key tiles (S = 150) against
    the float64 reference."""
    B, H, L, S, E, Ev = 2, 2, 70, 150, 16, 8
    q, k, v = qkv(B, H, H, L, S, E, Ev, dtype=dtype, scale=2.0)
    mask = make_mask(mask_kind, B, H, L, S)
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype)
    check_case(q, k, v, mask, causal, scale, False, TOL[dtype], GRAD_TOL[dtype], f"scale {scale} {mask_kind}")


# --------------------------------------------------------------------------------------------
# gradcheck (float64, finite differences on the op itself)
# --------------------------------------------------------------------------------------------

GRADCHECK_CASES = [
    ("plain", dict(), (1, 2, 2, 4, 5, 3, 2)),
    ("bool-mask", dict(mask="bool_B1LS"), (2, 2, 2, 3, 5, 3, 2)),
    ("float-mask", dict(mask="float_LS"), (1, 2, 2, 4, 5, 3, 2)),
    ("causal-L>S", dict(is_causal=True), (1, 2, 2, 6, 4, 3, 2)),
    ("causal-L<S", dict(is_causal=True), (1, 2, 2, 3, 6, 3, 2)),
    ("gqa", dict(enable_gqa=True), (1, 4, 2, 3, 4, 2, 3)),
    ("scale", dict(scale=0.8, mask="pad_B11S"), (2, 1, 1, 3, 5, 4, 2)),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=[c[0] for c in GRADCHECK_CASES])
def test_gradcheck(case):
    name, kw, (B, Hq, Hkv, L, S, E, Ev) = case
    q, k, v = qkv(B, Hq, Hkv, L, S, E, Ev)
    kw = dict(kw)
    mask = make_mask(kw.pop("mask", "none"), B, Hq, L, S)
    assert torch.autograd.gradcheck(lambda q, k, v: sdpa(q, k, v, attn_mask=mask, **kw), (q, k, v))


def test_gradcheck_3d():
    q, k, v = randn(2, 3, 4, requires_grad=True), randn(2, 5, 4, requires_grad=True), randn(2, 5, 3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: sdpa(q, k, v, is_causal=True), (q, k, v))


def test_float_mask_requiring_grad_gets_its_gradient_or_is_refused():
    """torch's SDPA differentiates an additive float mask (learned position biases, ALiBi-style):
    our op must either give the same gradient or refuse the mask -- never silently drop it."""
    B, H, L, S, E = 1, 2, 4, 5, 3
    q, k, v = qkv(B, H, H, L, S, E, 2)
    bias = torch.randn(1, H, L, S, dtype=torch.float64, requires_grad=True)
    try:
        out = sdpa(q, k, v, attn_mask=bias)
    except ERRORS:
        return  # refused: fine
    g = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, bias, g, allow_unused=True)
    ref = torch_sdpa_math(q, k, v, bias)
    (expected,) = torch.autograd.grad(ref, bias, g)
    assert got is not None, "the float mask requires grad but receives no gradient (torch gives one)"
    assert_close_scaled(got, expected, 1e-9, "d attn_mask")


def test_lse_gradient_is_correct_or_not_offered():
    """_attention_forward's lse is an output: either it does not require grad, or a gradient
    through it is the true one (d lse_i / d s_ij = P_ij)."""
    q, k, v = qkv(1, 2, 2, 4, 5, 3, 2)
    out, lse, lse_stats = ops._attention_forward(q, k, v, None, 0.0, False, 0.5, 0)
    if not lse.requires_grad:
        return
    g = torch.randn_like(lse)
    got = torch.autograd.grad(lse, (q, k), g)
    _, ref_lse = reference_attention(q, k, v, scale=0.5)
    expected = torch.autograd.grad(ref_lse, (q, k), g)
    for name, a, e in zip("qk", got, expected):
        assert_close_scaled(a, e, 1e-9, f"d{name} through lse")


# --------------------------------------------------------------------------------------------
# dropout
# --------------------------------------------------------------------------------------------


def with_seed(seed: int, fn):
    """fn() with torch's default generator seeded, restoring the generator afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 12345, 2**62 + 987654321], ids=["seed0", "seed12345", "seed2^62+"])
def test_dropout_mask_is_the_documented_philox_hash(seed, p):
    """The internal ops with an explicit seed drop exactly the weights of the documented hash
    (attention.h: Philox4x32-10, key = seed, counter = (j / 4, (b Hq + h) L + i), lane j % 4), in
    the forward and in the backward; GQA, tiles and a key count not a multiple of 4 included."""
    B, Hq, Hkv, L, S, E, Ev = 2, 4, 2, 67, 70, 8, 5
    q, k, v = qkv(B, Hq, Hkv, L, S, E, Ev, requires_grad=False)
    mask = make_mask("bool_B1LS", B, Hq, L, S)
    mask[1, 0, 66] = False  # a fully masked row: zeros with dropout too
    keep = reference_dropout_keep(seed, B, Hq, L, S, p)
    out, lse, lse_stats = ops._attention_forward(q, k, v, mask, p, False, 0.3, seed)
    g = torch.randn_like(out)
    dq, dk, dv = ops._attention_backward(g, q, k, v, mask, out, lse_stats, p, False, 0.3, seed, [True, True, True])
    assert bool((out[1, :, 66] == 0).all()) and bool((dq[1, :, 66] == 0).all())
    ref, ref_lse, ref_grads = reference_and_grads(q, k, v, mask, False, 0.3, True, g, keep=keep, dropout_p=p)
    assert_close_scaled(out, ref, 1e-10, "out")
    assert_lse_close(lse, ref_lse, 1e-12)  # the lse is that of the weights before dropout
    for name, got, exp in zip(("dq", "dk", "dv"), (dq, dk, dv), ref_grads):
        assert_close_scaled(got, exp, 1e-9, name)


def identity_value(B, H, S, dtype=torch.float64):
    return torch.eye(S, dtype=dtype).expand(B, H, S, S).contiguous()


@pytest.mark.parametrize("mode", ["plain", "bool_mask", "causal", "gqa"])
def test_dropout_mask_recovered_with_identity_value(mode):
    """With value = I (Ev = S), out = P * keep / (1 - p): the mask is visible. Kept weights are
    scaled by exactly 1/(1-p), masked weights stay 0, the keep fraction is 1-p (five standard
    deviations), the mask differs between heads, batches, rows and seeds, and the backward of the
    same seed follows the same mask."""
    p = 0.3
    B, Hq, L, S, E = 2, 4, 64, 64, 8
    Hkv = 2 if mode == "gqa" else Hq
    q, k, _ = qkv(B, Hq, Hkv, L, S, E, 1, requires_grad=False)
    mask = make_mask("bool", B, Hq, L, S) if mode == "bool_mask" else None
    causal = mode == "causal"
    eye = identity_value(B, Hkv, S)
    weights, _ = reference_attention_weights(q, k, mask, causal, None, mode == "gqa")
    out = with_seed(7, lambda: sdpa(q, k, eye, attn_mask=mask, dropout_p=p, is_causal=causal, enable_gqa=mode == "gqa"))
    visible = weights > 0
    assert bool(visible.any())
    keep = out != 0
    assert not bool((keep & ~visible).any()), "a masked weight survived dropout"
    torch.testing.assert_close(out[keep], (weights / (1 - p))[keep], rtol=1e-12, atol=0)
    n = int(visible.sum())
    fraction = float((keep & visible).sum()) / n
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(fraction - (1 - p)) < 5 * sigma, f"keep fraction {fraction:.4f}, expected {1 - p} +- {5 * sigma:.4f}"
    # independent draws: two heads, two batches, two rows agree on about p^2 + (1-p)^2 of positions
    agree = p * p + (1 - p) ** 2

    def assert_independent(x, y, both, what):
        same = float((x == y)[both].double().mean())
        bound = 5 * math.sqrt(agree * (1 - agree) / int(both.sum()))
        assert abs(same - agree) < bound, f"{what} share the mask ({same:.3f} agree, independent: {agree:.3f})"

    for a, b in (((0, 0), (0, 1)), ((0, 0), (1, 0))):
        assert_independent(keep[a], keep[b], visible[a] & visible[b], f"heads/batches {a} and {b}")
    assert_independent(keep[:, :, 1:], keep[:, :, :-1], visible[:, :, 1:] & visible[:, :, :-1], "consecutive rows")
    assert_independent(keep[..., 1:], keep[..., :-1], visible[..., 1:] & visible[..., :-1], "consecutive keys")
    other = with_seed(8, lambda: sdpa(q, k, eye, attn_mask=mask, dropout_p=p, is_causal=causal, enable_gqa=mode == "gqa"))
    assert not torch.equal(other != 0, keep), "another seed, the same mask"
    # the backward of the same seed on a random value follows this mask
    qg, kg = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    vg = randn(B, Hkv, S, 5, requires_grad=True)
    g = randn(B, Hq, L, 5)
    got_out, grads = with_seed(7, lambda: run_op(qg, kg, vg, mask, causal, None, mode == "gqa", g, dropout_p=p))
    ref, _, ref_grads = reference_and_grads(qg, kg, vg, mask, causal, None, mode == "gqa", g, keep=keep, dropout_p=p)
    assert_close_scaled(got_out, ref, 1e-10, "out with the recovered mask")
    for name, a, e in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close_scaled(a, e, 1e-9, f"{name} with the recovered mask")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_dropout_reproducible_under_manual_seed(dtype):
    q, k, v = qkv(2, 2, 2, 9, 11, 8, 8, dtype=dtype)
    g = torch.randn(2, 2, 9, 8, dtype=dtype)
    torch.manual_seed(3)
    a, ga = run_op(q, k, v, grad=g, dropout_p=0.4)
    torch.manual_seed(3)
    b, gb = run_op(q, k, v, grad=g, dropout_p=0.4)
    assert torch.equal(a, b), "the same seed gave another output"
    for x, y in zip(ga, gb):
        assert torch.equal(x, y), "the same seed gave another gradient"
    c, _ = run_op(q, k, v, dropout_p=0.4)  # the generator has moved on
    torch.manual_seed(4)
    d, _ = run_op(q, k, v, dropout_p=0.4)
    assert not torch.equal(a, c), "two calls in a row drew the same mask"
    assert not torch.equal(a, d), "another seed gave the same output"
    plain = sdpa(q, k, v)
    assert not torch.equal(a, plain), "dropout 0.4 changed nothing"


def test_dropout_zero_is_exactly_no_dropout():
    q, k, v = qkv(2, 2, 2, 9, 70, 8, 8, dtype=torch.float32)
    mask = make_mask("bool_B1LS", 2, 2, 9, 70)
    g = torch.randn(2, 2, 9, 8)
    a, ga = run_op(q, k, v, mask, grad=g)
    b, gb = run_op(q, k, v, mask, grad=g, dropout_p=0.0)
    assert torch.equal(a, b)
    for x, y in zip(ga, gb):
        assert torch.equal(x, y)
    out0, lse0, lse0_stats = ops._attention_forward(q.detach(), k.detach(), v.detach(), mask, 0.0, False, 0.3, 0)
    out1, lse1, lse1_stats = ops._attention_forward(q.detach(), k.detach(), v.detach(), mask, 0.0, False, 0.3, 987654)
    assert torch.equal(out0, out1) and torch.equal(lse0, lse1), "the seed matters without dropout"


def test_dropout_one_gives_zeros():
    q, k, v = qkv(2, 2, 2, 5, 6, 4, 4)
    out, grads = run_op(q, k, v, grad=torch.randn(2, 2, 5, 4), dropout_p=1.0)
    assert bool((out == 0).all())
    for g in grads:
        assert bool((g == 0).all()), "dropout 1 leaves a gradient (or NaN)"


def test_dropout_expectation_is_the_undropped_output():
    """E[out] over seeds = the output without dropout (kept weights scaled by 1/(1-p)): the mean
    of 400 draws within five standard errors, element by element."""
    p, n = 0.4, 400
    q, k, v = qkv(1, 2, 2, 8, 16, 8, 8, requires_grad=False)
    mask = make_mask("bool_LS", 1, 2, 8, 16)
    mask[:, 0] = True
    draws = torch.stack([with_seed(100 + s, lambda: sdpa(q, k, v, attn_mask=mask, dropout_p=p)) for s in range(n)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(n)
    ref = sdpa(q, k, v, attn_mask=mask)
    err = (mean - ref).abs()
    assert bool((err <= 5 * se + 1e-12).all()), f"mean off by {float((err / se).max()):.1f} standard errors"
    # not a vacuous check: without the 1/(1-p) rescaling the mean would be (1-p) ref
    assert float(((1 - p) * ref - mean).abs().max()) > 5 * float(se.max())


def test_dropout_gradcheck_with_fixed_seed():
    """Finite differences of the forward (each call reseeded: the same mask) against the
    backward, which regenerates the mask from the saved seed."""
    q, k, v = qkv(1, 2, 2, 4, 6, 3, 2)
    mask = make_mask("bool_B1LS", 1, 2, 4, 6)

    def f(q, k, v):
        return with_seed(11, lambda: sdpa(q, k, v, attn_mask=mask, dropout_p=0.35))

    assert not torch.equal(f(q, k, v), sdpa(q, k, v, attn_mask=mask)), "no weight was dropped"
    assert torch.autograd.gradcheck(f, (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: with_seed(5, lambda: sdpa(q, k, v, dropout_p=0.5, is_causal=True)), (q, k, v))


def test_dropout_out_of_range_rejected():
    q, k, v = qkv(1, 1, 1, 3, 4, 2, 2, requires_grad=False)
    for bad in (-0.1, 1.5, float("nan"), float("inf")):
        expect_error(lambda: sdpa(q, k, v, dropout_p=bad), [q, k, v], "dropout")


# --------------------------------------------------------------------------------------------
# layouts, inputs left alone, determinism
# --------------------------------------------------------------------------------------------


def test_non_contiguous_inputs_match_contiguous():
    """(B, L, H, E) -> (B, H, L, E) transposed views (what MultiheadAttention produces), a
    stride-0 head expansion, sliced last dims and storage offsets: the same bits as dense copies."""
    B, H, L, S, E, Ev = 2, 3, 9, 70, 8, 6
    q = randn(B, L, H, E).transpose(1, 2).requires_grad_(True)
    k = randn(B, 1, S, E).expand(B, H, S, E).requires_grad_(True)
    v = randn(B, H, S, 2 * Ev)[..., ::2].requires_grad_(True)
    mask = (torch.rand(B, 1, S + 2, L) < 0.7)[:, :, 1 : S + 1].transpose(-1, -2)  # offset + transposed
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous() or mask.is_contiguous())
    g = randn(B, H, L, Ev)
    out, grads = run_op(q, k, v, mask, grad=g)
    dense = [t.detach().contiguous().requires_grad_(True) for t in (q, k, v)]
    out2, grads2 = run_op(*dense, mask.contiguous(), grad=g)
    assert torch.equal(out, out2)
    for a, b in zip(grads, grads2):
        assert torch.equal(a, b)
    ref, _, ref_grads = reference_and_grads(q, k, v, mask, grad=g)
    assert_close_scaled(out, ref, 1e-10, "out")
    for name, a, e in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close_scaled(a, e, 1e-9, name)


def test_multihead_layout_float32():
    """float32 (B, L, H, E) views, causal, against the reference."""
    B, H, L, E = 2, 4, 33, 16
    q, k, v = (randn(B, L, H, E, dtype=torch.float32).transpose(1, 2).requires_grad_(True) for _ in range(3))
    check_case(q, k, v, None, True, None, False, TOL[torch.float32], GRAD_TOL[torch.float32], "transposed float32")


@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_inputs_not_modified(dropout_p):
    B, Hq, Hkv, L, S, E, Ev = 2, 4, 2, 9, 70, 8, 6
    q, k, v = qkv(B, Hq, Hkv, L, S, E, Ev, dtype=torch.float32)
    mask = make_mask("float_1HLS", B, Hq, L, S, dtype=torch.float32)
    g = torch.randn(B, Hq, L, Ev)
    before = [t.detach().clone() for t in (q, k, v, mask, g)]
    out, _ = run_op(q, k, v, mask, enable_gqa=True, grad=g, dropout_p=dropout_p)
    for b, t in zip(before, (q, k, v, mask, g)):
        assert_unchanged(b, t.detach())
    out, lse, lse_stats = ops._attention_forward(q.detach(), k.detach(), v.detach(), mask, dropout_p, False, 0.3, 5)
    kept = [out.clone(), lse.clone()]
    ops._attention_backward(g, q.detach(), k.detach(), v.detach(), mask, out, lse_stats, dropout_p, False, 0.3, 5, [True, True, True])
    for b, t in zip(before + kept, (q, k, v, mask, g, out, lse)):
        assert_unchanged(b, t.detach())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_deterministic_and_independent_of_thread_count(dtype):
    """The backward adds in a fixed order: the same bits on 1 and 2 threads, run after run."""
    B, Hq, Hkv, L, S, E, Ev = 2, 4, 2, 130, 131, 16, 8
    q, k, v = qkv(B, Hq, Hkv, L, S, E, Ev, dtype=dtype)
    mask = make_mask("float_1HLS", B, Hq, L, S, dtype=dtype)
    g = torch.randn(B, Hq, L, Ev, dtype=dtype)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            results.append(with_seed(9, lambda: run_op(q, k, v, mask, False, None, True, g, dropout_p=0.2)))
    finally:
        torch.set_num_threads(threads)
    (a, ga), *rest = results
    for b, gb in rest:
        assert torch.equal(a, b)
        for x, y in zip(ga, gb):
            assert torch.equal(x, y), "gradients depend on the thread count or the run"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("mode", ["plain", "causal", "float_pad_B11S", "gqa_bool", "dropout"])
def test_backward_schedules_give_the_same_bits(mode, dtype):
    """One (batch, kv head) pair: on 1 thread the backward runs its one-pass schedule, on 2 and 4
    threads the two-pass one (dK, dV over key tiles, then dQ over query tiles). Both give the same
    bits, and the reference's gradients."""
    Hq, Hkv = (4, 1) if mode == "gqa_bool" else (1, 1)
    L, S, E, Ev = 200, 197, 16, 12  # several query and key tiles, neither a multiple of 64
    q, k, v = qkv(1, Hq, Hkv, L, S, E, Ev, dtype=dtype)
    mask = {"float_pad_B11S": lambda: make_mask("float_pad_B11S", 1, Hq, L, S, dtype=dtype),
            "gqa_bool": lambda: make_mask("bool", 1, Hq, L, S)}.get(mode, lambda: None)()
    causal, dropout_p = mode == "causal", 0.3 if mode == "dropout" else 0.0
    g = torch.randn(1, Hq, L, Ev, dtype=dtype)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            results.append(with_seed(5, lambda: run_op(q, k, v, mask, causal, None, Hq != Hkv, g, dropout_p)))
    finally:
        torch.set_num_threads(threads)
    (out, grads), *rest = results
    for other_out, other_grads in rest:
        assert torch.equal(out, other_out)
        for a, b in zip(grads, other_grads):
            assert torch.equal(a, b), "the two backward schedules differ"
    if dropout_p == 0.0:
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        _, _, ref_grads = reference_and_grads(q, k, v, mask, causal, None, Hq != Hkv, g)
        for a, b in zip(grads, ref_grads):
            assert_close_scaled(a, b, tol)


def test_backward_output_mask():
    """_attention_backward computes only the gradients output_mask asks for; the others are
    empty, and the asked-for ones equal those of the full call."""
    B, Hq, Hkv, L, S, E, Ev = 2, 2, 1, 5, 6, 4, 3
    q, k, v = qkv(B, Hq, Hkv, L, S, E, Ev, requires_grad=False)
    out, lse, lse_stats = ops._attention_forward(q, k, v, None, 0.0, False, 0.5, 0)
    g = torch.randn_like(out)
    full = ops._attention_backward(g, q, k, v, None, out, lse_stats, 0.0, False, 0.5, 0, [True, True, True])
    for mask in ([True, False, True], [False, True, False], [False, False, True]):
        part = ops._attention_backward(g, q, k, v, None, out, lse_stats, 0.0, False, 0.5, 0, mask)
        for want, got, ref in zip(mask, part, full):
            if want:
                assert torch.equal(got, ref)
            else:
                assert got is not None, "an unrequested gradient came back as None, not an empty tensor (the schema's Tensor)"
                assert got.numel() == 0


@pytest.mark.parametrize("requires", [(True, False, False), (False, True, True), (False, False, True)])
def test_partial_requires_grad(requires):
    q, k, v = qkv(2, 2, 2, 5, 6, 4, 3)
    for t, r in zip((q, k, v), requires):
        t.requires_grad_(r)
    out = sdpa(q, k, v, is_causal=True)
    g = torch.randn_like(out)
    wanted = [t for t, r in zip((q, k, v), requires) if r]
    grads = torch.autograd.grad(out, wanted, g)
    _, _, ref_grads = reference_and_grads(q, k, v, None, True, grad=g)
    for got, exp in zip(grads, [e for e, r in zip(ref_grads, requires) if r]):
        assert_close_scaled(got, exp, 1e-9)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def public_bad_inputs(device):
    B, H, L, S, E, Ev = 2, 4, 5, 6, 8, 3

    def t(*shape, dtype=torch.float32):
        return torch.randn(*shape, device=device).to(dtype)

    q, k, v = t(B, H, L, E), t(B, H, S, E), t(B, H, S, Ev)
    return [
        ("2-D query", (t(L, E), t(S, E), t(S, Ev)), {}, r"query|3-D|4-D"),
        ("5-D query", (t(1, B, H, L, E), t(1, B, H, S, E), t(1, B, H, S, Ev)), {}, r"query|3-D|4-D"),
        ("4-D query with 3-D key", (q, t(B, S, E), t(B, S, Ev)), {}, r"key|3-D|4-D"),
        ("E mismatch", (q, t(B, H, S, E + 1), v), {}, r"\bE\b|key|head dim"),
        ("batch mismatch", (q, t(B + 1, H, S, E), t(B + 1, H, S, Ev)), {}, r"batch"),
        ("k and v of different lengths", (q, k, t(B, H, S + 1, Ev)), {}, r"length|\bS\b|value"),
        ("k and v of different heads", (q, t(B, 2, S, E), t(B, 1, S, Ev)), {"enable_gqa": True}, r"heads|value"),
        ("Hq not a multiple of Hkv", (q, t(B, 3, S, E), t(B, 3, S, Ev)), {"enable_gqa": True}, r"multiple|heads"),
        ("Hq != Hkv without enable_gqa", (q, t(B, 2, S, E), t(B, 2, S, Ev)), {}, r"enable_gqa|heads"),
        ("E > 256", (t(1, 1, L, 257), t(1, 1, S, 257), t(1, 1, S, Ev)), {}, r"256|head dim"),
        ("Ev > 256", (t(1, 1, L, E), t(1, 1, S, E), t(1, 1, S, 300)), {}, r"256|head dim|Ev"),
        ("mask of the wrong shape", (q, k, v), {"attn_mask": torch.ones(L, S + 1, dtype=torch.bool, device=device)}, r"attn_mask"),
        ("mask of the wrong batch", (q, k, v), {"attn_mask": torch.ones(B + 1, 1, L, S, device=device)}, r"attn_mask"),
        ("5-D mask", (q, k, v), {"attn_mask": torch.ones(1, B, H, L, S, dtype=torch.bool, device=device)}, r"attn_mask"),
        ("int64 mask", (q, k, v), {"attn_mask": torch.ones(L, S, dtype=torch.int64, device=device)}, r"attn_mask"),
        ("uint8 mask", (q, k, v), {"attn_mask": torch.ones(L, S, dtype=torch.uint8, device=device)}, r"attn_mask"),
        ("mask with is_causal", (q, k, v), {"attn_mask": torch.ones(L, S, dtype=torch.bool, device=device), "is_causal": True}, r"attn_mask|is_causal"),
        ("dropout_p < 0", (q, k, v), {"dropout_p": -0.1}, r"dropout"),
        ("dropout_p > 1", (q, k, v), {"dropout_p": 1.5}, r"dropout"),
        ("integer query", (q.long(), k.long(), v.long()), {}, r"query|float"),
        ("dtype mismatch", (q, k.double(), v), {}, r"dtype"),
        ("non-finite scale", (q, k, v), {"scale": float("nan")}, r"scale"),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_public_bad_input(device):
    failures = []
    for name, args, kwargs, match in public_bad_inputs(device):
        tensors = [*args, *[x for x in kwargs.values() if isinstance(x, torch.Tensor)]]
        try:
            expect_error(lambda: sdpa(*args, **kwargs), tensors, match)
        except (AssertionError, pytest.fail.Exception) as error:
            failures.append(f"{name}: {error}")
    assert not failures, f"{len(failures)} bad inputs mishandled:\n" + "\n".join(failures)


def test_non_tensor_query_rejected():
    k = torch.randn(1, 1, 3, 2)
    with pytest.raises(TypeError, match="query"):
        sdpa([[1.0, 2.0]], k, k)


# --------------------------------------------------------------------------------------------
# the public function: compile, empty batch, upstream layouts
# --------------------------------------------------------------------------------------------


def _compile_cases(device):
    B, Hq, Hkv, L, S, E, Ev = 2, 4, 2, 9, 11, 8, 6
    q, k, v = qkv(B, Hq, Hkv, L, S, E, Ev, dtype=torch.float32, device=device)
    q3 = randn(B, L, E, dtype=torch.float32, device=device, requires_grad=True)
    k3 = randn(B, S, E, dtype=torch.float32, device=device, requires_grad=True)
    v3 = randn(B, S, Ev, dtype=torch.float32, device=device, requires_grad=True)
    return [
        ("gqa-bool-mask", (q, k, v), dict(attn_mask=make_mask("pad_B11S", B, Hq, L, S, device=device), enable_gqa=True)),
        ("3-D causal scale", (q3, k3, v3), dict(is_causal=True, scale=0.3)),
        ("only q requires grad", (q.detach().requires_grad_(True), k.detach(), v.detach()), dict(enable_gqa=True)),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_public_compile_fullgraph_matches_eager(device):
    for name, args, kwargs in _compile_cases(device):
        torch._dynamo.reset()
        compiled = torch.compile(lambda *a: sdpa(*a, **kwargs) * 2.0, backend="aot_eager", fullgraph=True)
        eager_args = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
        got = compiled(*args)
        expected = sdpa(*eager_args, **kwargs) * 2.0
        assert torch.equal(got, expected), name
        w = torch.randn_like(expected)
        g1 = torch.autograd.grad(got, [a for a in args if a.requires_grad], w)
        g2 = torch.autograd.grad(expected, [a for a in eager_args if a.requires_grad], w)
        for a, b in zip(g1, g2):
            assert torch.equal(a, b), f"{name}: compiled gradient differs"


@pytest.mark.parametrize("device", DEVICES)
def test_public_compile_fullgraph_with_dropout(device):
    """Dropout under torch.compile(fullgraph=True): no graph break (the seed is drawn inside the
    graph), and the same manual_seed gives the eager result."""
    q, k, v = qkv(2, 2, 2, 9, 11, 8, 8, dtype=torch.float32, device=device)
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: sdpa(q, k, v, dropout_p=0.3), backend="aot_eager", fullgraph=True)
    got = with_seed(21, lambda: compiled(q, k, v))
    expected = with_seed(21, lambda: sdpa(q, k, v, dropout_p=0.3))
    assert torch.equal(got, expected)
    again = with_seed(22, lambda: compiled(q, k, v))
    assert not torch.equal(got, again), "the compiled graph froze the dropout seed"


@pytest.mark.parametrize("device", DEVICES)
def test_public_empty_batch(device):
    for shapes, out_shape in [
        (((0, 2, 5, 4), (0, 2, 6, 4), (0, 2, 6, 3)), (0, 2, 5, 3)),
        (((2, 2, 0, 4), (2, 2, 6, 4), (2, 2, 6, 3)), (2, 2, 0, 3)),
        (((0, 5, 4), (0, 6, 4), (0, 6, 3)), (0, 5, 3)),
    ]:
        q, k, v = (torch.randn(*s, device=device, requires_grad=True) for s in shapes)
        for kwargs in ({}, {"is_causal": True}, {"dropout_p": 0.5}):
            out = sdpa(q, k, v, **kwargs)
            assert tuple(out.shape) == out_shape and out.device == q.device
            grads = torch.autograd.grad(out.sum(), (q, k, v))
            for g, x in zip(grads, (q, k, v)):
                assert g.shape == x.shape and bool((g == 0).all())


@pytest.mark.parametrize("device", DEVICES)
def test_public_upstream_gradient_layouts(device):
    B, Hq, Hkv, L, S, E, Ev = 2, 4, 2, 9, 11, 8, 6
    q, k, v = qkv(B, Hq, Hkv, L, S, E, Ev, dtype=torch.float32, device=device)
    mask = make_mask("bool_B1LS", B, Hq, L, S, device=device)
    for p in (0.0, 0.3):
        out = with_seed(1, lambda: sdpa(q, k, v, attn_mask=mask, dropout_p=p, enable_gqa=True))
        check_reads_any_upstream_layout(
            lambda g: torch.autograd.grad(out, (q, k, v), g, retain_graph=True), out.shape, out.dtype, device
        )
    q3 = randn(B, L, E, dtype=torch.float32, device=device, requires_grad=True)
    out = sdpa(q3, q3, q3, is_causal=True)  # self-attention: one tensor three times
    check_reads_any_upstream_layout(lambda g: torch.autograd.grad(out, q3, g, retain_graph=True), out.shape, out.dtype, device)
    ref, _, _ = reference_and_grads(q3, q3, q3, None, True)
    assert_close_scaled(out, ref, 2e-5 if device == "cpu" else CUDA_TOL[torch.float32], "self-attention")


def test_self_attention_same_tensor_gradient():
    """q = k = v the same tensor: autograd sums the three gradients."""
    x = randn(2, 2, 7, 4, requires_grad=True)
    out = sdpa(x, x, x)
    g = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, x, g)
    leaf = x.detach().clone().requires_grad_(True)
    ref, _ = reference_attention(leaf, leaf, leaf)
    (expected,) = torch.autograd.grad(ref, leaf, g)
    assert_close_scaled(got, expected, 1e-9)


# --------------------------------------------------------------------------------------------
# the shared op contract (tests/contract.py) for the two internal ops
# --------------------------------------------------------------------------------------------


def _forward_args(device, requires_grad):
    """(args, name): masks of each kind, causal, GQA, dropout with a fixed seed, a transposed query."""
    f32, f64 = torch.float32, torch.float64
    cases = []
    q, k, v = qkv(2, 3, 3, 9, 11, 8, 8, dtype=f64, device=device, requires_grad=requires_grad)
    mask = make_mask("bool_B1LS", 2, 3, 9, 11, device=device)
    mask[1, 0, 2] = False  # a fully masked row
    cases.append(((q, k, v, mask, 0.0, False, 0.3, 0), "float64-bool-mask"))
    q, k, v = qkv(1, 4, 2, 70, 65, 16, 8, dtype=f32, device=device, requires_grad=requires_grad)
    cases.append(((q, k, v, None, 0.0, True, 0.25, 0), "float32-gqa-causal-L70-S65"))
    q, k, v = qkv(2, 2, 2, 9, 11, 4, 6, dtype=f64, device=device, requires_grad=False)
    q = q.transpose(-2, -1).contiguous().transpose(-2, -1).requires_grad_(requires_grad)
    k.requires_grad_(requires_grad)
    v.requires_grad_(requires_grad)
    fmask = make_mask("float_LS", 2, 2, 9, 11, dtype=f64, device=device)
    cases.append(((q, k, v, fmask, 0.25, False, 0.5, 1234), "float64-float-mask-dropout-transposed-q"))
    q, k, v = qkv(2, 2, 2, 5, 7, 8, 8, dtype=f32, device=device, requires_grad=requires_grad)
    pad = make_mask("pad_B11S", 2, 2, 5, 7, device=device)
    cases.append(((q, k, v, pad, 0.5, False, 0.35, 2**40 + 3), "float32-padding-dropout"))
    return cases


class TestAttentionForwardContract(OpContract):
    op_name = "_attention_forward"
    rtol = 0.0  # deterministic kernels reading the same values: the same bits
    compile_samples = 2

    def samples(self, device):
        return [Sample(args, name) for args, name in _forward_args(device, True)]

    def empty_cases(self, device):
        def z(*shape):
            return torch.randn(*shape, device=device, requires_grad=True)

        return [
            EmptyCase(Sample((z(0, 2, 5, 4), z(0, 2, 6, 4), z(0, 2, 6, 3), None, 0.0, False, 0.5, 0), "B=0"), [(0, 2, 5, 3), (0, 2, 5), (0, 2, 5, 2)]),
            EmptyCase(Sample((z(2, 2, 0, 4), z(2, 2, 6, 4), z(2, 2, 6, 3), None, 0.1, True, 0.5, 3), "L=0"), [(2, 2, 0, 3), (2, 2, 0), (2, 2, 0, 2)]),
            EmptyCase(
                Sample((z(0, 4, 5, 4), z(0, 2, 6, 4), z(0, 2, 6, 3), torch.ones(0, 1, 1, 6, dtype=torch.bool, device=device), 0.0, False, 0.5, 0), "B=0 gqa mask"),
                [(0, 4, 5, 3), (0, 4, 5), (0, 4, 5, 2)],
            ),
        ]

    def bad_inputs(self, device):
        B, H, L, S, E, Ev = 2, 4, 5, 6, 8, 3

        def t(*shape, dtype=torch.float32):
            return torch.randn(*shape, device=device).to(dtype)

        q, k, v = t(B, H, L, E), t(B, H, S, E), t(B, H, S, Ev)

        def call(q=q, k=k, v=v, mask=None, p=0.0, causal=False, scale=0.5, seed=0):
            return (q, k, v, mask, p, causal, scale, seed)

        return [
            BadInput("3-D query", call(q=t(B, L, E)), r"query"),
            BadInput("3-D key", call(k=t(B, S, E)), r"key"),
            BadInput("E mismatch", call(k=t(B, H, S, E + 2)), r"\bE\b|head dim|key"),
            BadInput("batch mismatch", call(k=t(B + 1, H, S, E), v=t(B + 1, H, S, Ev)), r"batch"),
            BadInput("k and v lengths", call(v=t(B, H, S + 1, Ev)), r"length|\bS\b"),
            BadInput("k and v heads", call(k=t(B, 2, S, E), v=t(B, 1, S, Ev)), r"heads"),
            BadInput("Hq not a multiple of Hkv", call(k=t(B, 3, S, E), v=t(B, 3, S, Ev)), r"multiple|heads"),
            BadInput("E > 256", call(q=t(1, 1, L, 264), k=t(1, 1, S, 264), v=t(1, 1, S, Ev)), r"256|head dim"),
            BadInput("Ev > 256", call(v=t(B, H, S, 257)), r"256|head dim"),
            BadInput("mask shape", call(mask=torch.ones(L + 1, S, dtype=torch.bool, device=device)), r"attn_mask"),
            BadInput("5-D mask", call(mask=torch.ones(1, B, H, L, S, dtype=torch.bool, device=device)), r"attn_mask"),
            BadInput("int32 mask", call(mask=torch.ones(L, S, dtype=torch.int32, device=device)), r"attn_mask"),
            BadInput("mask with causal", call(mask=torch.ones(L, S, dtype=torch.bool, device=device), causal=True), r"attn_mask|is_causal"),
            BadInput("dropout -0.5", call(p=-0.5), r"dropout"),
            BadInput("dropout 1.01", call(p=1.01), r"dropout"),
            BadInput("NaN dropout", call(p=float("nan")), r"dropout"),
            BadInput("infinite scale", call(scale=float("inf")), r"scale"),
            BadInput("NaN scale", call(scale=float("nan")), r"scale"),
            BadInput("integer query", call(q=q.long(), k=k.long(), v=v.long()), r"query"),
            BadInput("dtype mismatch", call(v=v.double()), r"dtype"),
        ]


class TestAttentionBackwardContract(OpContract):
    op_name = "_attention_backward"
    differentiable = False
    upstream_argument = 0
    rtol = 0.0
    compile_samples = 2

    def samples(self, device):
        samples = []
        for (q, k, v, mask, p, causal, scale, seed), name in _forward_args(device, False):
            out, lse, lse_stats = ops._attention_forward(q, k, v, mask, p, causal, scale, seed)
            g = torch.randn(out.shape, dtype=out.dtype, device=device)
            samples.append(Sample((g, q, k, v, mask, out, lse_stats, p, causal, scale, seed, [True, True, True]), name))
        # only some of the gradients (what autograd asks for when k and v need none)
        (g, q, k, v, mask, out, stats, p, causal, scale, seed, _) = samples[0].args
        samples.append(Sample((g, q, k, v, mask, out, stats, p, causal, scale, seed, [True, False, False]), "dq only"))
        return samples

    def empty_cases(self, device):
        q, k, v = torch.randn(0, 2, 5, 4, device=device), torch.randn(0, 2, 6, 4, device=device), torch.randn(0, 2, 6, 3, device=device)
        out, stats = torch.zeros(0, 2, 5, 3, device=device), torch.zeros(0, 2, 5, 2, device=device)
        return [
            EmptyCase(Sample((out.clone(), q, k, v, None, out, stats, 0.0, False, 0.5, 0, [True, True, True])), [(0, 2, 5, 4), (0, 2, 6, 4), (0, 2, 6, 3)])
        ]

    def bad_inputs(self, device):
        q, k, v = torch.randn(2, 2, 5, 4, device=device), torch.randn(2, 2, 6, 4, device=device), torch.randn(2, 2, 6, 3, device=device)
        out, lse, lse_stats = ops._attention_forward(q, k, v, None, 0.0, False, 0.5, 0)
        g = torch.randn_like(out)

        def call(g=g, out=out, stats=lse_stats, mask=None, causal=False, v=v):
            return (g, q, k, v, mask, out, stats, 0.0, causal, 0.5, 0, [True, True, True])

        return [
            BadInput("grad_out of the wrong shape", call(g=torch.randn(2, 2, 5, 4, device=device)), r"grad_out"),
            BadInput("out of the wrong shape", call(out=out[:, :, :4]), r"\bout\b"),
            BadInput("stats of the wrong shape", call(stats=lse_stats[:, :1]), r"stats"),
            BadInput("k and v lengths", call(v=torch.randn(2, 2, 7, 3, device=device)), r"length|\bS\b"),
            BadInput("mask with causal", call(mask=torch.ones(5, 6, dtype=torch.bool, device=device), causal=True), r"attn_mask|is_causal"),
        ]


# --------------------------------------------------------------------------------------------
# CUDA: float32/float16/bfloat16 against the CPU float64 reference
# --------------------------------------------------------------------------------------------

# (id, B, Hq, Hkv, L, S, E, Ev, mask kind, is_causal, scale)
CUDA_CASES = [
    ("plain", 2, 4, 4, 65, 130, 64, 64, "none", False, None),
    ("L1", 2, 2, 2, 1, 70, 128, 128, "none", False, None),
    ("odd", 1, 2, 2, 7, 63, 40, 40, "none", False, None),
    ("E!=Ev", 2, 2, 2, 33, 47, 40, 96, "none", False, 0.3),
    ("E256", 1, 2, 2, 70, 66, 256, 256, "none", False, None),
    ("E8-Ev16", 1, 2, 2, 130, 129, 8, 16, "none", False, None),
    ("bool", 2, 2, 2, 65, 67, 64, 64, "bool", False, None),
    ("float", 2, 2, 2, 65, 67, 64, 64, "float", False, None),
    ("float-with-inf", 2, 2, 2, 65, 67, 64, 64, "float_with_inf", False, None),
    ("pad", 3, 2, 2, 40, 130, 64, 64, "pad_B11S", False, None),
    ("bool-LS", 2, 2, 2, 40, 70, 64, 64, "bool_LS", False, None),
    ("float-1HLS-gqa", 2, 4, 2, 40, 70, 64, 64, "float_1HLS", False, None),
    ("rows-masked", 2, 2, 2, 40, 70, 64, 64, "bool_B1L1", False, None),
    ("causal", 2, 2, 2, 130, 130, 64, 64, "none", True, None),
    ("causal-L<S", 2, 2, 2, 65, 200, 128, 128, "none", True, None),
    ("causal-L>S", 2, 2, 2, 200, 65, 128, 128, "none", True, None),
    ("gqa-8-2-causal", 1, 8, 2, 97, 97, 64, 64, "none", True, None),
    ("gqa-4-1", 2, 4, 1, 33, 65, 96, 32, "none", False, None),
    # float16 / bfloat16 with E = Ev in {64, 128} run the tensor-core forward and backward (attention_mma_kernel.cu)
    ("mma-many-tiles", 1, 2, 2, 300, 520, 128, 128, "pad_B11S", False, None),
    ("mma-causal-gqa", 1, 4, 2, 257, 257, 64, 64, "none", True, 0.2),
]


@needs_cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", CUDA_CASES, ids=[c[0] for c in CUDA_CASES])
def test_cuda_matches_reference(case, dtype):
    name, B, Hq, Hkv, L, S, E, Ev, mask_kind, causal, scale = case
    q, k, v = qkv(B, Hq, Hkv, L, S, E, Ev, dtype=dtype, device="cuda")
    mask = make_mask(mask_kind, B, Hq, L, S, dtype=dtype, device="cuda")
    check_case(q, k, v, mask, causal, scale, Hq != Hkv, CUDA_TOL[dtype], CUDA_GRAD_TOL[dtype], f"cuda {name}")


@needs_cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=["float32", "float16", "bfloat16"])
def test_cuda_fully_masked_rows_and_large_logits(dtype):
    B, H, L, S, E = 2, 2, 70, 67, 64
    q, k, v = qkv(B, H, H, L, S, E, 32, dtype=dtype, device="cuda", scale=100.0)  # scale * q.k ~ 1e4
    keep = torch.rand(B, H, L, S) < 0.6
    keep[0, 0, 3] = False
    keep[1, 1, 64] = False
    mask = keep.cuda()
    g = torch.randn(B, H, L, 32, device="cuda").to(dtype)
    out, grads = run_op(q, k, v, mask, grad=g)
    for t in (out, *grads):
        assert bool(torch.isfinite(t).all())
    assert bool((out[0, 0, 3] == 0).all()) and bool((out[1, 1, 64] == 0).all())
    assert bool((grads[0][0, 0, 3] == 0).all()) and bool((grads[0][1, 1, 64] == 0).all())
    ref, _, ref_grads = reference_and_grads(q, k, v, mask, grad=g)
    assert_close_scaled(out, ref, 5e-2, "out at large logits")
    assert_close_scaled(grads[2], ref_grads[2], 5e-2, "dv at large logits")
    _, lse, lse_stats = ops._attention_forward(q.detach(), k.detach(), v.detach(), mask, 0.0, False, 1 / math.sqrt(E), 0)
    assert bool(torch.isneginf(lse[0, 0, 3])) and bool(torch.isneginf(lse[1, 1, 64]))


@needs_cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=["float32", "float16", "bfloat16"])
def test_cuda_dropout_same_mask_as_cpu_and_reproducible(dtype):
    """The hash is shared by both devices (attention.h): an explicit seed drops the same weights
    on CUDA as the documented Philox mask; manual_seed reproduces the public function's draw."""
    B, Hq, Hkv, L, S, E, p, seed = 2, 4, 2, 67, 70, 64, 0.3, 2**33 + 17
    q, k, _ = qkv(B, Hq, Hkv, L, S, E, 1, dtype=dtype, device="cuda", requires_grad=False)
    eye = identity_value(B, Hkv, S, dtype).cuda()
    out, _, _stats = ops._attention_forward(q, k, eye, None, p, False, 1 / math.sqrt(E), seed)
    keep = reference_dropout_keep(seed, B, Hq, L, S, p)
    assert torch.equal(out.cpu() != 0, keep), "the CUDA dropout mask is not the documented one"
    a = with_seed(3, lambda: sdpa(q, k, eye, dropout_p=p, enable_gqa=True))
    b = with_seed(3, lambda: sdpa(q, k, eye, dropout_p=p, enable_gqa=True))
    assert torch.equal(a, b)
    _, _, v = qkv(B, Hq, Hkv, L, S, E, 16, dtype=dtype, device="cuda", requires_grad=False)
    out_d, _, _stats = ops._attention_forward(q, k, v, None, p, False, 0.125, seed)
    ref, _, _ = reference_and_grads(q, k, v, None, False, 0.125, True, None, keep=keep, dropout_p=p)
    assert_close_scaled(out_d, ref, CUDA_TOL[dtype], "cuda dropout out")


@needs_cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=["float32", "float16", "bfloat16"])
def test_cuda_dropout_backward_follows_the_mask(dtype):
    B, Hq, Hkv, L, S, E, Ev, p, seed = 2, 4, 2, 67, 70, 64, 16, 0.3, 99
    q, k, v = qkv(B, Hq, Hkv, L, S, E, Ev, dtype=dtype, device="cuda", requires_grad=False)
    out, lse, lse_stats = ops._attention_forward(q, k, v, None, p, False, 0.125, seed)
    g = torch.randn_like(out)
    grads = ops._attention_backward(g, q, k, v, None, out, lse_stats, p, False, 0.125, seed, [True, True, True])
    keep = reference_dropout_keep(seed, B, Hq, L, S, p)
    _, _, ref_grads = reference_and_grads(q, k, v, None, False, 0.125, True, g, keep=keep, dropout_p=p)
    for name, a, e in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close_scaled(a, e, CUDA_GRAD_TOL[dtype], f"cuda dropout {name}")


@needs_cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=["float32", "float16", "bfloat16"])
def test_cuda_deterministic_and_non_contiguous(dtype):
    """Backward without order-dependent atomics: the same bits run after run; (B, L, H, E)
    transposed views give the contiguous result."""
    B, H, L, S, E = 2, 4, 130, 130, 64
    q, k, v = (randn(B, L, H, E, dtype=dtype, device="cuda").transpose(1, 2).requires_grad_(True) for _ in range(3))
    g = torch.randn(B, H, L, E, device="cuda").to(dtype)
    a, ga = run_op(q, k, v, None, True, None, False, g)
    b, gb = run_op(q, k, v, None, True, None, False, g)
    assert torch.equal(a, b)
    for x, y in zip(ga, gb):
        assert torch.equal(x, y), "the CUDA backward is not deterministic"
    dense = [t.detach().contiguous().requires_grad_(True) for t in (q, k, v)]
    c, gc = run_op(*dense, None, True, None, False, g)
    assert_close_scaled(a, c, CUDA_TOL[dtype] / 4, "transposed vs contiguous")
    for x, y in zip(ga, gc):
        assert_close_scaled(x, y, CUDA_GRAD_TOL[dtype] / 4, "transposed vs contiguous gradient")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_cuda_tensor_core_path_with_misaligned_views(dtype):
    """Contiguous views that start 2 bytes into their storage (the tensor-core kernels read
    16-byte vectors): the same results as aligned copies, and the views are left unchanged."""
    B, H, L, S, E = 1, 2, 40, 50, 64

    def misaligned(*shape):
        buffer = randn(1 + math.prod(shape), dtype=dtype, device="cuda")
        return buffer[1:].view(*shape).requires_grad_(True)

    q, k, v = misaligned(B, H, L, E), misaligned(B, H, S, E), misaligned(B, H, S, E)
    g = misaligned(B, H, L, E).detach()
    assert q.data_ptr() % 16 != 0
    before = [t.detach().clone() for t in (q, k, v, g)]
    a, ga = run_op(q, k, v, None, False, None, False, g)
    dense = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    b, gb = run_op(*dense, None, False, None, False, g.clone())
    assert torch.equal(a, b)
    for x, y in zip(ga, gb):
        assert torch.equal(x, y)
    for t, saved in zip((q, k, v, g), before):
        assert torch.equal(t.detach(), saved)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_cuda_runs_on_current_stream(dtype):
    """Forward and backward issued on a side stream (the CUDA-core and the tensor-core kernels)
    give the default stream's results."""
    q, k, v = (randn(2, 4, n, 64, dtype=dtype, device="cuda") for n in (300, 257, 257))
    g = randn(2, 4, 300, 64, dtype=dtype, device="cuda")
    expected, expected_grads = run_op(*(t.clone().requires_grad_(True) for t in (q, k, v)), None, True, None, False, g)
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        got, grads = run_op(*(t.clone().requires_grad_(True) for t in (q, k, v)), None, True, None, False, g)
    stream.synchronize()
    assert torch.equal(got, expected)
    for a, b in zip(grads, expected_grads):
        assert torch.equal(a, b)


@needs_cuda
def test_cuda_rejects_mixed_devices():
    q, k, v = qkv(1, 2, 2, 5, 6, 8, 8, dtype=torch.float32, device="cuda", requires_grad=False)
    for args, kwargs, match in [
        ((q, k.cpu(), v), {}, r"key|device"),
        ((q, k, v.cpu()), {}, r"value|device"),
        ((q, k, v), {"attn_mask": torch.ones(5, 6, dtype=torch.bool)}, r"attn_mask|device"),
    ]:
        tensors = [*args, *kwargs.values()]
        expect_error(lambda: sdpa(*args, **kwargs), tensors, match)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fill", [-1e9, torch.finfo(torch.float32).min], ids=["-1e9", "finfo.min"])
def test_float32_rows_padded_with_a_huge_negative_value_get_the_uniform_softmax_gradient(fill, device):
    """Old-style padding: a query row whose additive mask is a huge finite negative number
    everywhere has (in float32) uniform weights, as in PyTorch; the backward must use them too
    (lse = m + log l rounds log l away at |m| ~ 1e9 and beyond, so the backward reads the row's
    maximum and log-sum separately)."""
    torch.manual_seed(0)
    B, H, L, S, E = 1, 2, 5, 7, 8
    q, k, v = (torch.randn(B, H, n, E).to(device).requires_grad_(True) for n in (L, S, S))
    mask = torch.zeros(B, 1, L, S)
    mask[..., 2, :] = fill
    mask = mask.to(device)
    g = torch.randn(B, H, L, E).to(device)
    ours = pyvision_ops.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = torch.autograd.grad(ours, (q, k, v), g)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        expected = torch.autograd.grad(ref, (q, k, v), g)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
