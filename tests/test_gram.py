"""Op family 2: gram_matrix, style_loss (fused forward and backward) and perceptual_loss.

Every result is compared with an independent float64 reference (tests/references/gram.py: einsum
on float64 CPU copies; gradients by PyTorch's autograd through that reference). Low-precision dtypes
accumulate in float32, so they are held to a tolerance set by the rounding of the result, relative
to the largest element of the reference (off-diagonal Gram entries cancel; their error is bounded
by the diagonal's scale, not their own). Each registered op also passes the shared contract
(tests/contract.py), and every CPU test runs on the vectorised and the portable kernels
(tests/conftest.py).
"""

from __future__ import annotations

from typing import Sequence

import pytest
import torch

import pyvision_ops
from pyvision_ops.ops import gram as gram_ops
from conftest import (
    DEVICES,
    assert_unchanged,
    expect_error,
    needs_cuda,
    poison_allocator,
)
from contract import BadInput, EmptyCase, OpContract, Sample
from references.gram import (
    reference_gram_backward,
    reference_gram_matrix,
    reference_perceptual_loss,
    reference_style_loss,
    reference_style_loss_backward,
)

ops = torch.ops.pyvision_ops
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HALF_DTYPES = [torch.float16, torch.bfloat16]
REDUCTION_CODES = gram_ops._REDUCTIONS  # the Python layer's "sum"/"mean" -> schema int

# Results: float32 accumulation, then rounding to the output dtype (2^-11 for float16, 2^-8 for
# bfloat16) -- tolerances a few roundings wide, relative to max |reference|.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# Gradients sum C products of already-rounded low-precision values: a little wider.
GRAD_TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """Elementwise |actual - expected| <= tol * (|expected| + max |expected|), any dtype/device."""
    assert tuple(actual.shape) == tuple(expected.shape), f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().cpu().to(torch.float64)
    e = expected.detach().cpu().to(torch.float64)
    assert bool(torch.isfinite(a).all()), f"non-finite values in the result: {a[~torch.isfinite(a)][:5].tolist()}"
    scale = float(e.abs().max()) if e.numel() else 0.0
    torch.testing.assert_close(a, e, rtol=tol, atol=tol * scale)


def assert_symmetric(gram: torch.Tensor) -> None:
    """One triangle is computed and mirrored: G equals its transpose bit for bit."""
    t = gram.detach().cpu()
    assert torch.equal(t, t.transpose(-1, -2)), (
        f"Gram not exactly symmetric: max |G - G^T| = {float((t - t.transpose(-1, -2)).abs().max())}"
    )


def features_of(shape: Sequence[int], dtype: torch.dtype, device, scale: float = 1.0) -> torch.Tensor:
    """Fresh random features: ReLU-like (mostly non-negative, as VGG activations) plus a signed
    part, so the Gram has both large diagonal and cancelling off-diagonal entries."""
    x = torch.randn(*shape, dtype=torch.float64)
    x = (x.abs() * 0.7 + torch.randn(*shape, dtype=torch.float64) * 0.5) * scale
    return x.to(device=device, dtype=dtype)


def target_gram_of(
    shape: Sequence[int], dtype: torch.dtype, device, normalize: bool, scale: float = 1.0
) -> torch.Tensor:
    """A style target of the same convention, from other features at 1.5x ``scale`` (so the
    difference G - G_target is of the order of G: the loss is well conditioned)."""
    other = features_of(shape, torch.float64, "cpu", scale=1.5 * scale)
    return reference_gram_matrix(other, normalize).to(device=device, dtype=dtype)


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t``'s values stored in ``layout``; every layout but "contiguous" is non-contiguous."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":  # (N, C, H, W) with C fastest; for 3-D, (N, L, C) transposed
        if t.dim() == 4:
            out = t.contiguous(memory_format=torch.channels_last)
        else:
            out = t.transpose(1, 2).contiguous().transpose(1, 2)
    elif layout == "transposed":  # last two dims swapped in memory
        out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "sliced":  # every other channel of a NaN-filled buffer, last dim offset by 1
        shape = list(t.shape)
        shape[1] *= 2
        shape[-1] += 3
        big = torch.full(shape, float("nan"), dtype=t.dtype, device=t.device)
        out = big[:, ::2, ..., 1 : 1 + t.shape[-1]]
        out.copy_(t)
    elif layout == "expanded":  # batch item 0 repeated with stride 0
        out = t[:1].expand_as(t)
    else:
        raise ValueError(layout)
    assert not out.is_contiguous()
    return out


