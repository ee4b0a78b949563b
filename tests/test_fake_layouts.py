"""The fake kernels promise the strides the real kernels return, for every input layout.

torch.compile and torch.export plan memory from the fake (meta) kernels of
``pyvision_ops/ops/*.py``; inductor then checks the real outputs with ``assert_size_stride``
only where it generated the surrounding code. Here every compile case of
tests/test_reliability_compile.py (ops, modules, models, the fusion graphs) runs eagerly under
``CrossRefFakeMode``: each call of a ``torch.ops.pyvision_ops`` operator, forward and backward, is
also run on fake tensors and the two results' sizes, strides, dtypes and aliasing must agree. The
floating inputs of rank >= 2 are given in four layouts: as generated, transposed storage of the
last two dims, channels-last (rank 4), and the first two dims swapped.
"""

from __future__ import annotations

from typing import Any, Callable, Set, Tuple

import pytest
import torch
from torch._subclasses.fake_utils import CrossRefFakeMode

import test_reliability_compile as compile_cases


def _relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values, requires_grad as before, in another memory layout."""
    if not t.is_floating_point() or t.dim() < 2:
        return t
    with torch.no_grad():
        if layout == "mT":
            out = t.mT.contiguous().mT
        elif layout == "channels_last":
            if t.dim() != 4:
                return t
            out = t.contiguous(memory_format=torch.channels_last)
        elif layout == "perm01":
            out = t.transpose(0, 1).contiguous().transpose(0, 1)
        else:
            out = t.clone()
    return out.detach().requires_grad_(t.requires_grad)


LAYOUTS = ("as_generated", "mT", "channels_last", "perm01")


def _ours(op) -> bool:
    return getattr(op, "namespace", "") == "pyvision_ops"


def _cross_checked(fn: Callable, args: Tuple[Any, ...], grad: bool) -> Set[str]:
    """Runs fn (and its backward) with this library's operators cross-checked (aten's are
    PyTorch's business); returns the names of the operators checked."""
    checked: Set[str] = set()

    def ignore(op) -> bool:
        if not _ours(op):
            return True
        checked.add(op.name())
        return False

    with CrossRefFakeMode(ignore_op_fn=ignore, check_strides=True, only_check_ops_with_meta=False):
        compile_cases._run(fn, args, grad=grad)
    return checked


ALL = compile_cases.CASES + compile_cases.FUSION_CASES
#: Compile cases of pure PyTorch code (no operator of this library to check).
WITHOUT_OPS = {"perceptual_loss", "nn.PositionalEncoding"}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", ALL, ids=[c.name for c in ALL])
def test_fake_strides_match_real(case, layout: str) -> None:
    if case.seed is not None:
        torch.manual_seed(case.seed)
    generated = case.inputs(0)
    args = tuple(_relayout(a, layout) if isinstance(a, torch.Tensor) else a for a in generated)
    if layout != "as_generated" and all(a is b for a, b in zip(args, generated)):
        pytest.skip(f"no input of {case.name} has a {layout} form")
    checked = _cross_checked(case.fn, args, case.grad)
    if case.name in WITHOUT_OPS:
        assert not checked, f"{case.name} calls {sorted(checked)}: remove it from WITHOUT_OPS"
        return
    assert checked, f"{case.name} called no torch.ops.pyvision_ops operator"


def test_cross_check_catches_a_wrong_fake_stride() -> None:
    """The check itself: a fake kernel that promises contiguous strides where the real kernel
    returns a transposed result is reported."""
    lib = torch.library.Library("pvo_fake_layout_probe", "FRAGMENT")
    lib.define("transposed(Tensor x) -> Tensor")
    lib.impl("transposed", lambda x: x.mT.contiguous().mT.clone(), "CompositeExplicitAutograd")
    try:
        torch.library.register_fake("pvo_fake_layout_probe::transposed", lambda x: torch.empty_like(
            x, memory_format=torch.contiguous_format), lib=lib)
        probe = torch.ops.pvo_fake_layout_probe.transposed
        x = torch.randn(3, 4)
        with pytest.raises(Exception, match="Stride mismatch"):
            with CrossRefFakeMode(ignore_op_fn=lambda op: op.namespace != "pvo_fake_layout_probe",
                                  check_strides=True, only_check_ops_with_meta=False):
                probe(x)
    finally:
        lib._destroy()
