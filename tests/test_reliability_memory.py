"""Reliability (issue 14): memory. No leak over repeated calls; 64-bit indexing beyond 2^31 elements.

Leaks. Every public op (one row of the determinism matrix per op: forward under ``no_grad``,
and forward + backward where it is differentiable) and every model's forward is called 100 times
(warm-up), then 1000 times, with three figures taken before and after:

* RSS (``/proc/self/statm``), what the issue asks for: coarse (pages, allocator slack);
* the bytes malloc has handed out and not taken back (glibc ``mallinfo2``: ``uordblks`` +
  ``hblkhd``): sees a C++ allocation the op forgets to free (a TensorImpl, a workspace);
* the blocks Python's allocator holds (``sys.getallocatedblocks``): sees a Python object kept
  alive per call (a tensor appended to a list, a cached autograd graph).

Both ends are taken after a garbage collection: autograd graphs are reference cycles that the
collector frees in its own time, so only what stays reachable counts (the medians of the first
and last 50 per-call samples of RSS and malloc'd bytes are recorded too). A row leaks when a
growth passes its limit: ``RSS_LIMIT`` (1 MiB), ``MALLOC_LIMIT`` (64 KiB; one leaked 0-d tensor
per call is over 300 KiB) or ``PY_BLOCKS_LIMIT`` (500 blocks; one object per call is 1000, and
caches still settling after the warm-up account for up to ~300, once).
``test_checker_detects_a_leak`` proves the checker works: the same loop with a deliberate leak
per call (a 0-d tensor, a 4 KiB tensor, a 512-byte malloc never freed) must be flagged, and the
loop without one must not. Each group of ops runs in its own interpreter (two at a time, at one
thread), so that pytest's own allocations stay out of the figures. On CUDA (``needs_cuda``) the
same rows run on the GPU (20 + 200 calls) and the bytes of live CUDA tensors
(``torch.cuda.memory_allocated``, exact) must not grow by ``CUDA_LIMIT`` (32 KiB). ``PVO_MEMORY_STATS=FILE`` writes every figure
as JSON (for docs/reliability.md).

64-bit indexing (marked ``bigmem``; each case in its own interpreter, so that a crash is a
failure; skipped when ``/proc/meminfo`` MemAvailable is below what the case needs):

* ``max_unpool2d`` of a (1, 1, 23200, 23200) bfloat16 input with int64 indices: one output plane
  of 46400^2 = 2 152 960 000 elements (> 2^31), flat indices up to 2^31 + 5.5e6; then its
  backward (a gather) with the output itself as upstream gradient, which must give the input
  back. Peak RSS 10.8 GiB; needs 11.5 GiB available.
* ``pairwise_distance`` (sqeuclidean) of x (66000, 4) against y (32768, 4), float32: an output of
  2 162 688 000 elements (8.1 GiB; row 65536 starts at element 2^31). Peak RSS 8.7 GiB; needs
  9.5 GiB available.

The references are independent: torch's ``F.max_unpool2d`` on bands of rows (the first ones,
those around element 2^31, the middle and the last ones) and torch's own indexing of the whole
output at every index, with a count of the nonzero elements (so the output equals the reference
element for element); for the distances a float64 computation on 60 rows (around element 2^31,
the first, the last, random ones) and 3 whole columns, no element left at 0 (unwritten), and the
float64 total against its closed form. Their wall time and peak RSS are printed (``-s``) and
written with the other figures.
"""

from __future__ import annotations

import argparse
import array
import concurrent.futures
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import zlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import pyvision_ops  # noqa: E402

WARMUP_CALLS = 100
MEASURED_CALLS = 1000
WINDOW = 50  # samples at each end whose medians are compared
RSS_LIMIT = 1 << 20
MALLOC_LIMIT = 64 << 10
PY_BLOCKS_LIMIT = 500
CUDA_LIMIT = 32 << 10
#: On CUDA the figure is exact (live tensor bytes): fewer calls tell a leak of one 0-d tensor per
#: call (512 bytes, 100 KiB over 200 calls) and keep scripts/gpu_check.sh's test stage short.
CUDA_WARMUP_CALLS = 20
CUDA_MEASURED_CALLS = 200
GROUP_TIMEOUT_S = 400.0
BIGMEM_TIMEOUT_S = 600.0
GIB = 1 << 30