def shape_id(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


# Odd channel counts (1, 3, 65, 513 -- no tile divides them), spatial sizes that are no multiple of
# any tile (7x9, L=1), several batch items, 3-D and 4-D. C=513 keeps HW small to stay fast.
GRAM_SHAPES = [
    (2, 3, 7, 9),
    (3, 1, 5, 5),
    (3, 65, 7, 9),
    (2, 513, 3, 5),
    (2, 130, 17, 19),
    (2, 17, 1),
    (3, 5, 1, 1),
    (2, 33, 100),
]
# Channel counts that are multiples of 16 take the CPU's AVX2 backward kernel (48: three panels;
# 272: more than one 256-channel chunk), the others the bmm fallback.
BACKWARD_SHAPES = [(2, 3, 7, 9), (3, 65, 5, 3), (2, 1, 4, 4), (2, 17, 1), (2, 33, 20), (2, 16, 7, 9), (1, 48, 300), (1, 272, 13, 11)]


# --------------------------------------------------------------------------------------------
# API surface
# --------------------------------------------------------------------------------------------


def test_functions_are_exported_at_top_level():
    assert pyvision_ops.gram_matrix is gram_ops.gram_matrix
    assert pyvision_ops.style_loss is gram_ops.style_loss
    assert pyvision_ops.perceptual_loss is gram_ops.perceptual_loss
    for name in ("gram_matrix", "_gram_matrix_backward", "_style_loss_forward", "_style_loss_backward"):
        assert hasattr(ops, name), f"torch.ops.pyvision_ops.{name} is not registered"


# --------------------------------------------------------------------------------------------
# gram_matrix: forward
# --------------------------------------------------------------------------------------------


def check_gram(x: torch.Tensor, normalize: bool, tol: float) -> torch.Tensor:
    before = x.clone()
    n, c = x.shape[0], x.shape[1]
    expected = reference_gram_matrix(x.detach(), normalize)
    poison_allocator((n, c, c), x.dtype, x.device)
    gram = pyvision_ops.gram_matrix(x, normalize=normalize)
    assert gram.dtype == x.dtype and gram.device == x.device
    assert tuple(gram.shape) == (n, c, c)
    assert_close_scaled(gram, expected, tol)
    assert_symmetric(gram)
    assert_unchanged(before, x)
    return gram


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("shape", GRAM_SHAPES, ids=shape_id)
def test_gram_matrix_matches_reference(shape, normalize, dtype, device):
    x = features_of(shape, dtype, device)
    check_gram(x, normalize, TOL[dtype])


def test_gram_matrix_default_normalizes_by_chw():
    x = features_of((2, 4, 3, 5), torch.float64, "cpu")
    raw = pyvision_ops.gram_matrix(x, normalize=False)
    default = pyvision_ops.gram_matrix(x)
    torch.testing.assert_close(default, raw / (4 * 3 * 5), rtol=1e-14, atol=0)
    assert_close_scaled(default, reference_gram_matrix(x, True), 1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "expanded"])
@pytest.mark.parametrize("shape", [(2, 65, 7, 9), (3, 3, 5, 4), (2, 19, 30)], ids=shape_id)
def test_gram_matrix_any_strides(shape, layout, dtype, device):
    """channels_last (read in place as F^T F over (HW, C)), non-contiguous and stride-0 inputs
    give the same Gram as the contiguous tensor holding the same values."""
    x = with_layout(features_of(shape, dtype, device), layout)
    gram = check_gram(x, True, TOL[dtype])
    if layout == "expanded":
        assert torch.equal(gram[1:].cpu(), gram[:1].expand_as(gram[1:]).cpu())


# The CPU kernel packs L in chunks (64..1024 positions, fewer for more channels) into 16-channel
# panels, and splits L between threads when the batch is smaller than the thread count: lengths
# spanning several chunks with a ragged tail, channel counts with and without a partial panel,
# batches below the thread count (1, 2 and 3 threads).
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(1, 16, 30, 70), (1, 40, 29, 53), (2, 200, 25, 26), (1, 3, 50, 100)], ids=shape_id)
def test_gram_matrix_cpu_chunks_and_thread_splits(shape, layout, dtype, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = with_layout(features_of(shape, dtype, "cpu"), layout)
        check_gram(x, True, TOL[dtype])
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_gram_matrix_half_does_not_overflow(dtype, device):
    """The AMP overflow: in float16, F F^T of a 1x64x512x512 map with values around 10 reaches
    ~2.6e7 > 65504 before the division, so bmm-based Gram code returns inf. Ours accumulates
    in float32 and divides before rounding: finite and accurate."""
    x = (10.0 + torch.randn(1, 64, 512, 512)).to(device=device, dtype=dtype)
    expected = reference_gram_matrix(x, normalize=True)
    assert float(expected.max()) * 64 * 512 * 512 > 65504  # the raw product does overflow float16
    gram = pyvision_ops.gram_matrix(x, normalize=True)
    assert gram.dtype == dtype
    assert bool(torch.isfinite(gram).all()), "Gram overflowed"
    rtol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(gram.double().cpu(), expected, rtol=rtol, atol=0)
    assert_symmetric(gram)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 0, 4), (2, 3, 0)], ids=shape_id)
