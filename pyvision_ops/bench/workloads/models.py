"""Benchmark workloads of the ``models`` family: whole training steps, what a user gets end to end.

Each row times one optimisation step built on this library against the same step built the way
a user without it would write it: same weights, same inputs, the reference using only PyTorch
(and SciPy). The results are checked first (losses and gradients within a float32 tolerance),
then both are timed. Every step zeroes the gradients with ``set_to_none`` and ends in
``loss.backward()`` (mode ``"fwd+.backward()"``).

* **SegNet training step**: ``pyvision_ops.models.SegNet`` (VGG16-bn encoder, mirrored decoder,
  this library's pooling with compact uint8 indices and its unpooling) against a deep copy whose
  pooling and unpooling modules are ``torch.nn.MaxPool2d(return_indices=True)`` and
  ``torch.nn.MaxUnpool2d`` (int64 flat indices); forward, cross-entropy, backward.
* **Style-transfer step**: VGG19 features of the image being optimised, the fused
  ``pyvision_ops.style_loss`` on Gatys et al.'s five style layers plus the content loss on
  relu4_2, backward to the image; against the same network on ``torch.nn.MaxPool2d`` with the
  Gram as ``bmm(F, F^T) / (C*H*W)`` and the squared-Frobenius loss composed from it.
* **DETR matching + Hungarian loss**: ``pyvision_ops.nn.HungarianMatcher`` and ``SetCriterion``
  against DETR's original recipe written here: the batch's cost matrix on the device, ``.cpu()``,
  ``scipy.optimize.linear_sum_assignment`` per image in a Python loop, the losses in torch.

These steps are dominated by convolutions (SegNet, VGG) that both sides run with the same torch
kernels, so their ratios are expected near 1x: they show what the ops' speedups are worth in a
whole step, not the ops' own speed (the op families' rows show that).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pyvision_ops.bench.workloads.core import (
    MODE_BACKWARD,
    CheckFailed,
    Inputs,
    Workload,
    assert_close,
    library,
    random_normal,
    register,
)

__all__: list = []

# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_close_scaled(label: str, ours: torch.Tensor, reference: torch.Tensor, tolerance: float) -> float:
    """Close within ``tolerance`` relative to the reference's largest magnitude (a gradient's
    small entries carry the rounding of its large ones)."""
    if ours.shape == reference.shape and ours.dtype == reference.dtype and ours.device == reference.device:
        if torch.equal(ours, reference):  # the common case for identical kernels; 29M SegNet weights
            return 0.0
    scale = float(reference.detach().abs().max()) if reference.numel() else 0.0
    return assert_close(label, ours.detach(), reference.detach(), atol=tolerance * (scale or 1.0), rtol=tolerance)


def _replace_modules(root: nn.Module, kind: type, build: Any) -> int:
    """Replace every submodule of type ``kind`` by ``build(old)``; return how many were replaced."""
    replaced = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                setattr(parent, name, build(child))
                replaced += 1
    return replaced


def _assert_library_free(model: nn.Module, what: str) -> None:
    # The reference must be what a user without this library runs: no layer of ours may remain.
    ours = [name for name, module in model.named_modules() if type(module).__module__.startswith("pyvision_ops.nn")]
    if ours:
        raise RuntimeError(f"{what}: the reference still holds pyvision_ops layers: {ours}")


# --------------------------------------------------------------------------------------------
# SegNet training step
# --------------------------------------------------------------------------------------------

_SEGNET_CLASSES = 11  # CamVid's
_SEGNET_TOLERANCE = 1e-4


class _SegNetResult(NamedTuple):
    loss: torch.Tensor
    grads: Dict[str, Optional[torch.Tensor]]


def _segnet_inputs(shape: Tuple[int, int, int, int], device: torch.device) -> Inputs:
    segnet_class = library().models.SegNet
    # SegNet draws its He initialisation from the global RNG: fork it so the weights are the same
    # on every run and the caller's RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ours = segnet_class(in_channels=shape[1], num_classes=_SEGNET_CLASSES)  # compact uint8 indices
    reference = copy.deepcopy(ours)
    # SegNet shares one pooling and one unpooling module between its stages.
    reference.pool = nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True)
    reference.unpool = nn.MaxUnpool2d(kernel_size=2, stride=2)
    _assert_library_free(reference, "SegNet")
    batch, _, height, width = shape
    labels = torch.randint(0, _SEGNET_CLASSES, (batch, height, width), generator=_generator(11))
    return {
        "ours_model": ours.to(device).train(),
        "reference_model": reference.to(device).train(),
        "images": random_normal(shape, device, seed=10),
        "labels": labels.to(device),
    }


def _segnet_step(model: nn.Module, inputs: Inputs) -> _SegNetResult:
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(inputs["images"]), inputs["labels"])
    loss.backward()
    return _SegNetResult(loss.detach(), {name: p.grad for name, p in model.named_parameters()})


def _segnet_check(ours: _SegNetResult, reference: _SegNetResult, inputs: Inputs) -> float:
    error = _assert_close_scaled("loss", ours.loss, reference.loss, _SEGNET_TOLERANCE)
    if list(ours.grads) != list(reference.grads):
        raise CheckFailed("the two networks' parameters differ in name or order")
    for name, reference_grad in reference.grads.items():
        ours_grad = ours.grads[name]
        if ours_grad is None or reference_grad is None:
            if ours_grad is not reference_grad:
                raise CheckFailed(f"{name}.grad: ours {'None' if ours_grad is None else 'set'}, "
                                  f"reference {'None' if reference_grad is None else 'set'}")
            continue
        error = max(error, _assert_close_scaled(f"{name}.grad", ours_grad, reference_grad, _SEGNET_TOLERANCE))
    return error


def _register_segnet(shape: Tuple[int, int, int, int], variant: str, devices: Tuple[str, ...]) -> None:
    batch, channels, height, width = shape
    register(
        Workload(
            family="models",
            op="SegNet training step",
            variant=variant,
            description=(
                f"SegNet VGG16-bn (13+13 convs), images ({batch},{channels},{height},{width}) fp32, "
                f"{_SEGNET_CLASSES} classes: forward, cross-entropy, backward to all weights"
            ),
            mode=MODE_BACKWARD,
            setup=lambda device: _segnet_inputs(shape, device),
            ours=lambda inputs: _segnet_step(inputs["ours_model"], inputs),
            reference=lambda inputs: _segnet_step(inputs["reference_model"], inputs),
            check=_segnet_check,
            ours_label="SegNet (nn.MaxPool2d(compact=True), nn.MaxUnpool2d); F.cross_entropy(...).backward()",
            reference_label="same weights, torch.nn.MaxPool2d(return_indices=True) + torch.nn.MaxUnpool2d",
            notes="conv-dominated: expect ~1x; loss and every weight gradient checked",
            devices=devices,
        )
    )


# --------------------------------------------------------------------------------------------
# style-transfer optimisation step
# --------------------------------------------------------------------------------------------

_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")  # Gatys et al.'s
_CONTENT_LAYER = "relu4_2"
_CONTENT_WEIGHT = 1.0
# With sum-reduced, C*H*W-normalised Grams this makes the style term about 10x the content term
# at the step benchmarked: both shape the image gradient.
_STYLE_WEIGHT = 10.0
_STYLE_TOLERANCE = 1e-3  # float32 Grams summed in different orders, through 16 convolutions back


class _StyleResult(NamedTuple):
    loss: torch.Tensor
    image_grad: Optional[torch.Tensor]


def _bmm_gram(features: torch.Tensor) -> torch.Tensor:
    flat = features.flatten(2)
    return torch.bmm(flat, flat.transpose(1, 2)) / flat[0].numel()


def _style_inputs(size: int, device: torch.device) -> Inputs:
    models = library().models
    ours = models.VGGFeatures("vgg19", layers=(*_STYLE_LAYERS, _CONTENT_LAYER))  # fixed-seed weights, frozen
    reference = copy.deepcopy(ours)
    replaced = _replace_modules(
        reference.features, library().nn.MaxPool2d,
        lambda old: nn.MaxPool2d(kernel_size=old.kernel_size, stride=old.stride),
    )
    if replaced != 5:
        raise RuntimeError(f"style transfer: expected VGG19's 5 poolings, replaced {replaced}")
    _assert_library_free(reference, "VGGFeatures")
    ours, reference = ours.to(device).eval(), reference.to(device).eval()

    shape = (1, 3, size, size)
    content = torch.rand(shape, generator=_generator(20)).to(device)
    style = torch.rand(shape, generator=_generator(21)).to(device)
    # A step in the middle of the optimisation: the image is neither the content nor noise, so
    # both the content and the style terms have a gradient.
    noise = torch.randn(shape, generator=_generator(22)).to(device)
    image = (content + 0.1 * noise).clamp(0.0, 1.0)
    # The targets are constants of the optimisation, computed once (by the reference, so both
    # sides chase identical numbers).
    with torch.no_grad():
        content_target = reference(models.imagenet_normalize(content))[_CONTENT_LAYER]
        style_features = reference(models.imagenet_normalize(style))
        style_grams = {name: _bmm_gram(style_features[name]) for name in _STYLE_LAYERS}
    return {
        "ours_vgg": ours,
        "reference_vgg": reference,
        "image": image.requires_grad_(True),
        "content_target": content_target,
        "style_grams": style_grams,
    }


def _style_step_ours(inputs: Inputs) -> _StyleResult:
    pyvision_ops = library()
    image = inputs["image"]
    image.grad = None
    features = inputs["ours_vgg"](pyvision_ops.models.imagenet_normalize(image))
    content = pyvision_ops.perceptual_loss(features[_CONTENT_LAYER], inputs["content_target"])
    style = sum(pyvision_ops.style_loss(features[name], inputs["style_grams"][name]) for name in _STYLE_LAYERS)
    loss = _CONTENT_WEIGHT * content + _STYLE_WEIGHT * style
    loss.backward()
    return _StyleResult(loss.detach(), image.grad)


def _style_step_reference(inputs: Inputs) -> _StyleResult:
    image = inputs["image"]
    image.grad = None
    features = inputs["reference_vgg"](library().models.imagenet_normalize(image))
    content = F.mse_loss(features[_CONTENT_LAYER], inputs["content_target"])
    style = sum((_bmm_gram(features[name]) - inputs["style_grams"][name]).pow(2).sum() for name in _STYLE_LAYERS)
    loss = _CONTENT_WEIGHT * content + _STYLE_WEIGHT * style
    loss.backward()
    return _StyleResult(loss.detach(), image.grad)


def _style_check(ours: _StyleResult, reference: _StyleResult, inputs: Inputs) -> float:
    if ours.image_grad is None or reference.image_grad is None:
        raise CheckFailed("image.grad is None after backward()")
    error = _assert_close_scaled("loss", ours.loss, reference.loss, _STYLE_TOLERANCE)
    return max(error, _assert_close_scaled("image.grad", ours.image_grad, reference.image_grad, _STYLE_TOLERANCE))


def _register_style_transfer(size: int, devices: Tuple[str, ...]) -> None:
    register(
        Workload(
            family="models",
            op="style transfer step",
            variant=f"VGG19 1x3x{size}x{size}",
            description=(
                f"VGG19 (fixed-seed weights) features of a 1x3x{size}x{size} image, style loss (sum, Gram / CHW) "
                f"on relu1_1..relu5_1 x{_STYLE_WEIGHT:g} + content MSE on relu4_2, backward to the image"
            ),
            mode=MODE_BACKWARD,
            setup=lambda device: _style_inputs(size, device),
            ours=_style_step_ours,
            reference=_style_step_reference,
            check=_style_check,
            ours_label="VGGFeatures + style_loss(F_l, G_l) x5 + perceptual_loss; .backward()",
            reference_label=(
                "VGGFeatures on torch.nn.MaxPool2d + (bmm(F, F^T)/CHW - G_l).pow(2).sum() x5 + mse; .backward()"
            ),
            notes="conv-dominated: expect ~1x; loss and image gradient checked",
            devices=devices,
        )
    )


# --------------------------------------------------------------------------------------------
# DETR matching + Hungarian loss step
# --------------------------------------------------------------------------------------------

_DETR_BATCH = 64
_DETR_QUERIES = 100
_DETR_CLASSES = 91  # COCO's label space, as in DETR; the logits have one more column, "no object"
_DETR_TARGETS = (2, 20)  # boxes per image, inclusive range
_DETR_COST_WEIGHTS = {"class": 1.0, "bbox": 5.0, "giou": 2.0}
_DETR_LOSS_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
_DETR_EOS_COEF = 0.1
_DETR_LOSS_TOLERANCE = 1e-4
# float32 costs computed in different orders: near-equal optima may swap; their totals may not
# differ by more than rounding.
_DETR_COST_TOLERANCE = 1e-4

Matching = List[Tuple[torch.Tensor, torch.Tensor]]


class _DetrResult(NamedTuple):
    total: torch.Tensor
    losses: Dict[str, torch.Tensor]
    matching: Matching  # per image (pred_idx, target_idx) int64 on the CPU, pred_idx ascending
    logits_grad: Optional[torch.Tensor]
    boxes_grad: Optional[torch.Tensor]


class _RecordingMatcher(nn.Module):
    """Runs a matcher and keeps its last answer, so the check can compare the matchings."""

    def __init__(self, matcher: nn.Module) -> None:
        super().__init__()
        self.matcher = matcher
        self.last: Matching = []

    def forward(self, outputs: Any, targets: Any) -> Matching:
        self.last = self.matcher(outputs, targets)
        return self.last


def _detr_inputs(device: torch.device) -> Inputs:
    pyvision_ops = library()
    generator = _generator(30)
    shape = (_DETR_BATCH, _DETR_QUERIES)
    pred_logits = torch.randn((*shape, _DETR_CLASSES + 1), generator=generator)
    # A box head's output: the sigmoid of unbounded numbers.
    pred_boxes = torch.randn((*shape, 4), generator=generator).sigmoid()
    counts = torch.randint(_DETR_TARGETS[0], _DETR_TARGETS[1] + 1, (_DETR_BATCH,), generator=generator)
    targets = []
    for count in counts.tolist():
        centres = 0.2 + 0.6 * torch.rand((count, 2), generator=generator)
        sizes = 0.05 + 0.3 * torch.rand((count, 2), generator=generator)
        labels = torch.randint(0, _DETR_CLASSES, (count,), generator=generator)
        targets.append({"labels": labels.to(device), "boxes": torch.cat([centres, sizes], dim=1).to(device)})
    matcher = _RecordingMatcher(pyvision_ops.nn.HungarianMatcher(
        _DETR_COST_WEIGHTS["class"], _DETR_COST_WEIGHTS["bbox"], _DETR_COST_WEIGHTS["giou"]))
    criterion = pyvision_ops.nn.SetCriterion(_DETR_CLASSES, matcher, _DETR_LOSS_WEIGHTS, _DETR_EOS_COEF)
    class_weights = torch.ones(_DETR_CLASSES + 1)
    class_weights[-1] = _DETR_EOS_COEF
    return {
        "pred_logits": pred_logits.to(device).requires_grad_(True),
        "pred_boxes": pred_boxes.to(device).requires_grad_(True),
        "targets": targets,
        "criterion": criterion.to(device),
        "class_weights": class_weights.to(device),
    }


def _detr_step_ours(inputs: Inputs) -> _DetrResult:
    pred_logits, pred_boxes = inputs["pred_logits"], inputs["pred_boxes"]
    pred_logits.grad = None
    pred_boxes.grad = None
    criterion = inputs["criterion"]
    losses = criterion({"pred_logits": pred_logits, "pred_boxes": pred_boxes}, inputs["targets"])
    total = criterion.weighted_sum(losses)
    total.backward()
    matching = [(rows.cpu(), cols.cpu()) for rows, cols in criterion.matcher.last]
    return _DetrResult(total.detach(), {k: v.detach() for k, v in losses.items()}, matching,
                       pred_logits.grad, pred_boxes.grad)


# The reference: DETR's recipe, written from its formulas, with no code of this library.


def _xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def _giou_matrix(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """GIoU of every pair of xyxy boxes (N, 4) x (M, 4): IoU - (|C| - |A u B|) / |C|."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    inner = (torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
             - torch.max(boxes1[:, None, :2], boxes2[None, :, :2])).clamp(min=0)
    intersection = inner[..., 0] * inner[..., 1]
    union = area1[:, None] + area2[None, :] - intersection
    outer = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    enclosing = outer[..., 0] * outer[..., 1]
    return intersection / union - (enclosing - union) / enclosing


