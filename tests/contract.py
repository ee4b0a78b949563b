"""The checks every registered op must pass, written once for every family.

The idea of torchvision's ``RoIOpTester``: a family's test file subclasses :class:`OpContract`
once per op (the class name starts with ``Test`` so pytest collects it), names the op and supplies
fresh sample inputs; the contract's test methods, parametrized over ``DEVICES``, then check

* ``test_opcheck``: ``torch.library.opcheck`` on every sample (schema, fake kernel, autograd
  registration, AOT dispatch; the autograd checks only for differentiable ops);
* ``test_compile_fullgraph_matches_eager``: a small function around the op, compiled with
  ``torch.compile(fullgraph=True, backend="aot_eager")``, gives the eager result (and, for a
  differentiable op, the eager gradients);
* ``test_empty_batch``: an empty batch gives empty outputs (or the zero of an empty reduction) of
  the expected shapes, and empty gradients;
* ``test_bad_input``: every bad input raises RuntimeError/ValueError with a message naming the
  argument and leaves the caller's tensors bitwise unchanged;
* ``test_upstream_gradient_layouts``: an upstream gradient in any layout (expanded with stride 0
  as ``out.sum()`` makes it, sliced, narrowed, transposed, channels_last) gives the same gradient
  as the same values stored densely -- through autograd for a differentiable op, and directly for a
  backward op's gradient argument -- and is itself left unchanged.

A family keeps its own tests (values against the float64 references, ties, NaN, dtypes, ...) next
to these; the contract holds only what every op shares.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import pytest
import torch

from conftest import DEVICES, assert_unchanged, expect_error, sync

__all__ = [
    "BadInput",
    "EmptyCase",
    "OpContract",
    "Sample",
    "assert_same_gradient",
    "check_reads_any_upstream_layout",
    "tensors_in",
    "upstream_layouts",
]

#: opcheck's checks for an op without a derivative (its outputs are indices, say).
NON_DIFFERENTIABLE_OPCHECKS = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")


# --------------------------------------------------------------------------------------------
# what a family supplies
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One call of an op: its positional arguments exactly as the schema takes them."""

    args: Tuple[Any, ...]
    name: str = ""

    def __repr__(self) -> str:
        return f"Sample({self.name or describe(self.args)})"


@dataclass
class EmptyCase:
    """A call on an empty batch and the shapes of the op's outputs (one per output)."""

    sample: Sample
    output_shapes: Sequence[Tuple[int, ...]]


@dataclass
class BadInput:
    """A call that must raise RuntimeError/ValueError whose message matches ``match`` (a regex
    naming the culprit argument); every tensor among ``args`` must be left unchanged."""

    name: str
    args: Tuple[Any, ...]
    match: str
    extra_tensors: Sequence[torch.Tensor] = field(default_factory=tuple)


# --------------------------------------------------------------------------------------------
# helpers (also used by the families' own tests)
# --------------------------------------------------------------------------------------------


def describe(args: Sequence[Any]) -> str:
    parts = []
    for a in args:
        if isinstance(a, torch.Tensor):
            layout = "" if a.is_contiguous() else f" strides {tuple(a.stride())}"
            parts.append(f"{str(a.dtype).replace('torch.', '')}{tuple(a.shape)}{layout}")
        else:
            parts.append(repr(a))
    return ", ".join(parts)


def tensors_in(args: Sequence[Any]) -> List[torch.Tensor]:
    """The tensors among ``args`` (also inside lists and tuples)."""
    found: List[torch.Tensor] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            found.append(a)
        elif isinstance(a, (list, tuple)):
            found += tensors_in(a)
    return found


def as_tuple(out: Any) -> Tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@contextlib.contextmanager
def about(what: str) -> Iterator[None]:
    """Name the sample/layout in any failure raised inside."""
    try:
        yield
    except pytest.skip.Exception:
        raise
    except (Exception, pytest.fail.Exception) as error:  # noqa: BLE001 -- re-raised with context
        raise AssertionError(f"{what}: {type(error).__name__}: {error}") from error


