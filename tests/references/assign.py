"""Independent references of op family 5 (Hungarian assignment) and of DETR's box ops, matching
cost and losses: SciPy as the assignment oracle, every other formula spelled out over Python
floats, entry by entry and query by query.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "as_numpy64",
    "exact_sum",
    "reference_cost",
    "reference_iou_giou",
    "reference_matrices",
    "reference_set_losses",
    "scipy_total",
    "to_xyxy",
]


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
