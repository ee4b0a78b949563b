"""The metric-learning module: kmeans, ClassTree, HierarchicalBatchSampler,
hierarchical_triplet_loss (and its fused ops), models.EmbeddingNet.

Oracles (tests/references/metric_learning.py and the libraries themselves): scikit-learn's
``KMeans(algorithm="lloyd", n_init=1)`` from the same initial centroids (partition, inertia,
``n_iter_``, centroids); SciPy's ``linkage``/``cophenet`` on a brute-force float64 class distance
matrix; a brute force over every (anchor, positive, negative) in float64 for the loss (its
gradient from autograd through that brute force), a per-triplet loop for the fused op's value and
derivative; a re-statement of the sampler's class choice. The two fused ops also pass the shared
contract (tests/contract.py). CUDA cases are marked ``needs_cuda`` and skip without a GPU.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import pytest
import torch

import pyvision_ops
from conftest import DEVICES, assert_unchanged, expect_error, needs_cuda
from contract import BadInput, EmptyCase, OpContract, Sample
from pyvision_ops import metric_learning
from pyvision_ops.metric_learning import ClassTree, HierarchicalBatchSampler, KMeansResult, hierarchical_triplet_loss, kmeans
from pyvision_ops.models import EmbeddingNet
from references.metric_learning import (
    numpy_nearest_centroids,
    reference_batch_classes,
    reference_class_distances,
    reference_hierarchical_margins,
    reference_hierarchical_op,
    reference_hierarchical_triplet_loss,
    reference_triplets,
    scipy_tree,
)

sklearn_cluster = pytest.importorskip("sklearn.cluster")
sklearn_datasets = pytest.importorskip("sklearn.datasets")
KMeans = sklearn_cluster.KMeans
make_blobs = sklearn_datasets.make_blobs

ops = torch.ops.pyvision_ops
NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
METHODS = ["average", "single", "complete"]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def to_torch(a: np.ndarray, device, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.to(device=device, dtype=dtype or t.dtype)


def sklearn_kmeans(x: np.ndarray, init: np.ndarray, **kwargs):
    return KMeans(n_clusters=init.shape[0], init=init, n_init=1, algorithm="lloyd", **kwargs).fit(x)


def blobs(n=240, centers=5, features=4, std=0.4, seed=0) -> Tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(n_samples=n, centers=centers, n_features=features, cluster_std=std, random_state=seed,
                      center_box=(-10.0, 10.0))
    return x, y


def one_per_blob(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Initial centroids: a point of every blob (noisy: not the blob's mean), in blob order."""
    return np.stack([x[y == c][0] for c in range(k)])


def check_kmeans_result(result, n: int, k: int, dim: int, dtype: torch.dtype, device) -> None:
    assert isinstance(result, KMeansResult) and isinstance(result, tuple)
    assert result._fields == ("centroids", "labels", "inertia", "n_iter")
    c, labels = result.centroids, result.labels
    assert tuple(c.shape) == (k, dim) and c.dtype == dtype and c.device.type == torch.device(device).type
    assert tuple(labels.shape) == (n,) and labels.dtype == torch.int64 and labels.device == c.device
    assert type(result.inertia) is float and math.isfinite(result.inertia)
    assert type(result.n_iter) is int and result.n_iter >= 1
    assert not c.requires_grad


def assert_labels_of_centroids(result, x: torch.Tensor) -> None:
    """The labels are the argmin over the returned centroids (float64 differences) and the
    inertia the sum of the squared distances to them."""
    labels, sq = numpy_nearest_centroids(x, result.centroids)
    np.testing.assert_array_equal(result.labels.cpu().numpy(), labels)
    rtol = 1e-10 if x.dtype == torch.float64 else 1e-5
    assert result.inertia == pytest.approx(float(sq.sum()), rel=rtol)


def tree_data(p: int, per_class: int = 5, dim: int = 4, scale: float = 0.3, seed: int = 0, values=None):
    """Embeddings (float64) and labels of p classes (label values `values`, default 3 + 5 i:
    not 0..p-1) to build a tree from; class means spread by `scale`, members around them."""
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor(values if values is not None else [3 + 5 * i for i in range(p)], dtype=torch.int64)
    means = torch.randn(p, dim, generator=g, dtype=torch.float64) * scale
    labels = values.repeat_interleave(per_class)
    emb = means.repeat_interleave(per_class, 0) + 0.5 * scale * torch.randn(p * per_class, dim, generator=g, dtype=torch.float64)
    perm = torch.randperm(labels.numel(), generator=g)
    return emb[perm], labels[perm]


def hinge_arguments(emb: torch.Tensor, labels: torch.Tensor, classes, alpha) -> np.ndarray:
    """Every valid triplet's hinge argument d_ap - d_an + alpha (float64)."""
    x = emb.detach().cpu().double().numpy()
    y = labels.cpu().numpy()
    pos = {int(c): i for i, c in enumerate(np.asarray(classes))}
    out = []
    for a, p, n in reference_triplets(y):
        out.append(np.linalg.norm(x[a] - x[p]) - np.linalg.norm(x[a] - x[n]) + alpha[pos[int(y[a])], pos[int(y[n])]])
    return np.asarray(out)


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    a = actual.detach().cpu().double()
    e = expected.detach().cpu().double()
    assert tuple(a.shape) == tuple(e.shape), f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert bool(torch.isfinite(a).all()), f"{what}: non-finite values"
    scale = float(e.abs().max()) if e.numel() else 0.0
    torch.testing.assert_close(a, e, rtol=tol, atol=tol * max(scale, 1e-300), msg=lambda m: f"{what}: {m}")


# --------------------------------------------------------------------------------------------
# API surface
# --------------------------------------------------------------------------------------------


def test_exported_at_top_level():
    for name in ("kmeans", "KMeansResult", "ClassTree", "HierarchicalBatchSampler", "hierarchical_triplet_loss"):
        assert getattr(pyvision_ops, name) is getattr(metric_learning, name), name
        assert name in metric_learning.__all__ and name in pyvision_ops.__all__, name
    assert pyvision_ops.models.EmbeddingNet is EmbeddingNet
    for name in ("_hierarchical_triplet_loss", "_hierarchical_triplet_loss_backward"):
        assert hasattr(ops, name), f"torch.ops.pyvision_ops.{name} is not registered"


# --------------------------------------------------------------------------------------------
# kmeans against scikit-learn
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("tol", [1e-4, 0.0])
def test_kmeans_partition_matches_sklearn_on_blobs(tol, dtype, device):
    x, y = blobs(n=300, centers=6, features=5, seed=1)
    x = x.astype(NP_DTYPES[dtype])
    init = one_per_blob(x, y, 6)
    sk = sklearn_kmeans(x, init, tol=tol)
    result = kmeans(to_torch(x, device), 6, init=to_torch(init, device), tol=tol)
    check_kmeans_result(result, 300, 6, 5, dtype, device)
    # the same initial centroids: the same partition with the same numbering
    np.testing.assert_array_equal(result.labels.cpu().numpy(), sk.labels_)
    np.testing.assert_array_equal(result.labels.cpu().numpy(), y)  # the blobs themselves
    assert result.n_iter == sk.n_iter_
    assert result.n_iter < 300
    atol = 1e-10 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(result.centroids.cpu().numpy(), sk.cluster_centers_, rtol=0, atol=atol)
    assert result.inertia == pytest.approx(sk.inertia_, rel=1e-9 if dtype == torch.float64 else 1e-5)
    assert_labels_of_centroids(result, to_torch(x, "cpu"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("max_iter", [1, 2, 5])
def test_kmeans_inertia_matches_sklearn_on_random_data(max_iter, dtype, device):
    """Non-separated data, tol=0: the same iterations as scikit-learn (inertia within 1e-4)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((400, 6)).astype(NP_DTYPES[dtype])
    init = x[rng.choice(400, 9, replace=False)].copy()
    sk = sklearn_kmeans(x, init, max_iter=max_iter, tol=0.0)
    result = kmeans(to_torch(x, device), 9, init=to_torch(init, device), max_iter=max_iter, tol=0.0)
    check_kmeans_result(result, 400, 9, 6, dtype, device)
    assert result.n_iter == sk.n_iter_ == max_iter  # labels still changing: tol=0 runs max_iter
    assert abs(result.inertia - sk.inertia_) <= 1e-4 * sk.inertia_
    if dtype == torch.float64:
        np.testing.assert_array_equal(result.labels.cpu().numpy(), sk.labels_)
        np.testing.assert_allclose(result.centroids.cpu().numpy(), sk.cluster_centers_, rtol=0, atol=1e-10)
    else:
        assert (result.labels.cpu().numpy() == sk.labels_).mean() > 0.99
    assert_labels_of_centroids(result, to_torch(x, "cpu"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tol", [1e-4, 1e-2, 1e-1])
def test_kmeans_tolerance_matches_sklearn(tol, device):
    """The centroid-shift test scaled by the mean per-feature variance: the same stopping
    iteration as scikit-learn (features of different scales, so the scaling matters)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 4)) * np.array([1.0, 3.0, 0.2, 7.0]) + 5.0
    init = x[:7].copy()
    sk = sklearn_kmeans(x, init, tol=tol)
    result = kmeans(to_torch(x, device), 7, init=to_torch(init, device), tol=tol)
    assert result.n_iter == sk.n_iter_
    assert result.inertia == pytest.approx(sk.inertia_, rel=1e-9)
    np.testing.assert_array_equal(result.labels.cpu().numpy(), sk.labels_)
    assert_labels_of_centroids(result, to_torch(x, "cpu"))