def test_gram_matrix_empty_spatial_is_an_empty_sum(shape, device):
    """No positions: every inner product is an empty sum, 0 (every element must be written)."""
    x = torch.randn(shape, device=device)
    poison_allocator((2, 3, 3), x.dtype, device)
    gram = pyvision_ops.gram_matrix(x, normalize=False)
    assert tuple(gram.shape) == (2, 3, 3)
    assert torch.equal(gram.cpu(), torch.zeros(2, 3, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_gram_matrix_no_channels(device):
    x = torch.randn(2, 0, 3, 4, device=device)
    gram = pyvision_ops.gram_matrix(x)
    assert tuple(gram.shape) == (2, 0, 0)


# --------------------------------------------------------------------------------------------
# gram_matrix: backward
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("shape", BACKWARD_SHAPES, ids=shape_id)
def test_gram_matrix_backward_matches_reference(shape, normalize, dtype, device):
    """A non-symmetric dG: the gradient needs (dG + dG^T), not 2 dG."""
    x = features_of(shape, dtype, device).requires_grad_(True)
    gram = pyvision_ops.gram_matrix(x, normalize)
    grad = torch.randn(gram.shape, device=device).to(dtype)
    assert not torch.equal(grad, grad.transpose(-1, -2)) or shape[1] == 1
    poison_allocator(x.shape, dtype, device)
    gram.backward(grad)
    expected = reference_gram_backward(x, grad, normalize)
    assert x.grad.dtype == dtype and x.grad.shape == x.shape and x.grad.device == x.device
    assert_close_scaled(x.grad, expected, GRAD_TOL[dtype])

    # The documented closed form, dF = (dG + dG^T) F / norm, is what autograd computed.
    g64, x64 = grad.double().cpu(), x.detach().double().cpu().reshape(shape[0], shape[1], -1)
    norm = shape[1] * x64.shape[-1] if normalize else 1
    closed_form = torch.bmm(g64 + g64.transpose(1, 2), x64).reshape(shape) / norm
    torch.testing.assert_close(expected, closed_form, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (3, 65, 7, 9), (2, 130, 17, 19), (1, 32, 20, 30)], ids=shape_id)
def test_gram_style_loss_forward_and_backward_in_both_layouts(shape, layout, dtype):
    """Gram, its backward and the style loss of one input, planar and channels_last: the shapes
    of the former portable-path test (conftest now runs every CPU test on both paths)."""
    x = with_layout(features_of(shape, dtype, "cpu"), layout)
    check_gram(x, True, TOL[dtype])
    x = x.detach().requires_grad_(True)
    gram = pyvision_ops.gram_matrix(x)
    grad = torch.randn(gram.shape).to(dtype)
    gram.backward(grad)
    assert_close_scaled(x.grad, reference_gram_backward(x, grad, True), GRAD_TOL[dtype])
    target = target_gram_of(shape, dtype, "cpu", True)
    x64 = x.detach().double().requires_grad_(True)
    expected_loss = reference_style_loss(x64, target, True, "sum")
    (expected_grad,) = torch.autograd.grad(expected_loss, x64)
    x.grad = None
    loss = pyvision_ops.style_loss(x, target)
    loss.backward()
    assert_close_scaled(loss, expected_loss, TOL[dtype])
    assert_close_scaled(x.grad, expected_grad, GRAD_TOL[dtype])


# The CPU backward kernel (planar and channels-last) splits an item's positions between threads
# when the batch is smaller than the thread count, in passes of 256 positions (planar) or blocks
# of 16 (channels-last) with a ragged last one; 288 channels take two channel chunks.
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(1, 16, 30, 70), (1, 32, 1000), (2, 64, 1, 1), (3, 16, 17, 3), (1, 288, 5, 7)], ids=shape_id)
def test_gram_matrix_backward_cpu_thread_splits(shape, layout, threads):
    if layout == "channels_last" and shape[-1] == 1 and shape[-2] == 1:
        pytest.skip("a 1x1 map is contiguous in both layouts")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = with_layout(features_of(shape, torch.float32, "cpu"), layout).requires_grad_(True)
        grad = torch.randn(shape[0], shape[1], shape[1])
        before = grad.clone()
        pyvision_ops.gram_matrix(x).backward(grad)
        assert_close_scaled(x.grad, reference_gram_backward(x, grad, True), GRAD_TOL[torch.float32])
        assert_unchanged(before, grad)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "expanded"])
