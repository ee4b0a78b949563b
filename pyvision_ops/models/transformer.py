"""TransformerEncoder: a small sequence classifier on the library's fused attention.

Tokens (or feature vectors) are embedded to ``d_model``, scaled by sqrt(d_model) and given the
sinusoidal ``PositionalEncoding``; a stack of ``pyvision_ops.nn.TransformerEncoderLayer``
(pre-norm by default, with a final LayerNorm) encodes them with padded positions masked out of
the attention; the mean over the non-padded positions goes through a linear head. The layer
stack itself is ``pyvision_ops.nn.TransformerEncoder``; this is the model around it.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Optional, Union

import torch
from torch import Tensor, nn

from pyvision_ops.nn.attention import PositionalEncoding, TransformerEncoder as EncoderStack, TransformerEncoderLayer

__all__ = ["TransformerEncoder"]


class TransformerEncoder(nn.Module):
    """Sequence classifier: embedding, positional encoding, transformer encoder, masked mean, linear.

    Parameters
    ----------
    num_classes : int, default 2
    vocab_size : int or None, default 1000
        Token vocabulary: the input is (B, L) int64 token ids through an ``nn.Embedding``.
        None: the input is (B, L, input_dim) float features through a linear projection.
    input_dim : int, optional
        Features per position when ``vocab_size`` is None (required then).
    d_model : int, default 64
    nhead : int, default 4
    num_layers : int, default 2
    dim_feedforward : int, default 128
    dropout : float, default 0.1
    max_len : int, default 512
        Longest sequence (rows of the positional encoding).
    padding_idx : int or None, default 0
        With token input: the padding token. Positions holding it are masked out of the
        attention and the pooling when no ``key_padding_mask`` is given.
    norm_first : bool, default True
        Pre-norm layers (and a LayerNorm after the stack), which train more stably than post-norm.
    activation : "relu" or "gelu", default "gelu"
    state_dict : str, os.PathLike or mapping, optional
        Weights to load (a path to ``torch.save(model.state_dict(), path)`` or the dict).

    Shape
    -----
    input : (B, L) int64 tokens or (B, L, input_dim) floats, L <= max_len
    key_padding_mask : (B, L) bool, True = padding, optional
    output : (B, num_classes) logits. A sequence with every position padded gets the logits of
        a zero pooled vector (the head's bias), finite.

    Examples
    --------
    >>> model = TransformerEncoder(num_classes=3)
    >>> tokens = torch.randint(1, 1000, (4, 20))
    >>> model(tokens).shape
    torch.Size([4, 3])
    """

    def __init__(
        self,
        num_classes: int = 2,
        vocab_size: Optional[int] = 1000,
        input_dim: Optional[int] = None,
        d_model: int = 64,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
        max_len: int = 512,
        padding_idx: Optional[int] = 0,
        norm_first: bool = True,
        activation: str = "gelu",
        state_dict: Optional[Union[str, os.PathLike, Mapping[str, Tensor]]] = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"TransformerEncoder: num_classes must be >= 1, got {num_classes}")
        if (vocab_size is None) == (input_dim is None):
            raise ValueError(f"TransformerEncoder: give exactly one of vocab_size (token input) and input_dim "
                             f"(feature input), got vocab_size={vocab_size} and input_dim={input_dim}")
        if d_model % nhead != 0:
            raise ValueError(f"TransformerEncoder: d_model must be a multiple of nhead = {nhead}, got {d_model}")
        self.num_classes = num_classes
        self.vocab_size = vocab_size
        self.input_dim = input_dim
        self.d_model = d_model
        self.padding_idx = padding_idx if vocab_size is not None else None
        if vocab_size is not None:
            self.embedding: nn.Module = nn.Embedding(vocab_size, d_model, padding_idx=self.padding_idx)
        else:
            self.embedding = nn.Linear(input_dim, d_model)
        self.position = PositionalEncoding(d_model, max_len=max_len, dropout=dropout, batch_first=True)
        layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward=dim_feedforward, dropout=dropout,
                                        activation=activation, batch_first=True, norm_first=norm_first)
        self.encoder = EncoderStack(layer, num_layers, norm=nn.LayerNorm(d_model) if norm_first else None)
        self.head = nn.Linear(d_model, num_classes)
        self._initialize_weights()

        if state_dict is not None:
            if not isinstance(state_dict, Mapping):
                state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
            self.load_state_dict(state_dict)

    def _initialize_weights(self) -> None:
        # The copies of the encoder layer start equal (deepcopy): give each its own weights.
        for parameter in self.encoder.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        if isinstance(self.embedding, nn.Embedding):
            nn.init.normal_(self.embedding.weight, std=self.d_model ** -0.5)
            if self.padding_idx is not None:
                with torch.no_grad():
                    self.embedding.weight[self.padding_idx].zero_()

    def forward(self, inputs: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """Class logits (B, num_classes) of each sequence.

        Parameters
        ----------
        inputs : Tensor (B, L) int64 tokens, or (B, L, input_dim) floats
        key_padding_mask : Tensor (B, L) bool, optional
            True marks padding. Default: the positions holding ``padding_idx`` (token input),
            or none.
        """
        if self.vocab_size is not None:
            if inputs.dim() != 2 or inputs.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"TransformerEncoder: token input must be (B, L) int64, got shape "
                                 f"{tuple(inputs.shape)} and dtype {inputs.dtype}")
            if key_padding_mask is None and self.padding_idx is not None:
                key_padding_mask = inputs == self.padding_idx
        elif inputs.dim() != 3 or inputs.shape[-1] != self.input_dim:
            raise ValueError(f"TransformerEncoder: feature input must be (B, L, {self.input_dim}), got shape "
                             f"{tuple(inputs.shape)}")
        if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool
                                             or tuple(key_padding_mask.shape) != tuple(inputs.shape[:2])):
            raise ValueError(f"TransformerEncoder: key_padding_mask must be bool {tuple(inputs.shape[:2])}, got "
                             f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
        x = self.position(self.embedding(inputs) * math.sqrt(self.d_model))
        encoded = self.encoder(x, src_key_padding_mask=key_padding_mask)
        if key_padding_mask is None:
            pooled = encoded.mean(dim=1)
        else:
            keep = (~key_padding_mask).to(encoded.dtype).unsqueeze(-1)  # (B, L, 1)
            pooled = (encoded * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
        return self.head(pooled)

    def extra_repr(self) -> str:
        source = f"vocab_size={self.vocab_size}" if self.vocab_size is not None else f"input_dim={self.input_dim}"
        return f"{source}, num_classes={self.num_classes}, d_model={self.d_model}"
