"""Attention modules on the fused ``pyvision_ops.scaled_dot_product_attention``.

``MultiheadAttention`` subclasses ``torch.nn.MultiheadAttention``: the same constructor, the same
parameters (``in_proj_weight`` or ``q/k/v_proj_weight``, ``in_proj_bias``, ``out_proj``,
``bias_k``/``bias_v``) and initialisation, so ``load_state_dict`` of a ``torch.nn`` module's
``state_dict`` works both ways, and ``isinstance(module, torch.nn.MultiheadAttention)`` holds.
Only ``forward`` differs: with ``need_weights=False`` the heads run in the library's fused
kernel, which never materialises the L x S scores; ``need_weights=True`` (``torch.nn``'s
default, kept for drop-in use) has to return the L x S weights, so it goes through an explicit
softmax instead. Pass ``need_weights=False`` wherever the weights are not used.

``TransformerEncoderLayer``, ``TransformerEncoder``, ``TransformerDecoderLayer`` and
``TransformerDecoder`` take ``torch.nn``'s constructor and ``forward`` arguments and have its
parameter names, so they load its ``state_dict`` s; they are built on ``MultiheadAttention``.
``batch_first`` defaults to True here (False in ``torch.nn``). ``PositionalEncoding`` adds the
sinusoidal encoding of Vaswani et al. (2017).

Differences from ``torch.nn`` (all deliberate):

- A query row that may attend to no key at all (every key masked by ``attn_mask`` and
  ``key_padding_mask`` together) gives a zero attention output, zero weights and zero
  gradients; ``torch.nn`` gives NaN there.
- ``is_causal=True`` works without an ``attn_mask`` (the causal mask is implied, top-left
  aligned: query i attends keys j <= i); ``torch.nn`` asks for the mask as well. With an
  ``attn_mask``, ``is_causal`` is a hint exactly as in ``torch.nn``: the mask is replaced by the
  causal rule when there is no ``key_padding_mask`` and ``need_weights=False``, and used as given
  otherwise.
- The layers and the encoder never take ``torch.nn``'s nested-tensor "fast path": padded
  positions of the output hold what the layers compute for them (``torch.nn.TransformerEncoder``
  in inference with a padding mask returns zeros there). ``enable_nested_tensor`` is accepted
  and ignored.
- Boolean masks stay boolean all the way to the kernel (``torch.nn`` turns them into additive
  float masks first); a boolean and a float mask together are combined additively, as in
  ``torch.nn``.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyvision_ops.ops.attention import scaled_dot_product_attention

__all__ = [
    "MultiheadAttention",
    "PositionalEncoding",
    "TransformerEncoderLayer",
    "TransformerEncoder",
    "TransformerDecoderLayer",
    "TransformerDecoder",
]


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------


def _check_mask_dtype(mask: Optional[Tensor], name: str) -> None:
    if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(f"MultiheadAttention: {name} must be a bool or floating-point tensor, got {mask.dtype}")


def _append_attended_key(mask: Optional[Tensor]) -> Optional[Tensor]:
    """One more key column that every query may attend (``bias_k``/``bias_v``, or the zero key of
    ``add_zero_attn``): False in a boolean "masked" mask, 0 in an additive one."""
    if mask is None:
        return None
    return torch.cat([mask, mask.new_zeros(mask.shape[:-1] + (1,))], dim=-1)


def _to_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, -math.inf)
    return mask.to(dtype)


def _kernel_mask(attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor], batch: int, num_heads: int,
                 dtype: torch.dtype) -> Optional[Tensor]:
    """The mask in the kernel's convention, broadcastable to (B, H, L, S).

    ``attn_mask`` is (L, S) or (B * H, L, S) and ``key_padding_mask`` (B, S), both in
    ``torch.nn``'s convention (True = may not attend, or additive). Boolean masks become one
    boolean "may attend" mask; otherwise both are added as floats, as ``torch.nn`` does.
    """
    if attn_mask is not None:
        if attn_mask.dim() == 2:
            attn_mask = attn_mask[None, None]
        else:
            attn_mask = attn_mask.view(batch, num_heads, attn_mask.shape[-2], attn_mask.shape[-1])
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.view(batch, 1, 1, key_padding_mask.shape[-1])
    masks = [mask for mask in (attn_mask, key_padding_mask) if mask is not None]
    if not masks:
        return None
    if all(mask.dtype == torch.bool for mask in masks):
        masked = masks[0] if len(masks) == 1 else masks[0] | masks[1]
        return ~masked
    additive = _to_additive(masks[0], dtype)
    return additive if len(masks) == 1 else additive + _to_additive(masks[1], dtype)


def _causal_mask(length: int, source_length: int, device: torch.device) -> Tensor:
    """(L, S) boolean, True where query i may NOT attend key j (j > i): ``torch.nn``'s convention."""
    return torch.ones(length, source_length, dtype=torch.bool, device=device).triu_(1)


