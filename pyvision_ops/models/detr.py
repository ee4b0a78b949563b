"""A small DETR: CNN backbone, transformer encoder-decoder, set prediction of boxes and classes.

Carion, Massa, Synnaeve, Usunier, Kirillov and Zagoruyko, "End-to-End Object Detection with
Transformers" (ECCV 2020). The backbone turns the image into a grid of features; a 1x1
convolution projects them to the transformer width and a 2-D positional encoding (sine or
learned) is added; a transformer encodes the grid and decodes a fixed set of learned object
queries; each decoded query becomes class logits (``num_classes`` + 1, the last is "no
object") and a box (cx, cy, w, h) in [0, 1] through a 3-layer MLP and a sigmoid. Training
matches the queries to the targets with ``pyvision_ops.nn.HungarianMatcher`` (the library's
assignment solver) and scores them with ``pyvision_ops.nn.SetCriterion``.

This version is sized for toy data and CPUs (a ResNet-50 backbone and 6 + 6 layers of width 256
are the paper's). The positional encoding is added once, to the encoder input, and the queries
are the decoder's input, rather than added to the attention inputs of every layer as in the
paper. The transformer is a ``torch.nn.Transformer`` whose encoder and decoder are
``pyvision_ops.nn.TransformerEncoder`` / ``TransformerDecoder`` (layers on the library's
``MultiheadAttention``), so every attention runs in the fused ``scaled_dot_product_attention``
kernel; its parameter names, initialisation and ``state_dict`` are those of the stock
``torch.nn.Transformer``, whose checkpoints load unchanged.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from pyvision_ops.nn.attention import (
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ = ["DETR"]

_POSITION_EMBEDDINGS = ("sine", "learned")

def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    # No conv bias: the batch norm that follows has its own shift.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def sine_position_encoding(height: int, width: int, dim: int, temperature: float = 10000.0,
                           device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """DETR's 2-D sinusoidal encoding of a ``height`` x ``width`` grid.

    The first ``dim / 2`` features encode the row, the last ``dim / 2`` the column; each half is
    (sin, cos) pairs of the coordinate (pixel centres scaled to (0, 2 pi)) at geometrically
    spaced frequencies ``1 / temperature ** (2k / (dim / 2))``.

    Parameters
    ----------
    height, width : int
        Grid size.
    dim : int
        Features per position, a multiple of 4.
    temperature : float, default 10000
    device, dtype : where and in what dtype to build it

    Returns
    -------
    Tensor (height * width, dim), row-major over the grid
    """
    if dim % 4 != 0:
        raise ValueError(f"sine_position_encoding: dim must be a multiple of 4 (sin and cos of rows and "
                         f"columns), got {dim}")
    half = dim // 2
    frequencies = temperature ** (-torch.arange(0, half, 2, device=device, dtype=torch.float32) / half)

    def encode(length: int) -> Tensor:
        coordinate = (torch.arange(length, device=device, dtype=torch.float32) + 0.5) / length * (2 * math.pi)
        angles = coordinate[:, None] * frequencies[None, :]
        # Interleave: feature 2k is sin, 2k + 1 is cos of the k-th frequency.
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (length, half)

    rows = encode(height)[:, None, :].expand(height, width, half)
    columns = encode(width)[None, :, :].expand(height, width, half)
    return torch.cat([rows, columns], dim=-1).reshape(height * width, dim).to(dtype)


def _fused_transformer(d_model: int, nhead: int, num_encoder_layers: int, num_decoder_layers: int,
                       dim_feedforward: int, dropout: float) -> nn.Transformer:
    """``torch.nn.Transformer(d_model, nhead, ..., batch_first=True)`` with the library's encoder and
    decoder: the same modules, parameter names and initialisation (built in the same order, so
    a given seed gives the same weights), with attention on the fused kernel."""
    encoder_layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
    encoder = TransformerEncoder(encoder_layer, num_encoder_layers, nn.LayerNorm(d_model))
    decoder_layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
    decoder = TransformerDecoder(decoder_layer, num_decoder_layers, nn.LayerNorm(d_model))
    # torch.nn.Transformer then re-initialises every matrix with xavier_uniform_, as for its own layers.
    return nn.Transformer(d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout,
                          custom_encoder=encoder, custom_decoder=decoder, batch_first=True)


class _BoxHead(nn.Sequential):
    """3-layer MLP to (cx, cy, w, h) in (0, 1)."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__(
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, 4),
            nn.Sigmoid(),
        )


