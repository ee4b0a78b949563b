"""Bad-input matrix of issue 14: the case table, the evaluation of one case, and the child runner.

Every public op (``pyvision_ops.ops.__all__``), the tensor-taking functions of
``pyvision_ops.visualize`` and every ``pyvision_ops.nn`` module get cases of the kinds in
``KINDS``. A case declares what must happen:

* ``"ok"``: the result equals an independent reference (torch's own op, SciPy or
  ``tests/references``, in float64 on contiguous clones of the inputs);
* ``"raises"``: an exception of a declared type whose message matches ``match`` (a regex naming
  the offending argument).

Either way every tensor the caller passed (its whole storage, byte for byte) and every parameter
of a module under test must be unchanged afterwards.

The cases of one family run in one child process (``python tests/reliability_cases.py --child
FAMILY``, names on stdin, one JSON line per case on stdout, a ``start`` line before each), so a
case that kills the interpreter or hangs fails as a "crash" of that case; the parent restarts
the child after it for the remaining cases. ``run_cases`` does this for any set of cases (three
children at a time); ``summary`` counts the results; ``python tests/reliability_cases.py
--json`` runs everything and prints the counts.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (HERE, ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import pyvision_ops as P  # noqa: E402
from pyvision_ops import nn as pnn  # noqa: E402
from pyvision_ops import visualize  # noqa: E402
from references.distance import (  # noqa: E402
    reference_batch_hard_triplet_loss,
    reference_class_distance_matrix,
    reference_contrastive_loss,
    reference_mine_triplets,
    reference_pairwise_distance,
    reference_triplet_margin_loss,
)
from references.gram import reference_gram_matrix, reference_style_loss  # noqa: E402
from references.unpool import reference_max_pool2d  # noqa: E402

KINDS = (
    "valid", "rank", "dtype", "device", "shape", "kernel", "stride", "padding", "index", "nan_inf",
    "empty", "noncontiguous", "channels_last", "expanded", "overlapping", "overflow", "argument",
)
ERRORS = (RuntimeError, ValueError)
FAMILIES = ("unpool", "gram", "distance", "assign", "attention", "modules", "visualize")
#: Seconds one case may run in the child before it counts as hung (the first also imports torch).
CASE_TIMEOUT_S = 20.0
STARTUP_TIMEOUT_S = 90.0


@dataclass
class Call:
    """fn(*args, **kwargs) on the caller's tensors; reference(*clones, **clones) is the expectation."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    reference: Optional[Callable[..., Any]] = None
    compare: Optional[Callable[[Any, Any], None]] = None
    rtol: Optional[float] = None
    watch: Sequence[torch.Tensor] = ()


@dataclass
class Case:
    name: str
    family: str
    target: str
    kind: str
    expect: str
    setup: Callable[[], Call]
    match: str = ""
    errors: Tuple[type, ...] = ERRORS
    timeout_s: float = CASE_TIMEOUT_S


CASES: List[Case] = []


def add(family: str, target: str, kind: str, what: str, expect: str, setup: Callable[[], Call], match: str = "",
        errors: Tuple[type, ...] = ERRORS, timeout_s: float = CASE_TIMEOUT_S) -> None:
    assert kind in KINDS, kind
    assert expect in ("ok", "raises"), expect
    assert expect == "ok" or match, f"{target}-{what}: a raising case names the argument it expects"
    CASES.append(Case(f"{target}-{what}", family, target, kind, expect, setup, match, errors, timeout_s))


# --------------------------------------------------------------------------------------------
# evaluation of one case
# --------------------------------------------------------------------------------------------


def _tensors(value) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _snapshot(t: torch.Tensor):
    meta = (tuple(t.shape), tuple(t.stride()), t.storage_offset(), t.dtype, t.device)
    if t.device.type == "meta":
        return meta, None
    raw = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage())
    return meta, raw.clone()


def _changed(t: torch.Tensor, snap) -> bool:
    meta, raw = snap
    now, now_raw = _snapshot(t)
    return now != meta or (raw is not None and not torch.equal(now_raw, raw))


def _clone(value):
    """Contiguous detached copies (same dtype and device) of every tensor, structure kept."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone(memory_format=torch.contiguous_format)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_clone(v) for v in value)
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _flatten(value) -> List[Any]:
    if value is None or isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _flatten(value[k])]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flatten(v)]
    return [torch.tensor(value)] if isinstance(value, (int, float, bool)) else []


_RTOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def compare_values(got, expected, rtol: Optional[float] = None) -> None:
    """Same structure, shapes, devices; floats within rtol (relative to the largest finite
    expected value) after rounding the expectation to the result's dtype, NaN and inf where the
    expectation has them; integers and bools exactly."""
    got_list, exp_list = _flatten(got), _flatten(expected)
    assert len(got_list) == len(exp_list), f"{len(got_list)} outputs, expected {len(exp_list)}"
    for k, (g, e) in enumerate(zip(got_list, exp_list)):
        if e is None or g is None:
            assert g is None and e is None, f"output {k}: {type(g).__name__}, expected {type(e).__name__}"
            continue
        assert tuple(g.shape) == tuple(e.shape), f"output {k}: shape {tuple(g.shape)}, expected {tuple(e.shape)}"
        assert g.device == e.device, f"output {k}: device {g.device}, expected {e.device}"
        if g.device.type == "meta":
            continue
        g, e = g.detach().cpu(), e.detach().cpu()
        if e.is_floating_point() or g.is_floating_point():
            assert g.is_floating_point(), f"output {k}: dtype {g.dtype}, expected floating"
            tol = _RTOL.get(g.dtype, 1e-5) if rtol is None else rtol
            e64 = e.to(g.dtype).double()
            finite = e64[torch.isfinite(e64)]
            scale = max(float(finite.abs().max()), 1.0) if finite.numel() else 1.0
            torch.testing.assert_close(g.double(), e64, rtol=tol, atol=tol * scale, equal_nan=True,
                                       msg=lambda m: f"output {k}: {m}")
        else:
            assert torch.equal(g.long(), e.long()), f"output {k}: integer values differ: {g.tolist()} vs {e.tolist()}"


def evaluate(case: Case) -> Dict[str, Any]:
    """Run one case in this process; {"name", "status", "detail"}. Statuses: "ok", "raised" (as
    expected), "wrong answer", "unexpected error", "no error", "unclear error", "mutated",
    "broken case" (the case itself failed to build)."""
    torch.manual_seed(zlib.crc32(case.name.encode()))
    try:
        call = case.setup()
    except Exception as error:  # noqa: BLE001 -- reported as a broken case
        return {"name": case.name, "status": "broken case", "detail": f"setup: {type(error).__name__}: {error}"}
    watched = _tensors(call.args) + _tensors(call.kwargs) + list(call.watch)
    snaps = [_snapshot(t) for t in watched]
    ref_args, ref_kwargs = _clone(call.args), _clone(call.kwargs)
    out, error = None, None
    try:
        out = call.fn(*call.args, **call.kwargs)
    except Exception as caught:  # noqa: BLE001 -- judged below
        error = caught
    mutated = [i for i, (t, s) in enumerate(zip(watched, snaps)) if _changed(t, s)]
    message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:400] if error else ""
    if case.expect == "raises":
        if error is None:
            status, detail = "no error", "returned instead of raising"
        elif not isinstance(error, case.errors) or not re.search(case.match, str(error)):
            status = "unclear error"
            detail = f"expected {'/'.join(e.__name__ for e in case.errors)} matching {case.match!r}, got {message}"
        else:
            status, detail = "raised", message
    elif error is not None:
        status, detail = "unexpected error", message
    else:
        try:
            expected = call.reference(*ref_args, **ref_kwargs)
            (call.compare or (lambda g, e: compare_values(g, e, call.rtol)))(out, expected)
            status, detail = "ok", ""
        except AssertionError as mismatch:
            status, detail = "wrong answer", str(mismatch)[:600]
        except Exception as failure:  # noqa: BLE001 -- the reference itself failed
            status, detail = "broken case", f"reference: {type(failure).__name__}: {failure}"[:600]
    if mutated:
        detail = f"inputs {mutated} of {len(watched)} changed (case otherwise {status}: {detail})"
        status = "mutated"
    return {"name": case.name, "status": status, "detail": detail}


# --------------------------------------------------------------------------------------------
# children
# --------------------------------------------------------------------------------------------


def _child_main(family: str) -> None:
    # Several children share the CPUs: one intra-op thread each, no oversubscription.
    torch.set_num_threads(1)
    names = json.loads(sys.stdin.read())
    by_name = {c.name: c for c in CASES + HARNESS_CASES}
    for name in names:
        print(json.dumps({"start": name}), flush=True)
        print(json.dumps(evaluate(by_name[name])), flush=True)


def _reader(stream, lines: "queue.Queue") -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def run_family(family: str, cases: Sequence[Case]) -> Dict[str, Dict[str, Any]]:
    """Results of ``cases`` (all of ``family``) from child processes; a case during which the child
    died or hung is a "crash"; the child is restarted for the cases after it."""
    results: Dict[str, Dict[str, Any]] = {}
    # Cases given a short timeout (known to hang) go last: killing the child then costs no restart.
    remaining = sorted(cases, key=lambda c: c.timeout_s < CASE_TIMEOUT_S)
    timeouts = {c.name: c.timeout_s for c in cases}
    while remaining:
        proc = subprocess.Popen(
            [sys.executable, "-u", os.path.abspath(__file__), "--child", family],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        proc.stdin.write(json.dumps([c.name for c in remaining]))
        proc.stdin.close()
        lines: "queue.Queue" = queue.Queue()
        threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
        stderr_tail: List[str] = []
        threading.Thread(target=lambda: stderr_tail.extend(proc.stderr.read().splitlines()[-5:]), daemon=True).start()
        current, wait = None, STARTUP_TIMEOUT_S
        hung = False
        while True:
            try:
                line = lines.get(timeout=wait)
            except queue.Empty:
                hung = True
                break
            if line is None:
                break
            record = json.loads(line)
            if "start" in record:
                current = record["start"]
                wait = timeouts[current]
            else:
                results[record["name"]] = record
                current, wait = None, CASE_TIMEOUT_S
        if hung:
            proc.kill()
        code = proc.wait()
        if current is None:
            if hung or code != 0 or any(c.name not in results for c in remaining):
                reason = "hung" if hung else f"exit code {code}"
                for c in remaining:
                    results.setdefault(c.name, {"name": c.name, "status": "crash",
                                                "detail": f"child {reason} outside a case: {' | '.join(stderr_tail)}"})
            break
        if hung:
            reason = f"timed out after {timeouts[current]:.0f} s"
        elif code < 0:
            reason = f"killed by signal {signal.Signals(-code).name}"
        else:
            reason = f"interpreter exited with code {code}: {' | '.join(stderr_tail)}"
        results[current] = {"name": current, "status": "crash", "detail": reason}
        remaining = [c for c in remaining if c.name not in results]
    return results


def run_cases(cases: Sequence[Case], workers: int = 3) -> Dict[str, Dict[str, Any]]:
    by_family: Dict[str, List[Case]] = {}
    for c in cases:
        by_family.setdefault(c.family, []).append(c)
    results: Dict[str, Dict[str, Any]] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(lambda item: run_family(*item), sorted(by_family.items(), key=lambda kv: -len(kv[1]))):
            results.update(part)
    return results


def summary(results: Dict[str, Dict[str, Any]], known_bugs: Sequence[str] = ()) -> Dict[str, int]:
    statuses = [r["status"] for r in results.values()]
    return {
        "cases": len(statuses),
        "ok": statuses.count("ok"),
        "raised as expected": statuses.count("raised"),
        "crashes": statuses.count("crash"),
        "mutated inputs": statuses.count("mutated"),
        "wrong answers": sum(statuses.count(s) for s in ("wrong answer", "unexpected error", "no error")),
        "unclear errors": statuses.count("unclear error"),
        "broken cases": statuses.count("broken case"),
        "known bugs (strict xfail)": sum(1 for name in known_bugs if name in results),
    }


# --------------------------------------------------------------------------------------------
# layouts of the same values
# --------------------------------------------------------------------------------------------


def randn(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64).to(dtype)


def transposed(t: torch.Tensor) -> torch.Tensor:
    """t's values with the last two dims swapped in memory (non-contiguous)."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def sliced(t: torch.Tensor) -> torch.Tensor:
    """t's values as every other column of a NaN-filled buffer (a kernel reading a neighbour picks up NaN)."""
    big = torch.full((*t.shape[:-1], 2 * t.shape[-1] + 1), float("nan") if t.is_floating_point() else -1,
                     dtype=t.dtype)
    view = big[..., 1::2]
    view.copy_(t)
    return view


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)