def _same_transform(transform: Callable[[Tensor], Tensor], query: Tensor, key: Tensor,
                    value: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``transform`` of each input, keeping ``query is key`` and ``key is value`` true where they
    were (they choose the packed input projections)."""
    new_query = transform(query)
    new_key = new_query if key is query else transform(key)
    new_value = new_key if value is key else (new_query if value is query else transform(value))
    return new_query, new_key, new_value


def _explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor],
                        dropout_p: float) -> Tuple[Tensor, Tensor]:
    """Attention through the materialised (B, H, L, S) weights, for ``need_weights=True``.

    Fully masked rows give zero weights (and zero gradients), as the fused kernel does.
    """
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask
    if mask is not None:
        # Softmax of a row of -inf is NaN (and so is its gradient): give such rows finite scores,
        # then zero their weights.
        nothing_attended = torch.isneginf(scores.amax(dim=-1, keepdim=True))
        weights = torch.softmax(scores.masked_fill(nothing_attended, 0.0), dim=-1).masked_fill(nothing_attended, 0.0)
    else:
        weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return torch.matmul(weights, v), weights


# --------------------------------------------------------------------------------------------
# MultiheadAttention
# --------------------------------------------------------------------------------------------


class MultiheadAttention(nn.MultiheadAttention):
    """Multi-head attention on the fused kernel, a drop-in for ``torch.nn.MultiheadAttention``.

    Parameters
    ----------
    embed_dim : int
        Model width E; split over the heads (E / num_heads features each, at most 256).
    num_heads : int
    dropout : float, default 0.0
        Dropout on the attention weights (in training mode only), applied inside the kernel.
    bias : bool, default True
        Biases of the input and output projections.
    add_bias_kv : bool, default False
        Learned ``bias_k``/``bias_v`` appended to the keys and values as one more position.
    add_zero_attn : bool, default False
        A zero key and value appended (after the head split) as one more position.
    kdim, vdim : int, optional
        Features of ``key`` and ``value`` (default ``embed_dim``); when either differs from
        ``embed_dim`` the projections are ``q_proj_weight``, ``k_proj_weight``,
        ``v_proj_weight`` instead of the packed ``in_proj_weight``, as in ``torch.nn``.
    batch_first : bool, default True
        (B, L, E) inputs and outputs; False for (L, B, E). (``torch.nn`` defaults to False.)
    device, dtype : factory arguments of the parameters

    Raises
    ------
    AssertionError
        ``embed_dim`` not divisible by ``num_heads`` (as ``torch.nn``).
    ValueError
        ``embed_dim`` or ``num_heads`` not positive (as ``torch.nn``).

    Shape
    -----
    query : (B, L, E) (batch_first), (L, B, E), or unbatched (L, E)
    key : (B, S, kdim), (S, B, kdim) or (S, kdim)
    value : (B, S, vdim), (S, B, vdim) or (S, vdim)
    output : (attention output of the query's shape, weights or None). The weights are
        (B, L, S) averaged over the heads, or (B, num_heads, L, S) with
        ``average_attn_weights=False`` ((L, S) / (num_heads, L, S) unbatched); S counts the
        positions added by ``add_bias_kv`` and ``add_zero_attn``.

    Examples
    --------
    >>> attention = MultiheadAttention(64, 4)
    >>> x = torch.randn(2, 10, 64)
    >>> out, _ = attention(x, x, x, need_weights=False)  # the fused kernel
    >>> out.shape
    torch.Size([2, 10, 64])
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        batch_first: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, add_bias_kv=add_bias_kv,
                         add_zero_attn=add_zero_attn, kdim=kdim, vdim=vdim, batch_first=batch_first,
                         device=device, dtype=dtype)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Attention of ``query`` over ``key``/``value``.

        Parameters
        ----------
        query, key, value : Tensor
            See the class's Shape section.
        key_padding_mask : Tensor (B, S) or (S,), optional
            Bool: True marks a key position to ignore (padding). Float: added to the scores of
            that key.
        need_weights : bool, default True
            Also return the attention weights. True (``torch.nn``'s default) computes them
            explicitly, O(L x S) memory per head; False runs the fused kernel and returns None
            as the weights.
        attn_mask : Tensor (L, S) or (B * num_heads, L, S), optional
            Bool: True marks a (query, key) pair that may not attend. Float: added to the scores.
        average_attn_weights : bool, default True
            Average the returned weights over the heads (otherwise one map per head).
        is_causal : bool, default False
            Causal attention (query i attends keys j <= i). Without ``attn_mask`` the rule is
            applied by itself; with one, it is ``torch.nn``'s hint that the mask is causal.

        Returns
        -------
        (Tensor, Tensor or None)
            The attention output, shaped like ``query``, and the weights (or None).
        """
        is_batched = query.dim() == 3
        self._check_inputs(query, key, value, key_padding_mask, attn_mask, is_batched)
        if not is_batched:
            query, key, value = _same_transform(lambda x: x.unsqueeze(0), query, key, value)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = _same_transform(lambda x: x.transpose(0, 1), query, key, value)
        # From here on everything is batch first: (B, L, E), (B, S, kdim), (B, S, vdim).
        batch, length, _ = query.shape
        source_length = key.shape[1]
        if key.shape[:2] != value.shape[:2]:
            raise ValueError(f"MultiheadAttention: key and value must have the same batch size and length, got "
                             f"key {tuple(key.shape)} and value {tuple(value.shape)}")
        if value.shape[0] != batch:
            raise ValueError(f"MultiheadAttention: key and value must have the batch size of query ({batch}), got "
                             f"{value.shape[0]}")
        self._check_mask_shapes(key_padding_mask, attn_mask, batch, length, source_length)

        causal_kernel = False
        if is_causal:
            if key_padding_mask is None and not need_weights:
                # torch.nn's rule: the hint replaces the mask (and then so does the kernel's causal rule).
                attn_mask = None
                causal_kernel = True
            elif attn_mask is None:
                attn_mask = _causal_mask(length, source_length, query.device)

        q, k, v = self._project(query, key, value)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(batch, 1, -1).to(k.dtype)], dim=1)
            v = torch.cat([v, self.bias_v.expand(batch, 1, -1).to(v.dtype)], dim=1)
            attn_mask = _append_attended_key(attn_mask)
            key_padding_mask = _append_attended_key(key_padding_mask)
        elif self.bias_k is not None or self.bias_v is not None:
            raise AssertionError("MultiheadAttention: bias_k and bias_v must be both set or both None")
        head_dim = self.head_dim
        # (B, H, L or S, head_dim): views of the projections where the layout allows.
        q = q.unflatten(-1, (self.num_heads, head_dim)).transpose(1, 2)
        k = k.unflatten(-1, (self.num_heads, head_dim)).transpose(1, 2)
        v = v.unflatten(-1, (self.num_heads, head_dim)).transpose(1, 2)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(batch, self.num_heads, 1, head_dim)], dim=2)
            v = torch.cat([v, v.new_zeros(batch, self.num_heads, 1, head_dim)], dim=2)
            attn_mask = _append_attended_key(attn_mask)
            key_padding_mask = _append_attended_key(key_padding_mask)

        mask = _kernel_mask(attn_mask, key_padding_mask, batch, self.num_heads, q.dtype)
        dropout_p = self.dropout if self.training else 0.0
        weights: Optional[Tensor] = None
        if need_weights:
            heads, weights = _explicit_attention(q, k, v, mask, dropout_p)
        else:
            heads = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                 is_causal=causal_kernel)

        if is_batched and not self.batch_first:
            # (L, B, E) output, contiguous as torch.nn's.
            output = heads.permute(2, 0, 1, 3).reshape(length, batch, self.embed_dim)
        else:
            output = heads.transpose(1, 2).reshape(batch, length, self.embed_dim)
        output = self.out_proj(output)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if not is_batched:
            output = output.squeeze(0)
            if weights is not None:
                weights = weights.squeeze(0)
        return output, weights

    # -- helpers -----------------------------------------------------------------------------

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The input projections (B, L, E), (B, S, E), (B, S, E); one matrix product for
        self-attention (query is key is value), two when key is value."""
        embed_dim = self.embed_dim
        bias = self.in_proj_bias
        bias_q, bias_k, bias_v = (None, None, None) if bias is None else bias.chunk(3)
        if self._qkv_same_embed_dim:
            weight = self.in_proj_weight
            if query is key and key is value:
                return F.linear(query, weight, bias).chunk(3, dim=-1)
            weight_q, weight_kv = weight[:embed_dim], weight[embed_dim:]
            q = F.linear(query, weight_q, bias_q)
            if key is value:
                k, v = F.linear(key, weight_kv, None if bias is None else bias[embed_dim:]).chunk(2, dim=-1)
                return q, k, v
            weight_k, weight_v = weight_kv.chunk(2)
            return q, F.linear(key, weight_k, bias_k), F.linear(value, weight_v, bias_v)
        return (F.linear(query, self.q_proj_weight, bias_q), F.linear(key, self.k_proj_weight, bias_k),
                F.linear(value, self.v_proj_weight, bias_v))

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor],
                      attn_mask: Optional[Tensor], is_batched: bool) -> None:
        if query.dim() not in (2, 3):
            raise ValueError(f"MultiheadAttention: query must be 3-D (batched) or 2-D (unbatched), got shape "
                             f"{tuple(query.shape)}")
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(f"MultiheadAttention: key and value must be {query.dim()}-D like query, got "
                             f"{key.dim()}-D and {value.dim()}-D")
        for name, tensor, features in (("query", query, self.embed_dim), ("key", key, self.kdim),
                                       ("value", value, self.vdim)):
            if tensor.shape[-1] != features:
                raise ValueError(f"MultiheadAttention: {name} must have {features} features, got shape "
                                 f"{tuple(tensor.shape)}")
        _check_mask_dtype(key_padding_mask, "key_padding_mask")
        _check_mask_dtype(attn_mask, "attn_mask")
        if key_padding_mask is not None and key_padding_mask.dim() != (2 if is_batched else 1):
            raise ValueError(f"MultiheadAttention: key_padding_mask must be {'(B, S)' if is_batched else '(S,)'}, "
                             f"got shape {tuple(key_padding_mask.shape)}")
        if attn_mask is not None and attn_mask.dim() not in (2, 3):
            raise ValueError(f"MultiheadAttention: attn_mask must be (L, S) or (B * num_heads, L, S), got shape "
                             f"{tuple(attn_mask.shape)}")

    def _check_mask_shapes(self, key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor], batch: int,
                           length: int, source_length: int) -> None:
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (batch, source_length):
            raise ValueError(f"MultiheadAttention: key_padding_mask must be (B, S) = {(batch, source_length)}, got "
                             f"{tuple(key_padding_mask.shape)}")
        if attn_mask is not None:
            expected = (length, source_length) if attn_mask.dim() == 2 else (batch * self.num_heads, length,
                                                                              source_length)
            if tuple(attn_mask.shape) != expected:
                raise ValueError(f"MultiheadAttention: a {attn_mask.dim()}-D attn_mask must be {expected}, got "
                                 f"{tuple(attn_mask.shape)}")


