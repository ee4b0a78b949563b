"""Seeing inside a network: saliency maps, occlusion maps, class-model images, DeepDream and
DeconvNet projections of the strongest activations, as tensors, and ``save_grid`` to draw them.

The methods of the course notes' first chapter:

- ``saliency_map``: |d S_c / d image|, maximum over channels (Simonyan et al. 2014);
- ``occlusion_map``: the class probability, the most probable class and one feature map's total
  activation while a grey square slides over the image (Zeiler and Fergus 2014, fig. 7);
- ``class_model_visualisation``: the image that maximises a class score, by regularised gradient
  ascent from a zero image (Simonyan et al. 2014);
- ``deep_dream``: gradient ascent on the image of one layer's 0.5 * ||a||^2, over octaves
  (Mordvintsev, Olah and Tyka 2015);
- ``top_activations``: the k images that excite one feature map most, each projected back to
  pixel space with ``pyvision_ops.models.deconvnet_project`` (Zeiler and Fergus 2014);
- ``save_grid``: a PNG of a grid of images and heat maps (matplotlib's Agg canvas).

Every function takes any ``nn.Module`` classifier whose output is pre-softmax scores (N, classes)
(``top_activations`` a layer stack, as ``deconvnet_project``) and leaves the model as it found it:
parameters, buffers, ``.grad``, ``requires_grad`` flags and the train/eval mode of every submodule.
The computation runs in eval mode (dropout off, batch norm on its running statistics, so that
nothing updates a buffer and each image's result does not depend on the rest of the batch), with
the parameters' ``requires_grad`` switched off; gradients are taken with ``torch.autograd.grad``
with respect to the image only. The caller's images are never modified. Everything runs on the
device of the images (``class_model_visualisation``: of the model's parameters).
"""

from __future__ import annotations

import contextlib
import math
import operator
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyvision_ops.models.deconvnet import _layer_stack, deconvnet_project

__all__ = [
    "OcclusionMaps",
    "TopActivations",
    "saliency_map",
    "occlusion_map",
    "class_model_visualisation",
    "deep_dream",
    "top_activations",
    "save_grid",
]

Target = Union[int, Tensor, Sequence[int]]
LayerRef = Union[nn.Module, str]


class OcclusionMaps(NamedTuple):
    """What ``occlusion_map`` records at each position of the occluding square.

    probability : Tensor (N, h, w)
        Softmax probability of the target class.
    label : Tensor (N, h, w), int64
        The most probable class.
    activation : Tensor (N, h, w) or None
        Total activation of the chosen feature map of ``layer`` (None without a layer).
    """

    probability: Tensor
    label: Tensor
    activation: Optional[Tensor]


class TopActivations(NamedTuple):
    """What ``top_activations`` returns: the images' indices, their activations, the projections."""

    indices: Tensor
    values: Tensor
    projections: Tensor


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------


def _check_int(value, fn: str, name: str, lower: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}") from None
    if value < lower:
        raise ValueError(f"{fn}: {name} must be >= {lower}, got {value}")
    return value


