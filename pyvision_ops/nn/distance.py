"""Metric-learning losses: the triplet loss on mined triplets and the contrastive loss.

``TripletLoss`` mines its triplets from a batch of embeddings and their class labels: with
``strategy="batch_hard"`` (Hermans, Beyer and Leibe, "In Defense of the Triplet Loss", 2017) it is
the fused ``pyvision_ops.batch_hard_triplet_loss``; with the other strategies of
``pyvision_ops.mine_triplets`` ("semi_hard", FaceNet's; "semi_hard_window" and "hard", those of
pytorch-metric-learning) it is the mean hinge over the mined triplets. With ``gather=True`` every
rank of the default ``torch.distributed`` process group mines its own anchors against the
embeddings of all ranks (``pyvision_ops.gather_embeddings``), and the gradient of each rank's
loss flows back to the embeddings of every rank. ``ContrastiveLoss`` wraps
``pyvision_ops.contrastive_loss`` (Hadsell, Chopra and LeCun, CVPR 2006).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyvision_ops.ops.distance import (
    batch_hard_triplet_loss,
    contrastive_loss,
    gather_embeddings,
    mine_triplets,
    pairwise_distance,
    triplet_margin_loss,
)

__all__ = ["TripletLoss", "ContrastiveLoss"]

_STRATEGIES = ("batch_hard", "semi_hard", "semi_hard_window", "hard")
_DISTANCES = ("sqeuclidean", "euclidean", "cosine")
_REDUCTIONS = ("mean", "sum", "none")


def _check_margin(margin: float, caller: str) -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise ValueError(f"{caller}: margin must be a finite number, got {margin!r}")
    return float(margin)


def _mined_triplet_loss(batch: Tensor, anchor: Tensor, positive: Tensor, negative: Tensor, margin: float,
                        metric: str, soft: bool) -> Tensor:
    """Mean of max(0, d(a,p) - d(a,n) + margin) (soft: softplus(d(a,p) - d(a,n))) over T >= 1 triplets.

    The distances come either from the triplets' rows (memory and work O(T D)) or from the
    distance matrix of the U distinct anchors against the N rows of the batch (O(U N)), whichever
    is smaller: batch-hard and semi-hard mining give about one triplet per anchor (or per
    anchor-positive pair), "hard" and "semi_hard_window" up to N^3 triplets over N^2 pairs.
    """
    count = anchor.numel()
    rows, dim = batch.shape
    anchors, anchor_row = torch.unique(anchor, return_inverse=True)
    if count * dim <= anchors.numel() * rows:
        if not soft:
            # The fused hinge; eps=0: the distances of pairwise_distance.
            return triplet_margin_loss(batch[anchor], batch[positive], batch[negative], margin=margin,
                                       metric=metric, eps=0.0, reduction="mean")
        anchor_rows = batch.index_select(0, anchor).unsqueeze(-2)  # (T, 1, D): T 1 x 1 distances
        d_ap = pairwise_distance(anchor_rows, batch.index_select(0, positive).unsqueeze(-2), metric=metric)
        d_an = pairwise_distance(anchor_rows, batch.index_select(0, negative).unsqueeze(-2), metric=metric)
        d_ap, d_an = d_ap.reshape(count), d_an.reshape(count)
    else:
        distances = pairwise_distance(batch.index_select(0, anchors), batch, metric=metric)  # (U, N)
        d_ap, d_an = distances[anchor_row, positive], distances[anchor_row, negative]
    return _triplet_hinge(d_ap - d_an, margin, soft).mean()


def _triplet_hinge(gap: Tensor, margin: float, soft: bool) -> Tensor:
    """softplus(d_ap - d_an), or max(0, d_ap - d_an + margin)."""
    return F.softplus(gap) if soft else torch.relu(gap + margin)


def _traced_triplet_loss(batch: Tensor, anchor: Tensor, positive: Tensor, negative: Tensor, margin: float,
                         metric: str, soft: bool) -> Tensor:
    """``_mined_triplet_loss`` without branches on the triplet count T, for torch.compile/export.

    The distances come from the full (N, N) matrix of the batch (the size mining itself works
    in), and the mean divides by max(T, 1): T = 0 gives 0.0 with a zero gradient.
    """
    distances = pairwise_distance(batch, batch, metric=metric)
    hinge = _triplet_hinge(distances[anchor, positive] - distances[anchor, negative], margin, soft)
    return hinge.sum() / torch.sym_max(anchor.numel(), 1)


class TripletLoss(nn.Module):
    """Triplet loss over the triplets mined from a labelled batch of embeddings.

    ``loss = mean over mined triplets (a, p, n) of max(0, d(a, p) - d(a, n) + margin)``, or of
    ``softplus(d(a, p) - d(a, n))`` with ``soft=True``; 0.0 (with a zero gradient) when the batch
    yields no triplet (e.g. a single class, or no class with two members). A positive of anchor a
    is another item of its class, a negative an item of another class. The selection of the
    triplets is not differentiated; the distances are.

    Parameters
    ----------
    strategy : str, default "batch_hard"
        How triplets are chosen (see ``pyvision_ops.mine_triplets``): "batch_hard" (per anchor the
        farthest positive and the nearest negative: ``pyvision_ops.batch_hard_triplet_loss``, the
        mean over the anchors that have a positive and a negative), "semi_hard" (per
        anchor-positive pair the nearest negative farther than the positive, else the farthest
        negative), "semi_hard_window" (every negative with d(a,p) < d(a,n) <= d(a,p) + margin) or
        "hard" (every triplet with d(a,p) - d(a,n) + margin > 0).
    margin : float, default 0.2
        Of the hinge, and of the "semi_hard_window" and "hard" mining. Not used by the soft hinge
        itself (the mining still uses it).
    metric : "sqeuclidean", "euclidean" or "cosine", default "sqeuclidean"
        The distance d, as ``pyvision_ops.pairwise_distance`` computes it ("dot" is a similarity,
        not a distance, and is refused).
    soft : bool, default False
        softplus(d(a,p) - d(a,n)) instead of the hinge (the soft-margin loss of Hermans et al.).
    max_triplets : int, optional
        Keep only the ``max_triplets`` mined triplets with the largest d(a,p) - d(a,n) + margin
        (per rank with ``gather=True``). Not with "batch_hard", which has one triplet per anchor.
    gather : bool, default False
        Mine across all ranks of the initialised default ``torch.distributed`` process group: each
        rank's anchors are its own embeddings, their positives and negatives come from the
        embeddings of every rank (gathered rank-major; ranks may hold different numbers of them),
        and the loss is the mean over this rank's triplets. Every rank must call forward and
        backward (they are collectives); the gradient each rank gets for its embeddings sums the
        contributions of every rank's loss.

    Shape
    -----
    embeddings : (N, D) floating point
    labels : (N,) integer class labels
    output : () scalar, embeddings' dtype

    Examples
    --------
    >>> criterion = TripletLoss(margin=0.2)
    >>> embeddings = torch.randn(32, 64, requires_grad=True)
    >>> criterion(embeddings, torch.randint(0, 8, (32,))).backward()
    """

    strategy: str
    margin: float
    metric: str
    soft: bool
    max_triplets: Optional[int]
    gather: bool

    def __init__(self, strategy: str = "batch_hard", margin: float = 0.2, metric: str = "sqeuclidean",
                 soft: bool = False, max_triplets: Optional[int] = None, gather: bool = False) -> None:
        super().__init__()
        if strategy not in _STRATEGIES:
            raise ValueError(f"TripletLoss: strategy must be one of {_STRATEGIES}, got {strategy!r}")
        if metric not in _DISTANCES:
            hint = " ('dot' is a similarity, not a distance)" if metric == "dot" else ""
            raise ValueError(f"TripletLoss: metric must be one of {_DISTANCES}{hint}, got {metric!r}")
        if max_triplets is not None:
            if isinstance(max_triplets, bool) or not isinstance(max_triplets, int) or max_triplets < 0:
                raise ValueError(f"TripletLoss: max_triplets must be None or an int >= 0, got {max_triplets!r}")
            if strategy == "batch_hard":
                raise ValueError("TripletLoss: max_triplets does not apply to strategy='batch_hard' (one triplet "
                                 "per anchor); use strategy='hard' to cap the number of triplets")
        self.strategy = strategy
        self.margin = _check_margin(margin, "TripletLoss")
        self.metric = metric
        self.soft = bool(soft)
        self.max_triplets = max_triplets
        self.gather = bool(gather)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if self.gather and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("TripletLoss(gather=True) needs an initialised torch.distributed default "
                               "process group (torch.distributed.init_process_group)")
        if self.strategy == "batch_hard":
            return batch_hard_triplet_loss(embeddings, labels, margin=self.margin, metric=self.metric, soft=self.soft,
                                           gather=self.gather)
        # With gather=True the loss is computed on the gathered batch, differentiably: every
        # rank's embeddings get the gradient of this rank's loss.
        batch = gather_embeddings(embeddings, labels)[0] if self.gather else embeddings
        anchor, positive, negative = mine_triplets(
            embeddings, labels, strategy=self.strategy, margin=self.margin, metric=self.metric,
            max_triplets=self.max_triplets, gather=self.gather,
        )
        if torch.compiler.is_compiling():
            # The number of mined triplets is data-dependent: no branch on it under
            # torch.compile/export (see _traced_triplet_loss).
            return _traced_triplet_loss(batch, anchor, positive, negative, self.margin, self.metric, self.soft)
        if anchor.numel() == 0:
            # 0.0 with a zero gradient, still attached to the (gathered) batch: with gather=True
            # this rank's backward must take part in the all-gather's backward collective.
            return batch[:0].sum()
        return _mined_triplet_loss(batch, anchor, positive, negative, self.margin, self.metric, self.soft)

    def extra_repr(self) -> str:
        return (f"strategy={self.strategy!r}, margin={self.margin}, metric={self.metric!r}, soft={self.soft}, "
                f"max_triplets={self.max_triplets}, gather={self.gather}")


class ContrastiveLoss(nn.Module):
    """Contrastive loss of pairs, ``pyvision_ops.contrastive_loss`` as a module.

    Per pair, with d = ||x1 - x2||_2 and y = 1 for a pair of the same class, 0 otherwise:
    ``y d^2 + (1 - y) max(0, margin^2 - d^2)`` (the hinge is on the squared distances).

    Parameters
    ----------
    margin : float, default 1.0
        Pairs of different classes farther apart than ``margin`` cost nothing.
    reduction : "mean", "sum" or "none", default "mean"
        "mean" of an empty batch is 0.0.

    Shape
    -----
    x1, x2 : (B, D)
    same : (B,) bool, or float 0/1
    output : () scalar, or (B,) with reduction="none"

    Examples
    --------
    >>> criterion = ContrastiveLoss(margin=1.0)
    >>> x1, x2 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
    >>> criterion(x1, x2, torch.rand(8) < 0.5).backward()
    """

    margin: float
    reduction: str

    def __init__(self, margin: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"ContrastiveLoss: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.margin = _check_margin(margin, "ContrastiveLoss")
        self.reduction = reduction

    def forward(self, x1: Tensor, x2: Tensor, same: Tensor) -> Tensor:
        return contrastive_loss(x1, x2, same, margin=self.margin, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"