def test_gram_matrix_backward_of_strided_features(layout, normalize, device):
    """Features in any layout get the reference gradient (upstream gradients of every layout are
    the contract's TestGramMatrixContract.test_upstream_gradient_layouts)."""
    shape = (2, 6, 5, 7)
    x = with_layout(features_of(shape, torch.float32, device), layout).requires_grad_(True)
    grad = torch.randn(2, 6, 6, device=device)
    pyvision_ops.gram_matrix(x, normalize).backward(grad)
    assert x.grad.shape == x.shape
    assert_close_scaled(x.grad, reference_gram_backward(x, grad, normalize), GRAD_TOL[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gram_matrix_backward_op_directly(layout, device):
    """The registered backward op on its own: (dG + dG^T) F / norm, result in features' shape."""
    x = with_layout(features_of((3, 9, 4, 6), torch.float64, device), layout)
    grad = torch.randn(3, 9, 9, dtype=torch.float64, device=device)
    before_x, before_grad = x.clone(), grad.clone()
    for normalize in (True, False):
        out = ops._gram_matrix_backward(grad, x, normalize)
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
        assert_close_scaled(out, reference_gram_backward(x, grad, normalize), 1e-12)
    assert_unchanged(before_x, x)
    assert_unchanged(before_grad, grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("shape", [(2, 3, 2, 3), (2, 3, 5), (1, 1, 3, 2), (2, 4, 1)], ids=shape_id)
def test_gram_matrix_gradcheck(shape, normalize, device):
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: pyvision_ops.gram_matrix(t, normalize), (x,), fast_mode=True)


# --------------------------------------------------------------------------------------------
# style_loss
# --------------------------------------------------------------------------------------------


def target_shape(kind: str, n: int, c: int):
    return {"batched": (n, c, c), "shared": (c, c), "shared_batch1": (1, c, c)}[kind]


STYLE_SHAPES = [(2, 3, 7, 9), (3, 65, 5, 3), (2, 1, 4, 4), (2, 17, 1), (2, 33, 20), (2, 32, 5, 7)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("target_kind", ["batched", "shared", "shared_batch1"])
@pytest.mark.parametrize("shape", STYLE_SHAPES, ids=shape_id)
def test_style_loss_matches_reference(shape, target_kind, normalize, reduction, dtype, device):
    n, c = shape[0], shape[1]
    # Unnormalized float16 losses of unit features pass 65504: smaller features keep them finite.
    scale = 0.25 if dtype == torch.float16 and not normalize else 1.0
    x = features_of(shape, dtype, device, scale).requires_grad_(True)
    other_shape = (n if target_kind == "batched" else 1, *shape[1:])
    target = target_gram_of(other_shape, dtype, device, normalize, scale).reshape(target_shape(target_kind, n, c))
    target.requires_grad_(True)
    before_x, before_target = x.detach().clone(), target.detach().clone()

    loss = pyvision_ops.style_loss(x, target, normalize=normalize, reduction=reduction)
    assert loss.shape == () and loss.dtype == dtype and loss.device == x.device
    expected = reference_style_loss(x.detach(), target, normalize, reduction)
    assert_close_scaled(loss, expected, TOL[dtype] * 2)

    # The upstream gradient must scale the result. In low precision it is also the loss scale of
    # mixed-precision training: it lifts the gradient (~1e-7 for a normalized mean) out of the
    # float16 subnormals, so that the comparison measures the kernel, not the format's range.
    grad_loss = 1.75
    if dtype == torch.float16:  # the scale itself must stay below float16's max, 65504
        unscaled = reference_style_loss_backward(x, target, normalize, reduction)
        grad_loss *= 2.0 ** min(14, -round(float(torch.log2(unscaled.abs().max()))))
    poison_allocator(x.shape, dtype, device)
    loss.backward(torch.tensor(grad_loss, dtype=dtype, device=device))
    assert target.grad is None, "the style target is a constant: it must get no gradient"
    assert x.grad.dtype == dtype and x.grad.shape == x.shape
    expected_grad = reference_style_loss_backward(x, target, normalize, reduction, grad_loss)
    assert_close_scaled(x.grad, expected_grad, GRAD_TOL[dtype] * 2)
    assert_unchanged(before_x, x.detach())
    assert_unchanged(before_target, target.detach())


def test_style_loss_defaults_are_normalized_sum():
    x = features_of((2, 4, 3, 5), torch.float64, "cpu")
    target = target_gram_of((2, 4, 3, 5), torch.float64, "cpu", True)
    expected = reference_style_loss(x, target, True, "sum")
    assert_close_scaled(pyvision_ops.style_loss(x, target), expected, 1e-12)
    # "mean" divides the same sum by N*C*C, also when the target is shared by the batch.
    mean = pyvision_ops.style_loss(x, target[0], reduction="mean")
    assert_close_scaled(mean, reference_style_loss(x, target[0], True, "sum") / (2 * 4 * 4), 1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "expanded"])
def test_style_loss_any_strides(layout, device):
    """Strided features, and a non-contiguous target (transposed / stride-0 broadcast)."""
    x = with_layout(features_of((2, 7, 5, 6), torch.float32, device), layout).requires_grad_(True)
    target = target_gram_of((2, 7, 5, 6), torch.float32, device, True)
    for t in (target.transpose(1, 2), target[:1].expand(2, 7, 7), target[0].t()):
        x.grad = None
        loss = pyvision_ops.style_loss(x, t, reduction="mean")
        assert_close_scaled(loss, reference_style_loss(x.detach(), t, True, "mean"), 2e-5)
        loss.backward()
        assert_close_scaled(x.grad, reference_style_loss_backward(x, t, True, "mean"), 4e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("shape,target_kind", [((2, 3, 2, 3), "batched"), ((2, 3, 5), "shared"), ((3, 2, 2, 3), "shared_batch1")], ids=str)
def test_style_loss_gradcheck(shape, target_kind, normalize, reduction, device):
    n, c = shape[0], shape[1]
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.randn(target_shape(target_kind, n, c), dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(
        lambda t: pyvision_ops.style_loss(t, target, normalize, reduction), (x,), fast_mode=True
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_style_loss_forward_op_both_outputs(normalize, reduction, device):
    """The registered forward returns (loss, gram); its backward takes a grad for either output
    (an empty grad_gram when only the loss is used) and both must be right."""
    x = torch.randn(2, 4, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.randn(2, 4, 4, dtype=torch.float64, device=device)
    code = REDUCTION_CODES[reduction]
    loss, gram = ops._style_loss_forward(x, target, normalize, code)
    assert_close_scaled(loss, reference_style_loss(x.detach(), target, normalize, reduction), 1e-12)
    assert_close_scaled(gram, reference_gram_matrix(x.detach(), normalize), 1e-12)
    assert_symmetric(gram)

    weight = torch.randn(2, 4, 4, dtype=torch.float64)
    (1.3 * loss + (gram * weight.to(device)).sum()).backward()
    x64 = x.detach().cpu().requires_grad_(True)
    (1.3 * reference_style_loss(x64, target, normalize, reduction) + (reference_gram_matrix(x64, normalize) * weight).sum()).backward()
    assert_close_scaled(x.grad, x64.grad, 1e-12)

    assert torch.autograd.gradcheck(lambda t: ops._style_loss_forward(t, target, normalize, code), (x,), fast_mode=True)


# --------------------------------------------------------------------------------------------
# perceptual_loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 7, 11), (1, 1, 2, 2)], ids=shape_id)
def test_perceptual_loss_matches_formula(shape, dtype, device):
    a = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    b = torch.randn(shape, dtype=dtype, device=device)
    loss = pyvision_ops.perceptual_loss(a, b)
    assert loss.shape == () and loss.dtype == dtype
    a64 = a.detach().cpu().double().requires_grad_(True)
    expected = reference_perceptual_loss(a64, b)
    assert_close_scaled(loss, expected, TOL[dtype])
    loss.backward()
    expected.backward()
    assert_close_scaled(a.grad, a64.grad, GRAD_TOL[dtype])


def test_perceptual_loss_rejects_shape_mismatch():
    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 5, 4)
    with pytest.raises(ValueError, match="shape"):
        pyvision_ops.perceptual_loss(a, b)


def test_perceptual_loss_empty_batch():
    a, b = torch.randn(0, 3, 4, 5), torch.randn(0, 3, 4, 5)
    assert float(pyvision_ops.perceptual_loss(a, b)) == 0.0


# --------------------------------------------------------------------------------------------
# bad input: a clear error naming the argument; the caller's tensors untouched
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4, 5, 6), (5,)], ids=shape_id)
def test_rejects_features_of_wrong_rank(shape, device):
    x = torch.randn(shape, device=device)
    expect_error(lambda: pyvision_ops.gram_matrix(x), [x], "features")
    target = torch.randn(shape[1] if len(shape) > 1 else 5, shape[1] if len(shape) > 1 else 5, device=device)
    expect_error(lambda: pyvision_ops.style_loss(x, target), [x, target], "features")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool], ids=str)
