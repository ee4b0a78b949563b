"""Independent float64 references of op family 2 (Gram matrix, style loss, perceptual loss).

Every reference computes in float64 on the CPU (einsum, plain sums) and returns CPU tensors.
Gradients come from PyTorch's autograd through these float64 formulas, never from our ops.
"""

from __future__ import annotations

import torch

__all__ = [
    "reference_gram_backward",
    "reference_gram_matrix",
    "reference_perceptual_loss",
    "reference_style_loss",
    "reference_style_loss_backward",
]


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


def reference_gram_backward(x: torch.Tensor, grad_gram: torch.Tensor, normalize: bool) -> torch.Tensor:
    """dL/dF of ``gram_matrix(x)`` for the upstream gradient ``grad_gram``, by PyTorch's autograd
    through the float64 reference (the closed form is (dG + dG^T) F / norm)."""
    x64 = x.detach().to(device="cpu", dtype=torch.float64).requires_grad_(True)
    reference_gram_matrix(x64, normalize).backward(grad_gram.detach().to(device="cpu", dtype=torch.float64))
    return x64.grad


def reference_style_loss_backward(
    x: torch.Tensor, target: torch.Tensor, normalize: bool, reduction: str, grad_loss: float = 1.0
) -> torch.Tensor:
    """d(grad_loss * style_loss(x, target))/dx in float64 on the CPU, by autograd."""
    x64 = x.detach().to(device="cpu", dtype=torch.float64).requires_grad_(True)
    (reference_style_loss(x64, target, normalize, reduction) * grad_loss).backward()
    return x64.grad


def reference_perceptual_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over the batch of 1/(C H W) ||a_n - b_n||^2, in float64 (differentiable in a)."""
    a64 = a.to(device="cpu", dtype=torch.float64)
    b64 = b.detach().to(device="cpu", dtype=torch.float64)
    per_item = [(a64[i] - b64[i]).pow(2).sum() / a64[i].numel() for i in range(a64.shape[0])]
    return torch.stack(per_item).mean()
