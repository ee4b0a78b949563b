"""Neural style transfer by image optimisation (Gatys, Ecker and Bethge, CVPR 2016).

The pixels of an image are optimised so that its deep features match those of a content image
(feature reconstruction) and its Gram matrices match those of a style image (texture
statistics), with an optional total-variation smoothness term:

    loss = content_weight * sum_l 1/(C_l H_l W_l) ||phi_l(x) - phi_l(content)||^2
         + style_weight   * sum_l mean_cc' (G_l(x) - G_l(style))^2        (G normalised by C H W)
         + tv_weight      * mean of squared neighbour differences of x

The style targets are computed once; each step runs the extractor once and the fused
``pyvision_ops.style_loss`` per style layer.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from pyvision_ops.models.vgg import VGGFeatures, imagenet_normalize
from pyvision_ops.ops.gram import gram_matrix, perceptual_loss, style_loss

__all__ = ["style_transfer", "total_variation", "CONTENT_LAYERS", "STYLE_LAYERS"]

#: Gatys et al.'s layers: content from relu4_2, style from the first ReLU of every block.
CONTENT_LAYERS: Tuple[str, ...] = ("relu4_2",)
STYLE_LAYERS: Tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

_DEFAULT_LEARNING_RATES = {"lbfgs": 1.0, "adam": 0.02}


def total_variation(images: Tensor) -> Tensor:
    """Mean squared difference between vertically and horizontally adjacent pixels.

    Parameters
    ----------
    images : Tensor (N, C, H, W)

    Returns
    -------
    Tensor (): mean of (x[h+1, w] - x[h, w])^2 plus mean of (x[h, w+1] - x[h, w])^2.
    """
    vertical = (images[..., 1:, :] - images[..., :-1, :]).pow(2)
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).pow(2)
    zero = images.new_zeros(())
    return (vertical.mean() if vertical.numel() else zero) + (horizontal.mean() if horizontal.numel() else zero)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar without it
        return None
    return tqdm(total=total, desc="style transfer", unit="step")


def _check_images(content: Tensor, style: Tensor) -> None:
    for name, image in (("content", content), ("style", style)):
        if not isinstance(image, Tensor) or image.dim() != 4:
            raise ValueError(f"{name} must be a 4-D image tensor (N, C, H, W), got {getattr(image, 'shape', image)!r}")
        if not image.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor with values in [0, 1], got {image.dtype}")
    if style.shape[1] != content.shape[1]:
        raise ValueError(f"content and style must have the same channels, got {content.shape[1]} and {style.shape[1]}")
    if style.shape[0] not in (1, content.shape[0]):
        raise ValueError(f"style must hold 1 image or as many as content ({content.shape[0]}), got {style.shape[0]}")
    if style.device != content.device:
        raise ValueError(f"content and style must be on the same device, got {content.device} and {style.device}")


def style_transfer(
    content: Tensor,
    style: Tensor,
    extractor: Optional[Callable[[Tensor], Mapping[str, Tensor]]] = None,
    steps: int = 300,
    content_weight: float = 1.0,
    style_weight: float = 1e6,
    tv_weight: float = 0.0,
    optimizer: str = "lbfgs",
    content_layers: Sequence[str] = CONTENT_LAYERS,
    style_layers: Sequence[str] = STYLE_LAYERS,
    lr: Optional[float] = None,
    init: Union[str, Tensor] = "content",
    progress: bool = True,
) -> Tuple[Tensor, Dict[str, List[float]]]:
    """Render ``content`` in the style of ``style`` by optimising the pixels (Gatys et al.).

    Parameters
    ----------
    content : Tensor (N, 3, H, W), RGB in [0, 1]
    style : Tensor (1 or N, 3, H_s, W_s), RGB in [0, 1]; its size may differ from the content's.
    extractor : callable, optional
        Maps ImageNet-normalised images (``imagenet_normalize`` is applied to every image first)
        to a mapping ``layer -> features`` holding every name of ``content_layers`` and
        ``style_layers``, e.g. ``VGGFeatures("vgg19", layers=..., weights="vgg19-dcbb9e9d.pth")``.
        None builds ``VGGFeatures("vgg19")`` with fixed-seed random weights, with a warning.
    steps : int, default 300
        Loss-and-gradient evaluations. LBFGS's line search may take a few more in its last
        iteration, and stops earlier once it has converged.
    content_weight, style_weight, tv_weight : float
        Weights of the three terms (see the module docstring). The defaults (1, 1e6, 0) are the
        usual ones for normalised Grams.
    optimizer : "lbfgs" or "adam", default "lbfgs"
        LBFGS (strong-Wolfe line search) on the raw pixels, clamped to [0, 1] at the end; Adam
        clamps the pixels after every step.
    content_layers, style_layers : sequence of str
        Layers of the extractor for each term; default relu4_2 and relu{1..5}_1.
    lr : float, optional
        Learning rate; default 1.0 for LBFGS, 0.02 for Adam.
    init : "content", "noise" or Tensor, default "content"
        Starting image: the content image, uniform noise (from a generator seeded with 0) or a
        given (N, 3, H, W) tensor.
    progress : bool, default True
        Show a tqdm progress bar (none when tqdm is not installed).

    Returns
    -------
    image : Tensor (N, 3, H, W), content's dtype and device, clamped to [0, 1]
    history : dict of lists of float
        ``"total"``, ``"content"``, ``"style"`` and ``"tv"`` losses (weighted), one entry per
        evaluation, the first one at the initial image.

    Examples
    --------
    >>> from pyvision_ops.models import VGGFeatures
    >>> vgg = VGGFeatures("vgg19", layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"))
    >>> image, history = style_transfer(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), vgg, steps=20)
    """
    _check_images(content, style)
    if optimizer not in _DEFAULT_LEARNING_RATES:
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    content_layers, style_layers = list(content_layers), list(style_layers)
    if not content_layers and not style_layers:
        raise ValueError("content_layers and style_layers cannot both be empty")

    if extractor is None:
        warnings.warn(
            "style_transfer: no extractor given, using VGGFeatures('vgg19') with fixed-seed random weights "
            "(nothing is downloaded); results improve much with ImageNet weights: pass "
            "extractor=VGGFeatures('vgg19', layers=..., weights='vgg19-dcbb9e9d.pth')",
            UserWarning,
            stacklevel=2,
        )
        layers = tuple(dict.fromkeys([*style_layers, *content_layers]))
        extractor = VGGFeatures("vgg19", layers=layers).to(device=content.device, dtype=content.dtype)

    def extract(images: Tensor) -> Mapping[str, Tensor]:
        features = extractor(imagenet_normalize(images))
        missing = [name for name in (*content_layers, *style_layers) if name not in features]
        if missing:
            raise KeyError(
                f"style_transfer: the extractor returned no layer(s) {missing}; it returned {sorted(features)}"
            )
        return features

    with torch.no_grad():
        content_targets = {name: feature for name, feature in extract(content).items() if name in content_layers}
        style_features = extract(style)
        style_targets = {name: gram_matrix(style_features[name], True) for name in style_layers}
        del style_features

    if isinstance(init, Tensor):
        if init.shape != content.shape:
            raise ValueError(f"init must have content's shape {tuple(content.shape)}, got {tuple(init.shape)}")
        start = init
    elif init == "content":
        start = content
    elif init == "noise":
        start = torch.rand(content.shape, generator=torch.Generator().manual_seed(0), dtype=content.dtype)
    else:
        raise ValueError(f"init must be 'content', 'noise' or a Tensor, got {init!r}")
    image = start.detach().to(device=content.device, dtype=content.dtype).clone().requires_grad_(True)

    history: Dict[str, List[float]] = {"total": [], "content": [], "style": [], "tv": []}
    bar = _progress_bar(steps, progress)

    def closure() -> Tensor:
        features = extract(image)
        zero = image.new_zeros(())
        content_term = sum(
            (perceptual_loss(features[name], content_targets[name]) for name in content_layers), zero
        )
        # reduction="mean" (the mean squared Gram difference) is what style_weight=1e6 is usually paired with.
        style_term = sum(
            (style_loss(features[name], style_targets[name], True, "mean") for name in style_layers), zero
        )
        tv_term = total_variation(image) if tv_weight else zero
        terms = {
            "content": content_weight * content_term,
            "style": style_weight * style_term,
            "tv": tv_weight * tv_term,
        }
        total = terms["content"] + terms["style"] + terms["tv"]
        # Gradients for the image only: a trainable extractor's weights are neither updated nor
        # given .grad, and no weight gradients are computed.
        (image.grad,) = torch.autograd.grad(total, [image])
        history["total"].append(float(total.detach()))
        for name, value in terms.items():
            history[name].append(float(value.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{history['total'][-1]:.4g}")
        return total.detach()

    learning_rate = _DEFAULT_LEARNING_RATES[optimizer] if lr is None else lr
    try:
        if optimizer == "lbfgs":
            # One step() runs the whole optimisation; max_eval bounds the closure calls.
            lbfgs = torch.optim.LBFGS(
                [image], lr=learning_rate, max_iter=steps, max_eval=steps, line_search_fn="strong_wolfe"
            )
            lbfgs.step(closure)
        else:
            adam = torch.optim.Adam([image], lr=learning_rate)
            for _ in range(steps):
                adam.step(closure)
                with torch.no_grad():
                    image.clamp_(0.0, 1.0)
    finally:
        if bar is not None:
            bar.close()
    return image.detach().clamp(0.0, 1.0), history