def expanded(shape, dim: int, dtype=torch.float32) -> torch.Tensor:
    """Random values of ``shape`` constant along ``dim`` (stride 0)."""
    small = list(shape)
    small[dim] = 1
    return randn(*small, dtype=dtype).expand(*shape)


def overlapping(shape, dtype=torch.float32) -> torch.Tensor:
    """A view whose last two dims overlap in memory: t[..., i, j] = storage[... + i + j]."""
    shape = list(shape)
    strides = [1] * len(shape)
    if len(shape) >= 2:
        step = shape[-2] + shape[-1]
        for d in range(len(shape) - 3, -1, -1):
            strides[d] = step
            step *= shape[d]
    size = 1 + sum((s - 1) * st for s, st in zip(shape, strides))
    return randn(size, dtype=dtype).as_strided(shape, strides)


def with_nan_inf(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    flat = t.view(-1)
    flat[0] = float("nan")
    flat[flat.numel() // 2] = float("inf")
    flat[-1] = float("-inf")
    return t


# ============================================================================================
# family unpool: max_pool2d_with_indices, max_unpool1d/2d/3d
# ============================================================================================


def _pool_call(x, **kw) -> Call:
    return Call(P.max_pool2d_with_indices, (x,), kw,
                reference=lambda x, **k: reference_max_pool2d(x, **k) if x.device.type != "meta"
                else F.max_pool2d(x, k["kernel_size"], return_indices=True))


def _pool_ok(kind, what, make_x, timeout_s=CASE_TIMEOUT_S, **kw):
    kw.setdefault("kernel_size", 2)
    add("unpool", "max_pool2d_with_indices", kind, what, "ok", lambda: _pool_call(make_x(), **kw), timeout_s=timeout_s)


def _pool_bad(kind, what, make_x, match, errors=ERRORS, **kw):
    kw.setdefault("kernel_size", 2)
    add("unpool", "max_pool2d_with_indices", kind, what, "raises", lambda: _pool_call(make_x(), **kw), match, errors)


X4 = (2, 3, 8, 8)
_pool_ok("valid", "float32", lambda: randn(*X4))
_pool_ok("dtype", "float64", lambda: randn(*X4, dtype=torch.float64))
_pool_ok("dtype", "float16", lambda: randn(*X4, dtype=torch.float16))
_pool_ok("dtype", "bfloat16", lambda: randn(*X4, dtype=torch.bfloat16))
_pool_ok("rank", "unbatched", lambda: randn(3, 8, 8))
_pool_ok("empty", "empty-batch", lambda: randn(0, 3, 8, 8))
_pool_ok("noncontiguous", "transposed", lambda: transposed(randn(*X4)))
_pool_ok("noncontiguous", "sliced", lambda: sliced(randn(*X4)))
_pool_ok("channels_last", "channels_last", lambda: channels_last(randn(*X4)))
_pool_ok("expanded", "expanded-batch", lambda: expanded(X4, 0))
_pool_ok("expanded", "expanded-width", lambda: expanded(X4, 3))
_pool_ok("overlapping", "overlapping", lambda: overlapping(X4))
_pool_ok("nan_inf", "nan-inf", lambda: with_nan_inf(randn(*X4)))
_pool_ok("nan_inf", "all-minus-inf", lambda: torch.full(X4, -math.inf))
_pool_ok("padding", "padding-1", lambda: randn(*X4), kernel_size=3, stride=2, padding=1)
_pool_ok("kernel", "dilation-2-ceil", lambda: randn(*X4), kernel_size=3, dilation=2, ceil_mode=True)
_pool_ok("stride", "stride-above-kernel", lambda: randn(*X4), kernel_size=2, stride=5)
_pool_ok("stride", "stride-oversized", lambda: randn(*X4), kernel_size=2, stride=100)
_pool_ok("kernel", "kernel-equals-input", lambda: randn(*X4), kernel_size=8)
_pool_ok("kernel", "kernel-1", lambda: randn(*X4), kernel_size=1)
_pool_ok("kernel", "rectangular", lambda: randn(*X4), kernel_size=(2, 3), stride=(1, 2))
_pool_ok("kernel", "compact", lambda: randn(*X4), kernel_size=3, stride=2, compact=True)
_pool_ok("kernel", "compact-256", lambda: randn(1, 2, 16, 16), kernel_size=16, compact=True)
# kernel 2**40 with padding 2**39 over 8 inputs: 9 windows per dim, each covering the whole input,
# the same windows as kernel 18 with padding 9 (the reference's form: torch's own pooling
# overflows on the huge one).
add("unpool", "max_pool2d_with_indices", "overflow", "huge-kernel-half-padding", "ok",
    lambda: Call(P.max_pool2d_with_indices, (randn(1, 1, 8, 8),), dict(kernel_size=2**40, stride=1, padding=2**39),
                 reference=lambda x, **k: reference_max_pool2d(x, kernel_size=18, stride=1, padding=9)),
    timeout_s=3.0)
_pool_ok("device", "meta", lambda: torch.empty(X4, device="meta"))
_pool_bad("rank", "2d", lambda: randn(8, 8), r"\bx\b")
_pool_bad("rank", "5d", lambda: randn(1, *X4), r"\bx\b")
for _dt in (torch.int64, torch.bool, torch.complex64):
    _pool_bad("dtype", str(_dt).replace("torch.", ""), lambda _dt=_dt: torch.ones(X4, dtype=_dt), r"\bx\b")
_pool_bad("empty", "zero-channels", lambda: randn(2, 0, 8, 8), r"\bx\b")
_pool_bad("empty", "zero-height", lambda: randn(2, 3, 0, 8), r"\bx\b")
_pool_bad("kernel", "kernel-0", lambda: randn(*X4), "kernel_size", kernel_size=0)
_pool_bad("kernel", "kernel-negative", lambda: randn(*X4), "kernel_size", kernel_size=-2)
_pool_bad("kernel", "kernel-3-elements", lambda: randn(*X4), "kernel_size", kernel_size=(2, 2, 2))
_pool_bad("kernel", "kernel-float", lambda: randn(*X4), "kernel_size", (TypeError,), kernel_size=2.0)
_pool_bad("kernel", "kernel-bool", lambda: randn(*X4), "kernel_size", (TypeError,), kernel_size=True)
_pool_bad("kernel", "kernel-oversized", lambda: randn(*X4), "kernel_size", kernel_size=9)
_pool_bad("kernel", "kernel-2pow40", lambda: randn(*X4), "kernel_size", kernel_size=2**40)
_pool_bad("kernel", "compact-over-256", lambda: randn(1, 1, 17, 17), "kernel_size", kernel_size=(17, 16), compact=True)
_pool_bad("stride", "stride-0", lambda: randn(*X4), "stride", stride=0)
_pool_bad("stride", "stride-negative", lambda: randn(*X4), "stride", stride=-1)
_pool_bad("padding", "padding-negative", lambda: randn(*X4), "padding", padding=-1)
_pool_bad("padding", "padding-over-half-kernel", lambda: randn(*X4), "padding", kernel_size=2, padding=2)
_pool_bad("kernel", "dilation-0", lambda: randn(*X4), "dilation", dilation=0)
_pool_bad("overflow", "dilation-times-kernel-overflows", lambda: randn(*X4), "kernel_size|dilation",
          kernel_size=(2**62, 1), stride=1, dilation=(4, 1))
_pool_bad("argument", "x-not-tensor", lambda: [[1.0]], r"\bx\b", (TypeError,))


def _unpool_ref(dims):
    fn = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}[dims]

    def reference(x, indices, kernel_size, stride=None, padding=0, output_size=None):
        if x.device.type == "meta":
            return fn(x, indices.long(), kernel_size, stride, padding, output_size)
        return fn(x.double(), indices.long(), kernel_size, stride, padding, output_size)
    return reference


def _pooled(dims, shape, kernel=2, stride=None, padding=0, dtype=torch.float32):
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
    values, indices = pool(randn(*shape, dtype=torch.float64), kernel, stride, padding, return_indices=True)
    return values.to(dtype), indices


def _unpool_call(dims, x, indices, **kw) -> Call:
    fn = {1: P.max_unpool1d, 2: P.max_unpool2d, 3: P.max_unpool3d}[dims]
    return Call(fn, (x, indices), kw, reference=_unpool_ref(dims))


UNPOOL_SHAPES = {1: (2, 3, 12), 2: (2, 3, 8, 8), 3: (1, 2, 4, 6, 6)}


def _unpool_case(dims, kind, what, expect, make, match="", errors=ERRORS, **kw):
    """make() -> (x, indices) from pooling UNPOOL_SHAPES[dims] with kernel 2."""
    kw.setdefault("kernel_size", 2)

    def setup():
        x, indices = make()
        return _unpool_call(dims, x, indices, **kw)
    add("unpool", f"max_unpool{dims}d", kind, what, expect, setup, match, errors)


for _d in (1, 2, 3):
    _shape = UNPOOL_SHAPES[_d]
    base = (lambda _d=_d, _shape=_shape: _pooled(_d, _shape))
    _unpool_case(_d, "valid", "float32", "ok", base)
    _unpool_case(_d, "dtype", "int32-indices", "ok", lambda base=base: (lambda v, i: (v, i.int()))(*base()))
    _unpool_case(_d, "dtype", "float64", "ok", lambda base=base: (lambda v, i: (v.double(), i))(*base()))
    _unpool_case(_d, "dtype", "bfloat16", "ok", lambda base=base: (lambda v, i: (v.bfloat16(), i))(*base()))
    _unpool_case(_d, "rank", "unbatched", "ok", lambda base=base: (lambda v, i: (v[0], i[0]))(*base()))
    _unpool_case(_d, "empty", "empty-batch", "ok", lambda base=base: (lambda v, i: (v[:0], i[:0]))(*base()))
    _unpool_case(_d, "noncontiguous", "sliced-x", "ok", lambda base=base: (lambda v, i: (sliced(v), i))(*base()))
    _unpool_case(_d, "noncontiguous", "sliced-indices", "ok",
                 lambda base=base: (lambda v, i: (v, sliced(i)))(*base()))
    _unpool_case(_d, "expanded", "expanded-batch", "ok",
                 lambda base=base: (lambda v, i: (v[:1].expand_as(v), i[:1].expand_as(i)))(*base()))
    _unpool_case(_d, "nan_inf", "nan-inf", "ok", lambda base=base: (lambda v, i: (with_nan_inf(v), i))(*base()))
    _unpool_case(_d, "padding", "kernel3-stride2-padding1", "ok",
                 lambda _d=_d, _shape=_shape: _pooled(_d, _shape, 3, 2, 1), kernel_size=3, stride=2, padding=1,
                 output_size=list(_shape[2:]))
    _unpool_case(_d, "device", "meta", "ok",
                 lambda base=base: (lambda v, i: (v.to("meta"), i.to("meta")))(*base()))
    # raises
    _unpool_case(_d, "index", "index-past-plane", "raises",
                 lambda base=base, _d=_d: (lambda v, i: (v, i.index_fill(-1, torch.tensor([0]), 4**_d * 10**3)))(*base()),
                 "indices|index")
    _unpool_case(_d, "index", "index-negative", "raises",
                 lambda base=base: (lambda v, i: (v, i.index_fill(-1, torch.tensor([1]), -1)))(*base()),
                 "indices|index")
    _unpool_case(_d, "index", "int32-index-max", "raises",
                 lambda base=base: (lambda v, i: (v, i.int().index_fill(-1, torch.tensor([0]), 2**31 - 1)))(*base()),
                 "indices|index")
    _unpool_case(_d, "dtype", "float-indices", "raises", lambda base=base: (lambda v, i: (v, i.float()))(*base()),
                 "indices")
    _unpool_case(_d, "dtype", "bool-indices", "raises", lambda base=base: (lambda v, i: (v, i.bool()))(*base()),
                 "indices")
    _unpool_case(_d, "dtype", "int-x", "raises", lambda base=base: (lambda v, i: (v.long(), i))(*base()), r"\bx\b")
    _unpool_case(_d, "dtype", "complex-x", "raises", lambda base=base: (lambda v, i: (v.cfloat(), i))(*base()),
                 r"\bx\b")
    _unpool_case(_d, "shape", "indices-shape-mismatch", "raises",
                 lambda base=base: (lambda v, i: (v, i[..., :-1]))(*base()), "indices")
    _unpool_case(_d, "rank", "rank-too-high", "raises",
                 lambda base=base: (lambda v, i: (v[None, None], i[None, None]))(*base()), r"\bx\b")
    _unpool_case(_d, "kernel", "kernel-0", "raises", base, "kernel_size", kernel_size=0)
    _unpool_case(_d, "stride", "stride-0", "raises", base, "stride", stride=0)
    _unpool_case(_d, "padding", "padding-negative", "raises", base, "padding", padding=-1)
    _unpool_case(_d, "shape", "output-size-wrong-length", "raises", base, "output_size", output_size=[5] * (_d + 1))
    _unpool_case(_d, "shape", "output-size-too-large", "raises", base, "output_size",
                 output_size=[s * 2 + 2 for s in _shape[2:]])
    _unpool_case(_d, "overflow", "output-size-2pow40", "raises", base, "output_size", output_size=[2**40] * _d)
    _unpool_case(_d, "device", "indices-on-meta", "raises",
                 lambda base=base: (lambda v, i: (v, i.to("meta")))(*base()), "indices|device")
    _unpool_case(_d, "device", "x-on-meta", "raises",
                 lambda base=base: (lambda v, i: (v.to("meta"), i))(*base()), "indices|device")
    _unpool_case(_d, "overflow", "kernel-2pow62", "raises",
                 lambda _d=_d: (randn(*([1] * (_d + 2))), torch.zeros([1] * (_d + 2), dtype=torch.long)),
                 "kernel_size|output_size", kernel_size=2**62)
    _unpool_case(_d, "overflow", "output-elements-overflow-int64", "raises",
                 lambda _d=_d: (randn(*([1] * (_d + 2))), torch.zeros([1] * (_d + 2), dtype=torch.long)),
                 "kernel_size|output_size|overflow", kernel_size=2 ** (64 // _d + 1) if _d > 1 else 2**62)

# 2-D only: compact indices, channels_last, transposed, overlapping, output_size forms
def _compact_setup():
    x = randn(*X4)
    v, ic = P.max_pool2d_with_indices(x, 2, compact=True)
    _, flat = F.max_pool2d(x, 2, return_indices=True)
    return Call(P.max_unpool2d, (v, ic, 2), reference=lambda v, ic, k: F.max_unpool2d(v.double(), flat, k))


add("unpool", "max_unpool2d", "dtype", "compact-indices", "ok", _compact_setup)
_base2 = lambda: _pooled(2, X4)  # noqa: E731
_unpool_case(2, "channels_last", "channels_last-x", "ok", lambda: (lambda v, i: (channels_last(v), i))(*_base2()))
_unpool_case(2, "channels_last", "channels_last-both", "ok",
             lambda: (lambda v, i: (channels_last(v), channels_last(i)))(*_base2()))
_unpool_case(2, "noncontiguous", "transposed-both", "ok", lambda: (lambda v, i: (transposed(v), transposed(i)))(*_base2()))
_unpool_case(2, "overlapping", "overlapping-x", "ok", lambda: (overlapping((2, 3, 4, 4)), _base2()[1]))
_unpool_case(2, "shape", "output-size-odd", "ok", lambda: _pooled(2, (2, 3, 9, 9)), output_size=(9, 9))
_unpool_case(2, "shape", "output-size-with-batch-channels", "ok", lambda: _pooled(2, (2, 3, 9, 9)),
             output_size=(2, 3, 9, 9))
_unpool_case(2, "index", "compact-index-past-window", "raises",
             lambda: (lambda v, ic: (v, ic.index_fill(-1, torch.tensor([0]), 4)))(*P.max_pool2d_with_indices(randn(*X4), 2, compact=True)),
             "index")
_unpool_case(2, "overflow", "output-4-terabytes", "raises",
             lambda: (randn(1, 1, 1, 1), torch.zeros(1, 1, 1, 1, dtype=torch.long)),
             "kernel_size|output_size|allocate", kernel_size=2**20)


# nn modules of the family
def _module_call(module, reference_module, *args, **kwargs) -> Call:
    ref = copy.deepcopy(reference_module).double() if reference_module is not None else None

    def reference(*a, **k):
        a = tuple(t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in a)
        return ref(*a, **k)
    return Call(module, args, kwargs, reference=reference, watch=list(module.state_dict().values()))


add("modules", "nn.MaxPool2d", "valid", "return-indices", "ok",
    lambda: _module_call(pnn.MaxPool2d(3, 2, 1, return_indices=True), torch.nn.MaxPool2d(3, 2, 1, return_indices=True),
                         randn(*X4)))
add("modules", "nn.MaxPool2d", "channels_last", "channels_last", "ok",
    lambda: _module_call(pnn.MaxPool2d(2), torch.nn.MaxPool2d(2), channels_last(randn(*X4))))
add("modules", "nn.MaxPool2d", "kernel", "kernel-0", "raises",
    lambda: _module_call(pnn.MaxPool2d(0), None, randn(*X4)), "kernel_size")
add("modules", "nn.MaxPool2d", "rank", "2d-input", "raises",
    lambda: _module_call(pnn.MaxPool2d(2), None, randn(8, 8)), r"\bx\b|input")
for _d, _cls, _ref in ((1, pnn.MaxUnpool1d, torch.nn.MaxUnpool1d), (2, pnn.MaxUnpool2d, torch.nn.MaxUnpool2d),
                       (3, pnn.MaxUnpool3d, torch.nn.MaxUnpool3d)):
    add("modules", f"nn.MaxUnpool{_d}d", "valid", "valid", "ok",
        lambda _d=_d, _cls=_cls, _ref=_ref: (lambda v, i: _module_call(_cls(2), _ref(2), v, i))(*_pooled(_d, UNPOOL_SHAPES[_d])))
    add("modules", f"nn.MaxUnpool{_d}d", "index", "index-out-of-range", "raises",
        lambda _d=_d, _cls=_cls: (lambda v, i: _module_call(_cls(2), None, v, i + 10**4))(*_pooled(_d, UNPOOL_SHAPES[_d])),
        "indices|index")
    add("modules", f"nn.MaxUnpool{_d}d", "shape", "output-size-wrong", "raises",
        lambda _d=_d, _cls=_cls: (lambda v, i: _module_call(_cls(2), None, v, i, output_size=[1] * _d))(*_pooled(_d, UNPOOL_SHAPES[_d])),
        "output_size")


# ============================================================================================
# family gram: gram_matrix, style_loss, perceptual_loss (+ modules)
# ============================================================================================


def _gram_ref(features, normalize=True):
    if features.device.type == "meta":
        return torch.empty((features.shape[0], features.shape[1], features.shape[1]), device="meta")
    if features.shape[0] == 0 or features[0].numel() == 0:
        return reference_gram_matrix(features, False)  # an empty sum: zeros (no 0/0)
    return reference_gram_matrix(features, normalize)


def _gram(kind, what, expect, make, match="", **kw):
    add("gram", "gram_matrix", kind, what, expect, lambda: Call(P.gram_matrix, (make(),), kw, reference=_gram_ref), match)


G4 = (2, 4, 6, 5)
_gram("valid", "4d", "ok", lambda: randn(*G4))
_gram("rank", "3d", "ok", lambda: randn(2, 4, 30))
_gram("valid", "unnormalized", "ok", lambda: randn(*G4), normalize=False)
_gram("dtype", "float64", "ok", lambda: randn(*G4, dtype=torch.float64))
_gram("dtype", "float16", "ok", lambda: randn(*G4, dtype=torch.float16))
_gram("dtype", "bfloat16", "ok", lambda: randn(*G4, dtype=torch.bfloat16))
_gram("noncontiguous", "transposed", "ok", lambda: transposed(randn(*G4)))
_gram("noncontiguous", "sliced", "ok", lambda: sliced(randn(*G4)))
_gram("channels_last", "channels_last", "ok", lambda: channels_last(randn(*G4)))
_gram("expanded", "expanded-channels", "ok", lambda: expanded(G4, 1))
_gram("expanded", "expanded-batch", "ok", lambda: expanded(G4, 0))
_gram("overlapping", "overlapping", "ok", lambda: overlapping(G4))
_gram("empty", "empty-batch", "ok", lambda: randn(0, 4, 6, 5))
_gram("empty", "zero-channels", "ok", lambda: randn(2, 0, 6, 5))
_gram("empty", "zero-spatial", "ok", lambda: randn(2, 4, 0, 5))
_gram("nan_inf", "nan-inf", "ok", lambda: with_nan_inf(randn(*G4)))
_gram("nan_inf", "float32-near-overflow", "ok", lambda: randn(*G4) * 1e18)
_gram("device", "meta", "ok", lambda: torch.empty(G4, device="meta"))
_gram("rank", "2d", "raises", lambda: randn(4, 30), "features")
_gram("rank", "5d", "raises", lambda: randn(1, *G4), "features")
for _dt in (torch.int32, torch.bool, torch.complex64):
    _gram("dtype", str(_dt).replace("torch.", ""), "raises", lambda _dt=_dt: torch.ones(G4, dtype=_dt), "features")
add("gram", "gram_matrix", "argument", "not-a-tensor", "raises", lambda: Call(P.gram_matrix, ([1.0],)), "features",
    (TypeError,))


def _style(kind, what, expect, make, match="", errors=ERRORS, **kw):
    def setup():
        features, target = make()
        return Call(P.style_loss, (features, target), kw, reference=reference_style_loss)
    add("gram", "style_loss", kind, what, expect, setup, match, errors)


_style("valid", "batched-target", "ok", lambda: (randn(*G4), randn(2, 4, 4)))
_style("valid", "shared-target", "ok", lambda: (randn(*G4), randn(4, 4)))
_style("valid", "mean", "ok", lambda: (randn(*G4), randn(1, 4, 4)), reduction="mean")
_style("dtype", "float64-target-float32-features", "ok", lambda: (randn(*G4), randn(4, 4, dtype=torch.float64)))
_style("noncontiguous", "transposed-features", "ok", lambda: (transposed(randn(*G4)), randn(2, 4, 4)))
_style("channels_last", "channels_last-features", "ok", lambda: (channels_last(randn(*G4)), randn(4, 4)))
_style("expanded", "expanded-target", "ok", lambda: (randn(*G4), randn(4, 4).expand(2, 4, 4)))
_style("noncontiguous", "transposed-target", "ok", lambda: (randn(*G4), transposed(randn(2, 4, 4))))
_style("nan_inf", "nan-target", "ok", lambda: (randn(*G4), with_nan_inf(randn(4, 4))))
_style("empty", "empty-batch", "ok", lambda: (randn(0, 4, 6, 5), randn(4, 4)))
_style("shape", "target-channels", "raises", lambda: (randn(*G4), randn(2, 3, 3)), "target_gram")
_style("shape", "target-batch", "raises", lambda: (randn(*G4), randn(3, 4, 4)), "target_gram")
_style("rank", "target-4d", "raises", lambda: (randn(*G4), randn(1, 2, 4, 4)), "target_gram")
_style("dtype", "target-int", "raises", lambda: (randn(*G4), torch.ones(4, 4, dtype=torch.int64)), "target_gram")
_style("device", "target-on-meta", "raises", lambda: (randn(*G4), torch.empty(4, 4, device="meta")),
       "target_gram|device")
_style("argument", "reduction-none", "raises", lambda: (randn(*G4), randn(4, 4)), "reduction", reduction="none")
_style("rank", "features-2d", "raises", lambda: (randn(4, 30), randn(4, 4)), "features")
_style("dtype", "features-int", "raises", lambda: (torch.ones(G4, dtype=torch.int64), randn(4, 4)), "features")

add("gram", "perceptual_loss", "valid", "valid", "ok",
    lambda: Call(P.perceptual_loss, (randn(*G4), randn(*G4)),
                 reference=lambda a, b: (a.double() - b.double()).pow(2).sum() / a[0].numel() / a.shape[0]))
add("gram", "perceptual_loss", "noncontiguous", "transposed", "ok",
    lambda: Call(P.perceptual_loss, (transposed(randn(*G4)), expanded(G4, 0)),
                 reference=lambda a, b: (a.double() - b.double()).pow(2).sum() / a[0].numel() / a.shape[0]))
add("gram", "perceptual_loss", "empty", "empty-batch", "ok",
    lambda: Call(P.perceptual_loss, (randn(0, 4, 3), randn(0, 4, 3)), reference=lambda a, b: torch.zeros(())))
add("gram", "perceptual_loss", "shape", "shape-mismatch", "raises",
    lambda: Call(P.perceptual_loss, (randn(*G4), randn(2, 4, 6, 4))), "features")
add("gram", "perceptual_loss", "rank", "1d", "raises", lambda: Call(P.perceptual_loss, (randn(4), randn(4))), "features")

add("modules", "nn.GramMatrix", "valid", "valid", "ok",
    lambda: Call(pnn.GramMatrix(), (randn(*G4),), reference=reference_gram_matrix))
add("modules", "nn.GramMatrix", "rank", "2d", "raises", lambda: Call(pnn.GramMatrix(), (randn(4, 4),)), "features")


def _style_module(features):
    target = randn(1, 4, 9, 9)
    module = pnn.StyleLoss(target)
    return Call(module, (features,), reference=lambda f: reference_style_loss(f, reference_gram_matrix(target)),
                watch=[module.target_gram, target])


add("modules", "nn.StyleLoss", "valid", "valid", "ok", lambda: _style_module(randn(*G4)))
add("modules", "nn.StyleLoss", "shape", "wrong-channels", "raises", lambda: _style_module(randn(2, 3, 6, 5)),
    "target_gram|channels")


class _TinyFeatures(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return {"conv": self.conv(x)}


def _perceptual_module(a, b, layers=("conv",)):
    extractor = _TinyFeatures()
    module = pnn.PerceptualLoss(extractor, list(layers))
    ref = copy.deepcopy(extractor).double()

    def reference(a, b):
        fa, fb = ref(a.double())["conv"], ref(b.double())["conv"]
        return (fa - fb).pow(2).sum() / fa[0].numel() / fa.shape[0]
    return Call(module, (a, b), reference=reference, watch=list(module.state_dict().values()), rtol=1e-4)


add("modules", "nn.PerceptualLoss", "valid", "valid", "ok", lambda: _perceptual_module(randn(2, 3, 8, 8), randn(2, 3, 8, 8)))
add("modules", "nn.PerceptualLoss", "shape", "shape-mismatch", "raises",
    lambda: _perceptual_module(randn(2, 3, 8, 8), randn(2, 3, 8, 7)), "input|target")
add("modules", "nn.PerceptualLoss", "argument", "missing-layer", "raises",
    lambda: _perceptual_module(randn(2, 3, 8, 8), randn(2, 3, 8, 8), ("relu9",)), "layer", (KeyError,))


# ============================================================================================
# family distance
# ============================================================================================


def _pd_ref(x, y=None, metric="sqeuclidean"):
    if x.device.type == "meta":
        return torch.empty((*x.shape[:-1], (x if y is None else y).shape[-2]), device="meta")
    return reference_pairwise_distance(x, y, metric)


def _pd(kind, what, expect, make, match="", errors=ERRORS, **kw):
    def setup():
        args = make()
        return Call(P.pairwise_distance, args, kw, reference=_pd_ref)
    add("distance", "pairwise_distance", kind, what, expect, setup, match, errors)


for _m in ("sqeuclidean", "euclidean", "cosine", "dot"):
    _pd("valid", f"{_m}", "ok", lambda: (randn(7, 5), randn(9, 5)), metric=_m)
    _pd("noncontiguous", f"{_m}-transposed", "ok", lambda: (transposed(randn(7, 5)), sliced(randn(9, 5))), metric=_m)
    _pd("expanded", f"{_m}-expanded-rows", "ok", lambda: (randn(7, 5), expanded((9, 5), 0)), metric=_m)
    _pd("overlapping", f"{_m}-overlapping", "ok", lambda: (overlapping((7, 5)), randn(9, 5)), metric=_m)
_pd("valid", "self", "ok", lambda: (randn(7, 5),))
_pd("valid", "batched", "ok", lambda: (randn(2, 3, 7, 5), randn(2, 3, 4, 5)), metric="euclidean")
_pd("dtype", "float64", "ok", lambda: (randn(7, 5, dtype=torch.float64), randn(9, 5, dtype=torch.float64)))
_pd("dtype", "float16", "ok", lambda: (randn(7, 5, dtype=torch.float16), randn(9, 5, dtype=torch.float16)))
_pd("dtype", "bfloat16", "ok", lambda: (randn(7, 5, dtype=torch.bfloat16), randn(9, 5, dtype=torch.bfloat16)))
_pd("empty", "empty-x", "ok", lambda: (randn(0, 5), randn(9, 5)))
_pd("empty", "empty-y", "ok", lambda: (randn(7, 5), randn(0, 5)))
_pd("empty", "zero-features", "ok", lambda: (randn(7, 0), randn(9, 0)))
_pd("empty", "empty-batch", "ok", lambda: (randn(0, 7, 5), randn(0, 9, 5)))
_pd("nan_inf", "nan-inf", "ok", lambda: (with_nan_inf(randn(7, 5)), randn(9, 5)), metric="dot")
_pd("device", "meta-both", "ok", lambda: (torch.empty(7, 5, device="meta"), torch.empty(9, 5, device="meta")))
_pd("rank", "1d", "raises", lambda: (randn(5), randn(9, 5)), r"\bx\b")
_pd("rank", "rank-mismatch", "raises", lambda: (randn(2, 7, 5), randn(9, 5)), r"\by\b")
_pd("shape", "feature-mismatch", "raises", lambda: (randn(7, 5), randn(9, 4)), r"\by\b")
_pd("shape", "batch-mismatch", "raises", lambda: (randn(2, 7, 5), randn(3, 9, 5)), r"\by\b")
for _dt in (torch.int64, torch.bool, torch.complex64):
    _pd("dtype", str(_dt).replace("torch.", ""), "raises", lambda _dt=_dt: (torch.ones(7, 5, dtype=_dt),), r"\bx\b")
_pd("dtype", "dtype-mismatch", "raises", lambda: (randn(7, 5), randn(9, 5, dtype=torch.float64)), r"\by\b")
_pd("device", "y-on-meta", "raises", lambda: (randn(7, 5), torch.empty(9, 5, device="meta")), r"\by\b|device")
_pd("device", "x-on-meta", "raises", lambda: (torch.empty(7, 5, device="meta"), randn(9, 5)), r"\by\b|device")
_pd("argument", "metric", "raises", lambda: (randn(7, 5), randn(9, 5)), "metric", metric="manhattan")
_pd("argument", "x-list", "raises", lambda: ([[1.0]],), r"\bx\b", (TypeError,))


def _topk_ref(x, y, k, metric="sqeuclidean", largest=False):
    d = reference_pairwise_distance(x, y, metric)
    values, indices = torch.topk(d, k, dim=-1, largest=largest, sorted=True)
    return values, indices


def _topk(kind, what, expect, make, k=3, match="", errors=ERRORS, **kw):
    add("distance", "pairwise_topk", kind, what, expect,
        lambda: Call(P.pairwise_topk, (*make(), k), kw, reference=_topk_ref), match, errors)


_topk("valid", "valid", "ok", lambda: (randn(6, 5), randn(11, 5)))
_topk("valid", "dot-largest", "ok", lambda: (randn(6, 5), randn(11, 5)), metric="dot", largest=True)
_topk("valid", "k-equals-m", "ok", lambda: (randn(6, 5), randn(11, 5)), k=11)
_topk("noncontiguous", "transposed", "ok", lambda: (transposed(randn(6, 5)), sliced(randn(11, 5))))
_topk("overlapping", "overlapping", "ok", lambda: (randn(6, 5), overlapping((11, 5))), metric="cosine")
_topk("empty", "empty-x", "ok", lambda: (randn(0, 5), randn(11, 5)))
_topk("valid", "batched", "ok", lambda: (randn(2, 6, 5), randn(2, 11, 5)))
_topk("argument", "k-0", "raises", lambda: (randn(6, 5), randn(11, 5)), k=0, match=r"\bk\b")
_topk("argument", "k-negative", "raises", lambda: (randn(6, 5), randn(11, 5)), k=-1, match=r"\bk\b")
_topk("argument", "k-above-m", "raises", lambda: (randn(6, 5), randn(11, 5)), k=12, match=r"\bk\b")
_topk("overflow", "k-2pow40", "raises", lambda: (randn(6, 5), randn(11, 5)), k=2**40, match=r"\bk\b")
_topk("overflow", "k-2pow63", "raises", lambda: (randn(6, 5), randn(11, 5)), k=2**63, match=r"\bk\b",
      errors=(RuntimeError, ValueError, TypeError, OverflowError))
_topk("argument", "k-float", "raises", lambda: (randn(6, 5), randn(11, 5)), k=2.0, match=r"\bk\b", errors=(TypeError,))
_topk("empty", "empty-y", "raises", lambda: (randn(6, 5), randn(0, 5)), k=1, match=r"\bk\b")
_topk("shape", "feature-mismatch", "raises", lambda: (randn(6, 5), randn(11, 4)), match=r"\by\b")
_topk("dtype", "int", "raises", lambda: (torch.ones(6, 5, dtype=torch.long), torch.ones(11, 5, dtype=torch.long)),
      match=r"\bx\b")
_topk("device", "y-on-meta", "raises", lambda: (randn(6, 5), torch.empty(11, 5, device="meta")), match=r"\by\b|device")


def _labels(n=12, classes=3):
    return torch.arange(n) % classes


def _mine_ref(embeddings, labels, strategy="batch_hard", margin=0.2, metric="sqeuclidean", max_triplets=None):
    d = reference_pairwise_distance(embeddings, None, metric)
    a, p, n = reference_mine_triplets(d, labels, strategy, margin, metric == "dot", max_triplets)
    return tuple(torch.tensor(v, dtype=torch.int64) for v in (a, p, n))


def _mine(kind, what, expect, make, match="", errors=ERRORS, **kw):
    add("distance", "mine_triplets", kind, what, expect,
        lambda: Call(P.mine_triplets, make(), kw, reference=_mine_ref), match, errors)


for _s in ("batch_hard", "semi_hard", "semi_hard_window", "hard"):
    _mine("valid", _s, "ok", lambda: (randn(12, 6), _labels()), strategy=_s)
_mine("noncontiguous", "transposed", "ok", lambda: (transposed(randn(12, 6)), sliced(_labels())))
_mine("expanded", "expanded-labels", "ok", lambda: (randn(12, 6), torch.tensor([0, 1]).repeat_interleave(6)))
_mine("empty", "empty", "ok", lambda: (randn(0, 6), _labels(0)))
_mine("empty", "one-class", "ok", lambda: (randn(12, 6), torch.zeros(12, dtype=torch.long)))
_mine("dtype", "int32-labels", "ok", lambda: (randn(12, 6), _labels().int()))
_mine("shape", "labels-length", "raises", lambda: (randn(12, 6), _labels(11)), "labels")
_mine("rank", "labels-2d", "raises", lambda: (randn(12, 6), _labels().view(3, 4)), "labels")
_mine("dtype", "labels-float", "raises", lambda: (randn(12, 6), _labels().float()), "labels")
_mine("rank", "embeddings-1d", "raises", lambda: (randn(12), _labels()), "embeddings")
_mine("dtype", "embeddings-int", "raises", lambda: (torch.ones(12, 6, dtype=torch.long), _labels()), "embeddings")
_mine("nan_inf", "embeddings-nan", "raises", lambda: (with_nan_inf(randn(12, 6)), _labels()), "embeddings")
_mine("argument", "strategy", "raises", lambda: (randn(12, 6), _labels()), "strategy", strategy="easy")
_mine("argument", "margin-nan", "raises", lambda: (randn(12, 6), _labels()), "margin", margin=math.nan)
_mine("argument", "max-triplets-negative", "raises", lambda: (randn(12, 6), _labels()), "max_triplets",
      strategy="hard", max_triplets=-1)
_mine("device", "labels-on-meta", "raises", lambda: (randn(12, 6), _labels().to("meta")), "labels|device")


def _bh(kind, what, expect, make, match="", **kw):
    add("distance", "batch_hard_triplet_loss", kind, what, expect,
        lambda: Call(P.batch_hard_triplet_loss, make(), kw, reference=reference_batch_hard_triplet_loss, rtol=1e-4),
        match)


_bh("valid", "valid", "ok", lambda: (randn(12, 6), _labels()))
_bh("valid", "soft-euclidean", "ok", lambda: (randn(12, 6), _labels()), soft=True, metric="euclidean")
_bh("noncontiguous", "transposed", "ok", lambda: (transposed(randn(12, 6)), _labels()))
_bh("empty", "empty", "ok", lambda: (randn(0, 6), _labels(0)))
_bh("empty", "one-class", "ok", lambda: (randn(12, 6), torch.zeros(12, dtype=torch.long)))
_bh("argument", "metric-dot", "raises", lambda: (randn(12, 6), _labels()), "metric", metric="dot")
_bh("argument", "margin-inf", "raises", lambda: (randn(12, 6), _labels()), "margin", margin=math.inf)
_bh("shape", "labels-length", "raises", lambda: (randn(12, 6), _labels(13)), "labels")
_bh("dtype", "labels-bool", "raises", lambda: (randn(12, 6), _labels() > 0), "labels")


def _tml(kind, what, expect, make, match="", **kw):
    add("distance", "triplet_margin_loss", kind, what, expect,
        lambda: Call(P.triplet_margin_loss, make(), kw, reference=reference_triplet_margin_loss), match)


_T = lambda: (randn(6, 5), randn(6, 5), randn(6, 5))  # noqa: E731
_tml("valid", "valid", "ok", _T)
_tml("valid", "swap-sqeuclidean-none", "ok", _T, swap=True, metric="sqeuclidean", reduction="none")
_tml("valid", "cosine-sum", "ok", _T, metric="cosine", reduction="sum")
_tml("rank", "1d", "ok", lambda: (randn(5), randn(5), randn(5)))
_tml("noncontiguous", "transposed", "ok", lambda: (transposed(randn(6, 5)), sliced(randn(6, 5)), randn(6, 5)))
_tml("expanded", "expanded-negative", "ok", lambda: (randn(6, 5), randn(6, 5), expanded((6, 5), 0)))
_tml("empty", "empty-mean", "ok", lambda: (randn(0, 5), randn(0, 5), randn(0, 5)))
_tml("shape", "positive-shape", "raises", lambda: (randn(6, 5), randn(6, 4), randn(6, 5)), "positive")
_tml("shape", "negative-batch", "raises", lambda: (randn(6, 5), randn(6, 5), randn(5, 5)), "negative")
_tml("rank", "3d", "raises", lambda: (randn(2, 6, 5), randn(2, 6, 5), randn(2, 6, 5)), "anchor")
_tml("dtype", "int", "raises", lambda: tuple(torch.ones(6, 5, dtype=torch.long) for _ in range(3)), "anchor")
_tml("argument", "margin-nan", "raises", _T, "margin", margin=math.nan)
_tml("argument", "reduction", "raises", _T, "reduction", reduction="max")
_tml("device", "negative-on-meta", "raises", lambda: (randn(6, 5), randn(6, 5), torch.empty(6, 5, device="meta")),
     "negative|device")


def _cl(kind, what, expect, make, match="", **kw):
    add("distance", "contrastive_loss", kind, what, expect,
        lambda: Call(P.contrastive_loss, make(), kw, reference=reference_contrastive_loss), match)


_SAME = lambda: torch.tensor([True, False] * 4)  # noqa: E731
_cl("valid", "valid", "ok", lambda: (randn(8, 5), randn(8, 5) * 0.3, _SAME()))
_cl("dtype", "float-same", "ok", lambda: (randn(8, 5), randn(8, 5), _SAME().float()), reduction="none")
_cl("noncontiguous", "transposed", "ok", lambda: (transposed(randn(8, 5)), sliced(randn(8, 5)), _SAME()))
_cl("expanded", "expanded-same", "ok", lambda: (randn(8, 5), randn(8, 5), torch.tensor(True).expand(8)))
_cl("empty", "empty", "ok", lambda: (randn(0, 5), randn(0, 5), _SAME()[:0]))
_cl("shape", "same-length", "raises", lambda: (randn(8, 5), randn(8, 5), _SAME()[:7]), "same")
_cl("shape", "x2-shape", "raises", lambda: (randn(8, 5), randn(8, 4), _SAME()), "x2")
_cl("dtype", "complex-x", "raises", lambda: (randn(8, 5).cfloat(), randn(8, 5).cfloat(), _SAME()), "x1")
_cl("argument", "reduction", "raises", lambda: (randn(8, 5), randn(8, 5), _SAME()), "reduction", reduction="avg")
_cl("device", "same-on-meta", "raises", lambda: (randn(8, 5), randn(8, 5), _SAME().to("meta")), "same|device")


def _cdm(kind, what, expect, make, match=""):
    add("distance", "class_distance_matrix", kind, what, expect,
        lambda: Call(P.class_distance_matrix, make(), reference=reference_class_distance_matrix, rtol=1e-5), match)


_cdm("valid", "valid", "ok", lambda: (randn(12, 6), _labels()))
_cdm("noncontiguous", "transposed", "ok", lambda: (transposed(randn(12, 6)), _labels()[torch.randperm(12)]))
_cdm("empty", "empty", "ok", lambda: (randn(0, 6), _labels(0)))
_cdm("rank", "1d", "raises", lambda: (randn(12), _labels()), "embeddings")
_cdm("shape", "labels-length", "raises", lambda: (randn(12, 6), _labels(10)), "labels")
_cdm("dtype", "labels-float", "raises", lambda: (randn(12, 6), _labels().double()), "labels")
_cdm("device", "labels-on-meta", "raises", lambda: (randn(12, 6), _labels().to("meta")), "labels")

add("distance", "gather_embeddings", "argument", "no-process-group", "raises",
    lambda: Call(P.gather_embeddings, (randn(4, 3), _labels(4))), "process group")
add("distance", "mine_triplets", "argument", "gather-without-process-group", "raises",
    lambda: Call(P.mine_triplets, (randn(4, 3), _labels(4)), {"gather": True}), "gather|process group")


def _triplet_module(embeddings, labels, **kw):
    return Call(lambda e, l: pnn.TripletLoss(**kw)(e, l), (embeddings, labels), reference=lambda e, l: reference_batch_hard_triplet_loss(e, l), rtol=1e-4)


add("modules", "nn.TripletLoss", "valid", "valid", "ok", lambda: _triplet_module(randn(12, 6), _labels()))
add("modules", "nn.TripletLoss", "shape", "labels-length", "raises", lambda: _triplet_module(randn(12, 6), _labels(5)),
    "labels")
add("modules", "nn.TripletLoss", "argument", "strategy", "raises",
    lambda: _triplet_module(randn(12, 6), _labels(), strategy="random"), "strategy")
add("modules", "nn.ContrastiveLoss", "valid", "valid", "ok",
    lambda: Call(pnn.ContrastiveLoss(), (randn(8, 5), randn(8, 5), _SAME()), reference=reference_contrastive_loss))
add("modules", "nn.ContrastiveLoss", "shape", "same-length", "raises",
    lambda: Call(pnn.ContrastiveLoss(), (randn(8, 5), randn(8, 5), _SAME()[:3])), "same")


# ============================================================================================
# family assign: linear_sum_assignment (+ HungarianMatcher, SetCriterion)
# ============================================================================================


def _scipy_check(got, cost, maximize=False):
    """got (rows, cols) is a valid assignment whose total equals SciPy's optimum."""
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    rows, cols = got
    if cost.device.type == "meta":
        k = min(cost.shape[-2], cost.shape[-1])
        assert rows.device.type == "meta" and tuple(rows.shape) == (*cost.shape[:-2], k), (rows.device, rows.shape)
        return
    c = cost.detach().cpu().double()
    batched = c.dim() == 3
    mats = c if batched else c.unsqueeze(0)
    rs, cs = (rows, cols) if batched else (rows.unsqueeze(0), cols.unsqueeze(0))
    assert rows.dtype == torch.int64 and cols.dtype == torch.int64, (rows.dtype, cols.dtype)
    for b in range(mats.shape[0]):
        m = mats[b].numpy()
        er, ec = scipy_lsa(m, maximize=maximize)
        r, cc = rs[b].numpy(), cs[b].numpy()
        assert len(r) == len(er), f"problem {b}: {len(r)} pairs, expected {len(er)}"
        assert list(r) == sorted(set(r)) and len(set(cc)) == len(cc), f"problem {b}: not an assignment {r} {cc}"
        best, total = float(m[er, ec].sum()), float(m[r, cc].sum())
        assert math.isclose(total, best, rel_tol=1e-6, abs_tol=1e-6 * max(1.0, abs(best))), \
            f"problem {b}: total {total}, optimum {best}"


def _lsa(kind, what, expect, make, match="", errors=ERRORS, maximize=False, timeout_s=CASE_TIMEOUT_S):
    def setup():
        cost = make()
        kwargs = {"maximize": True} if maximize else {}
        return Call(P.linear_sum_assignment, (cost,), kwargs, reference=lambda c, **k: c,
                    compare=lambda got, c: _scipy_check(got, c, maximize))
    add("assign", "linear_sum_assignment", kind, what, expect, setup, match, errors, timeout_s)


_lsa("valid", "square", "ok", lambda: torch.rand(6, 6))
_lsa("shape", "wide", "ok", lambda: torch.rand(4, 7))
_lsa("shape", "tall", "ok", lambda: torch.rand(7, 4))
_lsa("valid", "batched", "ok", lambda: torch.rand(3, 5, 6, dtype=torch.float64))
_lsa("valid", "maximize", "ok", lambda: torch.rand(5, 5), maximize=True)
_lsa("dtype", "int64", "ok", lambda: torch.randint(0, 5, (6, 6)))
_lsa("dtype", "float16", "ok", lambda: torch.rand(5, 5).half())
_lsa("dtype", "uint8", "ok", lambda: torch.randint(0, 255, (5, 5), dtype=torch.uint8))
_lsa("noncontiguous", "transposed", "ok", lambda: transposed(torch.rand(5, 7)))
_lsa("noncontiguous", "sliced", "ok", lambda: torch.rand(6, 13)[:, ::2])
_lsa("expanded", "expanded-rows", "ok", lambda: torch.rand(1, 6).expand(5, 6))
_lsa("expanded", "expanded-batch", "ok", lambda: torch.rand(1, 4, 4).expand(3, 4, 4))
_lsa("overlapping", "overlapping", "ok", lambda: overlapping((5, 6)).abs())
_lsa("nan_inf", "forbidden-inf-feasible", "ok", lambda: torch.rand(4, 4).fill_diagonal_(math.inf))
_lsa("nan_inf", "maximize-minus-inf", "ok", lambda: torch.rand(4, 4).fill_diagonal_(-math.inf), maximize=True)
_lsa("nan_inf", "huge-finite-values", "ok",
     lambda: torch.tensor([[1e300, -1e300, 0.0], [-1e300, 1e300, 1.0], [2.0, 3.0, 1e300]], dtype=torch.float64))
_lsa("empty", "zero-by-zero", "ok", lambda: torch.rand(0, 0))
_lsa("empty", "zero-rows", "ok", lambda: torch.rand(0, 5))
_lsa("empty", "zero-columns", "ok", lambda: torch.rand(3, 0))
_lsa("empty", "empty-batch", "ok", lambda: torch.rand(0, 3, 3))
_lsa("valid", "one-by-one", "ok", lambda: torch.rand(1, 1))
_lsa("nan_inf", "nan", "raises", lambda: torch.rand(4, 4).index_fill(0, torch.tensor([1]), math.nan),
     "invalid numeric entries")
_lsa("nan_inf", "minus-inf", "raises", lambda: torch.rand(4, 4).fill_diagonal_(-math.inf), "invalid numeric entries")
_lsa("nan_inf", "plus-inf-maximize", "raises", lambda: torch.rand(4, 4).fill_diagonal_(math.inf),
     "invalid numeric entries", maximize=True)
_lsa("nan_inf", "infeasible", "raises", lambda: torch.rand(3, 3).index_fill(1, torch.tensor([0]), math.inf)
     .index_fill(0, torch.tensor([0, 1]), math.inf), "infeasible")
_lsa("nan_inf", "all-inf", "raises", lambda: torch.full((3, 3), math.inf), "infeasible")
_lsa("rank", "1d", "raises", lambda: torch.rand(5), "cost")
_lsa("rank", "4d", "raises", lambda: torch.rand(2, 2, 3, 3), "cost")
_lsa("dtype", "bool", "raises", lambda: torch.rand(3, 3) > 0.5, "cost", (TypeError,))
_lsa("dtype", "complex", "raises", lambda: torch.rand(3, 3).cfloat(), "cost", (TypeError,))
_lsa("device", "meta", "ok", lambda: torch.empty(4, 5, device="meta"))


def _lsa_list(kind, what, expect, make, match="", errors=ERRORS):
    def setup():
        costs = make()

        def compare(got, costs_ref):
            assert isinstance(got, list) and len(got) == len(costs_ref), f"got {type(got).__name__} of {len(got)}"
            for g, c in zip(got, costs_ref):
                _scipy_check(g, c)
        return Call(P.linear_sum_assignment, (costs,), reference=lambda c: c, compare=compare)
    add("assign", "linear_sum_assignment", kind, what, expect, setup, match, errors)


_lsa_list("valid", "list", "ok", lambda: [torch.rand(3, 5), torch.rand(4, 2), torch.rand(6, 6, dtype=torch.float64)])
_lsa_list("empty", "list-empty", "ok", lambda: [])
_lsa_list("empty", "list-with-empty-matrix", "ok", lambda: [torch.rand(0, 3), torch.rand(2, 2)])
_lsa_list("noncontiguous", "list-transposed", "ok", lambda: [transposed(torch.rand(3, 4)), expanded((3, 3), 0)])
_lsa_list("rank", "list-3d-entry", "raises", lambda: [torch.rand(3, 3), torch.rand(1, 3, 3)], r"cost\[1\]")
_lsa_list("device", "list-meta-entry", "raises", lambda: [torch.rand(3, 3), torch.empty(3, 3, device="meta")],
          r"cost\[1\]")
_lsa_list("nan_inf", "list-nan-entry", "raises", lambda: [torch.rand(3, 3), torch.full((2, 2), math.nan)],
          "invalid numeric entries")
_lsa_list("dtype", "list-bool-entry", "raises", lambda: [torch.rand(3, 3), torch.ones(2, 2, dtype=torch.bool)],
          r"cost\[1\]", (TypeError,))


def _detr_inputs(batch=2, queries=5, classes=3, targets=(2, 3)):
    outputs = {"pred_logits": randn(batch, queries, classes + 1), "pred_boxes": torch.rand(batch, queries, 4) * 0.5 + 0.25}
    tgts = [{"labels": torch.randint(0, classes, (t,)), "boxes": torch.rand(t, 4) * 0.5 + 0.25} for t in targets]
    return outputs, tgts


def _matcher_check(got, inputs):
    from references.assign import reference_cost
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    outputs, targets = inputs
    assert len(got) == len(targets)
    for b, (pred, tgt) in enumerate(got):
        cost = reference_cost(outputs["pred_logits"][b], outputs["pred_boxes"][b], targets[b]["labels"],
                              targets[b]["boxes"]).numpy()
        er, ec = scipy_lsa(cost)
        best, total = float(cost[er, ec].sum()), float(cost[pred.numpy(), tgt.numpy()].sum())
        assert len(pred) == len(er) and math.isclose(total, best, rel_tol=1e-5, abs_tol=1e-5), (b, total, best)


def _matcher(kind, what, expect, mutate=lambda o, t: None, match="", errors=ERRORS):
    def setup():
        outputs, targets = _detr_inputs()
        mutate(outputs, targets)
        return Call(pnn.HungarianMatcher(), (outputs, targets), reference=lambda o, t: (o, t), compare=_matcher_check)
    add("modules", "nn.HungarianMatcher", kind, what, expect, setup, match, errors)


_matcher("valid", "valid", "ok")
_matcher("empty", "image-without-targets", "ok",
         lambda o, t: t[1].update(labels=t[1]["labels"][:0], boxes=t[1]["boxes"][:0]))
_matcher("shape", "targets-count", "raises", lambda o, t: t.pop(), "targets")
_matcher("index", "label-out-of-range", "raises", lambda o, t: t[0]["labels"].fill_(7), "labels")
_matcher("index", "label-negative", "raises", lambda o, t: t[0]["labels"].fill_(-1), "labels")
_matcher("shape", "boxes-shape", "raises", lambda o, t: t[0].update(boxes=torch.rand(2, 3)), "boxes")
_matcher("shape", "pred-boxes-shape", "raises", lambda o, t: o.update(pred_boxes=torch.rand(2, 5, 3)), "pred_boxes")
_matcher("nan_inf", "pred-boxes-nan", "raises", lambda o, t: o["pred_boxes"].view(-1).__setitem__(0, math.nan),
         "pred_boxes")
_matcher("dtype", "labels-float", "raises", lambda o, t: t[0].update(labels=t[0]["labels"].float()), "labels")
_matcher("argument", "missing-key", "raises", lambda o, t: o.pop("pred_boxes"), "pred_boxes", (KeyError,))
_matcher("device", "labels-on-meta", "raises", lambda o, t: t[0].update(labels=t[0]["labels"].to("meta")),
         "device|labels")


def _criterion(kind, what, mutate, match, errors=ERRORS):
    def setup():
        outputs, targets = _detr_inputs()
        mutate(outputs, targets)
        module = pnn.SetCriterion(3, pnn.HungarianMatcher(), {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}, 0.1)
        return Call(module, (outputs, targets), watch=list(module.state_dict().values()))
    add("modules", "nn.SetCriterion", kind, what, "raises", setup, match, errors)


def _criterion_ok():
    from references.assign import reference_set_losses

    outputs, targets = _detr_inputs()
    module = pnn.SetCriterion(3, pnn.HungarianMatcher(), {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}, 0.1)
    indices = [(p.tolist(), t.tolist()) for p, t in pnn.HungarianMatcher()(outputs, targets)]

    def reference(o, t):
        losses = reference_set_losses(o["pred_logits"], o["pred_boxes"], t, indices, 3, 0.1)
        return {k: torch.tensor(float(v)) for k, v in losses.items()}
    return Call(module, (outputs, targets), reference=reference, watch=list(module.state_dict().values()), rtol=1e-5)


add("modules", "nn.SetCriterion", "valid", "valid", "ok", _criterion_ok)
_criterion("shape", "logits-classes", lambda o, t: o.update(pred_logits=randn(2, 5, 6)), "pred_logits")
_criterion("index", "label-out-of-range", lambda o, t: t[1]["labels"].fill_(3), "labels")
_criterion("shape", "targets-count", lambda o, t: t.append(t[0]), "targets")


# ============================================================================================
# family attention: scaled_dot_product_attention (+ transformer modules)
# ============================================================================================


def _sdpa_ref(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if q.device.type == "meta":
        return torch.empty((*q.shape[:-1], v.shape[-1]), device="meta")
    q64, k64, v64 = q.double(), k.double(), v.double()
    mask = attn_mask.double() if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
    if k64.shape[-2] == 0:
        return torch.zeros((*q.shape[:-1], v.shape[-1]), dtype=torch.float64)
    out = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=mask, is_causal=is_causal, scale=scale,
                                         enable_gqa=enable_gqa)
    return out.nan_to_num(nan=0.0) if attn_mask is not None else out  # fully masked rows: 0 by contract


def _sdpa(kind, what, expect, make, match="", errors=ERRORS, **kw):
    def setup():
        q, k, v = make()
        return Call(P.scaled_dot_product_attention, (q, k, v), kw, reference=_sdpa_ref, rtol=1e-4)
    add("attention", "scaled_dot_product_attention", kind, what, expect, setup, match, errors)


_QKV = lambda dtype=torch.float32: (randn(2, 2, 5, 8, dtype=dtype), randn(2, 2, 7, 8, dtype=dtype),  # noqa: E731
                                    randn(2, 2, 7, 6, dtype=dtype))
_sdpa("valid", "valid", "ok", _QKV)
_sdpa("rank", "3d", "ok", lambda: (randn(2, 5, 8), randn(2, 7, 8), randn(2, 7, 6)))
_sdpa("dtype", "float64", "ok", lambda: _QKV(torch.float64))
_sdpa("dtype", "float16", "ok", lambda: _QKV(torch.float16))
_sdpa("dtype", "bfloat16", "ok", lambda: _QKV(torch.bfloat16))
_sdpa("valid", "causal", "ok", lambda: (randn(2, 2, 6, 8), randn(2, 2, 6, 8), randn(2, 2, 6, 8)), is_causal=True)
_sdpa("valid", "bool-mask-broadcast", "ok", _QKV, attn_mask=torch.rand(5, 7) > 0.3)
_sdpa("nan_inf", "fully-masked-row", "ok", _QKV,
      attn_mask=torch.ones(2, 1, 5, 7, dtype=torch.bool).index_fill(2, torch.tensor([1]), False))
_sdpa("nan_inf", "additive-minus-inf-mask", "ok", _QKV,
      attn_mask=torch.zeros(5, 7).index_fill(1, torch.tensor([0, 3]), -math.inf))
_sdpa("valid", "float-mask-scale", "ok", _QKV, attn_mask=randn(2, 2, 5, 7), scale=0.3)
_sdpa("valid", "scale-0", "ok", _QKV, scale=0.0)
_sdpa("valid", "gqa", "ok", lambda: (randn(2, 4, 5, 8), randn(2, 2, 7, 8), randn(2, 2, 7, 6)), enable_gqa=True)
_sdpa("noncontiguous", "heads-interleaved", "ok",
      lambda: tuple(randn(2, n, 2, e).transpose(1, 2) for n, e in ((5, 8), (7, 8), (7, 6))))
_sdpa("noncontiguous", "sliced", "ok", lambda: tuple(sliced(t) for t in _QKV()))
_sdpa("expanded", "expanded-kv", "ok",
      lambda: (randn(2, 2, 5, 8), expanded((2, 2, 7, 8), 1), expanded((2, 2, 7, 6), 0)))
_sdpa("expanded", "expanded-mask", "ok", _QKV, attn_mask=randn(1, 1, 1, 7).expand(2, 2, 5, 7))
_sdpa("overlapping", "overlapping-q", "ok", lambda: (overlapping((2, 2, 5, 8)), *_QKV()[1:]))
_sdpa("empty", "empty-batch", "ok", lambda: tuple(t[:0] for t in _QKV()))
_sdpa("empty", "no-queries", "ok", lambda: (randn(2, 2, 0, 8), *_QKV()[1:]))
_sdpa("empty", "no-keys", "ok", lambda: (randn(2, 2, 5, 8), randn(2, 2, 0, 8), randn(2, 2, 0, 6)))
_sdpa("nan_inf", "nan-query", "ok", lambda: (with_nan_inf(randn(2, 2, 5, 8)), *_QKV()[1:]))
_sdpa("device", "meta", "ok", lambda: tuple(t.to("meta") for t in _QKV()))
_sdpa("rank", "2d", "raises", lambda: (randn(5, 8), randn(7, 8), randn(7, 6)), "query")
_sdpa("rank", "5d", "raises", lambda: tuple(t[None] for t in _QKV()), "query")
_sdpa("rank", "rank-mismatch", "raises", lambda: (randn(2, 2, 5, 8), randn(2, 7, 8), randn(2, 2, 7, 6)), "key")
for _dt in (torch.int64, torch.bool, torch.complex64):
    _sdpa("dtype", str(_dt).replace("torch.", ""), "raises",
          lambda _dt=_dt: tuple(torch.ones(2, 2, 5, 8, dtype=_dt) for _ in range(3)), "query")
_sdpa("dtype", "dtype-mismatch", "raises", lambda: (randn(2, 2, 5, 8), randn(2, 2, 7, 8, dtype=torch.float64),
                                                   randn(2, 2, 7, 6)), "key")
_sdpa("device", "key-on-meta", "raises", lambda: (randn(2, 2, 5, 8), torch.empty(2, 2, 7, 8, device="meta"),
                                                 randn(2, 2, 7, 6)), "key|device")
_sdpa("shape", "head-dim-mismatch", "raises", lambda: (randn(2, 2, 5, 8), randn(2, 2, 7, 4), randn(2, 2, 7, 6)), "key")
_sdpa("shape", "kv-length-mismatch", "raises", lambda: (randn(2, 2, 5, 8), randn(2, 2, 7, 8), randn(2, 2, 6, 6)),
      "value")
_sdpa("shape", "batch-mismatch", "raises", lambda: (randn(3, 2, 5, 8), randn(2, 2, 7, 8), randn(2, 2, 7, 6)), "key|batch")
_sdpa("shape", "heads-without-gqa", "raises", lambda: (randn(2, 4, 5, 8), randn(2, 2, 7, 8), randn(2, 2, 7, 6)),
      "enable_gqa")
_sdpa("shape", "gqa-not-multiple", "raises", lambda: (randn(2, 3, 5, 8), randn(2, 2, 7, 8), randn(2, 2, 7, 6)),
      "head", enable_gqa=True)
_sdpa("overflow", "head-dim-300", "raises", lambda: (randn(1, 1, 3, 300), randn(1, 1, 3, 300), randn(1, 1, 3, 300)),
      "head dim")
_sdpa("shape", "mask-shape", "raises", _QKV, "attn_mask", attn_mask=torch.ones(5, 6, dtype=torch.bool))
_sdpa("dtype", "mask-int", "raises", _QKV, "attn_mask", attn_mask=torch.ones(5, 7, dtype=torch.int64))
_sdpa("device", "mask-on-meta", "raises", _QKV, "attn_mask|device", attn_mask=torch.ones(5, 7, dtype=torch.bool,
                                                                                       device="meta"))
_sdpa("argument", "mask-with-causal", "raises", _QKV, "attn_mask", attn_mask=torch.ones(5, 7, dtype=torch.bool),
      is_causal=True)
_sdpa("argument", "dropout-above-1", "raises", _QKV, "dropout_p", dropout_p=1.5)
_sdpa("argument", "dropout-negative", "raises", _QKV, "dropout_p", dropout_p=-0.1)
_sdpa("argument", "dropout-nan", "raises", _QKV, "dropout_p", dropout_p=math.nan)
_sdpa("argument", "query-list", "raises", lambda: ([[1.0]], *_QKV()[1:]), "query", (TypeError,))


def _mha_pair(**kw):
    ours = pnn.MultiheadAttention(8, 2, batch_first=True, **kw)
    theirs = torch.nn.MultiheadAttention(8, 2, batch_first=True, **kw)
    theirs.load_state_dict(ours.state_dict())
    return ours.eval(), theirs.double().eval()


def _mha(kind, what, expect, make, match="", errors=ERRORS, **kw):
    def setup():
        ours, theirs = _mha_pair()
        q, k, v = make()

        def reference(q, k, v, **k2):
            k2 = {n: (t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t) for n, t in k2.items()}
            return theirs(q.double(), k.double(), v.double(), **k2)
        return Call(ours, (q, k, v), kw, reference=reference, watch=list(ours.state_dict().values()), rtol=1e-4)
    add("modules", "nn.MultiheadAttention", kind, what, expect, setup, match, errors)


_X = lambda: (randn(2, 5, 8), randn(2, 6, 8), randn(2, 6, 8))  # noqa: E731
_mha("valid", "fused", "ok", _X, need_weights=False)
_mha("valid", "with-weights", "ok", _X)
_mha("valid", "key-padding-mask", "ok", _X, need_weights=False,
     key_padding_mask=torch.tensor([[False] * 6, [False] * 4 + [True] * 2]))
_mha("valid", "attn-mask", "ok", _X, need_weights=False, attn_mask=torch.rand(5, 6) > 0.7)
_mha("noncontiguous", "transposed-query", "ok", lambda: (randn(5, 2, 8).transpose(0, 1), *_X()[1:]), need_weights=False)
_mha("rank", "unbatched", "ok", lambda: tuple(t[0] for t in _X()), need_weights=False)
_mha("rank", "4d-query", "raises", lambda: tuple(t[None] for t in _X()), "query")
_mha("shape", "key-features", "raises", lambda: (randn(2, 5, 8), randn(2, 6, 7), randn(2, 6, 8)), "key")
_mha("shape", "value-length", "raises", lambda: (randn(2, 5, 8), randn(2, 6, 8), randn(2, 5, 8)), "value")
_mha("shape", "key-padding-mask-shape", "raises", _X, "key_padding_mask", key_padding_mask=torch.zeros(2, 5).bool())
_mha("shape", "attn-mask-shape", "raises", _X, "attn_mask", attn_mask=torch.zeros(4, 6).bool())
_mha("dtype", "attn-mask-int", "raises", _X, "attn_mask", attn_mask=torch.zeros(5, 6, dtype=torch.int64))


def _pe_ref(x, d_model=8):
    length = x.shape[1]
    position = torch.arange(length, dtype=torch.float64)[:, None]
    i = torch.arange(0, d_model, 2, dtype=torch.float64)
    angle = position / torch.pow(10000.0, i / d_model)
    pe = torch.zeros(length, d_model, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(angle), torch.cos(angle)
    return x.double() + pe


add("modules", "nn.PositionalEncoding", "valid", "valid", "ok",
    lambda: Call(pnn.PositionalEncoding(8, max_len=50), (randn(2, 10, 8),), reference=_pe_ref))
add("modules", "nn.PositionalEncoding", "expanded", "expanded", "ok",
    lambda: Call(pnn.PositionalEncoding(8, max_len=50), (expanded((2, 10, 8), 0),), reference=_pe_ref))
add("modules", "nn.PositionalEncoding", "shape", "too-long", "raises",
    lambda: Call(pnn.PositionalEncoding(8, max_len=5), (randn(2, 10, 8),)), "max_len")
add("modules", "nn.PositionalEncoding", "shape", "features", "raises",
    lambda: Call(pnn.PositionalEncoding(8), (randn(2, 10, 7),)), "input|d_model|8")


def _layer_case(target, ours_cls, theirs_cls, n_inputs, kind, what, expect, make, match="", stack=False):
    def setup():
        kw = dict(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)
        ours_layer, theirs_layer = ours_cls(**kw), theirs_cls(**kw)
        if stack:
            wrap_ours = pnn.TransformerEncoder if "Encoder" in target else pnn.TransformerDecoder
            wrap_theirs = torch.nn.TransformerEncoder if "Encoder" in target else torch.nn.TransformerDecoder
            ours, theirs = wrap_ours(ours_layer, 2), wrap_theirs(theirs_layer, 2, enable_nested_tensor=False) \
                if "Encoder" in target else wrap_theirs(theirs_layer, 2)
        else:
            ours, theirs = ours_layer, theirs_layer
        theirs.load_state_dict(ours.state_dict())
        ours.eval()
        theirs = theirs.double().eval()
        inputs = make()
        return Call(ours, inputs, reference=lambda *a: theirs(*(t.double() for t in a)),
                    watch=list(ours.state_dict().values()), rtol=1e-4)
    add("modules", target, kind, what, expect, setup, match)


for _target, _o, _t, _n, _stack in (
        ("nn.TransformerEncoderLayer", pnn.TransformerEncoderLayer, torch.nn.TransformerEncoderLayer, 1, False),
        ("nn.TransformerEncoder", pnn.TransformerEncoderLayer, torch.nn.TransformerEncoderLayer, 1, True),
        ("nn.TransformerDecoderLayer", pnn.TransformerDecoderLayer, torch.nn.TransformerDecoderLayer, 2, False),
        ("nn.TransformerDecoder", pnn.TransformerDecoderLayer, torch.nn.TransformerDecoderLayer, 2, True)):
    _make = (lambda _n=_n: tuple(randn(2, 5 + j, 8) for j in range(_n)))
    _layer_case(_target, _o, _t, _n, "valid", "valid", "ok", _make, stack=_stack)
    _layer_case(_target, _o, _t, _n, "noncontiguous", "transposed", "ok",
                lambda _n=_n: tuple(randn(5 + j, 2, 8).transpose(0, 1) for j in range(_n)), stack=_stack)
    _layer_case(_target, _o, _t, _n, "shape", "features", "raises",
                lambda _n=_n: tuple(randn(2, 5 + j, 7) for j in range(_n)), r"feature|d_model|embed|shape|size",
                stack=_stack)


# ============================================================================================
# family visualize
# ============================================================================================


class _Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.MaxPool2d(2))
        self.head = torch.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def _vis(target, kind, what, expect, fn, make, match="", errors=ERRORS, reference=None, **kw):
    def setup():
        model = _Classifier()
        args = make()
        ref = None
        if reference is not None:
            ref_model = copy.deepcopy(model).double()
            ref = lambda *a, **k: reference(ref_model, *a, **k)  # noqa: E731
        return Call(lambda *a, **k: fn(model, *a, **k), args, kw, reference=ref,
                    watch=[p for p in model.state_dict().values()], rtol=1e-4)
    add("visualize", f"visualize.{target}", kind, what, expect, setup, match, errors)


def _saliency_ref(model, images, target):
    x = images.double().requires_grad_(True)
    unbatched = x.dim() == 3
    xb = x[None] if unbatched else x
    labels = torch.as_tensor(target).expand(xb.shape[0])
    score = model(xb).gather(1, labels[:, None].long()).sum()
    (grad,) = torch.autograd.grad(score, x)
    out = grad.abs().amax(dim=-3)
    return out


_sal = visualize.saliency_map
_vis("saliency_map", "valid", "valid", "ok", _sal, lambda: (randn(2, 3, 8, 8), 1), reference=_saliency_ref)
_vis("saliency_map", "rank", "unbatched", "ok", _sal, lambda: (randn(3, 8, 8), 4), reference=_saliency_ref)
_vis("saliency_map", "noncontiguous", "transposed", "ok", _sal, lambda: (transposed(randn(2, 3, 8, 8)),
                                                                         torch.tensor([0, 3])), reference=_saliency_ref)
_vis("saliency_map", "channels_last", "channels_last", "ok", _sal, lambda: (channels_last(randn(2, 3, 8, 8)), 2),
     reference=_saliency_ref)
_vis("saliency_map", "expanded", "expanded", "ok", _sal, lambda: (expanded((2, 3, 8, 8), 0), 2), reference=_saliency_ref)
_vis("saliency_map", "rank", "2d-images", "raises", _sal, lambda: (randn(8, 8), 1), "images")
_vis("saliency_map", "dtype", "int-images", "raises", _sal, lambda: (torch.ones(2, 3, 8, 8, dtype=torch.long), 1),
     "images", (TypeError, ValueError))
_vis("saliency_map", "index", "target-out-of-range", "raises", _sal, lambda: (randn(2, 3, 8, 8), 5), "target")
_vis("saliency_map", "index", "target-negative", "raises", _sal, lambda: (randn(2, 3, 8, 8), torch.tensor([0, -1])),
     "target")
_vis("saliency_map", "shape", "target-shape", "raises", _sal, lambda: (randn(2, 3, 8, 8), torch.tensor([0, 1, 2])),
     "target")
_vis("saliency_map", "dtype", "target-float", "raises", _sal, lambda: (randn(2, 3, 8, 8), torch.tensor([0.0, 1.0])),
     "target", (TypeError, ValueError))
_vis("saliency_map", "argument", "target-bool", "raises", _sal, lambda: (randn(2, 3, 8, 8), True), "target", (TypeError,))
_occ = visualize.occlusion_map
_vis("occlusion_map", "kernel", "patch-0", "raises", _occ, lambda: (randn(2, 3, 8, 8), 1), "patch", patch=0)
_vis("occlusion_map", "stride", "stride-0", "raises", _occ, lambda: (randn(2, 3, 8, 8), 1), "stride", stride=0)
_vis("occlusion_map", "kernel", "patch-oversized", "raises", _occ, lambda: (randn(2, 3, 8, 8), 1), "patch", patch=9)
_vis("occlusion_map", "argument", "batch-size-0", "raises", _occ, lambda: (randn(2, 3, 8, 8), 1), "batch_size",
     batch_size=0)
_vis("occlusion_map", "rank", "5d-images", "raises", _occ, lambda: (randn(1, 2, 3, 8, 8), 1), "images")
_vis("occlusion_map", "index", "target-out-of-range", "raises", _occ, lambda: (randn(2, 3, 8, 8), 9), "target")
_cmv = visualize.class_model_visualisation
_vis("class_model_visualisation", "index", "target-out-of-range", "raises", _cmv, lambda: (7, (3, 8, 8)), "target",
     steps=1)
_vis("class_model_visualisation", "shape", "shape-length", "raises", _cmv, lambda: (1, (8, 8)), "shape", steps=1)
_vis("class_model_visualisation", "argument", "steps-negative", "raises", _cmv, lambda: (1, (3, 8, 8)), "steps",
     steps=-1)
_dd = visualize.deep_dream
_vis("deep_dream", "argument", "layer-unknown", "raises", _dd, lambda: (randn(3, 8, 8), "nope"), "layer", steps=1)
_vis("deep_dream", "argument", "steps-negative", "raises", _dd, lambda: (randn(3, 8, 8), "features"), "steps", steps=-1)
_vis("deep_dream", "argument", "octave-scale-0", "raises", _dd, lambda: (randn(3, 8, 8), "features"), "octave_scale",
     steps=1, octaves=2, octave_scale=0.0)
_vis("deep_dream", "dtype", "int-image", "raises", _dd, lambda: (torch.ones(3, 8, 8, dtype=torch.long), "features"),
     "image", (TypeError, ValueError), steps=1)
_ta = lambda model, *a, **k: visualize.top_activations(model.features, *a, **k)  # noqa: E731
_vis("top_activations", "argument", "k-0", "raises", _ta, lambda: (0, randn(4, 3, 8, 8)), r"\bk\b", channel=0, k=0)
_vis("top_activations", "index", "channel-out-of-range", "raises", _ta, lambda: (0, randn(4, 3, 8, 8)), "channel",
     channel=4, k=2)
_vis("top_activations", "rank", "2d-images", "raises", _ta, lambda: (0, randn(8, 8)), "images", channel=0, k=1)
add("visualize", "visualize.save_grid", "dtype", "complex-images", "raises",
    lambda: Call(visualize.save_grid, (torch.ones(2, 3, 4, 4, dtype=torch.complex64), os.devnull)), "images",
    (TypeError, ValueError))
add("visualize", "visualize.save_grid", "shape", "two-channels", "raises",
    lambda: Call(visualize.save_grid, (randn(2, 2, 4, 4), os.devnull)), "images|channel|C", (TypeError, ValueError))


#: Cases of the harness itself (not counted): a child that dies by a signal must be reported.
HARNESS_CASES = [Case("harness-segfault", "harness", "harness", "valid", "ok",
                      lambda: Call(lambda: os.kill(os.getpid(), signal.SIGSEGV), reference=lambda: None))]


def _main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        _child_main(sys.argv[2])
        return
    if len(sys.argv) >= 2 and sys.argv[1] == "--json":
        results = run_cases(CASES)
        print(json.dumps(summary(results)))
        return
    print(__doc__)


if __name__ == "__main__":
    _main()