def _check_float(value, fn: str, name: str, lower: float, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{fn}: {name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < lower or (strict and value == lower):
        relation = ">" if strict else ">="
        raise ValueError(f"{fn}: {name} must be a finite number {relation} {lower:g}, got {value:g}")
    return value


def _check_model(model, fn: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be an nn.Module, got {type(model).__name__}")


def _batched(images, fn: str, name: str) -> Tuple[Tensor, bool]:
    """(images as (N, C, H, W), whether they came as one (C, H, W) image)."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{fn}: {name} must be a Tensor, got {type(images).__name__}")
    if images.dim() not in (3, 4):
        raise ValueError(f"{fn}: {name} must be (N, C, H, W) or (C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {images.dtype}")
    unbatched = images.dim() == 3
    return (images.unsqueeze(0) if unbatched else images), unbatched


def _resolve_layer(model: nn.Module, layer, fn: str) -> nn.Module:
    """The submodule ``layer`` (a module of ``model`` or its dotted name)."""
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"{fn}: layer must name a submodule of model, got {layer!r}") from None
    if not isinstance(layer, nn.Module):
        raise TypeError(f"{fn}: layer must be an nn.Module (a submodule of model) or its name, "
                        f"got {type(layer).__name__}")
    if not any(module is layer for module in model.modules()):
        raise ValueError(f"{fn}: layer must be a submodule of model, got {type(layer).__name__} {layer!r} "
                         "which is not one of model.modules()")
    return layer


def _targets(target: Target, count: int, classes: int, device: torch.device, fn: str) -> Tensor:
    """``target`` as (count,) int64 class indices, checked against the model's ``classes``."""
    if isinstance(target, bool):
        raise TypeError(f"{fn}: target must be an int or (N,) integer class indices, got bool")
    if isinstance(target, int):
        labels = torch.full((count,), target, dtype=torch.int64)
    else:
        labels = torch.as_tensor(target)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"{fn}: target must hold integer class indices, got {labels.dtype}")
        if labels.dim() == 0:
            labels = labels.expand(count)
        elif labels.shape != (count,):
            raise ValueError(f"{fn}: target must be an int or of shape (N,) = ({count},), got shape "
                             f"{tuple(labels.shape)}")
    labels = labels.to(device=device, dtype=torch.int64)
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            raise ValueError(f"{fn}: target must be in [0, {classes}) (the model's classes), got {bad}")
    return labels


def _scores(model: nn.Module, x: Tensor, fn: str) -> Tensor:
    scores = model(x)
    _check_scores(scores, x, fn)
    return scores


def _check_scores(scores, x: Tensor, fn: str) -> None:
    if not isinstance(scores, Tensor) or scores.dim() != 2 or scores.shape[0] != x.shape[0]:
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"{fn}: model must return pre-softmax scores of shape (N, classes) with N = "
                         f"{x.shape[0]}, got {got}")


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


# --------------------------------------------------------------------------------------------
# the model's state, forward hooks, gradients
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _inference_state(model: nn.Module) -> Iterator[None]:
    """Eval mode and parameters that do not require grad for the duration; both restored
    exactly afterwards (each submodule's own ``training`` flag, each parameter's own flag)."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        model.eval()
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        for module, training in modes:
            module.training = training


class _StopForward(Exception):
    """Raised by a capturing hook to end the forward pass at the layer."""


class _Capture:
    """A forward hook on ``layer`` that keeps ``reduce(output)`` of its first call in a pass.

    ``stop=True`` ends the forward pass there (run it with ``forward``): nothing after the layer
    is computed, and no later in-place operation can change the captured tensor."""

    def __init__(self, layer: nn.Module, fn: str, reduce: Optional[Callable[[Tensor], Tensor]] = None,
                 stop: bool = False) -> None:
        self.layer, self.fn, self.reduce, self.stop = layer, fn, reduce, stop
        self.output: Optional[Tensor] = None
        self.handle = None

    def __enter__(self) -> "_Capture":
        self.handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc_info) -> None:
        self.handle.remove()

    def _hook(self, module: nn.Module, inputs, output) -> None:
        if self.output is not None:  # a layer called twice in one pass: its first call counts
            return
        if not isinstance(output, Tensor):
            raise TypeError(f"{self.fn}: layer must output a Tensor, got {type(output).__name__}")
        if output.dim() < 2:
            raise ValueError(f"{self.fn}: layer must output (N, C, ...) activations, got shape {tuple(output.shape)}")
        self.output = output if self.reduce is None else self.reduce(output)
        if self.stop:
            raise _StopForward

    def forward(self, model: nn.Module, x: Tensor):
        """Run ``model(x)`` and return (the model's output or None when stopped, the capture)."""
        self.output = None
        result = None
        try:
            result = model(x)
        except _StopForward:
            pass
        if self.output is None:
            raise ValueError(f"{self.fn}: layer was not called during model's forward pass")
        captured, self.output = self.output, None
        return result, captured


def _input_gradient(objective: Tensor, x: Tensor) -> Tensor:
    """d objective / d x, zeros where the objective does not depend on x."""
    if not objective.requires_grad:
        return torch.zeros_like(x)
    (gradient,) = torch.autograd.grad(objective, x, allow_unused=True)
    return torch.zeros_like(x) if gradient is None else gradient


def _gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W) over H and W, edges replicated; the kernel radius
    is ``int(truncate * sigma + 0.5)`` (scipy.ndimage.gaussian_filter with mode='nearest')."""
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return x
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


# --------------------------------------------------------------------------------------------
# saliency
# --------------------------------------------------------------------------------------------


def saliency_map(model: nn.Module, images: Tensor, target: Target) -> Tensor:
    """Image-specific class saliency: max over channels of |d S_target / d image|.

    Simonyan, Vedaldi and Zisserman, "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps" (ICLR workshop 2014), section 3. S is the class
    score before the softmax; one backward pass gives the map of every image of the batch.

    Parameters
    ----------
    model : nn.Module
        A classifier returning pre-softmax scores (N, classes). Run in eval mode; left as it was.
    images : Tensor (N, C, H, W) or (C, H, W)
        Floating-point images, on any device. Not modified.
    target : int or Tensor (N,)
        The class of each image (one int for all).

    Returns
    -------
    Tensor (N, H, W), or (H, W) for one (C, H, W) image
        The saliency, in the images' dtype and device.

    Raises
    ------
    ValueError
        ``images`` of another rank, ``target`` outside [0, classes) or of the wrong shape, a model
        that does not return (N, classes).
    """
    fn = "visualize.saliency_map"
    _check_model(model, fn)
    x, unbatched = _batched(images, fn, "images")
    with _inference_state(model), torch.enable_grad():
        x = x.detach().requires_grad_(True)
        # A copy goes in: an in-place first layer must reach neither the caller's tensor nor the leaf.
        scores = _scores(model, x.clone(), fn)
        labels = _targets(target, x.shape[0], scores.shape[1], scores.device, fn)
        # Images are independent in eval mode: the gradient of the sum is each image's own.
        objective = scores.gather(1, labels[:, None]).sum()
        gradient = _input_gradient(objective, x)
    saliency = gradient.abs().amax(dim=1)
    return saliency[0] if unbatched else saliency


# --------------------------------------------------------------------------------------------
# occlusion
# --------------------------------------------------------------------------------------------


def occlusion_map(
    model: nn.Module,
    images: Tensor,
    target: Target,
    patch: int = 8,
    stride: int = 4,
    fill: Optional[Union[float, Tensor]] = None,
    layer: Optional[LayerRef] = None,
    batch_size: int = 256,
) -> OcclusionMaps:
    """Slide a square over each image and record what the model sees at each position.

    Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks" (ECCV 2014),
    section 4.2 and fig. 7. At every position (i, j) the square covers rows
    ``i * stride .. i * stride + patch - 1`` and the same columns; the occluded copies of all
    images run through the model ``batch_size`` at a time, on the images' device, without
    gradients.

    Parameters
    ----------
    model : nn.Module
        A classifier returning pre-softmax scores (N, classes). Run in eval mode; left as it was.
    images : Tensor (N, C, H, W) or (C, H, W)
        Floating-point images. Not modified.
    target : int or Tensor (N,)
        The class whose probability is recorded, per image.
    patch : int, default 8
        Side of the square, 1 <= patch <= min(H, W).
    stride : int, default 4
        Step between positions, >= 1.
    fill : float or Tensor, optional
        The square's value: a number, or a tensor broadcastable to (N, C, 1, 1) (one value per
        channel, e.g. shape (C, 1, 1)). None: each image's mean, per channel.
    layer : nn.Module or str, optional
        A submodule of ``model`` (or its name in ``model.named_modules()``). Its output channel
        with the largest single activation on the unoccluded image is that image's feature
        map, and ``activation`` holds its total activation (sum over its positions) at each
        position of the square (fig. 7 b-e). The layer's first call in a forward pass counts.
    batch_size : int, default 256
        Occluded copies per forward pass.

    Returns
    -------
    OcclusionMaps
        ``probability`` (N, h, w) the softmax probability of the target class (float32 at least),
        ``label`` (N, h, w) int64 the most probable class, ``activation`` (N, h, w) or None, with
        h = (H - patch) // stride + 1 and w = (W - patch) // stride + 1. For one (C, H, W) image
        the maps are (h, w).

    Raises
    ------
    ValueError
        ``patch`` larger than the image or < 1, ``stride`` or ``batch_size`` < 1, ``layer`` not a
        submodule of ``model``, ``target`` out of range, ``images`` of another rank, a ``fill``
        that does not broadcast.
    """
    fn = "visualize.occlusion_map"
    _check_model(model, fn)
    x, unbatched = _batched(images, fn, "images")
    count, channels, height, width = x.shape
    patch = _check_int(patch, fn, "patch", 1)
    if patch > min(height, width):
        size = height if height == width else f"{height} x {width}"
        raise ValueError(f"{fn}: patch must be <= the image size ({size}), got {patch}")
    stride = _check_int(stride, fn, "stride", 1)
    batch_size = _check_int(batch_size, fn, "batch_size", 1)
    feature_layer = None if layer is None else _resolve_layer(model, layer, fn)
    x = x.detach()
    fill_values = _fill_values(x, fill, fn)

    rows = torch.arange(0, height - patch + 1, stride, device=x.device)
    cols = torch.arange(0, width - patch + 1, stride, device=x.device)
    positions = rows.numel() * cols.numel()
    pixel_rows = torch.arange(height, device=x.device)
    pixel_cols = torch.arange(width, device=x.device)

    with _inference_state(model), torch.no_grad(), contextlib.ExitStack() as stack:
        strongest = totals = None
        if feature_layer is not None:
            strongest = stack.enter_context(_Capture(feature_layer, fn, reduce=lambda a: a.flatten(2).amax(2)))
            totals = _Capture(feature_layer, fn, reduce=lambda a: a.flatten(2).sum(2))

        # The unoccluded images: the number of classes (to check target) and each image's map.
        classes, chosen = None, []
        for start in range(0, max(count, 1), batch_size):
            chunk = x[start : start + batch_size].clone()
            if feature_layer is None:
                scores = _scores(model, chunk, fn)
            else:
                scores, strength = strongest.forward(model, chunk)
                _check_scores(scores, chunk, fn)
                chosen.append(strength.argmax(dim=1))
            classes = scores.shape[1]
            if count == 0:
                break
        labels = _targets(target, count, classes, x.device, fn)
        if feature_layer is not None:
            stack.pop_all().close()  # the unoccluded pass's hook goes; the occluded pass's comes
            stack.enter_context(totals)
            channel = torch.cat(chosen)

        probability, label, activation = [], [], []
        for start in range(0, count * positions, batch_size):
            flat = torch.arange(start, min(start + batch_size, count * positions), device=x.device)
            image, position = flat // positions, flat % positions
            top = rows[position // cols.numel()]
            left = cols[position % cols.numel()]
            inside_rows = (pixel_rows[None, :] >= top[:, None]) & (pixel_rows[None, :] < top[:, None] + patch)
            inside_cols = (pixel_cols[None, :] >= left[:, None]) & (pixel_cols[None, :] < left[:, None] + patch)
            square = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]
            occluded = torch.where(square, fill_values[image], x[image])
            if feature_layer is None:
                scores = _scores(model, occluded, fn)
            else:
                scores, total = totals.forward(model, occluded)
                _check_scores(scores, occluded, fn)
                activation.append(total.gather(1, channel[image][:, None])[:, 0])
            probabilities = scores.to(_at_least_float32(scores.dtype)).softmax(dim=1)
            probability.append(probabilities.gather(1, labels[image][:, None])[:, 0])
            label.append(probabilities.argmax(dim=1))

    shape = (count, rows.numel(), cols.numel())
    dtype = _at_least_float32(x.dtype)
    maps = OcclusionMaps(
        probability=_joined(probability, shape, dtype, x.device),
        label=_joined(label, shape, torch.int64, x.device),
        activation=None if feature_layer is None else _joined(activation, shape, x.dtype, x.device),
    )
    if unbatched:
        maps = OcclusionMaps(*(None if m is None else m[0] for m in maps))
    return maps


def _joined(parts: List[Tensor], shape: Tuple[int, int, int], dtype: torch.dtype, device) -> Tensor:
    if not parts:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.cat(parts).to(dtype).view(shape)


def _fill_values(x: Tensor, fill, fn: str) -> Tensor:
    """The occluding square's value per image and channel, (N, C, 1, 1)."""
    count, channels = x.shape[:2]
    if fill is None:
        return x.mean(dim=(2, 3), keepdim=True)
    if isinstance(fill, bool):
        raise TypeError(f"{fn}: fill must be None, a number or a Tensor, got bool")
    if isinstance(fill, (int, float)):
        return torch.full((count, channels, 1, 1), float(fill), dtype=x.dtype, device=x.device)
    if not isinstance(fill, Tensor):
        raise TypeError(f"{fn}: fill must be None, a number or a Tensor, got {type(fill).__name__}")
    try:
        return torch.broadcast_to(fill.to(dtype=x.dtype, device=x.device), (count, channels, 1, 1))
    except RuntimeError:
        raise ValueError(f"{fn}: fill must broadcast to (N, C, 1, 1) = ({count}, {channels}, 1, 1), got shape "
                         f"{tuple(fill.shape)}") from None