#: The rows of tests/test_reliability_determinism.py (its MAKERS) measured here, by op group:
#: one row per public op (gather_embeddings needs a process group) and one per model.
GROUPS: Dict[str, List[str]] = {
    "pooling": ["max_pool2d_with_indices", "max_unpool1d", "max_unpool2d", "max_unpool3d"],
    "gram_assign": ["gram_matrix", "style_loss-sum", "perceptual_loss", "linear_sum_assignment-2d"],
    "distance": ["pairwise_distance-euclidean", "pairwise_topk-sqeuclidean", "mine_triplets-semi_hard",
                 "batch_hard_triplet_loss", "triplet_margin_loss", "contrastive_loss-mean", "class_distance_matrix"],
    "attention_metric": ["scaled_dot_product_attention-bool_mask", "kmeans", "hierarchical_triplet_loss"],
    "models": ["model-EmbeddingNet", "model-SegNet", "model-TransformerEncoder", "model-DETR", "model-VGGFeatures"],
}

#: The interpreters the groups share (fewer start-ups; about equal work each), two at a time.
PROCESSES = [["distance"], ["attention_metric", "pooling"], ["models", "gram_assign", "control"]]

#: The checker's own test: a cheap row, with and without a deliberate leak per call.
CONTROL_ROW = "gram_matrix"
LEAKS = ("none", "tensor_0d", "tensor_4k", "malloc_512")

#: Rows that reveal a real leak: "row/mode" -> reason (strict xfail).
KNOWN_BUGS: Dict[str, str] = {}


# --------------------------------------------------------------------------------------------
# the figures
# --------------------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_LIBC = ctypes.CDLL(None)
_MALLINFO2 = getattr(_LIBC, "mallinfo2", None)
if _MALLINFO2 is not None:
    _MALLINFO2.restype = _MallInfo2
_LIBC.malloc.restype = ctypes.c_void_p
_LIBC.malloc.argtypes = [ctypes.c_size_t]


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def malloc_bytes() -> int:
    """Bytes in use from malloc (all arenas, mmapped chunks included); 0 without glibc 2.33+."""
    if _MALLINFO2 is None:
        return 0
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def growth(samples: Sequence[int]) -> float:
    return statistics.median(samples[-WINDOW:]) - statistics.median(samples[:WINDOW])


def leak_verdict(figures: dict) -> List[str]:
    """The limits a row's figures pass (empty: no leak). On CUDA the CUDA bytes and the Python
    blocks are judged; the host RSS and malloc'd bytes of a process with a CUDA context also
    move with the driver's own threads, so they are only recorded."""
    over = []
    if "cuda_growth" in figures:
        if figures["cuda_growth"] > CUDA_LIMIT:
            over.append(f"CUDA bytes grew {figures['cuda_growth'] / 1024:.0f} KiB (limit {CUDA_LIMIT >> 10} KiB)")
        if figures["py_blocks_growth"] > PY_BLOCKS_LIMIT:
            over.append(f"Python blocks grew by {figures['py_blocks_growth']:.0f} (limit {PY_BLOCKS_LIMIT})")
        return over
    if figures["rss_growth"] > RSS_LIMIT:
        over.append(f"RSS grew {figures['rss_growth'] / 1024:.0f} KiB (limit {RSS_LIMIT >> 10} KiB)")
    if figures["malloc_growth"] > MALLOC_LIMIT:
        over.append(f"malloc'd bytes grew {figures['malloc_growth'] / 1024:.0f} KiB (limit {MALLOC_LIMIT >> 10} KiB)")
    if figures["py_blocks_growth"] > PY_BLOCKS_LIMIT:
        over.append(f"Python blocks grew by {figures['py_blocks_growth']:.0f} (limit {PY_BLOCKS_LIMIT})")
    return over


def cuda_bytes() -> int:
    """Bytes of live CUDA tensors (the caching allocator's count, exact), after the queued work."""
    torch.cuda.synchronize()
    return int(torch.cuda.memory_allocated())


