"""Modules for neural style transfer: the Gram matrix, the style loss and the perceptual loss.

``GramMatrix`` and ``StyleLoss`` wrap ``pyvision_ops.gram_matrix`` and the fused
``pyvision_ops.style_loss``; ``StyleLoss`` computes its target's Gram once, at construction, and
keeps it as a buffer (it moves with ``.to()`` and is saved in the ``state_dict``).
``PerceptualLoss`` is the feature reconstruction loss of Johnson, Alahi and Fei-Fei (ECCV 2016)
over the chosen layers of a feature extractor such as ``pyvision_ops.models.VGGFeatures``.
"""

from __future__ import annotations

from typing import Callable, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from pyvision_ops.ops.gram import gram_matrix, perceptual_loss, style_loss

__all__ = ["GramMatrix", "StyleLoss", "PerceptualLoss"]

_REDUCTIONS = ("sum", "mean")


class GramMatrix(nn.Module):
    """Gram matrix of feature maps, ``pyvision_ops.gram_matrix`` as a module.

    Parameters
    ----------
    normalize : bool, default True
        Divide by C*H*W (the 1/(C_j H_j W_j) of the style-transfer literature).

    Shape
    -----
    input : (N, C, H, W) or (N, C, L)
    output : (N, C, C): G[n, c, c'] = sum_hw F[n, c, hw] F[n, c', hw] (/ C H W)

    Examples
    --------
    >>> GramMatrix()(torch.randn(2, 64, 32, 32)).shape
    torch.Size([2, 64, 64])
    """

    normalize: bool

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize

    def forward(self, features: Tensor) -> Tensor:
        return gram_matrix(features, self.normalize)

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"


class StyleLoss(nn.Module):
    """Squared Frobenius distance between the Gram of the input and a fixed target Gram.

    The target Gram is computed once from ``target_features`` and stored as the buffer
    ``target_gram``; ``forward`` is the fused ``pyvision_ops.style_loss``.

    Parameters
    ----------
    target_features : Tensor (N_t, C, H_t, W_t) or (N_t, C, L_t)
        Features of the style image(s). Detached: no gradient flows to them. Their spatial size
        may differ from the input's (a Gram is C x C whatever the size). With N_t = 1 the target
        is shared by every item of the input batch; otherwise N_t must equal the input's N.
    normalize : bool, default True
        Divide both Grams by C*H*W (each by its own H*W).
    reduction : "sum" or "mean", default "sum"
        Sum the squared differences over all N*C*C elements, or average them.

    Attributes
    ----------
    target_gram : Tensor (N_t, C, C), buffer

    Shape
    -----
    input : (N, C, H, W) or (N, C, L)
    output : () scalar

    Examples
    --------
    >>> criterion = StyleLoss(torch.randn(1, 64, 48, 48))
    >>> features = torch.randn(1, 64, 32, 32, requires_grad=True)
    >>> criterion(features).backward()
    """

    target_gram: Tensor
    normalize: bool
    reduction: str

    def __init__(self, target_features: Tensor, normalize: bool = True, reduction: str = "sum") -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.normalize = normalize
        self.reduction = reduction
        with torch.no_grad():
            target_gram = gram_matrix(target_features.detach(), normalize)
        self.register_buffer("target_gram", target_gram)

    def forward(self, features: Tensor) -> Tensor:
        return style_loss(features, self.target_gram, self.normalize, self.reduction)

    def extra_repr(self) -> str:
        channels = self.target_gram.shape[-1]
        return f"channels={channels}, normalize={self.normalize}, reduction={self.reduction!r}"


class PerceptualLoss(nn.Module):
    """Feature reconstruction loss over chosen layers of a feature extractor.

    ``loss(y_hat, y) = sum_l w_l * 1/(C_l H_l W_l) ||phi_l(y_hat) - phi_l(y)||^2`` (averaged over
    the batch), each term ``pyvision_ops.perceptual_loss``. The target ``y`` is a constant: its
    features are computed without autograd, so no gradient flows to it.

    Parameters
    ----------
    feature_extractor : nn.Module or callable
        Maps images to a mapping ``layer name -> features (N, C_l, H_l, W_l)``, e.g.
        ``pyvision_ops.models.VGGFeatures(layers=...)``. An ``nn.Module`` is registered as a
        submodule (it follows ``.to()``); this module never changes its ``requires_grad``.
    layers : sequence of str
        Names of the layers phi_l compared, each a key of the extractor's output.
    weights : sequence of float, optional
        One weight w_l per layer; all 1 by default.

    Shape
    -----
    input, target : images the extractor accepts, the same shape (N, 3, H, W) for VGG.
    output : () scalar

    Examples
    --------
    >>> from pyvision_ops.models import VGGFeatures
    >>> vgg = VGGFeatures("vgg16", layers=("relu2_2",))
    >>> criterion = PerceptualLoss(vgg, ["relu2_2"])
    >>> loss = criterion(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    """

    layers: List[str]
    weights: List[float]

    def __init__(
        self,
        feature_extractor: Callable[[Tensor], Mapping[str, Tensor]],
        layers: Sequence[str],
        weights: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__()
        if isinstance(layers, str):
            layers = [layers]
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("layers must name at least one layer of the feature extractor")
        if weights is None:
            weights = [1.0] * len(self.layers)
        self.weights = [float(w) for w in weights]
        if len(self.weights) != len(self.layers):
            raise ValueError(
                f"weights must have one entry per layer: {len(self.layers)} layers, {len(self.weights)} weights"
            )
        self.feature_extractor = feature_extractor

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if input.shape != target.shape:
            raise ValueError(
                f"input and target must have the same shape, got {tuple(input.shape)} and {tuple(target.shape)}"
            )
        features_hat = self.feature_extractor(input)
        with torch.no_grad():
            features = self.feature_extractor(target)
        total: Optional[Tensor] = None
        for layer, weight in zip(self.layers, self.weights):
            if layer not in features_hat:
                raise KeyError(
                    f"PerceptualLoss: the feature extractor returned no layer {layer!r}; it returned "
                    f"{sorted(features_hat)}"
                )
            term = weight * perceptual_loss(features_hat[layer], features[layer])
            total = term if total is None else total + term
        assert total is not None  # layers is non-empty
        return total

    def extra_repr(self) -> str:
        return f"layers={self.layers}, weights={self.weights}"