@pytest.mark.parametrize("device", DEVICES)
def test_kmeans_tol_zero_runs_max_iter_unless_labels_stop(device):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((500, 3))
    init = x[:12].copy()
    for max_iter in (3, 4):
        result = kmeans(to_torch(x, device), 12, init=to_torch(init, device), tol=0.0, max_iter=max_iter)
        assert result.n_iter == max_iter
    # separated blobs: the labels stop changing long before max_iter (strict convergence)
    xb, yb = blobs(n=200, centers=4, features=3, seed=5)
    initb = one_per_blob(xb, yb, 4)
    sk = sklearn_kmeans(xb, initb, tol=0.0, max_iter=300)
    result = kmeans(to_torch(xb, device), 4, init=to_torch(initb, device), tol=0.0, max_iter=300)
    assert result.n_iter == sk.n_iter_ < 300
    np.testing.assert_array_equal(result.labels.cpu().numpy(), sk.labels_)
    # a huge tol stops after the first iteration (the shift test), as scikit-learn does
    sk = sklearn_kmeans(x, init, tol=1e6)
    result = kmeans(to_torch(x, device), 12, init=to_torch(init, device), tol=1e6)
    assert result.n_iter == sk.n_iter_ == 1
    assert result.inertia == pytest.approx(sk.inertia_, rel=1e-9)
    assert_labels_of_centroids(result, to_torch(x, "cpu"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kmeans_labels_are_those_of_the_returned_centroids(dtype, device):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((350, 5)).astype(NP_DTYPES[dtype])
    xt = to_torch(x, device)
    for kwargs in ({"max_iter": 1, "tol": 0.0}, {"max_iter": 3, "tol": 0.0}, {"tol": 1e-2}, {}):
        result = kmeans(xt, 8, init=xt[:8], **kwargs)
        assert_labels_of_centroids(result, to_torch(x, "cpu"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kmeans_empty_cluster_is_reseeded_as_sklearn(dtype, device):
    """One initial centroid far from all the data: its cluster is empty in the first iteration
    and gets the point farthest from its centroid, as in scikit-learn."""
    x, y = blobs(n=200, centers=4, features=3, seed=2, std=0.6)
    x = x.astype(NP_DTYPES[dtype])
    init = np.concatenate([one_per_blob(x, y, 3), np.full((1, 3), 100.0, dtype=x.dtype)])
    for max_iter in (1, 300):
        sk = sklearn_kmeans(x, init, max_iter=max_iter)
        result = kmeans(to_torch(x, device), 4, init=to_torch(init, device), max_iter=max_iter)
        assert result.n_iter == sk.n_iter_
        np.testing.assert_array_equal(result.labels.cpu().numpy(), sk.labels_)
        atol = 1e-10 if dtype == torch.float64 else 1e-4
        np.testing.assert_allclose(result.centroids.cpu().numpy(), sk.cluster_centers_, rtol=0, atol=atol)
        assert result.inertia == pytest.approx(sk.inertia_, rel=1e-9 if dtype == torch.float64 else 1e-5)
        assert torch.bincount(result.labels, minlength=4).min() > 0
    # after one iteration the far centroid sits on a data point (the farthest from its centroid)
    sk = sklearn_kmeans(x, init, max_iter=1)
    result = kmeans(to_torch(x, device), 4, init=to_torch(init, device), max_iter=1)
    _, sq0 = numpy_nearest_centroids(x, init)
    far = int(np.argmax(sq0))
    # (both work on data shifted by its mean: the copy of the point is within a rounding)
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(result.centroids[3].cpu().numpy(), x[far], rtol=rtol, atol=0)
    np.testing.assert_allclose(sk.cluster_centers_[3], x[far], rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_kmeans_two_empty_clusters(device):
    """Two far initial centroids: both re-seeded with the two farthest points (the same set of
    centroids as scikit-learn; the order of equal-rank relocations is scikit-learn's argpartition)."""
    x, y = blobs(n=150, centers=3, features=2, seed=4)
    init = np.concatenate([one_per_blob(x, y, 3), [[200.0, 200.0], [-300.0, 100.0]]])
    sk = sklearn_kmeans(x, init, max_iter=1)
    result = kmeans(to_torch(x, device), 5, init=to_torch(init, device), max_iter=1)
    got = result.centroids.cpu().numpy()
    np.testing.assert_allclose(got[:3], sk.cluster_centers_[:3], atol=1e-10, rtol=0)
    key = lambda c: sorted(map(tuple, np.round(c, 10)))
    assert key(got[3:]) == key(sk.cluster_centers_[3:])
    _, sq0 = numpy_nearest_centroids(x, init)
    farthest = x[np.argsort(sq0)[-2:]]
    # The same two points (within the rounding of the shift by the data's mean), in either order.
    assert key(got[3:]) == key(farthest)
    assert_labels_of_centroids(result, to_torch(x, "cpu"))


@pytest.mark.parametrize("device", DEVICES)
def test_kmeans_duplicate_initial_centroids(device):
    """Two equal initial centroids: every row goes to the first (the first of equally near
    ones), the second's cluster is empty and re-seeded, as in scikit-learn."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 4))
    init = x[:5].copy()
    init[3] = init[1]
    for max_iter in (1, 300):
        sk = sklearn_kmeans(x, init, max_iter=max_iter)
        result = kmeans(to_torch(x, device), 5, init=to_torch(init, device), max_iter=max_iter)
        assert result.n_iter == sk.n_iter_
        np.testing.assert_array_equal(result.labels.cpu().numpy(), sk.labels_)
        assert result.inertia == pytest.approx(sk.inertia_, rel=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kmeans_many_rows_and_centroids(dtype, device):
    """More rows and centroids than one tile of the fused nearest-centroid search."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3000, 17)).astype(NP_DTYPES[dtype])
    init = x[rng.choice(3000, 70, replace=False)].copy()
    sk = sklearn_kmeans(x, init, max_iter=3, tol=0.0)
    result = kmeans(to_torch(x, device), 70, init=to_torch(init, device), max_iter=3, tol=0.0)
    assert result.n_iter == sk.n_iter_ == 3
    assert abs(result.inertia - sk.inertia_) <= 1e-4 * sk.inertia_
    assert (result.labels.cpu().numpy() == sk.labels_).mean() > (0.999 if dtype == torch.float32 else 1 - 1e-12)
    assert_labels_of_centroids(result, to_torch(x, "cpu"))


@pytest.mark.parametrize("device", DEVICES)
def test_kmeans_plusplus_reproducible_with_generator(device):
    x, _ = blobs(n=300, centers=6, features=4, seed=8, std=1.5)
    xt = to_torch(x, device)

    def run(seed, **kwargs):
        return kmeans(xt, 6, generator=torch.Generator().manual_seed(seed), **kwargs)

    for kwargs in ({"max_iter": 1}, {}):
        a, b = run(123, **kwargs), run(123, **kwargs)
        assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
        assert a.inertia == b.inertia and a.n_iter == b.n_iter
        others = [run(seed, **kwargs) for seed in (1, 2, 3, 4)]
        assert any(not torch.equal(a.centroids, o.centroids) for o in others), "every seed gives the same seeding"
    # the default init is k-means++ with the same generator stream
    d = kmeans(xt, 6, init="k-means++", generator=torch.Generator().manual_seed(123))
    assert torch.equal(d.centroids, run(123).centroids)
    result = run(9)
    check_kmeans_result(result, 300, 6, 4, torch.float64, device)
    assert_labels_of_centroids(result, to_torch(x, "cpu"))


@pytest.mark.parametrize("device", DEVICES)
def test_kmeans_plusplus_inertia_is_sensible(device):
    """On separated blobs k-means++ finds (about) scikit-learn's k-means++ clustering; its seeding
    alone (one Lloyd step) is already far better than a single random row per cluster would be."""
    x, _ = blobs(n=400, centers=8, features=4, seed=12, std=0.5)
    xt = to_torch(x, device)
    ours = [kmeans(xt, 8, generator=torch.Generator().manual_seed(s)).inertia for s in range(4)]
    theirs = [KMeans(8, n_init=1, algorithm="lloyd", random_state=s).fit(x).inertia_ for s in range(4)]
    assert min(ours) <= 1.05 * min(theirs)
    assert float(np.median(ours)) <= 1.5 * float(np.median(theirs))
    seeded = [kmeans(xt, 8, max_iter=1, generator=torch.Generator().manual_seed(s)).inertia for s in range(4)]
    spread = float(((x - x.mean(0)) ** 2).sum())  # the inertia of one cluster
    assert float(np.median(seeded)) < 0.2 * spread


@pytest.mark.parametrize("device", DEVICES)
def test_kmeans_plusplus_seeds_far_small_clusters(device):
    """D^2 weighting: one big blob and three far blobs of 3 points each; k-means++ seeds a
    centroid in every far blob (uniform seeding would almost never pick them)."""
    rng = np.random.default_rng(1)
    big = rng.standard_normal((600, 2))
    far = [np.array(c) + 0.1 * rng.standard_normal((3, 2)) for c in ([100.0, 0.0], [0.0, 100.0], [-100.0, -100.0])]
    x = np.concatenate([big, *far])
    xt = to_torch(x, device)
    for seed in range(5):
        result = kmeans(xt, 4, max_iter=1, generator=torch.Generator().manual_seed(seed))
        labels = result.labels.cpu().numpy()
        groups = [set(labels[600 + 3 * i : 603 + 3 * i]) for i in range(3)]
        assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3, (seed, groups)
        assert set(labels[:600]).isdisjoint(set.union(*groups)), seed
        assert result.inertia < 2.0 * float(((big - big.mean(0)) ** 2).sum())


@pytest.mark.parametrize("device", DEVICES)
def test_kmeans_random_init(device):
    x, _ = blobs(n=200, centers=4, features=3, seed=6)
    xt = to_torch(x, device)
    a = kmeans(xt, 4, init="random", generator=torch.Generator().manual_seed(0))
    b = kmeans(xt, 4, init="random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    check_kmeans_result(a, 200, 4, 3, torch.float64, device)
    assert_labels_of_centroids(a, to_torch(x, "cpu"))
    # "random" picks k distinct rows: with k = N and one iteration every row is its own centroid
    small = xt[:10]
    r = kmeans(small, 10, init="random", max_iter=1, generator=torch.Generator().manual_seed(3))
    assert r.inertia == 0.0
    got = np.array(sorted(map(tuple, r.centroids.cpu().numpy())))
    np.testing.assert_allclose(got, np.array(sorted(map(tuple, small.cpu().numpy()))), rtol=1e-12, atol=1e-12)
    others = [kmeans(xt, 4, init="random", max_iter=1, generator=torch.Generator().manual_seed(s)).centroids for s in (1, 2, 3)]
    assert any(not torch.equal(kmeans(xt, 4, init="random", max_iter=1, generator=torch.Generator().manual_seed(0)).centroids, o) for o in others)


@pytest.mark.parametrize("device", DEVICES)
def test_kmeans_single_cluster_and_k_equals_n(device):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 3))
    xt = to_torch(x, device)
    sk = sklearn_kmeans(x, x[:1].copy())
    r = kmeans(xt, 1, init=xt[:1])
    np.testing.assert_allclose(r.centroids.cpu().numpy()[0], x.mean(0), atol=1e-12, rtol=0)
    assert r.inertia == pytest.approx(float(((x - x.mean(0)) ** 2).sum()), rel=1e-12)
    assert r.n_iter == sk.n_iter_
    assert bool((r.labels == 0).all())
    r = kmeans(xt[:6], 6, init=xt[:6].flip(0))
    assert r.inertia == 0.0
    np.testing.assert_array_equal(r.labels.cpu().numpy(), np.arange(6)[::-1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "requires_grad"])
def test_kmeans_does_not_modify_inputs(layout, device):
    rng = np.random.default_rng(4)
    x = to_torch(rng.standard_normal((120, 5)), device, torch.float32)
    if layout == "transposed":
        x = x.t().contiguous().t()
    elif layout == "requires_grad":
        x.requires_grad_(True)
    init = x.detach()[:6].clone() + 0.01
    before_x, before_init = x.detach().clone(), init.clone()
    result = kmeans(x, 6, init=init)
    assert_unchanged(before_x, x.detach())
    assert_unchanged(before_init, init)
    assert not result.centroids.requires_grad
    expected = kmeans(before_x, 6, init=before_init)
    assert torch.equal(result.labels, expected.labels) and torch.equal(result.centroids, expected.centroids)
    for seed_kwargs in ({"init": "k-means++"}, {"init": "random"}):
        kmeans(x, 6, generator=torch.Generator().manual_seed(0), **seed_kwargs)
        assert_unchanged(before_x, x.detach())


@pytest.mark.parametrize("device", DEVICES)
def test_kmeans_rejects_bad_input(device):
    x = torch.randn(20, 3, device=device)
    nan = x.clone()
    nan[4, 1] = float("nan")
    cases = [
        ("k > N", lambda: kmeans(x, 21), ValueError, r"\bk\b"),
        ("k = 0", lambda: kmeans(x, 0), ValueError, r"\bk\b"),
        ("k = -2", lambda: kmeans(x, -2), ValueError, r"\bk\b"),
        ("k float", lambda: kmeans(x, 2.0), TypeError, r"\bk\b"),
        ("k bool", lambda: kmeans(x, True), TypeError, r"\bk\b"),
        ("NaN in x", lambda: kmeans(nan, 3), ValueError, r"\bx\b"),
        ("init shape", lambda: kmeans(x, 3, init=x[:4]), ValueError, r"init"),
        ("init D", lambda: kmeans(x, 3, init=x[:3, :2]), ValueError, r"init"),
        ("init NaN", lambda: kmeans(x, 3, init=nan[3:6]), ValueError, r"init"),
        ("unknown init", lambda: kmeans(x, 3, init="kmeans++"), ValueError, r"init"),
        ("x 1-D", lambda: kmeans(x[:, 0], 3), ValueError, r"\bx\b"),
        ("x 3-D", lambda: kmeans(x[None], 3), ValueError, r"\bx\b"),
        ("integer x", lambda: kmeans(torch.randint(0, 5, (20, 3), device=device), 3), ValueError, r"\bx\b"),
        ("half x", lambda: kmeans(x.half(), 3), ValueError, r"\bx\b"),
        ("x not a tensor", lambda: kmeans(x.cpu().numpy(), 3), TypeError, r"\bx\b"),
        ("negative tol", lambda: kmeans(x, 3, tol=-1e-3), ValueError, r"tol"),
        ("NaN tol", lambda: kmeans(x, 3, tol=float("nan")), ValueError, r"tol"),
        ("max_iter 0", lambda: kmeans(x, 3, max_iter=0), ValueError, r"max_iter"),
        ("max_iter float", lambda: kmeans(x, 3, max_iter=5.0), TypeError, r"max_iter"),
        ("generator", lambda: kmeans(x, 3, generator=0), TypeError, r"generator"),
    ]
    before = x.clone()
    for name, call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
        assert_unchanged(before, x)
    empty = torch.zeros(0, 3, device=device)
    with pytest.raises(ValueError, match=r"\bx\b|\bk\b"):
        kmeans(empty, 1)


# --------------------------------------------------------------------------------------------
# ClassTree against SciPy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_class_tree_matches_scipy(method, device):
    emb, labels = tree_data(7, per_class=4, seed=1, values=[3, 7, 42, -5, 11, 100, 8])
    # uneven class sizes
    emb, labels = torch.cat([emb, emb[:3] + 0.05]), torch.cat([labels, labels[:3]])
    tree = ClassTree.from_embeddings(emb.to(device), labels.to(device), method=method)
    classes, d_ref = reference_class_distances(emb, labels)
    z_ref, coph = scipy_tree(d_ref, method)
    assert torch.equal(tree.classes.cpu(), torch.unique(labels))
    np.testing.assert_array_equal(tree.classes.cpu().numpy(), classes)
    assert tuple(tree.class_distances.shape) == (7, 7)
    np.testing.assert_allclose(tree.class_distances.detach().cpu().numpy(), d_ref, rtol=1e-12, atol=1e-12)
    assert tree.linkage.dtype == torch.float64 and tuple(tree.linkage.shape) == (6, 4)
    np.testing.assert_array_equal(tree.linkage[:, [0, 1, 3]].numpy(), z_ref[:, [0, 1, 3]])
    np.testing.assert_allclose(tree.linkage[:, 2].numpy(), z_ref[:, 2], rtol=1e-12, atol=1e-12)
    # merge_distance: the cophenetic distance, for tensors of labels
    a = torch.tensor(classes).repeat_interleave(7)
    b = torch.tensor(classes).repeat(7)
    got = tree.merge_distance(a.to(device), b.to(device))
    assert tuple(got.shape) == (49,)
    np.testing.assert_allclose(got.cpu().numpy().reshape(7, 7), coph, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.diag(got.cpu().numpy().reshape(7, 7)), np.zeros(7))
    assert torch.equal(got, tree.merge_distance(b.to(device), a.to(device)).reshape(7, 7).T.reshape(-1))
    assert not bool((got.reshape(7, 7) + torch.eye(7, dtype=got.dtype, device=got.device) == 0).any())


@pytest.mark.parametrize("method", METHODS)
def test_class_tree_float32_embeddings(method):
    emb, labels = tree_data(6, per_class=5, seed=2)
    tree = ClassTree.from_embeddings(emb.float(), labels.int(), method=method)
    _, d_ref = reference_class_distances(emb.float().double(), labels)
    z_ref, coph = scipy_tree(d_ref, method)
    assert tree.class_distances.dtype == torch.float32
    np.testing.assert_allclose(tree.class_distances.double().numpy(), d_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(tree.linkage[:, [0, 1, 3]].numpy(), z_ref[:, [0, 1, 3]])
    np.testing.assert_allclose(tree.linkage[:, 2].numpy(), z_ref[:, 2], rtol=1e-5)
    c = tree.classes
    got = tree.merge_distance(c[:, None], c[None, :])  # broadcast
    assert tuple(got.shape) == (6, 6)
    np.testing.assert_allclose(got.double().numpy(), coph, rtol=1e-5, atol=1e-6)


def test_class_tree_merge_distance_label_forms():
    emb, labels = tree_data(4, seed=3, values=[3, 7, 42, 9])
    tree = ClassTree.from_embeddings(emb, labels)
    _, d_ref = reference_class_distances(emb, labels)
    _, coph = scipy_tree(d_ref)
    pos = {3: 0, 7: 1, 9: 2, 42: 3}
    for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        a = torch.tensor([3, 7, 42, 42, 9], dtype=dtype)
        b = torch.tensor([42, 7, 3, 9, 3], dtype=dtype)
        expected = [coph[pos[i], pos[j]] for i, j in zip(a.tolist(), b.tolist())]
        np.testing.assert_allclose(tree.merge_distance(a, b).numpy(), expected, rtol=1e-12)
    assert float(tree.merge_distance(torch.tensor([7]), torch.tensor([7]))) == 0.0


def test_class_tree_rejects_unknown_labels_and_methods():
    emb, labels = tree_data(4, seed=3, values=[3, 7, 42, 9])
    tree = ClassTree.from_embeddings(emb, labels)
    for a, b in (([3], [8]), ([100], [3]), ([-1], [3]), ([3, 7], [42, 43]), ([2], [3])):
        with pytest.raises(ValueError, match="labels|class"):
            tree.merge_distance(torch.tensor(a), torch.tensor(b))
    with pytest.raises(ValueError, match="labels"):
        tree.merge_distance(torch.tensor([3.0]), torch.tensor([7.0]))
    with pytest.raises(ValueError, match="method"):
        ClassTree.from_embeddings(emb, labels, method="nearest")
    with pytest.raises(TypeError, match="method"):
        ClassTree.from_embeddings(emb, labels, method=1)
    with pytest.raises(ValueError, match="labels"):
        ClassTree.from_embeddings(emb, labels[:-1])
    with pytest.raises(ValueError, match="labels"):
        ClassTree.from_embeddings(emb, labels.float())


def test_class_tree_single_class():
    emb = torch.randn(5, 3, dtype=torch.float64)
    labels = torch.full((5,), 13)
    tree = ClassTree.from_embeddings(emb, labels)
    _, d_ref = reference_class_distances(emb, labels)
    assert tree.classes.tolist() == [13]
    assert tuple(tree.linkage.shape) == (0, 4)
    np.testing.assert_allclose(tree.class_distances.numpy(), d_ref, rtol=1e-12)
    assert tree.merge_distance(torch.tensor([13, 13]), torch.tensor([13, 13])).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        tree.merge_distance(torch.tensor([13]), torch.tensor([12]))


def test_class_tree_two_classes():
    emb, labels = tree_data(2, seed=4, values=[0, 1])
    tree = ClassTree.from_embeddings(emb, labels)
    _, d_ref = reference_class_distances(emb, labels)
    assert tuple(tree.linkage.shape) == (1, 4)
    assert float(tree.merge_distance(torch.tensor([0]), torch.tensor([1]))) == pytest.approx(d_ref[0, 1], rel=1e-12)


# --------------------------------------------------------------------------------------------
# HierarchicalBatchSampler
# --------------------------------------------------------------------------------------------


def sampler_dataset(seed: int = 0):
    """10 classes (label values not 0..9) of 2 to 9 images, and a tree over them."""
    g = torch.Generator().manual_seed(seed)
    values = [2, 5, 11, 17, 23, 31, 40, 41, 57, 60]
    sizes = [9, 2, 6, 7, 3, 8, 5, 9, 4, 6]
    labels = torch.tensor([v for v, s in zip(values, sizes) for _ in range(s)])
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    means = torch.randn(10, 4, generator=g, dtype=torch.float64)
    pos = torch.searchsorted(torch.tensor(values), labels)
    emb = means[pos] + 0.3 * torch.randn(labels.numel(), 4, generator=g, dtype=torch.float64)
    return labels, ClassTree.from_embeddings(emb, labels), dict(zip(values, sizes))


def check_batch(batch: List[int], labels: torch.Tensor, tree: ClassTree, sizes, l_prime: int, m: int, t: int) -> List[int]:
    """The batch's composition; returns its drawn classes (positions)."""
    assert isinstance(batch, list) and all(isinstance(i, int) for i in batch)
    assert len(batch) == t * m * l_prime
    assert all(0 <= i < labels.numel() for i in batch)
    classes = tree.classes.tolist()
    chunks = [batch[i : i + t] for i in range(0, len(batch), t)]
    chunk_classes = []
    for chunk in chunks:
        values = {int(labels[i]) for i in chunk}
        assert len(values) == 1, f"a class's t images are consecutive: {values}"
        value = values.pop()
        chunk_classes.append(classes.index(value))
        if sizes[value] >= t:
            assert len(set(chunk)) == t, f"repeated index in class {value} of {sizes[value]} images"
        else:
            assert len(set(chunk)) <= sizes[value]
    assert len(set(chunk_classes)) == l_prime * m, "l' * m distinct classes"
    distinct_labels = {int(labels[i]) for i in batch}
    assert len(distinct_labels) == l_prime * m
    for value in distinct_labels:
        assert sum(int(labels[i]) == value for i in batch) == t
    drawn = chunk_classes[:l_prime]
    assert chunk_classes == reference_batch_classes(drawn, tree.class_distances, m)
    return drawn


@pytest.mark.parametrize("l_prime,m,t", [(2, 3, 4), (1, 5, 3), (3, 2, 2), (5, 2, 1), (1, 1, 5), (10, 1, 2)], ids=str)
def test_sampler_batch_composition(l_prime, m, t):
    labels, tree, sizes = sampler_dataset()
    sampler = HierarchicalBatchSampler(labels, tree, l_prime, m, t, num_batches=12, generator=torch.Generator().manual_seed(1))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 12
    drawn_sets = set()
    for batch in batches:
        drawn_sets.add(tuple(check_batch(batch, labels, tree, sizes, l_prime, m, t)))
    if l_prime < 10:
        assert len(drawn_sets) > 1, "the drawn classes never change"


def test_sampler_neighbours_on_a_known_tree():
    """Class means on a line: the nearest classes of class 0 are 1, 2, ...; those of 9 are 8, 7."""
    g = torch.Generator().manual_seed(0)
    means = torch.arange(10, dtype=torch.float64).pow(1.5)[:, None] * torch.ones(1, 2, dtype=torch.float64)
    labels = torch.arange(10).repeat_interleave(4)
    emb = means[labels] + 0.01 * torch.randn(40, 2, generator=g, dtype=torch.float64)
    tree = ClassTree.from_embeddings(emb, labels)
    sampler = HierarchicalBatchSampler(labels, tree, 1, 3, 2, num_batches=40, generator=torch.Generator().manual_seed(2))
    seen = set()
    for batch in sampler:
        classes = [int(labels[i]) for i in batch[::2]]
        c = classes[0]
        expected = sorted(range(10), key=lambda j: (abs(means[j, 0] - means[c, 0]), j))[:3]
        assert classes == expected, (c, classes)
        seen.add(c)
    assert len(seen) >= 5


def test_sampler_replacement_for_small_classes():
    labels = torch.tensor([0] * 2 + [1] * 6 + [2] * 1 + [3] * 5)
    emb = torch.randn(14, 3, dtype=torch.float64) + labels[:, None].double()
    tree = ClassTree.from_embeddings(emb, labels)
    sampler = HierarchicalBatchSampler(labels, tree, 2, 2, 4, num_batches=5, generator=torch.Generator().manual_seed(0))
    for batch in sampler:
        for start in range(0, 16, 4):
            chunk = batch[start : start + 4]
            value = int(labels[chunk[0]])
            assert all(int(labels[i]) == value for i in chunk)
            if value in (0, 2):
                assert len(set(chunk)) <= (2 if value == 0 else 1)  # with replacement
            else:
                assert len(set(chunk)) == 4


def test_sampler_deterministic_for_a_generator_seed():
    labels, tree, _ = sampler_dataset()

    def batches(seed):
        return list(HierarchicalBatchSampler(labels, tree, 2, 2, 3, num_batches=6, generator=torch.Generator().manual_seed(seed)))

    assert batches(5) == batches(5)
    assert batches(5) != batches(6)
    # labels given as a list of ints: the same batches
    as_list = list(HierarchicalBatchSampler(labels.tolist(), tree, 2, 2, 3, num_batches=6, generator=torch.Generator().manual_seed(5)))
    assert as_list == batches(5)


def test_sampler_len_and_dataloader():
    labels, tree, _ = sampler_dataset()
    sampler = HierarchicalBatchSampler(labels, tree, 2, 2, 3, generator=torch.Generator().manual_seed(0))
    assert sampler.batch_size == 12
    assert len(sampler) == labels.numel() // 12 == len(list(sampler))
    sampler = HierarchicalBatchSampler(labels, tree, 5, 2, 9, generator=torch.Generator().manual_seed(0))
    assert len(sampler) == 1  # N < the batch size: one batch
    x = torch.randn(labels.numel(), 3)
    dataset = torch.utils.data.TensorDataset(x, labels)
    sampler = HierarchicalBatchSampler(labels, tree, 2, 3, 2, num_batches=4, generator=torch.Generator().manual_seed(3))
    expected = list(HierarchicalBatchSampler(labels, tree, 2, 3, 2, num_batches=4, generator=torch.Generator().manual_seed(3)))
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    got = list(loader)
    assert len(got) == 4
    for (xb, yb), indices in zip(got, expected):
        assert tuple(xb.shape) == (12, 3) and tuple(yb.shape) == (12,)
        assert torch.equal(xb, x[indices]) and torch.equal(yb, labels[indices])
        assert torch.unique(yb).numel() == 6


def test_sampler_rejects_bad_input():
    labels, tree, _ = sampler_dataset()
    cases = [
        ("l' * m > P", lambda: HierarchicalBatchSampler(labels, tree, 4, 3, 2), ValueError, r"l_prime|\bm\b"),
        ("t = 0", lambda: HierarchicalBatchSampler(labels, tree, 2, 2, 0), ValueError, r"\bt\b"),
        ("t float", lambda: HierarchicalBatchSampler(labels, tree, 2, 2, 2.0), TypeError, r"\bt\b"),
        ("m = 0", lambda: HierarchicalBatchSampler(labels, tree, 2, 0, 2), ValueError, r"\bm\b"),
        ("l' = 0", lambda: HierarchicalBatchSampler(labels, tree, 0, 2, 2), ValueError, r"l_prime"),
        ("num_batches 0", lambda: HierarchicalBatchSampler(labels, tree, 2, 2, 2, num_batches=0), ValueError, r"num_batches"),
        ("a class without images", lambda: HierarchicalBatchSampler(labels[labels != 23], tree, 2, 2, 2), ValueError, r"labels|class"),
        ("a label not in the tree", lambda: HierarchicalBatchSampler(torch.cat([labels, torch.tensor([99])]), tree, 2, 2, 2), ValueError, r"labels"),
        ("2-D labels", lambda: HierarchicalBatchSampler(labels[None], tree, 2, 2, 2), ValueError, r"labels"),
        ("not a tree", lambda: HierarchicalBatchSampler(labels, "tree", 2, 2, 2), TypeError, r"tree"),
        ("generator", lambda: HierarchicalBatchSampler(labels, tree, 2, 2, 2, generator=1), TypeError, r"generator"),
    ]
    for name, call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


# --------------------------------------------------------------------------------------------
# hierarchical_triplet_loss against the brute force
# --------------------------------------------------------------------------------------------


def loss_setup(n: int, p_tree: int = 6, p_batch: int = 4, dim: int = 5, seed: int = 0, dtype=torch.float64, device="cpu"):
    """A tree over p_tree classes (float64), and a batch of n embeddings whose labels come from
    p_batch of them (every position in the margin table matters); the reference margins."""
    tree_emb, tree_labels = tree_data(p_tree, per_class=5, dim=dim, scale=0.3, seed=seed)
    tree = ClassTree.from_embeddings(tree_emb, tree_labels)
    classes, alpha = reference_hierarchical_margins(tree_emb, tree_labels, 0.1)
    g = torch.Generator().manual_seed(seed + 100)
    subset = torch.tensor(classes)[torch.randperm(p_tree, generator=g)[:p_batch]]
    labels = subset[torch.randint(0, p_batch, (n,), generator=g)]
    emb = (0.8 * torch.randn(n, dim, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)
    return tree, emb, labels.to(device), classes, alpha, tree_emb, tree_labels


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("n", [2, 7, 9, 16, 17, 33])
def test_loss_matches_brute_force(n, dtype, device):
    tree, emb, labels, classes, alpha, _, _ = loss_setup(n, seed=n, dtype=dtype, device=device)
    if n == 2:
        labels = labels.clone()
        labels[1] = labels[0]  # one class: no valid triplet
    # the tree's margins agree with the reference ones (beta + cophenetic - spread)
    np.testing.assert_allclose(tree.margins(0.1).numpy(), alpha, rtol=1e-12, atol=1e-12)
    x = emb.detach().clone().requires_grad_(True)
    loss = hierarchical_triplet_loss(x, labels, tree, beta=0.1)
    assert loss.dtype == dtype and loss.shape == () and loss.device == x.device
    e64 = emb.detach().cpu().double().requires_grad_(True)
    expected = reference_hierarchical_triplet_loss(e64, labels.cpu(), classes, alpha)
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=tol, abs=tol)
    z = hinge_arguments(emb, labels, classes, alpha)
    if z.size:
        assert (z > 0).any() and (z < 0).any(), "the case must have active and inactive hinges"
        assert np.abs(z).min() > 1e-6, "a hinge at its kink: pick another seed"
    loss.backward()
    expected.backward()
    assert x.grad.dtype == dtype
    assert_close_scaled(x.grad, e64.grad, 1e-10 if dtype == torch.float64 else 1e-4, "gradient")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.7, -0.3, 2])
def test_loss_beta(beta, device):
    tree, emb, labels, classes, _, tree_emb, tree_labels = loss_setup(12, seed=3, device=device)
    _, alpha = reference_hierarchical_margins(tree_emb, tree_labels, beta)
    got = hierarchical_triplet_loss(emb, labels, tree, beta=beta)
    expected = reference_hierarchical_triplet_loss(emb.cpu(), labels.cpu(), classes, alpha)
    assert float(got) == pytest.approx(float(expected.detach()), rel=1e-11, abs=1e-12)
    if beta == 0.1:
        assert float(hierarchical_triplet_loss(emb, labels, tree)) == float(got)  # the default


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32, torch.int16], ids=str)
def test_loss_label_dtypes(label_dtype, device):
    tree, emb, labels, classes, alpha, _, _ = loss_setup(10, seed=4, device=device)
    got = hierarchical_triplet_loss(emb, labels.to(label_dtype), tree)
    expected = reference_hierarchical_triplet_loss(emb.cpu(), labels.cpu(), classes, alpha)
    assert float(got) == pytest.approx(float(expected.detach()), rel=1e-11)


@pytest.mark.parametrize("device", DEVICES)
def test_loss_gradcheck(device):
    for seed in range(20):
        tree, emb, labels, classes, alpha, _, _ = loss_setup(7, p_batch=3, dim=3, seed=seed, device=device)
        z = hinge_arguments(emb, labels, classes, alpha)
        if z.size and np.abs(z).min() > 1e-2 and (z > 0).any() and (z < 0).any():
            break
    else:
        pytest.fail("no seed without near-kink hinges")
    x = emb.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: hierarchical_triplet_loss(e, labels, tree, beta=0.1), (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_loss_half_dtypes(dtype, device):
    tree, emb, labels, classes, alpha, _, _ = loss_setup(24, seed=5, dtype=dtype, device=device)
    x = emb.detach().clone().requires_grad_(True)
    loss = hierarchical_triplet_loss(x, labels, tree)
    assert loss.dtype == dtype
    e64 = emb.detach().cpu().double().requires_grad_(True)  # the rounded inputs
    expected = reference_hierarchical_triplet_loss(e64, labels.cpu(), classes, alpha)
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=tol)
    loss.backward()
    expected.backward()
    assert x.grad.dtype == dtype and bool(torch.isfinite(x.grad).all())
    g, e = x.grad.double().cpu(), e64.grad
    cosine = float((g * e).sum() / (g.norm() * e.norm()))
    assert cosine > (0.99 if dtype == torch.float16 else 0.95), cosine
    assert float(g.norm()) == pytest.approx(float(e.norm()), rel=5 * tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["one_class", "all_distinct", "single", "empty"])
def test_loss_without_valid_triplet_is_zero(case, device):
    tree_emb, tree_labels = tree_data(6, seed=2)
    tree = ClassTree.from_embeddings(tree_emb, tree_labels)
    classes = tree.classes
    n = {"one_class": 6, "all_distinct": 6, "single": 1, "empty": 0}[case]
    labels = {"one_class": classes[2].repeat(6), "all_distinct": classes[torch.randperm(6)], "single": classes[:1], "empty": classes[:0]}[case]
    x = torch.randn(n, 4, dtype=torch.float64, device=device, requires_grad=True)
    loss = hierarchical_triplet_loss(x, labels.to(device), tree)
    assert loss.shape == () and float(loss.detach()) == 0.0
    loss.backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and bool((x.grad == 0).all())
    # a tree of one class, a batch of that class
    one = ClassTree.from_embeddings(torch.randn(4, 4, dtype=torch.float64), torch.full((4,), 7))
    y = torch.randn(5, 4, device=device, requires_grad=True)
    loss = hierarchical_triplet_loss(y, torch.full((5,), 7, device=device), one)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert bool((y.grad == 0).all())


def test_loss_identical_across_thread_counts():
    tree, emb, labels, _, _, _, _ = loss_setup(70, p_batch=5, seed=6, dtype=torch.float32)
    d = pyvision_ops.pairwise_distance(emb, None, "euclidean")
    positions = tree.positions(labels)
    margins = tree.margins(0.1).float()
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            x = emb.detach().clone().requires_grad_(True)
            loss = hierarchical_triplet_loss(x, labels, tree)
            loss.backward()
            value = ops._hierarchical_triplet_loss(d, positions, margins)
            back = ops._hierarchical_triplet_loss_backward(torch.tensor(0.7), d, positions, margins)
            results.append((loss.detach(), x.grad, value, back))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b), "thread counts give different bits"