def measure(call: Callable[[], object], calls: int = MEASURED_CALLS, warmup: int = WARMUP_CALLS,
            cuda: bool = False) -> dict:
    """Warm up, then ``calls`` calls with the figures sampled after each (CUDA: before and after)."""
    for _ in range(warmup):
        call()
    # Preallocated C arrays: storing a sample allocates nothing that outlives the call.
    rss = array.array("q", bytes(8 * calls))
    heap = array.array("q", bytes(8 * calls))
    gc.collect()
    cuda_start = cuda_bytes() if cuda else 0
    start_figures = (rss_bytes(), malloc_bytes(), sys.getallocatedblocks())
    start = time.perf_counter()
    for i in range(calls):
        call()
        rss[i] = rss_bytes()
        heap[i] = malloc_bytes()
    seconds = time.perf_counter() - start
    # Autograd graphs are reference cycles that the garbage collector frees in its own time: the
    # end figures are taken after a collection, so that only what stays reachable counts.
    gc.collect()
    end_figures = (rss_bytes(), malloc_bytes(), sys.getallocatedblocks())
    rss_growth, malloc_growth, blocks_growth = (e - s for e, s in zip(end_figures, start_figures))
    figures = {"calls": calls, "seconds": round(seconds, 3), "rss_growth": rss_growth, "malloc_growth": malloc_growth,
               "py_blocks_growth": blocks_growth, "rss_growth_during": growth(rss),
               "malloc_growth_during": growth(heap), "rss_start": start_figures[0]}
    if cuda:
        figures["cuda_growth"] = cuda_bytes() - cuda_start
    return figures


# --------------------------------------------------------------------------------------------
# the group worker
# --------------------------------------------------------------------------------------------

def _modes(run: Callable[[], list]) -> Dict[str, Callable[[], list]]:
    """forward (no_grad), and forward + backward when run() returns more than its no-grad form
    (the gradients)."""
    def forward():
        with torch.no_grad():
            return run()

    modes = {"forward": forward}
    if len(run()) > len(forward()):
        modes["forward+backward"] = run
    return modes


def _group_worker(group: str, device: str = "cpu") -> List[dict]:
    from test_reliability_determinism import MAKERS

    torch.set_num_threads(1)
    cuda = device == "cuda"
    counts = {"calls": CUDA_MEASURED_CALLS, "warmup": CUDA_WARMUP_CALLS} if cuda else {}
    if cuda:
        torch.set_default_device("cuda")  # the rows' inputs and models are made on the GPU
    rows: List[dict] = []
    if group == "control":
        torch.manual_seed(zlib.crc32(CONTROL_ROW.encode()))
        run = _modes(MAKERS[CONTROL_ROW]())["forward"]
        for leak in LEAKS:
            kept: list = []

            def call(run=run, leak=leak, kept=kept):
                out = run()
                if leak == "tensor_0d":
                    kept.append(torch.zeros(()))  # on the default device: the GPU in a CUDA run
                elif leak == "tensor_4k":
                    kept.append(torch.ones(1024))
                elif leak == "malloc_512":
                    kept.append(_LIBC.malloc(512))  # the address only: the block is never freed
                return out

            rows.append({"row": CONTROL_ROW, "mode": f"leak:{leak}", **measure(call, cuda=cuda, **counts)})
        return rows
    for name in GROUPS[group]:
        torch.manual_seed(zlib.crc32(name.encode()))
        for mode, call in _modes(MAKERS[name]()).items():
            rows.append({"row": name, "mode": mode, **measure(call, cuda=cuda, **counts)})
    return rows


def _run_groups(groups: Sequence[str], device: str = "cpu") -> Dict[str, List[dict]]:
    command = [sys.executable, os.path.abspath(__file__), "--group", ",".join(groups), "--device", device]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=GROUP_TIMEOUT_S, env=env)
    if completed.returncode != 0:
        raise AssertionError(f"groups {groups} exited with {completed.returncode}:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _write_stats(key: str, value) -> None:
    path = os.environ.get("PVO_MEMORY_STATS")
    if not path:
        return
    try:
        with open(path) as f:
            stats = json.load(f)
    except (OSError, ValueError):
        stats = {}
    stats[key] = value
    with open(path, "w") as f:
        json.dump(stats, f, indent=1, sort_keys=True)


def _measure_groups(device: str, workers: int) -> Dict[str, Dict[Tuple[str, str], dict]]:
    results: Dict[str, List[dict]] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for measured in pool.map(lambda groups: _run_groups(groups, device), PROCESSES):
            results.update(measured)
    _write_stats("leaks" if device == "cpu" else f"leaks_{device}",
                 {f"{r['row']}/{r['mode']}": {k: v for k, v in r.items() if k not in ("row", "mode")}
                  for rows in results.values() for r in rows})
    return {group: {(r["row"], r["mode"]): r for r in rows} for group, rows in results.items()}


@pytest.fixture(scope="module")
def figures() -> Dict[str, Dict[Tuple[str, str], dict]]:
    return _measure_groups("cpu", workers=2)


@pytest.fixture(scope="module")
def cuda_figures() -> Dict[str, Dict[Tuple[str, str], dict]]:
    return _measure_groups("cuda", workers=2)


def _leak_params():
    params = []
    for group, names in GROUPS.items():
        for name in names:
            key = f"{name}"
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[key])] if key in KNOWN_BUGS else []
            params.append(pytest.param(group, name, id=f"{group}-{name}", marks=marks))
    return params


