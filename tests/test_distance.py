"""Op family `distance`: pairwise_distance, pairwise_topk, mine_triplets, batch_hard_triplet_loss,
triplet_margin_loss, contrastive_loss, class_distance_matrix (and gather_embeddings).

Oracles (tests/references/distance.py): float64 distances from explicit differences (checked here
against NumPy, SciPy and torch.cdist's direct path); k-nearest by a stable float64 sort; mining by
a brute force over every (anchor, positive, negative) written from the spec's definitions, plus a
NumPy port of TF-Addons' semi-hard negatives; torch.nn.TripletMarginLoss; the contrastive loss and
the class distance matrix by brute force. Gradients: gradcheck in float64 for every differentiable
op and metric, and autograd through the float64 references.

Tolerances (the contract): float32 sqeuclidean/euclidean within 1e-5 relative, element by element,
on any input (near-duplicate points at 1e3 and 5e5 included, where torch.cdist's matmul path
fails); self-distances exactly 0; cosine self-distance within 1e-6. Cosine and dot, which cancel,
are held to 1e-5 of their scale (1 for cosine, max |x| |y| for dot). float16/bfloat16 accumulate in
float32: a few roundings of the output format.

Mining is compared as exact tuples in the documented order: on float64 data against the float64
reference distances (no near ties at 1e-15), and on float32 or integer-valued data (many exact
ties) against the brute force on the op's own ``pairwise_distance`` output ("distances computed as
pairwise_distance would"), which fixes the tie rules. Each registered op also passes the shared
contract (tests/contract.py), and every CPU test runs on the vectorised and the portable kernels
(tests/conftest.py).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import pytest
import torch

import pyvision_ops
from conftest import DEVICES, ERRORS, assert_unchanged, expect_error, needs_cuda, poison_allocator
from contract import BadInput, EmptyCase, OpContract, Sample
from references.distance import (
    numpy_pairwise_distance,
    reference_batch_hard_triplet_loss,
    reference_class_distance_matrix,
    reference_contrastive_loss,
    reference_mine_triplets,
    reference_pairwise_distance,
    reference_pairwise_topk,
    reference_triplet_margin_loss,
    relative_error,
    tf_addons_semi_hard_negatives,
)

ops = torch.ops.pyvision_ops
METRICS = ["sqeuclidean", "euclidean", "cosine", "dot"]
LOSS_METRICS = ["sqeuclidean", "euclidean", "cosine"]  # distances (dot is a similarity)
STRATEGIES = ["batch_hard", "semi_hard", "semi_hard_window", "hard"]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HALF_DTYPES = [torch.float16, torch.bfloat16]
LABEL_DTYPES = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8]
REDUCTIONS = ["mean", "sum", "none"]

# Relative tolerance of a result in each dtype (float32: the contract's 1e-5; halves: the output
# rounding, 2^-11 and 2^-8, a few times over).
TOL = {torch.float64: 1e-11, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
# Per-metric margins for mining on unit-scale D=4 data: windows that catch some negatives, not all.
MARGINS = {"sqeuclidean": 2.0, "euclidean": 0.5, "cosine": 0.2, "dot": 1.0}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def shape_id(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def points(*shape: int, dtype=torch.float32, device="cpu", scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def distance_bounds(metric: str, dtype: torch.dtype, x: torch.Tensor, y: Optional[torch.Tensor]) -> Tuple[float, float]:
    """(rtol, atol) for results of ``metric`` in ``dtype``: sqeuclidean/euclidean relative per
    element (the contract); cosine absolute (values in [0, 2]); dot relative to max |x| |y|."""
    tol = TOL[dtype]
    if metric in ("sqeuclidean", "euclidean"):
        # float16's subnormals (below 6e-5) have an absolute, not relative, spacing
        return tol, (0.0 if dtype in (torch.float32, torch.float64) else 1e-6)
    if metric == "cosine":
        return tol, tol
    yy = x if y is None else y
    nx = float(torch.linalg.vector_norm(x.detach().double().cpu(), dim=-1).max()) if x.numel() else 0.0
    ny = float(torch.linalg.vector_norm(yy.detach().double().cpu(), dim=-1).max()) if yy.numel() else 0.0
    return tol, tol * nx * ny


def assert_within(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str = "") -> None:
    """|actual - expected| <= rtol |expected| + atol everywhere (float64 comparison, no NaN)."""
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().cpu().to(torch.float64)
    e = expected.detach().cpu().to(torch.float64)
    assert bool(torch.isfinite(a).all()), f"{what}: non-finite values {a[~torch.isfinite(a)][:5].tolist()}"
    if a.numel() == 0:
        return
    err = (a - e).abs()
    bound = rtol * e.abs() + atol
    bad = err > bound
    if bool(bad.any()):
        worst = int(torch.argmax(torch.where(bad, err - bound, torch.zeros_like(err))))
        index = np.unravel_index(worst, tuple(a.shape))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} entries off; worst at {tuple(int(i) for i in index)}: "
            f"got {a.flatten()[worst].item()!r}, expected {e.flatten()[worst].item()!r} (rtol {rtol}, atol {atol})"
        )


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    """Within tol * (|expected| + max |expected|): for sums that may cancel (gradients, losses)."""
    e = expected.detach().cpu().to(torch.float64)
    scale = float(e.abs().max()) if e.numel() else 0.0
    assert_within(actual, e, tol, tol * scale, what)


def check_distances(got: torch.Tensor, x: torch.Tensor, y: Optional[torch.Tensor], metric: str, what: str = "") -> torch.Tensor:
    expected = reference_pairwise_distance(x, y, metric)
    assert got.dtype == x.dtype and got.device == x.device, f"{what}: {got.dtype} on {got.device}"
    rtol, atol = distance_bounds(metric, x.dtype, x, y)
    assert_within(got, expected, rtol, atol, what or metric)
    return expected


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t``'s values in ``layout``: "contiguous"; "transposed" (rows fastest in memory: the last
    two dims swapped); "sliced" (every other row, columns offset by one, of a NaN-filled buffer);
    "expanded" (row 0 repeated with stride 0: every row equal)."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "transposed":
        out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "sliced":
        big = torch.full((*t.shape[:-2], 2 * t.shape[-2], t.shape[-1] + 3), float("nan"), dtype=t.dtype, device=t.device)
        out = big[..., ::2, 1 : 1 + t.shape[-1]]
        out.copy_(t)
    elif layout == "expanded":
        out = t[..., :1, :].expand(t.shape)
    else:
        raise ValueError(layout)
    if t.shape[-1] > 1 and t.shape[-2] > 1:
        assert not out.is_contiguous(), layout
    return out


def make_labels(kind: str, n: int, device="cpu", dtype=torch.int64) -> torch.Tensor:
    """Labels of ``kind``: "classes" (about n/4 classes of random sizes), "singletons" (pairs and
    singleton classes mixed), "one_class", "all_distinct", "two_classes"; arbitrary values (not
    0..P-1: negative and large ones too, where the dtype allows)."""
    if kind == "classes":
        raw = torch.randint(0, max(1, n // 4), (n,))
    elif kind == "singletons":
        raw = torch.tensor([i // 2 if i % 3 else 100 + i for i in range(n)])  # some pairs, some alone
    elif kind == "one_class":
        raw = torch.zeros(n, dtype=torch.int64)
    elif kind == "all_distinct":
        raw = torch.randperm(n)
    elif kind == "two_classes":
        raw = torch.arange(n) % 2
    else:
        raise ValueError(kind)
    if dtype in (torch.int64, torch.int32, torch.int16):
        raw = raw * 7 - 3  # arbitrary label values, negative ones included
    elif dtype == torch.int8:
        raw = raw % 120 - 60
    else:
        raw = raw % 250
    return raw.to(device=device, dtype=dtype)


def as_triplets(result) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
    """The op's (anchor, positive, negative), checked for form, as Python tuples."""
    assert isinstance(result, tuple) and len(result) == 3, f"mine_triplets returned {type(result).__name__}"
    a, p, n = result
    for t in (a, p, n):
        assert isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.dim() == 1, f"{t.dtype} {tuple(t.shape)}"
        assert not t.requires_grad
    assert a.shape == p.shape == n.shape, (a.shape, p.shape, n.shape)
    assert a.device == p.device == n.device
    return tuple(a.tolist()), tuple(p.tolist()), tuple(n.tolist())


def assert_same_triplets(got, expected, what: str = "") -> None:
    if got == expected:
        return
    g, e = set(zip(*got)), set(zip(*expected))
    if g == e:
        raise AssertionError(f"{what}: the right {len(g)} triplets in the wrong order:\n got {list(zip(*got))[:12]}")
    raise AssertionError(
        f"{what}: {len(g)} triplets, expected {len(e)}; missing {sorted(e - g)[:8]}, unexpected {sorted(g - e)[:8]}"
    )


def own_distances(embeddings: torch.Tensor, metric: str) -> torch.Tensor:
    """The distance matrix the mining must compare: pairwise_distance of the embeddings."""
    return pyvision_ops.pairwise_distance(embeddings.detach(), None, metric=metric)


# --------------------------------------------------------------------------------------------
# API surface
# --------------------------------------------------------------------------------------------

PUBLIC = [
    "pairwise_distance",
    "pairwise_topk",
    "mine_triplets",
    "batch_hard_triplet_loss",
    "triplet_margin_loss",
    "contrastive_loss",
    "class_distance_matrix",
    "gather_embeddings",
]


def test_functions_are_exported_at_top_level():
    from pyvision_ops.ops import distance as distance_ops

    for name in PUBLIC:
        fn = getattr(distance_ops, name)
        assert getattr(pyvision_ops, name) is fn, name
        assert getattr(pyvision_ops.ops, name) is fn, name
        assert name in distance_ops.__all__, name
    for name in ("pairwise_distance", "pairwise_topk"):
        assert hasattr(ops, name), f"torch.ops.pyvision_ops.{name} is not registered"


def test_references_agree_with_numpy_scipy_and_cdist():
    """The oracles themselves: the torch float64 reference equals NumPy's, SciPy's cdist and
    torch.cdist's direct (non-matmul) path."""
    from scipy.spatial.distance import cdist as scipy_cdist

    x, y = points(9, 6, dtype=torch.float64), points(31, 6, dtype=torch.float64)
    for metric in METRICS:
        ref = reference_pairwise_distance(x, y, metric)
        np.testing.assert_allclose(ref.numpy(), numpy_pairwise_distance(x.numpy(), y.numpy(), metric), rtol=1e-12, atol=1e-12)
        if metric != "dot":
            np.testing.assert_allclose(ref.numpy(), scipy_cdist(x.numpy(), y.numpy(), metric), rtol=1e-12, atol=1e-12)
    direct = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    torch.testing.assert_close(reference_pairwise_distance(x, y, "euclidean"), direct, rtol=1e-13, atol=0)
    # the TF-Addons port and the brute force agree on the semi-hard negative's distance
    labels = make_labels("classes", 31)
    d = reference_pairwise_distance(y, None, "euclidean")
    tf = tf_addons_semi_hard_negatives(d, labels)
    a, p, n = reference_mine_triplets(d, labels, "semi_hard")
    assert a, "no semi-hard triplets to compare"
    np.testing.assert_allclose(d.numpy()[list(a), list(n)], tf[list(a), list(p)], rtol=1e-12)  # TF's masking rounds


# --------------------------------------------------------------------------------------------
# pairwise_distance: values
# --------------------------------------------------------------------------------------------

