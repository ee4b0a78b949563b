"""Benchmark workloads of the ``unpool`` family: max pooling with indices and max unpooling.

The SegNet decoder step: x = (8, 64, 112, 112) float32 pooled 2x2 stride 2, its indices kept
(flat int64 as PyTorch, or this library's compact uint8), and the pooled values unpooled back.
References: ``F.max_pool2d(..., return_indices=True)`` and ``F.max_unpool2d``. Results must be
bit-identical (max pooling selects, it never rounds).

Each op is timed forward only, forward plus ``torch.autograd.grad`` with a fixed upstream
gradient (mode ``"fwd+bwd"``: the backward kernel), and forward plus ``out.sum().backward()``
into ``.grad`` (mode ``"fwd+.backward()"``: what most users write; the upstream gradient is
then an expanded scalar).
"""

from __future__ import annotations

from typing import Any, Tuple

import torch
import torch.nn.functional as F

from pyvision_ops.bench.workloads.core import (
    FLOAT32_BYTES,
    INT64_BYTES,
    MIB,
    MODE_AUTOGRAD_GRAD,
    MODE_BACKWARD,
    MODE_FORWARD,
    UINT8_BYTES,
    CheckFailed,
    Inputs,
    Workload,
    assert_exactly_equal,
    compact_to_flat_indices,
    flat_to_compact_indices,
    library,
    random_normal,
    register,
    sum_backward,
)

__all__: list = []

_UNPOOL_SHAPE = (8, 64, 112, 112)
_UNPOOL_KERNEL = 2
_UNPOOL_STRIDE = 2
_UNPOOL_DESCRIPTION = "SegNet decoder step x=(8,64,112,112) fp32, 2x2 s2"
_INPUT_ELEMENTS = _UNPOOL_SHAPE[0] * _UNPOOL_SHAPE[1] * _UNPOOL_SHAPE[2] * _UNPOOL_SHAPE[3]  # n_x
_POOLED_ELEMENTS = _INPUT_ELEMENTS // (_UNPOOL_KERNEL * _UNPOOL_KERNEL)  # n_p