# --------------------------------------------------------------------------------------------
# leak tests
# --------------------------------------------------------------------------------------------

def _assert_no_leak(figures: Dict[str, Dict[Tuple[str, str], dict]], group: str, row: str) -> None:
    measured = {mode: f for (name, mode), f in figures[group].items() if name == row}
    assert "forward" in measured, f"{row}: not measured"
    problems = []
    for mode, f in measured.items():
        assert f["calls"] == (CUDA_MEASURED_CALLS if "cuda_growth" in f else MEASURED_CALLS)
        over = leak_verdict(f)
        if over:
            problems.append(f"{mode}: " + "; ".join(over))
    assert not problems, f"{row} leaks: " + " | ".join(problems)


#: `make sanitize` (scripts/sanitize.py) sets PVO_UNDER_SANITIZERS: ASan's allocator replaces
#: glibc's (mallinfo2 no longer sees the allocations) and keeps freed blocks in a quarantine that
#: grows RSS by design, so the leak figures measure ASan, not the ops. `make test` runs them.
_UNDER_SANITIZERS = pytest.mark.skipif(os.environ.get("PVO_UNDER_SANITIZERS") == "1",
                                       reason="leak figures are ASan's allocator's under the sanitizers")


@_UNDER_SANITIZERS
@pytest.mark.parametrize("group, row", _leak_params())
def test_no_leak(figures, group: str, row: str) -> None:
    _assert_no_leak(figures, group, row)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("group, row", _leak_params())
def test_no_cuda_leak(cuda_figures, group: str, row: str) -> None:
    _assert_no_leak(cuda_figures, group, row)


def test_every_public_op_and_model_is_measured() -> None:
    from test_reliability_determinism import op_of

    measured = {op_of(name) for names in GROUPS.values() for name in names}
    public = {name for name in pyvision_ops.ops.__all__ if name not in ("TopK", "gather_embeddings")}
    public |= {"kmeans", "hierarchical_triplet_loss"}
    public |= {f"models.{m}" for m in ("SegNet", "EmbeddingNet", "DETR", "TransformerEncoder", "VGGFeatures")}
    assert public <= measured, f"not measured: {sorted(public - measured)}"


@_UNDER_SANITIZERS
@pytest.mark.parametrize("leak", LEAKS)
def test_checker_detects_a_leak(figures, leak: str) -> None:
    f = figures["control"][(CONTROL_ROW, f"leak:{leak}")]
    over = leak_verdict(f)
    if leak == "none":
        assert not over, f"the loop without a leak was flagged: {over}"
        return
    assert over, f"a deliberate leak ({leak} per call) went unnoticed: {f}"
    if leak == "tensor_4k":
        assert f["rss_growth"] > RSS_LIMIT, f"4 MiB leaked, RSS grew only {f['rss_growth'] / 1024:.0f} KiB"
    if leak == "malloc_512" and _MALLINFO2 is not None:
        assert f["malloc_growth"] > MALLOC_LIMIT, f


@pytest.mark.needs_cuda
@pytest.mark.parametrize("leak", ["none", "tensor_0d"])
def test_checker_detects_a_cuda_leak(cuda_figures, leak: str) -> None:
    f = cuda_figures["control"][(CONTROL_ROW, f"leak:{leak}")]
    if leak == "none":
        assert not leak_verdict(f), f
    else:
        assert f["cuda_growth"] > CUDA_LIMIT, f"a 0-d CUDA tensor kept per call went unnoticed: {f}"


# --------------------------------------------------------------------------------------------
# 64-bit indexing beyond 2^31 elements (bigmem)
# --------------------------------------------------------------------------------------------