# --------------------------------------------------------------------------------------------
# PositionalEncoding
# --------------------------------------------------------------------------------------------


def sinusoidal_position_encoding(length: int, d_model: int, dtype: torch.dtype = torch.float32,
                                 device: Optional[torch.device] = None) -> Tensor:
    """(length, d_model): pe[pos, 2i] = sin(pos / 10000^(2i / d_model)), pe[pos, 2i + 1] = cos(same).

    Computed in float64 and rounded once, so that large positions keep full precision.
    """
    position = torch.arange(length, dtype=torch.float64, device=device)[:, None]
    frequency = torch.pow(10000.0, -torch.arange(0, d_model, 2, dtype=torch.float64, device=device) / d_model)
    angle = position * frequency  # (length, ceil(d_model / 2))
    encoding = torch.empty(length, d_model, dtype=torch.float64, device=device)
    encoding[:, 0::2] = angle.sin()
    encoding[:, 1::2] = angle[:, : d_model // 2].cos()
    return encoding.to(dtype)


class PositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal position encoding to a sequence, then dropout.

    pe[pos, 2i] = sin(pos / 10000^(2i / d_model)) and pe[pos, 2i + 1] = cos(pos / 10000^(2i /
    d_model)): sin on the even features, cos on the odd ones (an odd ``d_model`` ends with a sin).

    Parameters
    ----------
    d_model : int
        Features per position.
    max_len : int, default 5000
        Longest sequence accepted.
    dropout : float, default 0.0
    batch_first : bool, default True
        (B, L, d_model) input; False for (L, B, d_model). A 2-D input is one (L, d_model) sequence.

    Attributes
    ----------
    pe : Tensor (max_len, d_model), buffer
        Not saved in the ``state_dict`` (it is a fixed function of the shape); moves with ``.to()``
        and is added in the input's dtype.

    Shape
    -----
    input : (B, L, d_model), (L, B, d_model) or (L, d_model), L <= max_len
    output : same as the input
    """

    pe: Tensor

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0, batch_first: bool = True) -> None:
        super().__init__()
        if d_model < 1 or max_len < 1:
            raise ValueError(f"PositionalEncoding: d_model and max_len must be >= 1, got {d_model} and {max_len}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"PositionalEncoding: dropout must be in [0, 1], got {dropout}")
        self.d_model = d_model
        self.max_len = max_len
        self.batch_first = batch_first
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoidal_position_encoding(max_len, d_model), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (2, 3) or x.shape[-1] != self.d_model:
            raise ValueError(f"PositionalEncoding: input must be (B, L, {self.d_model}), (L, B, {self.d_model}) or "
                             f"(L, {self.d_model}), got shape {tuple(x.shape)}")
        length = x.shape[1] if x.dim() == 3 and self.batch_first else x.shape[0]
        if length > self.max_len:
            raise ValueError(f"PositionalEncoding: sequence length {length} exceeds max_len = {self.max_len}")
        encoding = self.pe[:length].to(x.dtype)
        if x.dim() == 3 and not self.batch_first:
            encoding = encoding[:, None, :]
        return self.dropout(x + encoding)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}, batch_first={self.batch_first}"


# --------------------------------------------------------------------------------------------
# transformer layers
# --------------------------------------------------------------------------------------------

Activation = Union[str, Callable[[Tensor], Tensor]]


def _activation_function(activation: Activation) -> Callable[[Tensor], Tensor]:
    if isinstance(activation, str):
        if activation == "relu":
            return F.relu
        if activation == "gelu":
            return F.gelu
        raise ValueError(f"activation must be 'relu', 'gelu' or a callable, got {activation!r}")
    if not callable(activation):
        raise ValueError(f"activation must be 'relu', 'gelu' or a callable, got {activation!r}")
    return activation


def _sequence_length(x: Tensor, batch_first: bool) -> int:
    return x.shape[1] if x.dim() == 3 and batch_first else x.shape[0]


def _is_causal_mask(mask: Optional[Tensor], is_causal: Optional[bool], size: int) -> bool:
    """``torch.nn``'s rule: an explicit ``is_causal`` wins; None means "compare ``mask`` with the
    causal mask of that size" (float -inf above the diagonal, or boolean True above it)."""
    if is_causal is not None:
        return bool(is_causal)
    if mask is None or tuple(mask.shape) != (size, size):
        return False
    above = _causal_mask(size, size, mask.device)
    if mask.dtype == torch.bool:
        return bool(torch.equal(mask, above))
    expected = torch.zeros(size, size, dtype=mask.dtype, device=mask.device).masked_fill_(above, -math.inf)
    return bool(torch.equal(mask, expected))


class TransformerEncoderLayer(nn.Module):
    """Self-attention and feed-forward block, ``torch.nn.TransformerEncoderLayer`` on the fused kernel.

    Same constructor arguments, submodules and parameter names as ``torch.nn``
    (``self_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``, ``dropout``, ``dropout1``,
    ``dropout2``), so its ``state_dict`` loads; ``batch_first`` defaults to True.

    Parameters
    ----------
    d_model : int
    nhead : int
    dim_feedforward : int, default 2048
    dropout : float, default 0.1
    activation : "relu", "gelu" or a callable, default relu
    layer_norm_eps : float, default 1e-5
    batch_first : bool, default True
    norm_first : bool, default False
        Pre-norm (LayerNorm before attention and feed-forward) instead of post-norm.
    bias : bool, default True
        Biases of the linear layers and the layer norms.
    device, dtype : factory arguments

    Shape
    -----
    src : (B, L, d_model) (batch_first), (L, B, d_model) or (L, d_model)
    src_mask : (L, L) or (B * nhead, L, L), bool (True = may not attend) or float (added)
    src_key_padding_mask : (B, L) (True = padding) or float
    output : like ``src``
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = F.relu,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = True,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            **factory)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _activation_function(activation)

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: bool = False) -> Tensor:
        """``is_causal``: causal self-attention; ``src_mask`` may then be None (see
        ``MultiheadAttention.forward``)."""
        x = src
        if self.norm_first:
            x = x + self._self_attention_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._feed_forward_block(self.norm2(x))
        else:
            x = self.norm1(x + self._self_attention_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._feed_forward_block(x))
        return x

    def _self_attention_block(self, x: Tensor, attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
                              is_causal: bool) -> Tensor:
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]
        return self.dropout1(x)

    def _feed_forward_block(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TransformerDecoderLayer(nn.Module):
    """Self-attention, cross-attention and feed-forward block, ``torch.nn.TransformerDecoderLayer``
    on the fused kernel.

    Same constructor arguments and parameter names as ``torch.nn`` (``self_attn``,
    ``multihead_attn``, ``linear1``, ``linear2``, ``norm1``..``norm3``, ``dropout``,
    ``dropout1``..``dropout3``); ``batch_first`` defaults to True. Parameters as
    ``TransformerEncoderLayer``.

    Shape
    -----
    tgt : (B, T, d_model) (batch_first), (T, B, d_model) or (T, d_model)
    memory : (B, S, d_model), (S, B, d_model) or (S, d_model)
    tgt_mask : (T, T) or (B * nhead, T, T); memory_mask : (T, S) or (B * nhead, T, S)
    tgt_key_padding_mask : (B, T); memory_key_padding_mask : (B, S)
    output : like ``tgt``
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = F.relu,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = True,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=batch_first, bias=bias,
                                            **factory)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=batch_first, bias=bias,
                                                 **factory)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = _activation_function(activation)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Optional[Tensor] = None,
        memory_mask: Optional[Tensor] = None,
        tgt_key_padding_mask: Optional[Tensor] = None,
        memory_key_padding_mask: Optional[Tensor] = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ) -> Tensor:
        x = tgt
        if self.norm_first:
            x = x + self._self_attention_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._cross_attention_block(self.norm2(x), memory, memory_mask, memory_key_padding_mask,
                                                memory_is_causal)
            x = x + self._feed_forward_block(self.norm3(x))
        else:
            x = self.norm1(x + self._self_attention_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
            x = self.norm2(x + self._cross_attention_block(x, memory, memory_mask, memory_key_padding_mask,
                                                           memory_is_causal))
            x = self.norm3(x + self._feed_forward_block(x))
        return x

    def _self_attention_block(self, x: Tensor, attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
                              is_causal: bool) -> Tensor:
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal,
                           need_weights=False)[0]
        return self.dropout1(x)

    def _cross_attention_block(self, x: Tensor, memory: Tensor, attn_mask: Optional[Tensor],
                               key_padding_mask: Optional[Tensor], is_causal: bool) -> Tensor:
        x = self.multihead_attn(x, memory, memory, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                is_causal=is_causal, need_weights=False)[0]
        return self.dropout2(x)

    def _feed_forward_block(self, x: Tensor) -> Tensor:
        return self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TransformerEncoder(nn.Module):
    """A stack of ``num_layers`` deep copies of ``encoder_layer``, then ``norm``: ``torch.nn.TransformerEncoder``.

    Parameters
    ----------
    encoder_layer : TransformerEncoderLayer
        Copied ``num_layers`` times (every copy starts with the same weights, as in ``torch.nn``).
    num_layers : int
    norm : nn.Module, optional
        Applied to the output of the last layer (a ``LayerNorm`` for pre-norm stacks).
    enable_nested_tensor, mask_check : bool
        Accepted for ``torch.nn`` compatibility and ignored: no nested-tensor path here.

    Shape
    -----
    src, mask, src_key_padding_mask : as ``TransformerEncoderLayer``; output like ``src``
    """

    def __init__(self, encoder_layer: nn.Module, num_layers: int, norm: Optional[nn.Module] = None,
                 enable_nested_tensor: bool = True, mask_check: bool = True) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"TransformerEncoder: num_layers must be >= 0, got {num_layers}")
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm
        self.enable_nested_tensor = enable_nested_tensor
        self.mask_check = mask_check

    def forward(self, src: Tensor, mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: Optional[bool] = None) -> Tensor:
        """``is_causal=None`` detects a causal ``mask`` (as ``torch.nn``); True needs no ``mask``."""
        output = src
        if self.layers:
            batch_first = getattr(getattr(self.layers[0], "self_attn", None), "batch_first", True)
            is_causal = _is_causal_mask(mask, is_causal, _sequence_length(src, batch_first))
        for layer in self.layers:
            output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        if self.norm is not None:
            output = self.norm(output)
        return output


