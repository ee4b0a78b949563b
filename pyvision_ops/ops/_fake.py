"""``register_fake`` with the device rule of the C++ kernels.

A call whose tensors are on different devices, one of them ``meta``, dispatches to the fake
(meta) kernel instead of a real one, so the C++ check that all tensors share one device never
runs and the fake kernel would hand back an uninitialised tensor on the other device. Every fake
kernel of this package is registered through :func:`register_fake`, which applies the same rule
first: all tensor arguments on one device, else a RuntimeError naming two of them (the C++
``check_same_device`` message).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterator, Tuple

import torch


def _tensors(name: str, value: Any) -> Iterator[Tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            if isinstance(item, torch.Tensor):
                yield f"{name}[{position}]", item


def check_one_device(op: str, signature: inspect.Signature, args: tuple, kwargs: dict) -> None:
    """Raise RuntimeError when the tensor arguments of a call to ``op`` are not on one device."""
    bound = signature.bind(*args, **kwargs)
    first = None
    for name, value in bound.arguments.items():
        for label, tensor in _tensors(name, value):
            if first is None:
                first = (label, tensor.device)
            elif tensor.device != first[1]:
                raise RuntimeError(f"{op}: {first[0]} and {label} must be on the same device, got "
                                   f"{first[1]} and {tensor.device}")


def register_fake(qualname: str) -> Callable[[Callable], Callable]:
    """``torch.library.register_fake(qualname)`` for a fake kernel that first checks devices."""
    op = qualname.split("::", 1)[-1]

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            check_one_device(op, signature, args, kwargs)
            return fn(*args, **kwargs)

        torch.library.register_fake(qualname)(checked)
        return fn

    return decorate