# --------------------------------------------------------------------------------------------
# class models
# --------------------------------------------------------------------------------------------


def _model_device_dtype(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def class_model_visualisation(
    model: nn.Module,
    target: int,
    shape: Sequence[int],
    steps: int = 200,
    lr: float = 1.0,
    l2: float = 1e-4,
    blur_every: int = 0,
    blur_sigma: float = 0.5,
    clip_small: float = 0.0,
    mean: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """The image that a classifier finds most typical of a class (a class model).

    Simonyan, Vedaldi and Zisserman (2014), section 2: gradient ascent on
    S_target(I) - l2 * ||I||^2 (S the pre-softmax score) from a zero image,
    I <- I + lr * grad. Optional regularisers between steps (Yosinski et al. 2015): every
    ``blur_every`` steps a Gaussian blur of ``blur_sigma`` pixels (a separable kernel of
    radius int(4 sigma + 0.5), edges replicated), and after each step every value with
    |value| < ``clip_small`` is set to 0.

    Parameters
    ----------
    model : nn.Module
        A classifier returning pre-softmax scores (N, classes), fed (1, C, H, W). Run in eval
        mode; left as it was. The image lives on the device and in the dtype of its parameters.
    target : int
        The class, in [0, classes).
    shape : (C, H, W)
        The image's shape.
    steps : int, default 200
        Gradient-ascent steps (0 returns the start, plus ``mean``).
    lr : float, default 1.0
        Step size.
    l2 : float, default 1e-4
        Weight of the L2 penalty.
    blur_every : int, default 0
        Blur every this many steps; 0 never blurs.
    blur_sigma : float, default 0.5
        The blur's standard deviation in pixels (> 0 when blurring).
    clip_small : float, default 0.0
        Values with smaller magnitude are zeroed after each step.
    mean : Tensor (C, H, W) or (C, 1, 1), optional
        Added to the result: the training mean image that was subtracted from the model's inputs.
    generator : torch.Generator, optional
        When given, the ascent starts from Gaussian noise of standard deviation 1e-2 drawn (on the
        CPU) with it instead of from zeros, for a different optimum per seed.

    Returns
    -------
    Tensor (C, H, W)
        The class-model image (plus ``mean``), detached.

    Raises
    ------
    ValueError
        ``target`` out of range, ``shape`` not three positive sizes, a ``mean`` of another shape,
        negative ``steps``, ``l2``, ``blur_every``, ``clip_small``, or ``blur_sigma`` <= 0 when
        blurring.
    """
    fn = "visualize.class_model_visualisation"
    _check_model(model, fn)
    if isinstance(target, Tensor) and target.dim() == 0 and not target.is_floating_point():
        target = int(target)
    if isinstance(target, bool) or not isinstance(target, int):
        raise TypeError(f"{fn}: target must be an int (one class), got {type(target).__name__}")
    try:
        shape = tuple(operator.index(size) for size in shape)
    except TypeError:
        raise TypeError(f"{fn}: shape must be a sequence of three ints (C, H, W), got {shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{fn}: shape must be (C, H, W) with positive sizes, got {shape}")
    steps = _check_int(steps, fn, "steps", 0)
    lr = _check_float(lr, fn, "lr", 0.0, strict=True)
    l2 = _check_float(l2, fn, "l2", 0.0)
    blur_every = _check_int(blur_every, fn, "blur_every", 0)
    blur_sigma = _check_float(blur_sigma, fn, "blur_sigma", 0.0, strict=blur_every > 0)
    clip_small = _check_float(clip_small, fn, "clip_small", 0.0)
    device, dtype = _model_device_dtype(model)
    if mean is not None:
        if not isinstance(mean, Tensor):
            raise TypeError(f"{fn}: mean must be a Tensor, got {type(mean).__name__}")
        channels, height, width = shape
        if mean.dim() != 3 or mean.shape[0] != channels or tuple(mean.shape[1:]) not in ((height, width), (1, 1)):
            raise ValueError(f"{fn}: mean must be (C, H, W) = {shape} or (C, 1, 1) = ({channels}, 1, 1), got shape "
                             f"{tuple(mean.shape)}")

    if generator is None:
        image = torch.zeros(shape, dtype=dtype, device=device)
    else:
        image = (torch.randn(shape, generator=generator, dtype=dtype) * 1e-2).to(device)

    with _inference_state(model), torch.enable_grad():
        with torch.no_grad():
            _targets(target, 1, _scores(model, image[None].clone(), fn).shape[1], device, fn)
        for step in range(steps):
            x = image.detach().requires_grad_(True)
            score = _scores(model, x[None].clone(), fn)[0, target]
            gradient = _input_gradient(score - l2 * (x * x).sum(), x)
            image = x.detach() + lr * gradient
            if blur_every and (step + 1) % blur_every == 0:
                image = _gaussian_blur(image[None], blur_sigma)[0]
            if clip_small > 0:
                image = image.masked_fill(image.abs() < clip_small, 0)
    image = image.detach()
    if mean is not None:
        image = image + mean.to(device=device, dtype=dtype)
    return image


# --------------------------------------------------------------------------------------------
# DeepDream
# --------------------------------------------------------------------------------------------


def deep_dream(
    model: nn.Module,
    image: Tensor,
    layer: LayerRef,
    steps: int = 20,
    lr: float = 0.01,
    octaves: int = 1,
    octave_scale: float = 1.4,
) -> Tensor:
    """Amplify whatever ``layer`` sees in the image (DeepDream).

    Mordvintsev, Olah and Tyka, "Inceptionism: Going Deeper into Neural Networks" (Google
    Research blog, 2015) and their deepdream notebook. The forward pass stops at ``layer``
    (a forward hook); the objective is 0.5 * ||a||^2 of its activation a, so the gradient sent
    back from the layer is the activation itself. Each step adds ``lr * g / mean|g|`` to the
    image (g the image gradient; the mean per image). With ``octaves`` > 1 the image is first
    shrunk by ``octave_scale`` per octave (bilinear); the dream starts on the smallest, and the
    detail it adds is enlarged onto the next octave's image.

    Parameters
    ----------
    model : nn.Module
        The network; only the part up to ``layer``'s first call runs. Eval mode; left as it was.
    image : Tensor (N, C, H, W) or (C, H, W)
        The start image(s), floating point. Not modified.
    layer : nn.Module or str
        A submodule of ``model`` (or its name).
    steps : int, default 20
        Gradient steps per octave.
    lr : float, default 0.01
        Step size (the mean magnitude of each step's change).
    octaves : int, default 1
        Number of scales.
    octave_scale : float, default 1.4
        Size ratio between consecutive octaves, > 1.

    Returns
    -------
    Tensor, the shape, dtype and device of ``image``
        The dream, detached.

    Raises
    ------
    ValueError
        ``layer`` not a submodule of ``model``, ``image`` of another rank, ``steps`` < 0,
        ``octaves`` < 1, ``octave_scale`` <= 1.
    """
    fn = "visualize.deep_dream"
    _check_model(model, fn)
    x, unbatched = _batched(image, fn, "image")
    feature_layer = _resolve_layer(model, layer, fn)
    steps = _check_int(steps, fn, "steps", 0)
    lr = _check_float(lr, fn, "lr", 0.0, strict=True)
    octaves = _check_int(octaves, fn, "octaves", 1)
    octave_scale = _check_float(octave_scale, fn, "octave_scale", 1.0, strict=octaves > 1)

    x = x.detach()
    height, width = x.shape[-2:]
    pyramid = [x]
    for level in range(1, octaves):
        size = (max(1, round(height / octave_scale**level)), max(1, round(width / octave_scale**level)))
        pyramid.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))

    detail = torch.zeros_like(pyramid[-1])
    dream = x
    with _inference_state(model), torch.enable_grad(), _Capture(feature_layer, fn, stop=True) as capture:
        for base in reversed(pyramid):
            if detail.shape[-2:] != base.shape[-2:]:
                detail = F.interpolate(detail, size=base.shape[-2:], mode="bilinear", align_corners=False)
            dream = base + detail
            for _ in range(steps):
                dream = dream.detach().requires_grad_(True)
                _, activation = capture.forward(model, dream.clone())
                objective = 0.5 * activation.to(_at_least_float32(activation.dtype)).pow(2).sum()
                gradient = _input_gradient(objective, dream)
                scale = gradient.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(torch.finfo(gradient.dtype).tiny)
                dream = dream.detach() + lr * gradient / scale
            detail = dream.detach() - base
    dream = dream.detach()
    return dream[0] if unbatched else dream