UNPOOL_SIDE = 23200  # input side; the output plane is (2 * side)^2 > 2^31
DISTANCE_N, DISTANCE_M, DISTANCE_D = 66000, 32768, 4
BIGMEM_NEEDS = {"unpool": 23 * GIB // 2, "distance": 19 * GIB // 2}


def _total_and_zeros(matrix: torch.Tensor, rows_per_piece: int = 256) -> Tuple[float, int]:
    """The float64 sum of a big 2-D tensor and its number of zeros, a band of rows at a time
    through one reused float64 buffer (``sum(dtype=torch.float64)`` would convert it whole)."""
    buffer = torch.empty(rows_per_piece, matrix.shape[1], dtype=torch.float64)
    total, zeros = 0.0, 0
    for a in range(0, matrix.shape[0], rows_per_piece):
        piece = matrix[a:a + rows_per_piece]
        band = buffer[:piece.shape[0]]
        band.copy_(piece)
        total += float(band.sum())
        zeros += piece.numel() - int(torch.count_nonzero(band))
    return total, zeros


def _rows_reference_unpool(v: torch.Tensor, idx: torch.Tensor, a: int, b: int, out_w: int) -> torch.Tensor:
    """torch's F.max_unpool2d (float32) of input rows [a, b), the indices rebased to the band."""
    band_v = v[:, :, a:b].float()
    band_i = idx[:, :, a:b] - 2 * a * out_w
    return F.max_unpool2d(band_v, band_i, 2, 2, output_size=(2 * (b - a), out_w))


def _bigmem_unpool() -> dict:
    side, out_side = UNPOOL_SIDE, 2 * UNPOOL_SIDE
    assert out_side * out_side > 2**31
    v = torch.empty(1, 1, side, side, dtype=torch.bfloat16)
    idx = torch.empty(1, 1, side, side, dtype=torch.int64)
    generator = torch.Generator().manual_seed(14)
    # A random block of 512 input rows (window positions, values), repeated down the plane (the
    # values rolled along the row from block to block): random draws for all 5.4e8 elements
    # would take most of the case's time.
    chunk = 512
    position = torch.randint(0, 4, (chunk, side), generator=generator)  # (kh, kw) = divmod(position, 2)
    within = (position // 2) * out_side + 2 * torch.arange(side, dtype=torch.int64) + position % 2
    block_rows = 2 * out_side * torch.arange(chunk, dtype=torch.int64)[:, None]
    values = (torch.rand(chunk, side, generator=generator) + 0.5).bfloat16()  # > 0: a zero means unwritten
    for block, a in enumerate(range(0, side, chunk)):
        b = min(side, a + chunk)
        torch.add(within[: b - a], block_rows[: b - a] + 2 * a * out_side, out=idx[0, 0, a:b])
        v[0, 0, a:b] = values[: b - a].roll(7 * block, dims=1)
    v.requires_grad_(True)
    start = time.perf_counter()
    out = pyvision_ops.max_unpool2d(v, idx, 2, 2)
    forward_s = time.perf_counter() - start
    assert out.shape == (1, 1, out_side, out_side) and out.dtype == torch.bfloat16
    checked = []
    boundary_row = (2**31 // out_side) // 2  # input row whose window rows hold element 2^31
    for a, b in [(0, 8), (boundary_row - 4, boundary_row + 4), (side // 2, side // 2 + 4), (side - 8, side)]:
        expected = _rows_reference_unpool(v.detach(), idx, a, b, out_side)
        got = out[:, :, 2 * a:2 * b].float()
        assert torch.equal(got, expected), f"output rows [{2 * a}, {2 * b}) differ from F.max_unpool2d"
        checked.append([2 * a, 2 * b])
    # As a whole, with torch's own indexing: every input value sits at its flat index (the ones
    # beyond 2^31 included), and nothing else is nonzero (no value lost, none written twice).
    # Together: the output equals the reference element for element.
    flat = out.detach().view(-1)
    assert int(idx[0, 0, -1].max()) > 2**31 + 5_000_000 and int(idx[0, 0, boundary_row].min()) < 2**31
    for a in range(0, side, 2048):
        where = idx[0, 0, a:a + 2048].reshape(-1)
        assert torch.equal(flat[where], v.detach()[0, 0, a:a + 2048].reshape(-1)), (
            f"values of input rows [{a}, {a + 2048}) are not at their flat indices")
    nonzero = int(torch.count_nonzero(out.detach()))
    assert nonzero == side * side, f"{nonzero} nonzero output elements, expected {side * side}"
    # Backward: a gather at the same indices; with the output as upstream gradient it gives v back.
    start = time.perf_counter()
    (grad,) = torch.autograd.grad(out, v, grad_outputs=out.detach())
    backward_s = time.perf_counter() - start
    assert torch.equal(grad, v.detach()), "the backward's gather at indices beyond 2^31"
    return {"output_elements": out.numel(), "max_index": int(idx.max()), "forward_s": round(forward_s, 2),
            "backward_s": round(backward_s, 2), "checked_output_rows": checked}


def _bigmem_distance() -> dict:
    n, m, d = DISTANCE_N, DISTANCE_M, DISTANCE_D
    assert n * m > 2**31
    generator = torch.Generator().manual_seed(14)
    x = torch.randn(n, d, generator=generator)
    y = torch.randn(m, d, generator=generator)
    start = time.perf_counter()
    out = pyvision_ops.pairwise_distance(x, y)
    forward_s = time.perf_counter() - start
    assert out.shape == (n, m) and out.dtype == torch.float32
    x64, y64 = x.double(), y.double()

    def reference(rows: torch.Tensor) -> torch.Tensor:
        return ((x64[rows, None, :] - y64[None, :, :]) ** 2).sum(-1)

    boundary = 2**31 // m  # row 65536 starts exactly at element 2^31
    rows = torch.cat([torch.arange(0, 4), torch.arange(boundary - 2, boundary + 2), torch.arange(n - 4, n),
                      torch.randint(0, n, (48,), generator=generator)])
    for piece in rows.split(16):
        torch.testing.assert_close(out[piece].double(), reference(piece), rtol=1e-5, atol=1e-5,
                                   msg=lambda msg: f"rows {piece.tolist()}: {msg}")
    for j in [0, m // 2, m - 1]:
        expected = ((x64 - y64[j]) ** 2).sum(-1)
        torch.testing.assert_close(out[:, j].double(), expected, rtol=1e-5, atol=1e-5,
                                   msg=lambda msg: f"column {j}: {msg}")
    # As a whole: nothing left unwritten (random points: no distance is exactly 0) and the total
    # equals sum_ij |x_i - y_j|^2 = M sum|x_i|^2 + N sum|y_j|^2 - 2 (sum x_i).(sum y_j).
    total, zeros = _total_and_zeros(out)
    closed = float(m * (x64 ** 2).sum() + n * (y64 ** 2).sum() - 2 * x64.sum(0).dot(y64.sum(0)))
    assert zeros == 0, f"{zeros} output elements are 0 (unwritten?)"
    assert abs(total - closed) <= 1e-6 * closed, (total, closed)
    return {"output_elements": out.numel(), "forward_s": round(forward_s, 2), "checked_rows": rows.numel(),
            "checked_columns": 3}


def _bigmem_worker(case: str) -> dict:
    start = time.perf_counter()
    result = _bigmem_unpool() if case == "unpool" else _bigmem_distance()
    result["wall_s"] = round(time.perf_counter() - start, 2)
    result["peak_rss_gib"] = round(peak_rss_bytes() / GIB, 2)
    return result


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.bigmem
@pytest.mark.parametrize("case", ["unpool", "distance"])
def test_beyond_2_31_elements(case: str) -> None:
    need = BIGMEM_NEEDS[case]
    available = _mem_available()
    if available < need:
        pytest.skip(f"needs {need / GIB:.1f} GiB of MemAvailable, the machine has {available / GIB:.1f} GiB")
    command = [sys.executable, os.path.abspath(__file__), "--bigmem", case]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=BIGMEM_TIMEOUT_S)
    assert completed.returncode == 0, (
        f"the {case} case exited with {completed.returncode} (a negative code is a signal: a crash):\n"
        f"{completed.stderr[-4000:]}"
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"\n{case} beyond 2^31: {result}")
    _write_stats(f"bigmem_{case}", result)


# --------------------------------------------------------------------------------------------
# command line (the subprocesses)
# --------------------------------------------------------------------------------------------

def _main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", help="comma-separated groups (of GROUPS, or control) to measure; JSON on stdout")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--bigmem", choices=["unpool", "distance"], help="run one 64-bit indexing case")
    args = parser.parse_args(argv)
    if args.group:
        print(json.dumps({group: _group_worker(group, args.device) for group in args.group.split(",")}))
        return 0
    if args.bigmem:
        print(json.dumps(_bigmem_worker(args.bigmem)))
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(_main())
