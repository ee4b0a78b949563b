"""Op family 1: max_pool2d_with_indices (flat and compact indices) and max_unpool1d/2d/3d.

Every result is compared with an independent float64 reference (tests/references/unpool.py:
PyTorch's functional ops on float64 CPU copies, plus index arithmetic for the compact format).
Pooling and unpooling only move elements, so values and indices must match exactly in every dtype.
Each registered op also passes the shared contract (tests/contract.py: opcheck, torch.compile,
empty batch, bad input, upstream gradients of every layout, bit for bit). Every CPU test runs on
the vectorised and the portable kernels (tests/conftest.py).
"""

from __future__ import annotations

import itertools
import re
from typing import Sequence

import pytest
import torch
import torch.nn.functional as F

import pyvision_ops
from pyvision_ops.ops import unpool as unpool_ops
from conftest import (
    DEVICES,
    assert_unchanged,
    expect_error,
    needs_cuda,
    poison_allocator,
    poison_of,
)
from contract import BadInput, EmptyCase, OpContract, Sample, check_reads_any_upstream_layout
from references.unpool import (
    as_list,
    compact_to_flat,
    flat_to_compact,
    reference_max_pool2d,
    reference_max_pool2d_backward,
    reference_max_unpool,
    reference_max_unpool_backward,
    unpool_output_range,
)

ops = torch.ops.pyvision_ops
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
UNPOOL = {1: pyvision_ops.max_unpool1d, 2: pyvision_ops.max_unpool2d, 3: pyvision_ops.max_unpool3d}
F_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
LAYOUTS = ["contiguous", "channels_last", "transposed", "sliced", "expanded"]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def assert_values_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Exact equality (NaN equals NaN) of ours, any dtype and device, with a float64 reference."""
    assert tuple(actual.shape) == tuple(expected.shape), f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(
        actual.detach().cpu().to(torch.float64), expected.detach().cpu().to(torch.float64),
        rtol=0, atol=0, equal_nan=True,
    )


def assert_indices_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype, f"index dtype {actual.dtype} != {expected.dtype}"
    assert tuple(actual.shape) == tuple(expected.shape), f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.cpu(), expected.cpu()
    if not torch.equal(a, e):
        bad = (a != e).nonzero()[:5].tolist()
        details = ", ".join(f"{tuple(p)}: got {a[tuple(p)].item()} expected {e[tuple(p)].item()}" for p in bad)
        raise AssertionError(f"{int((a != e).sum())} of {a.numel()} indices differ, e.g. {details}")


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t``'s values stored in ``layout`` (for "expanded": batch item 0 repeated, stride 0)."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}[t.dim()]
        out = t.contiguous(memory_format=fmt)
        assert not out.is_contiguous()
        return out
    if layout == "transposed":
        out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not out.is_contiguous()
        return out
    if layout == "sliced":
        shape = list(t.shape)
        shape[1] *= 2
        shape[-1] += 3
        big = torch.full(shape, poison_of(t.dtype), dtype=t.dtype, device=t.device)
        view = big[:, ::2, ..., 1 : 1 + t.shape[-1]]
        view.copy_(t)
        assert not view.is_contiguous()
        return view
    if layout == "expanded":
        return t[:1].expand_as(t)
    raise ValueError(layout)


def pool_indices(dims: int, x_shape: Sequence[int], kernel, stride, padding, device="cpu") -> torch.Tensor:
    """Flat int64 indices of PyTorch's max pooling of a fresh random float64 input."""
    source = torch.randn(*x_shape, dtype=torch.float64)
    _, indices = F_POOL[dims](source, kernel, stride, padding, return_indices=True)
    return indices.to(device)


def pooled_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil: bool = False) -> int:
    return unpool_ops.pooling_output_size(size, kernel, stride, padding, dilation, ceil)


def scatter_add_tolerance(dtype: torch.dtype, device) -> float:
    """The pooling backward with overlapping windows adds up to four gradients per element: in
    raster order on the CPU (bitwise reproducible, whatever the gradient's layout), with atomics in
    no fixed order on CUDA (the last bits may differ between two runs)."""
    if torch.device(device).type == "cpu":
        return 0.0
    return 1e-12 if dtype == torch.float64 else 1e-6


# Pool configurations: (kernel, stride, padding, dilation, ceil_mode). Square ones over the full
# product, plus rectangular ones (a kH/kW swap in the compact format shows up only there).
SQUARE_POOL_CONFIGS = list(itertools.product([2, 3], [None, 1, 2, 3], [0, 1], [1, 2], [False, True]))
RECT_POOL_CONFIGS = [
    ((2, 3), (1, 2), (1, 0), (2, 1), False),
    ((3, 2), (2, 1), (0, 1), (1, 2), True),
    ((1, 3), (1, 3), (0, 1), (1, 1), True),
    ((4, 2), (3, 2), (2, 1), (1, 1), False),
    ((3, 4), None, (1, 2), (2, 1), True),
]
POOL_SHAPES = [(2, 3, 7, 9), (1, 2, 8, 5)]


def config_id(config) -> str:
    k, s, p, d, c = config
    return f"k{k}-s{s}-p{p}-d{d}-{'ceil' if c else 'floor'}".replace(" ", "")


# --------------------------------------------------------------------------------------------
# max_pool2d_with_indices: forward
# --------------------------------------------------------------------------------------------