def test_rejects_integer_features(dtype, device):
    x = torch.randint(0, 2, (2, 3, 4, 5), device=device).to(dtype)
    expect_error(lambda: pyvision_ops.gram_matrix(x), [x], "features")
    target = torch.randn(2, 3, 3, device=device)
    expect_error(lambda: pyvision_ops.style_loss(x, target), [x, target], "features")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "n,bad_shape",
    [(2, (2, 4, 4)), (2, (3, 3, 3)), (2, (1, 2, 3, 3)), (2, (3, 4)), (2, (3,)), (1, (2, 3, 3)), (3, (2, 3, 3))],
    ids=str,
)
def test_style_loss_rejects_target_of_wrong_shape(n, bad_shape, device):
    """Features (n, 3, 4, 5): the target must be (n, 3, 3), (3, 3) or (1, 3, 3)."""
    x = torch.randn(n, 3, 4, 5, device=device, requires_grad=True)
    target = torch.randn(bad_shape, device=device)
    expect_error(lambda: pyvision_ops.style_loss(x, target), [x.detach(), target], "target_gram")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "SUM", "", "batchmean"])
def test_style_loss_rejects_bad_reduction(reduction, device):
    x = torch.randn(2, 3, 4, 5, device=device)
    target = torch.randn(2, 3, 3, device=device)
    with pytest.raises(ValueError, match="reduction"):
        pyvision_ops.style_loss(x, target, reduction=reduction)


# --------------------------------------------------------------------------------------------
# the shared op contract (tests/contract.py): opcheck, torch.compile, empty batch, bad input,
# upstream gradients of every layout -- for each registered op of the family
# --------------------------------------------------------------------------------------------

# (shape, layout) of the contract's samples: planar, channels_last and 3-D features, and sliced
# ones (every other channel of a NaN-filled buffer) for the strided read.
CONTRACT_CASES = [((2, 5, 4, 3), "contiguous"), ((2, 5, 4, 3), "channels_last"), ((3, 6, 7), "contiguous"), ((2, 4, 3, 5), "sliced")]