@pytest.mark.parametrize("device", DEVICES)
def test_loss_rejects_bad_input(device):
    tree, emb, labels, _, _, _, _ = loss_setup(8, device=device)
    unknown = labels.clone()
    unknown[3] = 1000
    cases = [
        ("labels short", lambda: hierarchical_triplet_loss(emb, labels[:7], tree), r"labels"),
        ("labels 2-D", lambda: hierarchical_triplet_loss(emb, labels[None], tree), r"labels"),
        ("label not in the tree", lambda: hierarchical_triplet_loss(emb, unknown, tree), r"labels"),
        ("float labels", lambda: hierarchical_triplet_loss(emb, labels.double(), tree), r"labels"),
        ("embeddings 1-D", lambda: hierarchical_triplet_loss(emb[:, 0], labels, tree), r"embeddings"),
        ("embeddings 3-D", lambda: hierarchical_triplet_loss(emb[None], labels, tree), r"embeddings"),
        ("beta NaN", lambda: hierarchical_triplet_loss(emb, labels, tree, beta=float("nan")), r"beta"),
        ("beta inf", lambda: hierarchical_triplet_loss(emb, labels, tree, beta=float("inf")), r"beta"),
    ]
    for name, call, match in cases:
        expect_error(call, [emb, labels, unknown], match)
    with pytest.raises(TypeError, match="tree"):
        hierarchical_triplet_loss(emb, labels, None)
    with pytest.raises(TypeError, match="labels"):
        hierarchical_triplet_loss(emb, labels.tolist(), tree)
    with pytest.raises(ValueError, match="beta"):
        hierarchical_triplet_loss(emb, labels, tree, beta="0.1")