def _reference_costs(pred_logits: torch.Tensor, pred_boxes: torch.Tensor,
                     targets: Sequence[Dict[str, torch.Tensor]]) -> torch.Tensor:
    """(B, Q, sum T_b): every query against every target of the batch, as DETR computes it."""
    batch, queries = pred_logits.shape[:2]
    probabilities = pred_logits.flatten(0, 1).softmax(-1)
    boxes = pred_boxes.flatten(0, 1)
    target_labels = torch.cat([t["labels"] for t in targets])
    target_boxes = torch.cat([t["boxes"] for t in targets])
    cost_class = -probabilities[:, target_labels]
    cost_bbox = torch.cdist(boxes, target_boxes, p=1)
    cost_giou = -_giou_matrix(_xyxy(boxes), _xyxy(target_boxes))
    cost = (_DETR_COST_WEIGHTS["bbox"] * cost_bbox + _DETR_COST_WEIGHTS["class"] * cost_class
            + _DETR_COST_WEIGHTS["giou"] * cost_giou)
    return cost.view(batch, queries, -1)


def _reference_matching(pred_logits: torch.Tensor, pred_boxes: torch.Tensor,
                        targets: Sequence[Dict[str, torch.Tensor]]) -> Matching:
    from scipy.optimize import linear_sum_assignment

    with torch.no_grad():
        costs = _reference_costs(pred_logits, pred_boxes, targets).cpu()
    sizes = [len(t["boxes"]) for t in targets]
    matching = []
    for image, block in enumerate(costs.split(sizes, dim=-1)):
        rows, cols = linear_sum_assignment(block[image])
        matching.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return matching