def contract_features(shape, layout, dtype, device, requires_grad):
    x = with_layout(features_of(shape, dtype, device), layout)
    return x.requires_grad_(requires_grad)


class _GramContract(OpContract):
    """Float64 results bit-near (1e-12), float32 within a few roundings of the result's scale:
    a strided upstream gradient may take another (equally exact) accumulation order."""

    def tolerance(self, dtype, device):
        return 1e-12 if dtype == torch.float64 else 1e-5

    def cases(self):
        """(shape, layout, dtype, flag) of every sample, float32 and float64; ``flag`` alternates
        (normalize, or sum/mean) so that each value meets each dtype without a full product."""
        return [
            (shape, layout, dtype, (i + j) % 2 == 0)
            for i, (shape, layout) in enumerate(CONTRACT_CASES)
            for j, dtype in enumerate((torch.float32, torch.float64))
        ]


class TestGramMatrixContract(_GramContract):
    op_name = "gram_matrix"

    def samples(self, device):
        return [
            Sample((contract_features(shape, layout, dtype, device, True), normalize), f"{shape_id(shape)}-{layout}-{dtype}-{normalize}")
            for shape, layout, dtype, normalize in self.cases()
        ]

    def empty_cases(self, device):
        return [
            EmptyCase(Sample((torch.randn(shape, device=device, requires_grad=True), normalize)), [(0, shape[1], shape[1])])
            for shape in [(0, 5, 3, 4), (0, 5, 7), (0, 1, 1, 1)]
            for normalize in (True, False)
        ]

    def bad_inputs(self, device):
        return [
            BadInput("2-D features", (torch.randn(3, 4, device=device), True), r"features must be 3-D .* or 4-D"),
            BadInput("5-D features", (torch.randn(2, 3, 4, 5, 6, device=device), True), r"features must be 3-D .* or 4-D"),
            BadInput("integer features", (torch.randint(0, 2, (2, 3, 4, 5), device=device), True), r"features must be float"),
        ]


class TestStyleLossForwardContract(_GramContract):
    op_name = "_style_loss_forward"

    def samples(self, device):
        samples = []
        for shape, layout, dtype, flag in self.cases():
            reduction = "sum" if flag else "mean"
            n, c = shape[0], shape[1]
            target_dims = (n, c, c) if reduction == "sum" else (c, c)  # a batched and a shared target
            x = contract_features(shape, layout, dtype, device, True)
            target = target_gram_of((1, *shape[1:]), dtype, device, True)[0].expand(target_dims).contiguous()
            samples.append(Sample((x, target, True, REDUCTION_CODES[reduction]), f"{shape_id(shape)}-{layout}-{dtype}-{reduction}"))
        return samples

    def empty_cases(self, device):
        """An empty batch is an empty sum: loss 0 (whatever the target's form) and an empty Gram."""
        cases = []
        for shape in [(0, 5, 3, 4), (0, 5, 7)]:
            for target_shape in [(0, 5, 5), (5, 5), (1, 5, 5)]:
                x = torch.randn(shape, device=device, requires_grad=True)
                target = torch.randn(target_shape, device=device)
                cases.append(EmptyCase(Sample((x, target, True, REDUCTION_CODES["sum"]), f"target {target_shape}"), [(), (0, 5, 5)]))
        return cases

    def bad_inputs(self, device):
        x = torch.randn(2, 3, 4, 5, device=device)
        target = torch.randn(2, 3, 3, device=device)
        code = REDUCTION_CODES["sum"]
        cases = [
            BadInput(f"target_gram of shape {bad}", (x, torch.randn(bad, device=device), True, code), r"target_gram must have shape")
            for bad in [(2, 4, 4), (3, 3, 3), (1, 2, 3, 3), (3, 4), (3,)]
        ]
        return cases + [
            BadInput("reduction code 7", (x, target, True, 7), r"reduction must be 0 \(sum\) or 1 \(mean\), got 7"),
            BadInput("2-D features", (x[0, 0], target, True, code), r"features must be 3-D"),
            BadInput("integer features", (x.long(), target, True, code), r"features must be float"),
        ]


class TestGramMatrixBackwardContract(_GramContract):
    op_name = "_gram_matrix_backward"
    differentiable = False  # no double backward is registered
    upstream_argument = 0  # grad_gram

    def samples(self, device):
        samples = []
        for shape, layout, dtype, normalize in self.cases():
            x = contract_features(shape, layout, dtype, device, False)
            grad = torch.randn(shape[0], shape[1], shape[1], dtype=dtype, device=device)
            samples.append(Sample((grad, x, normalize), f"{shape_id(shape)}-{layout}-{dtype}-{normalize}"))
        return samples

    def empty_cases(self, device):
        return [EmptyCase(Sample((torch.randn(0, 5, 5, device=device), torch.randn(0, 5, 3, 4, device=device), True)), [(0, 5, 3, 4)])]

    def bad_inputs(self, device):
        x = torch.randn(2, 3, 4, 5, device=device)
        return [
            BadInput(f"grad_gram of shape {bad}", (torch.randn(bad, device=device), x, True), r"grad_gram must have shape \(2, 3, 3\)")
            for bad in [(2, 4, 4), (3, 3, 3), (2, 3)]
        ] + [BadInput("integer features", (torch.randn(2, 3, 3, device=device), x.long(), True), r"features must be float")]