class DETR(nn.Module):
    """A small DEtection TRansformer for set prediction of boxes and classes.

    Parameters
    ----------
    num_classes : int, default 3
        Object classes C; the class head has C + 1 outputs, the last for "no object".
    num_queries : int, default 10
        Object queries Q: the most objects one image can have detected.
    hidden_dim : int, default 64
        Transformer width (a multiple of ``num_heads``, and of 4 for the sine encoding).
    num_heads : int, default 4
    num_encoder_layers, num_decoder_layers : int, default 2, 2
    dim_feedforward : int, default 128
    dropout : float, default 0.0
        Transformer dropout (the paper's 0.1 slows the training of so small a model).
    backbone_channels : sequence of int, default (32, 64, 64)
        Widths of the backbone's 3x3 conv-bn-relu layers, each with stride 2: the feature grid
        is the image downsampled by ``2 ** len(backbone_channels)`` (8x8 for 64x64 images).
    in_channels : int, default 3
    position_embedding : "sine" or "learned", default "sine"
        Fixed 2-D sinusoidal encoding (any grid size), or learned row and column embeddings
        (grids up to ``max_grid_size`` per side).
    max_grid_size : int, default 50
        Rows and columns of the learned embeddings.
    aux_loss : bool, default False
        Also predict from every intermediate decoder layer (``aux_outputs``), for
        ``SetCriterion``'s auxiliary losses.
    state_dict : str, os.PathLike or mapping, optional
        Weights to load: a path to ``torch.save(model.state_dict(), path)`` or the dict itself.
        Nothing is ever downloaded.

    Attributes
    ----------
    backbone : nn.Sequential
    input_proj : nn.Conv2d (1x1, to ``hidden_dim``)
    transformer : nn.Transformer (batch_first) with the library's encoder and decoder
    query_embed : nn.Embedding (num_queries, hidden_dim)
    class_embed : nn.Linear (hidden_dim -> num_classes + 1)
    bbox_embed : nn.Sequential (3-layer MLP -> 4, sigmoid)

    Shape
    -----
    input : (B, in_channels, H, W)
    output : dict with ``pred_logits`` (B, Q, num_classes + 1) and ``pred_boxes`` (B, Q, 4),
        (cx, cy, w, h) normalised by the image size; with ``aux_loss`` also ``aux_outputs``, a
        list of ``num_decoder_layers - 1`` such dicts, first layer first.

    Examples
    --------
    >>> model = DETR(num_classes=3)
    >>> outputs = model(torch.randn(2, 3, 64, 64))
    >>> outputs["pred_logits"].shape, outputs["pred_boxes"].shape
    (torch.Size([2, 10, 4]), torch.Size([2, 10, 4]))
    """

    def __init__(
        self,
        num_classes: int = 3,
        num_queries: int = 10,
        hidden_dim: int = 64,
        num_heads: int = 4,
        num_encoder_layers: int = 2,
        num_decoder_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.0,
        backbone_channels: Sequence[int] = (32, 64, 64),
        in_channels: int = 3,
        position_embedding: str = "sine",
        max_grid_size: int = 50,
        aux_loss: bool = False,
        state_dict: Optional[Union[str, os.PathLike, Mapping[str, Tensor]]] = None,
    ) -> None:
        super().__init__()
        if num_classes < 1 or num_queries < 1:
            raise ValueError(f"DETR: num_classes and num_queries must be >= 1, got {num_classes} and {num_queries}")
        if position_embedding not in _POSITION_EMBEDDINGS:
            raise ValueError(f"DETR: position_embedding must be 'sine' or 'learned', got {position_embedding!r}")
        if hidden_dim % num_heads != 0:
            raise ValueError(f"DETR: hidden_dim must be a multiple of num_heads = {num_heads}, got {hidden_dim}")
        if position_embedding == "sine" and hidden_dim % 4 != 0:
            raise ValueError(f"DETR: the sine encoding needs hidden_dim to be a multiple of 4, got {hidden_dim}")
        if position_embedding == "learned" and hidden_dim % 2 != 0:
            raise ValueError(f"DETR: the learned encoding needs an even hidden_dim, got {hidden_dim}")
        widths = [int(width) for width in backbone_channels]
        if not widths:
            raise ValueError("DETR: backbone_channels must name at least one layer width, got none")
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.position_embedding = position_embedding
        self.aux_loss = aux_loss

        layers: List[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers.append(_conv_bn_relu(channels, width, stride=2))
            channels = width
        self.backbone = nn.Sequential(*layers)
        self.input_proj = nn.Conv2d(channels, hidden_dim, kernel_size=1)
        if position_embedding == "learned":
            self.row_embed = nn.Embedding(max_grid_size, hidden_dim // 2)
            self.col_embed = nn.Embedding(max_grid_size, hidden_dim // 2)
        self.transformer = _fused_transformer(hidden_dim, num_heads, num_encoder_layers, num_decoder_layers,
                                              dim_feedforward, dropout)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = _BoxHead(hidden_dim)
        self._initialize_weights()

        if state_dict is not None:
            if not isinstance(state_dict, Mapping):
                state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
            self.load_state_dict(state_dict)

    def _initialize_weights(self) -> None:
        for module in self.backbone.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if self.position_embedding == "learned":
            nn.init.uniform_(self.row_embed.weight)
            nn.init.uniform_(self.col_embed.weight)
        # Start the boxes near the centre with sides around sigmoid(-1) ~ 0.27 of the image rather
        # than 0.5: objects are usually smaller than half the image, so training starts closer.
        with torch.no_grad():
            self.bbox_embed[-2].bias.copy_(torch.tensor([0.0, 0.0, -1.0, -1.0]))

    def position_encoding(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The positional encoding added to a ``height`` x ``width`` feature grid.

        Returns
        -------
        Tensor (height * width, hidden_dim), row-major over the grid
        """
        if self.position_embedding == "sine":
            return sine_position_encoding(height, width, self.hidden_dim, device=device, dtype=dtype)
        limit = self.row_embed.num_embeddings
        if height > limit or width > limit:
            raise ValueError(f"DETR: the learned position embedding covers grids up to {limit}x{limit}, got a "
                             f"{height}x{width} feature grid; pass a larger max_grid_size")
        rows = self.row_embed.weight[:height][:, None, :].expand(height, width, -1)
        columns = self.col_embed.weight[:width][None, :, :].expand(height, width, -1)
        return torch.cat([rows, columns], dim=-1).reshape(height * width, self.hidden_dim).to(dtype)

    def _predict(self, decoded: Tensor) -> Dict[str, Tensor]:
        return {"pred_logits": self.class_embed(decoded), "pred_boxes": self.bbox_embed(decoded)}

    def forward(self, images: Tensor) -> Dict[str, object]:
        """Class logits and boxes of every query.

        Parameters
        ----------
        images : Tensor (B, in_channels, H, W)

        Returns
        -------
        dict
            ``pred_logits`` (B, Q, num_classes + 1), ``pred_boxes`` (B, Q, 4) as (cx, cy, w, h)
            in (0, 1); with ``aux_loss`` also ``aux_outputs``.
        """
        if images.dim() != 4:
            raise ValueError(f"DETR: images must be (B, C, H, W), got shape {tuple(images.shape)}")
        features = self.input_proj(self.backbone(images))  # (B, D, h, w)
        batch, _, height, width = features.shape
        tokens = features.flatten(2).transpose(1, 2)  # (B, h*w, D)
        tokens = tokens + self.position_encoding(height, width, tokens.device, tokens.dtype)
        queries = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        if not self.aux_loss:
            return self._predict(self.transformer(tokens, queries))

        # nn.TransformerDecoder's loop, keeping the (normalised) output of every layer.
        memory = self.transformer.encoder(tokens)
        decoder = self.transformer.decoder
        decoded = queries
        per_layer = []
        for layer in decoder.layers:
            decoded = layer(decoded, memory)
            per_layer.append(decoder.norm(decoded) if decoder.norm is not None else decoded)
        outputs: Dict[str, object] = dict(self._predict(per_layer[-1]))
        outputs["aux_outputs"] = [self._predict(hidden) for hidden in per_layer[:-1]]
        return outputs

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, num_queries={self.num_queries}, hidden_dim={self.hidden_dim}, "
                f"position_embedding={self.position_embedding!r}, aux_loss={self.aux_loss}")