def _detr_step_reference(inputs: Inputs) -> _DetrResult:
    pred_logits, pred_boxes, targets = inputs["pred_logits"], inputs["pred_boxes"], inputs["targets"]
    pred_logits.grad = None
    pred_boxes.grad = None
    matching = _reference_matching(pred_logits, pred_boxes, targets)

    image_index = torch.cat([torch.full_like(rows, image) for image, (rows, _) in enumerate(matching)])
    query_index = torch.cat([rows for rows, _ in matching])
    num_boxes = max(float(sum(len(t["labels"]) for t in targets)), 1.0)

    target_classes = torch.full(pred_logits.shape[:2], _DETR_CLASSES, dtype=torch.int64, device=pred_logits.device)
    target_classes[image_index, query_index] = torch.cat(
        [t["labels"][cols.to(t["labels"].device)] for t, (_, cols) in zip(targets, matching)])
    loss_ce = F.cross_entropy(pred_logits.transpose(1, 2), target_classes, weight=inputs["class_weights"])

    matched_boxes = pred_boxes[image_index, query_index]
    matched_targets = torch.cat([t["boxes"][cols.to(t["boxes"].device)] for t, (_, cols) in zip(targets, matching)])
    loss_bbox = F.l1_loss(matched_boxes, matched_targets, reduction="none").sum() / num_boxes
    loss_giou = (1 - torch.diag(_giou_matrix(_xyxy(matched_boxes), _xyxy(matched_targets)))).sum() / num_boxes

    losses = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
    total = sum(_DETR_LOSS_WEIGHTS[name] * value for name, value in losses.items())
    total.backward()
    return _DetrResult(total.detach(), {k: v.detach() for k, v in losses.items()}, matching,
                       pred_logits.grad, pred_boxes.grad)