# --------------------------------------------------------------------------------------------
# DeconvNet projections of the strongest activations
# --------------------------------------------------------------------------------------------


def top_activations(
    model: Union[nn.Module, Sequence[nn.Module]],
    layer: Union[int, nn.Module],
    images: Tensor,
    channel: Optional[int] = None,
    k: int = 9,
    *,
    top_only: bool = True,
    batch_size: int = 256,
) -> TopActivations:
    """The k images that excite one feature map most, projected back to pixel space.

    Zeiler and Fergus (2014), section 4 and fig. 2: for a feature map, the images with its k
    largest activations (an image's activation is the map's maximum over positions), each
    projected separately to pixel space with ``pyvision_ops.models.deconvnet_project`` (unpooling
    with the recorded switches, ReLU, transposed filters).

    Parameters
    ----------
    model : nn.Sequential, list of layers, or a module with a ``features`` stack
        As ``deconvnet_project``: the layers run in order up to ``layer`` (a classifier whose
        convolutional part is ``model.features`` qualifies). Eval mode; left as it was.
    layer : int or nn.Module
        One of those layers: its index (negative counts from the end) or the module.
    images : Tensor (N, C, H, W)
        A batch or a whole data set (run ``batch_size`` at a time). Not modified.
    channel : int, optional
        The feature map. None: the one with the largest activation over all images.
    k : int, default 9
        How many images, 1 <= k <= N.
    top_only : bool, default True
        Project only each image's single largest activation of the map (the paper's figures);
        False projects the whole map.
    batch_size : int, default 256
        Images per forward pass when ranking.

    Returns
    -------
    TopActivations
        ``indices`` (k,) int64 into ``images``, strongest first; ``values`` (k,) their
        activations; ``projections`` (k, C, H, W) in pixel space.

    Raises
    ------
    ValueError
        ``layer`` not one of the model's layers, ``channel`` out of range, ``k`` outside
        [1, N], ``images`` not (N, C, H, W).
    """
    fn = "visualize.top_activations"
    if not isinstance(images, Tensor):
        raise TypeError(f"{fn}: images must be a Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{fn}: images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{fn}: images must be a floating-point tensor, got {images.dtype}")
    try:
        layers = _layer_stack(model)
    except TypeError as error:
        raise TypeError(f"{fn}: {error}") from None
    index = _stack_index(layers, layer, fn)
    k = _check_int(k, fn, "k", 1)
    if k > images.shape[0]:
        raise ValueError(f"{fn}: k must be <= the number of images ({images.shape[0]}), got {k}")
    batch_size = _check_int(batch_size, fn, "batch_size", 1)
    modules = model if isinstance(model, nn.Module) else nn.ModuleList(layers)

    images = images.detach()
    with _inference_state(modules), torch.no_grad():
        strengths = []
        for start in range(0, images.shape[0], batch_size):
            # A copy: an in-place first layer must not reach the caller's tensor.
            activations = images[start : start + batch_size].clone()
            for module in layers[: index + 1]:
                activations = module(activations)
            if not isinstance(activations, Tensor) or activations.dim() != 4:
                got = tuple(activations.shape) if isinstance(activations, Tensor) else type(activations).__name__
                raise ValueError(f"{fn}: layer must output a feature map (N, C, H, W), got {got}")
            strengths.append(activations.flatten(2).amax(dim=2))
        strength = torch.cat(strengths)
        channels = strength.shape[1]
        if channel is None:
            chosen = int(strength.amax(dim=0).argmax())
        else:
            chosen = _check_int(channel, fn, "channel", -channels)
            if chosen >= channels:
                raise ValueError(f"{fn}: channel must be in [0, {channels}) (the layer's channels), got {channel}")
            chosen %= channels
        values, indices = strength[:, chosen].topk(k)
        projections = deconvnet_project(layers, index, images[indices], channel=chosen, top_only=top_only)
    return TopActivations(indices=indices, values=values, projections=projections)


