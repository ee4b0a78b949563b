"""Reliability (issue 14): run-to-run determinism of every public op and model, CPU and CUDA.

The matrix is the one of ``test_reliability_threads.py`` (one row per (op, configuration), each
returning ``run()``: the outputs and the gradients of the floating inputs) plus ``EXTRA_CASES``
below: rows large enough for the reductions to be split between threads, the metric-learning
functions and ``VGGFeatures``. ``DETERMINISM`` is the documented behaviour of each op; the tests
enforce it and ``scripts/reliability_report.py`` (or docs) may import it.

CPU (every row, both CPU kernel paths): two interpreters (subprocesses) each compute every row
under each (kernel path, 1 or 2 threads) configuration, the second in the reverse order (of
configurations and of rows), so that each row meets other allocator and cache states.

- ``test_cpu_fresh_interpreters``: the two interpreters give bitwise-equal outputs and gradients
  at 1 and at 2 threads.
- ``test_cpu_thread_count``: rows of an op documented as thread-count independent are bitwise
  equal at 1 and 2 threads; the others agree within rounding.
- ``test_cpu_thread_dependence_is_real``: an op documented as thread-count dependent really
  differs between 1 and 2 threads in one of its rows (the table is not stale).

CUDA (``needs_cuda``; every row in two interpreters under ``torch.use_deterministic_algorithms(True)``
with ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, inputs made on the GPU through
``torch.set_default_device``):

- ``test_cuda_deterministic_or_raises``: a row documented "deterministic" gives bitwise-equal
  results in two calls and in the two interpreters; a row documented to raise raises a
  RuntimeError naming the op (PyTorch's "does not have a deterministic implementation").

``python tests/test_reliability_determinism.py --table`` prints the table as markdown.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import pytest  # noqa: E402
import torch  # noqa: E402

import pyvision_ops  # noqa: E402
from pyvision_ops import metric_learning, models  # noqa: E402
from test_reliability_threads import CASES as THREAD_CASES  # noqa: E402
from test_reliability_threads import _assert_same, _diff, _no_grad  # noqa: E402

WORKER_TIMEOUT_S = 600.0
THREAD_COUNTS = (1, 2)
CPU_PATH_NAMES = ("simd", "portable")


# --------------------------------------------------------------------------------------------
# rows beyond the threads matrix
# --------------------------------------------------------------------------------------------

def _on_cpu_then_default_device(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """A module built on the CPU (its private CPU generators need CPU tensors), then moved to
    the default device (the GPU in the CUDA worker)."""
    device = torch.get_default_device()
    with torch.device("cpu"):
        module = build()
    return module.to(device)


def _gram_split_style():
    f = torch.randn(1, 6, 48, 48)
    target = torch.randn(6, 6)
    return _diff(lambda f: pyvision_ops.style_loss(f, target), f)


def _sdpa_one_pair():
    # One (batch, head) pair, several key and query tiles: with more threads than pairs the CPU
    # backward switches to its two-pass schedule.
    q, k, v = torch.randn(1, 1, 96, 16), torch.randn(1, 1, 80, 16), torch.randn(1, 1, 80, 16)
    return _diff(pyvision_ops.scaled_dot_product_attention, q, k, v)


def _pool_tiling():
    x = torch.randn(2, 3, 8, 8)  # 2x2 windows, stride 2: no overlap, one writer per gradient
    return _diff(lambda x: pyvision_ops.max_pool2d_with_indices(x, 2, 2), x)


def _large_reduction(name: str):
    def make():
        if name == "class_distance_matrix":
            e, labels = torch.randn(400, 16), torch.arange(400) % 7
            return _diff(lambda e: pyvision_ops.class_distance_matrix(e, labels), e)
        if name == "batch_hard_triplet_loss":
            e, labels = torch.randn(400, 16), torch.arange(400) % 7
            return _diff(lambda e: pyvision_ops.batch_hard_triplet_loss(e, labels), e)
        if name == "triplet_margin_loss":
            a, p, n = torch.randn(4000, 8), torch.randn(4000, 8), torch.randn(4000, 8)
            return _diff(pyvision_ops.triplet_margin_loss, a, p, n)
        if name == "contrastive_loss":
            x1, x2 = torch.randn(4000, 8), torch.randn(4000, 8)
            same = torch.rand(4000) > 0.5
            return _diff(lambda a, b: pyvision_ops.contrastive_loss(a, b, same), x1, x2)
        if name == "perceptual_loss":
            return _diff(pyvision_ops.perceptual_loss, torch.randn(2, 16, 32, 32), torch.randn(2, 16, 32, 32))
        if name == "pairwise_distance":
            x, y = torch.randn(300, 24), torch.randn(500, 24)
            return _diff(lambda x, y: pyvision_ops.pairwise_distance(x, y, metric="euclidean"), x, y)
        if name == "pairwise_topk":
            x, y = torch.randn(300, 24), torch.randn(500, 24)
            return _diff(lambda x, y: pyvision_ops.pairwise_topk(x, y, 5), x, y)
        if name == "mine_triplets":
            e, labels = torch.randn(400, 16), torch.arange(400) % 7
            return _no_grad(lambda e: pyvision_ops.mine_triplets(e, labels, strategy="semi_hard"), e)
        if name == "max_unpool2d":
            v, idx = pyvision_ops.max_pool2d_with_indices(torch.randn(4, 16, 64, 64), 2, 2)
            return _diff(lambda v: pyvision_ops.max_unpool2d(v, idx, 2, 2), v.detach().clone())
        raise KeyError(name)
    return make


def _kmeans():
    x = torch.cat([torch.randn(30, 4) + 4 * torch.randn(1, 4) for _ in range(3)])

    def forward(x):
        generator = torch.Generator(device=x.device).manual_seed(5)
        result = metric_learning.kmeans(x, 3, max_iter=20, generator=generator)
        return [result.centroids, result.labels, result.inertia]

    return _no_grad(forward, x)


def _hierarchical():
    e, labels = torch.randn(24, 6), torch.arange(24) % 4
    tree = metric_learning.ClassTree.from_embeddings(e, labels)
    return _diff(lambda e: metric_learning.hierarchical_triplet_loss(e, labels, tree), e)


def _vgg():
    model = _on_cpu_then_default_device(lambda: models.VGGFeatures("vgg16", layers=("relu1_2", "relu2_1"))).eval()
    return _no_grad(model, torch.randn(1, 3, 16, 16))


EXTRA_CASES = [
    ("max_pool2d_with_indices-2x2-tiling", _pool_tiling),
    ("max_unpool2d-large", _large_reduction("max_unpool2d")),
    ("style_loss-batch1-split", _gram_split_style),
    ("perceptual_loss-large", _large_reduction("perceptual_loss")),
    ("pairwise_distance-euclidean-large", _large_reduction("pairwise_distance")),
    ("pairwise_topk-large", _large_reduction("pairwise_topk")),
    ("mine_triplets-semi_hard-large", _large_reduction("mine_triplets")),
    ("batch_hard_triplet_loss-large", _large_reduction("batch_hard_triplet_loss")),
    ("triplet_margin_loss-large", _large_reduction("triplet_margin_loss")),
    ("contrastive_loss-large", _large_reduction("contrastive_loss")),
    ("class_distance_matrix-large", _large_reduction("class_distance_matrix")),
    ("scaled_dot_product_attention-one-pair", _sdpa_one_pair),
    ("kmeans", _kmeans),
    ("hierarchical_triplet_loss", _hierarchical),
    ("model-VGGFeatures", _vgg),
]

CASES: List[Tuple[str, Callable]] = [*THREAD_CASES, *EXTRA_CASES]
CASE_NAMES = [name for name, _ in CASES]
MAKERS: Dict[str, Callable] = dict(CASES)


def op_of(case: str) -> str:
    """The table key of a row: the op name, or ``models.<Name>`` for a model row."""
    if case.startswith("model-"):
        return "models." + case[len("model-"):]
    return case.split("-", 1)[0]


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------

CPU_BITWISE = "bitwise, any thread count"
CPU_FIXED_THREADS = "thread-count dependent on CPU (bitwise at a fixed thread count)"
CUDA_DETERMINISTIC = "deterministic"
CUDA_RAISES_OVERLAP = "raises in backward when pooling windows overlap (stride < dilation * (kernel - 1) + 1)"
CUDA_NOT_RUN = "not run here"


@dataclass(frozen=True)
class Determinism:
    """What an op promises: on the CPU (two runs, and 1 vs 2 threads) and on CUDA under
    ``torch.use_deterministic_algorithms(True)``, with the reason."""

    cpu: str
    cuda: str
    why: str


_ONE_WRITER = "every output element is computed by one thread in a fixed order"

DETERMINISM: Dict[str, Determinism] = {
    "max_pool2d_with_indices": Determinism(
        CPU_BITWISE, CUDA_RAISES_OVERLAP,
        "forward: one thread per output; backward without overlap: one writer per element; CUDA backward "
        "with overlapping windows sums by float atomicAdd and calls alertNotDeterministic "
        "(the CPU sums each plane in a fixed order)"),
    "max_unpool1d": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC,
                                "write-once tiles, or claim (integer atomicMax: last source in raster order "
                                "wins, as PyTorch's CPU) + resolve; backward is a gather (torch.nn.MaxUnpool "
                                "raises on CUDA instead)"),
    "max_unpool2d": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC, "as max_unpool1d"),
    "max_unpool3d": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC, "as max_unpool1d"),
    "gram_matrix": Determinism(
        CPU_FIXED_THREADS, CUDA_DETERMINISTIC,
        "CPU: with fewer batch items than threads H*W is split between the threads, the partial Grams "
        "summed in thread order; CUDA: split-K partial tiles summed in a fixed order by "
        "gram_split_reduce_kernel (the split count depends on the GPU model only)"),
    "style_loss": Determinism(CPU_FIXED_THREADS, CUDA_DETERMINISTIC, "its Gram matrix is gram_matrix's"),
    "perceptual_loss": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC, "ATen reductions (fixed order)"),
    "linear_sum_assignment": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC,
                                         "shortest augmenting paths, ties broken by column index; the "
                                         "CUDA team's minimum is a fixed shuffle tree"),
    "pairwise_distance": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC,
                                     _ONE_WRITER + "; backward: batched matmuls (cuBLAS deterministic with "
                                     "CUBLAS_WORKSPACE_CONFIG set)"),
    "pairwise_topk": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC,
                                 "per-row selection, ties to the smaller index; CUDA backward uses "
                                 "scatter_add_, deterministic in PyTorch's deterministic mode"),
    "mine_triplets": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC,
                                 "CUDA batch-hard merges tiles by 64-bit integer atomicMax / atomicMin on "
                                 "packed (key, index) words: order-independent"),
    "batch_hard_triplet_loss": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC,
                                           "mining as mine_triplets; the backward's index_add_ is "
                                           "deterministic in PyTorch's deterministic mode"),
    "triplet_margin_loss": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC, "per-row terms, ATen mean/sum"),
    "contrastive_loss": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC, "per-row terms, ATen mean/sum"),
    "class_distance_matrix": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC, "per-class sums in a fixed order"),
    "gather_embeddings": Determinism(CPU_BITWISE, CUDA_NOT_RUN,
                                     "needs a process group (tests/test_distance_distributed.py); an "
                                     "all-gather copies, it adds nothing"),
    "scaled_dot_product_attention": Determinism(
        CPU_BITWISE, CUDA_DETERMINISTIC,
        "one writer per output and gradient element (two backward kernels / two CPU schedules, neither "
        "with atomics); dropout masks from a Philox seed drawn from torch's generator"),
    "kmeans": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC, "k-means++ from the given generator; fused assignment"),
    "hierarchical_triplet_loss": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC,
                                             "per-entry terms reduced by ATen (fixed order)"),
    "models.EmbeddingNet": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC, "forward (eval)"),
    "models.SegNet": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC, "forward (eval): 2x2 pooling, unpooling"),
    "models.TransformerEncoder": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC, "forward (eval)"),
    "models.DETR": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC, "forward (eval)"),
    "models.VGGFeatures": Determinism(CPU_BITWISE, CUDA_DETERMINISTIC, "forward (eval)"),
}

#: Rows whose CUDA run must raise under deterministic mode, with the words the message must hold
#: (the overlapping-window pooling backward; the 2x2 row does not overlap and must not raise).
CUDA_RAISING_CASES: Dict[str, str] = {
    "max_pool2d_with_indices": "max_pool2d_with_indices",
    "max_pool2d_with_indices-compact": "max_pool2d_with_indices",
    "max_pool2d_with_indices-pad-dilation-ceil": "max_pool2d_with_indices",
}

#: Rows that reveal a real determinism bug: name -> reason (strict xfail).
KNOWN_BUGS: Dict[str, str] = {}


def cuda_expectation(case: str) -> str:
    """"raises" or "deterministic" for one row on CUDA."""
    return "raises" if case in CUDA_RAISING_CASES else "deterministic"


def markdown_table() -> str:
    lines = ["| op | CPU | CUDA (use_deterministic_algorithms) | why |", "|---|---|---|---|"]
    for op, d in DETERMINISM.items():
        lines.append(f"| `{op}` | {d.cpu} | {d.cuda} | {d.why} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the worker: one interpreter computing every row once (CPU) or twice (CUDA)
# --------------------------------------------------------------------------------------------

def _to_cpu(results: Sequence[Optional[torch.Tensor]]) -> List[Optional[torch.Tensor]]:
    return [None if t is None else t.detach().cpu() for t in results]


def _compute_rows(device: str, names: Sequence[str]) -> Dict[str, dict]:
    results: Dict[str, dict] = {}
    for name in names:
        torch.manual_seed(zlib.crc32(name.encode()))
        try:
            run = MAKERS[name]()
            entry = {"first": _to_cpu(run())}
            if device == "cuda":
                entry["second"] = _to_cpu(run())
                torch.cuda.synchronize()
            results[name] = entry
        except Exception as error:  # noqa: BLE001 -- reported per row to the parent
            results[name] = {"error": f"{type(error).__name__}: {error}"}
    return results


def _worker(device: str, configs: Sequence[Tuple[str, int]], reverse: bool, output: str, names: Sequence[str]) -> None:
    """Every row under every (cpu path, threads) config, in this order or reversed (rows too), so
    that the two interpreters reach each row with different allocator and cache states."""
    from pyvision_ops import _C

    if device == "cuda":
        torch.use_deterministic_algorithms(True)
        torch.set_default_device("cuda")
    order = list(reversed(configs)) if reverse else list(configs)
    rows = list(reversed(names)) if reverse else list(names)
    results: Dict[Tuple[str, int], Dict[str, dict]] = {}
    for path, threads in order:
        torch.set_num_threads(threads)
        previous = _C._set_cpu_simd(path == "simd")
        try:
            results[(path, threads)] = _compute_rows(device, rows)
        finally:
            _C._set_cpu_simd(previous)
    torch.save(results, output)


def _run_worker(device: str, configs: Sequence[Tuple[str, int]], reverse: bool, directory: str,
                tag: str) -> Dict[Tuple[str, int], Dict[str, dict]]:
    output = os.path.join(directory, f"{tag}.pt")
    env = dict(os.environ)
    if device == "cuda":
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--device", device, "--output", output,
               "--configs", ",".join(f"{path}:{threads}" for path, threads in configs)]
    if reverse:
        command.append("--reverse")
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    if completed.returncode != 0:
        raise AssertionError(
            f"worker {tag} exited with {completed.returncode}:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
        )
    return torch.load(output, weights_only=False)


CPU_CONFIGS = [(path, threads) for path in CPU_PATH_NAMES for threads in THREAD_COUNTS]


@pytest.fixture(scope="module")
def cpu_runs() -> Dict[Tuple[str, int, int], Dict[str, dict]]:
    """(cpu path, threads, interpreter 0/1) -> row -> {"first": results} or {"error": message}."""
    with tempfile.TemporaryDirectory(prefix="pvo-determinism-") as directory:
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(_run_worker, "cpu", CPU_CONFIGS, attempt == 1, directory, f"cpu-{attempt}")
                       for attempt in (0, 1)]
            runs = [future.result() for future in futures]
    return {(path, threads, attempt): runs[attempt][(path, threads)]
            for path, threads in CPU_CONFIGS for attempt in (0, 1)}


@pytest.fixture(scope="module")
def cuda_runs() -> Tuple[Dict[str, dict], Dict[str, dict]]:
    with tempfile.TemporaryDirectory(prefix="pvo-determinism-cuda-") as directory:
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            runs = list(pool.map(lambda attempt: _run_worker("cuda", [("simd", 1)], attempt == 1, directory,
                                                             f"cuda-{attempt}"), (0, 1)))
    return runs[0][("simd", 1)], runs[1][("simd", 1)]


def _results(runs: Dict[str, dict], case: str, what: str) -> List[Optional[torch.Tensor]]:
    entry = runs[case]
    if "error" in entry:
        raise AssertionError(f"{case} ({what}) raised {entry['error']}")
    return entry["first"]


def _params(names: Sequence[str]):
    return [pytest.param(name, id=name,
                         marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name])] if name in KNOWN_BUGS else [])
            for name in names]


def _assert_close(expected, got, what: str) -> None:
    assert len(expected) == len(got), what
    for i, (e, g) in enumerate(zip(expected, got)):
        if e is None or g is None:
            assert e is None and g is None, f"{what}: result {i}"
            continue
        if e.is_floating_point():
            rtol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(e.dtype, 1e-2)
            scale = max(1.0, e.double().abs().max().item()) if e.numel() else 1.0
            torch.testing.assert_close(g.double(), e.double(), rtol=0, atol=rtol * scale, equal_nan=True,
                                       msg=lambda m: f"{what}: result {i}: {m}")
        else:
            assert torch.equal(e, g), f"{what}: result {i} differs"


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------

def test_table_covers_every_public_op_and_model() -> None:
    public_ops = {name for name in pyvision_ops.ops.__all__ if name != "TopK"}
    public = public_ops | {"kmeans", "hierarchical_triplet_loss"} | {
        f"models.{name}" for name in ("SegNet", "EmbeddingNet", "DETR", "TransformerEncoder", "VGGFeatures")}
    assert public <= set(DETERMINISM), f"no determinism entry for {sorted(public - set(DETERMINISM))}"
    rows = {op_of(name) for name in CASE_NAMES}
    assert rows <= set(DETERMINISM), f"rows of ops without an entry: {sorted(rows - set(DETERMINISM))}"
    untested = {op for op, d in DETERMINISM.items() if d.cuda != CUDA_NOT_RUN} - rows
    assert not untested, f"documented but without a row: {sorted(untested)}"
    for case in CUDA_RAISING_CASES:
        assert DETERMINISM[op_of(case)].cuda != CUDA_DETERMINISTIC, case
    assert len(set(CASE_NAMES)) == len(CASE_NAMES), "duplicate row names"


@pytest.mark.parametrize("case", _params(CASE_NAMES))
@pytest.mark.parametrize("threads", THREAD_COUNTS)
@pytest.mark.parametrize("path", CPU_PATH_NAMES)
def test_cpu_fresh_interpreters(cpu_runs, path: str, threads: int, case: str) -> None:
    what = f"{path} kernels, {threads} thread(s)"
    first = _results(cpu_runs[(path, threads, 0)], case, what)
    second = _results(cpu_runs[(path, threads, 1)], case, what)
    _assert_same(first, second, f"{case}: second interpreter, {what}")


@pytest.mark.parametrize("case", _params(CASE_NAMES))
@pytest.mark.parametrize("path", CPU_PATH_NAMES)
def test_cpu_thread_count(cpu_runs, path: str, case: str) -> None:
    one = _results(cpu_runs[(path, 1, 0)], case, f"{path}, 1 thread")
    two = _results(cpu_runs[(path, 2, 0)], case, f"{path}, 2 threads")
    if DETERMINISM[op_of(case)].cpu == CPU_BITWISE:
        _assert_same(one, two, f"{case} ({path}): 2 threads against 1")
    else:
        _assert_close(one, two, f"{case} ({path}): 2 threads against 1")


@pytest.mark.parametrize("op", [op for op, d in DETERMINISM.items() if d.cpu == CPU_FIXED_THREADS])
def test_cpu_thread_dependence_is_real(cpu_runs, op: str) -> None:
    def differs(case: str, path: str) -> bool:
        one = _results(cpu_runs[(path, 1, 0)], case, path)
        two = _results(cpu_runs[(path, 2, 0)], case, path)
        return any(a is not None and not torch.equal(a, b) for a, b in zip(one, two))

    rows = [case for case in CASE_NAMES if op_of(case) == op]
    assert any(differs(case, path) for case in rows for path in CPU_PATH_NAMES), (
        f"{op} is documented as thread-count dependent, but none of its rows {rows} differs between 1 and "
        f"2 threads: make the entry {CPU_BITWISE!r}"
    )


@pytest.mark.needs_cuda
@pytest.mark.parametrize("case", _params(CASE_NAMES))
def test_cuda_deterministic_or_raises(cuda_runs, case: str) -> None:
    first_run, second_run = cuda_runs
    entry, other = first_run[case], second_run[case]
    if cuda_expectation(case) == "raises":
        for e in (entry, other):
            assert "error" in e, f"{case} ran under use_deterministic_algorithms(True); documented to raise"
            message = e["error"]
            assert message.startswith("RuntimeError"), message
            assert "does not have a deterministic implementation" in message, message
            assert CUDA_RAISING_CASES[case] in message, message
        return
    for e in (entry, other):
        if "error" in e:
            raise AssertionError(f"{case} raised under use_deterministic_algorithms(True): {e['error']}")
    _assert_same(entry["first"], entry["second"], f"{case}: second call, same interpreter")
    _assert_same(entry["first"], other["first"], f"{case}: second interpreter")


# --------------------------------------------------------------------------------------------
# command line: the worker, and the table for docs
# --------------------------------------------------------------------------------------------

def _main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="compute every row once and save the results")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--configs", default="simd:1", help="comma-separated PATH:THREADS, e.g. simd:1,portable:2")
    parser.add_argument("--reverse", action="store_true", help="configs and rows in reverse order")
    parser.add_argument("--output")
    parser.add_argument("--cases", default="", help="comma-separated row names (default: all)")
    parser.add_argument("--table", action="store_true", help="print DETERMINISM as a markdown table")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table())
        return 0
    if args.worker:
        names = [n for n in args.cases.split(",") if n] or CASE_NAMES
        configs = [(item.split(":")[0], int(item.split(":")[1])) for item in args.configs.split(",")]
        _worker(args.device, configs, args.reverse, args.output, names)
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(_main())
