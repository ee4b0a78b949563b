"""Benchmark workloads of the ``gram`` family (style transfer): VGG-layer-sized feature maps.

References: ``torch.bmm(F, F^T) / (C*H*W)`` and the style loss composed from it, the way
style-transfer code usually writes them. The backward is timed twice: with
``torch.autograd.grad`` and a fixed upstream gradient (mode ``"fwd+bwd"``), and as users write
it, ``gram.sum().backward()`` / ``loss.backward()`` into ``.grad`` (mode ``"fwd+.backward()"``).
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import torch

from pyvision_ops.bench.workloads.core import (
    MODE_AUTOGRAD_GRAD,
    MODE_BACKWARD,
    MODE_FORWARD,
    Inputs,
    Workload,
    assert_close,
    library,
    register,
    sum_backward,
)

__all__: list = []

_CPU_SHAPES: Tuple[Tuple[str, Tuple[int, int, int, int]], ...] = (
    ("relu2_1-like", (8, 128, 128, 128)),
    ("relu3_1-like", (8, 256, 64, 64)),
    ("relu4_1-like", (8, 512, 32, 32)),
)
_CUDA_BF16_SHAPE = (16, 256, 128, 128)


def _features(
    shape: Sequence[int], device: torch.device, dtype: torch.dtype, with_grad: bool, channels_last: bool = False
) -> Inputs:
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(tuple(shape), generator=generator).to(device=device, dtype=dtype)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    n, c = shape[0], shape[1]
    inputs: Inputs = {"features": features.requires_grad_(with_grad)}
    inputs["grad_gram"] = torch.randn((n, c, c), generator=generator).to(device=device, dtype=dtype)
    # A style target: the Gram of other features (normalised like ours).
    other = torch.randn(tuple(shape), generator=generator).to(device=device, dtype=dtype)
    flat = other.flatten(2)
    inputs["target_gram"] = (torch.bmm(flat, flat.transpose(1, 2)) / flat[0].numel()).detach()
    return inputs


def _bmm_gram(features: torch.Tensor) -> torch.Tensor:
    flat = features.flatten(2)
    return torch.bmm(flat, flat.transpose(1, 2)) / flat[0].numel()


def _gram_check(tolerance: float):
    def check(ours: Any, reference: Any, inputs: Inputs) -> float:
        ours_list = ours if isinstance(ours, tuple) else (ours,)
        reference_list = reference if isinstance(reference, tuple) else (reference,)
        error = 0.0
        for label, a, b in zip(("gram", "grad"), ours_list, reference_list):
            scale = float(b.detach().abs().max()) or 1.0
            error = max(error, assert_close(label, a.detach(), b.detach(), atol=tolerance * scale, rtol=tolerance))
        return error

    return check


def _register(label: str, shape: Sequence[int], dtype: torch.dtype, devices: Tuple[str, ...]) -> None:
    dtype_name = str(dtype).replace("torch.", "")
    description = f"{label} features {tuple(shape)} {dtype_name}"
    tolerance = {torch.float32: 1e-4, torch.float64: 1e-10}.get(dtype, 2e-2)
    flops = 2 * shape[0] * shape[1] * shape[1] * shape[2] * shape[3]
    note = f"bmm: {flops / 1e9:.2f} GFLOP; ours computes one triangle"

    register(
        Workload(
            family="gram",
            op="gram_matrix",
            variant=label,
            description=description,
            mode=MODE_FORWARD,
            setup=lambda device: _features(shape, device, dtype, with_grad=False),
            ours=lambda inputs: library().gram_matrix(inputs["features"]),
            reference=lambda inputs: _bmm_gram(inputs["features"]),
            check=_gram_check(tolerance),
            ours_label="gram_matrix(F)",
            reference_label="bmm(F, F^T) / (C*H*W)",
            notes=note,
            devices=devices,
        )
    )
    if dtype != torch.float32 or label != "relu3_1-like":
        return

    def ours_grad(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        gram = library().gram_matrix(inputs["features"])
        (grad,) = torch.autograd.grad(gram, inputs["features"], inputs["grad_gram"])
        return gram, grad

    def reference_grad(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        gram = _bmm_gram(inputs["features"])
        (grad,) = torch.autograd.grad(gram, inputs["features"], inputs["grad_gram"])
        return gram, grad

    register(
        Workload(
            family="gram",
            op="gram_matrix",
            variant=label,
            description=description,
            mode=MODE_AUTOGRAD_GRAD,
            setup=lambda device: _features(shape, device, dtype, with_grad=True),
            ours=ours_grad,
            reference=reference_grad,
            check=_gram_check(tolerance),
            ours_label="gram_matrix(F) + grad",
            reference_label="bmm(F, F^T) / (C*H*W) + grad",
            notes="backward: one product (dG + dG^T) F (CPU: the packed AVX2 kernel) where autograd runs two bmm",
            devices=devices,
        )
    )
    def ours_sum_backward(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        return sum_backward(inputs["features"], lambda: library().gram_matrix(inputs["features"]))

    def reference_sum_backward(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        return sum_backward(inputs["features"], lambda: _bmm_gram(inputs["features"]))

    # The upstream gradient of sum() is an expanded scalar (stride 0), not a dense (N, C, C).
    register(
        Workload(
            family="gram",
            op="gram_matrix",
            variant=label,
            description=description,
            mode=MODE_BACKWARD,
            setup=lambda device: _features(shape, device, dtype, with_grad=True),
            ours=ours_sum_backward,
            reference=reference_sum_backward,
            check=_gram_check(tolerance),
            ours_label="gram_matrix(F).sum().backward()",
            reference_label="(bmm(F, F^T) / (C*H*W)).sum().backward()",
            notes="upstream gradient: sum()'s expanded scalar; F.grad set to None each call",
            devices=devices,
        )
    )
    # The same in channels_last memory (read in place by ours; bmm reads the strided view).
    register(
        Workload(
            family="gram",
            op="gram_matrix",
            variant=f"{label} channels_last",
            description=f"{description} channels_last",
            mode=MODE_AUTOGRAD_GRAD,
            setup=lambda device: _features(shape, device, dtype, with_grad=True, channels_last=True),
            ours=ours_grad,
            reference=reference_grad,
            check=_gram_check(tolerance),
            ours_label="gram_matrix(F) + grad",
            reference_label="bmm(F, F^T) / (C*H*W) + grad",
            notes="channels_last: G = X^T X and dX = X S read and written in (N, HW, C) memory",
            devices=devices,
        )
    )
    register(
        Workload(
            family="gram",
            op="gram_matrix",
            variant=f"{label} channels_last",
            description=f"{description} channels_last",
            mode=MODE_BACKWARD,
            setup=lambda device: _features(shape, device, dtype, with_grad=True, channels_last=True),
            ours=ours_sum_backward,
            reference=reference_sum_backward,
            check=_gram_check(tolerance),
            ours_label="gram_matrix(F).sum().backward()",
            reference_label="(bmm(F, F^T) / (C*H*W)).sum().backward()",
            notes="channels_last; upstream gradient: sum()'s expanded scalar",
            devices=devices,
        )
    )

    def ours_style(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        loss = library().style_loss(inputs["features"], inputs["target_gram"])
        (grad,) = torch.autograd.grad(loss, inputs["features"])
        return loss, grad

    def reference_style(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        loss = (_bmm_gram(inputs["features"]) - inputs["target_gram"]).pow(2).sum()
        (grad,) = torch.autograd.grad(loss, inputs["features"])
        return loss, grad

    register(
        Workload(
            family="gram",
            op="style_loss",
            variant=label,
            description=description,
            mode=MODE_AUTOGRAD_GRAD,
            setup=lambda device: _features(shape, device, dtype, with_grad=True),
            ours=ours_style,
            reference=reference_style,
            check=_gram_check(tolerance),
            ours_label="style_loss(F, G_target) + grad",
            reference_label="(bmm(F, F^T)/(CHW) - G_target).pow(2).sum() + grad",
            notes="fused: the Gram of the forward is reused, backward is one product (dG + dG^T) F",
            devices=devices,
        )
    )

    def ours_style_backward(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        features = inputs["features"]
        return sum_backward(features, lambda: library().style_loss(features, inputs["target_gram"]))

    def reference_style_backward(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        features = inputs["features"]
        return sum_backward(features, lambda: (_bmm_gram(features) - inputs["target_gram"]).pow(2).sum())

    register(
        Workload(
            family="gram",
            op="style_loss",
            variant=label,
            description=description,
            mode=MODE_BACKWARD,
            setup=lambda device: _features(shape, device, dtype, with_grad=True),
            ours=ours_style_backward,
            reference=reference_style_backward,
            check=_gram_check(tolerance),
            ours_label="style_loss(F, G_target).backward()",
            reference_label="(bmm(F, F^T)/(CHW) - G_target).pow(2).sum().backward()",
            notes="fused; F.grad set to None each call",
            devices=devices,
        )
    )


def _register_gram_family() -> None:
    for label, shape in _CPU_SHAPES:
        _register(label, shape, torch.float32, ("cpu", "cuda"))
    _register("relu3_1-like float64", _CPU_SHAPES[1][1], torch.float64, ("cpu",))
    _register("H100 bf16", _CUDA_BF16_SHAPE, torch.bfloat16, ("cuda",))


_register_gram_family()