# N, M (1, 7, 33, 129, 257: no multiple of any tile) and D (1, 3, 17, 64, 130, 257: partial
# vectors and chunks).
PAIRWISE_SHAPES = [(1, 1, 1), (7, 5, 3), (33, 7, 17), (1, 129, 64), (129, 33, 130), (257, 257, 16), (4, 9, 257)]
# every shape in float32 and float64; the half types on a few (they share the float32 kernels)
PAIRWISE_CASES = [(shape, dtype) for shape in PAIRWISE_SHAPES for dtype in (torch.float32, torch.float64)] + [
    (shape, dtype) for shape in [(7, 5, 3), (129, 33, 130), (4, 9, 257)] for dtype in HALF_DTYPES
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape,dtype", PAIRWISE_CASES, ids=lambda v: shape_id(v) if isinstance(v, tuple) else str(v))
def test_pairwise_distance_matches_reference(shape, dtype, metric, device):
    n, m, d = shape
    x = points(n, d, dtype=dtype, device=device)
    y = points(m, d, dtype=dtype, device=device)
    bx, by = x.clone(), y.clone()
    for other in (y, None):
        columns = m if other is not None else n
        poison_allocator((n, columns), dtype, device)
        got = pyvision_ops.pairwise_distance(x, other, metric=metric)
        assert tuple(got.shape) == (n, columns)
        check_distances(got, x, other, metric, "y=None" if other is None else "x, y")
    assert_unchanged(bx, x)
    assert_unchanged(by, y)


def test_pairwise_distance_default_metric_is_sqeuclidean():
    x, y = points(5, 3, dtype=torch.float64), points(4, 3, dtype=torch.float64)
    torch.testing.assert_close(pyvision_ops.pairwise_distance(x, y), reference_pairwise_distance(x, y, "sqeuclidean"), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pyvision_ops.pairwise_distance(x), reference_pairwise_distance(x, None, "sqeuclidean"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch", [(2,), (2, 3), (1, 1)], ids=shape_id)
def test_pairwise_distance_batched(batch, dtype, device):
    for metric in METRICS:
        check_batched(batch, metric, dtype, device)


def check_batched(batch, metric, dtype, device):
    x = points(*batch, 9, 5, dtype=dtype, device=device)
    y = points(*batch, 33, 5, dtype=dtype, device=device)
    got = pyvision_ops.pairwise_distance(x, y, metric=metric)
    assert tuple(got.shape) == (*batch, 9, 33)
    check_distances(got, x, y, metric)
    got = pyvision_ops.pairwise_distance(x, metric=metric)
    assert tuple(got.shape) == (*batch, 9, 9)
    check_distances(got, x, None, metric)
    # each batch item is its own problem (its own centre): item-wise calls agree
    flat_x, flat_y = x.reshape(-1, 9, 5), y.reshape(-1, 33, 5)
    rtol, atol = distance_bounds(metric, dtype, x, y)
    for i in range(flat_x.shape[0]):
        one = pyvision_ops.pairwise_distance(flat_x[i], flat_y[i], metric=metric)
        assert_within(one, reference_pairwise_distance(flat_x[i], flat_y[i], metric), rtol, atol, f"item {i}")


# (x layout, y layout): transposed, sliced out of a NaN buffer, stride-0 rows, in combinations.
LAYOUT_PAIRS = [
    ("transposed", "contiguous"),
    ("contiguous", "sliced"),
    ("sliced", "transposed"),
    ("expanded", "sliced"),
    ("transposed", "expanded"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("layouts", LAYOUT_PAIRS, ids="-".join)
def test_pairwise_distance_any_strides(layouts, dtype, device):
    x = with_layout(points(2, 35, 19, dtype=dtype, device=device), layouts[0])
    y = with_layout(points(2, 7, 19, dtype=dtype, device=device), layouts[1])
    bx, by = x.clone(), y.clone()
    for metric in METRICS:
        check_distances(pyvision_ops.pairwise_distance(x, y, metric=metric), x, y, metric, f"{metric} x, y")
        check_distances(pyvision_ops.pairwise_distance(x, metric=metric), x, None, metric, f"{metric} y=None")
        check_distances(pyvision_ops.pairwise_distance(x[0], y[1], metric=metric), x[0], y[1], metric, f"{metric} 2-D")
    assert_unchanged(bx, x)
    assert_unchanged(by, y)


# --------------------------------------------------------------------------------------------
# pairwise_distance: precision (the contract's accuracy claims)
# --------------------------------------------------------------------------------------------


def near_duplicate_points(n: int, m: int, d: int, scale: float, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """float32 clusters far from the origin: a centre at coordinate scale ``scale``, points offset
    by ~100 ulps of the coordinates (so their differences are exact in float32), a few exact
    duplicates inside x and between x and y."""
    centre = torch.randn(d, dtype=torch.float64) * scale
    step = scale * 2.0**-17
    x = (centre + torch.randn(n, d, dtype=torch.float64) * step).float()
    y = (centre + torch.randn(m, d, dtype=torch.float64) * step).float()
    x[5] = x[0]
    x[n - 1] = x[1]
    y[2] = x[3]
    y[m - 1] = x[n - 2]
    return x.to(device), y.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("scale", [1e3, 5e5], ids=["scale1e3", "scale5e5"])
@pytest.mark.parametrize("with_y", [True, False], ids=["x_y", "y_none"])
def test_float32_near_duplicates_far_from_origin(with_y, scale, metric, device):
    """Relative error <= 1e-5 on every entry (exact zeros for the duplicates), where torch.cdist
    in float32 (N, M > 25: its matmul path) is off by orders of magnitude."""
    x, y = near_duplicate_points(40, 33, 128, scale, device)
    other = y if with_y else None
    expected = reference_pairwise_distance(x, other, metric)
    assert float(expected.max()) < 1e-6 * scale**2 * 128  # near duplicates: tiny distances far out
    got = pyvision_ops.pairwise_distance(x, other, metric=metric)
    assert got.dtype == torch.float32
    error = relative_error(got, expected)
    assert error <= 1e-5, f"float32 relative error {error:.3g} > 1e-5 (inf: a zero distance not reproduced)"
    # the inputs do break the usual approach (so the test means something)
    cdist = torch.cdist(x, y if with_y else x)
    if metric == "sqeuclidean":
        cdist = cdist.square()
    assert relative_error(cdist, expected) > 1e-2, "torch.cdist is accurate on these inputs: the test is vacuous"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype,scale",
    [(torch.float32, 1.0), (torch.float32, 1e3), (torch.float32, 5e5), (torch.float64, 1.0), (torch.float64, 5e5),
     (torch.float16, 1.0), (torch.bfloat16, 1.0), (torch.bfloat16, 1e3)],
    ids=str,
)
@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
def test_self_distance_is_exactly_zero(metric, dtype, scale, device):
    """The diagonal is exactly 0.0 for y=None and for y a separate tensor with the same values
    (contiguous or not), batched or not; duplicated rows inside x are at exactly 0 too."""
    x = (torch.randn(2, 37, 128, dtype=torch.float64) * scale + scale).to(device=device, dtype=dtype)
    if dtype in (torch.float32, torch.float64):
        x[:, 9] = x[:, 4]
    for name, y in [("y=None", None), ("y=x.clone()", x.clone()), ("y transposed copy", with_layout(x.clone(), "transposed"))]:
        for xs, ys in [(x, y), (x[1], None if y is None else y[1])]:
            d = pyvision_ops.pairwise_distance(xs, ys, metric=metric)
            diagonal = d.diagonal(dim1=-2, dim2=-1)
            assert bool((diagonal == 0).all()), f"{name}: self-distances {diagonal[diagonal != 0][:5].tolist()} are not 0"
            if dtype in (torch.float32, torch.float64):
                assert bool((d[..., 4, 9] == 0).all()) and bool((d[..., 9, 4] == 0).all()), f"{name}: duplicate rows not at 0"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 5e5], ids=str)
def test_cosine_self_distance_within_1e_6(scale, dtype, device):
    x = points(2, 41, 128, dtype=dtype, device=device, scale=scale)
    x[0, 3] = x[0, 3] + scale * 100  # a row far from the others' directions
    for y in (None, x.clone()):
        d = pyvision_ops.pairwise_distance(x, y, metric="cosine")
        diagonal = d.diagonal(dim1=-2, dim2=-1).double().cpu()
        assert float(diagonal.abs().max()) <= 1e-6, f"cosine self-distance {float(diagonal.abs().max()):.3g}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cosine_zero_vector_is_at_distance_one(dtype, device):
    """cos uses max(|x|, 1e-8): a zero row has cosine distance 1 to everything, itself included."""
    x = points(5, 6, dtype=dtype, device=device)
    x[2] = 0
    y = points(4, 6, dtype=dtype, device=device)
    y[0] = 0
    d = pyvision_ops.pairwise_distance(x, y, metric="cosine").double().cpu()
    assert torch.equal(d[2], torch.ones(4, dtype=torch.float64))
    assert torch.equal(d[:, 0], torch.ones(5, dtype=torch.float64))
    d_self = pyvision_ops.pairwise_distance(x, metric="cosine").double().cpu()
    assert torch.equal(d_self[2], torch.ones(5, dtype=torch.float64)) and torch.equal(d_self[:, 2], torch.ones(5, dtype=torch.float64))
    # tiny (but nonzero) vectors below the clamp: 1 - x.y / 1e-16
    tiny = torch.full((1, 6), 1e-10, dtype=dtype, device=device)
    check_distances(pyvision_ops.pairwise_distance(tiny, y, metric="cosine"), tiny, y, "cosine")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", METRICS)
def test_nan_propagates_to_the_affected_entries(metric, device):
    x = points(6, 5, device=device)
    y = points(4, 5, device=device)
    x[2, 3] = float("nan")
    y[1, 0] = float("nan")
    d = pyvision_ops.pairwise_distance(x, y, metric=metric).cpu()
    affected = torch.zeros(6, 4, dtype=torch.bool)
    affected[2, :] = True
    affected[:, 1] = True
    assert bool(torch.isnan(d[affected]).all()), f"NaN lost: {d[affected].tolist()}"
    clean_x, clean_y = x[[0, 1, 3, 4, 5]], y[[0, 2, 3]]
    rtol, atol = distance_bounds(metric, torch.float32, clean_x, clean_y)
    assert_within(d[~affected].reshape(5, 3), reference_pairwise_distance(clean_x, clean_y, metric), rtol, atol)
    d_self = pyvision_ops.pairwise_distance(x, metric=metric).cpu()
    assert bool(torch.isnan(d_self[2]).all()) and bool(torch.isnan(d_self[:, 2]).all()), "NaN row lost (as torch.cdist)"
    keep = [0, 1, 3, 4, 5]
    assert bool(torch.isfinite(d_self[keep][:, keep]).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", METRICS)
def test_empty_inputs(metric, device):
    for xs, ys, out in [
        ((0, 4), (3, 4), (0, 3)),
        ((3, 4), (0, 4), (3, 0)),
        ((0, 4), None, (0, 0)),
        ((0, 5, 4), (0, 3, 4), (0, 5, 3)),
        ((2, 0, 4), None, (2, 0, 0)),
        ((2, 3, 0, 4), (2, 3, 6, 4), (2, 3, 0, 6)),
    ]:
        x = torch.randn(xs, device=device, requires_grad=True)
        y = None if ys is None else torch.randn(ys, device=device, requires_grad=True)
        d = pyvision_ops.pairwise_distance(x, y, metric=metric)
        assert tuple(d.shape) == out and d.dtype == x.dtype and d.device == x.device
        d.sum().backward()
        assert x.grad is None or tuple(x.grad.shape) == xs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", METRICS)
def test_no_features_gives_zeros_or_ones(metric, device):
    """D == 0: every squared distance and dot product is an empty sum, 0; cosine is 1 (the zero
    vector's distance)."""
    x, y = torch.randn(3, 0, device=device), torch.randn(5, 0, device=device)
    value = 1.0 if metric == "cosine" else 0.0
    poison_allocator((3, 5), torch.float32, device)
    d = pyvision_ops.pairwise_distance(x, y, metric=metric)
    assert torch.equal(d.cpu(), torch.full((3, 5), value))
    assert torch.equal(pyvision_ops.pairwise_distance(x, metric=metric).cpu(), torch.full((3, 3), value))


# --------------------------------------------------------------------------------------------
# pairwise_distance: gradients
# --------------------------------------------------------------------------------------------

GRAD_CASES = {
    "x_y": ((4, 5), (3, 5)),
    "y_none": ((4, 5), None),
    "batched_x_y": ((2, 3, 4), (2, 5, 4)),
    "batched_y_none": ((2, 1, 3, 4), None),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_pairwise_distance_gradcheck(case, metric, device):
    xs, ys = GRAD_CASES[case]
    x = torch.randn(xs, dtype=torch.float64, device=device, requires_grad=True)
    if ys is None:
        assert torch.autograd.gradcheck(lambda t: pyvision_ops.pairwise_distance(t, None, metric=metric), (x,))
    else:
        y = torch.randn(ys, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: pyvision_ops.pairwise_distance(a, b, metric=metric), (x, y))


BACKWARD_CASES = [((33, 7, 17), torch.float32), ((33, 7, 17), torch.float64), ((7, 129, 5), torch.float32),
                  ((7, 129, 5), torch.float64), ((33, 7, 17), torch.float16), ((7, 129, 5), torch.bfloat16)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape,dtype", BACKWARD_CASES, ids=lambda v: shape_id(v) if isinstance(v, tuple) else str(v))
def test_pairwise_distance_backward_matches_reference(shape, dtype, metric, device):
    for with_y in (True, False):
        check_backward(shape, with_y, metric, dtype, device)


def check_backward(shape, with_y, metric, dtype, device):
    n, m, d = shape
    x = points(n, d, dtype=dtype, device=device).requires_grad_(True)
    y = points(m, d, dtype=dtype, device=device).requires_grad_(True) if with_y else None
    out = pyvision_ops.pairwise_distance(x, y, metric=metric)
    grad = torch.randn(out.shape, dtype=torch.float64)
    poison_allocator(x.shape, dtype, device)
    out.backward(grad.to(device=device, dtype=dtype))
    x64 = x.detach().double().cpu().requires_grad_(True)
    y64 = y.detach().double().cpu().requires_grad_(True) if with_y else None
    reference_pairwise_distance(x64, y64, metric).backward(grad.to(dtype).double())
    assert x.grad.dtype == dtype and x.grad.shape == x.shape
    assert_close_scaled(x.grad, x64.grad, GRAD_TOL[dtype], "grad x")
    if with_y:
        assert_close_scaled(y.grad, y64.grad, GRAD_TOL[dtype], "grad y")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("with_y", ["y_none", "y_clone", "y_other"])
def test_euclidean_gradient_at_distance_zero_is_zero(with_y, dtype, device):
    """sqrt has no derivative at 0: the contract fixes it to 0 (not NaN, not inf)."""
    v = points(1, 6, dtype=dtype, device=device)
    x = v.expand(4, 6).clone().requires_grad_(True)  # every pair at distance 0
    y = None if with_y == "y_none" else v.expand(3, 6).clone().requires_grad_(True)
    d = pyvision_ops.pairwise_distance(x, y, metric="euclidean")
    assert bool((d == 0).all())
    d.sum().backward()
    assert torch.equal(x.grad.cpu(), torch.zeros(4, 6, dtype=dtype)), f"grad at distance 0: {x.grad}"
    if y is not None:
        assert torch.equal(y.grad.cpu(), torch.zeros(3, 6, dtype=dtype))
    # duplicates among distinct points: the zero-distance pairs add nothing, the others their share
    w = points(3, 6, dtype=dtype, device=device)
    x = torch.cat([v, v, w]).requires_grad_(True)
    y = None if with_y == "y_none" else (x.detach().clone() if with_y == "y_clone" else torch.cat([w[:1], v])).requires_grad_(True)
    out = pyvision_ops.pairwise_distance(x, y, metric="euclidean")
    grad = torch.randn(out.shape, dtype=torch.float64)
    out.backward(grad.to(device=device, dtype=dtype))
    assert bool(torch.isfinite(x.grad).all()), f"non-finite gradient {x.grad}"
    x64 = x.detach().double().cpu().requires_grad_(True)
    y64 = None if y is None else y.detach().double().cpu().requires_grad_(True)
    reference_pairwise_distance(x64, y64, "euclidean").backward(grad)
    assert_close_scaled(x.grad, x64.grad, GRAD_TOL[dtype], "grad x")
    if y is not None:
        assert bool(torch.isfinite(y.grad).all())
        assert_close_scaled(y.grad, y64.grad, GRAD_TOL[dtype], "grad y")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distance_backward_of_strided_inputs(metric, device):
    x = with_layout(points(2, 9, 5, device=device), "transposed").requires_grad_(True)
    y = with_layout(points(2, 6, 5, device=device), "sliced").requires_grad_(True)
    out = pyvision_ops.pairwise_distance(x, y, metric=metric)
    grad = torch.randn(out.shape, dtype=torch.float64)
    out.backward(grad.float().to(device))
    x64, y64 = (t.detach().double().cpu().requires_grad_(True) for t in (x, y))
    reference_pairwise_distance(x64, y64, metric).backward(grad.float().double())
    assert_close_scaled(x.grad, x64.grad, GRAD_TOL[torch.float32])
    assert_close_scaled(y.grad, y64.grad, GRAD_TOL[torch.float32])


# --------------------------------------------------------------------------------------------
# pairwise_distance: bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_pairwise_distance_rejects_bad_input(device):
    x = torch.randn(4, 5, device=device)
    cases = [
        ("D mismatch", (x, torch.randn(3, 6, device=device)), r"\by\b|\bD\b"),
        ("1-D x", (torch.randn(5, device=device), None), r"\bx\b"),
        ("0-D x", (torch.randn((), device=device), None), r"\bx\b"),
        ("y of other rank", (x, torch.randn(1, 3, 5, device=device)), r"\by\b"),
        ("batch mismatch", (torch.randn(2, 4, 5, device=device), torch.randn(3, 3, 5, device=device)), r"\by\b|batch"),
        ("no broadcasting", (torch.randn(2, 4, 5, device=device), torch.randn(1, 3, 5, device=device)), r"\by\b|batch"),
        ("dtype mismatch", (x, torch.randn(3, 5, device=device, dtype=torch.float64)), r"\by\b|dtype"),
        ("integer x", (torch.randint(0, 3, (4, 5), device=device), None), r"\bx\b"),
        ("integer y", (x, torch.randint(0, 3, (3, 5), device=device)), r"\by\b"),
        ("bool x", (torch.ones(4, 5, dtype=torch.bool, device=device), None), r"\bx\b"),
    ]
    for name, (a, b), match in cases:
        tensors = [t for t in (a, b) if t is not None]
        expect_error(lambda: pyvision_ops.pairwise_distance(a, b, metric="euclidean"), tensors, match)
    for metric in ("manhattan", "Euclidean", "", "cos"):
        with pytest.raises(ValueError, match="metric"):
            pyvision_ops.pairwise_distance(x, None, metric=metric)


# --------------------------------------------------------------------------------------------
# pairwise_topk
# --------------------------------------------------------------------------------------------


def separated_queries(n: int, y: torch.Tensor, metric: str, gap: float, dtype) -> torch.Tensor:
    """Queries x (n, D) whose float64 distances to y differ pairwise by more than ``gap`` times the
    row's largest |distance| (no near ties), drawn row by row until they do."""
    rows = []
    for _ in range(n):
        for attempt in range(200):
            q = points(1, y.shape[-1], dtype=dtype)
            d = reference_pairwise_distance(q, y.cpu(), metric)[0]
            values = torch.sort(d).values
            scale = float(values.abs().max()) or 1.0
            if values.numel() < 2 or float((values[1:] - values[:-1]).min()) > gap * scale:
                rows.append(q)
                break
        else:
            raise AssertionError(f"no separated query after 200 draws (M = {y.shape[0]}, gap {gap})")
    return torch.cat(rows).to(y.device)


def check_topk(result, x, y, k: int, metric: str, largest: bool, exact_gap: Optional[float] = None) -> None:
    """The op's (values, indices) against the float64 brute force: sorted, each value the distance
    of its index, the k best values (up to ties); indices equal to the reference's on every row
    whose k+1 best reference values are separated by more than ``exact_gap`` of the row's scale."""
    values, indices = result
    assert result.values is values and result.indices is indices  # a NamedTuple
    batch = tuple(x.shape[:-2])
    n = x.shape[-2]
    assert tuple(values.shape) == (*batch, n, k) and tuple(indices.shape) == (*batch, n, k)
    assert values.dtype == x.dtype and indices.dtype == torch.int64
    assert values.device == x.device and indices.device == x.device
    ref = reference_pairwise_distance(x, y, metric)
    ref_values, ref_indices = reference_pairwise_topk(x, y, k, metric, largest)
    idx = indices.cpu()
    m = y.shape[-2]
    assert bool(((idx >= 0) & (idx < m)).all()), "index out of range"
    if k > 1:
        assert bool((torch.sort(idx, -1).values[..., 1:] != torch.sort(idx, -1).values[..., :-1]).all()), "repeated index"
    v = values.detach().double().cpu()
    sorted_ok = (v[..., :-1] >= v[..., 1:]) if largest else (v[..., :-1] <= v[..., 1:])
    assert bool(sorted_ok.all()), "values not sorted"
    rtol, atol = distance_bounds(metric, x.dtype, x, y)
    assert_within(values, torch.gather(ref, -1, idx), rtol, atol, "value vs its index's distance")
    assert_within(values, ref_values, rtol, atol, "the k best values")
    if exact_gap is None:
        return
    full = torch.sort(ref, -1, descending=largest).values[..., : min(k + 1, m)]
    scale = ref.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    gaps = (full[..., 1:] - full[..., :-1]).abs() / scale
    separated = (gaps > exact_gap).all(-1) if gaps.shape[-1] else torch.ones(full.shape[:-1], dtype=torch.bool)
    if exact_gap < 1e-6:  # float64: (almost) every row is separated
        assert float(separated.double().mean()) > 0.5, "too few separated rows: the exact check is vacuous"
    same = (idx == ref_indices).all(-1)
    bad = separated & ~same
    assert not bool(bad.any()), (
        f"{int(bad.sum())} well-separated rows pick other indices; first: got {idx[bad][0].tolist()}, "
        f"expected {ref_indices[bad][0].tolist()}"
    )


TOPK_MODES = [("sqeuclidean", False), ("euclidean", False), ("cosine", False), ("dot", True), ("dot", False), ("sqeuclidean", True)]
TOPK_SHAPES = [(1, 1, 3, 1), (7, 33, 5, 1), (7, 33, 5, 33), (33, 7, 17, 4), (5, 129, 8, 17), (3, 257, 4, 257), (2, 300, 65, 7)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", TOPK_MODES, ids=lambda m: f"{m[0]}-{'largest' if m[1] else 'smallest'}")
@pytest.mark.parametrize("shape", TOPK_SHAPES, ids=shape_id)
def test_pairwise_topk_matches_reference(shape, mode, device):
    n, m, d, k = shape
    metric, largest = mode
    for dtype in (torch.float32, torch.float64):
        x, y = points(n, d, dtype=dtype, device=device), points(m, d, dtype=dtype, device=device)
        bx, by = x.clone(), y.clone()
        result = pyvision_ops.pairwise_topk(x, y, k, metric=metric, largest=largest)
        check_topk(result, x, y, k, metric, largest, exact_gap=20 * TOL[dtype])
        assert_unchanged(bx, x)
        assert_unchanged(by, y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", TOPK_MODES, ids=lambda m: f"{m[0]}-{'largest' if m[1] else 'smallest'}")
def test_pairwise_topk_equals_brute_force_without_near_ties(mode, device):
    """float32 queries drawn so that no two distances of a row are within 1e-3 of the row's
    scale: every index, in order, equals the float64 brute force (k=1 and k=M included)."""
    metric, largest = mode
    y = points(33, 6, device=device)
    x = separated_queries(11, y, metric, 1e-3, torch.float32)
    for k in (1, 5, 33):
        check_separated_topk(x, y, k, metric, largest)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", TOPK_MODES, ids=lambda m: f"{m[0]}-{'largest' if m[1] else 'smallest'}")
def test_pairwise_topk_k1_agrees_with_the_candidate_buffer(mode, device):
    """k = 1 (the k-means assignment step) must pick what k = 2 puts first, on exact ties
    (duplicate rows: the smaller index), NaN rows of y (never chosen while a number is there) and
    a NaN query (every key NaN: index 0)."""
    metric, largest = mode
    y = points(300, 5, device=device)
    y[7] = y[3]
    y[260] = y[3]
    y[20] = float("nan")
    x = torch.cat([y[[3, 7, 0, 260, 299]], points(40, 5, device=device), y[20:21]])
    one = pyvision_ops.pairwise_topk(x, y, 1, metric=metric, largest=largest)
    two = pyvision_ops.pairwise_topk(x, y, 2, metric=metric, largest=largest)
    assert torch.equal(one.indices, two.indices[:, :1])
    assert torch.allclose(one.values, two.values[:, :1], rtol=0, atol=0, equal_nan=True)
    assert int(one.indices[-1, 0]) == 0 and bool(torch.isnan(one.values[-1, 0]))
    if metric in ("sqeuclidean", "euclidean") and not largest:
        assert one.indices[:4, 0].tolist() == [3, 3, 0, 3] and bool((one.values[:4] == 0).all())


def check_separated_topk(x, y, k, metric, largest):
    result = pyvision_ops.pairwise_topk(x, y, k, metric=metric, largest=largest)
    ref_values, ref_indices = reference_pairwise_topk(x, y, k, metric, largest)
    assert torch.equal(result.indices.cpu(), ref_indices), f"indices differ:\n{result.indices}\n{ref_indices}"
    rtol, atol = distance_bounds(metric, torch.float32, x, y)
    assert_within(result.values, ref_values, rtol, atol)
    # the same as torch.topk of the full matrix (the documented equivalence)
    full = pyvision_ops.pairwise_distance(x, y, metric=metric)
    top = torch.topk(full, k, dim=-1, largest=largest, sorted=True)
    assert torch.equal(top.indices.cpu(), result.indices.cpu())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", [("sqeuclidean", False), ("dot", True), ("cosine", False)], ids=lambda m: m[0])
def test_pairwise_topk_batched_and_strided(mode, dtype, device):
    metric, largest = mode
    for layout_x, layout_y in [("contiguous", "contiguous"), ("transposed", "sliced"), ("sliced", "transposed")]:
        x = with_layout(points(2, 3, 9, 5, dtype=dtype, device=device), layout_x)
        y = with_layout(points(2, 3, 40, 5, dtype=dtype, device=device), layout_y)
        gap = None if dtype in HALF_DTYPES else 20 * TOL[dtype]
        check_topk(pyvision_ops.pairwise_topk(x, y, 6, metric=metric, largest=largest), x, y, 6, metric, largest, gap)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", TOPK_MODES, ids=lambda m: f"{m[0]}-{'largest' if m[1] else 'smallest'}")
def test_pairwise_topk_gradcheck(mode, device):
    metric, largest = mode
    for xs, ys, k in [((4, 5), (6, 5), 3), ((3, 4), (5, 4), 5), ((2, 3, 4), (2, 5, 4), 2)]:  # 2-D, k = M, batched
        x = torch.randn(xs, dtype=torch.float64, device=device, requires_grad=True)
        y = torch.randn(ys, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: pyvision_ops.pairwise_topk(a, b, k, metric=metric, largest=largest).values, (x, y))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_topk_backward_matches_reference(metric, device):
    y = points(40, 7, device=device).requires_grad_(True)
    x = separated_queries(9, y.detach(), metric, 1e-3, torch.float32).requires_grad_(True)
    largest = metric == "dot"
    values = pyvision_ops.pairwise_topk(x, y, 8, metric=metric, largest=largest).values
    grad = torch.randn(values.shape, dtype=torch.float64)
    values.backward(grad.float().to(device))
    x64, y64 = (t.detach().double().cpu().requires_grad_(True) for t in (x, y))
    reference_pairwise_topk(x64, y64, 8, metric, largest)[0].backward(grad.float().double())
    assert_close_scaled(x.grad, x64.grad, GRAD_TOL[torch.float32], "grad x")
    assert_close_scaled(y.grad, y64.grad, GRAD_TOL[torch.float32], "grad y")


@pytest.mark.parametrize("device", DEVICES)
def test_pairwise_topk_rejects_bad_input(device):
    x, y = torch.randn(4, 5, device=device), torch.randn(6, 5, device=device)
    for k in (0, -1, 7, 100):
        expect_error(lambda: pyvision_ops.pairwise_topk(x, y, k), [x, y], r"\bk\b")
    expect_error(lambda: pyvision_ops.pairwise_topk(x, torch.randn(6, 4, device=device), 2), [x], r"\by\b|\bD\b")
    y64 = y.double()
    expect_error(lambda: pyvision_ops.pairwise_topk(x, y64, 2), [x, y64], r"\by\b|dtype")
    yb = torch.randn(2, 6, 5, device=device)
    expect_error(lambda: pyvision_ops.pairwise_topk(x, yb, 2), [x, yb], r"\by\b")
    with pytest.raises((TypeError, *ERRORS), match=r"\by\b|Tensor"):
        pyvision_ops.pairwise_topk(x, None, 2)
    with pytest.raises(ValueError, match="metric"):
        pyvision_ops.pairwise_topk(x, y, 2, metric="l1")
    # M = 0: no k satisfies 1 <= k <= M
    y0 = torch.randn(0, 5, device=device)
    expect_error(lambda: pyvision_ops.pairwise_topk(x, y0, 1), [x, y0], r"\bk\b")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_topk_empty_and_featureless(metric, device):
    y = torch.randn(6, 5, device=device)
    for xs, ys, out in [((0, 5), (6, 5), (0, 3)), ((0, 4, 5), (0, 6, 5), (0, 4, 3)), ((2, 0, 5), (2, 6, 5), (2, 0, 3))]:
        x = torch.randn(xs, device=device, requires_grad=True)
        yy = torch.randn(ys, device=device, requires_grad=True)
        values, indices = pyvision_ops.pairwise_topk(x, yy, 3, metric=metric)
        assert tuple(values.shape) == out and tuple(indices.shape) == out and indices.dtype == torch.int64
        values.sum().backward()
    # D = 0: every distance equal (0, or 1 for cosine): any k distinct indices
    x0, y0 = torch.randn(4, 0, device=device), torch.randn(6, 0, device=device)
    values, indices = pyvision_ops.pairwise_topk(x0, y0, 6, metric=metric)
    assert torch.equal(values.cpu(), torch.full((4, 6), 1.0 if metric == "cosine" else 0.0))
    assert torch.equal(torch.sort(indices.cpu(), -1).values, torch.arange(6).expand(4, 6))
    del y


# --------------------------------------------------------------------------------------------
# mine_triplets
# --------------------------------------------------------------------------------------------

MINING_CASES = [
    (1, "classes"),
    (2, "two_classes"),
    (7, "classes"),
    (7, "singletons"),
    (7, "one_class"),
    (7, "all_distinct"),
    (33, "classes"),
    (33, "singletons"),
    (33, "two_classes"),
]


def mine(embeddings, labels, strategy, **kwargs):
    return as_triplets(pyvision_ops.mine_triplets(embeddings, labels, strategy=strategy, **kwargs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", LOSS_METRICS)
@pytest.mark.parametrize("case", MINING_CASES, ids=lambda c: f"{c[1]}{c[0]}")
def test_mine_triplets_matches_brute_force(case, metric, device):
    """float64 data against the float64 reference distances: exact tuples, documented order."""
    n, kind = case
    emb = points(n, 4, dtype=torch.float64, device=device)
    labels = make_labels(kind, n, device)
    for strategy in STRATEGIES:
        check_mining(emb, labels, kind, metric, strategy)


def check_mining(emb, labels, kind, metric, strategy):
    n = emb.shape[0]
    margin = MARGINS[metric]
    before_e, before_l = emb.clone(), labels.clone()
    got = mine(emb, labels, strategy, margin=margin, metric=metric)
    expected = reference_mine_triplets(reference_pairwise_distance(emb, None, metric), labels, strategy, margin)
    assert_same_triplets(got, expected, f"{strategy}/{metric}")
    assert_unchanged(before_e, emb)
    assert_unchanged(before_l, labels)
    if kind in ("one_class", "all_distinct") or n == 1:
        assert got == ((), (), ()), "no anchor has both a positive and a negative"
    if strategy == "semi_hard" and got[0]:  # the TF-Addons definition gives the same negatives
        d = reference_pairwise_distance(emb, None, metric).numpy()
        tf = tf_addons_semi_hard_negatives(d, labels)
        np.testing.assert_allclose(d[list(got[0]), list(got[2])], tf[list(got[0]), list(got[1])], rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("metric", METRICS)
def test_mine_triplets_float32_uses_pairwise_distance(metric, strategy, device):
    """float32 data: the triplets are those of the brute force on pairwise_distance's own output."""
    emb = points(40, 8, device=device, scale=0.5)
    labels = make_labels("classes", 40, device)
    margin = MARGINS[metric]
    if metric == "dot" and strategy in ("batch_hard", "semi_hard"):
        pytest.skip("a similarity: test_mine_triplets_dot_is_a_similarity")
    got = mine(emb, labels, strategy, margin=margin, metric=metric)
    expected = reference_mine_triplets(own_distances(emb, metric), labels, strategy, margin, similarity=metric == "dot")
    assert_same_triplets(got, expected, f"{strategy}/{metric}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "cosine"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mine_triplets_beyond_one_tile_and_anchor_ranges(strategy, metric, device):
    """float32, N = 300 (the CUDA batch-hard kernel's 128-wide tiles: two full ones, a tail, the
    column reduction of off-diagonal tiles), against the brute force on pairwise_distance's
    matrix; and anchor ranges (what gather=True mines on each rank) give the full run's triplets
    of those anchors."""
    n = 300
    emb = points(n, 16, device=device, scale=0.5)
    labels = make_labels("classes", n, device)
    margin = MARGINS[metric]
    got = mine(emb, labels, strategy, margin=margin, metric=metric)
    assert_same_triplets(got, reference_mine_triplets(own_distances(emb, metric), labels, strategy, margin),
                         f"{strategy}/{metric}")
    for begin, end in [(0, 1), (100, 230), (129, 300), (255, 257)]:
        part = as_triplets(ops._mine_triplets(emb, labels, strategy, margin, metric, -1, begin, end))
        keep = [t for t, a in enumerate(got[0]) if begin <= a < end]
        expected = tuple(tuple(column[t] for t in keep) for column in got)
        assert_same_triplets(part, expected, f"{strategy}/{metric} anchors [{begin}, {end})")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mine_triplets_cosine_with_zero_rows(strategy, dtype, device):
    """Zero rows are at cosine distance 1 from every row, another zero row included: the miners
    (all anchors, so the symmetric CUDA tiles too) pick what pairwise_distance's matrix gives."""
    emb = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]], dtype=dtype, device=device)
    labels = torch.tensor([0, 1, 1, 0], device=device)
    d = own_distances(emb, "cosine")
    assert float(d[0, 2]) == 1.0 and float(d[0, 0]) == 1.0, d
    margin = MARGINS["cosine"]
    assert_same_triplets(mine(emb, labels, strategy, margin=margin, metric="cosine"),
                         reference_mine_triplets(d, labels, strategy, margin), f"{strategy}/4 rows")
    bigger = points(70, 8, dtype=dtype, device=device, scale=0.5)
    bigger[::7] = 0
    labels = make_labels("classes", 70, device)
    assert_same_triplets(mine(bigger, labels, strategy, margin=margin, metric="cosine"),
                         reference_mine_triplets(own_distances(bigger, "cosine"), labels, strategy, margin),
                         f"{strategy}/70 rows")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
def test_mine_triplets_ties_on_integer_points(metric, strategy, dtype, device):
    """Integer coordinates in {-1, 0, 1}^3: duplicated points, many (nearly) equal distances and
    window boundaries at d_an == d_ap + margin; ties go to the smallest index."""
    emb = torch.randint(-1, 2, (30, 3)).to(device=device, dtype=dtype)
    labels = make_labels("classes", 30, device)
    d = own_distances(emb, metric)
    for margin in {"batch_hard": [0.2], "semi_hard": [0.2], "semi_hard_window": [2.0, 1.0], "hard": [1.0, 0.0, 2.5]}[strategy]:
        got = mine(emb, labels, strategy, margin=margin, metric=metric)
        assert_same_triplets(got, reference_mine_triplets(d, labels, strategy, margin), f"{strategy}/{metric}/{margin}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mine_triplets_dot_is_a_similarity(strategy, device):
    """metric="dot": larger means closer. semi_hard_window and hard as the spec writes them
    (pytorch-metric-learning's conventions for similarities); batch_hard and semi_hard, which the
    spec leaves implicit for a similarity, mirrored the same way (the least similar positive, the
    most similar negative -- pytorch-metric-learning's BatchHardMiner) or rejected naming metric."""
    emb = points(24, 4, dtype=torch.float64, device=device)
    labels = make_labels("classes", 24, device)
    expected = reference_mine_triplets(reference_pairwise_distance(emb, None, "dot"), labels, strategy, 1.0, similarity=True)
    if strategy in ("batch_hard", "semi_hard"):
        try:
            got = mine(emb, labels, strategy, margin=1.0, metric="dot")
        except ValueError as error:
            assert "metric" in str(error)
            return
    else:
        got = mine(emb, labels, strategy, margin=1.0, metric="dot")
    assert_same_triplets(got, expected, f"{strategy}/dot")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_triplets", [0, 1, 7, 50, 10**6])
@pytest.mark.parametrize("data", ["float64", "integer"])
def test_mine_triplets_hard_with_max_triplets(data, max_triplets, device):
    """The max_triplets largest violations d_ap - d_an + margin (ties: lexicographically
    smallest), returned in (a, p, n) order."""
    if data == "float64":
        emb = points(20, 4, dtype=torch.float64, device=device)
        d = reference_pairwise_distance(emb, None, "sqeuclidean")
    else:
        emb = torch.randint(-1, 2, (20, 3), device=device).float()
        d = own_distances(emb, "sqeuclidean")
    labels = make_labels("classes", 20, device)
    got = mine(emb, labels, "hard", margin=1.0, max_triplets=max_triplets)
    expected = reference_mine_triplets(d, labels, "hard", 1.0, max_triplets=max_triplets)
    assert len(got[0]) == min(max_triplets, len(reference_mine_triplets(d, labels, "hard", 1.0)[0]))
    assert_same_triplets(got, expected, f"max_triplets={max_triplets}")
    # max_triplets=None keeps every triplet
    assert_same_triplets(mine(emb, labels, "hard", margin=1.0, max_triplets=None), reference_mine_triplets(d, labels, "hard", 1.0))


def test_mine_triplets_defaults():
    """strategy="batch_hard", margin=0.2, metric="sqeuclidean" by default."""
    emb = points(16, 4, dtype=torch.float64)
    labels = make_labels("classes", 16)
    d = reference_pairwise_distance(emb, None, "sqeuclidean")
    assert_same_triplets(as_triplets(pyvision_ops.mine_triplets(emb, labels)), reference_mine_triplets(d, labels, "batch_hard"))
    assert_same_triplets(
        as_triplets(pyvision_ops.mine_triplets(emb, labels, "semi_hard_window")),
        reference_mine_triplets(d, labels, "semi_hard_window", 0.2),
    )
    assert_same_triplets(as_triplets(pyvision_ops.mine_triplets(emb, labels, "hard")), reference_mine_triplets(d, labels, "hard", 0.2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES, ids=str)
def test_mine_triplets_label_dtypes(label_dtype, device):
    emb = points(21, 4, dtype=torch.float64, device=device)
    labels = make_labels("singletons", 21, device, label_dtype)
    d = reference_pairwise_distance(emb, None, "sqeuclidean")
    for strategy in STRATEGIES:
        assert_same_triplets(mine(emb, labels, strategy, margin=2.0), reference_mine_triplets(d, labels, strategy, 2.0), strategy)
    strided = torch.stack([labels, labels], 1)[:, 0]  # stride 2
    assert not strided.is_contiguous()
    assert_same_triplets(mine(emb, strided, "hard", margin=2.0), reference_mine_triplets(d, labels, "hard", 2.0), "strided labels")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_mine_triplets_strided_embeddings(layout, device):
    emb = points(25, 6, dtype=torch.float64, device=device)
    strided = with_layout(emb, layout)
    labels = make_labels("classes", 25, device)
    for strategy in STRATEGIES:
        assert mine(strided, labels, strategy, margin=2.0) == mine(emb, labels, strategy, margin=2.0), strategy


@pytest.mark.parametrize("device", DEVICES)
def test_mine_triplets_do_not_require_grad_and_empty(device):
    emb = points(10, 4, device=device).requires_grad_(True)
    labels = make_labels("classes", 10, device)
    for strategy in STRATEGIES:
        as_triplets(pyvision_ops.mine_triplets(emb, labels, strategy=strategy))  # checks requires_grad is False
        empty = as_triplets(pyvision_ops.mine_triplets(torch.randn(0, 4, device=device), torch.zeros(0, dtype=torch.int64, device=device), strategy=strategy))
        assert empty == ((), (), ())
    assert emb.grad is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_mine_triplets_half_embeddings(dtype, device):
    """float16/bfloat16 embeddings (compared in float32): every triplet is well formed, batch_hard
    has one per valid anchor, and the selection is right where the float64 distances of the
    half values leave no near tie."""
    emb = points(24, 4, dtype=dtype, device=device)
    labels = make_labels("classes", 24, device)
    lab = labels.cpu().tolist()
    d = reference_pairwise_distance(emb, None, "sqeuclidean")
    for strategy in STRATEGIES:
        a, p, n = mine(emb, labels, strategy, margin=2.0)
        for i, j, k in zip(a, p, n):
            assert i != j and lab[i] == lab[j] and lab[i] != lab[k], (strategy, i, j, k)
    a, p, n = mine(emb, labels, "batch_hard")
    valid = [i for i in range(24) if any(lab[j] == lab[i] for j in range(24) if j != i) and any(l != lab[i] for l in lab)]
    assert list(a) == valid
    ref_a, ref_p, ref_n = reference_mine_triplets(d, labels, "batch_hard")
    for row, (i, j, k) in enumerate(zip(a, p, n)):
        assert float(d[i, j]) >= float(d[i, ref_p[row]]) * (1 - 1e-5) and float(d[i, k]) <= float(d[i, ref_n[row]]) * (1 + 1e-5) + 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_mine_triplets_rejects_bad_input(device):
    emb = torch.randn(6, 3, device=device)
    labels = torch.tensor([0, 0, 1, 1, 2, 2], device=device)
    nan = emb.clone()
    nan[4, 1] = float("nan")
    cases = [
        ("labels too short", (emb, labels[:5]), "labels"),
        ("labels too long", (emb, torch.cat([labels, labels[:1]])), "labels"),
        ("float labels", (emb, labels.float()), "labels"),
        ("bool labels", (emb, labels.bool()), "labels"),
        ("2-D labels", (emb, labels.reshape(2, 3)), "labels"),
        ("NaN embeddings", (nan, labels), "embeddings"),
        ("1-D embeddings", (emb[:, 0], labels), "embeddings"),
        ("3-D embeddings", (emb[None], labels), "embeddings"),
        ("integer embeddings", (emb.long(), labels), "embeddings"),
    ]
    for name, (e, l), match in cases:
        for strategy in ("batch_hard", "hard"):
            expect_error(lambda: pyvision_ops.mine_triplets(e, l, strategy=strategy), [e, l], match)
    for kwargs, match in [
        ({"strategy": "semihard"}, "strategy"),
        ({"strategy": "easy"}, "strategy"),
        ({"metric": "l1"}, "metric"),
        ({"margin": float("nan")}, "margin"),
        ({"margin": float("inf")}, "margin"),
        ({"strategy": "hard", "max_triplets": -1}, "max_triplets"),
    ]:
        with pytest.raises(ValueError, match=match):
            pyvision_ops.mine_triplets(emb, labels, **kwargs)
    assert_unchanged(torch.tensor([0, 0, 1, 1, 2, 2]), labels.cpu())


def test_mine_triplets_gather_requires_distributed():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised")
    emb, labels = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ERRORS, match=r"(?i)distributed|process group|init"):
        pyvision_ops.mine_triplets(emb, labels, gather=True)
    with pytest.raises(ERRORS, match=r"(?i)distributed|process group|init"):
        pyvision_ops.gather_embeddings(emb, labels)


def test_mine_triplets_gather_with_one_rank(single_process_group):
    """World size 1: the gathered batch is the local one (the 2-process gloo test is elsewhere)."""
    emb = points(12, 4, dtype=torch.float64).requires_grad_(True)
    labels = make_labels("classes", 12)
    all_emb, all_labels = pyvision_ops.gather_embeddings(emb, labels)
    assert torch.equal(all_emb.detach(), emb.detach()) and torch.equal(all_labels, labels)
    weight = torch.randn(12, 4, dtype=torch.float64)
    (all_emb * weight).sum().backward()
    torch.testing.assert_close(emb.grad, weight, rtol=0, atol=0)
    for strategy in STRATEGIES:
        assert mine(emb, labels, strategy, gather=True) == mine(emb, labels, strategy), strategy


# --------------------------------------------------------------------------------------------
# batch_hard_triplet_loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("metric", LOSS_METRICS)
def test_batch_hard_triplet_loss_matches_reference(metric, dtype, device):
    for case in [(16, "classes", 0.2), (33, "singletons", 1.0), (7, "two_classes", 0.5)]:
        for soft in (False, True):
            check_batch_hard_loss(case, soft, metric, dtype, device)


def check_batch_hard_loss(case, soft, metric, dtype, device):
    n, kind, margin = case
    emb = points(n, 5, dtype=dtype, device=device).requires_grad_(True)
    labels = make_labels(kind, n, device)
    loss = pyvision_ops.batch_hard_triplet_loss(emb, labels, margin=margin, metric=metric, soft=soft)
    assert loss.shape == () and loss.dtype == dtype and loss.device == emb.device
    e64 = emb.detach().double().cpu().requires_grad_(True)
    expected = reference_batch_hard_triplet_loss(e64, labels, margin, metric, soft)
    scale = float(reference_pairwise_distance(e64.detach(), None, metric).abs().max())
    tol = 4 * TOL[dtype]
    assert_within(loss, expected, tol, tol * scale, "loss")
    grad_loss = 1.5
    loss.backward(torch.tensor(grad_loss, dtype=dtype, device=device))
    (expected * grad_loss).backward()
    assert emb.grad.dtype == dtype and emb.grad.shape == emb.shape
    if dtype in HALF_DTYPES:  # the selection may differ on rounding ties: only the form
        assert bool(torch.isfinite(emb.grad).all())
        return
    # soft: PyTorch's softplus is the identity above 20 (a relative error up to e^-20 ~ 2e-9), an
    # accepted way to compute it
    tol = max(GRAD_TOL[dtype], 1e-8) if soft else GRAD_TOL[dtype]
    assert_close_scaled(emb.grad, e64.grad, tol, "grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", LOSS_METRICS)
@pytest.mark.parametrize("soft", [False, True], ids=["hinge", "soft"])
def test_batch_hard_triplet_loss_gradcheck(soft, metric, device):
    emb = torch.randn(8, 3, dtype=torch.float64, device=device, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3], device=device)  # class 3: a singleton anchor, skipped
    margin = 5.0  # every hinge active: away from the kink
    assert torch.autograd.gradcheck(
        lambda e: pyvision_ops.batch_hard_triplet_loss(e, labels, margin=margin, metric=metric, soft=soft), (emb,)
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("soft", [False, True], ids=["hinge", "soft"])
@pytest.mark.parametrize("case", ["one_class", "all_distinct", "single", "empty"])
def test_batch_hard_triplet_loss_without_valid_anchor_is_zero(case, soft, device):
    n = {"one_class": 6, "all_distinct": 6, "single": 1, "empty": 0}[case]
    kind = "all_distinct" if case == "all_distinct" else "one_class"
    emb = points(n, 4, device=device).requires_grad_(True)
    labels = make_labels(kind, n, device)
    loss = pyvision_ops.batch_hard_triplet_loss(emb, labels, soft=soft)
    assert loss.shape == () and float(loss.detach()) == 0.0
    loss.backward()
    assert emb.grad is not None and torch.equal(emb.grad.cpu(), torch.zeros(n, 4)), "not a zero gradient"


def test_batch_hard_triplet_loss_defaults():
    emb = points(16, 4, dtype=torch.float64)
    labels = make_labels("classes", 16)
    torch.testing.assert_close(
        pyvision_ops.batch_hard_triplet_loss(emb, labels), reference_batch_hard_triplet_loss(emb, labels, 0.2, "sqeuclidean", False)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_batch_hard_triplet_loss_rejects_bad_input(device):
    emb = torch.randn(6, 3, device=device, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2], device=device)
    with pytest.raises(ValueError, match="metric"):
        pyvision_ops.batch_hard_triplet_loss(emb, labels, metric="dot")
    with pytest.raises(ValueError, match="metric"):
        pyvision_ops.batch_hard_triplet_loss(emb, labels, metric="l1")
    e = emb.detach()
    for bad in (labels[:5], labels.float(), labels.bool()):
        expect_error(lambda: pyvision_ops.batch_hard_triplet_loss(e, bad), [e, bad], "labels")


# --------------------------------------------------------------------------------------------
# triplet_margin_loss
# --------------------------------------------------------------------------------------------


def triplet_inputs(shape, dtype, device, requires_grad=True):
    a = points(*shape, dtype=dtype, device=device)
    p = (a.double().cpu() + 0.7 * torch.randn(shape, dtype=torch.float64)).to(device=device, dtype=dtype)
    n = points(*shape, dtype=dtype, device=device)
    return [t.requires_grad_(requires_grad) for t in (a, p, n)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("metric", LOSS_METRICS)
@pytest.mark.parametrize("shape,margin", [((17, 6), 1.0), ((5, 130), 0.3), ((6,), 1.0)], ids=str)
def test_triplet_margin_loss_matches_reference(shape, margin, metric, dtype, device):
    """euclidean: torch.nn.TripletMarginLoss(margin, p=2, eps=1e-6, swap, reduction)."""
    for reduction in REDUCTIONS:
        for swap in (False, True):
            check_triplet_margin_loss(shape, margin, reduction, swap, metric, dtype, device)


def check_triplet_margin_loss(shape, margin, reduction, swap, metric, dtype, device):
    a, p, n = triplet_inputs(shape, dtype, device)
    loss = pyvision_ops.triplet_margin_loss(a, p, n, margin=margin, metric=metric, swap=swap, reduction=reduction)
    a64, p64, n64 = (t.detach().double().cpu().requires_grad_(True) for t in (a, p, n))
    expected = reference_triplet_margin_loss(a64, p64, n64, margin, metric, 1e-6, swap, reduction)
    assert loss.dtype == dtype and tuple(loss.shape) == tuple(expected.shape)
    scale = float(margin + reference_pairwise_distance(a64.detach().reshape(-1, shape[-1]), n64.detach().reshape(-1, shape[-1]), metric).abs().max())
    assert_within(loss, expected, 4 * TOL[dtype], 4 * TOL[dtype] * scale, "loss")
    grad = torch.randn(expected.shape, dtype=torch.float64)
    loss.backward(grad.to(device=device, dtype=dtype))
    expected.backward(grad.to(dtype).double())
    for t, r, name in zip((a, p, n), (a64, p64, n64), "apn"):
        assert_close_scaled(t.grad, r.grad, GRAD_TOL[dtype], f"grad {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("eps", [0.0, 1e-6, 1e-2])
def test_triplet_margin_loss_defaults_match_torch(eps, device):
    a, p, n = triplet_inputs((9, 4), torch.float64, device, requires_grad=False)
    torch_loss = torch.nn.TripletMarginLoss()(a, p, n) if eps == 1e-6 else torch.nn.TripletMarginLoss(eps=eps)(a, p, n)
    ours = pyvision_ops.triplet_margin_loss(a, p, n) if eps == 1e-6 else pyvision_ops.triplet_margin_loss(a, p, n, eps=eps)
    torch.testing.assert_close(ours, torch_loss, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", LOSS_METRICS)
@pytest.mark.parametrize("swap", [False, True], ids=["noswap", "swap"])
def test_triplet_margin_loss_gradcheck(swap, metric, device):
    a, p, n = triplet_inputs((4, 3), torch.float64, device)
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda x, y, z: pyvision_ops.triplet_margin_loss(x, y, z, margin=2.0, metric=metric, swap=swap, reduction=reduction), (a, p, n)
        ), reduction


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_triplet_margin_loss_empty(reduction, device):
    a, p, n = (torch.randn(0, 4, device=device, requires_grad=True) for _ in range(3))
    loss = pyvision_ops.triplet_margin_loss(a, p, n, reduction=reduction)
    if reduction == "none":
        assert tuple(loss.shape) == (0,)
    else:
        assert loss.shape == () and float(loss.detach()) == 0.0, f"empty {reduction}: {loss} (torch gives NaN for mean; we give 0)"
    loss.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
def test_triplet_margin_loss_rejects_bad_input(device):
    a, p, n = triplet_inputs((4, 3), torch.float32, device, requires_grad=False)
    expect_error(lambda: pyvision_ops.triplet_margin_loss(a, p[:3], n), [a, p, n], "positive")
    expect_error(lambda: pyvision_ops.triplet_margin_loss(a, p, n[:, :2]), [a, p, n], "negative")
    expect_error(lambda: pyvision_ops.triplet_margin_loss(a, p.double(), n), [a, p, n], r"positive|dtype")
    with pytest.raises(ValueError, match="reduction"):
        pyvision_ops.triplet_margin_loss(a, p, n, reduction="batchmean")
    with pytest.raises(ValueError, match="metric"):
        pyvision_ops.triplet_margin_loss(a, p, n, metric="l1")


# --------------------------------------------------------------------------------------------
# contrastive_loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("same_kind", ["bool", "float"])
@pytest.mark.parametrize("shape,margin", [((19, 5), 1.0), ((6, 130), 20.0), ((1, 1), 0.5)], ids=str)
def test_contrastive_loss_matches_reference(shape, margin, same_kind, dtype, device):
    for reduction in REDUCTIONS:
        check_contrastive(shape, margin, reduction, same_kind, dtype, device)


def check_contrastive(shape, margin, reduction, same_kind, dtype, device):
    x1, x2 = points(*shape, dtype=dtype, device=device), points(*shape, dtype=dtype, device=device, scale=0.4)
    x1.requires_grad_(True)
    x2.requires_grad_(True)
    same = torch.rand(shape[0]) < 0.5
    same[0] = False
    same = same.to(device) if same_kind == "bool" else same.to(device=device, dtype=dtype)
    before = same.clone()
    loss = pyvision_ops.contrastive_loss(x1, x2, same, margin=margin, reduction=reduction)
    a64, b64 = (t.detach().double().cpu().requires_grad_(True) for t in (x1, x2))
    expected = reference_contrastive_loss(a64, b64, same, margin, reduction)
    assert loss.dtype == dtype and tuple(loss.shape) == tuple(expected.shape)
    scale = float(margin**2 + (a64 - b64).detach().pow(2).sum(-1).max())
    assert_within(loss, expected, 4 * TOL[dtype], 4 * TOL[dtype] * scale, "loss")
    grad = torch.randn(expected.shape, dtype=torch.float64)
    loss.backward(grad.to(device=device, dtype=dtype))
    expected.backward(grad.to(dtype).double())
    assert_close_scaled(x1.grad, a64.grad, GRAD_TOL[dtype], "grad x1")
    assert_close_scaled(x2.grad, b64.grad, GRAD_TOL[dtype], "grad x2")
    assert_unchanged(before, same)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_contrastive_loss_gradcheck(reduction, device):
    x1 = torch.randn(6, 3, dtype=torch.float64, device=device, requires_grad=True)
    x2 = torch.randn(6, 3, dtype=torch.float64, device=device, requires_grad=True)
    same = torch.tensor([True, False, True, False, False, True], device=device)
    assert torch.autograd.gradcheck(lambda a, b: pyvision_ops.contrastive_loss(a, b, same, margin=2.5, reduction=reduction), (x1, x2))


@pytest.mark.parametrize("device", DEVICES)
def test_contrastive_loss_defaults_empty_and_bad_input(device):
    x1, x2 = points(5, 3, dtype=torch.float64, device=device), points(5, 3, dtype=torch.float64, device=device)
    same = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64, device=device)
    torch.testing.assert_close(pyvision_ops.contrastive_loss(x1, x2, same), reference_contrastive_loss(x1, x2, same, 1.0, "mean").to(device))
    # the documented form: the hinge is on the squared distances
    d2 = (x1 - x2).pow(2).sum(-1)
    by_hand = (same * d2 + (1 - same) * torch.clamp_min(1.0 - d2, 0)).mean()
    torch.testing.assert_close(pyvision_ops.contrastive_loss(x1, x2, same.bool()), by_hand)
    e = torch.randn(0, 3, device=device, requires_grad=True)
    for reduction in REDUCTIONS:
        loss = pyvision_ops.contrastive_loss(e, e, torch.zeros(0, dtype=torch.bool, device=device), reduction=reduction)
        assert tuple(loss.shape) == ((0,) if reduction == "none" else ()) and float(loss.detach().sum()) == 0.0
    expect_error(lambda: pyvision_ops.contrastive_loss(x1, x2, same[:4]), [x1, x2, same], "same")
    expect_error(lambda: pyvision_ops.contrastive_loss(x1, x2[:4], same), [x1, x2, same], "x2")
    expect_error(lambda: pyvision_ops.contrastive_loss(x1, x2[:, :2], same), [x1, x2, same], "x2")
    with pytest.raises(ValueError, match="reduction"):
        pyvision_ops.contrastive_loss(x1, x2, same, reduction="max")


# --------------------------------------------------------------------------------------------
# class_distance_matrix
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [(2, "two_classes"), (7, "one_class"), (7, "all_distinct"), (33, "singletons"), (129, "classes")], ids=lambda c: f"{c[1]}{c[0]}")
def test_class_distance_matrix_matches_brute_force(case, dtype, device):
    n, kind = case
    emb = points(n, 6, dtype=dtype, device=device).requires_grad_(True)
    labels = make_labels(kind, n, device)
    got = pyvision_ops.class_distance_matrix(emb, labels)
    e64 = emb.detach().double().cpu().requires_grad_(True)
    expected = reference_class_distance_matrix(e64, labels)
    p = torch.unique(labels).numel()
    assert tuple(got.shape) == (p, p) and got.dtype == dtype and got.device == emb.device
    assert_close_scaled(got, expected, 4 * TOL[dtype], "matrix")
    # the diagonal: 2 * the mean squared distance to the class mean
    for i, c in enumerate(torch.unique(labels).tolist()):
        members = e64.detach()[labels.cpu() == c]
        spread = 2 * (members - members.mean(0)).pow(2).sum(-1).mean()
        torch.testing.assert_close(expected[i, i].detach(), spread, rtol=1e-12, atol=1e-12)
    grad = torch.randn(p, p, dtype=torch.float64)
    got.backward(grad.to(device=device, dtype=dtype))
    expected.backward(grad.to(dtype).double())
    assert_close_scaled(emb.grad, e64.grad, GRAD_TOL[dtype], "grad")


@pytest.mark.parametrize("device", DEVICES)
def test_class_distance_matrix_gradcheck_empty_and_bad_input(device):
    emb = torch.randn(7, 3, dtype=torch.float64, device=device, requires_grad=True)
    labels = torch.tensor([5, -1, 5, 2, 2, 2, 9], device=device)  # unsorted, a singleton, negative
    assert torch.autograd.gradcheck(lambda e: pyvision_ops.class_distance_matrix(e, labels), (emb,))
    out = pyvision_ops.class_distance_matrix(torch.randn(0, 3, device=device), torch.zeros(0, dtype=torch.int64, device=device))
    assert tuple(out.shape) == (0, 0)
    e = emb.detach()
    for bad in (labels[:6], labels.float()):
        expect_error(lambda: pyvision_ops.class_distance_matrix(e, bad), [e, bad], "labels")


# --------------------------------------------------------------------------------------------
# the shared op contract (tests/contract.py) for each registered op of the family
# --------------------------------------------------------------------------------------------

REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}  # the schema's int reduction


class _DistanceContract(OpContract):
    """float64 results within 1e-12, float32 within a few roundings: a strided upstream gradient
    may take another (equally exact) accumulation order."""

    compile_samples = 2

    def tolerance(self, dtype, device):
        return 1e-12 if dtype == torch.float64 else 2e-5


def _xy(shape_x, shape_y, dtype, device, requires_grad, layout="contiguous"):
    x = with_layout(points(*shape_x, dtype=dtype, device=device), layout).requires_grad_(requires_grad)
    y = None if shape_y is None else points(*shape_y, dtype=dtype, device=device).requires_grad_(requires_grad)
    return x, y


class TestPairwiseDistanceContract(_DistanceContract):
    op_name = "pairwise_distance"

    def samples(self, device):
        samples = []
        cases = [((7, 5), (9, 5), "contiguous"), ((2, 6, 3), None, "transposed"), ((2, 5, 4), (2, 3, 4), "sliced")]
        for i, metric in enumerate(METRICS + ["euclidean"]):  # each metric; y=None for euclidean (distance 0)
            sx, sy, layout = cases[i % 3]
            dtype = (torch.float32, torch.float64)[i % 2]
            x, y = _xy(sx, sy, dtype, device, True, layout)
            samples.append(Sample((x, y, metric), f"{metric}-{shape_id(sx)}-{layout}-{dtype}"))
        return samples

    def empty_cases(self, device):
        return [
            EmptyCase(Sample((torch.randn(0, 4, device=device, requires_grad=True), torch.randn(3, 4, device=device), "euclidean")), [(0, 3)]),
            EmptyCase(Sample((torch.randn(0, 2, 4, device=device, requires_grad=True), None, "sqeuclidean")), [(0, 2, 2)]),
            EmptyCase(Sample((torch.randn(5, 4, device=device, requires_grad=True), torch.randn(0, 4, device=device), "cosine")), [(5, 0)]),
        ]

    def bad_inputs(self, device):
        x = torch.randn(4, 5, device=device)
        return [
            BadInput("D mismatch", (x, torch.randn(3, 6, device=device), "sqeuclidean"), r"\by\b|\bD\b"),
            BadInput("1-D x", (torch.randn(5, device=device), None, "sqeuclidean"), r"\bx\b"),
            BadInput("batch mismatch", (torch.randn(2, 4, 5, device=device), torch.randn(3, 3, 5, device=device), "dot"), r"\by\b|batch"),
            BadInput("dtype mismatch", (x, torch.randn(3, 5, dtype=torch.float64, device=device), "dot"), r"\by\b|dtype"),
            BadInput("unknown metric", (x, None, "hamming"), r"metric"),
            BadInput("integer x", (x.long(), None, "dot"), r"\bx\b"),
        ]


class TestPairwiseDistanceBackwardContract(_DistanceContract):
    op_name = "_pairwise_distance_backward"
    differentiable = False
    upstream_argument = 0

    def samples(self, device):
        samples = []
        cases = [((7, 5), (9, 5), [True, True]), ((2, 6, 3), None, [True, False]), ((2, 5, 4), (2, 3, 4), [False, True])]
        for i, metric in enumerate(METRICS + ["euclidean"]):
            sx, sy, mask = cases[i % 3]
            dtype = (torch.float32, torch.float64)[i % 2]
            x, y = _xy(sx, sy, dtype, device, False)
            out = pyvision_ops.pairwise_distance(x, y, metric=metric)
            grad = torch.randn(out.shape, dtype=dtype, device=device)
            samples.append(Sample((grad, x, y, out, metric, mask), f"{metric}-{shape_id(sx)}-{dtype}-{mask}"))
        return samples

    def empty_cases(self, device):
        x, y = torch.randn(0, 4, device=device), torch.randn(3, 4, device=device)
        out = torch.zeros(0, 3, device=device)
        return [EmptyCase(Sample((torch.zeros(0, 3, device=device), x, y, out, "euclidean", [True, True])), [(0, 4), (3, 4)])]

    def bad_inputs(self, device):
        x, y = torch.randn(4, 5, device=device), torch.randn(3, 5, device=device)
        out = pyvision_ops.pairwise_distance(x, y)
        return [
            BadInput("grad of the wrong shape", (torch.randn(3, 4, device=device), x, y, out, "sqeuclidean", [True, True]), r"grad"),
            BadInput("unknown metric", (torch.randn(4, 3, device=device), x, y, out, "l1", [True, True]), r"metric"),
        ]


class TestPairwiseTopkContract(_DistanceContract):
    op_name = "pairwise_topk"

    def samples(self, device):
        samples = []
        for i, (metric, largest) in enumerate(TOPK_MODES[:4]):
            sx, sy, k = [((7, 5), (9, 5), 3), ((2, 6, 3), (2, 4, 3), 4)][i % 2]  # k < M, and k = M batched
            dtype = (torch.float32, torch.float64)[(i // 2) % 2]
            x, y = _xy(sx, sy, dtype, device, True, "transposed" if i % 2 else "contiguous")
            samples.append(Sample((x, y, k, metric, largest), f"{metric}-{largest}-{shape_id(sx)}-k{k}-{dtype}"))
        return samples

    def empty_cases(self, device):
        return [
            EmptyCase(Sample((torch.randn(0, 4, device=device, requires_grad=True), torch.randn(3, 4, device=device), 2, "euclidean", False)), [(0, 2), (0, 2)]),
            EmptyCase(Sample((torch.randn(0, 5, 4, device=device, requires_grad=True), torch.randn(0, 3, 4, device=device), 3, "dot", True)), [(0, 5, 3), (0, 5, 3)]),
        ]

    def bad_inputs(self, device):
        x, y = torch.randn(4, 5, device=device), torch.randn(6, 5, device=device)
        return [
            BadInput("k = 0", (x, y, 0, "sqeuclidean", False), r"\bk\b"),
            BadInput("k > M", (x, y, 7, "sqeuclidean", False), r"\bk\b"),
            BadInput("D mismatch", (x, torch.randn(6, 4, device=device), 2, "sqeuclidean", False), r"\by\b|\bD\b"),
            BadInput("unknown metric", (x, y, 2, "l2", False), r"metric"),
        ]


class TestPairwiseTopkBackwardContract(_DistanceContract):
    op_name = "_pairwise_topk_backward"
    differentiable = False
    upstream_argument = 0

    def samples(self, device):
        samples = []
        for i, (metric, largest) in enumerate(TOPK_MODES[:4]):
            sx, sy, k, mask = [((7, 5), (9, 5), 3, [True, True]), ((2, 6, 3), (2, 4, 3), 4, [True, False])][i % 2]
            dtype = (torch.float32, torch.float64)[(i // 2) % 2]
            x, y = _xy(sx, sy, dtype, device, False)
            values, indices = pyvision_ops.pairwise_topk(x, y, k, metric=metric, largest=largest)
            grad = torch.randn(values.shape, dtype=dtype, device=device)
            samples.append(Sample((grad, x, y, indices, metric, mask), f"{metric}-{shape_id(sx)}-k{k}-{dtype}-{mask}"))
        return samples


class TestMineTripletsContract(_DistanceContract):
    op_name = "_mine_triplets"
    differentiable = False

    def samples(self, device):
        samples = []
        for i, strategy in enumerate(STRATEGIES):
            dtype = (torch.float32, torch.float64)[i % 2]
            emb = points(12, 4, dtype=dtype, device=device)
            labels = make_labels("classes", 12, device)
            max_triplets = 5 if strategy == "hard" else -1
            samples.append(Sample((emb, labels, strategy, 1.0, METRICS[i % 3], max_triplets, 0, -1), f"{strategy}-{dtype}"))
        return samples

    def empty_cases(self, device):
        return [
            EmptyCase(Sample((torch.randn(0, 4, device=device), torch.zeros(0, dtype=torch.int64, device=device), s, 0.2, "sqeuclidean", -1, 0, -1)), [(0,), (0,), (0,)])
            for s in STRATEGIES
        ]

    def bad_inputs(self, device):
        emb = torch.randn(6, 3, device=device)
        labels = torch.tensor([0, 0, 1, 1, 2, 2], device=device)
        nan = emb.clone()
        nan[1, 1] = float("nan")
        return [
            BadInput("short labels", (emb, labels[:5], "batch_hard", 0.2, "sqeuclidean", -1, 0, -1), "labels"),
            BadInput("float labels", (emb, labels.float(), "batch_hard", 0.2, "sqeuclidean", -1, 0, -1), "labels"),
            BadInput("NaN embeddings", (nan, labels, "hard", 0.2, "sqeuclidean", -1, 0, -1), "embeddings"),
            BadInput("unknown strategy", (emb, labels, "semihard", 0.2, "sqeuclidean", -1, 0, -1), "strategy"),
            BadInput("unknown metric", (emb, labels, "hard", 0.2, "l1", -1, 0, -1), "metric"),
            BadInput("infinite margin", (emb, labels, "hard", float("inf"), "sqeuclidean", -1, 0, -1), "margin"),
        ]


def _triplet_loss_samples(device, requires_grad):
    samples = []
    for i, (metric, reduction, swap, soft) in enumerate(
        [("euclidean", "mean", False, False), ("sqeuclidean", "none", True, False), ("cosine", "sum", False, True), ("euclidean", "none", True, True)]
    ):
        dtype = (torch.float32, torch.float64)[i % 2]
        a, p, n = triplet_inputs((5, 4), dtype, device, requires_grad)
        samples.append(((a, p, n, 1.0, metric, 1e-6, swap, soft, REDUCTION_CODES[reduction]), f"{metric}-{reduction}-swap{swap}-soft{soft}-{dtype}"))
    return samples


class TestTripletLossContract(_DistanceContract):
    op_name = "_triplet_loss"

    def samples(self, device):
        return [Sample(args, name) for args, name in _triplet_loss_samples(device, True)]

    def empty_cases(self, device):
        e = [torch.randn(0, 4, device=device, requires_grad=True) for _ in range(3)]
        return [EmptyCase(Sample((*e, 1.0, "euclidean", 1e-6, False, False, REDUCTION_CODES[r])), [(0,) if r == "none" else ()]) for r in REDUCTIONS]

    def bad_inputs(self, device):
        a, p, n = triplet_inputs((4, 3), torch.float32, device, False)
        return [
            BadInput("short positive", (a, p[:3], n, 1.0, "euclidean", 1e-6, False, False, 1), "positive"),
            BadInput("narrow negative", (a, p, n[:, :2], 1.0, "euclidean", 1e-6, False, False, 1), "negative"),
            BadInput("reduction code 7", (a, p, n, 1.0, "euclidean", 1e-6, False, False, 7), "reduction"),
            BadInput("unknown metric", (a, p, n, 1.0, "dot2", 1e-6, False, False, 1), "metric"),
        ]


class TestTripletLossBackwardContract(_DistanceContract):
    op_name = "_triplet_loss_backward"
    differentiable = False
    upstream_argument = 0

    def samples(self, device):
        samples = []
        for args, name in _triplet_loss_samples(device, False):
            out = ops._triplet_loss(*args)
            grad = torch.randn(out.shape, dtype=out.dtype, device=device)
            samples.append(Sample((grad, *args), name))
        return samples


def _indexed_samples(device, requires_grad):
    """(embeddings, anchor, positive, negative, margin, metric, soft): triplets mined from the
    embeddings (batch-hard and hard, so that rows repeat), and an empty triplet list."""
    samples = []
    for i, (metric, strategy, soft) in enumerate(
        [("sqeuclidean", "batch_hard", False), ("euclidean", "hard", True), ("cosine", "semi_hard", False), ("sqeuclidean", "none", False)]
    ):
        dtype = (torch.float32, torch.float64)[i % 2]
        emb = points(10, 4, dtype=dtype, device=device)
        labels = make_labels("classes", 10, device)
        if strategy == "none":
            a = p = n = torch.zeros(0, dtype=torch.int64, device=device)
        else:
            a, p, n = pyvision_ops.mine_triplets(emb, labels, strategy=strategy, margin=1.0, metric=metric)
        samples.append(((emb.requires_grad_(requires_grad), a, p, n, 1.0, metric, soft), f"{metric}-{strategy}-soft{soft}-{dtype}"))
    return samples


class TestTripletLossIndexedContract(_DistanceContract):
    op_name = "_triplet_loss_indexed"

    def samples(self, device):
        return [Sample(args, name) for args, name in _indexed_samples(device, True)]

    def empty_cases(self, device):
        e = torch.randn(0, 4, device=device, requires_grad=True)
        none = torch.zeros(0, dtype=torch.int64, device=device)
        return [EmptyCase(Sample((e, none, none, none, 0.2, "sqeuclidean", False)), [()])]

    def bad_inputs(self, device):
        emb = torch.randn(6, 3, device=device)
        a = torch.tensor([0, 2], device=device)
        p = torch.tensor([1, 3], device=device)
        n = torch.tensor([4, 5], device=device)
        return [
            BadInput("anchor index out of range", (emb, torch.tensor([0, 6], device=device), p, n, 0.2, "sqeuclidean", False), "anchor"),
            BadInput("negative index -1", (emb, a, p, torch.tensor([4, -1], device=device), 0.2, "sqeuclidean", False), "negative"),
            BadInput("short positive", (emb, a, p[:1], n, 0.2, "sqeuclidean", False), "positive"),
            BadInput("float anchor", (emb, a.float(), p, n, 0.2, "sqeuclidean", False), "anchor"),
            BadInput("unknown metric", (emb, a, p, n, 0.2, "l1", False), "metric"),
        ]


class TestTripletLossIndexedBackwardContract(_DistanceContract):
    op_name = "_triplet_loss_indexed_backward"
    differentiable = False
    upstream_argument = 0

    def samples(self, device):
        samples = []
        for args, name in _indexed_samples(device, False):
            grad = torch.randn((), dtype=args[0].dtype, device=device)
            samples.append(Sample((grad, *args), name))
        return samples


def _contrastive_samples(device, requires_grad):
    samples = []
    for j, (reduction, kind) in enumerate([("mean", "bool"), ("none", "float"), ("sum", "bool")]):
        dtype = (torch.float32, torch.float64)[j % 2]
        x1, x2 = (points(6, 4, dtype=dtype, device=device).requires_grad_(requires_grad) for _ in range(2))
        same = torch.tensor([True, False, True, False, False, True], device=device)
        same = same if kind == "bool" else same.to(dtype)
        samples.append(((x1, x2, same, 2.0, REDUCTION_CODES[reduction]), f"{reduction}-{kind}-{dtype}"))
    return samples


class TestContrastiveLossContract(_DistanceContract):
    op_name = "_contrastive_loss"

    def samples(self, device):
        return [Sample(args, name) for args, name in _contrastive_samples(device, True)]

    def empty_cases(self, device):
        x = torch.randn(0, 3, device=device, requires_grad=True)
        same = torch.zeros(0, dtype=torch.bool, device=device)
        return [EmptyCase(Sample((x, x, same, 1.0, REDUCTION_CODES[r])), [(0,) if r == "none" else ()]) for r in REDUCTIONS]

    def bad_inputs(self, device):
        x1, x2 = torch.randn(5, 3, device=device), torch.randn(5, 3, device=device)
        same = torch.ones(5, dtype=torch.bool, device=device)
        return [
            BadInput("short same", (x1, x2, same[:4], 1.0, 1), "same"),
            BadInput("x2 shape", (x1, x2[:, :2], same, 1.0, 1), "x2"),
            BadInput("reduction code 9", (x1, x2, same, 1.0, 9), "reduction"),
        ]


class TestContrastiveLossBackwardContract(_DistanceContract):
    op_name = "_contrastive_loss_backward"
    differentiable = False
    upstream_argument = 0

    def samples(self, device):
        samples = []
        for args, name in _contrastive_samples(device, False):
            out = ops._contrastive_loss(*args)
            grad = torch.randn(out.shape, dtype=out.dtype, device=device)
            samples.append(Sample((grad, *args), name))
        return samples


# --------------------------------------------------------------------------------------------
# torch.compile of the public functions
# --------------------------------------------------------------------------------------------


def distances_and_losses(x, y, a, p, n, same):
    d = pyvision_ops.pairwise_distance(x, y, metric="euclidean")
    values = pyvision_ops.pairwise_topk(x, y, 3, metric="cosine").values
    triplet = pyvision_ops.triplet_margin_loss(a, p, n, swap=True)
    contrastive = pyvision_ops.contrastive_loss(a, p, same, margin=2.0)
    return d.tanh().sum() + values.sum() + 2.0 * triplet + contrastive


def batch_hard_step(emb, labels):
    return 2.0 * pyvision_ops.batch_hard_triplet_loss(emb, labels, margin=0.3) + 1.0


def check_compiled(fn, args, device):
    """``fn`` compiled with fullgraph=True gives the eager value and gradients."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    eager_args = [a.detach().clone().requires_grad_(a.requires_grad) if a.is_floating_point() else a for a in args]
    out = compiled(*args)
    expected = fn(*eager_args)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    out.backward()
    expected.backward()
    for a, e in zip(args, eager_args):
        if a.is_floating_point() and a.requires_grad:
            torch.testing.assert_close(a.grad, e.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_distances_and_losses_fullgraph(device):
    x, y = points(5, 4, device=device).requires_grad_(True), points(7, 4, device=device)
    a, p, n = triplet_inputs((6, 4), torch.float32, device)
    same = torch.tensor([True, False, True, True, False, False], device=device)
    check_compiled(distances_and_losses, [x, y, a, p, n, same], device)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_batch_hard_triplet_loss_fullgraph(device):
    """The public loss inside a compiled graph: the mined triplets have a data-dependent count,
    which the loss must handle without a graph break (DESIGN: fullgraph without graph breaks)."""
    emb = points(12, 4, device=device).requires_grad_(True)
    check_compiled(batch_hard_step, [emb, make_labels("classes", 12, device)], device)


# --------------------------------------------------------------------------------------------
# CUDA only
# --------------------------------------------------------------------------------------------


@needs_cuda
def test_cuda_rejects_tensors_on_another_device():
    x = torch.randn(4, 5, device="cuda")
    y = torch.randn(3, 5)
    expect_error(lambda: pyvision_ops.pairwise_distance(x, y), [x, y], r"\by\b|device")
    expect_error(lambda: pyvision_ops.pairwise_topk(x, y, 2), [x, y], r"\by\b|device")
    labels = torch.tensor([0, 0, 1, 1])
    expect_error(lambda: pyvision_ops.mine_triplets(x, labels), [x, labels], r"labels|device")
    expect_error(lambda: pyvision_ops.batch_hard_triplet_loss(x, labels), [x, labels], r"labels|device")
    expect_error(lambda: pyvision_ops.contrastive_loss(x, x.cpu(), labels.bool().cuda()), [x], r"x2|device")


@needs_cuda
@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_cuda_batch_beyond_the_grid_limit(metric):
    """70,000 batch items: the tile kernels' batch grid dimension (at most 65,535) strides past
    its limit; pairwise_distance and pairwise_topk against the float64 brute force."""
    x, y = points(70000, 3, 4, device="cuda"), points(70000, 5, 4, device="cuda")
    poison_allocator((70000, 3, 5), x.dtype, x.device)
    check_distances(pyvision_ops.pairwise_distance(x, y, metric=metric), x, y, metric)
    check_topk(pyvision_ops.pairwise_topk(x, y, 2, metric=metric), x, y, 2, metric, False)


@needs_cuda
def test_cuda_runs_on_current_stream():
    stream = torch.cuda.Stream()
    x, y = points(300, 64, device="cuda"), points(500, 64, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        d = pyvision_ops.pairwise_distance(x, y)
        result = pyvision_ops.pairwise_topk(x, y, 5)
    stream.synchronize()
    check_distances(d, x, y, "sqeuclidean")
    check_topk(result, x, y, 5, "sqeuclidean", False)
