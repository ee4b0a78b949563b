"""Independent float64 references for the tests: one reference per op.

Every reference works on float64 copies on the CPU and returns CPU tensors, so a test can
compare any device and dtype of ours against it. They use PyTorch's own functional ops
(the contract says "identical to torch.nn.functional") plus plain index arithmetic for the
compact (uint8, window-local) index format, which PyTorch does not have.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

import torch
import torch.nn.functional as F

__all__ = [
    "as_list",
    "compact_to_flat",
    "flat_to_compact",
    "reference_gram_matrix",
    "reference_max_pool2d",
    "reference_max_pool2d_backward",
    "reference_max_unpool",
    "reference_max_unpool_backward",
    "reference_style_loss",
    "unpool_output_range",
]

IntOrTuple = Union[int, Sequence[int]]


def as_list(value: Optional[IntOrTuple], n: int, default: Optional[IntOrTuple] = None) -> List[int]:
    """``value`` as ``n`` ints (an int is repeated); ``None`` means ``default``."""
    if value is None:
        value = default
    if isinstance(value, int):
        return [value] * n
    values = [int(v) for v in value]
    return values * n if len(values) == 1 else values


def _window_origin(out_positions: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    return out_positions * stride - padding


def compact_to_flat(
    compact: torch.Tensor,
    input_width: int,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
) -> torch.Tensor:
    """Window-local uint8 indices ``kh * kW + kw`` of shape (..., OH, OW) -> int64 flat indices.

    flat = (oh * sH - pH + kh * dH) * W + (ow * sW - pW + kw * dW), W = ``input_width`` (the
    width of the pooled plane, i.e. the unpooled output width).
    """
    k = as_list(kernel_size, 2)
    s = as_list(stride, 2, k)
    p = as_list(padding, 2)
    d = as_list(dilation, 2)
    local = compact.to(torch.int64).cpu()
    out_h, out_w = local.shape[-2], local.shape[-1]
    oh = torch.arange(out_h, dtype=torch.int64).view(out_h, 1)
    ow = torch.arange(out_w, dtype=torch.int64).view(1, out_w)
    kh = local // k[1]
    kw = local % k[1]
    h = _window_origin(oh, s[0], p[0]) + kh * d[0]
    w = _window_origin(ow, s[1], p[1]) + kw * d[1]
    return h * input_width + w


def flat_to_compact(
    flat: torch.Tensor,
    input_width: int,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
) -> torch.Tensor:
    """Inverse of ``compact_to_flat``: int64 flat indices (..., OH, OW) -> uint8 ``kh * kW + kw``.

    Asserts that every flat index lies on its window's (dilated) grid, so a wrong reference
    shape or a bad flat index is caught here rather than silently truncated.
    """
    k = as_list(kernel_size, 2)
    s = as_list(stride, 2, k)
    p = as_list(padding, 2)
    d = as_list(dilation, 2)
    flat = flat.to(torch.int64).cpu()
    out_h, out_w = flat.shape[-2], flat.shape[-1]
    oh = torch.arange(out_h, dtype=torch.int64).view(out_h, 1)
    ow = torch.arange(out_w, dtype=torch.int64).view(1, out_w)
    dh = flat // input_width - _window_origin(oh, s[0], p[0])
    dw = flat % input_width - _window_origin(ow, s[1], p[1])
    assert bool(((dh % d[0]) == 0).all()) and bool(((dw % d[1]) == 0).all()), "index off the window grid"
    kh, kw = dh // d[0], dw // d[1]
    assert bool(((kh >= 0) & (kh < k[0]) & (kw >= 0) & (kw < k[1])).all()), "index outside its window"
    compact = kh * k[1] + kw
    assert k[0] * k[1] <= 256
    return compact.to(torch.uint8)


def reference_max_pool2d(
    x: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    ceil_mode: bool = False,
    compact: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(values float64, indices) of ``max_pool2d_with_indices`` on the CPU in float64.

    Flat indices are exactly PyTorch's (first maximum in window order, NaN as PyTorch); compact
    indices are the same choices expressed window-locally.
    """
    x64 = x.detach().to(device="cpu", dtype=torch.float64).contiguous()
    k = as_list(kernel_size, 2)
    s = as_list(stride, 2, k)
    values, flat = F.max_pool2d(
        x64, k, s, as_list(padding, 2), as_list(dilation, 2), ceil_mode=ceil_mode, return_indices=True
    )
    if not compact:
        return values, flat
    return values, flat_to_compact(flat, x.shape[-1], k, s, padding, dilation)


def reference_max_pool2d_backward(
    x: torch.Tensor,
    grad_values: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    ceil_mode: bool = False,
) -> torch.Tensor:
    """Gradient of max pooling w.r.t. ``x`` (float64, CPU), through PyTorch's autograd."""
    x64 = x.detach().to(device="cpu", dtype=torch.float64).contiguous().requires_grad_(True)
    k = as_list(kernel_size, 2)
    values = F.max_pool2d(x64, k, as_list(stride, 2, k), as_list(padding, 2), as_list(dilation, 2), ceil_mode)
    values.backward(grad_values.detach().to(device="cpu", dtype=torch.float64))
    return x64.grad


