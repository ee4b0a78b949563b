"""Max pooling with indices and max unpooling (SegNet decoders, DeconvNet projections).

Every function here is a thin wrapper over a ``torch.ops.pyvision_ops`` operator: it
normalises the arguments (ints or tuples, ``stride=None``, unbatched inputs, ``output_size``
with or without the batch and channel dimensions) and calls the operator. The operators
validate their inputs in C++, have fake kernels for ``torch.compile``/``torch.export``, and
their backward passes are registered operators too.

Index formats
-------------
* flat (int64, or int32 for unpooling): the position inside each input plane, exactly as
  ``torch.nn.functional.max_pool2d(..., return_indices=True)`` returns it.
* compact (uint8): the window-local position ``kh * kW + kw`` of the maximum, 8x less memory
  than int64. Requires ``kH * kW <= 256``. Unpooling reads uint8 indices as compact and
  assumes the windows were not dilated.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from pyvision_ops._extension import ops, register_when_loaded
from pyvision_ops.ops._fake import register_fake

__all__ = [
    "max_pool2d_with_indices",
    "max_unpool1d",
    "max_unpool2d",
    "max_unpool3d",
    "pooling_output_size",
]

IntOrTuple = Union[int, Sequence[int]]



# --------------------------------------------------------------------------------------------
# argument helpers (shared by the functional API, the fake kernels and the nn modules)
# --------------------------------------------------------------------------------------------


def _tuple(value: IntOrTuple, n: int, name: str) -> List[int]:
    """``value`` as a list of ``n`` ints; a single int is repeated."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if isinstance(value, int):
        return [value] * n
    if isinstance(value, torch.SymInt):
        return [value] * n
    try:
        values = list(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}") from None
    if len(values) == 1:
        values = values * n
    if len(values) != n or not all(isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    return [int(v) if isinstance(v, int) else v for v in values]


def pooling_output_size(
    input_size: int, kernel_size: int, stride: int, padding: int, dilation: int, ceil_mode: bool
) -> int:
    """Output length of one pooled dimension, PyTorch's formula (``pooling_output_shape``)."""
    numerator = input_size + 2 * padding - dilation * (kernel_size - 1) - 1 + (stride - 1 if ceil_mode else 0)
    output_size = numerator // stride + 1
    # The last window must start inside the input or the left padding (PyTorch's rule: one
    # window fewer when (output_size - 1) * stride >= input_size + padding). As a minimum with
    # the number of starts o * stride - padding < input_size, so that symbolic sizes
    # (torch.compile/export) get no guard on a comparison and keep bounds the solver can follow.
    # The two agree: with padding <= kernel_size / 2 the ceil count exceeds that number by at most 1,
    # and never when dilation * (kernel_size - 1) - padding >= stride - 1 (the ceil numerator is
    # then at least stride - 1 below input_size + padding - 1), decided on the integer arguments.
    if not ceil_mode or dilation * (kernel_size - 1) - padding >= stride - 1:
        return output_size
    starts = (input_size + padding - 1) // stride + 1
    if isinstance(output_size, torch.SymInt) or isinstance(starts, torch.SymInt):
        return torch.sym_min(output_size, starts)
    return min(output_size, starts)


def _suggests_channels_last(x: torch.Tensor) -> bool:
    """The rule the C++ glue uses to keep a channels-last layout (must stay identical)."""
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if x.dim() == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    return False


def _empty_like_layout(reference: torch.Tensor, shape: Sequence[int], dtype: torch.dtype,
                       also: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A new tensor of ``shape`` with the memory format the kernels give ``reference``'s output:
    channels-last when ``reference`` (or ``also``: the backward kernels look at grad_output and
    indices, make_backward_params in unpool_checks.cpp) suggests it."""
    out = reference.new_empty(shape, dtype=dtype)
    if _suggests_channels_last(reference) or (also is not None and _suggests_channels_last(also)):
        fmt = torch.channels_last if reference.dim() == 4 else torch.channels_last_3d
        out = out.contiguous(memory_format=fmt)
    return out


def _unpool_output_size(
    x: torch.Tensor,
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    output_size: Optional[Sequence[int]],
) -> List[int]:
    """Spatial output size: the default, or ``output_size`` (with or without N, C dims)."""
    dims = len(kernel_size)
    spatial_in = list(x.shape[-dims:])
    if output_size is None:
        return [(spatial_in[d] - 1) * stride[d] - 2 * padding[d] + kernel_size[d] for d in range(dims)]
    if isinstance(output_size, torch.Size):
        output_size = list(output_size)
    sizes = list(output_size)
    if len(sizes) == dims + 2 or (len(sizes) == dims + 1 and x.dim() == dims + 1):
        sizes = sizes[-dims:]
    if len(sizes) != dims:
        raise ValueError(
            f"output_size must have {dims} or {dims + 2} elements, got {len(sizes)} ({list(output_size)})"
        )
    # SymInts (sizes under torch.compile/export) stay symbolic; anything else must be an int.
    return [s if isinstance(s, torch.SymInt) else int(s) for s in sizes]


# --------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------


def max_pool2d_with_indices(
    x: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    ceil_mode: bool = False,
    compact: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """2-D max pooling that also returns where each maximum came from.

    Parameters
    ----------
    x : Tensor (N, C, H, W) or (C, H, W)
        float32, float64, float16 or bfloat16; any strides (channels_last is kept).
    kernel_size, stride, padding, dilation, ceil_mode
        As in ``torch.nn.functional.max_pool2d``; ``stride=None`` means ``kernel_size``.
    compact : bool
        False: int64 indices, the flat position in each input plane (PyTorch's format).
        True: uint8 window-local indices ``kh * kW + kw`` (8x less memory); needs kH*kW <= 256.

    Returns
    -------
    values : Tensor (N, C, H_out, W_out), x's dtype and memory format
    indices : Tensor (N, C, H_out, W_out), int64 or uint8
    """
    k = _tuple(kernel_size, 2, "kernel_size")
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _tuple(stride, 2, "stride")
    p = _tuple(padding, 2, "padding")
    d = _tuple(dilation, 2, "dilation")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    values, indices = ops().max_pool2d_with_indices(x, k, s, p, d, bool(ceil_mode), bool(compact))
    if unbatched:
        values, indices = values.squeeze(0), indices.squeeze(0)
    return values, indices


def _max_unpool(
    dims: int,
    x: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple],
    padding: IntOrTuple,
    output_size: Optional[Sequence[int]],
) -> torch.Tensor:
    k = _tuple(kernel_size, dims, "kernel_size")
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _tuple(stride, dims, "stride")
    p = _tuple(padding, dims, "padding")
    if not isinstance(x, torch.Tensor) or not isinstance(indices, torch.Tensor):
        raise TypeError("x and indices must be Tensors")
    unbatched = x.dim() == dims + 1
    if unbatched:
        x = x.unsqueeze(0)
        indices = indices.unsqueeze(0) if indices.dim() == dims + 1 else indices
    out_size = _unpool_output_size(x, k, s, p, output_size)
    op = {1: ops().max_unpool1d, 2: ops().max_unpool2d, 3: ops().max_unpool3d}[dims]
    out = op(x, indices, k, s, p, out_size)
    return out.squeeze(0) if unbatched else out


def max_unpool1d(
    x: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    output_size: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Inverse of 1-D max pooling: ``x`` (N, C, L) or (C, L) scattered to (N, C, L_out).

    Same semantics as ``torch.nn.functional.max_unpool1d``; int64/int32 flat or uint8 compact
    indices. Out-of-range indices raise an error naming the first bad index.
    """
    return _max_unpool(1, x, indices, kernel_size, stride, padding, output_size)


def max_unpool2d(
    x: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    output_size: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Inverse of 2-D max pooling: ``x`` (N, C, H, W) or (C, H, W) to (N, C, H_out, W_out).

    Same semantics as ``torch.nn.functional.max_unpool2d``. ``indices`` are int64/int32 flat
    positions in each output plane, or uint8 compact window-local positions (from
    ``max_pool2d_with_indices(..., compact=True)``). The default output size is
    ``(H - 1) * stride - 2 * padding + kernel_size``; ``output_size`` may differ from it by
    less than ``stride``. Every output element not selected by an index is zero. The result
    keeps ``x``'s memory format (channels_last stays channels_last).
    """
    return _max_unpool(2, x, indices, kernel_size, stride, padding, output_size)


def max_unpool3d(
    x: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    output_size: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Inverse of 3-D max pooling: ``x`` (N, C, D, H, W) or (C, D, H, W); see ``max_unpool2d``."""
    return _max_unpool(3, x, indices, kernel_size, stride, padding, output_size)


@register_when_loaded
def _register() -> None:
    """Fake kernels and autograd of the family's operators (they need the compiled schemas)."""

    # --------------------------------------------------------------------------------------------
    # fake kernels (shapes, dtypes and layouts only) for torch.compile / torch.export
    # --------------------------------------------------------------------------------------------

    @register_fake("pyvision_ops::max_pool2d_with_indices")
    def _max_pool2d_with_indices_fake(x, kernel_size, stride, padding, dilation, ceil_mode, compact):
        torch._check(x.dim() == 4, lambda: f"max_pool2d_with_indices: x must be 4-D (N, C, H, W), got {x.dim()}-D")
        out_h = pooling_output_size(x.shape[2], kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
        out_w = pooling_output_size(x.shape[3], kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
        shape = (x.shape[0], x.shape[1], out_h, out_w)
        index_dtype = torch.uint8 if compact else torch.int64
        return _empty_like_layout(x, shape, x.dtype), _empty_like_layout(x, shape, index_dtype)

    @register_fake("pyvision_ops::_max_pool2d_backward")
    def _max_pool2d_backward_fake(grad_output, indices, input_size, kernel_size, stride, padding, dilation, compact):
        shape = (grad_output.shape[0], grad_output.shape[1], input_size[0], input_size[1])
        return _empty_like_layout(grad_output, shape, grad_output.dtype, also=indices)

    def _unpool_fake(x, indices, kernel_size, stride, padding, output_size):
        shape = (x.shape[0], x.shape[1], *output_size)
        return _empty_like_layout(x, shape, x.dtype)

    for _name in ("max_unpool1d", "max_unpool2d", "max_unpool3d"):
        register_fake(f"pyvision_ops::{_name}")(_unpool_fake)

    @register_fake("pyvision_ops::_max_unpool_backward")
    def _max_unpool_backward_fake(grad_output, indices, kernel_size, stride, padding, dilation):
        return _empty_like_layout(grad_output, indices.shape, grad_output.dtype, also=indices)

    # --------------------------------------------------------------------------------------------
    # autograd: every backward is itself a registered operator
    # --------------------------------------------------------------------------------------------

    def _pool_setup_context(ctx, inputs, output):
        x, kernel_size, stride, padding, dilation, _ceil_mode, compact = inputs
        ctx.save_for_backward(output[1])
        ctx.input_size = (x.shape[2], x.shape[3])
        ctx.args = (kernel_size, stride, padding, dilation, compact)
        ctx.mark_non_differentiable(output[1])

    def _pool_backward(ctx, grad_values, _grad_indices):
        (indices,) = ctx.saved_tensors
        kernel_size, stride, padding, dilation, compact = ctx.args
        grad_x = ops()._max_pool2d_backward(
            grad_values, indices, list(ctx.input_size), kernel_size, stride, padding, dilation, compact
        )
        return grad_x, None, None, None, None, None, None

    torch.library.register_autograd(
        "pyvision_ops::max_pool2d_with_indices", _pool_backward, setup_context=_pool_setup_context
    )

    def _pool_backward_setup_context(ctx, inputs, output):
        _grad_output, indices, _input_size, kernel_size, stride, padding, dilation, _compact = inputs
        ctx.save_for_backward(indices)
        ctx.args = (kernel_size, stride, padding, dilation)

    def _pool_backward_backward(ctx, grad_grad_x):
        # The pooling backward scatters grad_output into the input; its adjoint gathers.
        (indices,) = ctx.saved_tensors
        kernel_size, stride, padding, dilation = ctx.args
        grad_grad_output = ops()._max_unpool_backward(grad_grad_x, indices, kernel_size, stride, padding, dilation)
        return grad_grad_output, None, None, None, None, None, None, None

    torch.library.register_autograd(
        "pyvision_ops::_max_pool2d_backward", _pool_backward_backward, setup_context=_pool_backward_setup_context
    )

    def _unpool_setup_context(ctx, inputs, output):
        _x, indices, kernel_size, stride, padding, _output_size = inputs
        ctx.save_for_backward(indices)
        ctx.args = (kernel_size, stride, padding)

    def _unpool_backward(ctx, grad_output):
        (indices,) = ctx.saved_tensors
        kernel_size, stride, padding = ctx.args
        dilation = [1] * len(kernel_size)
        grad_x = ops()._max_unpool_backward(grad_output, indices, kernel_size, stride, padding, dilation)
        return grad_x, None, None, None, None, None

    for _name in ("max_unpool1d", "max_unpool2d", "max_unpool3d"):
        torch.library.register_autograd(
            f"pyvision_ops::{_name}", _unpool_backward, setup_context=_unpool_setup_context
        )

    def _unpool_backward_setup_context(ctx, inputs, output):
        grad_output, indices, kernel_size, stride, padding, dilation = inputs
        ctx.save_for_backward(indices)
        ctx.args = (kernel_size, stride, padding, dilation)
        ctx.output_size = list(grad_output.shape[2:])

    def _unpool_backward_backward(ctx, grad_grad_x):
        # The unpooling backward gathers; its adjoint is the unpooling scatter itself.
        (indices,) = ctx.saved_tensors
        kernel_size, stride, padding, dilation = ctx.args
        if any(d != 1 for d in dilation):
            raise RuntimeError("double backward of a dilated compact max_pool2d is not supported")
        op = {1: ops().max_unpool1d, 2: ops().max_unpool2d, 3: ops().max_unpool3d}[len(kernel_size)]
        grad_grad_output = op(grad_grad_x, indices, kernel_size, stride, padding, ctx.output_size)
        return grad_grad_output, None, None, None, None, None

    torch.library.register_autograd(
        "pyvision_ops::_max_unpool_backward", _unpool_backward_backward, setup_context=_unpool_backward_setup_context
    )