def check_pool(x: torch.Tensor, kernel, stride=None, padding=0, dilation=1, ceil_mode=False) -> None:
    """Flat and compact pooling of ``x`` against the reference; ``x`` must be left untouched."""
    before = x.clone()
    ref_values, ref_flat = reference_max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    values, flat = pyvision_ops.max_pool2d_with_indices(x, kernel, stride, padding, dilation, ceil_mode)
    assert values.dtype == x.dtype and values.device == x.device and flat.device == x.device
    assert_values_equal(values, ref_values)
    assert_indices_equal(flat, ref_flat)

    c_values, compact = pyvision_ops.max_pool2d_with_indices(
        x, kernel, stride, padding, dilation, ceil_mode, compact=True
    )
    assert compact.dtype == torch.uint8
    assert_values_equal(c_values, ref_values)
    assert_indices_equal(compact, flat_to_compact(ref_flat, x.shape[-1], kernel, stride, padding, dilation))
    # The documented conversion takes the compact indices back to PyTorch's.
    assert_indices_equal(compact_to_flat(compact, x.shape[-1], kernel, stride, padding, dilation), ref_flat)
    assert_unchanged(before, x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("config", SQUARE_POOL_CONFIGS + RECT_POOL_CONFIGS, ids=config_id)
def test_max_pool2d_matches_pytorch(config, shape, device):
    kernel, stride, padding, dilation, ceil_mode = config
    x = torch.randn(*shape, device=device)
    check_pool(x, kernel, stride, padding, dilation, ceil_mode)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("config", [(3, 2, 1, 1, False), (2, None, 0, 1, True), ((3, 2), 1, (1, 0), (1, 2), True)], ids=config_id)
def test_max_pool2d_larger_input(config, layout, device):
    """Enough work for the threaded/vectorised paths (odd channel count for channels_last)."""
    kernel, stride, padding, dilation, ceil_mode = config
    x = with_layout(torch.randn(4, 17, 33, 31, device=device), layout)
    check_pool(x, kernel, stride, padding, dilation, ceil_mode)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("config", [(2, None, 0, 1, False), (3, 1, 1, 1, True), (3, 2, 1, 2, True), ((2, 3), (2, 1), (1, 1), 1, False)], ids=config_id)
def test_max_pool2d_ties_pick_first_maximum(config, dtype, device):
    """Small-integer values make most windows tie: the first maximum in window order wins."""
    kernel, stride, padding, dilation, ceil_mode = config
    x = torch.randint(-2, 3, (2, 3, 9, 8), device=device).to(dtype)
    check_pool(x, kernel, stride, padding, dilation, ceil_mode)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", [(2, None, 0, 1, False), (3, 2, 1, 1, True), (3, 1, 1, 2, False)], ids=config_id)
def test_max_pool2d_nan_propagates_as_pytorch(config, device):
    kernel, stride, padding, dilation, ceil_mode = config
    x = torch.randn(2, 3, 9, 10, device=device)
    x[torch.rand(x.shape, device=device) < 0.15] = float("nan")
    x[0, 0, :3, :3] = float("nan")  # a window made of NaN only
    check_pool(x, kernel, stride, padding, dilation, ceil_mode)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", [(2, None, 0, 1, True), (3, 2, 1, 1, True), (3, 1, 1, 2, False)], ids=config_id)
def test_max_pool2d_all_minus_inf(config, device):
    """No element beats the initial -inf: the index is the window's first in-bounds element."""
    kernel, stride, padding, dilation, ceil_mode = config
    x = torch.full((1, 2, 7, 6), float("-inf"), device=device)
    x[0, 1, ::2, ::3] = torch.randn(4, 2, device=device)  # channel 1 mixes finite values in
    check_pool(x, kernel, stride, padding, dilation, ceil_mode)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_max_pool2d_dtypes(dtype, device):
    x = torch.randn(2, 5, 11, 10, device=device).to(dtype)
    check_pool(x, 3, 2, 1, 1, True)
    check_pool(x, (2, 3), (1, 2), (1, 1), (2, 1), False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool2d_memory_formats(layout, device):
    x = with_layout(torch.randn(3, 4, 9, 10, device=device), layout)
    check_pool(x, 3, 2, 1, 1, False)
    for compact in (False, True):
        values, indices = pyvision_ops.max_pool2d_with_indices(x, 2, compact=compact)
        if layout == "channels_last":
            assert values.is_contiguous(memory_format=torch.channels_last), values.stride()
            assert indices.is_contiguous(memory_format=torch.channels_last), indices.stride()


@pytest.mark.parametrize("device", DEVICES)
def test_max_pool2d_unbatched(device):
    x = torch.randn(3, 8, 7, device=device)
    for compact in (False, True):
        values, indices = pyvision_ops.max_pool2d_with_indices(x, 3, 2, 1, compact=compact)
        ref_values, ref_indices = reference_max_pool2d(x.unsqueeze(0), 3, 2, 1, compact=compact)
        assert values.shape == (3, 4, 4) and indices.shape == (3, 4, 4)
        assert_values_equal(values, ref_values[0])
        assert_indices_equal(indices, ref_indices[0])


@pytest.mark.parametrize("device", DEVICES)
def test_max_pool2d_compact_kernel_of_256_elements(device):
    """kH * kW == 256 is the largest compact window: index 255 must survive."""
    x = torch.randn(2, 3, 16, 16, device=device)
    x[0, 0, 15, 15] = 100.0  # the last window element: compact index 255
    check_pool(x, 16)
    _, compact = pyvision_ops.max_pool2d_with_indices(x, 16, compact=True)
    assert compact[0, 0, 0, 0].item() == 255


def test_pooling_output_size_matches_pytorch():
    for size, (k, s, p, d, c) in itertools.product([5, 6, 7, 8, 13], SQUARE_POOL_CONFIGS):
        s = k if s is None else s
        if (size + 2 * p - d * (k - 1) - 1) < 0:
            continue
        expected = F.max_pool2d(torch.randn(1, 1, size, size), k, s, p, d, c).shape[-1]
        assert unpool_ops.pooling_output_size(size, k, s, p, d, c) == expected, (size, k, s, p, d, c)


def test_pooling_output_size_ceil_mode_every_small_geometry():
    """ceil_mode's "last window starts inside the input or the left padding" rule, written as a
    minimum (no guard under symbolic sizes), against PyTorch on every small geometry."""
    checked = 0
    for size, k, s, d in itertools.product(range(1, 24), range(1, 6), range(1, 6), range(1, 4)):
        for p in range(k // 2 + 1):
            if size + 2 * p < d * (k - 1) + 1:
                continue
            expected = F.max_pool1d(torch.zeros(1, 1, size), k, s, p, d, ceil_mode=True).shape[-1]
            assert unpool_ops.pooling_output_size(size, k, s, p, d, True) == expected, (size, k, s, p, d)
            checked += 1
    assert checked > 2000


def test_top_level_exports():
    for name in ("max_pool2d_with_indices", "max_unpool1d", "max_unpool2d", "max_unpool3d"):
        assert getattr(pyvision_ops, name) is getattr(unpool_ops, name)
        assert name in pyvision_ops.__all__


# --------------------------------------------------------------------------------------------
# max_unpool1d/2d/3d: forward
# --------------------------------------------------------------------------------------------


def check_unpool(dims: int, x: torch.Tensor, indices: torch.Tensor, kernel, stride=None, padding=0, output_size=None):
    """Ours against the reference; returns ours. Neither input may be modified."""
    x_before, indices_before = x.clone(), indices.clone()
    expected = reference_max_unpool(dims, x, indices, kernel, stride, padding, output_size)
    poison_allocator(expected.shape, x.dtype, x.device)
    out = UNPOOL[dims](x, indices, kernel, stride, padding, output_size)
    assert out.dtype == x.dtype and out.device == x.device
    assert_values_equal(out, expected)
    assert_unchanged(x_before, x)
    assert_unchanged(indices_before, indices)
    return out


def to_index_dtype(flat: torch.Tensor, dtype: torch.dtype, width: int, kernel, stride, padding) -> torch.Tensor:
    if dtype == torch.uint8:
        return flat_to_compact(flat, width, kernel, stride, padding).to(flat.device)
    return flat.to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32, torch.uint8], ids=str)
@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("stride", [None, 1, 2, 3])
@pytest.mark.parametrize("kernel", [2, 3, (2, 3), (3, 2)], ids=str)
def test_max_unpool2d_matches_pytorch(kernel, stride, padding, index_dtype, device):
    """Indices from pooling an HxW plane, unpooled (random values) back to output_size=(H, W).

    With stride < kernel several windows may name the same element; the unpooled values are
    fresh random numbers, so the last window in raster order must win (PyTorch's CPU loop).
    """
    k = as_list(kernel, 2)
    s = as_list(stride, 2, k)
    p = as_list(padding, 2)
    if any(pi > ki // 2 for pi, ki in zip(p, k)):
        pytest.skip("padding larger than half the kernel is invalid")
    h, w = 9, 8
    flat = pool_indices(2, (2, 3, h, w), k, s, p)
    indices = to_index_dtype(flat, index_dtype, w, k, s, p).to(device)
    x = torch.randn(flat.shape, device=device)
    check_unpool(2, x, indices, kernel, stride, padding, output_size=(h, w))
    check_unpool(2, x, indices, kernel, stride, padding, output_size=torch.Size([2, 3, h, w]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32, torch.uint8], ids=str)
@pytest.mark.parametrize("config", [(2, 2, 0), (3, 2, 1), ((2, 3), (2, 3), (1, 0)), (3, 1, 1)], ids=str)
def test_max_unpool2d_default_output_size(config, index_dtype, device):
    kernel, stride, padding = config
    k, s, p = as_list(kernel, 2), as_list(stride, 2), as_list(padding, 2)
    out_h, out_w = [(n - 1) * s[i] - 2 * p[i] + k[i] for i, n in enumerate((4, 5))]
    flat = pool_indices(2, (2, 3, out_h, out_w), k, s, p)
    assert flat.shape[-2:] == (4, 5)
    indices = to_index_dtype(flat, index_dtype, out_w, k, s, p).to(device)
    x = torch.randn(flat.shape, device=device)
    out = check_unpool(2, x, indices, kernel, stride, padding)
    assert out.shape == (2, 3, out_h, out_w)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("output_delta", [-1, 0, 1])
def test_max_unpool2d_output_size_within_stride(output_delta, device):
    """Any output_size in (default - stride, default + stride) is valid; indices are flat in it."""
    kernel, stride = 2, 2
    x = torch.randn(2, 3, 4, 5, device=device)
    out_h, out_w = 8 + output_delta, 10 + output_delta
    plane = out_h * out_w
    # A permutation: every output element is hit at most once, in random places.
    indices = torch.stack([torch.randperm(plane)[: 20] for _ in range(6)]).view(2, 3, 4, 5).to(device)
    out = check_unpool(2, x, indices, kernel, stride, 0, output_size=(out_h, out_w))
    assert out.shape == (2, 3, out_h, out_w)


@pytest.mark.parametrize("device", DEVICES)
def test_max_unpool_duplicate_flat_indices_last_wins(device):
    """Random flat indices with many duplicates: the last element in raster order wins."""
    x = torch.randn(2, 3, 4, 5, device=device)
    indices = torch.randint(0, 8 * 10, (2, 3, 4, 5), device=device)
    check_unpool(2, x, indices, 2, 2, 0)
    check_unpool(2, x, indices.int(), 2, 2, 0)
    x1 = torch.randn(2, 3, 20, device=device)
    check_unpool(1, x1, torch.randint(0, 21, (2, 3, 20), device=device), 2, 1, 0)
    x3 = torch.randn(1, 2, 3, 4, 3, device=device)
    check_unpool(3, x3, torch.randint(0, 4 * 5 * 4, (1, 2, 3, 4, 3), device=device), 2, 1, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32, torch.uint8], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("config", [(2, 2, 0), (3, 2, 1)], ids=str)
def test_max_unpool2d_larger_input(config, layout, index_dtype, device):
    """Enough planes for the threaded paths; overlapping windows make duplicates (last wins)."""
    kernel, stride, padding = config
    h, w = 33, 30
    flat = pool_indices(2, (4, 17, h, w), kernel, stride, padding)
    indices = with_layout(to_index_dtype(flat, index_dtype, w, kernel, stride, padding).to(device), layout)
    x = with_layout(torch.randn(flat.shape, device=device), layout)
    check_unpool(2, x, indices, kernel, stride, padding, output_size=(h, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", [(3, 1, 0), (2, 1, 0), ((3, 2), (1, 2), (0, 0)), (3, 2, 1)], ids=str)
def test_max_unpool2d_random_compact_indices(config, device):
    """Arbitrary compact indices (not from pooling), overlapping windows: last window wins."""
    kernel, stride, padding = config
    k, s, p = as_list(kernel, 2), as_list(stride, 2), as_list(padding, 2)
    x = torch.randn(2, 3, 5, 6, device=device)
    compact = torch.randint(0, k[0] * k[1], x.shape, device=device, dtype=torch.uint8)
    if any(p):
        # With padding a window reaches outside the output plane; move those to the centre,
        # which is always inside (padding <= kernel // 2).
        out_size = [(n - 1) * s[i] - 2 * p[i] + k[i] for i, n in enumerate(x.shape[-2:])]
        local = compact.cpu().long()
        h = torch.arange(x.shape[-2]).view(-1, 1) * s[0] - p[0] + local // k[1]
        w = torch.arange(x.shape[-1]).view(1, -1) * s[1] - p[1] + local % k[1]
        inside = (h >= 0) & (h < out_size[0]) & (w >= 0) & (w < out_size[1])
        centre = (k[0] // 2) * k[1] + k[1] // 2
        compact = torch.where(inside.to(device), compact, torch.full_like(compact, centre))
    check_unpool(2, x, compact, kernel, stride, padding)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("upstream", ["dense", "sum", "per-channel"])
def test_max_unpool3d_1x2x2_windows_over_several_slices_backward(upstream, compact, device):
    """3-D (1, 2, 2) windows over several depth slices: the CPU's 2x2 gather paths walk one slice,
    and once served these too, leaving every slice but the first unwritten (regression)."""
    torch.manual_seed(5)
    src = torch.randn(2, 3, 4, 3, 5, device=device).requires_grad_(True)
    codes = torch.randint(0, 4, src.shape, device=device, dtype=torch.uint8)
    d = torch.arange(4, device=device).view(4, 1, 1)
    h = torch.arange(3, device=device).view(1, 3, 1)
    w = torch.arange(5, device=device).view(1, 1, 5)
    flat = (d * 6 + 2 * h + codes.long() // 2) * 10 + 2 * w + codes.long() % 2  # target (4, 6, 10)
    indices = codes if compact else flat
    out = pyvision_ops.max_unpool3d(src, indices, (1, 2, 2), (1, 2, 2))
    assert_values_equal(out.detach(), F.max_unpool3d(src.detach(), flat, (1, 2, 2), (1, 2, 2)))
    if upstream == "dense":
        grad = torch.randn(out.shape, device=device)
    elif upstream == "sum":
        grad = torch.ones((), device=device).expand(out.shape)
    else:
        grad = torch.randn(1, 3, 1, 1, 1, device=device).expand(out.shape)
    (got,) = torch.autograd.grad(out, src, grad)
    expected = torch.gather(grad.contiguous().flatten(2), 2, flat.flatten(2)).view_as(src)
    assert_values_equal(got, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("stride", [None, 1, 2])
@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("dims", [1, 3])
def test_max_unpool1d_3d_match_pytorch(dims, kernel, stride, padding, index_dtype, device):
    shape = (2, 3, 11) if dims == 1 else (1, 2, 5, 6, 7)
    flat = pool_indices(dims, shape, kernel, stride, padding)
    x = torch.randn(flat.shape, device=device)
    indices = flat.to(device=device, dtype=index_dtype)
    check_unpool(dims, x, indices, kernel, stride, padding, output_size=shape[2:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_max_unpool_dtypes(dtype, dims, device):
    shape = {1: (2, 3, 12), 2: (2, 3, 8, 7), 3: (1, 2, 4, 6, 5)}[dims]
    flat = pool_indices(dims, shape, 2, 2, 0)
    x = torch.randn(flat.shape, device=device).to(dtype)
    check_unpool(dims, x, flat.to(device), 2, 2, 0, output_size=shape[2:])
    if dims == 2:
        check_unpool(2, x, flat_to_compact(flat, shape[-1], 2).to(device), 2, 2, 0, output_size=shape[2:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_layout", ["same", "contiguous"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.uint8], ids=str)
@pytest.mark.parametrize("dims", [2, 3])
def test_max_unpool_memory_formats(dims, index_dtype, layout, index_layout, device):
    if dims == 3 and index_dtype == torch.uint8:
        pytest.skip("compact indices are 2-D only")
    shape = (3, 4, 9, 8) if dims == 2 else (2, 3, 5, 6, 4)
    # Non-overlapping padded windows: layouts only, no duplicate targets (those have their tests).
    kernel, stride, padding = 3, 3, 1
    flat = pool_indices(dims, shape, kernel, stride, padding)
    indices = flat if index_dtype == torch.int64 else flat_to_compact(flat, shape[-1], kernel, stride, padding)
    indices = indices.to(device)
    x = with_layout(torch.randn(flat.shape, device=device), layout)
    indices = with_layout(indices, layout if index_layout == "same" else "contiguous")
    if layout == "expanded" and index_layout == "contiguous":
        indices = with_layout(indices, "expanded")  # x repeats item 0: so must its indices
    out = check_unpool(dims, x, indices, kernel, stride, padding, output_size=shape[2:])
    if layout == "channels_last":
        fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
        assert out.is_contiguous(memory_format=fmt), out.stride()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_max_unpool_unbatched(dims, device):
    shape = {1: (3, 10), 2: (3, 8, 6), 3: (2, 4, 6, 4)}[dims]  # the default output_size
    flat = pool_indices(dims, (1, *shape), 2, 2, 0)[0]
    x = torch.randn(flat.shape, device=device)
    out = check_unpool(dims, x, flat.to(device), 2, 2, 0, output_size=shape[1:])
    assert out.shape == shape
    out = check_unpool(dims, x, flat.to(device), 2, 2, 0)
    assert out.dim() == dims + 1
    if dims == 2:
        compact = flat_to_compact(flat, shape[-1], 2).to(device)
        check_unpool(2, x, compact, 2, 2, 0, output_size=shape[1:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", [(2, None, 0, 1, False), (3, 2, 1, 1, True), ((2, 3), (2, 1), (1, 1), 1, False)], ids=config_id)
def test_pool_then_unpool_roundtrip(config, device):
    """SegNet's use: unpooling the pooled values with their indices puts each maximum back."""
    kernel, stride, padding, dilation, ceil_mode = config
    x = torch.randn(2, 4, 11, 10, device=device)
    for compact in (False, True):
        values, indices = pyvision_ops.max_pool2d_with_indices(x, kernel, stride, padding, dilation, ceil_mode, compact)
        out = pyvision_ops.max_unpool2d(values, indices, kernel, stride, padding, output_size=x.shape[-2:])
        ref_values, ref_flat = reference_max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
        expected = torch.zeros(x.shape, dtype=torch.float64).flatten(2)
        expected.scatter_(2, ref_flat.flatten(2), ref_values.flatten(2))
        assert_values_equal(out, expected.view(x.shape))


# --------------------------------------------------------------------------------------------
# errors: raise (never crash, never a device assert), name the culprit, touch nothing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("bad", [-1, -7, 80, 83, 2**31 - 1, 2**40, -(2**40)])
def test_max_unpool2d_rejects_out_of_range_index(bad, index_dtype, device):
    if index_dtype == torch.int32 and not -(2**31) <= bad < 2**31:
        pytest.skip("does not fit in int32")
    x = torch.randn(2, 3, 4, 5, device=device)
    indices = torch.stack([torch.randperm(80)[:20] for _ in range(6)]).view(2, 3, 4, 5)
    indices[1, 2, 3, 1] = bad
    indices = indices.to(device=device, dtype=index_dtype)
    expect_error(lambda: pyvision_ops.max_unpool2d(x, indices, 2), [x, indices], re.escape(str(bad)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [1, 3])
def test_max_unpool1d_3d_reject_out_of_range_index(dims, device):
    shape = (2, 3, 4) if dims == 1 else (1, 2, 2, 3, 2)
    plane = 1
    for n in shape[2:]:
        plane *= 2 * n
    x = torch.randn(shape, device=device)
    for bad in (plane + 11, -3, 2**40 + 5):
        indices = torch.randint(0, plane, shape)
        indices.view(-1)[-2] = bad
        indices = indices.to(device)
        expect_error(lambda: UNPOOL[dims](x, indices, 2), [x, indices], re.escape(str(bad)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel,bad", [(2, 4), (2, 255), (3, 9), ((2, 3), 6)], ids=str)
def test_max_unpool2d_rejects_compact_index_outside_window(kernel, bad, device):
    x = torch.randn(1, 2, 3, 4, device=device)
    k = as_list(kernel, 2)
    compact = torch.randint(0, k[0] * k[1], x.shape, dtype=torch.uint8)
    compact[0, 1, 2, 0] = bad
    compact = compact.to(device)
    expect_error(lambda: pyvision_ops.max_unpool2d(x, compact, kernel), [x, compact], r"(?i)ind|compact")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.float32, torch.float64, torch.int16, torch.bool], ids=str)
def test_max_unpool_rejects_index_dtype(index_dtype, device):
    x = torch.randn(1, 2, 3, 4, device=device)
    indices = torch.randint(0, 2, x.shape, device=device).to(index_dtype)
    expect_error(lambda: pyvision_ops.max_unpool2d(x, indices, 2), [x, indices], r"(?i)ind|dtype")
    x1 = torch.randn(1, 2, 3, device=device)
    i1 = torch.randint(0, 2, x1.shape, device=device).to(index_dtype)
    expect_error(lambda: pyvision_ops.max_unpool1d(x1, i1, 2), [x1, i1], r"(?i)ind|dtype")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_shape", [(1, 2, 3, 5), (2, 2, 3, 4), (1, 3, 3, 4), (1, 2, 3), (2, 3, 4)], ids=str)
def test_max_unpool_rejects_index_shape(index_shape, device):
    x = torch.randn(1, 2, 3, 4, device=device)
    indices = torch.randint(0, 4, index_shape, device=device)
    expect_error(lambda: pyvision_ops.max_unpool2d(x, indices, 2), [x, indices], r"(?i)shape|size")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("side", ["small", "large"])
def test_max_unpool_rejects_inconsistent_output_size(side, dims, device):
    """Pooled size 10, kernel 3, stride 3, padding 1: default 28, valid 26..30 (PyTorch's rule)."""
    low, high = unpool_output_range(10, 3, 3, 1)
    assert (low, high) == (26, 30)
    bad = 23 if side == "small" else 34
    x = torch.randn(1, 2, *([10] * dims), device=device)
    indices = torch.zeros(x.shape, dtype=torch.int64, device=device)
    output_size = [28] * dims
    output_size[-1] = bad
    info = expect_error(lambda: UNPOOL[dims](x, indices, 3, 3, 1, output_size), [x, indices], r"(?i)output_size|output size")
    message = str(info.value)
    # The message gives the valid range, inclusive (26..30) or exclusive (25, 31) bounds.
    assert ("26" in message or "25" in message) and ("30" in message or "31" in message), message


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_max_unpool_accepts_output_size_at_range_ends(dims, device):
    x = torch.randn(1, 2, *([10] * dims), device=device)
    # Distinct in-range positions (valid for both ends of the range).
    indices = torch.stack([torch.randperm(26**dims)[: 10**dims] for _ in range(2)]).view(x.shape).to(device)
    for size in unpool_output_range(10, 3, 3, 1):
        check_unpool(dims, x, indices, 3, 3, 1, [size] * dims)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_size=0, stride=1), "(?i)kernel"),
        (dict(kernel_size=(2, -1), stride=1), "(?i)kernel"),
        (dict(kernel_size=2, stride=0), "(?i)stride"),
        (dict(kernel_size=2, stride=(1, -2)), "(?i)stride"),
        (dict(kernel_size=2, padding=2), "(?i)pad"),
        (dict(kernel_size=3, padding=(0, 2)), "(?i)pad"),
        (dict(kernel_size=2, padding=-1), "(?i)pad"),
        (dict(kernel_size=2, dilation=0), "(?i)dilation"),
        (dict(kernel_size=17, compact=True), "256"),
        (dict(kernel_size=(16, 17), compact=True), "256"),
    ],
    ids=str,
)
def test_max_pool2d_rejects_bad_arguments(kwargs, match, device):
    x = torch.randn(1, 2, 20, 20, device=device)
    expect_error(lambda: pyvision_ops.max_pool2d_with_indices(x, **kwargs), [x], match)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_size=0, stride=1), "(?i)kernel"),
        (dict(kernel_size=(2, -1), stride=1), "(?i)kernel"),
        (dict(kernel_size=2, stride=0), "(?i)stride"),
        (dict(kernel_size=2, stride=(1, -2)), "(?i)stride"),
    ],
    ids=str,
)
def test_max_unpool2d_rejects_bad_arguments(kwargs, match, device):
    x = torch.randn(1, 2, 3, 4, device=device)
    indices = torch.zeros(x.shape, dtype=torch.int64, device=device)
    expect_error(lambda: pyvision_ops.max_unpool2d(x, indices, **kwargs), [x, indices], match)


@pytest.mark.parametrize("device", DEVICES)
def test_max_unpool2d_compact_needs_small_window(device):
    x = torch.randn(1, 2, 2, 2, device=device)
    compact = torch.zeros(x.shape, dtype=torch.uint8, device=device)
    expect_error(lambda: pyvision_ops.max_unpool2d(x, compact, 17), [x, compact], "256")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64], ids=str)
def test_integer_input_rejected(dtype, device):
    x = torch.randint(0, 5, (1, 2, 6, 6), device=device).to(dtype)
    expect_error(lambda: pyvision_ops.max_pool2d_with_indices(x, 2), [x], r"(?i)float|dtype|type")
    xs = torch.randint(0, 5, (1, 2, 3, 3), device=device).to(dtype)
    indices = torch.zeros(xs.shape, dtype=torch.int64, device=device)
    expect_error(lambda: pyvision_ops.max_unpool2d(xs, indices, 2), [xs, indices], r"(?i)float|dtype|type")


@pytest.mark.parametrize("device", DEVICES)
def test_wrong_rank_rejected(device):
    def check(fn, *tensors):
        expect_error(fn, list(tensors), r"(?i)dim|-D|shape")

    x2 = torch.randn(6, 6, device=device)
    check(lambda: pyvision_ops.max_pool2d_with_indices(x2, 2), x2)
    x5 = torch.randn(1, 1, 2, 6, 6, device=device)
    check(lambda: pyvision_ops.max_pool2d_with_indices(x5, 2), x5)
    i2 = torch.zeros(x2.shape, dtype=torch.int64, device=device)
    check(lambda: pyvision_ops.max_unpool2d(x2, i2, 2), x2, i2)
    i5 = torch.zeros(x5.shape, dtype=torch.int64, device=device)
    check(lambda: pyvision_ops.max_unpool2d(x5, i5, 2), x5, i5)
    x1 = torch.randn(6, device=device)
    i1 = torch.zeros(x1.shape, dtype=torch.int64, device=device)
    check(lambda: pyvision_ops.max_unpool1d(x1, i1, 2), x1, i1)
    x3 = torch.randn(2, 3, 4, device=device)
    i3 = torch.zeros(x3.shape, dtype=torch.int64, device=device)
    check(lambda: pyvision_ops.max_unpool3d(x3, i3, 2), x3, i3)


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("config", [(3, 2, 1, 1, False), (3, 1, 1, 2, True), ((2, 3), (1, 2), (1, 1), 1, True)], ids=config_id)
def test_max_pool2d_backward_matches_pytorch(config, dtype, compact, device):
    """Overlapping windows: an element that is the max of several windows sums their grads."""
    kernel, stride, padding, dilation, ceil_mode = config
    x = torch.randn(2, 3, 9, 8, device=device).to(dtype).requires_grad_(True)
    values, _ = pyvision_ops.max_pool2d_with_indices(x, kernel, stride, padding, dilation, ceil_mode, compact)
    grad = torch.randn(values.shape, device=device).to(dtype)
    poison_allocator(x.shape, dtype, device)  # the scatter-add must start from zeros
    values.backward(grad)
    expected = reference_max_pool2d_backward(x, grad, kernel, stride, padding, dilation, ceil_mode)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert x.grad.dtype == dtype and x.grad.shape == x.shape
    torch.testing.assert_close(x.grad.double().cpu(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32, torch.uint8], ids=str)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_max_unpool_backward_matches_pytorch(dims, index_dtype, dtype, device):
    """Unpooling's backward is a gather: exact in every dtype."""
    if index_dtype == torch.uint8 and dims != 2:
        pytest.skip("compact indices are 2-D only")
    shape = {1: (2, 3, 13), 2: (2, 3, 9, 8), 3: (1, 2, 5, 6, 5)}[dims]
    kernel, stride, padding = 3, 2, 1
    flat = pool_indices(dims, shape, kernel, stride, padding)
    indices = to_index_dtype(flat, index_dtype, shape[-1], kernel, stride, padding).to(device)
    x = torch.randn(flat.shape, device=device).to(dtype).requires_grad_(True)
    out = UNPOOL[dims](x, indices, kernel, stride, padding, output_size=shape[2:])
    grad = torch.randn(out.shape, device=device).to(dtype)
    out.backward(grad)
    assert_values_equal(x.grad, reference_max_unpool_backward(grad, indices, kernel, stride, padding))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("config", [(3, 2, 1, 1, False), (2, 1, 0, 2, True)], ids=config_id)
def test_max_pool2d_gradcheck(config, compact, device):
    kernel, stride, padding, dilation, ceil_mode = config
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, device=device, requires_grad=True)

    def fn(t):
        return pyvision_ops.max_pool2d_with_indices(t, kernel, stride, padding, dilation, ceil_mode, compact)[0]

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def non_overlapping_indices(dims: int, index_dtype: torch.dtype, device):
    """Indices from pooling with stride == kernel (no duplicates: unpooling is injective)."""
    shape = {1: (1, 2, 7), 2: (1, 2, 5, 6), 3: (1, 1, 4, 5, 4)}[dims]
    flat = pool_indices(dims, shape, 2, 2, 0)
    return to_index_dtype(flat, index_dtype, shape[-1], 2, 2, 0).to(device), shape[2:]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims,index_dtype", [(1, torch.int64), (2, torch.int64), (2, torch.int32), (2, torch.uint8), (3, torch.int64)], ids=str)
def test_max_unpool_gradcheck(dims, index_dtype, device):
    indices, output_size = non_overlapping_indices(dims, index_dtype, device)
    x = torch.randn(indices.shape, dtype=torch.float64, device=device, requires_grad=True)

    def fn(t):
        return UNPOOL[dims](t, indices, 2, 2, 0, output_size)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


# --------------------------------------------------------------------------------------------
# upstream gradients in any layout: read through their strides, never materialised
# --------------------------------------------------------------------------------------------

# Windows that tile the target (2x2, stride 2: each element in at most one window) and windows
# that overlap and pad (3x3, stride 2, padding 1: an element may be the maximum of four windows,
# whose gradients the pooling backward must add in the same order whatever the layout).
UPSTREAM_CONFIGS = [pytest.param((2, 2, 0), id="k2s2-tiling"), pytest.param((3, 2, 1), id="k3s2p1-overlapping")]
UPSTREAM_TARGETS = {1: (2, 6, 13), 2: (2, 6, 9, 10), 3: (2, 4, 5, 6, 7)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", UPSTREAM_CONFIGS)
@pytest.mark.parametrize(
    "dims,index_dtype",
    [(1, torch.int64), (1, torch.int32), (2, torch.int64), (2, torch.int32), (2, torch.uint8), (3, torch.int64), (3, torch.int32)],
    ids=str,
)
def test_max_unpool_backward_reads_any_upstream_layout(dims, index_dtype, config, device):
    """``_max_unpool_backward`` (a gather) of an expanded (stride 0: ``torch.ones(()).expand`` and
    a (1, C, 1, ...) tensor expanded), sliced, narrowed, transposed or channels_last gradient is
    bit-identical to the gather of the same values made contiguous; the gradient is untouched."""
    kernel, stride, padding = config
    target = UPSTREAM_TARGETS[dims]
    k, s, p = [kernel] * dims, [stride] * dims, [padding] * dims
    flat = pool_indices(dims, target, kernel, stride, padding)
    indices = to_index_dtype(flat, index_dtype, target[-1], kernel, stride, padding).to(device)
    indices_before = indices.clone()

    def backward(grad_output: torch.Tensor) -> torch.Tensor:
        return ops._max_unpool_backward(grad_output, indices, k, s, p, [1] * dims)

    check_reads_any_upstream_layout(backward, target, torch.float32, device)
    assert_unchanged(indices_before, indices)
    grad = torch.randn(target, device=device)
    assert_values_equal(backward(grad), reference_max_unpool_backward(grad, indices, kernel, stride, padding))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", UPSTREAM_CONFIGS)
@pytest.mark.parametrize("index_kind", ["int64", "int32", "compact"])
@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last"])
def test_max_pool2d_backward_reads_any_upstream_layout(x_layout, index_kind, config, device):
    """``_max_pool2d_backward`` (a scatter-add) of a gradient in any layout equals, bit for bit,
    that of the same values made contiguous (on CUDA, overlapping windows add with atomics: to a
    few ulps); with indices in x's layout; the gradient is untouched."""
    kernel, stride, padding = config
    x = with_layout(torch.randn(2, 6, 9, 10, device=device), x_layout)
    compact = index_kind == "compact"
    values, indices = pyvision_ops.max_pool2d_with_indices(x, kernel, stride, padding, compact=compact)
    if index_kind == "int32":
        indices = indices.to(torch.int32)
    k, s, p = [kernel] * 2, [stride] * 2, [padding] * 2

    def backward(grad_output: torch.Tensor) -> torch.Tensor:
        return ops._max_pool2d_backward(grad_output, indices, [9, 10], k, s, p, [1, 1], compact)

    rtol = scatter_add_tolerance(torch.float32, device) if kernel > stride else 0.0
    check_reads_any_upstream_layout(backward, values.shape, torch.float32, device, rtol)
    grad = torch.randn(values.shape, device=device)
    expected = reference_max_pool2d_backward(x, grad, kernel, stride, padding)
    torch.testing.assert_close(backward(grad).double().cpu(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", UPSTREAM_CONFIGS)
@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_sum_backward_matches_pytorch_segnet_like(layout, compact, config, device):
    """What most users write: ``out.sum().backward()`` (a stride-0 upstream gradient) through a
    SegNet-like encoder pooling and decoder unpooling gives PyTorch's x.grad exactly."""
    kernel, stride, padding = config
    x = with_layout(torch.randn(2, 16, 24, 30, device=device), layout).requires_grad_(True)
    x_torch = x.detach().clone().requires_grad_(True)
    values, indices = pyvision_ops.max_pool2d_with_indices(x, kernel, stride, padding, compact=compact)
    torch_values, torch_indices = F.max_pool2d(x_torch, kernel, stride, padding, return_indices=True)
    values.sum().backward(retain_graph=True)
    torch_values.sum().backward(retain_graph=True)
    assert_values_equal(x.grad, x_torch.grad)

    # The decoder: unpool fresh values with those switches, back to x's size.
    source = torch.randn(values.shape, device=device).requires_grad_(True)
    source_torch = source.detach().clone().requires_grad_(True)
    out = pyvision_ops.max_unpool2d(source, indices, kernel, stride, padding, output_size=x.shape[-2:])
    torch_out = F.max_unpool2d(source_torch, torch_indices, kernel, stride, padding, output_size=x.shape[-2:])
    out.sum().backward()
    torch_out.sum().backward()
    assert_values_equal(source.grad, source_torch.grad)
    # and an upstream gradient broadcast over channels ((1, C, 1, 1) expanded), read in place
    weight = torch.randn(1, 16, 1, 1, device=device)
    (grad_x,) = torch.autograd.grad(values, x, weight.expand(values.shape))
    (grad_x_torch,) = torch.autograd.grad(torch_values, x_torch, weight.expand(torch_values.shape))
    assert_values_equal(grad_x, grad_x_torch)


# --------------------------------------------------------------------------------------------
# the shared op contract (tests/contract.py): opcheck, torch.compile, empty batch, bad input,
# upstream gradients of every layout -- for each registered op of the family
# --------------------------------------------------------------------------------------------


class TestMaxPool2dWithIndicesContract(OpContract):
    op_name = "max_pool2d_with_indices"

    def tolerance(self, dtype, device):
        return scatter_add_tolerance(dtype, device)
    # (kernel, stride, padding, dilation, ceil_mode) in the schema's list form
    CONFIGS = [([3, 3], [2, 2], [1, 1], [1, 1], False), ([2, 3], [1, 2], [1, 0], [2, 1], True)]

    def samples(self, device):
        samples = []
        for (k, s, p, d, ceil), compact, layout in itertools.product(self.CONFIGS, (False, True), ("contiguous", "channels_last")):
            x = with_layout(torch.randn(2, 3, 7, 8, device=device), layout).requires_grad_(True)
            samples.append(Sample((x, k, s, p, d, ceil, compact), f"k{k}-{layout}-{'compact' if compact else 'flat'}"))
        return samples

    def empty_cases(self, device):
        return [
            EmptyCase(Sample((torch.randn(0, 3, 7, 8, device=device, requires_grad=True), [3, 3], [2, 2], [1, 1], [1, 1], False, compact)),
                      [(0, 3, 4, 4), (0, 3, 4, 4)])
            for compact in (False, True)
        ]

    def bad_inputs(self, device):
        x = torch.randn(1, 2, 20, 20, device=device)

        def call(tensor=x, k=(2, 2), s=(2, 2), p=(0, 0), d=(1, 1), compact=False):
            return (tensor, list(k), list(s), list(p), list(d), False, compact)

        return [
            BadInput("integer x", call(torch.randint(0, 5, (1, 2, 6, 6), device=device)), r"x must be float"),
            BadInput("3-D x", call(torch.randn(2, 6, 6, device=device)), r"x must be 4-D"),
            BadInput("kernel_size 0", call(k=(0, 2), s=(1, 1)), r"kernel_size must be >= 1"),
            BadInput("stride 0", call(s=(0, 1)), r"stride must be >= 1"),
            BadInput("padding > kernel / 2", call(p=(2, 0)), r"padding must be at most half of kernel_size"),
            BadInput("dilation 0", call(d=(0, 1)), r"dilation must be >= 1"),
            BadInput("compact 17x17", call(k=(17, 17), s=(1, 1), compact=True), r"kH \* kW <= 256"),
        ]


class _MaxUnpoolContract(OpContract):
    dims = 2

    def _target(self):
        return {1: (2, 3, 9), 2: (2, 3, 7, 8), 3: (1, 2, 5, 4, 6)}[self.dims]

    def samples(self, device):
        dims, target = self.dims, self._target()
        samples = []
        # Non-overlapping padded windows (no duplicate targets: eager and traced runs agree
        # exactly on any device), and tiling ones.
        for kernel, stride, padding in ((3, 3, 1), (2, 2, 0)):
            flat = pool_indices(dims, target, kernel, stride, padding)
            index_dtypes = [torch.int64, torch.int32] + ([torch.uint8] if dims == 2 else [])
            for index_dtype in index_dtypes:
                indices = to_index_dtype(flat, index_dtype, target[-1], kernel, stride, padding).to(device)
                x = torch.randn(flat.shape, device=device, requires_grad=True)
                args = (x, indices, [kernel] * dims, [stride] * dims, [padding] * dims, list(target[2:]))
                samples.append(Sample(args, f"k{kernel}s{stride}p{padding}-{index_dtype}"))
        if dims == 2:  # channels_last values and indices
            flat = pool_indices(2, target, 3, 3, 1)
            x = torch.randn(flat.shape, device=device).contiguous(memory_format=torch.channels_last).requires_grad_(True)
            indices = flat.to(device).contiguous(memory_format=torch.channels_last)
            samples.append(Sample((x, indices, [3, 3], [3, 3], [1, 1], list(target[2:])), "channels_last"))
        return samples

    def empty_cases(self, device):
        spatial = {1: (5,), 2: (3, 4), 3: (2, 3, 4)}[self.dims]
        output = [2 * n for n in spatial]
        cases = []
        for index_dtype in [torch.int64] + ([torch.uint8] if self.dims == 2 else []):
            x = torch.randn(0, 3, *spatial, device=device, requires_grad=True)
            indices = torch.zeros(x.shape, dtype=index_dtype, device=device)
            args = (x, indices, [2] * self.dims, [2] * self.dims, [0] * self.dims, output)
            cases.append(EmptyCase(Sample(args, str(index_dtype)), [(0, 3, *output)]))
        return cases

    def bad_inputs(self, device):
        dims = self.dims
        spatial = {1: (4,), 2: (3, 4), 3: (2, 3, 2)}[dims]
        output = [2 * n for n in spatial]
        plane = 1
        for n in output:
            plane *= n
        x = torch.randn(1, 2, *spatial, device=device)
        good = torch.stack([torch.randperm(plane)[: x[0, 0].numel()] for _ in range(2)]).view(x.shape).to(device)

        def call(values=x, indices=good, size=output):
            return (values, indices, [2] * dims, [2] * dims, [0] * dims, list(size))

        out_of_range = good.clone()
        out_of_range.view(-1)[-2] = plane + 3
        bad_size = list(output)
        bad_size[-1] += 5
        cases = [
            BadInput("index out of range", call(indices=out_of_range), rf"index out of range: indices\[.*\] = {plane + 3}"),
            BadInput("float indices", call(indices=good.float()), r"indices must be int64 or int32"),
            BadInput("indices of another shape", call(indices=good[:, :1]), r"indices must have the shape of x"),
            BadInput("output_size out of range", call(size=bad_size), r"invalid output_size"),
            BadInput("integer x", call(values=x.long()), r"x must be float"),
            BadInput("x of the wrong rank", call(values=x[0], indices=good[0]), rf"x must be {dims + 2}-D"),
        ]
        if dims == 2:
            compact = torch.randint(0, 4, x.shape, dtype=torch.uint8)
            compact[0, 1, 2, 0] = 4
            cases.append(BadInput("compact index outside the window", call(indices=compact.to(device)), r"invalid compact index indices\[0, 1, 2, 0\] = 4"))
        return cases


class TestMaxUnpool1dContract(_MaxUnpoolContract):
    op_name = "max_unpool1d"
    dims = 1


class TestMaxUnpool2dContract(_MaxUnpoolContract):
    op_name = "max_unpool2d"
    dims = 2


class TestMaxUnpool3dContract(_MaxUnpoolContract):
    op_name = "max_unpool3d"
    dims = 3


class TestMaxPool2dBackwardContract(OpContract):
    op_name = "_max_pool2d_backward"
    upstream_argument = 0  # grad_output; its own backward (double backward) is a gather

    def tolerance(self, dtype, device):
        return scatter_add_tolerance(dtype, device)

    def samples(self, device):
        kernel, stride, padding = [3, 2], [2, 1], [1, 1]
        samples = []
        for dilation, index_kind in itertools.product(([1, 1], [2, 1]), ("int64", "int32", "compact")):
            x = torch.randn(2, 3, 9, 8, device=device)
            compact = index_kind == "compact"
            _, indices = pyvision_ops.max_pool2d_with_indices(x, kernel, stride, padding, dilation, False, compact)
            if index_kind == "int32":
                indices = indices.to(torch.int32)
            grad = torch.randn(indices.shape, device=device, requires_grad=True)
            samples.append(Sample((grad, indices, [9, 8], kernel, stride, padding, dilation, compact), f"d{dilation}-{index_kind}"))
        return samples

    def empty_cases(self, device):
        grad = torch.randn(0, 3, 4, 4, device=device, requires_grad=True)
        return [
            EmptyCase(Sample((grad, torch.zeros(grad.shape, dtype=dtype, device=device), [7, 8], [3, 3], [2, 2], [1, 1], [1, 1], dtype == torch.uint8)),
                      [(0, 3, 7, 8)])
            for dtype in (torch.int64, torch.uint8)
        ]

    def bad_inputs(self, device):
        x = torch.randn(2, 3, 9, 8, device=device)
        _, indices = pyvision_ops.max_pool2d_with_indices(x, 3, 2, 1)
        grad = torch.randn(indices.shape, device=device)

        def call(g=grad, i=indices, compact=False):
            return (g, i, [9, 8], [3, 3], [2, 2], [1, 1], [1, 1], compact)

        return [
            BadInput("indices of another shape", call(i=indices[:, :2]), r"indices must have the shape of grad_output"),
            BadInput("compact flag against int64 indices", call(compact=True), r"compact=.* does not match indices"),
            BadInput("integer grad_output", call(g=grad.long()), r"grad_output must be float"),
            BadInput("index out of range", call(i=indices + 1000), r"index out of range: indices\["),
        ]


class TestMaxUnpoolBackwardContract(OpContract):
    op_name = "_max_unpool_backward"
    upstream_argument = 0  # grad_output; its own backward (double backward) is the unpooling

    def samples(self, device):
        samples = []
        cases = [(1, torch.int64, 1), (2, torch.int64, 1), (2, torch.int32, 1), (2, torch.uint8, 1), (3, torch.int64, 1), (2, torch.uint8, 2)]
        for dims, index_dtype, dilation in cases:
            shape = {1: (2, 3, 9), 2: (2, 3, 9, 8), 3: (1, 2, 5, 4, 6)}[dims]
            kernel, stride, padding = [3] * dims, [2] * dims, [1] * dims
            if index_dtype == torch.uint8:
                _, indices = pyvision_ops.max_pool2d_with_indices(
                    torch.randn(shape, device=device), kernel, stride, padding, [dilation] * 2, False, True
                )
            else:
                indices = pool_indices(dims, shape, kernel, stride, padding, device).to(index_dtype)
            # The double backward is an unpooling, which exists only for undilated windows.
            grad = torch.randn(shape, device=device, requires_grad=dilation == 1)
            samples.append(Sample((grad, indices, kernel, stride, padding, [dilation] * dims), f"{dims}d-{index_dtype}-d{dilation}"))
        return samples

    def empty_cases(self, device):
        return [
            EmptyCase(Sample((torch.randn(0, 3, 6, 8, device=device, requires_grad=True), torch.zeros(0, 3, 3, 4, dtype=dtype, device=device),
                              [2, 2], [2, 2], [0, 0], [1, 1]), str(dtype)), [(0, 3, 3, 4)])
            for dtype in (torch.int64, torch.uint8)
        ]

    def bad_inputs(self, device):
        _, indices = pyvision_ops.max_pool2d_with_indices(torch.randn(2, 3, 9, 8, device=device), 3, 2, 1)
        grad = torch.randn(2, 3, 9, 8, device=device)

        def call(g=grad, i=indices):
            return (g, i, [3, 3], [2, 2], [1, 1], [1, 1])

        return [
            BadInput("grad_output of another batch", call(g=grad[:1]), r"grad_output .* and indices .* must agree in batch and channels"),
            BadInput("index out of range", call(i=indices + 100), r"index out of range: indices\["),
            BadInput("integer grad_output", call(g=grad.long()), r"grad_output must be float"),
        ]


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------


def pool_arith_unpool(x: torch.Tensor, compact: bool) -> torch.Tensor:
    values, indices = pyvision_ops.max_pool2d_with_indices(x, 3, 2, 1, compact=compact)
    y = torch.sigmoid(values) * 2.0 + values
    out = pyvision_ops.max_unpool2d(y, indices, 3, 2, 1, output_size=x.shape[-2:])
    return out * x + 0.5 * out


def check_compiled(backend: str, compact: bool, dynamic: bool, device) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(pool_arith_unpool, backend=backend, fullgraph=True, dynamic=dynamic)
    for shape in [(2, 3, 9, 8), (1, 4, 11, 7)] if dynamic else [(2, 3, 9, 8)]:
        x = torch.randn(shape, device=device, requires_grad=True)
        x_eager = x.detach().clone().requires_grad_(True)
        out = compiled(x, compact)
        expected = pool_arith_unpool(x_eager, compact)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        grad = torch.randn(out.shape, device=device)
        out.backward(grad)
        expected.backward(grad)
        torch.testing.assert_close(x.grad, x_eager.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compact", [False, True])
def test_compile_pool_then_unpool_with_dynamic_shapes(compact, device):
    """SegNet's pool -> arithmetic -> unpool chain in one graph, over two shapes with
    dynamic=True (each op alone, static, is the contract's compile check)."""
    check_compiled("aot_eager", compact, True, device)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_inductor(device):
    check_compiled("inductor", True, False, device)


# --------------------------------------------------------------------------------------------
# CUDA only
# --------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_matches_cpu_and_pytorch_cuda(layout, dtype):
    x_cpu = with_layout(torch.randn(3, 5, 13, 12).to(dtype), layout)
    x = x_cpu.cuda()
    for compact in (False, True):
        cpu_values, cpu_indices = pyvision_ops.max_pool2d_with_indices(x_cpu, 3, 2, 1, 1, True, compact)
        values, indices = pyvision_ops.max_pool2d_with_indices(x, 3, 2, 1, 1, True, compact)
        assert values.is_cuda and indices.is_cuda
        assert_values_equal(values, cpu_values.double())
        assert_indices_equal(indices, cpu_indices)
        out = pyvision_ops.max_unpool2d(values, indices, 3, 2, 1, output_size=x.shape[-2:])
        cpu_out = pyvision_ops.max_unpool2d(cpu_values, cpu_indices, 3, 2, 1, output_size=x.shape[-2:])
        assert_values_equal(out, cpu_out.double())
    torch_values, torch_indices = F.max_pool2d(x, 3, 2, 1, 1, True, return_indices=True)
    values, indices = pyvision_ops.max_pool2d_with_indices(x, 3, 2, 1, 1, True)
    assert_values_equal(values, torch_values.double())
    assert_indices_equal(indices, torch_indices)
    # Non-overlapping windows: PyTorch's CUDA unpool is deterministic there.
    torch_values, torch_indices = F.max_pool2d(x, 2, return_indices=True)
    src = torch.randn(torch_values.shape, device="cuda").to(dtype)
    expected = F.max_unpool2d(src, torch_indices, 2, output_size=x.shape[-2:])
    assert_values_equal(pyvision_ops.max_unpool2d(src, torch_indices, 2, output_size=x.shape[-2:]), expected.double())


@needs_cuda
@pytest.mark.parametrize("bad", [2**32 + 5, 2**32, -(2**32) + 5, 2**63 - 1])
def test_cuda_index_beyond_32_bits_is_out_of_range(bad):
    """PyTorch's CUDA unpool narrows indices to 32 bits (2**32 + 5 would land on element 5)."""
    x = torch.randn(1, 2, 3, 4, device="cuda")
    indices = torch.stack([torch.randperm(48)[:12] for _ in range(2)]).view(1, 2, 3, 4)
    indices[0, 1, 2, 3] = bad
    indices = indices.cuda()
    expect_error(lambda: pyvision_ops.max_unpool2d(x, indices, 2), [x, indices], re.escape(str(bad)))
    # The device is still usable: no device-side assert was raised.
    ok = pyvision_ops.max_unpool2d(x, indices.clamp(0, 47), 2)
    torch.cuda.synchronize()
    assert ok.shape == (1, 2, 6, 8)


@needs_cuda
def test_cuda_rejects_indices_on_another_device():
    x = torch.randn(1, 2, 3, 4, device="cuda")
    indices = torch.zeros(1, 2, 3, 4, dtype=torch.int64)
    expect_error(lambda: pyvision_ops.max_unpool2d(x, indices, 2), [x, indices], r"(?i)device|cuda|cpu")


@needs_cuda
def test_cuda_runs_on_current_device_and_stream():
    """Work is queued on the current stream: results are right when read after that stream."""
    stream = torch.cuda.Stream()
    x = torch.randn(4, 8, 64, 64, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        values, indices = pyvision_ops.max_pool2d_with_indices(x, 2)
        out = pyvision_ops.max_unpool2d(values, indices, 2)
    stream.synchronize()
    ref_values, ref_flat = reference_max_pool2d(x, 2)
    assert_values_equal(values, ref_values)
    assert_indices_equal(indices, ref_flat)
    assert_values_equal(out, reference_max_unpool(2, ref_values, ref_flat, 2))
