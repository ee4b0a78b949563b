"""DETR's Hungarian matcher and set-prediction loss (Carion et al., "End-to-End Object Detection
with Transformers", ECCV 2020).

A DETR predicts a fixed set of Q boxes per image, each with C + 1 class scores (the last one is
"no object"). Training pairs every ground-truth box with one prediction by a minimum-cost
bipartite matching (``HungarianMatcher``, solved for the whole batch in one call of
``pyvision_ops.linear_sum_assignment``), then ``SetCriterion`` scores the matched predictions
(class cross-entropy, L1 and GIoU box losses) and pushes the unmatched ones towards "no object".

Inputs follow DETR's conventions:

- ``outputs``: a dict with ``pred_logits`` (B, Q, C + 1), unnormalised class scores, and
  ``pred_boxes`` (B, Q, 4), boxes as (cx, cy, w, h), normalised to [0, 1] by the image size;
  optionally ``aux_outputs``, a list of such dicts (one per intermediate decoder layer);
- ``targets``: a list of B dicts, one per image, with ``labels`` int64 (T_b,) in [0, C) and
  ``boxes`` (T_b, 4) in the same (cx, cy, w, h) format. T_b may be 0.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyvision_ops.box_ops import box_cxcywh_to_xyxy, check_boxes, paired_generalized_box_iou
from pyvision_ops.ops.assign import linear_sum_assignment

__all__ = ["HungarianMatcher", "SetCriterion"]

Indices = List[Tuple[Tensor, Tensor]]

_LOSSES = ("labels", "boxes", "cardinality")


def _predictions(outputs: Mapping[str, Tensor], caller: str) -> Tuple[Tensor, Tensor]:
    """``pred_logits`` and ``pred_boxes`` from DETR's output dict, with their shapes checked."""
    for key in ("pred_logits", "pred_boxes"):
        if key not in outputs:
            raise KeyError(f"{caller}: outputs must contain {key!r}, got keys {sorted(outputs)}")
    pred_logits, pred_boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if pred_logits.dim() != 3 or pred_logits.shape[-1] < 2:
        raise ValueError(f"{caller}: outputs['pred_logits'] must be (B, Q, C + 1) with C >= 1, "
                         f"got shape {tuple(pred_logits.shape)}")
    if pred_boxes.dim() != 3 or pred_boxes.shape[-1] != 4 or pred_boxes.shape[:2] != pred_logits.shape[:2]:
        raise ValueError(f"{caller}: outputs['pred_boxes'] must be (B, Q, 4) = {tuple(pred_logits.shape[:2]) + (4,)} "
                         f"to match pred_logits, got shape {tuple(pred_boxes.shape)}")
    return pred_logits, pred_boxes


def _check_targets(targets: Sequence[Mapping[str, Tensor]], batch: int, num_classes: int,
                   device: torch.device, caller: str) -> None:
    """Shapes, devices, and (in eager mode) label range and box validity of DETR's targets."""
    if len(targets) != batch:
        raise ValueError(f"{caller}: targets must hold one dict per image, {batch} for these outputs, "
                         f"got {len(targets)}")
    for b, target in enumerate(targets):
        for key in ("labels", "boxes"):
            if key not in target:
                raise KeyError(f"{caller}: targets[{b}] must contain {key!r}, got keys {sorted(target)}")
        labels, boxes = target["labels"], target["boxes"]
        if labels.dim() != 1 or labels.dtype != torch.int64:
            raise ValueError(f"{caller}: targets[{b}]['labels'] must be int64 (T,), got {labels.dtype} "
                             f"of shape {tuple(labels.shape)}")
        if boxes.shape != (labels.shape[0], 4):
            raise ValueError(f"{caller}: targets[{b}]['boxes'] must be (T, 4) = ({labels.shape[0]}, 4) to match "
                             f"its labels, got shape {tuple(boxes.shape)}")
        if labels.device != device or boxes.device != device:
            raise ValueError(f"{caller}: targets[{b}] must be on the predictions' device {device}, got labels "
                             f"on {labels.device} and boxes on {boxes.device}")
    if torch.compiler.is_compiling():
        return  # the checks below read the data: a data-dependent branch would break the graph
    labels = torch.cat([t["labels"] for t in targets]) if targets else torch.empty(0, dtype=torch.int64)
    if labels.numel() and not bool(((labels >= 0) & (labels < num_classes)).all()):
        for b, target in enumerate(targets):
            bad = target["labels"][(target["labels"] < 0) | (target["labels"] >= num_classes)]
            if bad.numel():
                raise ValueError(f"{caller}: targets[{b}]['labels'] must be class indices in [0, {num_classes}) "
                                 f"(pred_logits has {num_classes} + 1 classes, the last is 'no object'), "
                                 f"got {bad.tolist()}")
    for b, target in enumerate(targets):
        check_boxes(target["boxes"], f"targets[{b}]['boxes']", caller, box_format="cxcywh")