class TestStyleLossBackwardContract(_GramContract):
    op_name = "_style_loss_backward"
    differentiable = False  # no double backward is registered
    upstream_argument = 1  # grad_gram (grad_loss is 0-d: one layout only)

    def samples(self, device):
        samples = []
        for shape, layout, dtype, flag in self.cases():
            reduction = "sum" if flag else "mean"
            n, c = shape[0], shape[1]
            code = REDUCTION_CODES[reduction]
            x = contract_features(shape, layout, dtype, device, False)
            target = torch.randn(n, c, c, dtype=dtype, device=device)
            _, gram = ops._style_loss_forward(x, target, False, code)
            grad_loss = torch.randn((), dtype=dtype, device=device)
            # both outputs used, and (every other sample) only the loss: an empty grad_gram
            grad_grams = [torch.randn(n, c, c, dtype=dtype, device=device)]
            if dtype == torch.float64:
                grad_grams.append(torch.zeros(0, dtype=dtype, device=device))
            for grad_gram in grad_grams:
                kind = "loss" if grad_gram.numel() == 0 else "loss+gram"
                samples.append(Sample((grad_loss, grad_gram, x, gram, target, False, code), f"{shape_id(shape)}-{layout}-{dtype}-{reduction}-{kind}"))
        return samples

    def empty_cases(self, device):
        x = torch.randn(0, 5, 3, 4, device=device)
        gram = torch.zeros(0, 5, 5, device=device)
        args = (torch.ones((), device=device), torch.zeros(0, device=device), x, gram, torch.randn(5, 5, device=device), True, 0)
        return [EmptyCase(Sample(args), [(0, 5, 3, 4)])]

    def bad_inputs(self, device):
        """Every argument is checked in the op (reachable without the Python layer): a grad_gram,
        gram or grad_loss of the wrong shape must not broadcast into a plausible result."""
        x = torch.randn(2, 3, 4, 5, device=device)
        target = torch.randn(2, 3, 3, device=device)
        _, gram = ops._style_loss_forward(x, target, True, 0)
        grad_loss = torch.ones((), device=device)
        empty = torch.zeros(0, device=device)
        return [
            BadInput("grad_gram of shape (2, 4, 4)", (grad_loss, torch.randn(2, 4, 4, device=device), x, gram, target, True, 0), r"grad_gram"),
            BadInput("grad_gram of shape (3,)", (grad_loss, torch.randn(3, device=device), x, gram, target, True, 0), r"grad_gram"),
            BadInput("gram of shape (2, 2, 3)", (grad_loss, empty, x, gram[:, :2], target, True, 0), r"\bgram\b"),
            BadInput("grad_loss of shape (3,)", (torch.ones(3, device=device), empty, x, gram, target, True, 0), r"grad_loss"),
            BadInput("reduction code 7", (grad_loss, empty, x, gram, target, True, 7), r"reduction"),
        ]


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------


