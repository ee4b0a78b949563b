"""Fused scaled-dot-product attention (flash-style: tiles of queries against tiles of keys with an
online softmax; the L x S score matrix never exists).

``scaled_dot_product_attention`` has the signature and semantics of
``torch.nn.functional.scaled_dot_product_attention``, with three differences fixed by the
contract: a query row whose keys are all masked gives zeros (and zero gradients) where PyTorch
gives NaN; key and value of different lengths raise; head dims above 256 raise. Dropout runs
inside the kernel from a counter-based hash keyed by a seed drawn from torch's default generator,
so ``torch.manual_seed`` reproduces it and the backward regenerates the same mask.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from pyvision_ops._extension import ops, register_when_loaded
from pyvision_ops.ops._fake import register_fake

__all__ = ["scaled_dot_product_attention"]


def _check_tensor(value, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(value).__name__}")


def _dropout_seed(dropout_p: float):
    """A 62-bit seed from torch's default CPU generator (0 without dropout); under torch.compile a
    symbolic int (the schema's seed is a SymInt)."""
    if dropout_p <= 0.0:
        return 0
    return torch.randint(0, 2**62, (1,), dtype=torch.int64).item()


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """softmax(query key^T * scale + mask) value, fused.

    Parameters
    ----------
    query : Tensor (B, Hq, L, E) or (B, L, E)
    key : Tensor (B, Hkv, S, E) or (B, S, E)
    value : Tensor (B, Hkv, S, Ev) or (B, S, Ev)
        One dtype and device: float32/float64 on the CPU (float16/bfloat16 are computed in
        float32), float32/float16/bfloat16 on CUDA. E, Ev <= 256.
    attn_mask : bool Tensor (True = attend) or floating Tensor (added to the scores),
        broadcastable to (B, Hq, L, S); not together with ``is_causal``.
    dropout_p : float in [0, 1]
        Dropout of the attention weights (applied whenever > 0, as PyTorch's functional form).
    is_causal : bool
        Query i sees keys j <= i (top-left aligned, as PyTorch).
    scale : float, default 1 / sqrt(E)
    enable_gqa : bool
        Grouped-query attention: Hq a multiple of Hkv, query head h reads kv head h // (Hq / Hkv).

    Returns
    -------
    Tensor (B, Hq, L, Ev) (or (B, L, Ev)), query's dtype; differentiable with respect to query,
    key and value. A row with every key masked gives 0.
    """
    _check_tensor(query, "query")
    _check_tensor(key, "key")
    _check_tensor(value, "value")
    if attn_mask is not None:
        _check_tensor(attn_mask, "attn_mask")
    if not (query.dim() == key.dim() == value.dim() and query.dim() in (3, 4)):
        raise ValueError(
            "query, key and value must all be 4-D (B, H, L, E) or all 3-D (B, L, E), got "
            f"{query.dim()}-D, {key.dim()}-D and {value.dim()}-D"
        )
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be a float in [0, 1], got {dropout_p!r}")
    three_d = query.dim() == 3
    if three_d:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(1)
    if query.shape[1] != key.shape[1] and not enable_gqa:
        raise ValueError(
            f"query has {query.shape[1]} heads and key {key.shape[1]}: different head counts need enable_gqa=True"
        )
    if attn_mask is not None and is_causal:
        raise ValueError("attn_mask and is_causal=True cannot be given together")
    if attn_mask is not None and attn_mask.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "attn_mask requires grad: the fused kernel gives no gradient for the mask (pass attn_mask.detach(), "
            "or use torch.nn.functional.scaled_dot_product_attention for a learned bias)"
        )
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1]) if query.shape[-1] > 0 else 1.0
    out, _, _ = ops()._attention_forward(
        query, key, value, attn_mask, float(dropout_p), bool(is_causal), float(scale), _dropout_seed(dropout_p)
    )
    return out.squeeze(1) if three_d else out


@register_when_loaded
def _register() -> None:
    """Fake kernels and autograd of the family's operators (they need the compiled schemas)."""

    @register_fake("pyvision_ops::_attention_forward")
    def _forward_fake(q, k, v, mask, dropout_p, is_causal, scale, seed):
        torch._check(q.dim() == 4, lambda: f"scaled_dot_product_attention: query must be 4-D, got {q.dim()}-D")
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        out = q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))
        lse = q.new_empty((q.shape[0], q.shape[1], q.shape[2]), dtype=lse_dtype)
        return out, lse, q.new_empty((q.shape[0], q.shape[1], q.shape[2], 2), dtype=lse_dtype)

    @register_fake("pyvision_ops::_attention_backward")
    def _backward_fake(grad_out, q, k, v, mask, out, stats, dropout_p, is_causal, scale, seed, output_mask):
        return (
            torch.empty_like(q, memory_format=torch.contiguous_format) if output_mask[0] else q.new_empty((0,)),
            torch.empty_like(k, memory_format=torch.contiguous_format) if output_mask[1] else k.new_empty((0,)),
            torch.empty_like(v, memory_format=torch.contiguous_format) if output_mask[2] else v.new_empty((0,)),
        )

    def _setup(ctx, inputs, output):
        q, k, v, mask, dropout_p, is_causal, scale, seed = inputs
        out, lse, stats = output
        # lse and stats are statistics of the forward, not differentiable outputs.
        ctx.mark_non_differentiable(lse, stats)
        ctx.save_for_backward(q, k, v, mask, out, stats)
        ctx.args = (dropout_p, is_causal, scale, seed)

    def _backward(ctx, grad_out, grad_lse, grad_stats):
        q, k, v, mask, out, stats = ctx.saved_tensors
        need = [bool(ctx.needs_input_grad[i]) for i in range(3)]
        if not any(need):
            return (None,) * 8
        dropout_p, is_causal, scale, seed = ctx.args
        dq, dk, dv = ops()._attention_backward(
            grad_out, q, k, v, mask, out, stats, dropout_p, is_causal, scale, seed, need
        )
        return (dq if need[0] else None, dk if need[1] else None, dv if need[2] else None) + (None,) * 5

    torch.library.register_autograd("pyvision_ops::_attention_forward", _backward, setup_context=_setup)
