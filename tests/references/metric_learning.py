"""Independent float64 references of the metric-learning module (``pyvision_ops.metric_learning``).

Nothing here calls the library: class distances are a brute force over every pair of members in
NumPy, the class tree is SciPy's ``linkage``/``cophenet`` on that matrix, the hierarchical
triplet loss a brute force over every (anchor, positive, negative) with distances formed from
explicit differences (in torch float64 so that autograd gives the reference gradient), the fused
op's value and derivative a per-entry loop over (a, p, n), and the sampler's class choice a
re-statement of the spec (nearest classes by a stable sort). k-means is compared against
scikit-learn directly in the tests.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "numpy_nearest_centroids",
    "reference_batch_classes",
    "reference_class_distances",
    "reference_hierarchical_margins",
    "reference_hierarchical_op",
    "reference_hierarchical_triplet_loss",
    "reference_triplets",
    "scipy_tree",
]


def _np64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.to(torch.float64)
        return x.numpy()
    return np.asarray(x)


def numpy_nearest_centroids(x, centroids) -> Tuple[np.ndarray, np.ndarray]:
    """(labels, squared distances) of every row's nearest centroid, float64, from explicit
    differences (argmin: the first of equally near ones)."""
    x, c = _np64(x).astype(np.float64), _np64(centroids).astype(np.float64)
    d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    labels = np.argmin(d, axis=1)
    return labels, d[np.arange(x.shape[0]), labels]


def reference_class_distances(embeddings, labels) -> Tuple[np.ndarray, np.ndarray]:
    """(classes, D): classes sorted ascending (``torch.unique`` order), D[p, q] = mean over i in
    class p, j in class q of ||r_i - r_j||^2 (i == j pairs included), by brute force over every
    pair of members, float64."""
    x = _np64(embeddings).astype(np.float64)
    y = _np64(labels).astype(np.int64)
    classes = np.unique(y)
    members = [np.nonzero(y == c)[0] for c in classes]
    p = len(classes)
    out = np.zeros((p, p), dtype=np.float64)
    for a in range(p):
        for b in range(p):
            total = 0.0
            for i in members[a]:
                for j in members[b]:
                    diff = x[i] - x[j]
                    total += float(diff @ diff)
            out[a, b] = total / (len(members[a]) * len(members[b]))
    return classes, out


def scipy_tree(class_distances: np.ndarray, method: str = "average") -> Tuple[np.ndarray, np.ndarray]:
    """(linkage (P-1, 4), cophenetic matrix (P, P)) of SciPy on the condensed matrix."""
    from scipy.cluster.hierarchy import cophenet, linkage
    from scipy.spatial.distance import squareform

    d = np.asarray(class_distances, dtype=np.float64)
    p = d.shape[0]
    if p < 2:
        return np.zeros((0, 4)), np.zeros((p, p))
    z = linkage(squareform(d, checks=False), method)
    return z, squareform(cophenet(z))


def reference_hierarchical_margins(
    tree_embeddings, tree_labels, beta: float, method: str = "average"
) -> Tuple[np.ndarray, np.ndarray]:
    """(classes, alpha (P, P)) with alpha[i, j] = beta + cophenetic(i, j) - D[i, i], everything
    recomputed from the embeddings the tree was built from (brute-force D, SciPy's tree)."""
    classes, d = reference_class_distances(tree_embeddings, tree_labels)
    _, coph = scipy_tree(d, method)
    alpha = beta + coph - np.diag(d)[:, None]
    return classes, alpha


def reference_triplets(labels) -> List[Tuple[int, int, int]]:
    """Every valid (a, p, n): p != a of a's class, n of another class."""
    y = _np64(labels).astype(np.int64)
    n = len(y)
    return [(a, p, q) for a in range(n) for p in range(n) if p != a and y[p] == y[a] for q in range(n) if y[q] != y[a]]


def reference_hierarchical_triplet_loss(embeddings: torch.Tensor, labels, classes, alpha) -> torch.Tensor:
    """L = 1/(2Z) sum over every valid (a, p, n) of max(0, ||x_a - x_p|| - ||x_a - x_n|| +
    alpha[class(a), class(n)]) in float64 (differentiable in ``embeddings``, a float64 CPU tensor);
    0 (connected to ``embeddings``) when there is no valid triplet."""
    x = embeddings
    y = _np64(labels).astype(np.int64)
    position: Dict[int, int] = {int(c): i for i, c in enumerate(_np64(classes).astype(np.int64))}
    triplets = reference_triplets(y)
    if not triplets:
        return (x * 0.0).sum()
    a = torch.tensor([t[0] for t in triplets])
    p = torch.tensor([t[1] for t in triplets])
    n = torch.tensor([t[2] for t in triplets])
    margin = torch.tensor(
        [alpha[position[int(y[i])], position[int(y[j])]] for i, j in zip(a.tolist(), n.tolist())], dtype=torch.float64
    )
    d_ap = (x[a] - x[p]).pow(2).sum(-1).sqrt()
    d_an = (x[a] - x[n]).pow(2).sum(-1).sqrt()
    return torch.clamp_min(d_ap - d_an + margin, 0).sum() / (2 * len(triplets))


def reference_hierarchical_op(distances, classes, margins, grad: float = 1.0) -> Tuple[float, np.ndarray]:
    """The fused op's math, per triplet: (value, dL/dd) for distances (N, N), class positions (N,)
    and margins (P, P): value = sum of max(0, d[a, p] - d[a, n] + margins[c_a, c_n]) / (2Z), and
    the derivative adds grad/(2Z) to d[a, p] and subtracts it from d[a, n] for every triplet whose
    hinge is strictly positive. Loops in float64."""
    d = _np64(distances).astype(np.float64)
    c = _np64(classes).astype(np.int64)
    m = _np64(margins).astype(np.float64)
    n = d.shape[0]
    triplets = reference_triplets(c)
    g = np.zeros((n, n), dtype=np.float64)
    if not triplets:
        return 0.0, g
    total = 0.0
    counts = np.zeros((n, n), dtype=np.float64)
    for a, p, q in triplets:
        z = d[a, p] - (d[a, q] - m[c[a], c[q]])
        if z > 0:
            total += z
            counts[a, p] += 1
            counts[a, q] -= 1
    z_count = len(triplets)
    return total / (2 * z_count), counts * (grad / (2 * z_count))


def reference_batch_classes(drawn: Sequence[int], class_distances, m: int) -> List[int]:
    """The batch's classes (positions) given the l' drawn ones: the drawn classes, then, for each
    drawn class in turn, its m - 1 nearest other classes by ``class_distances`` (ascending, ties
    by position) that are not yet in the batch."""
    d = _np64(class_distances).astype(np.float64)
    chosen = list(int(c) for c in drawn)
    for c in list(chosen):
        order = [int(j) for j in np.argsort(d[c], kind="stable") if j != c]
        added = 0
        for j in order:
            if added == m - 1:
                break
            if j in chosen:
                continue
            chosen.append(j)
            added += 1
    return chosen