class TransformerDecoder(nn.Module):
    """A stack of ``num_layers`` deep copies of ``decoder_layer``, then ``norm``: ``torch.nn.TransformerDecoder``.

    Shape
    -----
    tgt, memory and the masks : as ``TransformerDecoderLayer``; output like ``tgt``
    """

    def __init__(self, decoder_layer: nn.Module, num_layers: int, norm: Optional[nn.Module] = None) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"TransformerDecoder: num_layers must be >= 0, got {num_layers}")
        self.layers = nn.ModuleList([copy.deepcopy(decoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Optional[Tensor] = None,
        memory_mask: Optional[Tensor] = None,
        tgt_key_padding_mask: Optional[Tensor] = None,
        memory_key_padding_mask: Optional[Tensor] = None,
        tgt_is_causal: Optional[bool] = None,
        memory_is_causal: bool = False,
    ) -> Tensor:
        output = tgt
        if self.layers:
            batch_first = getattr(getattr(self.layers[0], "self_attn", None), "batch_first", True)
            tgt_is_causal = _is_causal_mask(tgt_mask, tgt_is_causal, _sequence_length(tgt, batch_first))
        for layer in self.layers:
            output = layer(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                           tgt_key_padding_mask=tgt_key_padding_mask,
                           memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                           memory_is_causal=memory_is_causal)
        if self.norm is not None:
            output = self.norm(output)
        return output