# --------------------------------------------------------------------------------------------
# the fused op against the per-entry math
# --------------------------------------------------------------------------------------------


def raw_inputs(n: int, p: int, dtype=torch.float64, device="cpu", seed: int = 0, integer: bool = False):
    """Random (asymmetric) distances (N, N), class positions in [0, p) (every one present when
    n >= p), margins (P, P): the op takes any such matrices."""
    g = torch.Generator().manual_seed(seed)
    if integer:  # exact ties d_ap == d_an - margin
        d = torch.randint(0, 6, (n, n), generator=g).double()
        margins = torch.randint(-2, 3, (p, p), generator=g).double()
    else:
        d = torch.rand(n, n, generator=g, dtype=torch.float64) * 3
        margins = torch.randn(p, p, generator=g, dtype=torch.float64)
    classes = torch.randint(0, p, (n,), generator=g)
    if n >= p:
        classes[torch.randperm(n, generator=g)[:p]] = torch.arange(p)
    return d.to(device=device, dtype=dtype), classes.to(device), margins.to(device=device, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("n,p", [(1, 1), (3, 2), (7, 3), (8, 2), (9, 4), (15, 5), (16, 3), (17, 6), (31, 7), (40, 3)], ids=str)
def test_fused_op_matches_per_entry_math(n, p, dtype, device):
    d, classes, margins = raw_inputs(n, p, dtype, device, seed=n * 31 + p)
    value, grad_ref = reference_hierarchical_op(d, classes, margins, grad=0.7)
    got = ops._hierarchical_triplet_loss(d, classes, margins)
    assert got.shape == () and got.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert float(got) == pytest.approx(value, rel=tol, abs=tol)
    back = ops._hierarchical_triplet_loss_backward(torch.tensor(0.7, dtype=dtype, device=device), d, classes, margins)
    assert tuple(back.shape) == (n, n) and back.dtype == dtype
    # counts / (2Z): integers times one scale (exact up to the scale's rounding)
    np.testing.assert_allclose(back.cpu().double().numpy(), grad_ref, rtol=1e-14 if dtype == torch.float64 else 1e-6, atol=0)
    # through autograd: the same gradient for the distances
    dd = d.detach().clone().requires_grad_(True)
    (0.7 * ops._hierarchical_triplet_loss(dd, classes, margins)).backward()
    torch.testing.assert_close(dd.grad.cpu().double(), torch.from_numpy(grad_ref), rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_op_ties_are_inactive(device):
    """Integer distances and margins: many hinges exactly 0, which count as inactive (the
    derivative's rule is d_ap - e_an > 0 for both signs)."""
    d, classes, margins = raw_inputs(23, 4, device=device, seed=1, integer=True)
    value, grad_ref = reference_hierarchical_op(d, classes, margins)
    c, dn, mn = classes.cpu().numpy(), d.cpu().numpy(), margins.cpu().numpy()
    zeros = sum(dn[a, p] - dn[a, q] + mn[c[a], c[q]] == 0 for a, p, q in reference_triplets(c))
    assert zeros > 10, "the case must have exact ties"
    assert float(ops._hierarchical_triplet_loss(d, classes, margins)) == pytest.approx(value, rel=1e-14)
    back = ops._hierarchical_triplet_loss_backward(torch.tensor(1.0, dtype=torch.float64, device=device), d, classes, margins)
    np.testing.assert_array_equal(back.cpu().numpy(), grad_ref)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_op_half_and_strided_inputs(device):
    d, classes, margins = raw_inputs(19, 4, device=device, seed=2)
    value, grad_ref = reference_hierarchical_op(d, classes, margins)
    t = d.t().contiguous().t()  # the same values, column-major
    assert float(ops._hierarchical_triplet_loss(t, classes, margins)) == pytest.approx(value, rel=1e-12)
    for dtype, tol in ((torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
        dh, mh = d.to(dtype), margins.to(dtype)
        v, g = reference_hierarchical_op(dh, classes, mh)
        got = ops._hierarchical_triplet_loss(dh, classes, mh)
        assert got.dtype == dtype and float(got) == pytest.approx(v, rel=tol)
        back = ops._hierarchical_triplet_loss_backward(torch.tensor(1.0, dtype=dtype, device=device), dh, classes, mh)
        assert back.dtype == dtype
        np.testing.assert_allclose(back.cpu().double().numpy(), g, rtol=tol, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_op_nan_propagates(device):
    d, classes, margins = raw_inputs(9, 3, device=device, seed=3)
    a = 0
    p = int(torch.nonzero((classes == classes[a]) & (torch.arange(9, device=device) != a))[0])
    d[a, p] = float("nan")
    assert math.isnan(float(ops._hierarchical_triplet_loss(d, classes, margins)))


# --------------------------------------------------------------------------------------------
# the shared op contract for the two fused ops
# --------------------------------------------------------------------------------------------


def _hierarchical_samples(device, requires_grad):
    samples = []
    for i, (n, p, dtype, layout) in enumerate(
        [(9, 3, torch.float32, "contiguous"), (17, 4, torch.float64, "transposed"), (12, 2, torch.float64, "contiguous"), (10, 3, torch.float16, "contiguous")]
    ):
        d, classes, margins = raw_inputs(n, p, dtype, device, seed=40 + i)
        if layout == "transposed":
            d = d.t().contiguous().t()
        samples.append(((d.requires_grad_(requires_grad), classes, margins), f"n{n}-p{p}-{dtype}-{layout}"))
    # a real batch: euclidean distances and a tree's margins
    tree, emb, labels, _, _, _, _ = loss_setup(11, seed=9, device=device)
    d = pyvision_ops.pairwise_distance(emb, None, "euclidean")
    samples.append(((d.requires_grad_(requires_grad), tree.positions(labels), tree.margins(0.1).to(device)), "tree-batch"))
    return samples


class TestHierarchicalTripletLossContract(OpContract):
    op_name = "_hierarchical_triplet_loss"
    rtol = 0.0  # a fixed-order reduction: compiled and eager give the same bits

    def samples(self, device):
        return [Sample(args, name) for args, name in _hierarchical_samples(device, True)]

    def empty_cases(self, device):
        margins = torch.randn(2, 2, device=device)
        d = torch.rand(4, 4, device=device, requires_grad=True)
        return [
            EmptyCase(Sample((torch.zeros(0, 0, device=device, requires_grad=True), torch.zeros(0, dtype=torch.int64, device=device), margins)), [()]),
            EmptyCase(Sample((d, torch.ones(4, dtype=torch.int64, device=device), margins), "one class"), [()]),
            EmptyCase(Sample((d, torch.tensor([0, 1, 2, 3], device=device), torch.randn(4, 4, device=device)), "all distinct"), [()]),
        ]

    def bad_inputs(self, device):
        d, classes, margins = raw_inputs(6, 3, torch.float32, device)
        return [
            BadInput("non-square distances", (d[:5], classes, margins), r"distances"),
            BadInput("1-D distances", (d[0], classes, margins), r"distances"),
            BadInput("integer distances", (d.long(), classes, margins), r"distances"),
            BadInput("class out of range", (d, torch.tensor([0, 1, 2, 3, 0, 1], device=device), margins), r"classes"),
            BadInput("negative class", (d, torch.tensor([0, 1, -1, 2, 0, 1], device=device), margins), r"classes"),
            BadInput("int32 classes", (d, classes.int(), margins), r"classes"),
            BadInput("short classes", (d, classes[:5], margins), r"classes"),
            BadInput("non-square margins", (d, classes, margins[:2]), r"margins"),
            BadInput("1-D margins", (d, classes, margins[0]), r"margins"),
            BadInput("integer margins", (d, classes, margins.long()), r"margins"),
        ]


class TestHierarchicalTripletLossBackwardContract(OpContract):
    op_name = "_hierarchical_triplet_loss_backward"
    differentiable = False
    upstream_argument = 0
    rtol = 0.0

    def samples(self, device):
        samples = []
        for (d, classes, margins), name in _hierarchical_samples(device, False):
            grad = torch.randn((), dtype=d.dtype, device=device)
            samples.append(Sample((grad, d, classes, margins), name))
        return samples

    def empty_cases(self, device):
        margins = torch.randn(2, 2, device=device)
        return [EmptyCase(Sample((torch.ones((), device=device), torch.zeros(0, 0, device=device), torch.zeros(0, dtype=torch.int64, device=device), margins)), [(0, 0)])]

    def bad_inputs(self, device):
        d, classes, margins = raw_inputs(6, 3, torch.float32, device)
        g = torch.ones((), device=device)
        return [
            BadInput("grad of two elements", (torch.ones(2, device=device), d, classes, margins), r"grad"),
            BadInput("non-square distances", (g, d[:, :4], classes, margins), r"distances"),
            BadInput("class out of range", (g, d, torch.tensor([0, 1, 2, 5, 0, 1], device=device), margins), r"classes"),
            BadInput("int32 classes", (g, d, classes.int(), margins), r"classes"),
            BadInput("non-square margins", (g, d, classes, margins[:, :2]), r"margins"),
        ]


# --------------------------------------------------------------------------------------------
# EmbeddingNet
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kwargs,shape",
    [({}, (5, 1, 8, 8)), ({"in_channels": 3, "embedding_dim": 16, "width": 4}, (3, 3, 7, 9)), ({"embedding_dim": 2, "width": 2}, (2, 1, 2, 2))],
    ids=["defaults-8x8", "rgb-7x9", "tiny-2x2"],
)
def test_embedding_net_shape_and_unit_norm(kwargs, shape, device):
    net = EmbeddingNet(**kwargs).to(device)
    images = torch.randn(*shape, device=device)
    before = images.clone()
    out = net(images)
    dim = kwargs.get("embedding_dim", 64)
    assert tuple(out.shape) == (shape[0], dim) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(shape[0], device=device), rtol=1e-5, atol=1e-5)
    assert_unchanged(before, images)
    net.eval()
    with torch.no_grad():
        a, b = net(images), net(images)
    assert torch.equal(a, b)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(shape[0], device=device), rtol=1e-5, atol=1e-5)


def test_embedding_net_defaults():
    net = EmbeddingNet()
    assert net.in_channels == 1 and net.embedding_dim == 64
    assert net.head.out_features == 64 and net.head.in_features == 64  # 2 * width
    assert sum(p.numel() for p in net.parameters()) > 0


@pytest.mark.parametrize("device", DEVICES)
def test_embedding_net_gradients_flow(device):
    net = EmbeddingNet(embedding_dim=8, width=4).to(device).double()
    images = torch.randn(12, 1, 8, 8, dtype=torch.float64, device=device, requires_grad=True)
    labels = torch.arange(12, device=device) % 3
    out = net(images)
    tree = ClassTree.from_embeddings(out.detach(), labels)
    loss = hierarchical_triplet_loss(out, labels, tree) + (out * torch.randn_like(out)).sum()
    loss.backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert bool(torch.isfinite(param.grad).all()), name
        assert float(param.grad.abs().sum()) > 0, f"no gradient reaches {name}"
    assert images.grad is not None and float(images.grad.abs().sum()) > 0


def test_embedding_net_gradcheck():
    torch.manual_seed(0)
    net = EmbeddingNet(embedding_dim=3, width=2).double().eval()
    images = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(net, (images,), fast_mode=True)


def test_embedding_net_rejects_bad_input():
    net = EmbeddingNet(in_channels=1, embedding_dim=8, width=4)
    for bad in (torch.randn(1, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(8, 8), torch.randn(1, 1, 1, 8, 8)):
        with pytest.raises(ValueError, match="images"):
            net(bad)
    with pytest.raises(ValueError):  # smaller than the 2x2 pooling window
        net(torch.randn(2, 1, 1, 8))
    for kwargs in ({"in_channels": 0}, {"embedding_dim": -1}, {"width": 0}, {"width": 2.5}, {"embedding_dim": True}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            EmbeddingNet(**kwargs)


# --------------------------------------------------------------------------------------------
# CUDA only
# --------------------------------------------------------------------------------------------


@needs_cuda
def test_cuda_kmeans_matches_cpu():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 16))
    init = x[:32].copy()
    cpu = kmeans(to_torch(x, "cpu"), 32, init=to_torch(init, "cpu"), max_iter=10, tol=0.0)
    gpu = kmeans(to_torch(x, "cuda"), 32, init=to_torch(init, "cuda"), max_iter=10, tol=0.0)
    assert gpu.centroids.device.type == "cuda" and gpu.labels.device.type == "cuda"
    assert gpu.n_iter == cpu.n_iter
    assert gpu.inertia == pytest.approx(cpu.inertia, rel=1e-9)
    # a CUDA generator for the seeding
    g = torch.Generator(device="cuda").manual_seed(0)
    a = kmeans(to_torch(x, "cuda"), 8, generator=g)
    b = kmeans(to_torch(x, "cuda"), 8, generator=torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(a.centroids, b.centroids)


@needs_cuda
def test_cuda_loss_matches_cpu_and_rejects_mixed_devices():
    tree, emb, labels, _, _, _, _ = loss_setup(40, seed=1)
    x_cpu = emb.clone().requires_grad_(True)
    x_gpu = emb.cuda().requires_grad_(True)
    l_cpu = hierarchical_triplet_loss(x_cpu, labels, tree)
    l_gpu = hierarchical_triplet_loss(x_gpu, labels.cuda(), tree)
    assert float(l_gpu.detach()) == pytest.approx(float(l_cpu.detach()), rel=1e-12)
    l_cpu.backward()
    l_gpu.backward()
    torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad, rtol=1e-10, atol=1e-12)
    expect_error(lambda: hierarchical_triplet_loss(x_gpu.detach(), labels, tree), [labels], r"labels|device")
    # a tree built on the GPU
    tree_gpu = ClassTree.from_embeddings(emb.cuda(), labels.cuda())
    tree_cpu = ClassTree.from_embeddings(emb, labels)
    torch.testing.assert_close(tree_gpu.linkage, tree_cpu.linkage)
    d, classes, margins = raw_inputs(30, 4, seed=4)
    ref, _ = reference_hierarchical_op(d, classes, margins)
    run = [float(ops._hierarchical_triplet_loss(d.cuda(), classes.cuda(), margins.cuda())) for _ in range(3)]
    assert run[0] == run[1] == run[2] == pytest.approx(ref, rel=1e-12)
    expect_error(lambda: ops._hierarchical_triplet_loss(d.cuda(), classes, margins.cuda()), [d, classes], r"classes|device")


# ------------------------------------------------------------------------------------------------
# the example, in a short mode
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hierarchical", [False, True], ids=["batch_hard", "hierarchical"])
def test_example_runs_and_writes_its_picture(tmp_path, hierarchical: bool) -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "metric_learning.py"
    out = tmp_path / "pca.png"
    command = [sys.executable, str(script), "--epochs", "1", "--steps-per-epoch", "3", "--out", str(out)]
    if hierarchical:
        command.append("--hierarchical")
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "before training: held-out recall@1" in run.stdout
    assert "after 3 steps" in run.stdout
    assert out.exists() and out.stat().st_size > 10_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------
# the fused assignment step
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (17, 3, 5), (300, 64, 256), (257, 7, 300), (40, 129, 33)], ids=str)
def test_kmeans_assign_is_the_nearest_centroid(shape, dtype, device):
    """_kmeans_assign against a float64 brute force: the nearest centroid (the first of equally
    near ones) and the exact squared distance to it; rows with near ties, duplicate centroids
    (exact ties) and rows sitting on a centroid far from the origin included."""
    n, d, k = shape
    g = torch.Generator().manual_seed(n * 31 + k)
    c = torch.randn(k, d, generator=g, dtype=torch.float64) + 1e3
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 1e3
    if k > 2:
        c[2] = c[1]  # exact tie: index 1 must win
        x[: min(n, 3)] = c[1]
    xd, cd = x.to(dtype).to(device), c.to(dtype).to(device)
    labels, dist = torch.ops.pyvision_ops._kmeans_assign(xd, cd)
    ref = ((xd.double().cpu()[:, None, :] - cd.double().cpu()[None, :, :]) ** 2).sum(-1)
    best = ref.min(1).values
    chosen = ref.gather(1, labels.cpu()[:, None])[:, 0]
    # the chosen centroid is a nearest one (within the rounding of the inputs' dtype) ...
    slack = 1e-12 if dtype == torch.float64 else 1e-4
    assert bool((chosen <= best + slack * (1 + best)).all())
    # ... and exactly the brute force's first nearest wherever the nearest is separated
    second = ref.sort(1).values[:, 1] if k > 1 else torch.full_like(best, float("inf"))
    separated = (second - best) > 1e-3 * (1 + best)
    assert torch.equal(labels.cpu()[separated], ref.argmin(1)[separated])
    if k > 2:
        assert labels[: min(n, 3)].tolist() == [1] * min(n, 3)
        assert bool((dist[: min(n, 3)] == 0).all())
    torch.testing.assert_close(dist.double().cpu(), chosen, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)