def _poison(dtype: torch.dtype) -> float:
    return float("nan") if dtype.is_floating_point else -1


def upstream_layouts(
    shape: Sequence[int], dtype: torch.dtype, device, generator: Optional[torch.Generator] = None
) -> List[Tuple[str, torch.Tensor]]:
    """Upstream gradients of ``shape`` in the layouts autograd hands a backward, with fresh random
    values; compare each against ``t.contiguous()`` (the same values stored densely).

    "dense"; "expanded_ones" (``torch.ones(()).expand``, what ``out.sum().backward()`` sends);
    "expanded_channels" (a (1, C, 1, ...) tensor expanded) and "expanded_batch" (item 0 repeated);
    "sliced" (``big[..., ::2, 1::2]`` of a NaN-filled buffer: a kernel reading a neighbour picks
    up NaN); "narrowed" (channels 1..C of a NaN-filled (N, C + 2, ...) buffer: a storage offset);
    "transposed" (last two dims swapped in memory); "channels_last" (4-D), "channels_last_3d"
    (5-D) or "channels_last_1d" (3-D: (N, L, C) in memory). Layouts a shape cannot have (a 0-d
    tensor is only dense) are left out.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)

    layouts: List[Tuple[str, torch.Tensor]] = [("dense", randn(*shape))]
    if ndim == 0 or 0 in shape:
        return layouts
    layouts.append(("expanded_ones", torch.ones((), dtype=dtype, device=device).expand(shape)))
    if ndim >= 2:
        layouts.append(("expanded_channels", randn(1, shape[1], *([1] * (ndim - 2))).expand(shape)))
        layouts.append(("expanded_batch", randn(1, *shape[1:]).expand(shape)))
    # sliced: every other row (when there are two dims) and every other column, offset by one
    if ndim >= 2:
        big = torch.full((*shape[:-2], 2 * shape[-2], 2 * shape[-1] + 1), _poison(dtype), dtype=dtype, device=device)
        view = big[..., ::2, 1::2]
    else:
        big = torch.full((2 * shape[0] + 1,), _poison(dtype), dtype=dtype, device=device)
        view = big[1::2]
    view.copy_(randn(*shape))
    layouts.append(("sliced", view))
    if ndim >= 2:
        big = torch.full((shape[0], shape[1] + 2, *shape[2:]), _poison(dtype), dtype=dtype, device=device)
        view = big[:, 1 : 1 + shape[1]]
        view.copy_(randn(*shape))
        layouts.append(("narrowed", view))
    if ndim >= 2 and shape[-1] > 1 and shape[-2] > 1:
        layouts.append(("transposed", randn(*shape[:-2], shape[-1], shape[-2]).transpose(-1, -2)))
    if ndim == 4 and shape[1] > 1:
        layouts.append(("channels_last", randn(*shape).contiguous(memory_format=torch.channels_last)))
    if ndim == 5 and shape[1] > 1:
        layouts.append(("channels_last_3d", randn(*shape).contiguous(memory_format=torch.channels_last_3d)))
    if ndim == 3 and shape[1] > 1 and shape[2] > 1:
        layouts.append(("channels_last_1d", randn(shape[0], shape[2], shape[1]).transpose(1, 2)))
    for name, t in layouts:
        assert tuple(t.shape) == shape, (name, tuple(t.shape), shape)
    return layouts


def _storage_owner(t: torch.Tensor) -> torch.Tensor:
    """The tensor whose whole storage a view reads from (its base, poison included)."""
    return t._base if t._base is not None else t


def assert_same_gradient(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """``actual`` equals ``expected``: bit for bit when ``rtol`` is 0, else within ``rtol``
    relative to the largest element (a NaN where ``expected`` has none always fails)."""
    assert tuple(actual.shape) == tuple(expected.shape), f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.detach().cpu(), expected.detach().cpu()
    if rtol == 0:
        torch.testing.assert_close(a, e, rtol=0, atol=0, equal_nan=True)
        return
    a64, e64 = a.double(), e.double()
    scale = float(e64.abs().max()) if e64.numel() else 0.0
    torch.testing.assert_close(a64, e64, rtol=rtol, atol=rtol * scale, equal_nan=True)


def check_reads_any_upstream_layout(
    call: Callable[[torch.Tensor], Any],
    shape: Sequence[int],
    dtype: torch.dtype,
    device,
    rtol: float = 0.0,
    layouts: Optional[Sequence[str]] = None,
) -> None:
    """``call(g)`` for ``g`` in every layout of :func:`upstream_layouts` equals ``call`` of the same
    values made contiguous, and leaves ``g`` (its whole storage) unchanged."""
    for name, strided in upstream_layouts(shape, dtype, device):
        if layouts is not None and name not in layouts:
            continue
        with about(f"upstream gradient {name} {describe([strided])}"):
            owner = _storage_owner(strided)
            before = owner.clone()
            dense = strided.contiguous()
            got = as_tuple(call(strided))
            sync(device)
            expected = as_tuple(call(dense))
            assert_unchanged(before, owner)
            for a, e in zip(got, expected):
                assert_same_gradient(a, e, rtol)


# --------------------------------------------------------------------------------------------
# the contract
# --------------------------------------------------------------------------------------------


def _fresh_args(args: Sequence[Any]) -> Tuple[Any, ...]:
    """Copies of the tensors (same strides and requires_grad), so two runs share nothing."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            overlapping = any(st == 0 and sz > 1 for st, sz in zip(a.stride(), a.shape))
            if overlapping:  # an expanded input: a dense copy (a stride-0 copy cannot be written)
                copy = a.detach().clone(memory_format=torch.contiguous_format)
            else:
                copy = torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=a.device)
                copy.copy_(a.detach())
            if a.requires_grad:
                copy.requires_grad_(True)
            out.append(copy)
        else:
            out.append(a)
    return tuple(out)