def unpool_output_range(input_size: int, kernel_size: int, stride: int, padding: int) -> Tuple[int, int]:
    """Inclusive (min, max) of a valid unpool ``output_size`` in one dimension (PyTorch's rule)."""
    default = (input_size - 1) * stride - 2 * padding + kernel_size
    return default - stride + 1, default + stride - 1


def reference_max_unpool(
    dims: int,
    x: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    output_size: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """``max_unpool{dims}d`` in float64 on the CPU, batched or unbatched ``x``.

    int64/int32 indices are flat (PyTorch's format); uint8 indices are compact (2-D only) and are
    converted to flat first. When several elements name the same output position the last one in
    raster order wins (the contract, and PyTorch's CPU loop where one thread handles a plane).
    """
    k = as_list(kernel_size, dims)
    s = as_list(stride, dims, k)
    p = as_list(padding, dims)
    unbatched = x.dim() == dims + 1
    x64 = x.detach().to(device="cpu", dtype=torch.float64).contiguous()
    idx = indices.detach().cpu().contiguous()
    if unbatched:
        x64, idx = x64.unsqueeze(0), idx.unsqueeze(0)
    spatial_in = list(x64.shape[2:])
    if output_size is None:
        out = [(spatial_in[i] - 1) * s[i] - 2 * p[i] + k[i] for i in range(dims)]
    else:
        out = [int(v) for v in list(output_size)[-dims:]]
    if idx.dtype == torch.uint8:
        assert dims == 2, "compact indices are 2-D only"
        idx = compact_to_flat(idx, out[1], k, s, p)
    idx = idx.to(torch.int64)
    plane = 1
    for size in out:
        plane *= size
    assert bool(((idx >= 0) & (idx < plane)).all()), "reference_max_unpool: index out of range"
    # Last writer in raster order wins: for each output element, the largest source position
    # naming it (scatter_reduce's amax is order-independent, so this is deterministic). F.max_unpool
    # is not a usable oracle here: its CPU kernel splits a plane across threads on many-core
    # machines (seen on 16 cores, torch 2.11), so duplicates there give a racy winner.
    planes, length = x64.shape[0] * x64.shape[1], x64[0, 0].numel()
    flat_idx = idx.reshape(planes, length)
    values = x64.reshape(planes, length)
    position = torch.arange(length).expand(planes, length)
    last = torch.full((planes, plane), -1, dtype=torch.int64).scatter_reduce(
        1, flat_idx, position, reduce="amax", include_self=True
    )
    result = torch.where(last >= 0, values.gather(1, last.clamp(min=0)), torch.zeros((), dtype=torch.float64))
    result = result.reshape(x64.shape[0], x64.shape[1], *out)
    if int(last.ge(0).sum()) == planes * length:
        # No duplicates: then PyTorch's own unpooling must agree (a check on this reference).
        unpool = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}[dims]
        assert torch.equal(unpool(x64, idx, k, s, p, output_size=out), result)
    return result.squeeze(0) if unbatched else result


def reference_max_unpool_backward(
    grad_output: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
) -> torch.Tensor:
    """Gradient of unpooling w.r.t. its input: a gather of ``grad_output`` at the indices."""
    dims = grad_output.dim() - 2
    k = as_list(kernel_size, dims)
    s = as_list(stride, dims, k)
    p = as_list(padding, dims)
    g = grad_output.detach().to(device="cpu", dtype=torch.float64).contiguous()
    idx = indices.detach().cpu().contiguous()
    if idx.dtype == torch.uint8:
        idx = compact_to_flat(idx, g.shape[-1], k, s, p)
    idx = idx.to(torch.int64)
    plane = g.flatten(2)
    return plane.gather(2, idx.flatten(2)).view(idx.shape)


