"""VGG16/VGG19 convolutional feature extractor, loadable from torchvision's VGG weight files.

Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition"
(ICLR 2015). ``VGGFeatures`` builds only the convolutional part (torchvision's ``features``
``nn.Sequential``), layer for layer, so its ``state_dict`` keys are exactly torchvision's
``features.<index>.weight`` / ``features.<index>.bias``: a ``torch.save``d state dict of
``torchvision.models.vgg19`` (e.g. ``vgg19-dcbb9e9d.pth``) loads into it. Nothing is downloaded:
without a weights file the network is initialised from a fixed seed, which is still a usable
texture descriptor for style transfer, though not as good a one as the ImageNet weights.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from pyvision_ops.nn.unpool import MaxPool2d

__all__ = ["VGGFeatures", "VGG_CONFIGS", "IMAGENET_MEAN", "IMAGENET_STD", "imagenet_normalize", "vgg_layer_names"]

#: Conv widths and pooling ("M") of torchvision's configurations "D" (vgg16) and "E" (vgg19).
VGG_CONFIGS: Dict[str, Tuple[Union[int, str], ...]] = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}

#: Per-channel mean and standard deviation of ImageNet (RGB, pixels in [0, 1]): torchvision's VGG
#: weights expect images normalised with these.
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

WeightsSource = Union[str, "os.PathLike[str]", Mapping[str, Tensor]]


def imagenet_normalize(images: Tensor) -> Tensor:
    """Normalise RGB images in [0, 1] with the ImageNet mean and standard deviation.

    Parameters
    ----------
    images : Tensor (N, 3, H, W) or (3, H, W), values in [0, 1]

    Returns
    -------
    Tensor of the same shape: (images - mean) / std per channel. Differentiable.
    """
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"images must be (N, 3, H, W) or (3, H, W) RGB, got shape {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std


def vgg_layer_names(arch: str = "vgg19") -> List[str]:
    """Names of the modules of ``VGGFeatures(arch).features``, by index.

    Block b (1-5) has convolutions ``conv{b}_{i}``, each followed by ``relu{b}_{i}``, and ends in
    ``pool{b}``: for vgg19, index 0 is ``conv1_1``, 1 ``relu1_1``, ..., 36 ``pool5``.
    """
    if arch not in VGG_CONFIGS:
        raise ValueError(f"arch must be one of {sorted(VGG_CONFIGS)}, got {arch!r}")
    names: List[str] = []
    block, conv = 1, 1
    for item in VGG_CONFIGS[arch]:
        if item == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return names


class VGGFeatures(nn.Module):
    """The convolutional part of VGG16/VGG19, returning the activations of chosen layers.

    Parameters
    ----------
    arch : "vgg19" or "vgg16", default "vgg19"
    layers : sequence of str, default ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
        Layers to return, named ``conv{block}_{i}``, ``relu{block}_{i}`` or ``pool{block}``
        (see ``vgg_layer_names``); the defaults are Gatys et al.'s style layers. ``forward``
        stops after the deepest one.
    weights : str, os.PathLike or mapping, optional
        A torchvision VGG state dict of the same ``arch`` without batch norm (a file saved with
        ``torch.save``, or the dict itself). Only its ``features.*`` entries are used; others
        (``classifier.*``) are ignored. The ``features.*`` entries must match exactly.
        Without weights the convolutions are He-initialised from ``seed``.
    pooling : "max" or "avg", default "max"
        Average pooling instead of max pooling (Gatys et al. found it gives slightly smoother
        results); the state dict is the same either way. Max pooling runs on
        ``pyvision_ops.nn.MaxPool2d``.
    requires_grad : bool, default False
        Whether the weights are trainable. Off for a fixed loss network: gradients then flow to
        the input only.
    seed : int, default 0
        Seed of the random initialisation when no weights are given. The global RNG is untouched.

    Attributes
    ----------
    features : nn.Sequential
        Conv2d(3x3, padding 1) / ReLU / 2x2 pooling modules, torchvision's indices.
    layer_names : list of str
        Name of each module of ``features``, by index.
    layers : tuple of str
        The returned layers, in network order.
    pretrained : bool
        True when weights were loaded, False for the fixed-seed random network.

    Shape
    -----
    input : (N, 3, H, W), normalised as the weights expect (``imagenet_normalize`` for
        torchvision's); H, W >= 2**(number of poolings before the deepest layer).
    output : OrderedDict ``name -> Tensor (N, C_l, H_l, W_l)`` for ``layers``, in network order.

    Examples
    --------
    >>> vgg = VGGFeatures("vgg16", layers=("relu1_2", "relu3_3"))
    >>> {name: tuple(f.shape) for name, f in vgg(torch.randn(1, 3, 64, 64)).items()}
    {'relu1_2': (1, 64, 64, 64), 'relu3_3': (1, 256, 16, 16)}
    >>> vgg = VGGFeatures("vgg19", weights="vgg19-dcbb9e9d.pth")  # doctest: +SKIP
    """

    pretrained: bool

    def __init__(
        self,
        arch: str = "vgg19",
        layers: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
        weights: Optional[WeightsSource] = None,
        pooling: str = "max",
        requires_grad: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.layer_names = vgg_layer_names(arch)  # validates arch
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
        if isinstance(layers, str):
            layers = (layers,)
        unknown = [name for name in layers if name not in self.layer_names]
        if unknown or not layers:
            raise ValueError(
                f"layers must be a non-empty sequence of {arch} layer names, got unknown {unknown}; "
                f"valid names: {self.layer_names}"
            )
        self.arch = arch
        self.pooling = pooling
        wanted = set(layers)
        self.layers = tuple(name for name in self.layer_names if name in wanted)
        self._layer_indices = {name: self.layer_names.index(name) for name in self.layers}
        self._last_index = max(self._layer_indices.values())

        modules: List[nn.Module] = []
        in_channels = 3
        for item in VGG_CONFIGS[arch]:
            if item == "M":
                modules.append(MaxPool2d(kernel_size=2, stride=2) if pooling == "max" else nn.AvgPool2d(2, 2))
            else:
                # skip_init: no default initialisation (the weights are set below either way), so
                # building the network neither spends time on it nor draws from the global RNG.
                conv = nn.utils.skip_init(nn.Conv2d, in_channels, int(item), kernel_size=3, padding=1)
                modules += [conv, nn.ReLU(inplace=False)]
                in_channels = int(item)
        self.features = nn.Sequential(*modules)

        if weights is None:
            self._initialize_weights(seed)
            self.pretrained = False
        else:
            self.load_torchvision_weights(weights)
        self.requires_grad_(requires_grad)

    def _initialize_weights(self, seed: int) -> None:
        # A private generator: the same network for a given seed, whatever the global RNG state.
        # fan_in (not torchvision's fan_out) keeps the activations' scale constant through depth,
        # so a random network's deep layers are neither vanishing nor exploding.
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in self.features:
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu", generator=generator)
                    nn.init.zeros_(module.bias)

    def load_torchvision_weights(self, weights: WeightsSource) -> None:
        """Load the ``features.*`` entries of a torchvision VGG state dict (file or mapping).

        Other entries (``classifier.*``) are ignored; the ``features.*`` ones must match exactly
        (``strict`` loading), so a vgg16 or a batch-norm (``vgg19_bn``) file is refused with the
        missing and unexpected keys. Sets ``pretrained`` to True.
        """
        if not isinstance(weights, Mapping):
            weights = torch.load(weights, map_location="cpu", weights_only=True)
        assert isinstance(weights, Mapping)
        features = {key[len("features."):]: value for key, value in weights.items() if key.startswith("features.")}
        if not features:
            raise ValueError(
                f"weights hold no 'features.*' entries (got keys like {list(weights)[:3]}); expected a torchvision "
                f"{self.arch} state dict"
            )
        try:
            self.features.load_state_dict(features, strict=True)
        except RuntimeError as error:
            raise RuntimeError(
                f"weights are not a torchvision {self.arch} (without batch norm) state dict: {error}"
            ) from error
        self.pretrained = True

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        outputs: "OrderedDict[str, Tensor]" = OrderedDict()
        for index, module in enumerate(self.features):
            x = module(x)
            name = self.layer_names[index]
            if name in self._layer_indices:
                outputs[name] = x
            if index == self._last_index:
                break
        return outputs

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, layers={self.layers}, pooling={self.pooling!r}, pretrained={self.pretrained}"