def style_and_gram(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    gram = pyvision_ops.gram_matrix(x, normalize=True)
    loss = pyvision_ops.style_loss(torch.relu(x) + 0.1 * x, target, normalize=True, reduction="mean")
    return 3.0 * loss + (torch.tanh(gram) * weight).sum() + pyvision_ops.gram_matrix(x, False).mean()


@pytest.mark.parametrize("device", DEVICES)
def test_compile_gram_and_style_loss_with_dynamic_shapes(device):
    """Gram and style loss together in one graph, over two shapes with dynamic=True (each op
    alone, static, is the contract's compile check)."""
    torch._dynamo.reset()
    compiled = torch.compile(style_and_gram, backend="aot_eager", fullgraph=True, dynamic=True)
    for shape in [(2, 6, 5, 7), (3, 4, 9, 8)]:
        n, c = shape[0], shape[1]
        x = features_of(shape, torch.float32, device).requires_grad_(True)
        x_eager = x.detach().clone().requires_grad_(True)
        target = target_gram_of((1, *shape[1:]), torch.float32, device, True)[0]
        weight = torch.randn(n, c, c, device=device)
        out = compiled(x, target, weight)
        expected = style_and_gram(x_eager, target, weight)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        out.backward()
        expected.backward()
        torch.testing.assert_close(x.grad, x_eager.grad, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# CUDA only
# --------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(4, 130, 17, 19), (2, 513, 3, 5), (3, 64, 32, 32), (2, 33, 100)], ids=shape_id)
def test_cuda_matches_cpu(shape, layout, dtype):
    """Same values on both devices (up to accumulation order / tensor-core rounding)."""
    n, c = shape[0], shape[1]
    x_cpu = with_layout(features_of(shape, dtype, "cpu"), layout).requires_grad_(True)
    x = x_cpu.detach().cuda().requires_grad_(True)
    if layout == "channels_last" and len(shape) == 4:
        assert x.is_contiguous(memory_format=torch.channels_last)
    gram, gram_cpu = pyvision_ops.gram_matrix(x), pyvision_ops.gram_matrix(x_cpu)
    assert gram.is_cuda
    assert_close_scaled(gram, gram_cpu, 2 * TOL[dtype])
    assert_symmetric(gram)
    grad = torch.randn(n, c, c).to(dtype)
    gram.backward(grad.cuda())
    gram_cpu.backward(grad)
    assert_close_scaled(x.grad, x_cpu.grad, 2 * GRAD_TOL[dtype])

    target = target_gram_of((n, *shape[1:]), dtype, "cpu", True)
    x.grad, x_cpu.grad = None, None
    loss = pyvision_ops.style_loss(x, target.cuda(), reduction="mean")
    loss_cpu = pyvision_ops.style_loss(x_cpu, target, reduction="mean")
    assert loss.is_cuda
    assert_close_scaled(loss, loss_cpu, 4 * TOL[dtype])
    loss.backward()
    loss_cpu.backward()
    assert_close_scaled(x.grad, x_cpu.grad, 4 * GRAD_TOL[dtype])


@needs_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_cuda_large_gram_matches_reference(dtype):
    """Many tiles per matrix and long inner products: the tiled (tensor-core) path end to end."""
    x = features_of((2, 256, 48, 40), dtype, "cuda")
    check_gram(x, True, TOL[dtype])


def _split_k_case(case: str, dtype: torch.dtype, device) -> torch.Tensor:
    if case == "planar-odd-length":  # L = 1023: the 2-byte staging path, several K splits
        return features_of((1, 64, 33, 31), dtype, device)
    if case == "channels-last-c60":  # C not a multiple of 8
        return with_layout(features_of((1, 60, 32, 32), dtype, device), "channels_last")
    if case == "channels-last-channel-slice":  # data pointer 2 or 4 bytes into the storage
        return with_layout(features_of((1, 72, 32, 32), dtype, device), "channels_last")[:, 1:65]
    flat = features_of((1 + 64 * 32 * 32,), dtype, device)  # planar, one element into its storage
    return flat[1:].view(1, 64, 32, 32)


SPLIT_K_CASES = ["planar-odd-length", "channels-last-c60", "channels-last-channel-slice", "planar-offset-view"]


@pytest.mark.parametrize("case", SPLIT_K_CASES)
def test_split_k_cases_are_what_they_claim(case):
    """The inputs of the CUDA test below, built on the CPU: their layouts and alignment."""
    x = _split_k_case(case, torch.float16, "cpu")
    if case.endswith("slice") or case.endswith("view"):
        assert x.storage_offset() == 1
    if case == "channels-last-channel-slice":
        assert x.shape[1] == 64 and x.stride(1) == 1 and not x.is_contiguous(memory_format=torch.channels_last)
    if case == "planar-odd-length":
        assert x.shape[2] * x.shape[3] == 1023


@needs_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("case", SPLIT_K_CASES)
def test_cuda_split_k_with_unaligned_or_odd_staging(case, dtype):
    """One batch item of long rows (the K dimension split between blocks) through the staging paths
    that cannot use 16-byte copies: an odd length, C not a multiple of 8, views that start one
    element into their storage. Against the float64 reference and the CPU kernel."""
    x = _split_k_case(case, dtype, "cuda")
    gram = check_gram(x, True, TOL[dtype])
    assert_close_scaled(gram.cpu(), pyvision_ops.gram_matrix(x.cpu()), 2 * TOL[dtype])


@needs_cuda
def test_cuda_rejects_tensors_on_another_device():
    x = torch.randn(2, 3, 4, 5, device="cuda")
    target = torch.randn(2, 3, 3)
    expect_error(lambda: pyvision_ops.style_loss(x, target), [x, target], r"(?i)target_gram|device")
    x_cpu, target_cuda = x.cpu(), target.cuda()
    expect_error(lambda: pyvision_ops.style_loss(x_cpu, target_cuda), [x_cpu, target_cuda], r"(?i)target_gram|device")
    grad = torch.randn(2, 3, 3)
    expect_error(lambda: ops._gram_matrix_backward(grad, x, True), [x, grad], r"(?i)grad|device")


@needs_cuda
def test_cuda_runs_on_current_stream():
    """Work is queued on the current stream: results are right when read after that stream."""
    stream = torch.cuda.Stream()
    x = features_of((4, 128, 64, 64), torch.float32, "cuda")
    target = target_gram_of((4, 128, 64, 64), torch.float32, "cuda", True)
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        gram = pyvision_ops.gram_matrix(x)
        loss = pyvision_ops.style_loss(x, target)
    stream.synchronize()
    assert_close_scaled(gram, reference_gram_matrix(x), 1e-5)
    assert_close_scaled(loss, reference_style_loss(x, target), 2e-5)
