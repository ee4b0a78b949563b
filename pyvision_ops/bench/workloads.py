"""Benchmark workloads, defined once and shared by the CLI and the pytest-benchmark suites.

A :class:`Workload` is one row of the benchmark table: how to build its inputs, our
implementation, the reference it is compared with, how the two results are compared, and
(for memory-bound ops) how many bytes the op must move at least. Op families register their
workloads into :data:`WORKLOADS` with :func:`register`; the runner (``runner.py``), the CLI
(``python -m pyvision_ops.bench``) and ``bench/test_bench_*.py`` all read that registry, so a
new family (gram, distance, assignment, attention, ...) only adds entries here.

Our operators are imported lazily, inside the callables, so that listing or filtering the
workloads never needs the compiled extension.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "Inputs",
    "CheckFailed",
    "Workload",
    "WORKLOADS",
    "register",
    "all_workloads",
    "select_workloads",
    "assert_exactly_equal",
    "assert_close",
    "compact_to_flat_indices",
    "flat_to_compact_indices",
    "FLOAT32_BYTES",
    "INT64_BYTES",
    "UINT8_BYTES",
]

#: The tensors (and anything else) a workload's callables read, built by ``Workload.setup``.
Inputs = Dict[str, Any]

FLOAT32_BYTES = 4
INT64_BYTES = 8
UINT8_BYTES = 1
_MIB = 1024 * 1024

MODES = ("fwd", "fwd+bwd")


class CheckFailed(AssertionError):
    """Our result and the reference disagree beyond the workload's tolerance.

    Attributes
    ----------
    max_abs_error : float or None
        The largest absolute difference found, when the tensors were comparable.
    """

    def __init__(self, message: str, max_abs_error: Optional[float] = None) -> None:
        super().__init__(message)
        self.max_abs_error = max_abs_error


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmarked comparison: our implementation against a reference on fixed inputs.

    Attributes
    ----------
    family : str
        Op family, as in ``csrc/<family>/`` (``"unpool"``, ``"gram"``, ...).
    op : str
        The operation timed, e.g. ``"max_unpool2d"`` or ``"pool+unpool pair"``.
    variant : str
        What distinguishes this row from the family's other rows, e.g. ``"compact uint8"``.
    description : str
        The inputs in words, e.g. ``"SegNet decoder step x=(8,64,112,112) fp32, 2x2 s2"``.
    mode : str
        ``"fwd"`` or ``"fwd+bwd"`` (forward plus ``torch.autograd.grad`` with a fixed upstream
        gradient, never ``.grad`` accumulation).
    setup : callable(device) -> Inputs
        Builds fresh inputs on ``device`` from a fixed seed (deterministic across runs).
    ours, reference : callable(Inputs) -> result
        The two implementations; each call must do the whole timed work (no caching).
    check : callable(ours_result, reference_result, inputs) -> float
        Returns the max abs error; raises :class:`CheckFailed` when the results disagree.
    ours_label, reference_label : str
        Short code-like names shown in the table and JSON.
    bytes_moved : int, optional
        Compulsory bytes of our implementation (each input read once, each output written
        once); set for memory-bound ops so the runner can report GB/s.
    reference_bytes_moved : int, optional
        The same for the reference when it differs (e.g. int64 instead of uint8 indices);
        defaults to ``bytes_moved``.
    exact : bool
        True when ``check`` demands bit-exact equality (pooling, unpooling).
    notes : str
        Shown in the table's notes column.
    devices : tuple of str
        Device types the workload runs on.
    """

    family: str
    op: str
    variant: str
    description: str
    mode: str
    setup: Callable[[torch.device], Inputs]
    ours: Callable[[Inputs], Any]
    reference: Callable[[Inputs], Any]
    check: Callable[[Any, Any, Inputs], float]
    ours_label: str
    reference_label: str
    bytes_moved: Optional[int] = None
    reference_bytes_moved: Optional[int] = None
    exact: bool = False
    notes: str = ""
    devices: Tuple[str, ...] = ("cpu", "cuda")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Workload {self.op!r}: mode must be one of {MODES}, got {self.mode!r}")

    @property
    def name(self) -> str:
        """Unique, human-readable identifier: ``"<family>: <op> <variant> <mode>"``."""
        return f"{self.family}: {self.op} {self.variant} {self.mode}"

    @property
    def test_id(self) -> str:
        """The name without spaces or colons, for pytest ids and file names."""
        return f"{self.family}-{self.op}-{self.variant}-{self.mode}".replace(" ", "_").replace("+", "_")

    @property
    def effective_reference_bytes_moved(self) -> Optional[int]:
        return self.bytes_moved if self.reference_bytes_moved is None else self.reference_bytes_moved