def _check_finite(tensor: Tensor, name: str, caller: str) -> None:
    if torch.compiler.is_compiling() or tensor.numel() == 0:
        return
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        count = int((~finite).sum())
        raise ValueError(f"{caller}: {name} must be finite, got {count} NaN or infinite values of "
                         f"{tensor.numel()} (shape {tuple(tensor.shape)}); the model has diverged or "
                         "its input holds NaN")


class HungarianMatcher(nn.Module):
    """Minimum-cost one-to-one matching between DETR's predictions and each image's targets.

    The cost of pairing prediction q with target t is

        cost_class * (-p_q[label_t]) + cost_bbox * ||box_q - box_t||_1 + cost_giou * (-GIoU(box_q, box_t))

    with p_q the softmax of the prediction's logits and the boxes in (cx, cy, w, h). The costs of
    all images are solved in one call of ``pyvision_ops.linear_sum_assignment``. Runs without
    autograd: the matching is a constant for the loss.

    Parameters
    ----------
    cost_class, cost_bbox, cost_giou : float, defaults 1, 5, 2 (DETR's)
        Weights of the three terms; non-negative, not all zero.

    Shape
    -----
    outputs : dict with ``pred_logits`` (B, Q, C + 1) and ``pred_boxes`` (B, Q, 4), cxcywh
    targets : list of B dicts with ``labels`` int64 (T_b,) in [0, C) and ``boxes`` (T_b, 4), cxcywh
    output : list of B pairs ``(pred_idx, target_idx)``, int64 (K_b,) each, K_b = min(Q, T_b),
        ``pred_idx`` ascending, on the predictions' device; empty for an image without targets.

    Raises
    ------
    ValueError
        Non-finite ``pred_logits`` or ``pred_boxes``, malformed target boxes (w or h < 0), labels
        out of range, or mismatched shapes and devices. The data checks run in eager mode; under
        ``torch.compile`` they are skipped (the solver still rejects a NaN cost).

    Notes
    -----
    ``torch.compile(matcher, fullgraph=True)`` traces it whole (the solver has a fake kernel), but
    the graph depends on every image's target count, so batches with new counts recompile; in a
    training loop, compiling the model and leaving the matcher eager is usually faster.

    Examples
    --------
    >>> matcher = HungarianMatcher()
    >>> outputs = {"pred_logits": torch.randn(2, 10, 4), "pred_boxes": torch.rand(2, 10, 4)}
    >>> targets = [{"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[.5, .5, .2, .3], [.2, .3, .1, .1]])},
    ...            {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    >>> [(p.tolist(), t.tolist()) for p, t in matcher(outputs, targets)][1]
    ([], [])
    """

    cost_class: float
    cost_bbox: float
    cost_giou: float

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        weights = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        for name, value in weights.items():
            if not (float(value) >= 0 and float(value) < float("inf")):
                raise ValueError(f"HungarianMatcher: {name} must be a finite weight >= 0, got {value}")
        if all(float(value) == 0 for value in weights.values()):
            raise ValueError("HungarianMatcher: at least one of cost_class, cost_bbox, cost_giou must be > 0, "
                             "got all 0")
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)

    @torch.no_grad()
    def cost_matrices(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> List[Tensor]:
        """The matching cost of every image, as ``forward`` solves it.

        Parameters
        ----------
        outputs, targets
            As for ``forward``.

        Returns
        -------
        list of B Tensors (Q, T_b)
            In the predictions' dtype promoted to at least float32.
        """
        caller = type(self).__name__
        pred_logits, pred_boxes = _predictions(outputs, caller)
        _check_finite(pred_logits, "outputs['pred_logits']", caller)
        _check_finite(pred_boxes, "outputs['pred_boxes']", caller)
        _check_targets(targets, pred_logits.shape[0], pred_logits.shape[-1] - 1, pred_logits.device, caller)

        dtype = torch.promote_types(torch.promote_types(pred_logits.dtype, pred_boxes.dtype), torch.float32)
        prob = pred_logits.to(dtype).softmax(dim=-1)
        pred_boxes = pred_boxes.to(dtype)
        pred_corners = box_cxcywh_to_xyxy(pred_boxes)
        costs: List[Tensor] = []
        for b, target in enumerate(targets):
            labels, boxes = target["labels"], target["boxes"].to(dtype)
            # Minus the probability of the target's class: its log would overweight hard classes.
            cost_class = -prob[b][:, labels]
            cost_bbox = torch.cdist(pred_boxes[b], boxes, p=1)
            cost_giou = -paired_generalized_box_iou(pred_corners[b][:, None, :], box_cxcywh_to_xyxy(boxes)[None, :, :])
            costs.append(self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou)
        return costs

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> Indices:
        solutions = linear_sum_assignment(self.cost_matrices(outputs, targets), maximize=False)
        return [(pred_idx, target_idx) for pred_idx, target_idx in solutions]

    def extra_repr(self) -> str:
        return f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}"