def test_kmeans_assign_rejects_bad_input():
    op = torch.ops.pyvision_ops._kmeans_assign
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="centroids"):
        op(x, torch.randn(0, 3))
    with pytest.raises(ValueError, match="centroids"):
        op(x, torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="dtype"):
        op(x, torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x"):
        op(torch.randn(5), torch.randn(2, 5))


class TestKmeansAssignContract(OpContract):
    """The fused assignment step of kmeans (labels and squared distances; not differentiable)."""

    op_name = "_kmeans_assign"
    differentiable = False
    rtol = 0.0  # each row's distances in a fixed order: compiled and eager give the same bits

    def samples(self, device):
        g = torch.Generator().manual_seed(5)
        x, c = torch.randn(70, 5, generator=g), torch.randn(9, 5, generator=g)
        far = torch.randn(33, 129, generator=g, dtype=torch.float64) + 1e3
        return [
            Sample((x.to(device), c.to(device)), "float32"),
            Sample((x.double().to(device), c.double().to(device)), "float64"),
            Sample((far.to(device), far[:7].clone().to(device)), "rows on their centroids, far from 0"),
            Sample((x[:, :1].to(device), c[:1, :1].to(device)), "one centroid, D = 1"),
        ]

    def empty_cases(self, device):
        return [EmptyCase(Sample((torch.zeros(0, 3, device=device), torch.randn(2, 3, device=device))), [(0,), (0,)])]

    def bad_inputs(self, device):
        x = torch.randn(5, 3, device=device)
        return [
            BadInput("no centroid", (x, torch.randn(0, 3, device=device)), r"centroids"),
            BadInput("centroids of another D", (x, torch.randn(2, 4, device=device)), r"centroids"),
            BadInput("3-D centroids", (x, torch.randn(2, 3, 1, device=device)), r"centroids"),
            BadInput("1-D x", (torch.randn(5, device=device), torch.randn(2, 5, device=device)), r"x must"),
            BadInput("integer x", (x.long(), torch.randn(2, 3, device=device).long()), r"x must"),
            BadInput("dtypes differ", (x, torch.randn(2, 3, dtype=torch.float64, device=device)), r"x and centroids"),
        ]
