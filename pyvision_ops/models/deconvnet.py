"""DeconvNet projection: map one feature map of a CNN back to pixel space.

Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks" (ECCV 2014). The
image goes up the network to the chosen layer while every max pooling records its switches
(where each maximum came from). All activations but the chosen feature map are zeroed, and
the result goes back down: unpooling with the recorded switches, ReLU, and each convolution's
transpose (the same filters, flipped; no bias). The output shows which pixel patterns excited
that feature map.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyvision_ops.ops.unpool import max_pool2d_with_indices, max_unpool2d

__all__ = ["deconvnet_project"]

# Layers that are the identity at inference time, in both directions.
_PASS_THROUGH_LAYERS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_SUPPORTED_LAYERS = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, *_PASS_THROUGH_LAYERS)

Pair = Tuple[int, int]


def _pair(value: Union[int, Sequence[int]]) -> Pair:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def _layer_stack(model: Union[nn.Module, Sequence[nn.Module]]) -> List[nn.Module]:
    """The layers of ``model`` in order: an ``nn.Sequential``, a list, or a ``.features`` stack."""
    stack = getattr(model, "features", model)
    if isinstance(stack, nn.Module) and not isinstance(stack, (nn.Sequential, nn.ModuleList)):
        raise TypeError(
            "model must be an nn.Sequential, an nn.ModuleList, a list of layers, or have a "
            f"`features` attribute that is one (as torchvision's VGG), got {type(model).__name__}"
        )
    return list(stack)


def _layer_index(layers: Sequence[nn.Module], layer: Union[int, nn.Module]) -> int:
    if isinstance(layer, nn.Module):
        for index, candidate in enumerate(layers):
            if candidate is layer:
                return index
        raise ValueError(f"layer {layer!r} is not one of the model's top-level layers")
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int index or an nn.Module, got {type(layer).__name__}")
    index = layer + len(layers) if layer < 0 else layer
    if not 0 <= index < len(layers):
        raise IndexError(f"layer index {layer} out of range for a model with {len(layers)} layers")
    return index


def _check_supported(layers: Sequence[nn.Module]) -> None:
    for index, module in enumerate(layers):
        if not isinstance(module, _SUPPORTED_LAYERS):
            names = ", ".join(cls.__name__ for cls in _SUPPORTED_LAYERS)
            raise TypeError(
                f"deconvnet_project: layer {index} is a {type(module).__name__}; supported layers: {names}"
            )
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise ValueError(
                f"deconvnet_project: layer {index} uses padding_mode={module.padding_mode!r}; "
                "only 'zeros' has a transposed convolution"
            )


def _padding_before(conv: nn.Conv2d) -> Pair:
    """Zeros the convolution adds before (above / left of) its input, per spatial dimension."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        # PyTorch puts the smaller half first when the total padding is odd.
        kernel, dilation = _pair(conv.kernel_size), _pair(conv.dilation)
        return (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
    return _pair(conv.padding)


def _transposed_convolution(y: Tensor, conv: nn.Conv2d, input_size: torch.Size) -> Tensor:
    """Apply the adjoint of ``conv``'s linear part (no bias), landing exactly on ``input_size``."""
    kernel, stride, dilation = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.dilation)
    padding = _padding_before(conv)
    natural_size = [
        (y.shape[-2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (kernel[d] - 1) + 1 for d in range(2)
    ]
    # A strided convolution drops up to stride - 1 trailing input rows; output_padding restores them.
    output_padding = [max(0, input_size[d] - natural_size[d]) for d in range(2)]
    y = F.conv_transpose2d(
        y,
        conv.weight,
        None,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        groups=conv.groups,
        dilation=dilation,
    )
    # An odd 'same' padding adds one more zero after than before: that row/column is not input.
    return y[..., : input_size[0], : input_size[1]]


def _select_feature_map(activations: Tensor, channel: Optional[int], top_only: bool) -> Tensor:
    """Zero every activation except those of the chosen channel (or only its maximum)."""
    batch, channels = activations.shape[:2]
    if channel is None:
        strength = activations.flatten(2).amax(dim=2)
        chosen = strength.argmax(dim=1)
    else:
        if not -channels <= channel < channels:
            raise IndexError(f"channel {channel} out of range for a layer with {channels} channels")
        chosen = torch.full((batch,), channel % channels, dtype=torch.int64, device=activations.device)
    samples = torch.arange(batch, device=activations.device)
    feature_map = activations[samples, chosen]
    if top_only:
        flat = feature_map.flatten(1)
        position = flat.argmax(dim=1, keepdim=True)
        kept = torch.zeros_like(flat).scatter_(1, position, flat.gather(1, position))
        feature_map = kept.view_as(feature_map)
    selected = torch.zeros_like(activations)
    selected[samples, chosen] = feature_map
    return selected


def deconvnet_project(
    model: Union[nn.Module, Sequence[nn.Module]],
    layer: Union[int, nn.Module],
    x: Tensor,
    channel: Optional[int] = None,
    top_only: bool = False,
    compact_indices: bool = True,
) -> Tensor:
    """Project one feature map of ``model`` at ``layer`` back to pixel space (a DeconvNet).

    Runs ``x`` through the layers up to and including ``layer``, recording each max pooling's
    switches (``pyvision_ops.max_pool2d_with_indices``) and each layer's input size. Keeps only
    the chosen feature map, then goes back down: max pooling -> ``pyvision_ops.max_unpool2d``
    with the recorded switches, ReLU -> ReLU, Conv2d -> ``F.conv_transpose2d`` with the same
    weights (no bias). Runs under ``torch.no_grad()`` and neither calls nor changes anything but
    the convolutions' forward passes, so the model's parameters, buffers and mode are untouched.

    Parameters
    ----------
    model : nn.Sequential, nn.ModuleList, list of modules, or a module with a ``features`` stack
        Layers applied in order. Supported: ``nn.Conv2d`` (zero padding, any stride, dilation,
        groups, or ``'same'``/``'valid'``), ``nn.ReLU``, ``nn.MaxPool2d`` (``torch.nn``'s or
        ``pyvision_ops.nn``'s), and ``nn.Identity``/``nn.Dropout*`` (the identity; dropout is
        treated as in eval mode). Anything else raises ``TypeError``.
    layer : int or nn.Module
        The layer whose output is projected: an index into the layers (negative counts from
        the end) or the layer module itself.
    x : Tensor (N, C_in, H, W) or (C_in, H, W)
        Input images.
    channel : int, optional
        Feature map (channel of ``layer``'s output) to project. None: for each image, the
        channel holding that image's largest activation.
    top_only : bool, default False
        Keep only the single largest activation of the chosen feature map (per image), as in
        Zeiler and Fergus' figures, instead of the whole map.
    compact_indices : bool, default True
        Record the switches as uint8 window-local positions (8x less memory); pooling layers
        with dilation or more than 256 window elements always use int64 flat indices. The
        result is the same either way.

    Returns
    -------
    Tensor, same shape, dtype and device as ``x``
        The projection of the chosen feature map into input space.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    >>> deconvnet_project(net, 2, torch.randn(1, 3, 32, 32), channel=5).shape
    torch.Size([1, 3, 32, 32])
    """
    layers = _layer_stack(model)
    last = _layer_index(layers, layer)
    layers = layers[: last + 1]
    _check_supported(layers)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"x must be (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")

    with torch.no_grad():
        # Per layer: its input size (convolutions), or its switches and window (max pooling).
        records: List[object] = []
        activations = x
        for module in layers:
            if isinstance(module, nn.Conv2d):
                records.append(activations.shape[-2:])
                activations = module(activations)
            elif isinstance(module, nn.ReLU):
                records.append(None)
                # Out of place even for ReLU(inplace=True): x belongs to the caller.
                activations = F.relu(activations)
            elif isinstance(module, nn.MaxPool2d):
                kernel, stride = _pair(module.kernel_size), _pair(module.stride)
                padding, dilation = _pair(module.padding), _pair(module.dilation)
                # Compact indices are window-local, which unpooling reads as undilated windows.
                compact = compact_indices and dilation == (1, 1) and kernel[0] * kernel[1] <= 256
                input_size = activations.shape[-2:]
                activations, indices = max_pool2d_with_indices(
                    activations, kernel, stride, padding, dilation, ceil_mode=module.ceil_mode, compact=compact
                )
                # Flat indices do not depend on the window; only the output-size check reads it,
                # so give it the dilated window's extent.
                window = tuple(dilation[d] * (kernel[d] - 1) + 1 for d in range(2))
                records.append((indices, input_size, window, stride, padding))
            else:
                records.append(None)

        if activations.dim() != 4:
            raise ValueError(f"layer {last} must output a feature map (N, C, H, W), got {tuple(activations.shape)}")
        projection = _select_feature_map(activations, channel, top_only)

        for module, record in zip(reversed(layers), reversed(records)):
            if isinstance(module, nn.Conv2d):
                projection = _transposed_convolution(projection, module, record)
            elif isinstance(module, nn.ReLU):
                projection = F.relu(projection)
            elif isinstance(module, nn.MaxPool2d):
                indices, input_size, window, stride, padding = record
                projection = max_unpool2d(projection, indices, window, stride, padding, output_size=input_size)

    return projection.squeeze(0) if unbatched else projection