class SetCriterion(nn.Module):
    """DETR's Hungarian loss: match predictions to targets, then score the matched pairs.

    With N = the number of target boxes in the batch (at least 1; summed over processes when
    ``torch.distributed`` is initialised, then divided by the world size):

    - ``loss_ce`` (``"labels"``): cross-entropy of every query's logits against its matched
      target's class, or class ``num_classes`` ("no object") for unmatched queries, with the
      no-object class weighted by ``eos_coef`` (``F.cross_entropy``'s weighted mean);
    - ``loss_bbox`` (``"boxes"``): sum over matched pairs of the L1 distance of the (cx, cy, w, h)
      boxes, divided by N;
    - ``loss_giou`` (``"boxes"``): sum over matched pairs of 1 - GIoU, divided by N;
    - ``cardinality_error`` (``"cardinality"``, for logging, no gradient): mean absolute error of
      the number of queries not predicted as "no object" against the number of targets.

    The returned losses are unweighted, as in DETR; ``weighted_sum`` applies ``weight_dict``.
    When ``outputs`` has ``aux_outputs`` (one dict per intermediate decoder layer), each is
    matched and scored too, under the names ``loss_ce_0``, ``loss_bbox_0``, ...

    Parameters
    ----------
    num_classes : int
        C, the number of object classes (without "no object"); the logits have C + 1 columns.
    matcher : nn.Module
        Maps (outputs, targets) to a list of (pred_idx, target_idx), e.g. ``HungarianMatcher()``.
    weight_dict : mapping str -> float
        Weight of each loss in ``weighted_sum``, e.g. ``{"loss_ce": 1, "loss_bbox": 5,
        "loss_giou": 2}``. An auxiliary term (``loss_ce_0``) takes its own entry if present, else
        its base term's.
    eos_coef : float
        Weight of the no-object class in the cross-entropy (DETR uses 0.1), >= 0.
    losses : sequence of "labels", "boxes", "cardinality", default ("labels", "boxes")

    Attributes
    ----------
    empty_weight : Tensor (C + 1,), buffer
        The cross-entropy class weights: 1, ..., 1, eos_coef.

    Examples
    --------
    >>> criterion = SetCriterion(3, HungarianMatcher(), {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}, 0.1)
    >>> outputs = {"pred_logits": torch.randn(2, 10, 4, requires_grad=True),
    ...            "pred_boxes": torch.rand(2, 10, 4, requires_grad=True)}
    >>> targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[.5, .5, .2, .3]])}] * 2
    >>> losses = criterion(outputs, targets)
    >>> sorted(losses)
    ['loss_bbox', 'loss_ce', 'loss_giou']
    >>> criterion.weighted_sum(losses).backward()
    """

    empty_weight: Tensor
    num_classes: int
    eos_coef: float
    losses: Tuple[str, ...]

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Mapping[str, float],
        eos_coef: float,
        losses: Sequence[str] = ("labels", "boxes"),
    ) -> None:
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"SetCriterion: num_classes must be an integer >= 1, got {num_classes}")
        if not (float(eos_coef) >= 0 and float(eos_coef) < float("inf")):
            raise ValueError(f"SetCriterion: eos_coef must be a finite weight >= 0, got {eos_coef}")
        if isinstance(losses, str):
            losses = (losses,)
        unknown = [loss for loss in losses if loss not in _LOSSES]
        if unknown:
            raise ValueError(f"SetCriterion: losses must be among {_LOSSES}, got {list(losses)}")
        self.num_classes = int(num_classes)
        self.matcher = matcher
        self.weight_dict = {str(key): float(value) for key, value in weight_dict.items()}
        self.eos_coef = float(eos_coef)
        self.losses = tuple(losses)
        empty_weight = torch.ones(self.num_classes + 1)
        empty_weight[-1] = self.eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def forward(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> Dict[str, Tensor]:
        """Losses of ``outputs`` (and of its ``aux_outputs``) against ``targets``.

        Parameters
        ----------
        outputs : dict with ``pred_logits`` (B, Q, num_classes + 1), ``pred_boxes`` (B, Q, 4),
            optionally ``aux_outputs`` (list of such dicts)
        targets : list of B dicts with ``labels`` int64 (T_b,) and ``boxes`` (T_b, 4), cxcywh

        Returns
        -------
        dict str -> Tensor ()
            ``loss_ce``, ``loss_bbox``, ``loss_giou`` (and ``cardinality_error``) for the losses
            asked for; with auxiliary outputs also ``loss_ce_0``, ``loss_bbox_0``, ...
        """
        pred_logits, _ = _predictions(outputs, "SetCriterion")
        if pred_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(f"SetCriterion: outputs['pred_logits'] must have num_classes + 1 = "
                             f"{self.num_classes + 1} classes in its last dimension, got shape "
                             f"{tuple(pred_logits.shape)}")
        num_boxes = self._num_boxes(targets, pred_logits.device)
        final = {key: value for key, value in outputs.items() if key != "aux_outputs"}
        losses = self._losses_of(final, targets, num_boxes)
        for layer, aux in enumerate(outputs.get("aux_outputs", [])):  # type: ignore[arg-type]
            for key, value in self._losses_of(aux, targets, num_boxes).items():
                losses[f"{key}_{layer}"] = value
        return losses

    def weighted_sum(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The training objective: sum of ``weight_dict[name] * loss`` over the losses it weights.

        Parameters
        ----------
        losses : mapping str -> Tensor (), as returned by ``forward``

        Returns
        -------
        Tensor ()
            Terms without a weight (``cardinality_error``) are left out; an auxiliary term
            ``loss_ce_3`` uses ``weight_dict["loss_ce_3"]`` if present, else ``weight_dict["loss_ce"]``.
        """
        total = None
        for name, value in losses.items():
            weight = self.weight_dict.get(name)
            if weight is None:
                base, _, layer = name.rpartition("_")
                weight = self.weight_dict.get(base) if layer.isdigit() else None
            if weight is None:
                continue
            total = weight * value if total is None else total + weight * value
        if total is None:
            raise ValueError(f"SetCriterion.weighted_sum: weight_dict {sorted(self.weight_dict)} weights none of "
                             f"the losses {sorted(losses)}")
        return total

    @staticmethod
    def _num_boxes(targets: Sequence[Mapping[str, Tensor]], device: torch.device) -> Tensor:
        count = torch.tensor(float(sum(int(t["labels"].shape[0]) for t in targets)), device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every process normalises by the average count, so the gradients add up as one batch.
            torch.distributed.all_reduce(count)
            count = count / torch.distributed.get_world_size()
        return count.clamp(min=1)

    def _losses_of(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                   num_boxes: Tensor) -> Dict[str, Tensor]:
        pred_logits, pred_boxes = _predictions(outputs, "SetCriterion")
        indices = self.matcher(outputs, targets)
        device = pred_logits.device
        empty = torch.empty(0, dtype=torch.int64, device=device)  # keeps torch.cat happy for B = 0
        batch_idx = torch.cat([empty] + [torch.full_like(pred_idx, b, device=device)
                                         for b, (pred_idx, _) in enumerate(indices)])
        pred_idx = torch.cat([empty] + [pred_idx.to(device) for pred_idx, _ in indices])
        losses: Dict[str, Tensor] = {}
        if "labels" in self.losses:
            matched_labels = torch.cat([empty] + [t["labels"][target_idx.to(t["labels"].device)].to(device)
                                                  for t, (_, target_idx) in zip(targets, indices)])
            target_classes = torch.full(pred_logits.shape[:2], self.num_classes, dtype=torch.int64, device=device)
            target_classes[batch_idx, pred_idx] = matched_labels
            losses["loss_ce"] = F.cross_entropy(pred_logits.transpose(1, 2), target_classes,
                                                weight=self.empty_weight.to(pred_logits.dtype))
        if "boxes" in self.losses:
            matched_pred = pred_boxes[batch_idx, pred_idx]
            matched_target = torch.cat([matched_pred.new_empty(0, 4)] + [
                t["boxes"][target_idx.to(t["boxes"].device)].to(matched_pred)
                for t, (_, target_idx) in zip(targets, indices)
            ])
            num = num_boxes.to(matched_pred.dtype)
            losses["loss_bbox"] = F.l1_loss(matched_pred, matched_target, reduction="sum") / num
            giou = paired_generalized_box_iou(box_cxcywh_to_xyxy(matched_pred), box_cxcywh_to_xyxy(matched_target))
            losses["loss_giou"] = (1 - giou).sum() / num
        if "cardinality" in self.losses:
            with torch.no_grad():
                predicted_objects = (pred_logits.argmax(dim=-1) != self.num_classes).sum(dim=1)
                target_counts = torch.tensor([float(t["labels"].shape[0]) for t in targets], device=device)
                losses["cardinality_error"] = F.l1_loss(predicted_objects.to(target_counts.dtype), target_counts)
        return losses

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
                f"weight_dict={self.weight_dict}")
