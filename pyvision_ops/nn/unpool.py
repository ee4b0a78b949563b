"""Max pooling and max unpooling modules, drop-in replacements for their ``torch.nn`` namesakes.

Each module subclasses the ``torch.nn`` class of the same name, so it takes the same
constructor and ``forward`` arguments, has the same attributes, ``repr`` and (empty)
``state_dict``, and passes ``isinstance(module, torch.nn.MaxPool2d)`` checks in code that
walks a model. Only ``forward`` differs: it calls the ``pyvision_ops`` operators.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from pyvision_ops.ops.unpool import (
    IntOrTuple,
    max_pool2d_with_indices,
    max_unpool1d,
    max_unpool2d,
    max_unpool3d,
)

__all__ = ["MaxPool2d", "MaxUnpool1d", "MaxUnpool2d", "MaxUnpool3d"]


class MaxPool2d(torch.nn.MaxPool2d):
    """2-D max pooling over ``pyvision_ops.max_pool2d_with_indices``.

    Same arguments and behaviour as ``torch.nn.MaxPool2d``, plus ``compact``.

    Parameters
    ----------
    kernel_size, stride, padding, dilation, return_indices, ceil_mode
        As in ``torch.nn.MaxPool2d``; ``stride=None`` means ``kernel_size``.
    compact : bool, default False
        Index format. False: int64 flat positions in each input plane (PyTorch's format, what
        ``torch.nn.MaxUnpool2d`` expects). True: uint8 window-local positions ``kh * kW + kw``,
        8x less memory (what SegNet keeps between encoder and decoder); needs
        ``kH * kW <= 256``. ``pyvision_ops.nn.MaxUnpool2d`` reads both formats.

    Shape
    -----
    input : (N, C, H, W) or (C, H, W)
    output : (N, C, H_out, W_out) or (C, H_out, W_out), and indices of the same shape when
        ``return_indices=True``.

    Examples
    --------
    >>> pool = MaxPool2d(2, return_indices=True, compact=True)
    >>> values, indices = pool(torch.randn(1, 8, 32, 32))  # indices: uint8 (1, 8, 16, 16)
    """

    compact: bool

    def __init__(
        self,
        kernel_size: IntOrTuple,
        stride: Optional[IntOrTuple] = None,
        padding: IntOrTuple = 0,
        dilation: IntOrTuple = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
        compact: bool = False,
    ) -> None:
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        self.compact = compact

    def forward(self, input: Tensor) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        # The indices are computed either way: autograd keeps them for the backward pass.
        values, indices = max_pool2d_with_indices(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            compact=self.compact,
        )
        if self.return_indices:
            return values, indices
        return values

    def extra_repr(self) -> str:
        # Mention `compact` only when set, so the default repr is exactly torch.nn's.
        text = super().extra_repr()
        return f"{text}, compact=True" if self.compact else text


class MaxUnpool1d(torch.nn.MaxUnpool1d):
    """Inverse of 1-D max pooling over ``pyvision_ops.max_unpool1d``; drop-in for
    ``torch.nn.MaxUnpool1d``.

    Parameters
    ----------
    kernel_size, stride, padding
        Those of the pooling being inverted; ``stride=None`` means ``kernel_size``.

    Shape
    -----
    input, indices : (N, C, L_in) or (C, L_in); indices int64/int32 flat or uint8 compact.
    output : (N, C, L_out), L_out = (L_in - 1) * stride - 2 * padding + kernel_size, or
        ``output_size`` in ``forward``.
    """

    def forward(self, input: Tensor, indices: Tensor, output_size: Optional[Sequence[int]] = None) -> Tensor:
        return max_unpool1d(input, indices, self.kernel_size, self.stride, self.padding, output_size)


class MaxUnpool2d(torch.nn.MaxUnpool2d):
    """Inverse of 2-D max pooling over ``pyvision_ops.max_unpool2d``; drop-in for
    ``torch.nn.MaxUnpool2d``.

    Reads both the int64 flat indices of ``torch.nn.MaxPool2d`` and the uint8 compact ones of
    ``MaxPool2d(compact=True)`` (compact indices assume undilated windows).

    Parameters
    ----------
    kernel_size, stride, padding
        Those of the pooling being inverted; ``stride=None`` means ``kernel_size``.

    Shape
    -----
    input, indices : (N, C, H_in, W_in) or (C, H_in, W_in)
    output : (N, C, H_out, W_out), H_out = (H_in - 1) * stride - 2 * padding + kernel_size,
        or ``output_size`` in ``forward`` (pass the pre-pooling size to invert an odd size).

    Examples
    --------
    >>> pool, unpool = MaxPool2d(2, return_indices=True, compact=True), MaxUnpool2d(2)
    >>> x = torch.randn(1, 8, 45, 61)
    >>> y = unpool(*pool(x), output_size=x.shape[-2:])  # (1, 8, 45, 61)
    """

    def forward(self, input: Tensor, indices: Tensor, output_size: Optional[Sequence[int]] = None) -> Tensor:
        return max_unpool2d(input, indices, self.kernel_size, self.stride, self.padding, output_size)


class MaxUnpool3d(torch.nn.MaxUnpool3d):
    """Inverse of 3-D max pooling over ``pyvision_ops.max_unpool3d``; drop-in for
    ``torch.nn.MaxUnpool3d``.

    Parameters
    ----------
    kernel_size, stride, padding
        Those of the pooling being inverted; ``stride=None`` means ``kernel_size``.

    Shape
    -----
    input, indices : (N, C, D_in, H_in, W_in) or (C, D_in, H_in, W_in)
    output : (N, C, D_out, H_out, W_out), each ``(in - 1) * stride - 2 * padding + kernel_size``,
        or ``output_size`` in ``forward``.
    """

    def forward(self, input: Tensor, indices: Tensor, output_size: Optional[Sequence[int]] = None) -> Tensor:
        return max_unpool3d(input, indices, self.kernel_size, self.stride, self.padding, output_size)
