"""SegNet: an encoder-decoder that upsamples with the encoder's max-pooling indices.

Badrinarayanan, Kendall and Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation" (TPAMI 2017). The encoder is VGG16-bn's convolutional
part; each decoder stage unpools with the indices (switches) its encoder stage recorded, so
boundaries come back where the maxima were, with no learned upsampling. With
``compact_indices=True`` the switches are stored as uint8 window-local positions, 8x less
memory than PyTorch's int64 flat indices (the paper's 2 bits per 2x2 window, rounded up to
a byte).
"""

from __future__ import annotations

import os
from typing import List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from pyvision_ops.nn.unpool import MaxPool2d, MaxUnpool2d

__all__ = ["SegNet", "PoolingSwitches", "VGG16_STAGES"]

#: Output widths of the conv-bn-relu blocks of each VGG16 encoder stage.
VGG16_STAGES: Tuple[Tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)


class PoolingSwitches(NamedTuple):
    """What one encoder stage's pooling leaves for its decoder stage.

    Attributes
    ----------
    indices : Tensor (N, C, H_in // 2, W_in // 2)
        Where each maximum came from: uint8 compact or int64 flat.
    input_size : torch.Size
        (H_in, W_in), the pre-pooling size, so unpooling restores odd sizes exactly.
    """

    indices: Tensor
    input_size: torch.Size


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    # No conv bias: the batch norm that follows has its own shift.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SegNet(nn.Module):
    """SegNet semantic segmentation network (VGG16-bn encoder, mirrored decoder).

    Encoder stage ``s`` is a stack of 3x3 conv-bn-relu blocks followed by 2x2/2 max pooling
    that records its indices. Decoder stage ``s`` unpools with those indices to the
    pre-pooling size and then applies the encoder's convolutions mirrored (reversed order,
    input and output widths swapped). The last decoder convolution is the classifier: it
    maps to ``num_classes`` logits, without batch norm or ReLU. With the default stages this
    is the paper's network: 13 encoder and 13 decoder convolutions.

    Parameters
    ----------
    in_channels : int, default 3
        Channels of the input image.
    num_classes : int, default 11
        Number of classes (11: the CamVid road-scene classes of the paper).
    stages : sequence of sequences of int, default ``VGG16_STAGES``
        Output width of every conv block, stage by stage; e.g. ``((8, 8), (16, 16))`` builds a
        tiny two-stage network. Each stage halves the resolution.
    compact_indices : bool, default True
        Keep the pooling indices as uint8 window-local positions (8x less memory than int64).
        The outputs are identical either way.
    state_dict : str, os.PathLike or mapping, optional
        Weights to load: a path to a file saved with ``torch.save(model.state_dict(), path)``
        or the state dict itself. Nothing is ever downloaded.

    Attributes
    ----------
    encoder : nn.ModuleList of nn.Sequential
        Encoder stages, outermost (full resolution) first.
    decoder : nn.ModuleList of nn.Sequential
        Decoder stages in the order they run: innermost first.
    classifier : nn.Conv2d
        The last decoder convolution, to ``num_classes`` logits.

    Shape
    -----
    input : (N, in_channels, H, W), any H, W >= 2 ** len(stages)
    output : (N, num_classes, H, W) logits

    Examples
    --------
    >>> model = SegNet(in_channels=1, num_classes=2, stages=((8, 8), (16, 16)))
    >>> model(torch.randn(2, 1, 45, 61)).shape
    torch.Size([2, 2, 45, 61])
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 11,
        stages: Sequence[Sequence[int]] = VGG16_STAGES,
        compact_indices: bool = True,
        state_dict: Optional[Union[str, os.PathLike, Mapping[str, Tensor]]] = None,
    ) -> None:
        super().__init__()
        stage_widths = [tuple(int(w) for w in stage) for stage in stages]
        if not stage_widths or any(len(stage) == 0 for stage in stage_widths):
            raise ValueError(f"stages must be a non-empty sequence of non-empty width lists, got {stages!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stages = tuple(stage_widths)
        self.compact_indices = compact_indices

        encoder: List[nn.Sequential] = []
        decoder: List[nn.Sequential] = []
        channels = in_channels
        for widths in stage_widths:
            # (in, out) channels of each encoder conv; the decoder mirrors these pairs.
            conv_channels = []
            for width in widths:
                conv_channels.append((channels, width))
                channels = width
            encoder.append(nn.Sequential(*(_conv_bn_relu(c_in, c_out) for c_in, c_out in conv_channels)))
            mirrored = [(c_out, c_in) for c_in, c_out in reversed(conv_channels)]
            if not decoder:
                # The outermost decoder stage ends in the classifier instead of mapping back to
                # the image channels.
                mirrored = mirrored[:-1]
            # Decoder stages are kept in the order they run: innermost first.
            decoder.insert(0, nn.Sequential(*(_conv_bn_relu(c_in, c_out) for c_in, c_out in mirrored)))
        self.encoder = nn.ModuleList(encoder)
        self.decoder = nn.ModuleList(decoder)
        self.classifier = nn.Conv2d(stage_widths[0][0], num_classes, kernel_size=3, padding=1)
        self.pool = MaxPool2d(kernel_size=2, stride=2, return_indices=True, compact=compact_indices)
        self.unpool = MaxUnpool2d(kernel_size=2, stride=2)
        self._initialize_weights()

        if state_dict is not None:
            if not isinstance(state_dict, Mapping):
                state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
            self.load_state_dict(state_dict)

    def _initialize_weights(self) -> None:
        # He initialisation suits the ReLU stacks (as torchvision's VGG).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def encode(self, x: Tensor) -> Tuple[Tensor, List[PoolingSwitches]]:
        """Run the encoder.

        Parameters
        ----------
        x : Tensor (N, in_channels, H, W)

        Returns
        -------
        features : Tensor (N, stages[-1][-1], H / 2**S, W / 2**S), S = len(stages), rounded down
        switches : list of PoolingSwitches, outermost stage first
        """
        switches: List[PoolingSwitches] = []
        for stage in self.encoder:
            x = stage(x)
            input_size = x.shape[-2:]
            x, indices = self.pool(x)
            switches.append(PoolingSwitches(indices, input_size))
        return x, switches

    def decode(self, features: Tensor, switches: Sequence[PoolingSwitches]) -> Tensor:
        """Run the decoder and the classifier on ``encode``'s outputs.

        Parameters
        ----------
        features : Tensor (N, stages[-1][-1], h, w)
        switches : sequence of PoolingSwitches, outermost stage first (as ``encode`` returns)

        Returns
        -------
        logits : Tensor (N, num_classes, H, W), H, W from ``switches[0].input_size``
        """
        x = features
        for stage, (indices, input_size) in zip(self.decoder, reversed(switches)):
            x = self.unpool(x, indices, output_size=input_size)
            x = stage(x)
        return self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (N, num_classes, H, W) for images (N, in_channels, H, W)."""
        features, switches = self.encode(x)
        return self.decode(features, switches)

    def extra_repr(self) -> str:
        return f"stages={self.stages}, compact_indices={self.compact_indices}"