def _stack_index(layers: Sequence[nn.Module], layer, fn: str) -> int:
    if isinstance(layer, nn.Module):
        for index, candidate in enumerate(layers):
            if candidate is layer:
                return index
        raise ValueError(f"{fn}: layer must be one of the model's layers (model.features when it has one), "
                         f"got {type(layer).__name__} {layer!r}")
    index = _check_int(layer, fn, "layer", -len(layers))
    if index >= len(layers):
        raise ValueError(f"{fn}: layer must be in [{-len(layers)}, {len(layers)}) (the model's layers), got {index}")
    return index % len(layers)


# --------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------


def save_grid(
    images: Union[Tensor, Sequence[Tensor]],
    path,
    nrow: Optional[int] = None,
    normalize: bool = True,
    titles: Optional[Sequence[Optional[str]]] = None,
    *,
    value_range: Optional[Tuple[float, float]] = None,
    cmap: Union[str, Sequence[Optional[str]]] = "inferno",
    suptitle: Optional[str] = None,
    cell_inches: float = 1.4,
) -> None:
    """Write a grid of images and heat maps to one PNG (matplotlib, on its Agg canvas).

    Parameters
    ----------
    images : Tensor (N, C, H, W) or (N, H, W), or a sequence of (C, H, W) / (H, W) tensors
        A tensor is a batch; a sequence may mix sizes and kinds. C = 1 is drawn in grey, C = 3
        as RGB; a 2-D (H, W) image is a heat map, drawn with ``cmap``.
    path : str or os.PathLike
        The PNG file (its folder must exist).
    nrow : int, optional
        Images per row (as torchvision's ``make_grid``). Default: ceil(sqrt(N)).
    normalize : bool, default True
        Scale each image to [0, 1]: by ``value_range`` when given, else by its own minimum and
        maximum. False: the values are drawn as they are, clipped to [0, 1].
    titles : sequence of str, optional
        One title (or None) per image.
    value_range : (low, high), optional
        With ``normalize``, the range mapped to [0, 1] for every image (a shared colour scale).
    cmap : str or sequence of str, default "inferno"
        The heat maps' colour map (a matplotlib name), or one per image.
    suptitle : str, optional
        A title over the whole grid.
    cell_inches : float, default 1.4
        Size of each cell (100 pixels per inch).

    Raises
    ------
    ValueError
        No images, an image that is not (1 or 3, H, W) or (H, W), ``titles`` or ``cmap`` of
        another length, ``nrow`` < 1.
    TypeError
        An image that is not a tensor, or a complex one.
    ImportError
        matplotlib is not installed.
    """
    fn = "visualize.save_grid"
    if isinstance(images, Tensor):
        if images.dim() not in (3, 4):
            raise ValueError(f"{fn}: images must be (N, C, H, W) or (N, H, W) (or a list of images), got shape "
                             f"{tuple(images.shape)}")
        items = list(images.unbind(0))
    else:
        items = list(images)
    if not items:
        raise ValueError(f"{fn}: images must hold at least one image, got none")
    for position, item in enumerate(items):
        if not isinstance(item, Tensor):
            raise TypeError(f"{fn}: images[{position}] must be a Tensor, got {type(item).__name__}")
        if not (item.dim() == 2 or (item.dim() == 3 and item.shape[0] in (1, 3))):
            raise ValueError(f"{fn}: images[{position}] must be (1, H, W), (3, H, W) or a (H, W) heat map, got shape "
                             f"{tuple(item.shape)}")
        if item.is_complex():
            raise TypeError(f"{fn}: images[{position}] must be a real tensor, got dtype {item.dtype}")
    count = len(items)
    nrow = math.ceil(math.sqrt(count)) if nrow is None else _check_int(nrow, fn, "nrow", 1)
    if titles is not None and len(titles) != count:
        raise ValueError(f"{fn}: titles must hold one title per image ({count}), got {len(titles)}")
    cmaps = [cmap] * count if isinstance(cmap, str) else list(cmap)
    if len(cmaps) != count:
        raise ValueError(f"{fn}: cmap must be one name or one per image ({count}), got {len(cmaps)}")
    if value_range is not None:
        low, high = (float(v) for v in value_range)
        if not high > low:
            raise ValueError(f"{fn}: value_range must be (low, high) with high > low, got {tuple(value_range)}")

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"{fn} needs matplotlib: pip install matplotlib ({error})") from None

    columns = min(nrow, count)
    grid_rows = math.ceil(count / columns)
    title_space = 0.25 if titles is not None else 0.0
    figure = Figure(figsize=(columns * cell_inches, grid_rows * (cell_inches + title_space) + (0.4 if suptitle else 0)),
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(grid_rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for position, item in enumerate(items):
        ax = axes.flat[position]
        values = item.detach().to("cpu", torch.float64).nan_to_num()
        if normalize:
            low, high = (value_range if value_range is not None else (float(values.min()), float(values.max())))
            values = (values - low) / (high - low) if high > low else torch.zeros_like(values)
        values = values.clamp(0, 1).numpy()
        if values.ndim == 2:
            ax.imshow(values, cmap=cmaps[position] or "inferno", vmin=0, vmax=1, interpolation="nearest")
        elif values.shape[0] == 1:
            ax.imshow(values[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(values.transpose(1, 2, 0), interpolation="nearest")
        if titles is not None and titles[position]:
            ax.set_title(str(titles[position]), fontsize=8)
    if suptitle:
        figure.suptitle(suptitle)
    figure.savefig(path, dpi=100)
