"""Reliability (issue 14): the bad-input matrix of every public op, visualisation and nn module.

The cases live in ``tests/reliability_cases.py`` (one table, grouped by family; see its
docstring for what a case declares). Each case is one test here: the results of a family are
computed once, in child processes (a crash or a hang fails the case it was running, never this
interpreter), by the module-scoped ``results`` fixture, for the selected cases only.

Cases that expose a real bug of the library are strict xfails (``KNOWN_BUGS``): they fail the
suite as soon as the bug is fixed, so the mark is removed with the fix.

With ``PVO_INPUTS_STATS=FILE`` the counts of ``reliability_cases.summary`` (cases, ok, raised as
expected, crashes, mutated inputs, wrong answers, ...) are written to FILE as one flat JSON dict
(scripts/reliability_report.py reads it for docs/reliability.md).
"""

from __future__ import annotations

import json
import os

import pytest

import pyvision_ops
import reliability_cases as cases
from pyvision_ops import nn as pnn
from pyvision_ops import visualize

#: case name -> reason (strict xfail): the cases that expose a known bug of the library. The bugs
#: this matrix found (mixing a 'meta' tensor with CPU ones, a pooling window of 2**40 taps, the
#: pooled size overflowing int64, a NaN query row, complex images in save_grid) are fixed; their
#: cases now run as ordinary ones.
KNOWN_BUGS: dict = {}

_BY_NAME = {c.name: c for c in cases.CASES}


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest):
    selected = {item.callspec.params["name"] for item in request.session.items
                if item.module is not None and item.module.__name__ == __name__ and hasattr(item, "callspec")
                and "name" in item.callspec.params}
    chosen = [c for c in cases.CASES if c.name in selected] or list(cases.CASES)
    found = cases.run_cases(chosen)
    path = os.environ.get("PVO_INPUTS_STATS")
    if path:
        with open(path, "w") as handle:
            json.dump(cases.summary(found, list(KNOWN_BUGS)), handle)
    return found


def _params():
    return [pytest.param(c.name, id=c.name,
                         marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[c.name])] if c.name in KNOWN_BUGS else [])
            for c in cases.CASES]


@pytest.mark.parametrize("name", _params())
def test_bad_input(name, results) -> None:
    case = _BY_NAME[name]
    result = results[name]
    expected = "ok" if case.expect == "ok" else "raised"
    assert result["status"] == expected, f"[{case.kind}] expected {expected}, got {result['status']}: {result['detail']}"


# --------------------------------------------------------------------------------------------
# the table itself
# --------------------------------------------------------------------------------------------


def test_every_public_op_and_module_has_cases() -> None:
    targets = {c.target for c in cases.CASES}
    ops = {name for name in pyvision_ops.ops.__all__ if name != "TopK"}  # TopK is a result type
    modules = {f"nn.{name}" for name in pnn.__all__}
    functions = {f"visualize.{name}" for name in visualize.__all__ if name[0].islower()}
    missing = sorted((ops | modules | functions) - targets)
    assert not missing, f"no bad-input cases for {missing}"


def test_every_kind_is_tried() -> None:
    assert {c.kind for c in cases.CASES} == set(cases.KINDS)
    assert len(cases.CASES) >= 250


def test_each_op_has_ok_and_raising_cases() -> None:
    """Every public op has at least one valid call checked against its reference and one bad
    call (a table of only one kind would prove nothing about the checks)."""
    for op in (name for name in pyvision_ops.ops.__all__ if name not in ("TopK", "gather_embeddings")):
        expects = {c.expect for c in cases.CASES if c.target == op}
        assert expects == {"ok", "raises"}, (op, expects)


def test_known_bugs_name_existing_cases() -> None:
    assert set(KNOWN_BUGS) <= set(_BY_NAME), sorted(set(KNOWN_BUGS) - set(_BY_NAME))


def test_harness_detects_a_crash_and_a_mutation() -> None:
    """The harness itself: a child killed by a signal is a crash of the case it ran, and a call
    that writes into its input is a mutation (this interpreter survives both)."""
    import torch

    mutate = cases.Case("harness-mutation", "harness", "harness", "valid", "ok",
                        lambda: cases.Call(lambda t: t.add_(1), (torch.zeros(3),), reference=lambda t: t + 1))
    assert cases.evaluate(mutate)["status"] == "mutated"
    found = cases.run_family("harness", cases.HARNESS_CASES)
    assert found["harness-segfault"]["status"] == "crash", found
    # Under `make sanitize`, ASan catches the signal, reports it and exits with code 1.
    detail = found["harness-segfault"]["detail"]
    assert "SIGSEGV" in detail or "AddressSanitizer:DEADLYSIGNAL" in detail, found
