"""Independent float64 references of the ``distance`` op family (pairwise distances, k-nearest
search, triplet mining, metric-learning losses, class distance matrix).

Every reference computes in float64 on the CPU and returns CPU tensors (or NumPy arrays / Python
tuples for the mining). Distances are formed from explicit differences (``torch.cdist`` with its
direct, non-matmul path, cross-checked in the tests against NumPy), never from our ops; gradients
come from PyTorch's autograd through these float64 formulas. Mining is a brute force over every
(anchor, positive, negative) in NumPy that spells out each strategy's definition in the spec's
order and tie rules; ``tf_addons_semi_hard_negatives`` is a NumPy port of TF-Addons'
``triplet_semihard_loss`` (the FaceNet semi-hard negatives as TF computes them, by masked min/max
over a tiled distance matrix -- a second, independently written definition of "semi_hard").
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "COSINE_EPS",
    "METRICS",
    "STRATEGIES",
    "numpy_pairwise_distance",
    "reference_batch_hard_triplet_loss",
    "reference_class_distance_matrix",
    "reference_contrastive_loss",
    "reference_mine_triplets",
    "reference_pairwise_distance",
    "reference_pairwise_topk",
    "reference_triplet_margin_loss",
    "relative_error",
    "tf_addons_semi_hard_negatives",
]

METRICS = ("sqeuclidean", "euclidean", "cosine", "dot")
STRATEGIES = ("batch_hard", "semi_hard", "semi_hard_window", "hard")
#: cos(x, y) = x.y / (max(|x|, eps) max(|y|, eps)): a zero vector is at cosine distance 1 from anything.
COSINE_EPS = 1e-8

Triplets = Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]


def _f64(t: torch.Tensor) -> torch.Tensor:
    """A float64 CPU copy that stays on the autograd graph (a float64 CPU leaf gets gradients)."""
    return t.to(device="cpu", dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# pairwise_distance / pairwise_topk
# --------------------------------------------------------------------------------------------


def _safe_sqrt(sq: torch.Tensor) -> torch.Tensor:
    """sqrt with the subgradient 0 at 0 (the contract's euclidean gradient at distance 0)."""
    zero = sq == 0  # NaN is not 0: it propagates
    root = torch.sqrt(torch.where(zero, torch.ones_like(sq), sq))
    return torch.where(zero, torch.zeros_like(sq), root)


def reference_pairwise_distance(
    x: torch.Tensor, y: Optional[torch.Tensor] = None, metric: str = "sqeuclidean"
) -> torch.Tensor:
    """(..., N, M) distances of x (..., N, D) to y (..., M, D) (y=None: x itself), float64 CPU.

    sqeuclidean/euclidean from explicit differences (sum_d (x_d - y_d)^2, no |x|^2 + |y|^2 - 2 x.y
    cancellation); cosine 1 - x.y / (max(|x|, 1e-8) max(|y|, 1e-8)); dot x.y. Differentiable in
    float64 CPU leaves (the euclidean gradient at distance 0 is 0).
    """
    x64 = _f64(x)
    y64 = x64 if y is None else _f64(y)
    assert x64.dim() >= 2 and y64.dim() == x64.dim(), (tuple(x64.shape), tuple(y64.shape))
    assert x64.shape[:-2] == y64.shape[:-2] and x64.shape[-1] == y64.shape[-1]
    if metric in ("sqeuclidean", "euclidean"):
        diff = x64.unsqueeze(-2) - y64.unsqueeze(-3)  # (..., N, M, D): small sizes only
        sq = diff.pow(2).sum(-1)
        return sq if metric == "sqeuclidean" else _safe_sqrt(sq)
    dot = torch.einsum("...nd,...md->...nm", x64, y64)
    if metric == "dot":
        return dot
    if metric == "cosine":
        nx = torch.linalg.vector_norm(x64, dim=-1).clamp_min(COSINE_EPS)
        ny = torch.linalg.vector_norm(y64, dim=-1).clamp_min(COSINE_EPS)
        return 1.0 - dot / (nx.unsqueeze(-1) * ny.unsqueeze(-2))
    raise ValueError(f"unknown metric {metric!r}")


def numpy_pairwise_distance(x: np.ndarray, y: Optional[np.ndarray] = None, metric: str = "sqeuclidean") -> np.ndarray:
    """The same definitions written again in NumPy (2-D only), entry by entry over rows; used to
    cross-check the torch reference and as the mining's distance."""
    x = np.asarray(x, dtype=np.float64)
    y = x if y is None else np.asarray(y, dtype=np.float64)
    out = np.empty((x.shape[0], y.shape[0]), dtype=np.float64)
    for i in range(x.shape[0]):
        diff = x[i][None, :] - y
        if metric == "sqeuclidean":
            out[i] = np.einsum("md,md->m", diff, diff)
        elif metric == "euclidean":
            out[i] = np.sqrt(np.einsum("md,md->m", diff, diff))
        elif metric == "dot":
            out[i] = y @ x[i]
        elif metric == "cosine":
            nx = max(float(np.sqrt(x[i] @ x[i])), COSINE_EPS)
            ny = np.maximum(np.sqrt(np.einsum("md,md->m", y, y)), COSINE_EPS)
            out[i] = 1.0 - (y @ x[i]) / (nx * ny)
        else:
            raise ValueError(f"unknown metric {metric!r}")
    return out


def reference_pairwise_topk(
    x: torch.Tensor, y: torch.Tensor, k: int, metric: str = "sqeuclidean", largest: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k smallest (largest) entries of each row of the float64 distance
    matrix, sorted, ties to the smallest index (a stable sort). Values differentiable."""
    d = reference_pairwise_distance(x, y, metric)
    key = -d.detach() if largest else d.detach()
    order = torch.argsort(key, dim=-1, stable=True)[..., :k]
    return torch.gather(d, -1, order), order


# --------------------------------------------------------------------------------------------
# triplet mining: brute force over the definitions
# --------------------------------------------------------------------------------------------


def _as_matrix(distances) -> np.ndarray:
    """float64, or float32 for a float32 matrix: the mining's comparisons and margin arithmetic
    are then done in the distances' own precision, as a brute force in that dtype would."""
    if isinstance(distances, torch.Tensor):
        keep32 = distances.dtype == torch.float32
        distances = distances.detach().cpu().to(torch.float32 if keep32 else torch.float64).numpy()
    distances = np.asarray(distances)
    return distances if distances.dtype == np.float32 else distances.astype(np.float64)


def _labels(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().to(torch.int64).numpy()
    return np.asarray(labels, dtype=np.int64)


def _split(triplets: List[Tuple[int, int, int]]) -> Triplets:
    if not triplets:
        return (), (), ()
    a, p, n = zip(*triplets)
    return tuple(a), tuple(p), tuple(n)


def reference_mine_triplets(
    distances,
    labels,
    strategy: str = "batch_hard",
    margin: float = 0.2,
    similarity: bool = False,
    max_triplets: Optional[int] = None,
    anchors: Optional[Sequence[int]] = None,
) -> Triplets:
    """(anchor, positive, negative) index tuples in the documented order, by brute force.

    ``distances`` is the (N, N) matrix the mining compares (the float64 reference distances, or
    the op's own ``pairwise_distance`` output when a test checks ties); ``similarity=True`` for
    metric="dot" (larger = closer: every "farther" below reads "less similar"). ``anchors``
    restricts the anchors (the gathered batch's own rows), default every row.

    * batch_hard: per valid anchor, the farthest positive and the nearest negative, ties to the
      smallest index (for a similarity: the least similar positive, the most similar negative --
      pytorch-metric-learning's BatchHardMiner for an inverted distance).
    * semi_hard: per (anchor, positive) of an anchor with a negative, the nearest negative strictly
      farther than the positive, else the farthest negative; ties to the smallest index.
    * semi_hard_window: every (a, p, n) with d_ap < d_an <= d_ap + margin (similarity:
      s_an < s_ap and s_ap - s_an <= margin) -- pytorch-metric-learning's "semihard", in its
      arithmetic: 0 < d_an - d_ap <= margin (the rounded sum d_ap + margin can differ at a tie).
    * hard: every (a, p, n) with violation d_ap - d_an + margin > 0 (similarity: s_an - s_ap +
      margin); max_triplets keeps the largest violations, ties to the lexicographically smallest.
    """
    d = _as_matrix(distances)
    margin = d.dtype.type(margin)  # the margin in the distances' precision
    lab = _labels(labels)
    n_items = lab.shape[0]
    assert d.shape == (n_items, n_items), (d.shape, n_items)
    # "farther" as a number that grows with the distance: the negated similarity for dot
    far = -d if similarity else d
    rows = range(n_items) if anchors is None else anchors
    found: List[Tuple[int, int, int]] = []
    for a in rows:
        positives = [j for j in range(n_items) if j != a and lab[j] == lab[a]]
        negatives = [j for j in range(n_items) if lab[j] != lab[a]]
        if not positives or not negatives:
            continue
        if strategy == "batch_hard":
            p = max(positives, key=lambda j: (far[a, j], -j))  # the largest, then the smallest index
            n = min(negatives, key=lambda j: (far[a, j], j))
            found.append((a, p, n))
        elif strategy == "semi_hard":
            for p in positives:
                farther = [j for j in negatives if far[a, j] > far[a, p]]
                if farther:
                    n = min(farther, key=lambda j: (far[a, j], j))
                else:
                    n = max(negatives, key=lambda j: (far[a, j], -j))
                found.append((a, p, n))
        elif strategy == "semi_hard_window":
            for p in positives:
                for n in negatives:
                    # pytorch-metric-learning's arithmetic: triplet_margin = d_an - d_ap (s_ap - s_an
                    # for a similarity), kept when 0 < triplet_margin <= margin
                    gap = d[a, p] - d[a, n] if similarity else d[a, n] - d[a, p]
                    ok = 0 < gap <= margin
                    if ok:
                        found.append((a, p, n))
        elif strategy == "hard":
            for p in positives:
                for n in negatives:
                    if _violation(d, a, p, n, margin, similarity) > 0:
                        found.append((a, p, n))
        else:
            raise ValueError(f"unknown strategy {strategy!r}")
    if strategy == "hard" and max_triplets is not None:
        ranked = sorted(found, key=lambda t: (-_violation(d, *t, margin, similarity), t))
        found = sorted(ranked[:max_triplets])
    return _split(found)


def _violation(d: np.ndarray, a: int, p: int, n: int, margin, similarity: bool) -> float:
    """(d_ap - d_an) + margin (similarity: (s_an - s_ap) + margin), in the distances' dtype."""
    if similarity:
        return float(d[a, n] - d[a, p] + margin)
    return float(d[a, p] - d[a, n] + margin)


def tf_addons_semi_hard_negatives(distances, labels) -> np.ndarray:
    """A NumPy port of TF-Addons' ``triplet_semihard_loss`` negative selection (FaceNet).

    Returns the (N, N) matrix ``semi_hard_negatives[a, p]``: the smallest d(a, n) over negatives n
    with d(a, n) > d(a, p), or, when there is none, the largest d(a, n) over all negatives -- as
    TF computes it, through the tiled (N*N, N) matrix, ``_masked_minimum`` / ``_masked_maximum``
    (which subtract/add the row extreme so that masked-out entries cannot win). Meaningful at
    (a, p) for a positive p of an anchor a that has a negative.
    """
    pdist = _as_matrix(distances)
    lab = _labels(labels).reshape(-1, 1)
    batch = lab.shape[0]
    adjacency = lab == lab.T
    adjacency_not = ~adjacency

    def masked_maximum(data, mask, dim=1):
        axis_minimums = data.min(axis=dim, keepdims=True)
        return ((data - axis_minimums) * mask).max(axis=dim, keepdims=True) + axis_minimums

    def masked_minimum(data, mask, dim=1):
        axis_maximums = data.max(axis=dim, keepdims=True)
        return ((data - axis_maximums) * mask).min(axis=dim, keepdims=True) + axis_maximums

    pdist_tile = np.tile(pdist, (batch, 1))  # row a*batch... : TF's tf.tile(pdist_matrix, [batch, 1])
    mask = np.tile(adjacency_not, (batch, 1)) & (pdist_tile > pdist.T.reshape(-1, 1))
    mask_final = (mask.sum(axis=1, keepdims=True) > 0).reshape(batch, batch).T
    negatives_outside = masked_minimum(pdist_tile, mask.astype(np.float64)).reshape(batch, batch).T
    negatives_inside = np.tile(masked_maximum(pdist, adjacency_not.astype(np.float64)), (1, batch))
    return np.where(mask_final, negatives_outside, negatives_inside)


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------


def reference_batch_hard_triplet_loss(
    embeddings: torch.Tensor, labels, margin: float = 0.2, metric: str = "sqeuclidean", soft: bool = False
) -> torch.Tensor:
    """Mean over valid anchors of max(0, d(a, p*) - d(a, n*) + margin) (soft: softplus(d_ap - d_an)),
    p*/n* the batch-hard selection on the float64 distances; 0 (with zero gradient) when no anchor
    is valid. float64 CPU, differentiable through the selected distances only."""
    e = _f64(embeddings)
    d = reference_pairwise_distance(e, None, metric)
    a, p, n = reference_mine_triplets(d, labels, "batch_hard")
    if not a:
        return (e * 0.0).sum()
    ia, ip, ineg = (torch.tensor(v, dtype=torch.int64) for v in (a, p, n))
    gap = d[ia, ip] - d[ia, ineg]
    # softplus exactly (log(1 + e^gap)); F.softplus switches to the identity above 20
    per_anchor = torch.logaddexp(gap, torch.zeros_like(gap)) if soft else torch.clamp_min(gap + margin, 0.0)
    return per_anchor.mean()


def _reduce(per_item: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_item
    if reduction == "sum":
        return per_item.sum()
    assert reduction == "mean", reduction
    if per_item.numel() == 0:
        return per_item.sum()  # the contract's 0.0 for an empty mean (torch gives NaN)
    return per_item.mean()


def reference_triplet_margin_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float = 1.0,
    metric: str = "euclidean",
    eps: float = 1e-6,
    swap: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """metric="euclidean": ``torch.nn.TripletMarginLoss(margin, p=2, eps, swap, reduction)`` on
    float64 copies (except the empty "mean", 0 here). sqeuclidean: ||a - b + eps||^2; cosine:
    1 - cos with the 1e-8 norm clamp. Differentiable in float64 CPU leaves."""
    a, p, n = _f64(anchor), _f64(positive), _f64(negative)
    if metric == "euclidean" and not (reduction == "mean" and a.dim() == 2 and a.shape[0] == 0):
        return torch.nn.TripletMarginLoss(margin=margin, p=2.0, eps=eps, swap=swap, reduction=reduction)(a, p, n)

    def dist(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if metric == "euclidean":
            return F.pairwise_distance(u, v, p=2.0, eps=eps)
        if metric == "sqeuclidean":
            return (u - v + eps).pow(2).sum(-1)
        if metric == "cosine":
            nu = torch.linalg.vector_norm(u, dim=-1).clamp_min(COSINE_EPS)
            nv = torch.linalg.vector_norm(v, dim=-1).clamp_min(COSINE_EPS)
            return 1.0 - (u * v).sum(-1) / (nu * nv)
        raise ValueError(f"unknown metric {metric!r}")

    d_ap, d_an = dist(a, p), dist(a, n)
    if swap:
        d_an = torch.minimum(d_an, dist(p, n))
    return _reduce(torch.clamp_min(d_ap - d_an + margin, 0.0), reduction)


def reference_contrastive_loss(
    x1: torch.Tensor, x2: torch.Tensor, same: torch.Tensor, margin: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """Per pair y d^2 + (1 - y) max(0, margin^2 - d^2), d = ||x1 - x2||_2 (no eps), float64 CPU."""
    a, b = _f64(x1), _f64(x2)
    y = same.detach().to(device="cpu", dtype=torch.float64)
    sq = (a - b).pow(2).sum(-1)
    per_pair = y * sq + (1.0 - y) * torch.clamp_min(margin * margin - sq, 0.0)
    return _reduce(per_pair, reduction)


def reference_class_distance_matrix(embeddings: torch.Tensor, labels) -> torch.Tensor:
    """(P, P): d(p, q) = mean over i in class p, j in class q of ||r_i - r_j||^2 (i == j pairs
    included), classes in sorted ``torch.unique`` order. Brute force over every pair, float64."""
    e = _f64(embeddings)
    lab = labels.detach().cpu().to(torch.int64)
    classes = torch.unique(lab).tolist()
    members = [torch.nonzero(lab == c).flatten() for c in classes]
    sq = reference_pairwise_distance(e, None, "sqeuclidean")
    rows = []
    for mp in members:
        rows.append(torch.stack([sq[mp][:, mq].mean() for mq in members]) if members else sq.new_zeros(0))
    if not rows:
        return e.new_zeros((0, 0))
    return torch.stack(rows)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / |expected| over entries with expected != 0 (inf where an exact
    zero is not reproduced)."""
    a = actual.detach().cpu().to(torch.float64)
    e = expected.detach().cpu().to(torch.float64)
    zero = e == 0
    if bool((a[zero] != 0).any()):
        return math.inf
    if bool((~zero).any()):
        return float(((a - e).abs()[~zero] / e.abs()[~zero]).max())
    return 0.0