#: family name -> its workloads, in registration (and table) order.
WORKLOADS: Dict[str, List[Workload]] = {}


def register(workload: Workload) -> Workload:
    """Add ``workload`` to :data:`WORKLOADS` under its family; names must be unique."""
    if any(existing.name == workload.name for existing in all_workloads()):
        raise ValueError(f"a workload named {workload.name!r} is already registered")
    WORKLOADS.setdefault(workload.family, []).append(workload)
    return workload


def all_workloads() -> List[Workload]:
    """Every registered workload, family by family, in registration order."""
    return [workload for family in WORKLOADS.values() for workload in family]


def select_workloads(
    selectors: Optional[Sequence[str]] = None, device: Optional[str] = None
) -> List[Workload]:
    """Workloads matching any selector (a family name, or a substring of the workload name).

    Parameters
    ----------
    selectors : sequence of str, optional
        Case-insensitive; ``None`` or empty selects everything.
    device : str, optional
        Keep only workloads that run on this device type (``"cpu"``, ``"cuda"``).
    """
    chosen = []
    for workload in all_workloads():
        if device is not None and torch.device(device).type not in workload.devices:
            continue
        if selectors:
            name = workload.name.lower()
            if not any(s.lower() == workload.family.lower() or s.lower() in name for s in selectors):
                continue
        chosen.append(workload)
    return chosen


# --------------------------------------------------------------------------------------------
# comparison helpers (shared by every family's check)
# --------------------------------------------------------------------------------------------


def _describe_first_difference(differs: torch.Tensor, ours: torch.Tensor, reference: torch.Tensor) -> str:
    position = tuple(int(i) for i in torch.nonzero(differs)[0].tolist())
    return f"first at {position}: ours {ours[position].item()!r}, reference {reference[position].item()!r}"


def _check_shape_and_dtype(label: str, ours: torch.Tensor, reference: torch.Tensor) -> None:
    if not isinstance(ours, torch.Tensor):
        raise CheckFailed(f"{label}: ours returned {type(ours).__name__}, expected a Tensor")
    if ours.shape != reference.shape:
        raise CheckFailed(f"{label}: shape {tuple(ours.shape)}, reference {tuple(reference.shape)}")
    if ours.dtype != reference.dtype:
        raise CheckFailed(f"{label}: dtype {ours.dtype}, reference {reference.dtype}")
    if ours.device != reference.device:
        raise CheckFailed(f"{label}: device {ours.device}, reference {reference.device}")