def _grad_inputs(args: Sequence[Any]) -> List[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def _assert_outputs_equal(
    actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], tolerance: Callable[[torch.dtype], float]
) -> None:
    assert len(actual) == len(expected), f"{len(actual)} outputs, expected {len(expected)}"
    for k, (a, e) in enumerate(zip(actual, expected)):
        with about(f"output {k}"):
            assert a.dtype == e.dtype and a.device == e.device, f"{a.dtype} on {a.device}, eager {e.dtype} on {e.device}"
            if e.is_floating_point():
                assert_same_gradient(a, e, tolerance(e.dtype))
            else:
                assert torch.equal(a.cpu(), e.cpu()), "integer outputs differ"


class OpContract:
    """Subclass once per op, as ``class TestMyOpContract(OpContract)``, and set:

    * ``op_name``: the op's name under ``torch.ops.pyvision_ops`` (resolved lazily: collection
      works without the compiled extension);
    * ``samples(device)``: a few fresh inputs (float tensors that should get gradients have
      ``requires_grad=True``);
    * ``empty_cases(device)`` and ``bad_inputs(device)``;
    * ``differentiable``: whether autograd is registered (opcheck's autograd checks, the gradient
      checks through autograd);
    * ``upstream_argument``: for a backward op, the index of its upstream-gradient argument;
    * ``rtol`` (or ``tolerance(dtype, device)``): 0 for ops that only move values (bitwise equal),
      else a tight relative tolerance;
    * ``devices``: narrower than ``DEVICES`` for a CPU-only op.
    """

    op_name: str = ""
    differentiable: bool = True
    upstream_argument: Optional[int] = None
    rtol: float = 0.0
    devices: Tuple[str, ...] = ("cpu", "cuda")
    #: How many samples the compile check traces (each new shape or dtype is a recompilation).
    compile_samples: int = 3

    # ---- what a family overrides -------------------------------------------------------------

    def tolerance(self, dtype: torch.dtype, device) -> float:
        """Relative tolerance of results in ``dtype`` on ``device`` (0: bitwise); ``rtol`` unless
        overridden (e.g. where a CUDA kernel adds with atomics, in no fixed order)."""
        return self.rtol

    def samples(self, device) -> List[Sample]:
        raise NotImplementedError

    def empty_cases(self, device) -> List[EmptyCase]:
        return []

    def bad_inputs(self, device) -> List[BadInput]:
        return []

    # ---- plumbing ----------------------------------------------------------------------------

    @property
    def op(self) -> torch._ops.OpOverload:
        return getattr(torch.ops.pyvision_ops, self.op_name).default

    def _check_device(self, device) -> None:
        if torch.device(device).type not in self.devices:
            pytest.skip(f"{self.op_name} runs on {', '.join(self.devices)} only")

    def _samples(self, device) -> List[Sample]:
        samples = self.samples(device)
        assert samples, f"{type(self).__name__} lists no samples"
        return samples

    # ---- the checks ----------------------------------------------------------------------------

    @pytest.mark.parametrize("device", DEVICES)
    def test_opcheck(self, device):
        self._check_device(device)
        for sample in self._samples(device):
            with about(f"{self.op_name}({describe(sample.args)}) [{sample.name}]"):
                if self.differentiable:
                    torch.library.opcheck(self.op, sample.args)
                else:
                    assert not _grad_inputs(sample.args), "a non-differentiable op's sample requires grad"
                    torch.library.opcheck(self.op, sample.args, test_utils=NON_DIFFERENTIABLE_OPCHECKS)

    @pytest.mark.parametrize("device", DEVICES)
    def test_compile_fullgraph_matches_eager(self, device):
        """A small function around the op (the op, then arithmetic on every output) compiles
        without graph breaks and gives the eager outputs and gradients."""
        self._check_device(device)
        op = self.op

        def around_the_op(*args):
            outputs = as_tuple(op(*args))
            return tuple(o * 2.0 + 1.0 if o.is_floating_point() else o + 1 for o in outputs)

        torch._dynamo.reset()
        compiled = torch.compile(around_the_op, backend="aot_eager", fullgraph=True)
        for sample in self._samples(device)[: self.compile_samples]:
            with about(f"compiled {self.op_name}({describe(sample.args)}) [{sample.name}]"):
                eager_args, compiled_args = _fresh_args(sample.args), _fresh_args(sample.args)
                expected = around_the_op(*eager_args)
                got = compiled(*compiled_args)
                sync(device)
                _assert_outputs_equal(got, expected, lambda dtype: self.tolerance(dtype, device))
                inputs = _grad_inputs(eager_args)
                if not (self.differentiable and inputs):
                    continue
                floats = [k for k, e in enumerate(expected) if e.is_floating_point() and e.requires_grad]
                weights = [torch.randn(expected[k].shape, dtype=expected[k].dtype, device=device) for k in floats]
                grads = torch.autograd.grad([expected[k] for k in floats], inputs, weights, allow_unused=True)
                compiled_grads = torch.autograd.grad(
                    [got[k] for k in floats], _grad_inputs(compiled_args), weights, allow_unused=True
                )
                for g, cg in zip(grads, compiled_grads):
                    assert (g is None) == (cg is None), "a gradient is missing on one side"
                    if g is not None:
                        assert_same_gradient(cg, g, self.tolerance(g.dtype, device))

    @pytest.mark.parametrize("device", DEVICES)
    def test_empty_batch(self, device):
        self._check_device(device)
        cases = self.empty_cases(device)
        if not cases:
            pytest.skip(f"{self.op_name} has no empty case")
        for case in cases:
            sample = case.sample
            with about(f"empty {self.op_name}({describe(sample.args)}) [{sample.name}]"):
                outputs = as_tuple(self.op(*sample.args))
                sync(device)
                assert [tuple(o.shape) for o in outputs] == [tuple(s) for s in case.output_shapes], (
                    f"output shapes {[tuple(o.shape) for o in outputs]}, expected {list(case.output_shapes)}"
                )
                for o in outputs:
                    assert o.device.type == torch.device(device).type, f"output on {o.device}"
                    if o.numel() and o.is_floating_point():  # the value of an empty reduction
                        assert bool((o == 0).all()), f"an empty reduction gives {o.tolist()}, not 0"
                inputs = _grad_inputs(sample.args)
                floats = [o for o in outputs if o.is_floating_point() and o.requires_grad]
                if self.differentiable and inputs and floats:
                    grads = torch.autograd.grad([o.sum() for o in floats], inputs, allow_unused=True)
                    for g, x in zip(grads, inputs):
                        assert g is None or tuple(g.shape) == tuple(x.shape), f"gradient {tuple(g.shape)} for {tuple(x.shape)}"

    @pytest.mark.parametrize("device", DEVICES)
    def test_bad_input(self, device):
        self._check_device(device)
        cases = self.bad_inputs(device)
        if not cases:
            pytest.skip(f"{self.op_name} lists no bad inputs")
        failures = []
        for case in cases:  # every case, then one report naming each that failed
            try:
                with about(f"bad input {case.name!r} to {self.op_name}({describe(case.args)})"):
                    tensors = [t.detach() for t in (*tensors_in(case.args), *case.extra_tensors)]
                    expect_error(lambda: self.op(*case.args), tensors, case.match)
            except AssertionError as error:
                failures.append(str(error))
        assert not failures, f"{len(failures)} of {len(cases)} bad inputs mishandled:\n" + "\n".join(failures)

    @pytest.mark.parametrize("device", DEVICES)
    def test_upstream_gradient_layouts(self, device):
        self._check_device(device)
        if self.upstream_argument is None and not self.differentiable:
            pytest.skip(f"{self.op_name} takes and produces no gradient")
        checked = 0
        for sample in self._samples(device):
            if self.upstream_argument is not None:
                checked += self._check_upstream_argument(sample, device)
            if self.differentiable and _grad_inputs(sample.args):
                checked += self._check_autograd_grad_outputs(sample, device)
        assert checked, f"{self.op_name}: no sample had a gradient to check"

    def _check_upstream_argument(self, sample: Sample, device) -> int:
        """The backward op itself, its gradient argument in every layout."""
        position = self.upstream_argument
        grad = sample.args[position]
        if grad.numel() == 0:
            return 0
        args = [a.detach() if isinstance(a, torch.Tensor) else a for a in sample.args]

        def call(g: torch.Tensor):
            return self.op(*args[:position], g, *args[position + 1 :])

        with about(f"{self.op_name} [{sample.name}]"):
            check_reads_any_upstream_layout(call, grad.shape, grad.dtype, device, self.tolerance(grad.dtype, device))
        return 1

    def _check_autograd_grad_outputs(self, sample: Sample, device) -> int:
        """The op under autograd, each differentiable output's gradient in every layout."""
        args = _fresh_args(sample.args)
        inputs = _grad_inputs(args)
        outputs = as_tuple(self.op(*args))
        checked = 0
        for k, out in enumerate(outputs):
            if not (out.is_floating_point() and out.requires_grad) or out.numel() == 0:
                continue

            def call(g: torch.Tensor, out=out):
                return torch.autograd.grad([out], inputs, [g], retain_graph=True, allow_unused=True)

            with about(f"{self.op_name} [{sample.name}] output {k} under autograd"):
                check_reads_any_upstream_layout(
                    lambda g: tuple(x for x in call(g) if x is not None),
                    out.shape, out.dtype, device, self.tolerance(out.dtype, device),
                )
            checked += 1
        return checked
