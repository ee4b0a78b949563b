"""Reliability (issue 14): property-based fuzzing of every public op against the float64 references.

Each test below draws one case of its op with hypothesis -- shapes (size-1 and zero-size dims where
the op allows them), the memory layout of every tensor argument, the dtype, the op's parameters,
the style of the values (plain normal, scaled, small integers full of ties, NaN / inf where they
mean something, duplicated rows), and which CPU kernels run (the vectorised ones or the portable
ones, through ``_C._set_cpu_simd``) -- and checks the op's result, and its gradients where it is
differentiable, against the independent float64 references of ``tests/references`` (PyTorch's own
ops in float64, brute forces, SciPy), with the tolerances of the op families' own tests. Every
case also checks that the caller's tensors (their whole storage, poison included) are unchanged.

Tensor values come from a ``torch.Generator`` seeded by a drawn integer, so a case is a small
dict of numbers that hypothesis prints, shrinks and replays (``print_blob=True`` prints the
``@reproduce_failure`` line); a case found by fuzzing is pinned with ``@example(dict(...))``.

Profiles (environment variable ``PVO_FUZZ_PROFILE``):

* ``ci`` (default): a few dozen examples per op, derandomized (the same examples on every run),
  the whole file in about a minute on two loaded cores;
* ``fuzz``: 8000 examples per unit of an op's weight (``ci``: 30), a fresh random search each
  run (``make fuzz``: about six minutes on two cores, 2026-12-04).

When ``PVO_FUZZ_STATS`` names a file, the examples run per op are written there as JSON,
``{op_name: {"examples": N}}``, for the reliability report.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (pip install hypothesis)")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import pyvision_ops  # noqa: E402
from pyvision_ops import ops as public_ops  # noqa: E402
from conftest import assert_unchanged  # noqa: E402
from references.assign import as_numpy64, exact_sum  # noqa: E402
from references.attention import reference_attention, reference_dropout_keep  # noqa: E402
from references.distance import (  # noqa: E402
    reference_batch_hard_triplet_loss,
    reference_class_distance_matrix,
    reference_contrastive_loss,
    reference_mine_triplets,
    reference_pairwise_distance,
    reference_pairwise_topk,
    reference_triplet_margin_loss,
)
from references.gram import reference_gram_backward, reference_gram_matrix, reference_perceptual_loss, reference_style_loss  # noqa: E402
from references.unpool import (  # noqa: E402
    as_list,
    flat_to_compact,
    reference_max_pool2d,
    reference_max_pool2d_backward,
    reference_max_unpool,
    reference_max_unpool_backward,
    unpool_output_range,
)

# --------------------------------------------------------------------------------------------
# profiles and the per-op figures
# --------------------------------------------------------------------------------------------

_COMMON = dict(
    deadline=None,
    print_blob=True,
    # conftest's autouse fixtures (seed, grad mode, CPU path) are per test, not per example: harmless
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", max_examples=30, derandomize=True, database=None, **_COMMON)
settings.register_profile("fuzz", max_examples=8000, derandomize=False, **_COMMON)
PROFILE = os.environ.get("PVO_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "fuzz"):
    raise ValueError(f"PVO_FUZZ_PROFILE must be 'ci' or 'fuzz', got {PROFILE!r}")
_BASE = settings.get_profile(PROFILE)


def fuzz_settings(weight: float = 1.0) -> settings:
    """The profile's settings with ``weight`` times its examples (ops differ in cost per example)."""
    return settings(_BASE, max_examples=max(1, int(round(_BASE.max_examples * weight))))


#: examples actually run, per public op
EXAMPLES: Dict[str, int] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _write_stats() -> Iterator[None]:
    yield
    path = os.environ.get("PVO_FUZZ_STATS")
    if path:
        with open(path, "w") as f:
            json.dump({op: {"examples": int(n)} for op, n in sorted(EXAMPLES.items())}, f, indent=2, sort_keys=True)
            f.write("\n")


# --------------------------------------------------------------------------------------------
# tolerances (those of the op families' own tests)
# --------------------------------------------------------------------------------------------

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HALVES = (torch.float16, torch.bfloat16)
# tests/test_gram.py
GRAM_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
GRAM_GRAD_TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
# tests/test_distance.py
DIST_TOL = {torch.float64: 1e-11, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DIST_GRAD_TOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
# tests/test_attention.py (CPU float32/float64; CPU halves are held to the CUDA tolerances there)
ATTN_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}
ATTN_GRAD_TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}
# tests/test_unpool.py: the pooling backward adds overlapping windows' gradients
POOL_GRAD_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_within(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str,
                  allow_nan: bool = False) -> None:
    """|actual - expected| <= rtol |expected| + atol everywhere, compared in float64; NaN/inf only
    where the reference has the same (and NaN only when ``allow_nan``)."""
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if actual.dtype == torch.float16:
        atol = max(atol, 4 * 2.0 ** -24)  # a few of float16's subnormal spacings (no relative precision there)
    a = actual.detach().cpu().to(torch.float64)
    e = expected.detach().cpu().to(torch.float64)
    if a.numel() == 0:
        return
    finite = torch.isfinite(e)
    if not allow_nan:
        assert not bool(torch.isnan(a).any()), f"{what}: NaN at {torch.nonzero(torch.isnan(a))[:5].tolist()}"
    special = ~finite
    if bool(special.any()):
        same = (a[special] == e[special]) | (torch.isnan(a[special]) & torch.isnan(e[special]))
        assert bool(same.all()), f"{what}: non-finite reference entries not reproduced: got {a[special][~same][:5].tolist()}"
    assert bool(torch.isfinite(a[finite]).all()), f"{what}: non-finite values where the reference is finite"
    err = (a - e).abs()[finite]
    bound = (rtol * e.abs() + atol)[finite]
    bad = err > bound
    if bool(bad.any()):
        worst = int(torch.argmax(err - bound))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {int(finite.sum())} entries off; worst: got {a[finite][worst].item()!r}, "
            f"expected {e[finite][worst].item()!r} (rtol {rtol}, atol {atol})"
        )


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str, floor: float = 0.0) -> None:
    """Within tol * (|expected| + max(max |expected|, floor)): for sums that may cancel."""
    e = expected.detach().cpu().to(torch.float64)
    finite = e[torch.isfinite(e)]
    scale = max(float(finite.abs().max()) if finite.numel() else 0.0, floor)
    assert_within(actual, e, tol, tol * scale, what)


