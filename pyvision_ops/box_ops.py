"""Bounding-box utilities for set-prediction detectors (DETR): format conversions, IoU, GIoU.

Boxes are the last dimension of a tensor, 4 numbers in one of two formats:

- ``xyxy``: (x0, y0, x1, y1), the top-left and bottom-right corners, x1 >= x0 and y1 >= y0;
- ``cxcywh``: (cx, cy, w, h), the centre and the size, w >= 0 and h >= 0 (DETR's output format).

``box_iou`` and ``generalized_box_iou`` return the (N, M) matrix over every pair of boxes, as
torchvision's functions of the same names; they take ``xyxy`` boxes and check that they are
well-formed (finite, x1 >= x0, y1 >= y0), raising ``ValueError`` that names the argument. Those
checks read the data, so they run in eager mode only: under ``torch.compile`` they are skipped to
keep the graph whole. A pair whose union is empty (two zero-area boxes) has IoU 0, where
torchvision's 0/0 gives NaN.

Generalized IoU (Rezatofighi et al., CVPR 2019): GIoU = IoU - (|C| - |A u B|) / |C|, with C the
smallest box enclosing A and B. It lies in [-1, 1], equals 1 only for identical boxes and, unlike
IoU, still has a gradient for boxes that do not overlap.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "paired_generalized_box_iou",
]


def _check_last_dim(boxes: Tensor, name: str, caller: str) -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{caller}: {name} must be a Tensor, got {type(boxes).__name__}")
    if boxes.dim() == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"{caller}: {name} must have 4 numbers in its last dimension (..., 4), "
                         f"got shape {tuple(boxes.shape)}")


def check_boxes(boxes: Tensor, name: str, caller: str, box_format: str = "xyxy") -> None:
    """Raise ``ValueError`` unless every box is finite and has non-negative width and height.

    Reads the data (one host synchronisation), so it does nothing while ``torch.compile`` traces:
    a data-dependent branch would break the graph.

    Parameters
    ----------
    boxes : Tensor (..., 4)
    name, caller : str
        The argument's and the calling function's names, for the error message.
    box_format : "xyxy" or "cxcywh"
        How to read the 4 numbers: corners (x1 >= x0, y1 >= y0 required) or centre and size
        (w >= 0, h >= 0 required).
    """
    _check_last_dim(boxes, name, caller)
    if torch.compiler.is_compiling() or boxes.numel() == 0:
        return
    finite = torch.isfinite(boxes).all(dim=-1)
    if box_format == "xyxy":
        well_formed = finite & (boxes[..., 2] >= boxes[..., 0]) & (boxes[..., 3] >= boxes[..., 1])
        rule = "finite boxes with x1 >= x0 and y1 >= y0 (xyxy)"
    elif box_format == "cxcywh":
        well_formed = finite & (boxes[..., 2] >= 0) & (boxes[..., 3] >= 0)
        rule = "finite boxes with w >= 0 and h >= 0 (cxcywh)"
    else:
        raise ValueError(f"{caller}: box_format must be 'xyxy' or 'cxcywh', got {box_format!r}")
    if bool(well_formed.all()):
        return
    bad = (~well_formed).nonzero()
    first = tuple(int(i) for i in bad[0])
    where = first[0] if len(first) == 1 else first
    values = [round(float(v), 6) for v in boxes[first]]
    raise ValueError(f"{caller}: {name} must hold {rule}; {bad.shape[0]} of {well_formed.numel()} are "
                     f"malformed, the first at index {where}: {values}")


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert (cx, cy, w, h) boxes to (x0, y0, x1, y1) corners.

    Parameters
    ----------
    boxes : Tensor (..., 4)
        Centre and size.

    Returns
    -------
    Tensor (..., 4)
        ``(cx - w/2, cy - h/2, cx + w/2, cy + h/2)``, same dtype and device; differentiable.
    """
    _check_last_dim(boxes, "boxes", "box_cxcywh_to_xyxy")
    centre, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat([centre - 0.5 * size, centre + 0.5 * size], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Convert (x0, y0, x1, y1) corners to (cx, cy, w, h) boxes.

    Parameters
    ----------
    boxes : Tensor (..., 4)
        Top-left and bottom-right corners.

    Returns
    -------
    Tensor (..., 4)
        ``((x0 + x1)/2, (y0 + y1)/2, x1 - x0, y1 - y0)``, same dtype and device; differentiable.
    """
    _check_last_dim(boxes, "boxes", "box_xyxy_to_cxcywh")
    top_left, bottom_right = boxes[..., :2], boxes[..., 2:]
    return torch.cat([0.5 * (top_left + bottom_right), bottom_right - top_left], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of (x0, y0, x1, y1) boxes.

    Parameters
    ----------
    boxes : Tensor (..., 4), xyxy

    Returns
    -------
    Tensor (...,)
        ``(x1 - x0) * (y1 - y0)``, in a floating dtype (integer boxes give float32).
    """
    _check_last_dim(boxes, "boxes", "box_area")
    boxes = _as_floating(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _as_floating(boxes: Tensor) -> Tensor:
    # Integer coordinates: products of differences overflow int16/int32 and divisions truncate.
    return boxes if boxes.is_floating_point() else boxes.to(torch.float32)


def _inter_union_enclosing(boxes1: Tensor, boxes2: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Intersection, union and enclosing-box areas of broadcastable xyxy boxes (no checks)."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    overlap = (bottom_right - top_left).clamp(min=0)
    inter = overlap[..., 0] * overlap[..., 1]
    union = area1 + area2 - inter
    outer_size = torch.maximum(boxes1[..., 2:], boxes2[..., 2:]) - torch.minimum(boxes1[..., :2], boxes2[..., :2])
    enclosing = outer_size[..., 0] * outer_size[..., 1]
    return inter, union, enclosing


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    # An empty union (two zero-area boxes) has numerator 0 as well: 0 / tiny = 0 instead of NaN,
    # and every ordinary denominator is left exactly as it is.
    return numerator / denominator.clamp(min=torch.finfo(denominator.dtype).tiny)


def _paired_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of broadcastable xyxy boxes, element by element (no checks)."""
    inter, union, _ = _inter_union_enclosing(_as_floating(boxes1), _as_floating(boxes2))
    return _safe_divide(inter, union)


def paired_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of broadcastable xyxy boxes, element by element, without the well-formedness check.

    The diagonal of ``generalized_box_iou(boxes1, boxes2)`` for two (K, 4) inputs, at O(K) cost:
    what a loss over matched pairs needs.

    Parameters
    ----------
    boxes1, boxes2 : Tensor (..., 4), xyxy, broadcastable against each other

    Returns
    -------
    Tensor (...,), the broadcast shape without the last dimension; values in [-1, 1].
    """
    _check_last_dim(boxes1, "boxes1", "paired_generalized_box_iou")
    _check_last_dim(boxes2, "boxes2", "paired_generalized_box_iou")
    inter, union, enclosing = _inter_union_enclosing(_as_floating(boxes1), _as_floating(boxes2))
    return _safe_divide(inter, union) - _safe_divide(enclosing - union, enclosing)


def _check_pairwise(boxes1: Tensor, boxes2: Tensor, caller: str) -> None:
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        _check_last_dim(boxes, name, caller)
        if boxes.dim() != 2:
            raise ValueError(f"{caller}: {name} must be 2-D (N, 4), got shape {tuple(boxes.shape)}")
        check_boxes(boxes, name, caller)
    if boxes1.device != boxes2.device:
        raise ValueError(f"{caller}: boxes1 and boxes2 must be on one device, got {boxes1.device} and {boxes2.device}")


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair of boxes (torchvision's ``box_iou``).

    Parameters
    ----------
    boxes1 : Tensor (N, 4), xyxy
    boxes2 : Tensor (M, 4), xyxy
        Finite, with x1 >= x0 and y1 >= y0. Integer boxes are computed in float32.

    Returns
    -------
    Tensor (N, M)
        ``|A n B| / |A u B|`` for A = boxes1[i], B = boxes2[j], in [0, 1]; 0 where the union is
        empty.

    Raises
    ------
    ValueError
        A malformed box (naming ``boxes1`` or ``boxes2`` and the first bad index), or a shape
        that is not (N, 4).
    """
    _check_pairwise(boxes1, boxes2, "box_iou")
    return _paired_iou(boxes1[:, None, :], boxes2[None, :, :])


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of every pair of boxes (torchvision's ``generalized_box_iou``).

    Parameters
    ----------
    boxes1 : Tensor (N, 4), xyxy
    boxes2 : Tensor (M, 4), xyxy
        Finite, with x1 >= x0 and y1 >= y0 (degenerate boxes would make the enclosing area 0).
        Integer boxes are computed in float32.

    Returns
    -------
    Tensor (N, M)
        ``IoU - (|C| - |A u B|) / |C|`` with C the smallest box enclosing A = boxes1[i] and
        B = boxes2[j]; in [-1, 1], 1 for identical boxes with a positive area. Differentiable.

    Raises
    ------
    ValueError
        A malformed box (naming ``boxes1`` or ``boxes2`` and the first bad index), or a shape
        that is not (N, 4).
    """
    _check_pairwise(boxes1, boxes2, "generalized_box_iou")
    return paired_generalized_box_iou(boxes1[:, None, :], boxes2[None, :, :])
