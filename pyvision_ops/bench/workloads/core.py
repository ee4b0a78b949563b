"""The family-independent core of the benchmark registry: :class:`Workload`, the registry and helpers.

A :class:`Workload` is one row of the benchmark table: how to build its inputs, our
implementation, the reference it is compared with, how the two results are compared, and
(for memory-bound ops) how many bytes the op must move at least. Each family module of this
package (``unpool.py``, ``gram.py``, ...) registers its workloads into :data:`WORKLOADS` with
:func:`register`; the package's ``__init__`` declares the families' table order and imports
them. The runner, the CLI (``python -m pyvision_ops.bench``) and ``bench/test_bench.py`` read
the registry through :func:`all_workloads` and :func:`select_workloads`.

Family modules import from this module only (never from each other or from the package), so
there is no import cycle, and the table order never depends on who was imported first.

Our operators are imported lazily, through :func:`library` inside the callables, so that listing
or filtering the workloads never needs the compiled extension.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "Inputs",
    "CheckFailed",
    "Workload",
    "WORKLOADS",
    "MODES",
    "MODE_FORWARD",
    "MODE_AUTOGRAD_GRAD",
    "MODE_BACKWARD",
    "declare_families",
    "families",
    "register",
    "sum_backward",
    "LiveNotes",
    "median_seconds",
    "all_workloads",
    "select_workloads",
    "library",
    "random_normal",
    "assert_exactly_equal",
    "assert_close",
    "compact_to_flat_indices",
    "flat_to_compact_indices",
    "FLOAT32_BYTES",
    "INT64_BYTES",
    "UINT8_BYTES",
    "MIB",
]

#: The tensors (and anything else) a workload's callables read, built by ``Workload.setup``.
Inputs = Dict[str, Any]

FLOAT32_BYTES = 4
INT64_BYTES = 8
UINT8_BYTES = 1
MIB = 1024 * 1024

#: Forward only.
MODE_FORWARD = "fwd"
#: Forward plus ``torch.autograd.grad(out, x, grad_out)`` with a fixed upstream gradient: the
#: backward kernel alone, no ``.grad`` bookkeeping.
MODE_AUTOGRAD_GRAD = "fwd+bwd"
#: Forward plus ``.backward()`` the way users write it: ``out.sum().backward()`` (a scalar loss:
#: ``loss.backward()``) into the leaves' ``.grad``, which each call first sets to None (as
#: ``optimizer.zero_grad(set_to_none=True)``). The upstream gradient is then autograd's own
#: (an expanded scalar for ``sum()``), whatever layout that gives the backward kernel.
MODE_BACKWARD = "fwd+.backward()"
MODES = (MODE_FORWARD, MODE_AUTOGRAD_GRAD, MODE_BACKWARD)


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
        The family module that registers it: an op family as in ``csrc/<family>/``
        (``"unpool"``, ``"gram"``, ``"assign"``) or ``"models"`` (whole training steps).
    op : str
        The operation timed, e.g. ``"max_unpool2d"`` or ``"pool+unpool pair"``.
    variant : str
        What distinguishes this row from the family's other rows, e.g. ``"compact uint8"``.
    description : str
        The inputs in words, e.g. ``"SegNet decoder step x=(8,64,112,112) fp32, 2x2 s2"``.
    mode : str
        One of :data:`MODES`: ``"fwd"``; ``"fwd+bwd"`` (forward plus ``torch.autograd.grad``
        with a fixed upstream gradient, never ``.grad`` accumulation); ``"fwd+.backward()"``
        (forward plus ``out.sum().backward()`` or ``loss.backward()`` into ``.grad``, reset to
        None at the start of each call).
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


#: family name -> its workloads, families in table order (see :func:`declare_families`), each
#: family's workloads in registration order.
WORKLOADS: Dict[str, List[Workload]] = {}

# The declared table order of the families, and every family in the order it first registered:
# undeclared families (a user's own, registered at run time) follow the declared ones in that order.
_DECLARED_ORDER: List[str] = []
_REGISTRATION_ORDER: List[str] = []


def declare_families(names: Sequence[str]) -> None:
    """Fix the table order of the families: ``names`` first, in this order.

    Called once by the package ``__init__`` (which holds the one list of families) before it
    imports the family modules, so the table order never depends on the import order.
    """
    for name in names:
        if name not in _DECLARED_ORDER:
            _DECLARED_ORDER.append(name)
    _reorder()


def _family_rank(name: str) -> Tuple[int, int]:
    if name in _DECLARED_ORDER:
        return (0, _DECLARED_ORDER.index(name))
    return (1, _REGISTRATION_ORDER.index(name))


def _reorder() -> None:
    # WORKLOADS is a plain dict for its readers: keep its iteration order the table order too.
    ordered = sorted(WORKLOADS, key=_family_rank)
    if ordered != list(WORKLOADS):
        entries = {name: WORKLOADS[name] for name in ordered}
        WORKLOADS.clear()
        WORKLOADS.update(entries)


def families() -> List[str]:
    """Names of the families that have registered workloads, in table order."""
    return [name for name in sorted(WORKLOADS, key=_family_rank) if WORKLOADS[name]]


def register(workload: Workload) -> Workload:
    """Add ``workload`` to :data:`WORKLOADS` under its family; names must be unique."""
    if any(existing.name == workload.name for existing in all_workloads()):
        raise ValueError(f"a workload named {workload.name!r} is already registered")
    if workload.family not in _REGISTRATION_ORDER:
        _REGISTRATION_ORDER.append(workload.family)
    WORKLOADS.setdefault(workload.family, []).append(workload)
    _reorder()
    return workload


def all_workloads() -> List[Workload]:
    """Every registered workload, family by family in table order, each in registration order."""
    return [workload for name in sorted(WORKLOADS, key=_family_rank) for workload in WORKLOADS[name]]


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
# the library (lazily) and reproducible inputs
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def library() -> Any:
    """The ``pyvision_ops`` package, imported on first use.

    Workload callables reach our ops through this, so that the registry loads (and ``--list``
    works) without the compiled extension.
    """
    import pyvision_ops

    return pyvision_ops


def sum_backward(leaf: torch.Tensor, forward: Callable[[], Any]) -> Tuple[Any, torch.Tensor]:
    """Backward the way users write it (mode ``fwd+.backward()``): ``leaf.grad = None`` (as
    ``zero_grad(set_to_none=True)``), ``out = forward()``, then ``out.sum().backward()`` on the first
    output (a scalar loss is its own sum). Returns ``(out, leaf.grad)``."""
    leaf.grad = None
    out = forward()
    first = out[0] if isinstance(out, tuple) else out
    (first if first.dim() == 0 else first.sum()).backward()
    return out, leaf.grad


class LiveNotes:
    """A row's static notes plus what its check measured.

    :class:`Workload` is frozen and has no column for rates or memory; the report reads
    ``workload.notes`` when it prints, after every check ran, so a check rewrites them here
    (``live.workload`` is set to the registered row).
    """

    def __init__(self, static: str) -> None:
        self.static = static
        self.workload: Optional[Workload] = None
        self.measured: Dict[str, str] = {}

    def set(self, key: str, text: str) -> None:
        self.measured[key] = text
        if self.workload is not None:
            parts = [self.static] + list(self.measured.values())
            object.__setattr__(self.workload, "notes", "; ".join(part for part in parts if part))


def median_seconds(function: Callable[[], Any], device: torch.device, calls: int) -> float:
    """Median wall time of ``calls`` calls, synchronising CUDA around each."""
    samples = []
    for _ in range(calls):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def random_normal(
    shape: Sequence[int], device: torch.device, seed: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normal numbers from a private generator seeded with ``seed``, moved to ``device``.

    Drawn on the CPU, so every device and every run gets the same numbers, and the global RNG is
    left alone.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device)


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