def _pooled_shape() -> Tuple[int, ...]:
    batch, channels, height, width = _UNPOOL_SHAPE
    return (batch, channels, height // _UNPOOL_STRIDE, width // _UNPOOL_STRIDE)


def _pool_inputs(device: torch.device, with_grad: bool, leaf: bool = False) -> Inputs:
    # with_grad: also a fixed upstream gradient (autograd.grad rows); leaf: x requires grad
    x = random_normal(_UNPOOL_SHAPE, device, seed=0)
    inputs: Inputs = {"x": x.requires_grad_(with_grad or leaf)}
    if with_grad:
        inputs["grad_values"] = random_normal(_pooled_shape(), device, seed=1)
    return inputs


def _unpool_inputs(device: torch.device, with_grad: bool, leaf: bool = False) -> Inputs:
    # with_grad: also a fixed upstream gradient (autograd.grad rows); leaf: pooled requires grad
    x = random_normal(_UNPOOL_SHAPE, device, seed=0)
    pooled, flat_indices = F.max_pool2d(x, _UNPOOL_KERNEL, _UNPOOL_STRIDE, return_indices=True)
    # Compact indices are derived from the reference's flat ones (not from our pooling kernel)
    # so an unpooling row measures and checks unpooling alone; the pair rows chain both ops.
    compact_indices = flat_to_compact_indices(flat_indices, _UNPOOL_SHAPE[3], _UNPOOL_KERNEL, _UNPOOL_STRIDE)
    inputs: Inputs = {
        "pooled": pooled.detach().requires_grad_(with_grad or leaf),
        "flat_indices": flat_indices,
        "compact_indices": compact_indices,
    }
    if with_grad:
        inputs["grad_out"] = random_normal(_UNPOOL_SHAPE, device, seed=1)
    return inputs


def _index_bytes(compact: bool) -> int:
    return UINT8_BYTES if compact else INT64_BYTES


def _pool_forward_bytes(index_bytes: int) -> int:
    # read x, write values and indices
    return FLOAT32_BYTES * _INPUT_ELEMENTS + (FLOAT32_BYTES + index_bytes) * _POOLED_ELEMENTS


def _pool_backward_bytes(index_bytes: int) -> int:
    # read grad_values and indices, write grad_x (all of it: the zeros are compulsory too)
    return (FLOAT32_BYTES + index_bytes) * _POOLED_ELEMENTS + FLOAT32_BYTES * _INPUT_ELEMENTS


def _unpool_forward_bytes(index_bytes: int) -> int:
    # read pooled and indices, write the (mostly zero) output
    return (FLOAT32_BYTES + index_bytes) * _POOLED_ELEMENTS + FLOAT32_BYTES * _INPUT_ELEMENTS


def _unpool_backward_bytes(index_bytes: int) -> int:
    # read grad_out and indices, write grad_pooled
    return FLOAT32_BYTES * _INPUT_ELEMENTS + (index_bytes + FLOAT32_BYTES) * _POOLED_ELEMENTS


def _index_memory_note(compact: bool) -> str:
    int64_mib = _POOLED_ELEMENTS * INT64_BYTES / MIB
    if not compact:
        return f"indices {int64_mib:.1f} MiB int64"
    uint8_mib = _POOLED_ELEMENTS * UINT8_BYTES / MIB
    return f"indices {uint8_mib:.1f} MiB uint8 (int64: {int64_mib:.1f} MiB)"


def _pooling_check(ours_indices: torch.Tensor, reference_indices: torch.Tensor, compact: bool) -> None:
    if compact:
        if ours_indices.dtype != torch.uint8:
            raise CheckFailed(f"indices: dtype {ours_indices.dtype}, expected torch.uint8 for compact=True")
        ours_indices = compact_to_flat_indices(ours_indices, _UNPOOL_SHAPE[3], _UNPOOL_KERNEL, _UNPOOL_STRIDE)
    assert_exactly_equal("indices (as flat)" if compact else "indices", ours_indices, reference_indices)


def _register_pool_forward(compact: bool) -> None:
    def ours(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        return library().max_pool2d_with_indices(inputs["x"], _UNPOOL_KERNEL, _UNPOOL_STRIDE, compact=compact)

    def reference(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        return F.max_pool2d(inputs["x"], _UNPOOL_KERNEL, _UNPOOL_STRIDE, return_indices=True)

    def check(ours_result: Any, reference_result: Any, inputs: Inputs) -> float:
        error = assert_exactly_equal("values", ours_result[0], reference_result[0])
        _pooling_check(ours_result[1], reference_result[1], compact)
        return error

    register(
        Workload(
            family="unpool",
            op="max_pool2d_with_indices",
            variant="compact uint8" if compact else "flat int64",
            description=_UNPOOL_DESCRIPTION,
            mode=MODE_FORWARD,
            setup=lambda device: _pool_inputs(device, with_grad=False),
            ours=ours,
            reference=reference,
            check=check,
            ours_label=f"max_pool2d_with_indices(x, 2, 2, compact={compact})",
            reference_label="F.max_pool2d(x, 2, 2, return_indices=True)",
            bytes_moved=_pool_forward_bytes(_index_bytes(compact)),
            reference_bytes_moved=_pool_forward_bytes(INT64_BYTES),
            exact=True,
            notes=_index_memory_note(compact),
        )
    )


def _register_pool_forward_backward(compact: bool) -> None:
    def ours(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = inputs["x"]
        values, indices = library().max_pool2d_with_indices(x, _UNPOOL_KERNEL, _UNPOOL_STRIDE, compact=compact)
        (grad_x,) = torch.autograd.grad(values, x, inputs["grad_values"])
        return values, indices, grad_x

    def reference(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = inputs["x"]
        values, indices = F.max_pool2d(x, _UNPOOL_KERNEL, _UNPOOL_STRIDE, return_indices=True)
        (grad_x,) = torch.autograd.grad(values, x, inputs["grad_values"])
        return values, indices, grad_x

    def check(ours_result: Any, reference_result: Any, inputs: Inputs) -> float:
        error = assert_exactly_equal("values", ours_result[0].detach(), reference_result[0].detach())
        _pooling_check(ours_result[1], reference_result[1], compact)
        # Windows do not overlap, so each grad_x element receives at most one term: exact.
        return max(error, assert_exactly_equal("grad_x", ours_result[2], reference_result[2]))

    index_bytes = _index_bytes(compact)
    register(
        Workload(
            family="unpool",
            op="max_pool2d_with_indices",
            variant="compact uint8" if compact else "flat int64",
            description=_UNPOOL_DESCRIPTION,
            mode=MODE_AUTOGRAD_GRAD,
            setup=lambda device: _pool_inputs(device, with_grad=True),
            ours=ours,
            reference=reference,
            check=check,
            ours_label=f"max_pool2d_with_indices(x, 2, 2, compact={compact}) + grad",
            reference_label="F.max_pool2d(x, 2, 2, return_indices=True) + grad",
            bytes_moved=_pool_forward_bytes(index_bytes) + _pool_backward_bytes(index_bytes),
            reference_bytes_moved=_pool_forward_bytes(INT64_BYTES) + _pool_backward_bytes(INT64_BYTES),
            exact=True,
            notes=_index_memory_note(compact),
        )
    )


def _register_unpool(compact: bool, with_grad: bool) -> None:
    index_key = "compact_indices" if compact else "flat_indices"

    def ours(inputs: Inputs) -> Any:
        pooled = inputs["pooled"]
        out = library().max_unpool2d(pooled, inputs[index_key], _UNPOOL_KERNEL, _UNPOOL_STRIDE)
        if not with_grad:
            return out
        (grad_pooled,) = torch.autograd.grad(out, pooled, inputs["grad_out"])
        return out, grad_pooled

    def reference(inputs: Inputs) -> Any:
        pooled = inputs["pooled"]
        out = F.max_unpool2d(pooled, inputs["flat_indices"], _UNPOOL_KERNEL, _UNPOOL_STRIDE)
        if not with_grad:
            return out
        (grad_pooled,) = torch.autograd.grad(out, pooled, inputs["grad_out"])
        return out, grad_pooled

    def check(ours_result: Any, reference_result: Any, inputs: Inputs) -> float:
        if not with_grad:
            return assert_exactly_equal("output", ours_result, reference_result)
        error = assert_exactly_equal("output", ours_result[0].detach(), reference_result[0].detach())
        return max(error, assert_exactly_equal("grad_pooled", ours_result[1], reference_result[1]))

    index_bytes = _index_bytes(compact)
    forward, backward = _unpool_forward_bytes, _unpool_backward_bytes
    grad_suffix = " + grad" if with_grad else ""
    register(
        Workload(
            family="unpool",
            op="max_unpool2d",
            variant="compact uint8" if compact else "flat int64",
            description=_UNPOOL_DESCRIPTION,
            mode=MODE_AUTOGRAD_GRAD if with_grad else MODE_FORWARD,
            setup=lambda device: _unpool_inputs(device, with_grad=with_grad),
            ours=ours,
            reference=reference,
            check=check,
            ours_label=f"max_unpool2d(pooled, {index_key}, 2, 2)" + grad_suffix,
            reference_label="F.max_unpool2d(pooled, flat_indices, 2, 2)" + grad_suffix,
            bytes_moved=forward(index_bytes) + (backward(index_bytes) if with_grad else 0),
            reference_bytes_moved=forward(INT64_BYTES) + (backward(INT64_BYTES) if with_grad else 0),
            exact=True,
            notes=_index_memory_note(compact),
        )
    )


def _sum_read_bytes(elements: int) -> int:
    # out.sum() reads the output once; its backward is an expanded scalar (no compulsory bytes)
    return FLOAT32_BYTES * elements


def _register_pool_sum_backward(compact: bool) -> None:
    def ours(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = inputs["x"]
        (values, indices), grad = sum_backward(
            x, lambda: library().max_pool2d_with_indices(x, _UNPOOL_KERNEL, _UNPOOL_STRIDE, compact=compact))
        return values, indices, grad

    def reference(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = inputs["x"]
        (values, indices), grad = sum_backward(
            x, lambda: F.max_pool2d(x, _UNPOOL_KERNEL, _UNPOOL_STRIDE, return_indices=True))
        return values, indices, grad

    def check(ours_result: Any, reference_result: Any, inputs: Inputs) -> float:
        error = assert_exactly_equal("values", ours_result[0].detach(), reference_result[0].detach())
        _pooling_check(ours_result[1], reference_result[1], compact)
        return max(error, assert_exactly_equal("x.grad", ours_result[2], reference_result[2]))

    def compulsory_bytes(index_bytes: int) -> int:
        # the backward reads the indices and writes grad_x; the upstream gradient is a scalar
        backward = index_bytes * _POOLED_ELEMENTS + FLOAT32_BYTES * _INPUT_ELEMENTS
        return _pool_forward_bytes(index_bytes) + _sum_read_bytes(_POOLED_ELEMENTS) + backward

    register(
        Workload(
            family="unpool",
            op="max_pool2d_with_indices",
            variant="compact uint8" if compact else "flat int64",
            description=_UNPOOL_DESCRIPTION,
            mode=MODE_BACKWARD,
            setup=lambda device: _pool_inputs(device, with_grad=False, leaf=True),
            ours=ours,
            reference=reference,
            check=check,
            ours_label=f"max_pool2d_with_indices(x, 2, 2, compact={compact})[0].sum().backward()",
            reference_label="F.max_pool2d(x, 2, 2, return_indices=True)[0].sum().backward()",
            bytes_moved=compulsory_bytes(_index_bytes(compact)),
            reference_bytes_moved=compulsory_bytes(INT64_BYTES),
            exact=True,
            notes=_index_memory_note(compact),
        )
    )


def _register_unpool_sum_backward(compact: bool) -> None:
    index_key = "compact_indices" if compact else "flat_indices"

    def ours(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        pooled = inputs["pooled"]
        return sum_backward(
            pooled, lambda: library().max_unpool2d(pooled, inputs[index_key], _UNPOOL_KERNEL, _UNPOOL_STRIDE))

    def reference(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        pooled = inputs["pooled"]
        return sum_backward(pooled, lambda: F.max_unpool2d(pooled, inputs["flat_indices"], _UNPOOL_KERNEL, _UNPOOL_STRIDE))

    def check(ours_result: Any, reference_result: Any, inputs: Inputs) -> float:
        error = assert_exactly_equal("output", ours_result[0].detach(), reference_result[0].detach())
        return max(error, assert_exactly_equal("pooled.grad", ours_result[1], reference_result[1]))

    def compulsory_bytes(index_bytes: int) -> int:
        # the backward reads the indices and writes grad_pooled; the upstream gradient is a scalar
        backward = (index_bytes + FLOAT32_BYTES) * _POOLED_ELEMENTS
        return _unpool_forward_bytes(index_bytes) + _sum_read_bytes(_INPUT_ELEMENTS) + backward

    register(
        Workload(
            family="unpool",
            op="max_unpool2d",
            variant="compact uint8" if compact else "flat int64",
            description=_UNPOOL_DESCRIPTION,
            mode=MODE_BACKWARD,
            setup=lambda device: _unpool_inputs(device, with_grad=False, leaf=True),
            ours=ours,
            reference=reference,
            check=check,
            ours_label=f"max_unpool2d(pooled, {index_key}, 2, 2).sum().backward()",
            reference_label="F.max_unpool2d(pooled, flat_indices, 2, 2).sum().backward()",
            bytes_moved=compulsory_bytes(_index_bytes(compact)),
            reference_bytes_moved=compulsory_bytes(INT64_BYTES),
            exact=True,
            notes=_index_memory_note(compact),
        )
    )


def _register_pool_unpool_pair(compact: bool) -> None:
    def ours(inputs: Inputs) -> torch.Tensor:
        ops = library()
        pooled, indices = ops.max_pool2d_with_indices(inputs["x"], _UNPOOL_KERNEL, _UNPOOL_STRIDE, compact=compact)
        return ops.max_unpool2d(pooled, indices, _UNPOOL_KERNEL, _UNPOOL_STRIDE)

    def reference(inputs: Inputs) -> torch.Tensor:
        pooled, indices = F.max_pool2d(inputs["x"], _UNPOOL_KERNEL, _UNPOOL_STRIDE, return_indices=True)
        return F.max_unpool2d(pooled, indices, _UNPOOL_KERNEL, _UNPOOL_STRIDE)

    def check(ours_result: Any, reference_result: Any, inputs: Inputs) -> float:
        return assert_exactly_equal("unpooled output", ours_result, reference_result)

    index_bytes = _index_bytes(compact)
    register(
        Workload(
            family="unpool",
            op="pool+unpool pair",
            variant="compact uint8" if compact else "flat int64",
            description=_UNPOOL_DESCRIPTION,
            mode=MODE_FORWARD,
            setup=lambda device: _pool_inputs(device, with_grad=False),
            ours=ours,
            reference=reference,
            check=check,
            ours_label=f"max_unpool2d(*max_pool2d_with_indices(x, 2, 2, compact={compact}), 2, 2)",
            reference_label="F.max_unpool2d(*F.max_pool2d(x, 2, 2, return_indices=True), 2, 2)",
            bytes_moved=_pool_forward_bytes(index_bytes) + _unpool_forward_bytes(index_bytes),
            reference_bytes_moved=_pool_forward_bytes(INT64_BYTES) + _unpool_forward_bytes(INT64_BYTES),
            exact=True,
            notes=_index_memory_note(compact),
        )
    )


def _register_unpool_family() -> None:
    # Table order: op by op; forward, then autograd.grad, then .backward(); flat before compact.
    for compact in (False, True):
        _register_pool_forward(compact)
    for compact in (False, True):
        _register_pool_forward_backward(compact)
    for compact in (False, True):
        _register_pool_sum_backward(compact)
    for compact in (False, True):
        _register_unpool(compact, with_grad=False)
    for compact in (False, True):
        _register_unpool(compact, with_grad=True)
    for compact in (False, True):
        _register_unpool_sum_backward(compact)
    for compact in (False, True):
        _register_pool_unpool_pair(compact)


_register_unpool_family()