def _validate_matching(matching: Matching, sizes: Sequence[int]) -> None:
    if len(matching) != len(sizes):
        raise CheckFailed(f"ours matched {len(matching)} images, expected {len(sizes)}")
    for image, ((rows, cols), size) in enumerate(zip(matching, sizes)):
        expected = min(size, _DETR_QUERIES)
        if rows.shape != (expected,) or cols.shape != (expected,):
            raise CheckFailed(f"image {image}: {tuple(rows.shape)} pairs, expected {expected}")
        in_range = expected == 0 or (0 <= int(rows[0]) and int(rows[-1]) < _DETR_QUERIES)
        if not (in_range and bool((rows[1:] > rows[:-1]).all())):
            raise CheckFailed(f"image {image}: query indices not ascending in [0, {_DETR_QUERIES})")
        if not torch.equal(cols.sort().values, torch.arange(size)):
            raise CheckFailed(f"image {image}: target indices are not a permutation of 0..{size - 1}")


def _detr_check(ours: _DetrResult, reference: _DetrResult, inputs: Inputs) -> float:
    targets = inputs["targets"]
    sizes = [len(t["labels"]) for t in targets]
    _validate_matching(ours.matching, sizes)
    # The totals of the matched costs, on one cost matrix (the reference formula in float64).
    with torch.no_grad():
        costs = _reference_costs(inputs["pred_logits"].double(), inputs["pred_boxes"].double(),
                                 [{k: v.double() if v.is_floating_point() else v for k, v in t.items()}
                                  for t in targets]).cpu()
    blocks = costs.split(sizes, dim=-1)
    error = 0.0
    identical = []
    for image, ((rows, cols), (reference_rows, reference_cols)) in enumerate(zip(ours.matching, reference.matching)):
        block = blocks[image][image]
        ours_total, reference_total = float(block[rows, cols].sum()), float(block[reference_rows, reference_cols].sum())
        difference = abs(ours_total - reference_total)
        error = max(error, difference)
        if difference > _DETR_COST_TOLERANCE * (1.0 + abs(reference_total)):
            raise CheckFailed(
                f"image {image}: matched cost {ours_total!r}, the reference's optimum {reference_total!r}", difference
            )
        identical.append(torch.equal(rows, reference_rows) and torch.equal(cols, reference_cols))

    for label, ours_grad, reference_grad in (("pred_logits.grad", ours.logits_grad, reference.logits_grad),
                                             ("pred_boxes.grad", ours.boxes_grad, reference.boxes_grad)):
        if ours_grad is None or reference_grad is None:
            raise CheckFailed(f"{label} is None after backward()")
        if all(identical):
            error = max(error, _assert_close_scaled(label, ours_grad, reference_grad, _DETR_LOSS_TOLERANCE))
        else:
            # An image matched differently (a tie) gets different gradients; the others must agree
            # (the normalisers, counts of boxes and of matched queries, do not depend on the tie).
            same = torch.tensor(identical, device=ours_grad.device)
            if not bool(same.any()):
                raise CheckFailed("no image was matched as the reference matched it")
            error = max(error, _assert_close_scaled(label, ours_grad[same], reference_grad[same], _DETR_LOSS_TOLERANCE))
    if all(identical):
        for name in ("loss_ce", "loss_bbox", "loss_giou"):
            if name not in ours.losses:
                raise CheckFailed(f"ours returned no {name}")
            error = max(
                error, _assert_close_scaled(name, ours.losses[name], reference.losses[name], _DETR_LOSS_TOLERANCE)
            )
        error = max(error, _assert_close_scaled("total loss", ours.total, reference.total, _DETR_LOSS_TOLERANCE))
    return error


