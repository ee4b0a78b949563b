"""Pairwise embedding distances, fused k-nearest search, triplet mining and metric-learning losses.

``pairwise_distance`` computes distances tile by tile from a matrix-product form on rows shifted
by their common mean, and recomputes the pairs where that form could have lost accuracy (near
neighbours relative to the data's spread) from the original rows, so float32 results stay within
1e-5 relative error of float64 and a point's distance to itself is exactly 0 (where
``torch.cdist``'s matrix-product path returns several units at coordinate scale 1e3).
``pairwise_topk`` and ``mine_triplets`` run the same tiles and reduce them as they are produced:
memory O(N D), never N x M.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from pyvision_ops._extension import ops, register_when_loaded
from pyvision_ops.ops._fake import register_fake

__all__ = [
    "pairwise_distance",
    "pairwise_topk",
    "mine_triplets",
    "batch_hard_triplet_loss",
    "triplet_margin_loss",
    "contrastive_loss",
    "class_distance_matrix",
    "gather_embeddings",
    "TopK",
]

METRICS = ("sqeuclidean", "euclidean", "cosine", "dot")
STRATEGIES = ("batch_hard", "semi_hard", "semi_hard_window", "hard")
_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


class TopK(NamedTuple):
    values: torch.Tensor
    indices: torch.Tensor


def _check_metric(metric: str, allow_dot: bool = True) -> str:
    allowed = METRICS if allow_dot else METRICS[:3]
    if metric not in allowed:
        names = ", ".join(repr(m) for m in allowed)
        raise ValueError(f"metric must be one of {names}, got {metric!r}")
    return metric


def _check_reduction(reduction: str) -> int:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return _REDUCTIONS[reduction]


def _check_tensor(value, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(value).__name__}")


def pairwise_distance(x: torch.Tensor, y: Optional[torch.Tensor] = None, metric: str = "sqeuclidean") -> torch.Tensor:
    """Distances between every row of x and every row of y.

    Parameters
    ----------
    x : Tensor (..., N, D)
        float32, float64, float16 or bfloat16 (half types accumulate in float32).
    y : Tensor (..., M, D) or None
        The same leading dims, dtype and device as x; None means x against itself.
    metric : "sqeuclidean", "euclidean", "cosine" or "dot"
        "cosine" is the distance 1 - cos; "dot" the similarity x.y.

    Returns
    -------
    Tensor (..., N, M), x's dtype. Float32 sqeuclidean/euclidean values are within 1e-5 relative
    error of float64; the distance of a row to an equal row is exactly 0 and its euclidean
    gradient 0.
    """
    _check_tensor(x, "x")
    if y is not None:
        _check_tensor(y, "y")
    return ops().pairwise_distance(x, y, _check_metric(metric))


def pairwise_topk(
    x: torch.Tensor, y: torch.Tensor, k: int, metric: str = "sqeuclidean", largest: bool = False
) -> TopK:
    """The k nearest rows of y for every row of x, without forming the N x M distance matrix.

    Parameters
    ----------
    x : Tensor (..., N, D); y : Tensor (..., M, D)
    k : int, 1 <= k <= M
    metric : as `pairwise_distance` ("dot" usually wants ``largest=True``).
    largest : bool
        The k largest values instead of the k smallest.

    Returns
    -------
    TopK(values (..., N, k) x's dtype, indices (..., N, k) int64 into M), sorted (ascending, or
    descending for largest=True), as ``torch.topk(pairwise_distance(x, y, metric), k)`` up to
    ties (ties keep the smaller index). ``values`` is differentiable with respect to x and y.
    """
    _check_tensor(x, "x")
    _check_tensor(y, "y")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    values, indices = ops().pairwise_topk(x, y, k, _check_metric(metric), bool(largest))
    return TopK(values, indices)


def _check_margin(margin) -> float:
    margin = float(margin)
    if margin != margin or margin in (float("inf"), float("-inf")):
        raise ValueError(f"margin must be finite, got {margin}")
    return margin


def _world():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("gather=True needs an initialised torch.distributed default process group")
    return dist


# Both exchange the ranks' batch sizes (.item(): data-dependent sizes) and run eagerly under
# torch.compile, a graph break: traced, dynamo's fake-tensor pass of the collectives waits on a
# real gloo work that never completes (torch 2.14, a one-rank group: a hang).
@torch.compiler.disable
def gather_embeddings(embeddings: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and labels of every rank of the default process group, concatenated rank-major.

    The embeddings go through ``torch.distributed.nn.functional.all_gather`` (differentiable: the
    gradient of the gathered batch flows back to every rank's own embeddings); ranks may hold
    different numbers of rows. Under ``torch.compile`` it runs eagerly (a graph break), so
    ``fullgraph=True`` cannot hold around it.

    Returns
    -------
    (all_embeddings (sum N_r, D), all_labels (sum N_r,))
    """
    _check_tensor(embeddings, "embeddings")
    _check_tensor(labels, "labels")
    dist = _world()
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size()
    count = torch.tensor([embeddings.shape[0]], dtype=torch.long, device=embeddings.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    # all_gather needs equal shapes: pad to the longest batch, then drop the padding.
    pad = longest - embeddings.shape[0]
    padded = torch.nn.functional.pad(embeddings, (0, 0, 0, pad)) if pad else embeddings
    # The default process group as it is now (all_gather's default argument is bound at import).
    gathered = all_gather(padded.contiguous(), group=dist.group.WORLD)
    label_pad = labels.new_zeros((pad,)) if pad else None
    padded_labels = torch.cat([labels, label_pad]) if pad else labels
    # Gathered as int64 (every backend has it; gloo has no int16) and cast back.
    wide_labels = padded_labels.to(torch.int64).contiguous()
    label_list = [torch.empty_like(wide_labels) for _ in range(world)]
    dist.all_gather(label_list, wide_labels)
    all_embeddings = torch.cat([g[:s] for g, s in zip(gathered, sizes)])
    all_labels = torch.cat([g[:s] for g, s in zip(label_list, sizes)]).to(labels.dtype)
    return all_embeddings, all_labels


@torch.compiler.disable
def _own_anchor_range(embeddings: torch.Tensor) -> Tuple[int, int]:
    """[begin, end) of this rank's rows in the gathered batch."""
    dist = _world()
    count = torch.tensor([embeddings.shape[0]], dtype=torch.long, device=embeddings.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    begin = sum(int(c.item()) for c in counts[: dist.get_rank()])
    return begin, begin + embeddings.shape[0]


def _mine(embeddings, labels, strategy, margin, metric, max_triplets, anchor_begin, anchor_end):
    if strategy not in STRATEGIES:
        names = ", ".join(repr(s) for s in STRATEGIES)
        raise ValueError(f"strategy must be one of {names}, got {strategy!r}")
    if max_triplets is None:
        cap = -1
    else:
        if isinstance(max_triplets, bool) or not isinstance(max_triplets, int):
            raise TypeError(f"max_triplets must be an int or None, got {type(max_triplets).__name__}")
        if max_triplets < 0:
            raise ValueError(f"max_triplets must be >= 0, got {max_triplets}")
        cap = max_triplets
    return ops()._mine_triplets(
        embeddings.detach(), labels, strategy, _check_margin(margin), _check_metric(metric), cap, anchor_begin, anchor_end
    )


def mine_triplets(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    strategy: str = "batch_hard",
    margin: float = 0.2,
    metric: str = "sqeuclidean",
    max_triplets: Optional[int] = None,
    gather: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triplets (anchor, positive, negative) for metric learning, mined tile by tile.

    Parameters
    ----------
    embeddings : Tensor (N, D), floating (no NaN)
    labels : Tensor (N,), an integer dtype
    strategy : str
        "batch_hard": per anchor the farthest positive and the nearest negative (one triplet per
        anchor). "semi_hard" (FaceNet / TF-Addons): per anchor-positive pair, the nearest negative
        strictly farther than the positive, else the farthest negative. "semi_hard_window"
        (pytorch-metric-learning's "semihard"): every negative with d_ap < d_an <= d_ap + margin.
        "hard": every triplet with d_ap - d_an + margin > 0, the ``max_triplets`` largest
        violations when capped. Ties pick the smallest index.
    margin : float
    metric : "sqeuclidean", "euclidean", "cosine" or "dot" (a similarity: larger is closer).
    max_triplets : int or None
        Cap of the "hard" strategy (keeps the hardest).
    gather : bool
        Mine across all ranks of the default ``torch.distributed`` process group: this rank's
        anchors against the gathered batch (`gather_embeddings`); indices index that batch.

    Returns
    -------
    (anchor, positive, negative), int64 (T,) each, ordered by anchor, then positive, then
    negative. Anchors without a positive or a negative are skipped.
    """
    _check_tensor(embeddings, "embeddings")
    _check_tensor(labels, "labels")
    if gather:
        begin, end = _own_anchor_range(embeddings)
        all_embeddings, all_labels = gather_embeddings(embeddings.detach(), labels)
        return tuple(_mine(all_embeddings, all_labels, strategy, margin, metric, max_triplets, begin, end))
    return tuple(_mine(embeddings, labels, strategy, margin, metric, max_triplets, 0, -1))


def _hinge_over_triplets(embeddings, triplets, margin, metric, soft):
    # Reads the rows by index (no gathered copies); 0 with a zero gradient when there is no
    # triplet (no data-dependent branch, so torch.compile traces it whole).
    anchor, positive, negative = triplets
    return ops()._triplet_loss_indexed(embeddings, anchor, positive, negative, margin, metric, bool(soft))


def batch_hard_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    metric: str = "sqeuclidean",
    soft: bool = False,
    gather: bool = False,
) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al.): mean over anchors with a positive and a negative
    of max(0, d(a, p*) - d(a, n*) + margin), p* the farthest positive, n* the nearest negative.

    The selection is mined by the tile kernels (memory O(N D)); the loss and its gradient are
    computed on the selected rows only. ``soft=True`` uses softplus(d(a, p*) - d(a, n*)).
    Returns 0 (finite, with a zero gradient) when no anchor has both. ``gather=True`` mines this
    rank's anchors against the batch of every rank (`gather_embeddings`), and the gradient
    reaches every rank's embeddings.
    """
    _check_tensor(embeddings, "embeddings")
    _check_tensor(labels, "labels")
    _check_metric(metric, allow_dot=False)
    margin = _check_margin(margin)
    if gather:
        begin, end = _own_anchor_range(embeddings)
        embeddings, labels = gather_embeddings(embeddings, labels)
    else:
        begin, end = 0, -1
    triplets = _mine(embeddings, labels, "batch_hard", margin, metric, None, begin, end)
    return _hinge_over_triplets(embeddings, triplets, margin, metric, soft)


def triplet_margin_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float = 1.0,
    metric: str = "euclidean",
    eps: float = 1e-6,
    swap: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """max(0, d(a, p) - d(a, n) + margin) per triplet; ``torch.nn.TripletMarginLoss`` by default.

    Parameters
    ----------
    anchor, positive, negative : Tensor (B, D) or (D,), the same shape.
    metric : "euclidean" (||a - b + eps||, as torch.nn.functional.pairwise_distance),
        "sqeuclidean" (its square) or "cosine" (1 - cos).
    swap : bool
        The distance swap of Balntas et al.: d(a, n) is replaced by min(d(a, n), d(p, n)).
    reduction : "mean", "sum" or "none" ("mean" of an empty batch is 0).
    """
    for value, name in ((anchor, "anchor"), (positive, "positive"), (negative, "negative")):
        _check_tensor(value, name)
    return ops()._triplet_loss(
        anchor,
        positive,
        negative,
        _check_margin(margin),
        _check_metric(metric, allow_dot=False),
        float(eps),
        bool(swap),
        False,
        _check_reduction(reduction),
    )


def contrastive_loss(
    x1: torch.Tensor, x2: torch.Tensor, same: torch.Tensor, margin: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """Contrastive loss of the course notes: y d^2 + (1 - y) max(0, margin^2 - d^2).

    Parameters
    ----------
    x1, x2 : Tensor (B, D), the same shape; d = ||x1 - x2||.
    same : Tensor (B,), bool or 0/1 float: whether the pair is of the same class (y).
    reduction : "mean", "sum" or "none" ("mean" of an empty batch is 0).
    """
    _check_tensor(x1, "x1")
    _check_tensor(x2, "x2")
    _check_tensor(same, "same")
    return ops()._contrastive_loss(x1, x2, same, _check_margin(margin), _check_reduction(reduction))


def class_distance_matrix(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the members of every pair of classes.

    d(p, q) = mean over i in p, j in q of ||r_i - r_j||^2, computed as
    v_p + v_q + ||mu_p - mu_q||^2 (mu the class means, v the mean squared distance to the class
    mean) without forming N x N; the mean distances come from `pairwise_distance`.

    Returns
    -------
    Tensor (P, P) over the classes in ``torch.unique(labels)`` order, embeddings' dtype;
    differentiable with respect to embeddings.
    """
    _check_tensor(embeddings, "embeddings")
    _check_tensor(labels, "labels")
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be 2-D (N, D), got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must have shape ({embeddings.shape[0]},) (one per embedding), got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.device != embeddings.device:
        raise ValueError(f"labels must be on embeddings' device ({embeddings.device}), got {labels.device}")
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    p = classes.numel()
    compute = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
    rows = embeddings.to(compute)
    sums = rows.new_zeros((p, rows.shape[1])).index_add(0, inverse, rows)
    means = sums / counts.unsqueeze(1).to(compute)
    spread = (rows - means[inverse]).square().sum(1)
    variance = rows.new_zeros((p,)).index_add(0, inverse, spread) / counts.to(compute)
    between = pairwise_distance(means, None, "sqeuclidean")
    return (variance.unsqueeze(1) + variance.unsqueeze(0) + between).to(embeddings.dtype)


@register_when_loaded
def _register() -> None:
    """Fake kernels and autograd of the family's operators (they need the compiled schemas)."""

    # --------------------------------------------------------------------------------------------
    # fake kernels
    # --------------------------------------------------------------------------------------------

    def _pair_shape(x, y):
        torch._check(x.dim() >= 2, lambda: f"pairwise_distance: x must be at least 2-D, got {x.dim()}-D")
        m = x.shape[-2] if y is None else y.shape[-2]
        return (*x.shape[:-1], m)

    @register_fake("pyvision_ops::pairwise_distance")
    def _pairwise_distance_fake(x, y=None, metric="sqeuclidean"):
        return x.new_empty(_pair_shape(x, y))

    @register_fake("pyvision_ops::_pairwise_distance_backward")
    def _pairwise_distance_backward_fake(grad, x, y, out, metric, output_mask):
        # The backward kernels return contiguous gradients, whatever the inputs' strides.
        gx = x.new_empty(x.shape) if output_mask[0] else x.new_empty((0,))
        if y is None:
            return gx, x.new_empty((0,))
        return gx, (y.new_empty(y.shape) if output_mask[1] else y.new_empty((0,)))

    @register_fake("pyvision_ops::pairwise_topk")
    def _pairwise_topk_fake(x, y, k, metric="sqeuclidean", largest=False):
        shape = (*x.shape[:-1], k)
        return x.new_empty(shape), x.new_empty(shape, dtype=torch.long)

    @register_fake("pyvision_ops::_pairwise_topk_backward")
    def _pairwise_topk_backward_fake(grad_values, x, y, indices, metric, output_mask):
        return (
            x.new_empty(x.shape) if output_mask[0] else x.new_empty((0,)),
            y.new_empty(y.shape) if output_mask[1] else y.new_empty((0,)),
        )

    @register_fake("pyvision_ops::_mine_triplets")
    def _mine_triplets_fake(embeddings, labels, strategy, margin, metric, max_triplets, anchor_begin, anchor_end):
        count = torch.library.get_ctx().new_dynamic_size()
        shape = (count,)
        return (
            labels.new_empty(shape, dtype=torch.long),
            labels.new_empty(shape, dtype=torch.long),
            labels.new_empty(shape, dtype=torch.long),
        )

    @register_fake("pyvision_ops::_triplet_loss")
    def _triplet_loss_fake(anchor, positive, negative, margin, metric, eps, swap, soft, reduction):
        shape = anchor.shape[:-1] if reduction == 0 else ()
        return anchor.new_empty(shape)

    @register_fake("pyvision_ops::_triplet_loss_indexed")
    def _triplet_loss_indexed_fake(embeddings, anchor, positive, negative, margin, metric, soft):
        return embeddings.new_empty(())

    @register_fake("pyvision_ops::_triplet_loss_indexed_backward")
    def _triplet_loss_indexed_backward_fake(grad, embeddings, anchor, positive, negative, margin, metric, soft):
        return embeddings.new_empty(embeddings.shape)

    @register_fake("pyvision_ops::_triplet_loss_backward")
    def _triplet_loss_backward_fake(grad, anchor, positive, negative, margin, metric, eps, swap, soft, reduction):
        return anchor.new_empty(anchor.shape), positive.new_empty(positive.shape), negative.new_empty(negative.shape)

    @register_fake("pyvision_ops::_kmeans_assign")
    def _kmeans_assign_fake(x, centroids):
        return x.new_empty((x.shape[0],), dtype=torch.long), x.new_empty((x.shape[0],))

    @register_fake("pyvision_ops::_hierarchical_triplet_loss")
    def _hierarchical_fake(distances, classes, margins):
        return distances.new_empty(())

    @register_fake("pyvision_ops::_hierarchical_triplet_loss_backward")
    def _hierarchical_backward_fake(grad, distances, classes, margins):
        return torch.empty_like(distances, memory_format=torch.contiguous_format)

    @register_fake("pyvision_ops::_contrastive_loss")
    def _contrastive_loss_fake(x1, x2, same, margin, reduction):
        shape = x1.shape[:-1] if reduction == 0 else ()
        return x1.new_empty(shape)

    @register_fake("pyvision_ops::_contrastive_loss_backward")
    def _contrastive_loss_backward_fake(grad, x1, x2, same, margin, reduction):
        return x1.new_empty(x1.shape), x2.new_empty(x2.shape)

    # --------------------------------------------------------------------------------------------
    # autograd
    # --------------------------------------------------------------------------------------------

    def _distance_setup(ctx, inputs, output):
        x, y, metric = inputs
        ctx.save_for_backward(x, y, output)
        ctx.metric = metric
        ctx.has_y = y is not None

    def _distance_backward(ctx, grad):
        x, y, out = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        need_y = ctx.has_y and ctx.needs_input_grad[1]
        if not (need_x or need_y):
            return None, None, None
        gx, gy = ops()._pairwise_distance_backward(grad, x, y if ctx.has_y else None, out, ctx.metric, [need_x, need_y])
        return (gx if need_x else None), (gy if need_y else None), None

    torch.library.register_autograd(
        "pyvision_ops::pairwise_distance", _distance_backward, setup_context=_distance_setup
    )

    def _topk_setup(ctx, inputs, output):
        x, y, k, metric, largest = inputs
        ctx.save_for_backward(x, y, output[1])
        ctx.metric = metric

    def _topk_backward(ctx, grad_values, grad_indices):
        x, y, indices = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_values is None or not (need_x or need_y):
            return None, None, None, None, None
        gx, gy = ops()._pairwise_topk_backward(grad_values, x, y, indices, ctx.metric, [need_x, need_y])
        return (gx if need_x else None), (gy if need_y else None), None, None, None

    torch.library.register_autograd("pyvision_ops::pairwise_topk", _topk_backward, setup_context=_topk_setup)

    def _triplet_setup(ctx, inputs, output):
        anchor, positive, negative, *args = inputs
        ctx.save_for_backward(anchor, positive, negative)
        ctx.args = args

    def _triplet_backward(ctx, grad):
        anchor, positive, negative = ctx.saved_tensors
        ga, gp, gn = ops()._triplet_loss_backward(grad, anchor, positive, negative, *ctx.args)
        return (ga, gp, gn) + (None,) * len(ctx.args)

    torch.library.register_autograd("pyvision_ops::_triplet_loss", _triplet_backward, setup_context=_triplet_setup)

    def _indexed_setup(ctx, inputs, output):
        embeddings, anchor, positive, negative, *args = inputs
        ctx.save_for_backward(embeddings, anchor, positive, negative)
        ctx.args = args

    def _indexed_backward(ctx, grad):
        embeddings, anchor, positive, negative = ctx.saved_tensors
        g = ops()._triplet_loss_indexed_backward(grad, embeddings, anchor, positive, negative, *ctx.args)
        return (g,) + (None,) * (3 + len(ctx.args))

    torch.library.register_autograd(
        "pyvision_ops::_triplet_loss_indexed", _indexed_backward, setup_context=_indexed_setup
    )

    def _contrastive_setup(ctx, inputs, output):
        x1, x2, same, margin, reduction = inputs
        ctx.save_for_backward(x1, x2, same)
        ctx.args = (margin, reduction)

    def _contrastive_backward(ctx, grad):
        x1, x2, same = ctx.saved_tensors
        g1, g2 = ops()._contrastive_loss_backward(grad, x1, x2, same, *ctx.args)
        return g1, g2, None, None, None

    torch.library.register_autograd(
        "pyvision_ops::_contrastive_loss", _contrastive_backward, setup_context=_contrastive_setup
    )

    def _hierarchical_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _hierarchical_backward(ctx, grad):
        distances, classes, margins = ctx.saved_tensors
        return ops()._hierarchical_triplet_loss_backward(grad, distances, classes, margins), None, None

    torch.library.register_autograd(
        "pyvision_ops::_hierarchical_triplet_loss", _hierarchical_backward, setup_context=_hierarchical_setup
    )