def reference_gram_matrix(features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """G[n] = F[n] F[n]^T in float64 on the CPU, F = ``features`` (N, C, H, W) or (N, C, L) viewed
    as (N, C, H*W); divided by C*H*W when ``normalize``.

    Differentiable: the float64 copy stays on the autograd graph, so a float64 CPU leaf passed in
    receives the exact gradient (dG + dG^T) F / norm through PyTorch's autograd.
    """
    assert features.dim() in (3, 4), f"features must be 3-D or 4-D, got {features.dim()}-D"
    f = features.to(device="cpu", dtype=torch.float64)
    n, c = f.shape[0], f.shape[1]
    f = f.reshape(n, c, f.shape[2:].numel())  # also for an empty batch
    gram = torch.einsum("ncl,ndl->ncd", f, f)
    if normalize:
        gram = gram / (c * f.shape[2])
    return gram


def reference_style_loss(
    features: torch.Tensor, target_gram: torch.Tensor, normalize: bool = True, reduction: str = "sum"
) -> torch.Tensor:
    """||G(features) - target_gram||^2 in float64 on the CPU, a 0-d tensor.

    ``target_gram`` is (N, C, C), or (C, C) / (1, C, C) shared by the batch, and is a constant (no
    gradient). "sum" adds the squared differences over all N*C*C elements, "mean" averages them.
    Differentiable in ``features`` as ``reference_gram_matrix`` is.
    """
    gram = reference_gram_matrix(features, normalize)
    n, c = gram.shape[0], gram.shape[1]
    target = target_gram.detach().to(device="cpu", dtype=torch.float64)
    if target.dim() == 2:
        target = target.unsqueeze(0)
    assert target.dim() == 3 and target.shape[0] in (1, n) and tuple(target.shape[1:]) == (c, c), (
        f"target_gram of shape {tuple(target_gram.shape)} does not match a Gram of shape {tuple(gram.shape)}"
    )
    squared = (gram - target.expand(n, c, c)).pow(2)
    if reduction == "sum":
        return squared.sum()
    assert reduction == "mean", reduction
    return squared.mean()


# --------------------------------------------------------------------------------------------
# 5. Hungarian assignment (SciPy as the oracle) and DETR's box ops, cost and losses
# --------------------------------------------------------------------------------------------


def as_numpy64(cost: torch.Tensor) -> np.ndarray:
    return cost.detach().cpu().to(torch.float64).numpy()


def exact_sum(values: Sequence[float]) -> float:
    """The correctly rounded sum (no accumulation error)."""
    return math.fsum(values)


def scipy_total(cost: torch.Tensor, maximize: bool = False) -> float:
    """The optimum of linear_sum_assignment by SciPy, summed exactly in float64."""
    from scipy.optimize import linear_sum_assignment as scipy_linear_sum_assignment

    matrix = as_numpy64(cost)
    rows, cols = scipy_linear_sum_assignment(matrix, maximize=maximize)
    return exact_sum(matrix[rows, cols].tolist())


def reference_iou_giou(a: Sequence[float], b: Sequence[float]) -> Tuple[float, float]:
    """IoU and GIoU of two xyxy boxes, from the definitions."""
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    inter_w = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    inter_h = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = inter_w * inter_h
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    iou = inter / union
    return iou, iou - (hull - union) / hull


def reference_matrices(boxes1: torch.Tensor, boxes2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    iou = torch.empty(len(boxes1), len(boxes2), dtype=torch.float64)
    giou = torch.empty_like(iou)
    for i, a in enumerate(boxes1.tolist()):
        for j, b in enumerate(boxes2.tolist()):
            iou[i, j], giou[i, j] = reference_iou_giou(a, b)
    return iou, giou


def to_xyxy(box: Sequence[float]) -> List[float]:
    cx, cy, w, h = (float(v) for v in box)
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def reference_cost(logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, target_boxes: torch.Tensor,
                   w_class: float = 1.0, w_bbox: float = 5.0, w_giou: float = 2.0) -> torch.Tensor:
    """DETR's matching cost of one image (Q, T), entry by entry."""
    logits, boxes, target_boxes = logits.double().cpu(), boxes.double().cpu(), target_boxes.double().cpu()
    cost = torch.empty(len(logits), len(labels), dtype=torch.float64)
    for q in range(len(logits)):
        exp = [math.exp(v) for v in logits[q].tolist()]
        for t, label in enumerate(labels.tolist()):
            probability = exp[label] / sum(exp)
            l1 = sum(abs(p - g) for p, g in zip(boxes[q].tolist(), target_boxes[t].tolist()))
            _, giou = reference_iou_giou(to_xyxy(boxes[q]), to_xyxy(target_boxes[t]))
            cost[q, t] = -w_class * probability + w_bbox * l1 - w_giou * giou
    return cost


def reference_set_losses(logits, boxes, targets, indices, num_classes, eos_coef) -> Dict[str, float]:
    """DETR's three losses, spelled out query by query."""
    batch, queries, _ = logits.shape
    num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
    ce_sum = weight_sum = l1 = giou_loss = 0.0
    for b in range(batch):
        assigned = {q: t for q, t in zip(*indices[b])}
        for q in range(queries):
            log_probabilities = F.log_softmax(logits[b, q].double(), dim=0)
            if q in assigned:
                target = assigned[q]
                cls, weight = int(targets[b]["labels"][target]), 1.0
                l1 += float((boxes[b, q].double() - targets[b]["boxes"][target].double()).abs().sum())
                _, giou = reference_iou_giou(to_xyxy(boxes[b, q]), to_xyxy(targets[b]["boxes"][target]))
                giou_loss += 1.0 - giou
            else:
                cls, weight = num_classes, eos_coef
            ce_sum += -weight * float(log_probabilities[cls])
            weight_sum += weight
    return {"loss_ce": ce_sum / weight_sum, "loss_bbox": l1 / num_boxes, "loss_giou": giou_loss / num_boxes}