def _register_detr() -> None:
    register(
        Workload(
            family="models",
            op="DETR matching + Hungarian loss",
            variant=f"{_DETR_BATCH} images x {_DETR_QUERIES} queries",
            description=(
                f"pred_logits ({_DETR_BATCH},{_DETR_QUERIES},{_DETR_CLASSES + 1}), pred_boxes ({_DETR_BATCH},"
                f"{_DETR_QUERIES},4) fp32, {_DETR_TARGETS[0]}-{_DETR_TARGETS[1]} targets per image; costs 1/5/2, "
                f"losses ce (eos {_DETR_EOS_COEF:g}) + 5 L1 + 2 GIoU, backward to both"
            ),
            mode=MODE_BACKWARD,
            setup=_detr_inputs,
            ours=_detr_step_ours,
            reference=_detr_step_reference,
            check=_detr_check,
            ours_label="SetCriterion(HungarianMatcher()) -> weighted_sum(...).backward()",
            reference_label="DETR recipe: batch cost on device, .cpu(), scipy per image, losses, .backward()",
            # Said in the table so the ratio is not read as the solver's: SciPy's loop is ~1 ms here.
            notes=(
                "reference time is mostly DETR's batch-wide cost (every query x all targets of the batch, "
                "B times the per-image pairs); matched-cost totals, losses, gradients checked"
            ),
        )
    )


def _register_models_family() -> None:
    # CPU sizes keep a call under about a second on 2 cores; the CUDA rows use real image sizes.
    _register_segnet((4, 3, 64, 64), "VGG16-bn 4x3x64x64", ("cpu",))
    _register_segnet((4, 3, 360, 480), "VGG16-bn 4x3x360x480 (CamVid)", ("cuda",))
    _register_style_transfer(256, ("cpu",))
    _register_style_transfer(512, ("cuda",))
    _register_detr()


_register_models_family()