def assert_exactly_equal(label: str, ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Demand bit-identical tensors (NaN matches NaN); return the max abs error (0.0).

    Raises
    ------
    CheckFailed
        On a shape, dtype or device mismatch, or any differing element (the message counts
        them and shows the first one).
    """
    _check_shape_and_dtype(label, ours, reference)
    differs = ours != reference
    if ours.is_floating_point():
        differs &= ~(torch.isnan(ours) & torch.isnan(reference))
    mismatches = int(differs.sum())
    if mismatches == 0:
        return 0.0
    if ours.is_floating_point():
        max_abs_error = float((ours.double() - reference.double()).abs().nan_to_num(float("inf")).max())
    else:
        max_abs_error = float((ours.long() - reference.long()).abs().max())
    raise CheckFailed(
        f"{label}: {mismatches} of {ours.numel()} elements differ (max abs diff {max_abs_error:.3g}), "
        + _describe_first_difference(differs, ours, reference),
        max_abs_error,
    )


def assert_close(
    label: str, ours: torch.Tensor, reference: torch.Tensor, *, atol: float, rtol: float
) -> float:
    """Demand ``|ours - reference| <= atol + rtol * |reference|`` everywhere; return max abs error.

    For families whose results are only equal up to rounding (Gram, distances, attention).
    """
    _check_shape_and_dtype(label, ours, reference)
    ours64, reference64 = ours.double(), reference.double()
    error = (ours64 - reference64).abs()
    bad = ~(error <= atol + rtol * reference64.abs())
    bad &= ~(torch.isnan(ours64) & torch.isnan(reference64))
    max_abs_error = float(error.nan_to_num(float("inf")).max()) if error.numel() else 0.0
    mismatches = int(bad.sum())
    if mismatches:
        raise CheckFailed(
            f"{label}: {mismatches} of {ours.numel()} elements outside atol={atol:g}, rtol={rtol:g} "
            f"(max abs error {max_abs_error:.3g}), " + _describe_first_difference(bad, ours, reference),
            max_abs_error,
        )
    return max_abs_error


# --------------------------------------------------------------------------------------------
# index-format conversions (undilated, unpadded windows: what the unpool workloads use)
# --------------------------------------------------------------------------------------------


def _window_origins(
    out_height: int, out_width: int, stride: int, device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each window's top-left input element, shaped to broadcast."""
    rows = torch.arange(out_height, device=device).view(-1, 1) * stride
    cols = torch.arange(out_width, device=device).view(1, -1) * stride
    return rows, cols


def compact_to_flat_indices(compact: torch.Tensor, input_width: int, kernel: int, stride: int) -> torch.Tensor:
    """uint8 window-local indices ``kh * kernel + kw`` -> int64 flat indices into each input plane.

    ``flat = (oh * stride + kh) * input_width + (ow * stride + kw)``, for square windows
    without padding or dilation.
    """
    local = compact.long()
    rows, cols = _window_origins(compact.shape[-2], compact.shape[-1], stride, compact.device)
    return (rows + local // kernel) * input_width + (cols + local % kernel)


def flat_to_compact_indices(flat: torch.Tensor, input_width: int, kernel: int, stride: int) -> torch.Tensor:
    """Inverse of :func:`compact_to_flat_indices`; every index must lie inside its own window."""
    rows, cols = _window_origins(flat.shape[-2], flat.shape[-1], stride, flat.device)
    kh = flat // input_width - rows
    kw = flat % input_width - cols
    if bool(((kh < 0) | (kh >= kernel) | (kw < 0) | (kw >= kernel)).any()):
        raise ValueError("flat indices outside their pooling window cannot be made compact")
    return (kh * kernel + kw).to(torch.uint8)


# --------------------------------------------------------------------------------------------
# family "unpool": max pooling with indices and max unpooling (SegNet decoder step)
# --------------------------------------------------------------------------------------------

_UNPOOL_SHAPE = (8, 64, 112, 112)
_UNPOOL_KERNEL = 2
_UNPOOL_STRIDE = 2
_UNPOOL_DESCRIPTION = "SegNet decoder step x=(8,64,112,112) fp32, 2x2 s2"
_INPUT_ELEMENTS = _UNPOOL_SHAPE[0] * _UNPOOL_SHAPE[1] * _UNPOOL_SHAPE[2] * _UNPOOL_SHAPE[3]  # n_x
_POOLED_ELEMENTS = _INPUT_ELEMENTS // (_UNPOOL_KERNEL * _UNPOOL_KERNEL)  # n_p


@functools.lru_cache(maxsize=None)
def _pyvision_ops() -> Any:
    # Imported on first use so that the registry loads without the compiled extension.
    import pyvision_ops

    return pyvision_ops


def _random(shape: Sequence[int], device: torch.device, seed: int) -> torch.Tensor:
    # Drawn on the CPU from a private generator: the same numbers on every device and run.
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator).to(device)


def _pooled_shape() -> Tuple[int, ...]:
    batch, channels, height, width = _UNPOOL_SHAPE
    return (batch, channels, height // _UNPOOL_STRIDE, width // _UNPOOL_STRIDE)


def _pool_inputs(device: torch.device, with_grad: bool) -> Inputs:
    x = _random(_UNPOOL_SHAPE, device, seed=0)
    inputs: Inputs = {"x": x.requires_grad_(with_grad)}
    if with_grad:
        inputs["grad_values"] = _random(_pooled_shape(), device, seed=1)
    return inputs


def _unpool_inputs(device: torch.device, with_grad: bool) -> Inputs:
    x = _random(_UNPOOL_SHAPE, device, seed=0)
    pooled, flat_indices = F.max_pool2d(x, _UNPOOL_KERNEL, _UNPOOL_STRIDE, return_indices=True)
    # Compact indices are derived from the reference's flat ones (not from our pooling kernel)
    # so an unpooling row measures and checks unpooling alone; the pair rows chain both ops.
    compact_indices = flat_to_compact_indices(flat_indices, _UNPOOL_SHAPE[3], _UNPOOL_KERNEL, _UNPOOL_STRIDE)
    inputs: Inputs = {
        "pooled": pooled.detach().requires_grad_(with_grad),
        "flat_indices": flat_indices,
        "compact_indices": compact_indices,
    }
    if with_grad:
        inputs["grad_out"] = _random(_UNPOOL_SHAPE, device, seed=1)
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
    int64_mib = _POOLED_ELEMENTS * INT64_BYTES / _MIB
    if not compact:
        return f"indices {int64_mib:.1f} MiB int64"
    uint8_mib = _POOLED_ELEMENTS * UINT8_BYTES / _MIB
    return f"indices {uint8_mib:.1f} MiB uint8 (int64: {int64_mib:.1f} MiB)"


def _pooling_check(ours_indices: torch.Tensor, reference_indices: torch.Tensor, compact: bool) -> None:
    if compact:
        if ours_indices.dtype != torch.uint8:
            raise CheckFailed(f"indices: dtype {ours_indices.dtype}, expected torch.uint8 for compact=True")
        ours_indices = compact_to_flat_indices(ours_indices, _UNPOOL_SHAPE[3], _UNPOOL_KERNEL, _UNPOOL_STRIDE)
    assert_exactly_equal("indices (as flat)" if compact else "indices", ours_indices, reference_indices)


def _register_pool_forward(compact: bool) -> None:
    def ours(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        return _pyvision_ops().max_pool2d_with_indices(inputs["x"], _UNPOOL_KERNEL, _UNPOOL_STRIDE, compact=compact)

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
            mode="fwd",
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
        values, indices = _pyvision_ops().max_pool2d_with_indices(x, _UNPOOL_KERNEL, _UNPOOL_STRIDE, compact=compact)
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
            mode="fwd+bwd",
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
        out = _pyvision_ops().max_unpool2d(pooled, inputs[index_key], _UNPOOL_KERNEL, _UNPOOL_STRIDE)
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
            mode="fwd+bwd" if with_grad else "fwd",
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


def _register_pool_unpool_pair(compact: bool) -> None:
    def ours(inputs: Inputs) -> torch.Tensor:
        library = _pyvision_ops()
        pooled, indices = library.max_pool2d_with_indices(inputs["x"], _UNPOOL_KERNEL, _UNPOOL_STRIDE, compact=compact)
        return library.max_unpool2d(pooled, indices, _UNPOOL_KERNEL, _UNPOOL_STRIDE)

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
            mode="fwd",
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
    # Table order: op by op, forward before forward+backward, flat before compact.
    for compact in (False, True):
        _register_pool_forward(compact)
    for compact in (False, True):
        _register_pool_forward_backward(compact)
    for compact in (False, True):
        _register_unpool(compact, with_grad=False)
    for compact in (False, True):
        _register_unpool(compact, with_grad=True)
    for compact in (False, True):
        _register_pool_unpool_pair(compact)


_register_unpool_family()

# Later families register themselves on import (they need the definitions above).
from pyvision_ops.bench import gram_workloads  # noqa: E402,F401
from pyvision_ops.bench import assign_workloads  # noqa: E402,F401