def assert_exactly(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Bitwise equal values (NaN equals NaN) and equal shapes; ``expected`` may be float64."""
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().cpu()
    e = expected.detach().cpu()
    if a.is_floating_point() or e.is_floating_point():
        a, e = a.to(torch.float64), e.to(torch.float64)
    same = (a == e) | (torch.isnan(a) & torch.isnan(e)) if a.is_floating_point() else a == e
    if not bool(same.all()):
        bad = torch.nonzero(~same)[:4].tolist()
        raise AssertionError(f"{what}: {int((~same).sum())} of {a.numel()} entries differ, e.g. at {bad}: "
                             f"got {[a[tuple(i)].item() for i in bad]}, expected {[e[tuple(i)].item() for i in bad]}")


# --------------------------------------------------------------------------------------------
# building blocks: values, layouts, CPU kernel path
# --------------------------------------------------------------------------------------------


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def small_integers(gen: torch.Generator, *shape: int, low: int = -2, high: int = 3) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=gen).to(torch.float64)


def poison(dtype: torch.dtype):
    if dtype.is_floating_point:
        return float("nan")
    if dtype == torch.bool:
        return True
    return 255 if dtype == torch.uint8 else -1


#: The memory layouts an input is fuzzed in (each keeps the tensor's shape and values, except
#: "expanded", which repeats item 0 of the first dimension with stride 0).
LAYOUTS = ("contiguous", "transposed", "permuted", "sliced", "narrowed", "expanded", "channels_last")


def in_layout(t: torch.Tensor, layout: str, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """(view, owner): ``t``'s values stored in ``layout`` and the tensor owning the whole storage
    (poison included), for the unchanged check. A NaN/-1 poison surrounds "sliced" and "narrowed"
    views, so a kernel reading past the view's elements reads garbage into its result."""
    t = t.contiguous()
    shape = tuple(t.shape)
    ndim = t.dim()
    if layout == "contiguous" or ndim == 0:
        view = t.clone()
        return view, view
    if layout == "transposed" and ndim >= 2:
        view = t.transpose(-1, -2).contiguous().transpose(-1, -2)
        return view, view
    if layout == "permuted" and ndim >= 2:
        order = torch.randperm(ndim, generator=gen).tolist()
        inverse = [order.index(i) for i in range(ndim)]
        view = t.permute(order).contiguous().permute(inverse)
        return view, view
    if layout == "sliced":
        big_shape = [2 * s for s in shape[:-1]] + [2 * shape[-1] + 1]
        big = torch.full(big_shape, poison(t.dtype), dtype=t.dtype)
        index = tuple(slice(None, None, 2) for _ in shape[:-1]) + (slice(1, None, 2),)
        view = big[index]
        view.copy_(t)
        return view, big
    if layout == "narrowed":
        big = torch.full((shape[0] + 3, *shape[1:]), poison(t.dtype), dtype=t.dtype)
        view = big[2 : 2 + shape[0]]
        view.copy_(t)
        return view, big
    if layout == "expanded" and shape[0] > 0:
        base = t[:1].clone()
        return base.expand(shape), base
    if layout == "channels_last" and ndim in (4, 5):
        fmt = torch.channels_last if ndim == 4 else torch.channels_last_3d
        view = t.contiguous(memory_format=fmt)
        return view, view
    view = t.clone()
    return view, view


class Inputs:
    """The caller's tensors of one call: each made in its layout, remembered with a copy of its
    whole storage, so that ``check_unchanged`` can prove the op wrote none of them."""

    def __init__(self, gen: torch.Generator) -> None:
        self.gen = gen
        self._kept: List[Tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, t: torch.Tensor, layout: str, dtype: Optional[torch.dtype] = None, grad: bool = False) -> torch.Tensor:
        if dtype is not None:
            t = t.to(dtype)
        view, owner = in_layout(t, layout, self.gen)
        self._kept.append((owner, owner.clone()))
        if grad:
            view = view.detach().requires_grad_(True)  # a leaf with the view's strides
        return view

    def check_unchanged(self) -> None:
        for owner, before in self._kept:
            assert_unchanged(before, owner)


@contextlib.contextmanager
def cpu_kernels(simd: bool) -> Iterator[None]:
    """The vectorised CPU kernels (the default) or, with ``simd=False``, the portable ones."""
    from pyvision_ops import _C

    if simd or not hasattr(_C, "_set_cpu_simd"):
        yield
        return
    previous = _C._set_cpu_simd(False)
    try:
        yield
    finally:
        _C._set_cpu_simd(previous)


def upstream(gen: torch.Generator, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A random upstream gradient, rounded to ``dtype`` (the reference gets the same values): dense
    half of the time, else out.sum()'s (one value, every stride 0) or one slice along dim 0
    expanded over it (stride 0 there), the forms the kernels read in place without a copy."""
    form = int(torch.randint(0, 4, (1,), generator=gen))
    if form == 2:
        return torch.ones((), dtype=dtype).expand(tuple(shape))
    if form == 3 and len(shape) > 0 and shape[0] > 0:
        return randn(gen, 1, *shape[1:]).to(dtype).expand(tuple(shape))
    return randn(gen, *shape).to(dtype)


def grads_of(output: torch.Tensor, leaves: Sequence[torch.Tensor], g: torch.Tensor) -> List[Optional[torch.Tensor]]:
    return list(torch.autograd.grad(output, list(leaves), g, allow_unused=True))


def f64_leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64).contiguous().requires_grad_(True)


SEEDS = st.integers(0, 2**31 - 1)


# --------------------------------------------------------------------------------------------
# max_pool2d_with_indices
# --------------------------------------------------------------------------------------------


@st.composite
def pool_cases(draw):
    square = draw(st.booleans())
    kh = draw(st.integers(1, 5))
    kw = kh if square else draw(st.integers(1, 5))
    dh = draw(st.integers(1, 3))
    dw = dh if square else draw(st.integers(1, 3))
    ph = draw(st.integers(0, kh // 2))
    pw = ph if square else draw(st.integers(0, kw // 2))
    stride = draw(st.one_of(st.none(), st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    h = max(1, dh * (kh - 1) + 1 - 2 * ph) + draw(st.integers(0, 7))
    w = max(1, dw * (kw - 1) + 1 - 2 * pw) + draw(st.integers(0, 7))
    return dict(
        seed=draw(SEEDS),
        batch=draw(st.sampled_from([None, 0, 1, 2, 3])),  # None: an unbatched (C, H, W) input
        channels=draw(st.integers(1, 4)),
        h=h, w=w,
        kernel=kh if square else (kh, kw),
        stride=stride,
        padding=ph if square else (ph, pw),
        dilation=dh if square else (dh, dw),
        ceil_mode=draw(st.booleans()),
        compact=draw(st.booleans()),
        dtype=draw(st.sampled_from(FLOATS)),
        values=draw(st.sampled_from(["normal", "ties", "nan", "neginf"])),
        layout=draw(st.sampled_from(LAYOUTS)),
        simd=draw(st.booleans()),
    )


def _pool_input(case, gen: torch.Generator) -> torch.Tensor:
    shape = ((case["batch"],) if case["batch"] is not None else ()) + (case["channels"], case["h"], case["w"])
    if case["values"] == "ties":
        return small_integers(gen, *shape)
    x = randn(gen, *shape)
    if case["values"] == "nan":
        x[torch.rand(shape, generator=gen) < 0.15] = float("nan")
    elif case["values"] == "neginf":
        x[torch.rand(shape, generator=gen) < 0.7] = float("-inf")
    return x


def has_padding_only_window(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> bool:
    """Whether some pooling window (a dilated one can) holds padding only, no input element."""
    out = F.max_pool1d(torch.zeros(1, 1, size), kernel, stride, padding, dilation, ceil_mode).shape[-1]
    return any(all(not 0 <= o * stride - padding + j * dilation < size for j in range(kernel)) for o in range(out))


def _padding_only(case) -> bool:
    k, p, d = as_list(case["kernel"], 2), as_list(case["padding"], 2), as_list(case["dilation"], 2)
    s = as_list(case["stride"], 2, k)
    return any(has_padding_only_window(size, k[i], s[i], p[i], d[i], case["ceil_mode"])
               for i, size in enumerate((case["h"], case["w"])))


@fuzz_settings(1.6)
@given(case=pool_cases())
def test_fuzz_max_pool2d_with_indices(case):
    EXAMPLES["max_pool2d_with_indices"] += 1
    # A window of padding only has no window-local index to compare with (its gradient is zero).
    check_pool(case, gradient=True, compact_reference=not _padding_only(case))


# A dilated window can hold padding only (1x1 input, kernel 2, padding 1, dilation 2): the forward
# returns -inf and PyTorch's index 2 (outside the plane); the backward gives it a zero gradient
# (padding_only_windows in csrc/unpool/unpool_checks.cpp).
@settings(_BASE, phases=[hypothesis.Phase.explicit])
@example(case=dict(seed=0, batch=None, channels=1, h=1, w=1, kernel=2, stride=None, padding=1, dilation=2,
                   ceil_mode=False, compact=False, dtype=torch.float32, values="normal", layout="contiguous", simd=True))
@example(case=dict(seed=1, batch=2, channels=3, h=1, w=1, kernel=2, stride=None, padding=1, dilation=2,
                   ceil_mode=False, compact=True, dtype=torch.float32, values="normal", layout="channels_last",
                   simd=False))
@given(case=pool_cases())
def test_max_pool2d_backward_padding_only_window(case):
    EXAMPLES["max_pool2d_with_indices"] += 1
    check_pool(case, gradient=True, compact_reference=not _padding_only(case))


def check_pool(case, gradient: bool, compact_reference: bool = True) -> None:
    gen = generator(case["seed"])
    inputs = Inputs(gen)
    x_values = _pool_input(case, gen)
    x = inputs.add(x_values, case["layout"] if x_values.dim() in (3, 4) else "contiguous", case["dtype"], grad=True)
    k, s, p, d, ceil = case["kernel"], case["stride"], case["padding"], case["dilation"], case["ceil_mode"]
    batched = x.dim() == 4
    ref_values, ref_flat = reference_max_pool2d(x if batched else x.unsqueeze(0), k, s, p, d, ceil)
    if not batched:
        ref_values, ref_flat = ref_values[0], ref_flat[0]
    with cpu_kernels(case["simd"]):
        values, indices = pyvision_ops.max_pool2d_with_indices(x, k, s, p, d, ceil, compact=case["compact"])
        g = upstream(gen, values.shape, values.dtype)
        (grad,) = grads_of(values, [x], g) if gradient else (None,)
    inputs.check_unchanged()
    assert values.dtype == x.dtype
    assert_exactly(values, ref_values, "values")
    if case["compact"] and not compact_reference:  # a window of padding only has no window-local index
        assert indices.dtype == torch.uint8
        expected = indices
    elif case["compact"]:
        assert indices.dtype == torch.uint8
        expected = flat_to_compact(ref_flat, x.shape[-1], k, s, p, d) if ref_flat.numel() else ref_flat.to(torch.uint8)
    else:
        assert indices.dtype == torch.int64
        expected = ref_flat
    assert_exactly(indices, expected, "indices")
    if not gradient:
        return
    ref_grad = reference_max_pool2d_backward(x, g, k, s, p, d, ceil)
    tol = POOL_GRAD_TOL[case["dtype"]]
    scale = float(g.double().abs().max()) if g.numel() else 0.0
    assert grad.dtype == x.dtype and grad.shape == x.shape
    assert_within(grad, ref_grad, tol, tol * scale, "grad")


# --------------------------------------------------------------------------------------------
# max_unpool1d / 2d / 3d
# --------------------------------------------------------------------------------------------

F_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
UNPOOL = {1: pyvision_ops.max_unpool1d, 2: pyvision_ops.max_unpool2d, 3: pyvision_ops.max_unpool3d}


@st.composite
def unpool_cases(draw, dims: int):
    k = [draw(st.integers(1, 4 if dims < 3 else 3)) for _ in range(dims)]
    stride_given = draw(st.booleans())
    s = [draw(st.integers(1, 3)) for _ in range(dims)] if stride_given else list(k)
    p = [draw(st.integers(0, ki // 2)) for ki in k]
    mode = draw(st.sampled_from(["pool", "random"]))
    if mode == "pool":
        # indices of a max pooling of a source of this size; unpooled back to the source size
        sizes = [max(1, ki - 2 * pi) + draw(st.integers(0, 4 if dims < 3 else 2)) for ki, pi in zip(k, p)]
    else:
        # any in-range indices (duplicates included) into a valid output size
        sizes = [draw(st.integers(1, 4 if dims < 3 else 3)) for _ in range(dims)]
    # compact (uint8, window-local) indices: those of a pooling, in 2-D and 3-D
    index_dtypes = [torch.int64, torch.int32] + ([torch.uint8] if dims >= 2 and mode == "pool" else [])
    return dict(
        seed=draw(SEEDS), mode=mode, sizes=sizes,
        kernel=k[0] if len(set(k)) == 1 and draw(st.booleans()) else tuple(k),
        stride=(s[0] if len(set(s)) == 1 and draw(st.booleans()) else tuple(s)) if stride_given else None,
        padding=tuple(p),
        batch=draw(st.sampled_from([None, 0, 1, 2])),
        channels=draw(st.integers(1, 3)),
        index_dtype=draw(st.sampled_from(index_dtypes)),
        output_size_form=draw(st.sampled_from(["spatial", "full", "none"])),
        output_offset=draw(st.integers(-2, 2)),
        dtype=draw(st.sampled_from(FLOATS)),
        x_layout=draw(st.sampled_from(LAYOUTS)),
        index_layout=draw(st.sampled_from(LAYOUTS)),
        simd=draw(st.booleans()),
        # the upstream gradient: dense, out.sum()'s (one value, every stride 0), or one value per
        # channel expanded over the rest (the CPU has fast paths for the last two)
        upstream_form=draw(st.sampled_from(["dense", "sum", "per-channel"])),
    )


def flat_to_compact_3d(flat: torch.Tensor, out_sizes: Sequence[int], k, s, p) -> torch.Tensor:
    """Flat indices of a 3-D pooling (..., D, H, W) -> uint8 window-local (kd * kH + kh) * kW + kw."""
    TD, TH, TW = out_sizes
    flat = flat.to(torch.int64)
    td, th, tw = flat // (TH * TW), (flat // TW) % TH, flat % TW
    D, H, W = flat.shape[-3:]
    pd = torch.arange(D).view(D, 1, 1) * s[0] - p[0]
    ph = torch.arange(H).view(1, H, 1) * s[1] - p[1]
    pw = torch.arange(W).view(1, 1, W) * s[2] - p[2]
    kd, kh, kw = td - pd, th - ph, tw - pw
    assert bool(((kd >= 0) & (kd < k[0]) & (kh >= 0) & (kh < k[1]) & (kw >= 0) & (kw < k[2])).all())
    return ((kd * k[1] + kh) * k[2] + kw).to(torch.uint8)


def upstream_of_form(gen: torch.Generator, form: str, shape: Sequence[int], channel_dim: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """An upstream gradient of the drawn form: "dense", "sum" (out.sum()'s) or "per-channel"."""
    if form == "sum":
        return torch.ones((), dtype=dtype).expand(tuple(shape))
    if form == "per-channel":
        per_channel = [1] * len(shape)
        per_channel[channel_dim] = shape[channel_dim]
        return randn(gen, *per_channel).to(dtype).expand(tuple(shape))
    return randn(gen, *shape).to(dtype)


def check_unpool(dims: int, case) -> None:
    gen = generator(case["seed"])
    k, p = as_list(case["kernel"], dims), as_list(case["padding"], dims)
    s = as_list(case["stride"], dims, k)
    lead = ((case["batch"],) if case["batch"] is not None else ()) + (case["channels"],)
    if case["mode"] == "pool":
        out_sizes = list(case["sizes"])
        source = randn(gen, *((1,) if case["batch"] is None else ()), *lead, *out_sizes)
        _, flat = F_POOL[dims](source, k, s, p, return_indices=True)
        if case["batch"] is None:
            flat = flat[0]
        in_sizes = list(flat.shape[-dims:])
        explicit_output = True
    else:
        in_sizes = list(case["sizes"])
        default = [(n - 1) * si - 2 * pi + ki for n, si, pi, ki in zip(in_sizes, s, p, k)]
        if any(size < 1 for size in default):
            out_sizes = None
        else:
            out_sizes = []
            for n, si, pi, ki, dflt in zip(in_sizes, s, p, k, default):
                low, high = unpool_output_range(n, ki, si, pi)
                out_sizes.append(min(max(dflt + case["output_offset"], max(low, 1)), high))
        if out_sizes is None:  # a padding that leaves no output: give the op a one-element plane
            out_sizes = [1] * dims
            in_sizes = [max(1, (2 * pi - ki) // si + 1) for si, pi, ki in zip(s, p, k)]
            in_sizes = [n if (n - 1) * si - 2 * pi + ki >= 1 else n + 1 for n, si, pi, ki in zip(in_sizes, s, p, k)]
            default = [(n - 1) * si - 2 * pi + ki for n, si, pi, ki in zip(in_sizes, s, p, k)]
            out_sizes = default
        plane = int(np.prod(out_sizes))
        flat = torch.randint(0, plane, (*lead, *in_sizes), generator=gen)
        explicit_output = case["output_size_form"] != "none" or out_sizes != [
            (n - 1) * si - 2 * pi + ki for n, si, pi, ki in zip(in_sizes, s, p, k)]
    if case["index_dtype"] == torch.uint8 and not flat.numel():
        indices_values = flat.to(torch.uint8)
    elif case["index_dtype"] == torch.uint8 and dims == 3:
        indices_values = flat_to_compact_3d(flat, out_sizes, k, s, p)
    elif case["index_dtype"] == torch.uint8:
        indices_values = flat_to_compact(flat, out_sizes[-1], k, s, p)
    else:
        indices_values = flat.to(case["index_dtype"])
    if not explicit_output:
        output_size = None
    elif case["output_size_form"] == "full" and case["batch"] is not None:  # (N, C, *spatial), as PyTorch
        output_size = torch.Size([*lead, *out_sizes])
    else:
        output_size = list(out_sizes)
    inputs = Inputs(gen)
    x_layout = case["x_layout"]
    index_layout = case["index_layout"]
    if x_layout == "expanded" or index_layout == "expanded":
        x_layout = index_layout = "expanded"  # the values and indices repeat together
    x = inputs.add(randn(gen, *flat.shape), x_layout, case["dtype"], grad=True)
    indices = inputs.add(indices_values, index_layout)
    # The references take the flat form (their compact decoding is 2-D only), with the same values
    # as the op's indices ("expanded" repeats the first entry along dim 0).
    ref_indices = indices
    if case["index_dtype"] == torch.uint8:
        ref_indices = flat[:1].expand(flat.shape) if index_layout == "expanded" and flat.shape[0] > 0 else flat
    if x.numel():
        expected = reference_max_unpool(dims, x, ref_indices, case["kernel"], case["stride"], case["padding"], output_size)
    else:  # an empty batch (the reference needs one plane): an empty output of the right shape
        expected = torch.zeros(*lead, *out_sizes, dtype=torch.float64)
    with cpu_kernels(case["simd"]):
        out = UNPOOL[dims](x, indices, case["kernel"], case["stride"], case["padding"], output_size)
        g = upstream_of_form(gen, case["upstream_form"], out.shape, len(lead) - 1, out.dtype)
        (grad,) = grads_of(out, [x], g)
    inputs.check_unchanged()
    assert out.dtype == x.dtype
    assert_exactly(out, expected, "output")
    if not x.numel():
        ref_grad = torch.zeros(x.shape, dtype=torch.float64)
    elif case["batch"] is None:
        ref_grad = reference_max_unpool_backward(g.unsqueeze(0), ref_indices.unsqueeze(0), k, s, p)[0]
    else:
        ref_grad = reference_max_unpool_backward(g, ref_indices, k, s, p)
    assert grad.dtype == x.dtype
    assert_exactly(grad, ref_grad, "grad (a gather)")


@fuzz_settings(0.8)
@given(case=unpool_cases(1))
def test_fuzz_max_unpool1d(case):
    EXAMPLES["max_unpool1d"] += 1
    check_unpool(1, case)


@fuzz_settings(1.2)
@given(case=unpool_cases(2))
def test_fuzz_max_unpool2d(case):
    EXAMPLES["max_unpool2d"] += 1
    check_unpool(2, case)


@fuzz_settings(0.8)
@given(case=unpool_cases(3))
def test_fuzz_max_unpool3d(case):
    EXAMPLES["max_unpool3d"] += 1
    check_unpool(3, case)


# --------------------------------------------------------------------------------------------
# gram_matrix / style_loss / perceptual_loss
# --------------------------------------------------------------------------------------------


@st.composite
def feature_cases(draw, allow_empty_batch: bool = True):
    dtype = draw(st.sampled_from(FLOATS))
    four_d = draw(st.booleans())
    spatial = (draw(st.integers(0, 6)), draw(st.integers(0, 6))) if four_d else (draw(st.integers(0, 24)),)
    exponent = draw(st.integers(-1, 1) if dtype in HALVES else st.integers(-3, 3))
    return dict(
        seed=draw(SEEDS),
        shape=(draw(st.integers(0 if allow_empty_batch else 1, 3)), draw(st.integers(1, 8)), *spatial),
        dtype=dtype,
        scale=10.0 ** exponent,
        layout=draw(st.sampled_from(LAYOUTS)),
        simd=draw(st.booleans()),
    )


def _features(case, inputs: Inputs) -> torch.Tensor:
    return inputs.add(randn(inputs.gen, *case["shape"], scale=case["scale"]), case["layout"], case["dtype"], grad=True)


def _expected_gram(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    if x.shape[2:].numel() == 0:  # no positions: an empty sum (the reference would divide 0 by 0)
        return torch.zeros(x.shape[0], x.shape[1], x.shape[1], dtype=torch.float64)
    return reference_gram_matrix(x.detach(), normalize)


@fuzz_settings(1.2)
@given(case=feature_cases(), normalize=st.booleans())
def test_fuzz_gram_matrix(case, normalize):
    EXAMPLES["gram_matrix"] += 1
    gen = generator(case["seed"])
    inputs = Inputs(gen)
    x = _features(case, inputs)
    with cpu_kernels(case["simd"]):
        gram = pyvision_ops.gram_matrix(x, normalize=normalize)
        g = upstream(gen, gram.shape, gram.dtype)
        (grad,) = grads_of(gram, [x], g)
    inputs.check_unchanged()
    dtype = case["dtype"]
    assert gram.dtype == dtype
    assert_close_scaled(gram, _expected_gram(x, normalize), GRAM_TOL[dtype], "gram")
    assert torch.equal(gram.detach(), gram.detach().transpose(-1, -2)), "the Gram matrix is not exactly symmetric"
    if x.shape[2:].numel() == 0:
        assert_exactly(grad, torch.zeros(x.shape, dtype=torch.float64), "grad of an empty sum")
    else:
        assert_close_scaled(grad, reference_gram_backward(x, g, normalize), GRAM_GRAD_TOL[dtype], "grad")


@fuzz_settings(1.0)
@given(case=feature_cases(), normalize=st.booleans(), reduction=st.sampled_from(["sum", "mean"]),
       target_form=st.sampled_from(["batched", "shared", "shared_batch1"]), grad_loss=st.sampled_from([1.0, -0.75, 2.5]))
def test_fuzz_style_loss(case, normalize, reduction, target_form, grad_loss):
    EXAMPLES["style_loss"] += 1
    gen = generator(case["seed"])
    inputs = Inputs(gen)
    x = _features(case, inputs)
    n, c = x.shape[0], x.shape[1]
    gram = _expected_gram(x, normalize)
    # a target near the features' own Gram scale, so the differences do not all cancel or dominate
    spread = float(gram.abs().max()) if gram.numel() else 1.0
    target_shape = {"batched": (n, c, c), "shared": (c, c), "shared_batch1": (1, c, c)}[target_form]
    target = inputs.add(randn(gen, *target_shape, scale=spread or 1.0), "contiguous", case["dtype"])
    with cpu_kernels(case["simd"]):
        loss = pyvision_ops.style_loss(x, target, normalize=normalize, reduction=reduction)
        (grad,) = grads_of(loss, [x], torch.tensor(grad_loss, dtype=loss.dtype))
    inputs.check_unchanged()
    dtype = case["dtype"]
    assert loss.shape == () and loss.dtype == dtype
    target64 = target.double()
    if x.shape[2:].numel() == 0:
        squared = (torch.zeros(n, c, c, dtype=torch.float64) - target64.expand(n, c, c)).pow(2)
        expected = squared.sum() if reduction == "sum" else squared.mean()
        assert_within(loss, expected, 2 * GRAM_TOL[dtype], 2 * GRAM_TOL[dtype] * float(expected.abs()), "loss",
                      allow_nan=True)
        return
    x64 = f64_leaf(x)
    expected = reference_style_loss(x64, target64, normalize, reduction)
    if n == 0:  # an empty batch: PyTorch's empty sum (0) or empty mean (NaN)
        assert_within(loss, expected, 0.0, 0.0, "loss of an empty batch", allow_nan=True)
        assert grad.shape == x.shape
        return
    if dtype == torch.float16 and max(float(expected.detach().abs()), float(gram.abs().max())) > 6e4:
        return  # beyond float16's range: inf is the right float16 answer
    # the loss squares G - target: G's rounding (tol |G|) enters as 2 |G - target| tol |G|
    target_full = target64.expand(n, c, c) if target64.dim() == 3 else target64.unsqueeze(0).expand(n, c, c)
    cross = (gram.abs() * (gram - target_full).abs())
    cross = float(cross.sum() if reduction == "sum" else cross.mean())
    assert_within(loss, expected, 2 * GRAM_TOL[dtype], 2 * GRAM_TOL[dtype] * (float(expected.detach().abs()) + 4 * cross),
                  "loss")
    (expected * grad_loss).backward()
    # G's rounding (GRAM_TOL |G|) reaches the gradient as 4 grad_loss (GRAM_TOL |G|) F however
    # close the target is to G: the gradient of the same loss against a zero target bounds it.
    x0 = f64_leaf(x)
    (reference_style_loss(x0, torch.zeros_like(target64), normalize, reduction) * grad_loss).backward()
    floor = GRAM_TOL[dtype] / (2 * GRAM_GRAD_TOL[dtype]) * float(x0.grad.abs().max())
    assert_close_scaled(grad, x64.grad, 2 * GRAM_GRAD_TOL[dtype], "grad", floor=floor)


@fuzz_settings(0.6)
@given(case=feature_cases(allow_empty_batch=False), layout_b=st.sampled_from(LAYOUTS))
def test_fuzz_perceptual_loss(case, layout_b):
    EXAMPLES["perceptual_loss"] += 1
    gen = generator(case["seed"])
    inputs = Inputs(gen)
    a = _features(case, inputs)
    b = inputs.add(randn(gen, *case["shape"], scale=case["scale"]), layout_b, case["dtype"])
    with cpu_kernels(case["simd"]):
        loss = pyvision_ops.perceptual_loss(a, b)
        (grad,) = grads_of(loss, [a], torch.tensor(1.0, dtype=loss.dtype))
    inputs.check_unchanged()
    dtype = case["dtype"]
    assert loss.shape == () and loss.dtype == dtype
    if a[0].numel() == 0:  # no element per item: PyTorch's 0/0
        assert_within(loss, torch.tensor(float("nan"), dtype=torch.float64), 0, 0, "loss", allow_nan=True)
        return
    a64 = f64_leaf(a)
    expected = reference_perceptual_loss(a64, b)
    if dtype == torch.float16 and not PERCEPTUAL_HALF_FIXED and float((a64.detach() - b.double()).pow(2).sum()) > 6e4:
        return  # test_perceptual_loss_float16_sum_overflows (a known bug)
    expected.backward()
    assert_close_scaled(loss, expected, 2 * GRAM_TOL[dtype], "loss")
    assert_close_scaled(grad, a64.grad, 2 * GRAM_GRAD_TOL[dtype], "grad")


#: perceptual_loss accumulates 16-bit inputs in float32: the fuzz covers large float16 values too
PERCEPTUAL_HALF_FIXED = True


@settings(_BASE, phases=[hypothesis.Phase.explicit])
@example(shape=(3, 7, 4, 4), value=10.0)
@given(shape=st.just((3, 7, 4, 4)), value=st.just(10.0))
def test_perceptual_loss_float16_sum_does_not_overflow(shape, value):
    """float16 features of magnitude 10: a loss of 400, summed in float32 (inf when summed in float16)."""
    EXAMPLES["perceptual_loss"] += 1
    a = torch.full(shape, value, dtype=torch.float16)
    b = torch.full(shape, -value, dtype=torch.float16)
    loss = pyvision_ops.perceptual_loss(a, b)
    assert_within(loss, reference_perceptual_loss(a, b), 2 * GRAM_TOL[torch.float16], 0.0, "loss")


# --------------------------------------------------------------------------------------------
# pairwise_distance / pairwise_topk
# --------------------------------------------------------------------------------------------

METRICS = ["sqeuclidean", "euclidean", "cosine", "dot"]
LOSS_METRICS = ["sqeuclidean", "euclidean", "cosine"]


def distance_bounds(metric: str, dtype: torch.dtype, x: torch.Tensor, y: Optional[torch.Tensor]) -> Tuple[float, float]:
    """tests/test_distance.py's bounds: sqeuclidean/euclidean relative per element; cosine absolute;
    dot relative to max |x| |y|."""
    tol = DIST_TOL[dtype]
    if metric in ("sqeuclidean", "euclidean"):
        return tol, (0.0 if dtype in (torch.float32, torch.float64) else 1e-6)
    if metric == "cosine":
        return tol, tol
    yy = x if y is None else y
    nx = float(torch.linalg.vector_norm(x.detach().double(), dim=-1).max()) if x.numel() else 0.0
    ny = float(torch.linalg.vector_norm(yy.detach().double(), dim=-1).max()) if yy.numel() else 0.0
    subnormal = 1e-6 if dtype == torch.float16 else 0.0  # float16's absolute spacing below 6e-5
    return tol, tol * nx * ny + subnormal


@st.composite
def point_cases(draw, min_rows: int = 0, styles=("normal", "far", "duplicates", "ties", "zeros", "scaled")):
    dtype = draw(st.sampled_from(FLOATS))
    style = draw(st.sampled_from(styles))
    if style == "far" and dtype in HALVES:
        style = "normal"  # the contract's accuracy far from the origin is a float32/float64 claim
    return dict(
        seed=draw(SEEDS),
        batch=tuple(draw(st.lists(st.integers(1, 2), max_size=2))),
        n=draw(st.integers(min_rows, 9)),
        m=draw(st.integers(max(min_rows, 1) if min_rows else 0, 9)),
        d=draw(st.integers(0 if min_rows == 0 else 1, 9)),
        dtype=dtype,
        style=style,
        x_layout=draw(st.sampled_from(LAYOUTS)),
        y_layout=draw(st.sampled_from(LAYOUTS)),
        simd=draw(st.booleans()),
    )


def _points(case, gen: torch.Generator, self_distance: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    batch, n, m, d, style = case["batch"], case["n"], case["m"], case["d"], case["style"]
    if style == "ties":
        x, y = small_integers(gen, *batch, n, d, low=-1, high=2), small_integers(gen, *batch, m, d, low=-1, high=2)
    elif style == "far":  # near-duplicates far from the origin: the matmul form's cancellation
        center = randn(gen, d) * 1e3
        x, y = center + randn(gen, *batch, n, d, scale=1e-1), center + randn(gen, *batch, m, d, scale=1e-1)
    elif style == "scaled":
        scale = 10.0 ** float(torch.randint(-3, 4, (1,), generator=gen))
        x, y = randn(gen, *batch, n, d, scale=scale), randn(gen, *batch, m, d, scale=scale)
    else:
        x, y = randn(gen, *batch, n, d), randn(gen, *batch, m, d)
    if style == "duplicates" and n and m:
        rows = torch.randint(0, n, (m,), generator=gen)
        copy = torch.rand(m, generator=gen) < 0.5
        y[..., copy, :] = x[..., rows[copy], :]
        if n > 1:
            x[..., n - 1, :] = x[..., 0, :]
    if style == "zeros":
        x[..., torch.rand(n, generator=gen) < 0.3, :] = 0.0
        y[..., torch.rand(m, generator=gen) < 0.3, :] = 0.0
    if case["dtype"] == torch.float16 and style == "scaled":
        x, y = x.clamp(-6e4, 6e4), y.clamp(-6e4, 6e4)
    return x, (None if self_distance else y)


def _equal_rows(x: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
    """(..., N, M) True where row i of x equals row j of y (x itself when y is None) bitwise."""
    yy = x if y is None else y
    if x.shape[-2] == 0 or yy.shape[-2] == 0:
        return torch.zeros(*x.shape[:-1], yy.shape[-2], dtype=torch.bool)
    return (x.detach().unsqueeze(-2) == yy.detach().unsqueeze(-3)).all(-1)


def gradient_floor(metric: str, x: torch.Tensor, y: Optional[torch.Tensor], g: torch.Tensor) -> float:
    """The size of the terms a distance gradient sums over the other side's rows (|g| / |row| for
    cosine, 2 |g| |row| for sqeuclidean and dot, |g| for euclidean): they cancel to 0 at a
    duplicated row, where a float32 kernel keeps their rounding (~eps of them)."""
    if g.numel() == 0 or x.shape[-1] == 0:
        return 0.0
    rows = torch.cat([t.detach().double().reshape(-1, t.shape[-1]) for t in (x, x if y is None else y)])
    norms = torch.linalg.vector_norm(rows, dim=-1)
    terms = 2 * max(x.shape[-2], (x if y is None else y).shape[-2])
    size = float(g.double().abs().max()) * terms
    if metric == "euclidean":
        return size
    if metric in ("sqeuclidean", "dot"):
        return 2 * size * float(norms.max())
    norms = norms[norms > 0]
    return size / float(norms.min()) if norms.numel() else 0.0


def _overflows(x: torch.Tensor, y: Optional[torch.Tensor], metric: str) -> bool:
    """Whether a float16 result would overflow (the reference is finite, the dtype is not)."""
    if x.dtype != torch.float16:
        return False
    ref = reference_pairwise_distance(x.detach(), None if y is None else y.detach(), metric)
    return bool((ref.abs() > 6e4).any())


@fuzz_settings(1.6)
@given(case=point_cases(), self_distance=st.booleans(), metric=st.sampled_from(METRICS))
def test_fuzz_pairwise_distance(case, self_distance, metric):
    EXAMPLES["pairwise_distance"] += 1
    gen = generator(case["seed"])
    inputs = Inputs(gen)
    xv, yv = _points(case, gen, self_distance)
    # a zero row's cosine gradient is y / (1e-8 |y|) (the norm clamp): not a float32/float16 quantity
    zero_row = any(bool((t == 0).all(-1).any()) for t in (xv, yv) if t is not None and t.numel())
    differentiable = case["style"] not in ("far", "scaled") and not (metric == "cosine" and zero_row)
    x = inputs.add(xv, case["x_layout"], case["dtype"], grad=differentiable)
    y = None if yv is None else inputs.add(yv, case["y_layout"], case["dtype"], grad=differentiable)
    if _overflows(x, y, metric):
        return
    with cpu_kernels(case["simd"]):
        d = pyvision_ops.pairwise_distance(x, y, metric=metric)
        g = upstream(gen, d.shape, d.dtype)
        leaves = [t for t in (x, y) if t is not None]
        grads = grads_of(d, leaves, g) if differentiable else None
    inputs.check_unchanged()
    assert d.dtype == x.dtype
    expected = reference_pairwise_distance(x.detach(), None if y is None else y.detach(), metric)
    rtol, atol = distance_bounds(metric, x.dtype, x, y)
    assert_within(d, expected, rtol, atol, metric)
    if metric in ("sqeuclidean", "euclidean"):
        equal = _equal_rows(x, y)
        assert bool((d.detach()[equal] == 0).all()), "the distance between equal rows is not exactly 0"
    if not differentiable:
        return
    leaves64 = [f64_leaf(t) for t in leaves]
    ref = reference_pairwise_distance(leaves64[0], None if y is None else leaves64[1], metric)
    ref_grads = torch.autograd.grad(ref, leaves64, g.double(), allow_unused=True)
    floor = gradient_floor(metric, x, y, g)
    for name, got, exp in zip("xy", grads, ref_grads):
        exp = torch.zeros_like(leaves64[0]) if exp is None else exp
        got = torch.zeros(exp.shape, dtype=case["dtype"]) if got is None else got
        assert_close_scaled(got, exp, DIST_GRAD_TOL[case["dtype"]], f"grad {name}", floor)


@fuzz_settings(1.2)
@given(case=point_cases(min_rows=1, styles=("normal", "duplicates", "ties", "scaled")),
       metric=st.sampled_from(METRICS), largest=st.booleans(), k_fraction=st.floats(0.0, 1.0))
def test_fuzz_pairwise_topk(case, metric, largest, k_fraction):
    EXAMPLES["pairwise_topk"] += 1
    gen = generator(case["seed"])
    inputs = Inputs(gen)
    xv, yv = _points(case, gen, self_distance=False)
    if metric == "cosine":  # zero rows: test_pairwise_topk_cosine_zero_row (a known bug)
        xv[(xv == 0).all(-1)] = 1.0
        yv[(yv == 0).all(-1)] = 1.0
    differentiable = case["style"] != "scaled"
    x = inputs.add(xv, case["x_layout"], case["dtype"], grad=differentiable)
    y = inputs.add(yv, case["y_layout"], case["dtype"], grad=differentiable)
    if _overflows(x, y, metric):
        return
    m = y.shape[-2]
    k = 1 + int(k_fraction * (m - 1))
    with cpu_kernels(case["simd"]):
        result = pyvision_ops.pairwise_topk(x, y, k, metric=metric, largest=largest)
        values, idx = result
        g = upstream(gen, values.shape, values.dtype)
        grads = grads_of(values, [x, y], g) if differentiable else None
    inputs.check_unchanged()
    assert isinstance(result, pyvision_ops.TopK) and result.values is values and result.indices is idx
    batch, n = tuple(x.shape[:-2]), x.shape[-2]
    assert tuple(values.shape) == (*batch, n, k) and tuple(idx.shape) == (*batch, n, k)
    assert values.dtype == x.dtype and idx.dtype == torch.int64
    assert bool(((idx >= 0) & (idx < m)).all()), "index out of range"
    if k > 1:
        ordered = torch.sort(idx, -1).values
        assert bool((ordered[..., 1:] != ordered[..., :-1]).all()), "an index repeated within a row"
    v = values.detach().double()
    assert bool(((v[..., :-1] >= v[..., 1:]) if largest else (v[..., :-1] <= v[..., 1:])).all()), "values not sorted"
    ref = reference_pairwise_distance(x.detach(), y.detach(), metric)
    ref_values, ref_idx = reference_pairwise_topk(x.detach(), y.detach(), k, metric, largest)
    rtol, atol = distance_bounds(metric, x.dtype, x, y)
    assert_within(values, torch.gather(ref, -1, idx), rtol, atol, "value vs its index's distance")
    assert_within(values, ref_values, rtol, atol, "the k best values")
    if x.dtype not in HALVES:
        # rows whose k+1 best reference values are well apart must pick exactly the reference's indices
        full = torch.sort(ref, -1, descending=largest).values[..., : min(k + 1, m)]
        row_scale = ref.abs().amax(-1, keepdim=True).clamp_min(1e-300)
        gaps = (full[..., 1:] - full[..., :-1]).abs() / row_scale
        separated = (gaps > 20 * DIST_TOL[x.dtype]).all(-1)
        wrong = separated & ~(idx == ref_idx).all(-1)
        assert not bool(wrong.any()), f"well-separated rows pick other indices: {idx[wrong][:2].tolist()} vs {ref_idx[wrong][:2].tolist()}"
    if not differentiable:
        return
    x64, y64 = f64_leaf(x), f64_leaf(y)
    chosen = torch.gather(reference_pairwise_distance(x64, y64, metric), -1, idx)  # the op's own choice (ties)
    ref_grads = torch.autograd.grad(chosen, [x64, y64], g.double())
    floor = gradient_floor(metric, x, y, g)
    for name, got, exp in zip("xy", grads, ref_grads):
        assert_close_scaled(got, exp, DIST_GRAD_TOL[case["dtype"]], f"grad {name}", floor)


# A zero row is at cosine distance 1 from every row (DESIGN): the tile kernels, which take half
# the squared distance of unit rows, get augmented rows for it (cosine_augmented_rows in
# csrc/distance/distance_checks.cpp), in pairwise_distance, pairwise_topk and the miners alike,
# so that the miners compare pairwise_distance's own values (ties included).
@settings(_BASE, phases=[hypothesis.Phase.explicit])
@example(x=[[0.0]], y=[[1.0]])
@example(x=[[0.0, 0.0]], y=[[0.0, 0.0], [1.0, 2.0]])
@example(x=[[1e-9, 0.0], [3.0, 4.0]], y=[[2e-9, 1e-9], [0.0, 0.0], [1.0, 2.0]])
@example(x=[[], []], y=[[], [], []])
@given(x=st.just([[0.0]]), y=st.just([[1.0]]))
def test_pairwise_topk_cosine_zero_row(x, y):
    EXAMPLES["pairwise_topk"] += 1
    for dtype in (torch.float32, torch.float64):
        xt, yt = torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype)
        for simd in (True, False):
            with cpu_kernels(simd):
                for a, b, what in ((xt, yt, "x against y"), (yt, yt, "y against itself")):
                    k = b.shape[0]
                    values, idx = pyvision_ops.pairwise_topk(a, b, k, metric="cosine")
                    ref_values, _ = reference_pairwise_topk(a, b, k, "cosine")
                    tol = DIST_TOL[dtype]
                    assert_within(values, ref_values, tol, tol, f"cosine top-k of a zero row, {what}, {dtype}")
                    # each value is its index's distance, as pairwise_distance gives it
                    full = pyvision_ops.pairwise_distance(a, b, metric="cosine")
                    assert_within(values, torch.gather(full, -1, idx), tol, tol, f"value vs index, {what}")


# --------------------------------------------------------------------------------------------
# mining and metric-learning losses
# --------------------------------------------------------------------------------------------

LABEL_DTYPES = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8]
STRATEGIES = ["batch_hard", "semi_hard", "semi_hard_window", "hard"]
# per-metric margins on unit-scale data (tests/test_distance.py), times a drawn factor
MARGINS = {"sqeuclidean": 2.0, "euclidean": 0.5, "cosine": 0.2, "dot": 1.0}


def make_labels(kind: str, n: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """"classes" (about n/3 classes of random sizes), "one_class", "all_distinct", "two_classes",
    with arbitrary values (negative and large ones where the dtype allows)."""
    if kind == "classes":
        raw = torch.randint(0, max(1, n // 3), (n,), generator=gen)
    elif kind == "one_class":
        raw = torch.zeros(n, dtype=torch.int64)
    elif kind == "all_distinct":
        raw = torch.randperm(n, generator=gen)
    else:
        raw = torch.arange(n) % 2
    if dtype == torch.uint8:
        values = raw * 7 + 3
    elif dtype == torch.int8:
        values = raw * 5 - 60
    else:
        values = raw * 1009 - 20000
    return values.to(dtype)


@st.composite
def embedding_cases(draw, max_rows: int = 24, styles=("normal", "ties", "duplicates"), label_dtypes=LABEL_DTYPES):
    return dict(
        seed=draw(SEEDS),
        n=draw(st.integers(0, max_rows)),
        d=draw(st.integers(1, 6)),
        labels=draw(st.sampled_from(["classes", "classes", "one_class", "all_distinct", "two_classes"])),
        label_dtype=draw(st.sampled_from(label_dtypes)),
        dtype=draw(st.sampled_from(FLOATS)),
        style=draw(st.sampled_from(styles)),
        layout=draw(st.sampled_from(LAYOUTS)),
        label_layout=draw(st.sampled_from(["contiguous", "sliced", "narrowed", "expanded"])),
        simd=draw(st.booleans()),
    )


def _embeddings(case, inputs: Inputs, grad: bool = False, metric: str = "") -> Tuple[torch.Tensor, torch.Tensor]:
    gen, n, d = inputs.gen, case["n"], case["d"]
    if case["style"] == "ties":
        values = small_integers(gen, n, d, low=-1, high=2)
    else:
        values = randn(gen, n, d)
        if case["style"] == "duplicates" and n > 1:
            rows = torch.randint(0, n, (n // 2,), generator=gen)
            values[torch.randint(0, n, (n // 2,), generator=gen)] = values[rows]
    if metric == "cosine" and not case.get("zero_rows", False):
        # a zero row (test_mine_triplets_cosine_zero_row): its cosine gradient is y / (1e-8 |y|),
        # beyond float16 and float32
        values[(values == 0).all(-1)] = 1.0
    emb = inputs.add(values, case["layout"], case["dtype"], grad=grad)
    labels = inputs.add(make_labels(case["labels"], n, gen, case["label_dtype"]), case["label_layout"])
    return emb, labels


def _triplets(result) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
    assert isinstance(result, tuple) and len(result) == 3
    for t in result:
        assert isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.dim() == 1 and not t.requires_grad
    assert result[0].shape == result[1].shape == result[2].shape
    return tuple(tuple(t.tolist()) for t in result)


def _assert_same_triplets(got, expected, what: str) -> None:
    if got == expected:
        return
    g, e = set(zip(*got)), set(zip(*expected))
    if g == e:
        raise AssertionError(f"{what}: the right {len(g)} triplets in the wrong order")
    raise AssertionError(f"{what}: {len(g)} triplets, expected {len(e)}; missing {sorted(e - g)[:6]}, "
                         f"unexpected {sorted(g - e)[:6]}")


@fuzz_settings(1.2)
@given(case=embedding_cases(), strategy=st.sampled_from(STRATEGIES), metric=st.sampled_from(METRICS),
       margin_factor=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
       max_triplets=st.one_of(st.none(), st.integers(0, 60)))
def test_fuzz_mine_triplets(case, strategy, metric, margin_factor, max_triplets):
    EXAMPLES["mine_triplets"] += 1
    check_mining(case, strategy, metric, margin_factor, max_triplets)


@settings(_BASE, phases=[hypothesis.Phase.explicit])
@example(case=dict(seed=0, n=6, d=1, labels="classes", label_dtype=torch.int64, dtype=torch.float32, style="ties",
                   layout="contiguous", label_layout="contiguous", simd=False, zero_rows=True),
         strategy="batch_hard", metric="cosine", margin_factor=0.0, max_triplets=None)
@example(case=dict(seed=3, n=12, d=3, labels="classes", label_dtype=torch.int64, dtype=torch.float64, style="ties",
                   layout="contiguous", label_layout="contiguous", simd=True, zero_rows=True),
         strategy="semi_hard", metric="cosine", margin_factor=1.0, max_triplets=None)
@example(case=dict(seed=4, n=12, d=2, labels="two_classes", label_dtype=torch.int32, dtype=torch.float32, style="normal",
                   layout="contiguous", label_layout="contiguous", simd=True, zero_rows=True),
         strategy="semi_hard_window", metric="cosine", margin_factor=2.0, max_triplets=None)
@example(case=dict(seed=4, n=12, d=2, labels="two_classes", label_dtype=torch.int32, dtype=torch.float32, style="ties",
                   layout="contiguous", label_layout="contiguous", simd=True, zero_rows=True),
         strategy="semi_hard_window", metric="cosine", margin_factor=2.0, max_triplets=None)
@example(case=dict(seed=4, n=12, d=2, labels="two_classes", label_dtype=torch.int32, dtype=torch.float64, style="ties",
                   layout="contiguous", label_layout="contiguous", simd=False, zero_rows=True),
         strategy="semi_hard_window", metric="cosine", margin_factor=2.0, max_triplets=None)
@example(case=dict(seed=5, n=10, d=2, labels="classes", label_dtype=torch.int64, dtype=torch.float32, style="ties",
                   layout="contiguous", label_layout="contiguous", simd=False, zero_rows=True),
         strategy="hard", metric="cosine", margin_factor=1.0, max_triplets=7)
@given(case=embedding_cases(), strategy=st.just("batch_hard"), metric=st.just("cosine"),
       margin_factor=st.just(0.0), max_triplets=st.none())
def test_mine_triplets_cosine_zero_row(case, strategy, metric, margin_factor, max_triplets):
    EXAMPLES["mine_triplets"] += 1
    check_mining(case, strategy, metric, margin_factor, max_triplets)


def check_mining(case, strategy, metric, margin_factor, max_triplets) -> None:
    gen = generator(case["seed"])
    inputs = Inputs(gen)
    emb, labels = _embeddings(case, inputs, metric=metric)
    margin = MARGINS[metric] * margin_factor
    cap = max_triplets if strategy == "hard" else None
    with cpu_kernels(case["simd"]):
        try:
            result = pyvision_ops.mine_triplets(emb, labels, strategy=strategy, margin=margin, metric=metric,
                                                max_triplets=cap)
        except ValueError as error:
            # batch_hard / semi_hard for a similarity: mirrored, or rejected naming the metric
            assert metric == "dot" and strategy in ("batch_hard", "semi_hard") and "metric" in str(error), error
            inputs.check_unchanged()
            return
        own = pyvision_ops.pairwise_distance(emb, None, metric=metric)  # the distances the mining compares
    inputs.check_unchanged()
    got = _triplets(result)
    lab = labels.tolist()
    for a, p, n in zip(*got):
        assert a != p and lab[a] == lab[p] and lab[a] != lab[n], f"ill-formed triplet {(a, p, n)}"
    if case["dtype"] in HALVES:
        if strategy == "batch_hard":  # one triplet per anchor with a positive and a negative
            valid = [i for i in range(len(lab)) if lab.count(lab[i]) > 1 and any(v != lab[i] for v in lab)]
            assert list(got[0]) == valid
        return
    expected = reference_mine_triplets(own, labels, strategy, margin, similarity=metric == "dot", max_triplets=cap)
    _assert_same_triplets(got, expected, f"{strategy}/{metric}/margin {margin}")


def _batch_hard_selection_is_clear(d: torch.Tensor, labels: torch.Tensor, margin: float, soft: bool, tol: float) -> bool:
    """Whether every valid anchor's farthest positive and nearest negative win by more than ``tol``
    (relative to the largest distance) and its hinge is away from its kink: only then is the
    gradient a function of the inputs that two precisions must agree on."""
    lab = labels.tolist()
    scale = float(d.abs().max()) if d.numel() else 0.0
    gap = tol * max(scale, 1e-30)
    for a in range(len(lab)):
        pos = [d[a, j].item() for j in range(len(lab)) if j != a and lab[j] == lab[a]]
        neg = [d[a, j].item() for j in range(len(lab)) if lab[j] != lab[a]]
        if not pos or not neg:
            continue
        pos.sort(reverse=True)
        neg.sort()
        if len(pos) > 1 and pos[0] - pos[1] <= gap:
            return False
        if len(neg) > 1 and neg[1] - neg[0] <= gap:
            return False
        if not soft and abs(pos[0] - neg[0] + margin) <= gap:
            return False
    return True


@fuzz_settings(1.0)
@given(case=embedding_cases(max_rows=20), metric=st.sampled_from(LOSS_METRICS), soft=st.booleans(),
       margin_factor=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_fuzz_batch_hard_triplet_loss(case, metric, soft, margin_factor):
    EXAMPLES["batch_hard_triplet_loss"] += 1
    gen = generator(case["seed"])
    inputs = Inputs(gen)
    emb, labels = _embeddings(case, inputs, grad=True, metric=metric)
    margin = MARGINS[metric] * margin_factor
    with cpu_kernels(case["simd"]):
        loss = pyvision_ops.batch_hard_triplet_loss(emb, labels, margin=margin, metric=metric, soft=soft)
        (grad,) = grads_of(loss, [emb], torch.tensor(1.5, dtype=loss.dtype))
    inputs.check_unchanged()
    dtype = case["dtype"]
    assert loss.shape == () and loss.dtype == dtype and grad.shape == emb.shape
    e64 = f64_leaf(emb)
    expected = reference_batch_hard_triplet_loss(e64, labels, margin, metric, soft)
    d = reference_pairwise_distance(e64.detach(), None, metric)
    scale = float(d.abs().max()) if d.numel() else 0.0
    tol = 4 * DIST_TOL[dtype]
    assert_within(loss, expected, tol, tol * (scale + margin), "loss")
    assert bool(torch.isfinite(grad).all()), "non-finite gradient"
    if dtype in HALVES or not _batch_hard_selection_is_clear(d, labels, margin, soft, 1e-3):
        return  # a near tie: either selection is right, and the gradients differ
    (expected * 1.5).backward()
    assert_close_scaled(grad, e64.grad, max(DIST_GRAD_TOL[dtype], 1e-8) if soft else DIST_GRAD_TOL[dtype], "grad",
                        floor=1.5 * loss_term_gradient_scale(e64.detach(), metric))


def loss_term_gradient_scale(emb: torch.Tensor, metric: str) -> float:
    """The size of one anchor's term in the gradient of a mean over anchors (weight 1): what the
    rounding of the terms is relative to when they cancel (ties make the exact gradient ~0).
    d/dx of ||x - y|| is a unit vector, of ||x - y||^2 is 2 (x - y), of the cosine distance at
    most 2 / ||x||."""
    if emb.numel() == 0:
        return 0.0
    n = emb.shape[0]
    largest = float(emb.abs().max())
    if metric == "euclidean":
        per_term = 1.0
    elif metric == "cosine":
        per_term = 2.0 / max(float(emb.norm(dim=1).min()), 1e-6)
    else:  # sqeuclidean
        per_term = 4.0 * largest
    return per_term / max(n, 1)


@st.composite
def triplet_cases(draw):
    return dict(
        seed=draw(SEEDS),
        shape=draw(st.one_of(st.tuples(st.integers(0, 9), st.integers(1, 9)), st.tuples(st.integers(1, 9)))),
        dtype=draw(st.sampled_from(FLOATS)),
        metric=draw(st.sampled_from(LOSS_METRICS)),
        margin=draw(st.sampled_from([0.05, 0.3, 1.0, 2.0])),  # torch.nn.TripletMarginLoss needs margin > 0
        eps=draw(st.sampled_from([1e-6, 0.0, 1e-3])),
        swap=draw(st.booleans()),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        layouts=draw(st.tuples(*[st.sampled_from(LAYOUTS)] * 3)),
        simd=draw(st.booleans()),
    )


@fuzz_settings(1.0)
@given(case=triplet_cases())
def test_fuzz_triplet_margin_loss(case):
    EXAMPLES["triplet_margin_loss"] += 1
    gen = generator(case["seed"])
    inputs = Inputs(gen)
    shape, dtype = case["shape"], case["dtype"]
    av = randn(gen, *shape)
    values = [av, av + 0.7 * randn(gen, *shape), randn(gen, *shape)]
    a, p, n = (inputs.add(v, layout, dtype, grad=True) for v, layout in zip(values, case["layouts"]))
    margin, metric, eps, swap, reduction = case["margin"], case["metric"], case["eps"], case["swap"], case["reduction"]
    with cpu_kernels(case["simd"]):
        loss = pyvision_ops.triplet_margin_loss(a, p, n, margin=margin, metric=metric, eps=eps, swap=swap,
                                                reduction=reduction)
        g = upstream(gen, loss.shape, loss.dtype)
        grads = grads_of(loss, [a, p, n], g)
    inputs.check_unchanged()
    leaves = [f64_leaf(t) for t in (a, p, n)]
    expected = reference_triplet_margin_loss(*leaves, margin, metric, eps, swap, reduction)
    assert loss.dtype == dtype and tuple(loss.shape) == tuple(expected.shape)
    rows = [t.detach().reshape(-1, shape[-1]) for t in leaves]
    d_an = reference_pairwise_distance(rows[0], rows[2], metric).diagonal() if rows[0].numel() else torch.zeros(0)
    scale = margin + (float(d_an.abs().max()) if d_an.numel() else 0.0)
    tol = 4 * DIST_TOL[dtype]
    assert_within(loss, expected, tol, tol * scale, "loss")
    # the hinge's kink and the swap's min are not differentiable: skip the gradient near them
    a64, p64, n64 = (r.double() for r in rows)

    if a64.shape[0]:
        d_ap, d_an, d_pn = (_pair_distance(u, w, metric, eps) for u, w in ((a64, p64), (a64, n64), (p64, n64)))
        near = 20 * DIST_TOL[dtype] * max(scale, 1.0)
        hinge = d_ap - (torch.minimum(d_an, d_pn) if swap else d_an) + margin
        if bool((hinge.abs() < near).any()) or (swap and bool(((d_an - d_pn).abs() < near).any())):
            return
    expected.backward(g.double())
    # the size of the terms that cancel: |g| per unit direction (euclidean), |g| / |row| (cosine)
    floor = float(g.double().abs().max()) if g.numel() and metric != "sqeuclidean" else 0.0
    if metric == "cosine" and a64.numel():
        norms = torch.linalg.vector_norm(torch.cat([a64, p64, n64]), dim=-1)
        floor /= max(float(norms.min()), 1e-8)
    for name, got, leaf in zip("apn", grads, leaves):
        assert_close_scaled(got, leaf.grad, DIST_GRAD_TOL[dtype], f"grad {name}", floor)


def _pair_distance(u: torch.Tensor, v: torch.Tensor, metric: str, eps: float) -> torch.Tensor:
    """Row-wise distances as the triplet loss takes them (euclidean/sqeuclidean with eps added)."""
    if metric == "euclidean":
        return F.pairwise_distance(u, v, p=2.0, eps=eps)
    if metric == "sqeuclidean":
        return (u - v + eps).pow(2).sum(-1)
    return reference_pairwise_distance(u.unsqueeze(-2), v.unsqueeze(-2), "cosine").reshape(-1)


@st.composite
def contrastive_cases(draw):
    return dict(
        seed=draw(SEEDS),
        b=draw(st.integers(0, 10)),
        d=draw(st.integers(1, 9)),
        dtype=draw(st.sampled_from(FLOATS)),
        margin=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
        same=draw(st.sampled_from(["bool", "float"])),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        layouts=draw(st.tuples(*[st.sampled_from(LAYOUTS)] * 3)),
        simd=draw(st.booleans()),
    )


@fuzz_settings(0.8)
@given(case=contrastive_cases())
def test_fuzz_contrastive_loss(case):
    EXAMPLES["contrastive_loss"] += 1
    gen = generator(case["seed"])
    inputs = Inputs(gen)
    b, d, dtype, margin, reduction = case["b"], case["d"], case["dtype"], case["margin"], case["reduction"]
    x1 = inputs.add(randn(gen, b, d), case["layouts"][0], dtype, grad=True)
    x2 = inputs.add(randn(gen, b, d, scale=0.3), case["layouts"][1], dtype, grad=True)
    same_bool = torch.rand(b, generator=gen) < 0.5
    same = inputs.add(same_bool if case["same"] == "bool" else same_bool.to(dtype), case["layouts"][2])
    with cpu_kernels(case["simd"]):
        loss = pyvision_ops.contrastive_loss(x1, x2, same, margin=margin, reduction=reduction)
        g = upstream(gen, loss.shape, loss.dtype)
        grads = grads_of(loss, [x1, x2], g)
    inputs.check_unchanged()
    a64, b64 = f64_leaf(x1), f64_leaf(x2)
    expected = reference_contrastive_loss(a64, b64, same, margin, reduction)
    assert loss.dtype == dtype and tuple(loss.shape) == tuple(expected.shape)
    sq = (a64.detach() - b64.detach()).pow(2).sum(-1)
    scale = margin * margin + (float(sq.max()) if sq.numel() else 0.0)
    tol = 4 * DIST_TOL[dtype]
    assert_within(loss, expected, tol, tol * scale, "loss")
    if bool(((sq - margin * margin).abs() < 20 * DIST_TOL[dtype] * max(scale, 1.0)).any()):
        return  # the hinge's kink
    expected.backward(g.double())
    for name, got, leaf in zip(("x1", "x2"), grads, (a64, b64)):
        assert_close_scaled(got, leaf.grad, DIST_GRAD_TOL[dtype], f"grad {name}")


@fuzz_settings(0.8)
@given(case=embedding_cases(max_rows=16, styles=("normal", "duplicates")))
def test_fuzz_class_distance_matrix(case):
    EXAMPLES["class_distance_matrix"] += 1
    gen = generator(case["seed"])
    inputs = Inputs(gen)
    emb, labels = _embeddings(case, inputs, grad=True)
    with cpu_kernels(case["simd"]):
        got = pyvision_ops.class_distance_matrix(emb, labels)
        g = upstream(gen, got.shape, got.dtype)
        (grad,) = grads_of(got, [emb], g)
    inputs.check_unchanged()
    dtype = case["dtype"]
    e64 = f64_leaf(emb)
    expected = reference_class_distance_matrix(e64, labels)
    p = torch.unique(labels).numel()
    assert tuple(got.shape) == (p, p) and got.dtype == dtype
    # computed from class means: equal rows give 0 only up to the rounding of |r|^2
    magnitude = float(e64.detach().abs().max()) ** 2 * case["d"] if emb.numel() else 0.0
    assert_close_scaled(got, expected, 4 * DIST_TOL[dtype], "matrix", magnitude)
    if p:
        expected.backward(g.double())
        # the terms 2 (r_i - mean) g cancel to 0 for equal rows, with the rounding of |r| |g|
        floor = 4 * float(g.double().abs().max()) * float(e64.detach().abs().max()) if emb.numel() else 0.0
        assert_close_scaled(grad if grad is not None else torch.zeros_like(emb), e64.grad, DIST_GRAD_TOL[dtype], "grad", floor)


#: every label dtype, int16 included (gathered as int64: gloo has no int16)
GATHER_LABEL_DTYPES = list(LABEL_DTYPES)


@pytest.mark.filterwarnings("ignore:.*all_gather is deprecated:FutureWarning")
@fuzz_settings(0.4)
@given(case=embedding_cases(max_rows=12, styles=("normal",), label_dtypes=GATHER_LABEL_DTYPES))
def test_fuzz_gather_embeddings(single_process_group, case):
    EXAMPLES["gather_embeddings"] += 1
    check_gather_embeddings(case)


def check_gather_embeddings(case) -> None:
    gen = generator(case["seed"])
    inputs = Inputs(gen)
    emb, labels = _embeddings(case, inputs, grad=True)
    all_embeddings, all_labels = pyvision_ops.gather_embeddings(emb, labels)
    g = upstream(gen, all_embeddings.shape, all_embeddings.dtype)
    (grad,) = grads_of(all_embeddings, [emb], g)
    inputs.check_unchanged()
    # one rank: the gathered batch is this rank's own, and the gradient flows back unchanged
    assert all_embeddings.dtype == emb.dtype and all_labels.dtype == labels.dtype
    assert_exactly(all_embeddings, emb.detach(), "embeddings")
    assert_exactly(all_labels, labels, "labels")
    assert_exactly(grad, g, "grad")


@pytest.mark.filterwarnings("ignore:.*all_gather is deprecated:FutureWarning")
@settings(_BASE, phases=[hypothesis.Phase.explicit])
@example(case=dict(seed=0, n=3, d=2, labels="classes", label_dtype=torch.int16, dtype=torch.float32, style="normal",
                   layout="contiguous", label_layout="contiguous", simd=True))
@given(case=embedding_cases(max_rows=12, styles=("normal",), label_dtypes=[torch.int16]))
def test_gather_embeddings_int16_labels(single_process_group, case):
    EXAMPLES["gather_embeddings"] += 1
    check_gather_embeddings(case)


# --------------------------------------------------------------------------------------------
# linear_sum_assignment
# --------------------------------------------------------------------------------------------


@st.composite
def cost_cases(draw):
    form = draw(st.sampled_from(["2d", "2d", "batched", "list"]))
    if form == "list":
        shapes = draw(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), min_size=1, max_size=4))
    else:
        shapes = [(draw(st.integers(0, 8)), draw(st.integers(0, 8)))]
    return dict(
        seed=draw(SEEDS),
        form=form,
        shapes=shapes,
        batch=draw(st.integers(0, 3)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.int64, torch.float16, torch.bfloat16])),
        values=draw(st.sampled_from(["uniform", "ties", "signed", "forbidden", "forbidden", "invalid"])),
        maximize=draw(st.booleans()),
        layout=draw(st.sampled_from(LAYOUTS)),
        simd=draw(st.booleans()),
    )


def _cost_values(case, gen: torch.Generator, shape: Sequence[int]) -> torch.Tensor:
    kind = case["values"]
    if kind == "ties" or case["dtype"] == torch.int64:
        cost = small_integers(gen, *shape, low=0, high=4)
    elif kind == "signed":
        cost = randn(gen, *shape, scale=10.0 ** float(torch.randint(-2, 3, (1,), generator=gen)))
    else:
        cost = torch.rand(shape, generator=gen, dtype=torch.float64)
    if case["dtype"] == torch.int64:
        return cost
    forbid = float("-inf") if case["maximize"] else float("inf")
    if kind == "forbidden":
        cost[torch.rand(shape, generator=gen) < 0.3] = forbid
    elif kind == "invalid" and cost.numel():
        # NaN anywhere, or the wrong infinity (-inf minimizing, +inf maximizing): a ValueError
        bad = [float("nan"), -forbid][int(torch.randint(0, 2, (1,), generator=gen))]
        cost.view(-1)[int(torch.randint(0, cost.numel(), (1,), generator=gen))] = bad
    return cost


def _scipy_solution(cost: torch.Tensor, maximize: bool) -> Optional[float]:
    """SciPy's optimal total (exactly summed), or None where SciPy raises ValueError."""
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    matrix = as_numpy64(cost)
    try:
        rows, cols = scipy_lsa(matrix, maximize=maximize)
    except ValueError:
        return None
    return exact_sum(matrix[rows, cols].tolist())


def _check_assignment(cost: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, optimum: float, maximize: bool,
                      dtype: torch.dtype, what: str) -> None:
    n, m = cost.shape
    k = min(n, m)
    assert rows.dtype == torch.int64 and cols.dtype == torch.int64, what
    assert tuple(rows.shape) == (k,) and tuple(cols.shape) == (k,), f"{what}: shapes {tuple(rows.shape)}, {tuple(cols.shape)}"
    r, c = rows.tolist(), cols.tolist()
    assert r == sorted(set(r)), f"{what}: rows not strictly ascending: {r}"
    assert len(set(c)) == k and all(0 <= j < m for j in c) and all(0 <= i < n for i in r), f"{what}: bad columns {c}"
    matrix = as_numpy64(cost)
    chosen = matrix[r, c].tolist() if k else []
    assert all(math.isfinite(v) for v in chosen), f"{what}: a forbidden pair was chosen"
    total = exact_sum(chosen)
    finite = matrix[np.isfinite(matrix)]
    biggest = float(np.abs(finite).max()) if finite.size else 0.0
    if dtype == torch.float64 or dtype == torch.int64:
        tol = 1e-9 * max(abs(optimum), k * biggest, 1e-300)
    else:
        tol = 1e-5 * k * biggest
    worse = (optimum - total) if maximize else (total - optimum)
    assert worse <= tol, f"{what}: total {total!r} is not optimal ({optimum!r}, tolerance {tol:.3g})"


@fuzz_settings(1.2)
@given(case=cost_cases())
def test_fuzz_linear_sum_assignment(case):
    EXAMPLES["linear_sum_assignment"] += 1
    gen = generator(case["seed"])
    inputs = Inputs(gen)
    dtype, maximize = case["dtype"], case["maximize"]
    if case["form"] == "list":
        costs = [inputs.add(_cost_values(case, gen, shape), case["layout"], dtype) for shape in case["shapes"]]
        matrices = costs
    elif case["form"] == "batched":
        costs = inputs.add(_cost_values(case, gen, (case["batch"], *case["shapes"][0])), case["layout"], dtype)
        matrices = list(costs)
    else:
        costs = inputs.add(_cost_values(case, gen, case["shapes"][0]), case["layout"], dtype)
        matrices = [costs]
    optima = [_scipy_solution(c, maximize) for c in matrices]
    feasible = all(o is not None for o in optima)
    with cpu_kernels(case["simd"]):
        if not feasible:
            with pytest.raises(ValueError, match="invalid numeric entries|infeasible"):
                pyvision_ops.linear_sum_assignment(costs, maximize=maximize)
            inputs.check_unchanged()
            return
        result = pyvision_ops.linear_sum_assignment(costs, maximize=maximize)
    inputs.check_unchanged()
    if case["form"] == "list":
        assert isinstance(result, list) and len(result) == len(matrices)
        pairs = result
    elif case["form"] == "batched":
        rows, cols = result
        k = min(costs.shape[1], costs.shape[2])
        assert tuple(rows.shape) == (costs.shape[0], k) and tuple(cols.shape) == (costs.shape[0], k)
        pairs = list(zip(rows, cols))
    else:
        pairs = [result]
    for i, (matrix, (rows, cols), optimum) in enumerate(zip(matrices, pairs, optima)):
        _check_assignment(matrix, rows, cols, optimum, maximize, dtype, f"cost {i} {tuple(matrix.shape)}")


# --------------------------------------------------------------------------------------------
# scaled_dot_product_attention
# --------------------------------------------------------------------------------------------

MASK_FORMS_4D = ["BHLS", "LS", "B1LS", "1HLS", "S", "B11S", "B1L1", "HLS"]
MASK_FORMS_3D = ["BLS", "LS", "S"]


@st.composite
def attention_cases(draw):
    three_d = draw(st.integers(0, 4)) == 0
    hkv = 1 if three_d else draw(st.integers(1, 3))
    group = 1 if three_d else draw(st.integers(1, 3))
    mask = draw(st.sampled_from(["none", "none", "bool", "float", "float_inf"]))
    causal = mask == "none" and draw(st.booleans())
    forms = MASK_FORMS_3D if three_d else MASK_FORMS_4D
    return dict(
        seed=draw(SEEDS),
        three_d=three_d,
        b=draw(st.integers(0, 2)) if draw(st.integers(0, 9)) == 0 else draw(st.integers(1, 2)),
        hkv=hkv, hq=hkv * group,
        gqa=group > 1 or draw(st.booleans()) and not three_d,
        l=draw(st.integers(0, 12)) if draw(st.integers(0, 9)) == 0 else draw(st.integers(1, 12)),
        s=draw(st.integers(0, 12)) if draw(st.integers(0, 9)) == 0 else draw(st.integers(1, 12)),
        e=draw(st.sampled_from([1, 2, 3, 4, 8, 16, 24, 32, 64])),
        ev=draw(st.sampled_from([1, 3, 4, 8, 16, 40])),
        mask=mask, mask_form=draw(st.sampled_from(forms)),
        causal=causal,
        scale=draw(st.one_of(st.none(), st.sampled_from([0.0, -0.5, 0.3, 1.7]))),
        dropout=draw(st.sampled_from([0.0, 0.0, 0.0, 0.25, 0.6, 1.0])),
        magnitude=draw(st.sampled_from([1.0, 1.0, 3.0, 0.1])),
        dtype=draw(st.sampled_from(FLOATS)),
        layouts=draw(st.tuples(*[st.sampled_from(LAYOUTS)] * 4)),
        simd=draw(st.booleans()),
    )


def _attention_mask(case, gen: torch.Generator) -> Optional[torch.Tensor]:
    if case["mask"] == "none":
        return None
    b, h, l, s = case["b"], case["hq"], case["l"], case["s"]
    shape = {"BHLS": (b, h, l, s), "BLS": (b, l, s), "LS": (l, s), "B1LS": (b, 1, l, s), "1HLS": (1, h, l, s),
             "S": (s,), "B11S": (b, 1, 1, s), "B1L1": (b, 1, l, 1), "HLS": (h, l, s)}[case["mask_form"]]
    if case["mask"] == "bool":
        return torch.rand(shape, generator=gen) < 0.7
    mask = randn(gen, *shape)
    if case["mask"] == "float_inf":
        mask[torch.rand(shape, generator=gen) < 0.3] = float("-inf")
    return mask


@fuzz_settings(1.6)
@given(case=attention_cases())
def test_fuzz_scaled_dot_product_attention(case):
    EXAMPLES["scaled_dot_product_attention"] += 1
    gen = generator(case["seed"])
    inputs = Inputs(gen)
    dtype = case["dtype"]
    head = () if case["three_d"] else (case["hq"],)
    kv_head = () if case["three_d"] else (case["hkv"],)
    b, l, s, e, ev, mag = case["b"], case["l"], case["s"], case["e"], case["ev"], case["magnitude"]
    q = inputs.add(randn(gen, b, *head, l, e, scale=mag), case["layouts"][0], dtype, grad=True)
    k = inputs.add(randn(gen, b, *kv_head, s, e, scale=mag), case["layouts"][1], dtype, grad=True)
    v = inputs.add(randn(gen, b, *kv_head, s, ev), case["layouts"][2], dtype, grad=True)
    mask_values = _attention_mask(case, gen)
    mask = None
    if mask_values is not None:
        mask_layout = case["layouts"][3] if mask_values.dim() >= 2 else "contiguous"
        mask = inputs.add(mask_values, mask_layout, None if mask_values.dtype == torch.bool else dtype)
    p, causal, scale = case["dropout"], case["causal"], case["scale"]
    keep = None
    with cpu_kernels(case["simd"]):
        if p > 0:
            # the public op draws its Philox seed from the default generator: draw the same one
            state = torch.get_rng_state()
            torch.manual_seed(case["seed"])
            philox_seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())
            torch.manual_seed(case["seed"])
            out = pyvision_ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal,
                                                            scale=scale, enable_gqa=case["gqa"])
            torch.set_rng_state(state)
            if b * l * s:
                keep = reference_dropout_keep(philox_seed, b, case["hq"], l, s, p)
            else:  # nothing to drop (the reference hash needs one key and one row)
                keep = torch.ones(b, case["hq"], l, s, dtype=torch.bool)
        else:
            out = pyvision_ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                                            enable_gqa=case["gqa"])
        g = upstream(gen, out.shape, out.dtype)
        grads = grads_of(out, [q, k, v], g)
    inputs.check_unchanged()
    assert out.dtype == dtype and tuple(out.shape) == (b, *head, l, ev)
    leaves = [f64_leaf(t) for t in (q, k, v)]
    expected, _ = reference_attention(*leaves, mask, p, causal, scale, case["hq"] != case["hkv"], keep)
    assert_close_scaled(out, expected, ATTN_TOL[dtype], "out")
    ref_grads = torch.autograd.grad(expected, leaves, g.double(), allow_unused=True)
    ref_grads = [torch.zeros_like(leaf) if r is None else r for r, leaf in zip(ref_grads, leaves)]
    floor = max((float(r.abs().max()) if r.numel() else 0.0) for r in ref_grads)
    for name, got, exp in zip("qkv", grads, ref_grads):
        got = torch.zeros(exp.shape, dtype=dtype) if got is None else got
        assert got.dtype == dtype
        assert_close_scaled(got, exp, ATTN_GRAD_TOL[dtype], f"d{name}", floor)


# --------------------------------------------------------------------------------------------
# coverage of the public API
# --------------------------------------------------------------------------------------------

#: every public op of pyvision_ops.ops and the test that fuzzes it (TopK is pairwise_topk's result type)
FUZZED = {
    "max_pool2d_with_indices": test_fuzz_max_pool2d_with_indices,
    "max_unpool1d": test_fuzz_max_unpool1d,
    "max_unpool2d": test_fuzz_max_unpool2d,
    "max_unpool3d": test_fuzz_max_unpool3d,
    "gram_matrix": test_fuzz_gram_matrix,
    "style_loss": test_fuzz_style_loss,
    "perceptual_loss": test_fuzz_perceptual_loss,
    "pairwise_distance": test_fuzz_pairwise_distance,
    "pairwise_topk": test_fuzz_pairwise_topk,
    "TopK": test_fuzz_pairwise_topk,
    "mine_triplets": test_fuzz_mine_triplets,
    "batch_hard_triplet_loss": test_fuzz_batch_hard_triplet_loss,
    "triplet_margin_loss": test_fuzz_triplet_margin_loss,
    "contrastive_loss": test_fuzz_contrastive_loss,
    "class_distance_matrix": test_fuzz_class_distance_matrix,
    "gather_embeddings": test_fuzz_gather_embeddings,
    "linear_sum_assignment": test_fuzz_linear_sum_assignment,
    "scaled_dot_product_attention": test_fuzz_scaled_dot_product_attention,
}


def test_every_public_op_is_fuzzed():
    assert sorted(FUZZED) == sorted(public_ops.__all__), (
        f"not fuzzed: {sorted(set(public_ops.__all__) - set(FUZZED))}; unknown: {sorted(set(FUZZED) - set(public_ops.__all__))}"
    )
