"""Benchmark workloads of ``pyvision_ops.metric_learning``: k-means and the hierarchical triplet
loss. CPU float32 unless a row says CUDA.

References, as a user without this library would write them:

* ``kmeans``: scikit-learn's ``KMeans(algorithm="lloyd", n_init=1)`` from the same initial
  centroids, ``tol=0`` so both run the same 10 iterations, on the machine's threads (scikit-learn's
  OpenMP default: every core); on CUDA a plain-torch Lloyd step (chunked ``cdist`` + ``argmin`` +
  ``index_add_``). The data are a mixture of K overlapping Gaussian clusters (points and centres
  both of spread 1), so that the labels still change in every one of the 10 iterations. Float32
  rounding then decides a few near-ties differently on the two sides (and the difference carries
  into later iterations), so the check allows 0.1% of the labels to differ and compares the
  inertia (relative 1e-4), the centroids and the number of iterations.
* ``hierarchical_triplet_loss``: the plain-torch composition over the N x N x N triplet tensor
  (``cdist``, the dynamic margin gathered per (anchor, negative), masks, ``relu``, sum / 2Z), the
  way the loss is written from its definition. The batch is the sampler's shape: l'=5 classes
  drawn, m=8 classes per draw, t=8 images per class (N=320), D=128, unit-norm embeddings.

scikit-learn is optional: without it the k-means row is left out and its note says so.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Tuple

import torch

from pyvision_ops.bench.workloads.core import (
    MODE_AUTOGRAD_GRAD,
    MODE_BACKWARD,
    MODE_FORWARD,
    CheckFailed,
    Inputs,
    Workload,
    assert_close,
    library,
    register,
    sum_backward,
)

__all__: list = []

FAMILY = "metric_learning"

KMEANS_SHAPE = (100_000, 64, 256)
KMEANS_ITERATIONS = 10
KMEANS_CUDA_SHAPE = (1_000_000, 128, 1024)
HTL_SHAPE = (5, 8, 8, 128)  # l', m, t, D

SPEED_GOALS = {
    "kmeans": "goal >= 1.0x scikit-learn",
    "kmeans cuda": "goal < 100 ms (H200)",
    "hierarchical": "goal >= 10x the N^3 composition",
}


def _clustered(n: int, dim: int, k: int, seed: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn((k, dim), generator=generator)
    members = torch.randint(k, (n,), generator=generator)
    x = centres[members] + torch.randn((n, dim), generator=generator)
    first = torch.randperm(n, generator=generator)[:k]
    return x.to(device), x[first].clone().to(device)


def _kmeans_inputs(device: torch.device, shape: Tuple[int, int, int]) -> Inputs:
    n, dim, k = shape
    x, init = _clustered(n, dim, k, 11, device)
    inputs: Inputs = {"x": x, "init": init, "k": k}
    if device.type == "cpu":
        inputs["x_numpy"] = x.numpy()
        inputs["init_numpy"] = init.numpy()
    return inputs


def _ours_kmeans(inputs: Inputs) -> Any:
    result = library().metric_learning.kmeans(
        inputs["x"], inputs["k"], init=inputs["init"], max_iter=KMEANS_ITERATIONS, tol=0.0
    )
    if inputs["x"].is_cuda:
        torch.cuda.synchronize()
    return result


def _sklearn_kmeans(inputs: Inputs) -> Any:
    from sklearn.cluster import KMeans

    model = KMeans(
        n_clusters=inputs["k"],
        init=inputs["init_numpy"],
        n_init=1,
        max_iter=KMEANS_ITERATIONS,
        tol=0.0,
        algorithm="lloyd",
    ).fit(inputs["x_numpy"])
    return model


def _torch_lloyd(inputs: Inputs) -> Any:
    """Plain-torch Lloyd iterations (chunked cdist + argmin + index_add_), for the CUDA row."""
    x, centroids, k = inputs["x"], inputs["init"].clone(), inputs["k"]
    for _ in range(KMEANS_ITERATIONS):
        labels = torch.cat([torch.cdist(chunk, centroids).argmin(1) for chunk in x.split(65536)])
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).clamp_(min=1).unsqueeze(1).to(x.dtype)
        centroids = sums / counts
    labels = torch.cat([torch.cdist(chunk, centroids).argmin(1) for chunk in x.split(65536)])
    if x.is_cuda:
        torch.cuda.synchronize()
    return centroids, labels


def _kmeans_check(ours: Any, reference: Any, inputs: Inputs) -> float:
    if isinstance(reference, tuple):  # the plain-torch CUDA reference
        centroids, labels = reference
        inertia = None
        n_iter = KMEANS_ITERATIONS
    else:
        centroids = torch.as_tensor(reference.cluster_centers_)
        labels = torch.as_tensor(reference.labels_).to(torch.int64)
        inertia = float(reference.inertia_)
        n_iter = int(reference.n_iter_)
    differ = int((ours.labels.cpu() != labels.cpu()).sum())
    if differ > 1e-3 * labels.numel():
        raise CheckFailed(f"kmeans: {differ} of {labels.numel()} labels differ from the reference", float(differ))
    if ours.n_iter != n_iter:
        raise CheckFailed(f"kmeans: n_iter {ours.n_iter}, reference {n_iter}", float("inf"))
    if inertia is not None and abs(ours.inertia - inertia) > 1e-4 * abs(inertia):
        raise CheckFailed(f"kmeans: inertia {ours.inertia!r}, reference {inertia!r}", abs(ours.inertia - inertia))
    scale = float(centroids.abs().max())
    assert_close("centroids", ours.centroids.cpu(), centroids.cpu().to(ours.centroids.dtype),
                 atol=2e-2 * scale, rtol=0.0)
    return float(differ)


def _htl_inputs(device: torch.device, with_grad: bool = True) -> Inputs:
    l_prime, m, t, dim = HTL_SHAPE
    classes = l_prime * m
    generator = torch.Generator().manual_seed(5)
    centres = torch.randn((classes, dim), generator=generator)
    labels = torch.arange(classes).repeat_interleave(t)
    x = centres[labels] + 0.8 * torch.randn((labels.numel(), dim), generator=generator)
    x = torch.nn.functional.normalize(x, dim=1)
    tree = library().metric_learning.ClassTree.from_embeddings(x, labels)
    inputs: Inputs = {
        "embeddings": x.to(device).requires_grad_(with_grad),
        "labels": labels.to(device),
        "tree": tree,
        "beta": 0.1,
    }
    # The plain-torch side's per-(anchor, negative) margin, gathered once per call as it would be.
    inputs["margins"] = tree.margins(0.1).to(device)
    inputs["positions"] = tree.positions(labels).to(device)
    return inputs


def _ours_htl(inputs: Inputs) -> torch.Tensor:
    return library().metric_learning.hierarchical_triplet_loss(
        inputs["embeddings"], inputs["labels"], inputs["tree"], inputs["beta"]
    )


def _torch_htl(inputs: Inputs) -> torch.Tensor:
    """The loss from its definition: every (a, p, n) in one N x N x N tensor."""
    x, positions, margins = inputs["embeddings"], inputs["positions"], inputs["margins"]
    n = x.shape[0]
    d = torch.cdist(x, x)
    same = positions.unsqueeze(0) == positions.unsqueeze(1)
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    positive = same & ~eye
    negative = ~same
    alpha = margins[positions.unsqueeze(1), positions.unsqueeze(0)]  # alpha[a, n]
    valid = positive.unsqueeze(2) & negative.unsqueeze(1)  # (a, p, n)
    terms = torch.relu(d.unsqueeze(2) - d.unsqueeze(1) + alpha.unsqueeze(1)) * valid
    z = valid.sum()
    return terms.sum() / (2 * z.clamp(min=1))


def _grad_of(forward):
    def run(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        loss = forward(inputs)
        (grad,) = torch.autograd.grad(loss, inputs["embeddings"])
        return loss, grad

    return run


def _sum_backward_of(forward):
    def run(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        return sum_backward(inputs["embeddings"], lambda: forward(inputs))

    return run


def _htl_check(ours: Any, reference: Any, inputs: Inputs) -> float:
    error = 0.0
    for label, a, b in zip(("loss", "grad"), ours, reference):
        scale = float(b.detach().abs().max()) or 1.0
        error = max(error, assert_close(label, a.detach(), b.detach(), atol=1e-5 * scale, rtol=1e-4))
    return error


def _register_all() -> None:
    n, dim, k = KMEANS_SHAPE
    if importlib.util.find_spec("sklearn") is not None:
        register(
            Workload(
                family=FAMILY,
                op="kmeans",
                variant=f"{n}x{dim} K={k} {KMEANS_ITERATIONS} iter",
                description=f"{n} x {dim} fp32, {k} Gaussian clusters, same initial centroids, tol=0",
                mode=MODE_FORWARD,
                setup=lambda device: _kmeans_inputs(device, KMEANS_SHAPE),
                ours=_ours_kmeans,
                reference=_sklearn_kmeans,
                check=_kmeans_check,
                ours_label="metric_learning.kmeans(x, k, init=c0, max_iter=10, tol=0)",
                reference_label="sklearn KMeans(lloyd, init=c0, n_init=1, max_iter=10, tol=0)",
                notes=SPEED_GOALS["kmeans"],
                devices=("cpu",),
            )
        )
    cn, cdim, ck = KMEANS_CUDA_SHAPE
    register(
        Workload(
            family=FAMILY,
            op="kmeans",
            variant=f"{cn}x{cdim} K={ck} {KMEANS_ITERATIONS} iter cuda",
            description=f"{cn} x {cdim} fp32, {ck} Gaussian clusters, same initial centroids, tol=0",
            mode=MODE_FORWARD,
            setup=lambda device: _kmeans_inputs(device, KMEANS_CUDA_SHAPE),
            ours=_ours_kmeans,
            reference=_torch_lloyd,
            check=_kmeans_check,
            ours_label="metric_learning.kmeans(x, k, init=c0, max_iter=10, tol=0)",
            reference_label="cdist + argmin + index_add_ (chunked), 10 iterations",
            notes=SPEED_GOALS["kmeans cuda"],
            devices=("cuda",),
        )
    )
    l_prime, m, t, hdim = HTL_SHAPE
    batch = l_prime * m * t
    description = f"N={batch} ({l_prime} x {m} classes x {t} images), D={hdim} fp32 unit rows"
    for mode, ours, reference, suffix in (
        (MODE_AUTOGRAD_GRAD, _grad_of(_ours_htl), _grad_of(_torch_htl), " + grad"),
        (MODE_BACKWARD, _sum_backward_of(_ours_htl), _sum_backward_of(_torch_htl), ".backward()"),
    ):
        register(
            Workload(
                family=FAMILY,
                op="hierarchical_triplet_loss",
                variant=f"N={batch} D={hdim}",
                description=description,
                mode=mode,
                setup=_htl_inputs,
                ours=ours,
                reference=reference,
                check=_htl_check,
                ours_label=f"hierarchical_triplet_loss(e, labels, tree){suffix}",
                reference_label=f"N^3 triplet tensor (cdist, masks, relu){suffix}",
                notes=SPEED_GOALS["hierarchical"],
            )
        )


_register_all()
