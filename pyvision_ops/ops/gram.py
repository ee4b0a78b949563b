"""Gram matrices and the style loss (neural style transfer, Gatys et al.).

``gram_matrix`` computes G[n] = F[n] F[n]^T for features F (N, C, H*W), one triangle only (half
the multiply-adds of a batched matmul), optionally divided by C*H*W. ``style_loss`` is the
squared Frobenius distance between G(features) and a target Gram, fused: its backward forms the
gradient from (G - G_target) F without an autograd graph through the Gram.
"""

from __future__ import annotations

from typing import Sequence

import torch

from pyvision_ops._extension import ops, register_when_loaded
from pyvision_ops.ops._fake import register_fake

__all__ = ["gram_matrix", "style_loss", "perceptual_loss"]


_REDUCTIONS = {"sum": 0, "mean": 1}


def gram_matrix(features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Gram matrix of feature maps.

    Parameters
    ----------
    features : Tensor (N, C, H, W) or (N, C, L)
        float32, float64, float16 or bfloat16 (accumulated in float32); channels_last is read in
        place.
    normalize : bool
        Divide by C*H*W (C*L), the 1/(C_j H_j W_j) of the style-transfer literature.

    Returns
    -------
    Tensor (N, C, C), features' dtype: G[n, c, c'] = sum_hw F[n, c, hw] F[n, c', hw] (/ C H W).
    """
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a Tensor, got {type(features).__name__}")
    return ops().gram_matrix(features, bool(normalize))


def style_loss(
    features: torch.Tensor, target_gram: torch.Tensor, normalize: bool = True, reduction: str = "sum"
) -> torch.Tensor:
    """Squared Frobenius distance ||G(features) - target_gram||^2, fused forward and backward.

    Parameters
    ----------
    features : Tensor (N, C, H, W) or (N, C, L)
    target_gram : Tensor (N, C, C), or (C, C) / (1, C, C) shared by the whole batch. Treated as a
        constant (no gradient flows to it), as a style target is.
    normalize : bool
        Whether G(features) is divided by C*H*W (the target must use the same convention).
    reduction : "sum" or "mean"
        "sum" adds the squared differences over every element of every batch item; "mean"
        averages over all N*C*C of them.

    Returns
    -------
    Tensor (), features' dtype.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if not isinstance(features, torch.Tensor) or not isinstance(target_gram, torch.Tensor):
        raise TypeError("features and target_gram must be Tensors")
    loss, _gram = ops()._style_loss_forward(features, target_gram.detach(), bool(normalize), _REDUCTIONS[reduction])
    return loss


def perceptual_loss(features_hat: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Feature reconstruction loss: mean over the batch of 1/(C H W) ||phi(y_hat) - phi(y)||^2.

    Parameters
    ----------
    features_hat, features : Tensor (N, C, H, W) (or (N, C, L)), the same shape.
    """
    if features_hat.shape != features.shape:
        raise ValueError(
            f"features_hat and features must have the same shape, got {tuple(features_hat.shape)} "
            f"and {tuple(features.shape)}"
        )
    if features.dim() < 2:
        raise ValueError(f"features must be at least 2-D (N, C, ...), got {features.dim()}-D")
    n = features.shape[0]
    if n == 0:
        return features_hat.new_zeros(())
    # Summed in float32 at least (DESIGN: 16-bit inputs accumulate in float32), returned in the
    # inputs' dtype.
    acc = torch.promote_types(features.dtype, torch.float32)
    total = (features_hat.to(acc) - features.to(acc)).pow(2).sum() / features[0].numel() / n
    return total.to(features.dtype)


@register_when_loaded
def _register() -> None:
    """Fake kernels and autograd of the family's operators (they need the compiled schemas)."""

    # --------------------------------------------------------------------------------------------
    # fake kernels
    # --------------------------------------------------------------------------------------------

    def _feature_channels(features: torch.Tensor) -> int:
        torch._check(
            features.dim() in (3, 4),
            lambda: f"gram_matrix: features must be 3-D (N, C, L) or 4-D (N, C, H, W), got {features.dim()}-D",
        )
        return features.shape[1]

    @register_fake("pyvision_ops::gram_matrix")
    def _gram_matrix_fake(features, normalize):
        c = _feature_channels(features)
        return features.new_empty((features.shape[0], c, c))

    def _grad_like_features(features: torch.Tensor) -> torch.Tensor:
        # The layout symmetric_times_features (gram_composite.cpp) gives the gradient: the
        # features' channels-last memory (prepare_gram_input's rule) is kept, anything else is
        # contiguous; an empty input gives zeros_like(features).
        if features.numel() == 0:
            return torch.empty_like(features)
        moved = features.movedim(1, -1)
        if features.shape[1] > 1 and moved.is_contiguous() and not features.is_contiguous():
            return features.new_empty(moved.shape).movedim(-1, 1)
        return features.new_empty(features.shape)

    @register_fake("pyvision_ops::_gram_matrix_backward")
    def _gram_matrix_backward_fake(grad_gram, features, normalize):
        return _grad_like_features(features)

    @register_fake("pyvision_ops::_style_loss_forward")
    def _style_loss_forward_fake(features, target_gram, normalize, reduction):
        c = _feature_channels(features)
        return features.new_empty(()), features.new_empty((features.shape[0], c, c))

    @register_fake("pyvision_ops::_style_loss_backward")
    def _style_loss_backward_fake(grad_loss, grad_gram, features, gram, target_gram, normalize, reduction):
        return _grad_like_features(features)

    # --------------------------------------------------------------------------------------------
    # autograd
    # --------------------------------------------------------------------------------------------

    def _gram_setup_context(ctx, inputs, output):
        features, normalize = inputs
        ctx.save_for_backward(features)
        ctx.normalize = normalize

    def _gram_backward(ctx, grad_gram):
        (features,) = ctx.saved_tensors
        return ops()._gram_matrix_backward(grad_gram, features, ctx.normalize), None

    torch.library.register_autograd("pyvision_ops::gram_matrix", _gram_backward, setup_context=_gram_setup_context)

    def _style_setup_context(ctx, inputs, output):
        features, target_gram, normalize, reduction = inputs
        ctx.save_for_backward(features, output[1], target_gram)
        ctx.args = (normalize, reduction)

    def _style_backward(ctx, grad_loss, grad_gram):
        features, gram, target_gram = ctx.saved_tensors
        normalize, reduction = ctx.args
        if grad_loss is None:
            grad_loss = torch.zeros((), dtype=features.dtype, device=features.device)
        if grad_gram is None:
            grad_gram = torch.zeros((0,), dtype=features.dtype, device=features.device)
        grad_features = ops()._style_loss_backward(
            grad_loss, grad_gram, features, gram, target_gram, normalize, reduction
        )
        return grad_features, None, None, None

    torch.library.register_autograd(
        "pyvision_ops::_style_loss_forward", _style_backward, setup_context=_style_setup_context
    )
