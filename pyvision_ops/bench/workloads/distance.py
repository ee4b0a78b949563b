"""Benchmark workloads of the ``distance`` family (metric learning): pairwise distances, k-nearest
search, triplet mining and the batch-hard triplet loss. CPU float32 unless a row says CUDA.

References, as a user without this library would write them:

* ``pairwise_distance``: ``torch.cdist(x, y)`` in its default compute mode (the matmul expansion
  for these sizes); sqeuclidean is checked against ``cdist(x, y) ** 2``. One accuracy row feeds
  both near-duplicate points far from the origin (coordinates ~1e3, offsets ~1e-2), where the
  matmul expansion cancels catastrophically, and reports both relative errors against float64.
* ``pairwise_topk``: ``faiss.IndexFlatL2(D).search`` (the index built in setup, as a user builds
  it once; faiss gets as many OpenMP threads as torch) when ``faiss-cpu`` is installed, and
  ``torch.cdist`` + ``torch.topk`` chunked over the queries.
* ``batch_hard_triplet_loss``: a plain-torch batch-hard loss (``cdist ** 2``, label masks,
  ``max``/``min``, ``relu``, ``mean``) and pytorch-metric-learning's ``BatchHardMiner`` +
  ``TripletMarginLoss`` (``LpDistance(power=2)``: squared euclidean like our default metric,
  ``MeanReducer``: the mean over valid anchors, as ours) when that package is installed.
* ``mine_triplets``: pytorch-metric-learning's ``BatchHardMiner`` (batch_hard) and
  ``TripletMarginMiner(type_of_triplets="semihard")`` (semi_hard_window; also the timing reference
  of semi_hard, whose triplets it does not compute: that row's check runs a float64 plain-torch
  TF-Addons semi-hard miner instead). Where pytorch-metric-learning is missing, and at N=4096
  (its semi-hard miner materialises an N^3 uint8 mask and every valid triplet: ~73 GiB), the row
  is timed against a chunked plain-torch miner and its notes say why; at N=4096 a full run on a
  machine with the memory also times PML once, in the check, and compares its triplets.

Peer libraries are optional: a row that needs a missing one is replaced or left out, and the
notes of the family's remaining rows say "reference unavailable" with the reason (nothing raises).

Checks allow for ties: mined triplets and nearest neighbours may differ from the reference only
where float64 distances show the candidates (or the window's edges) to be within rounding of each
other; gradients are compared on the embedding rows no such near-tie touches.

Measured notes: the table has no GFLOP/s column, so the rows that state a rate (GFLOP/s of ours
with 2*N*M*D flops, next to ``torch.mm`` of (4096x128)@(128x4096) timed in the same run), a peak
memory (extra resident memory of one call of ours, measured in a fresh subprocess by resetting
the kernel's high-water mark, ``/proc/self/clear_refs``) or accuracy figures write them into
their notes from their check, which runs once per row before the timing.

``--quick`` (seen in ``sys.argv`` at import, or ``PYVISION_OPS_BENCH_QUICK=1``) shrinks the
k-nearest search and leaves out the CPU N=65536 rows; every other row keeps its shape.
"""

from __future__ import annotations

import functools
import gc
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from pyvision_ops.bench.workloads.core import (
    MIB,
    MODE_AUTOGRAD_GRAD,
    MODE_BACKWARD,
    MODE_FORWARD,
    CheckFailed,
    Inputs,
    LiveNotes as _LiveNotes,
    Workload,
    all_workloads,
    assert_close,
    library,
    median_seconds as _median_seconds,
    random_normal,
    register,
    sum_backward,
)

__all__ = ["QUICK_ENVIRONMENT_VARIABLE", "SPEED_GOALS"]

FAMILY = "distance"

#: Set to 1 (0) to register the --quick (full) rows whatever ``sys.argv`` says; the peak-memory
#: subprocess gets it so that it finds the same rows as its parent.
QUICK_ENVIRONMENT_VARIABLE = "PYVISION_OPS_BENCH_QUICK"

MARGIN = 0.2
DIM = 128
PER_CLASS = 16
#: Class-clustered, L2-normalised embeddings: unit class centres' directions plus this much noise
#: (about 0.7% of the valid triplets fall in the semi-hard window at margin 0.2).
_SPREAD = 1.25

#: Speed goals (reference time / ours), shown in the notes.
SPEED_GOALS: Dict[str, str] = {
    "sqeuclidean fwd": "goal >= 1.0x vs torch.cdist",
    "euclidean fwd+.backward()": "goal >= 1.2x vs torch.cdist",
    "topk faiss": "goal >= 1.0x vs faiss",
    "loss torch": "goal >= 5x vs plain torch",
    "loss pml": "goal >= 6x vs PML miner+loss",
    "mine batch_hard": "goal >= 5x vs PML BatchHardMiner",
    "semi_hard_window": "goal >= 30x vs PML semihard miner",
    "semi_hard": "goal >= 30x vs PML semihard miner (at least as fast as semi_hard_window)",
    "N=65536": "goals < 20 s, < 256 MB extra RSS",
}


def _quick_run() -> bool:
    value = os.environ.get(QUICK_ENVIRONMENT_VARIABLE)
    if value is not None:
        return value.strip() not in ("", "0")
    return "--quick" in sys.argv[1:]


_QUICK = _quick_run()


# --------------------------------------------------------------------------------------------
# peers, memory, measured notes
# --------------------------------------------------------------------------------------------


def _peer_version(module: str, distribution: str) -> Optional[str]:
    """The installed version of an optional reference library, or None; imports nothing."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


_FAISS = _peer_version("faiss", "faiss-cpu")
_PML = _peer_version("pytorch_metric_learning", "pytorch-metric-learning")
_NO_FAISS = "faiss-cpu not installed: the faiss reference is unavailable (pip install faiss-cpu)"
_NO_PML = (
    "pytorch-metric-learning not installed: the PML reference is unavailable "
    "(pip install pytorch-metric-learning)"
)


def _available_memory_bytes() -> Optional[int]:
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB"


def _mib(size: float) -> str:
    return f"{size / MIB:.0f} MB"


def _notes(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


#: Workload name -> setup of small inputs for the same ``ours``: the peak-memory subprocess runs
#: ours on them first, so that one-time costs (thread pools, autograd's worker threads, lazily
#: built tables) are not counted as the call's memory.
_SMALL_SETUPS: Dict[str, Callable[[torch.device], Inputs]] = {}


def _register(live: Optional[_LiveNotes] = None, small_setup: Optional[Callable[[torch.device], Inputs]] = None,
              **fields: Any) -> Workload:
    """Register a row of this family; with ``live``, its notes start as ``live.static`` and the
    check may add measured ones; ``small_setup``: see :data:`_SMALL_SETUPS`."""
    if live is not None:
        fields["notes"] = live.static
    workload = register(Workload(family=FAMILY, **fields))
    if live is not None:
        live.workload = workload
    if small_setup is not None:
        _SMALL_SETUPS[workload.name] = small_setup
    return workload


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_MM_SHAPE = (4096, DIM, 4096)


@functools.lru_cache(maxsize=None)
def _matmul_gflops(device_name: str, threads: int) -> float:
    """torch.mm (4096x128)@(128x4096) fp32 on ``device_name``: the machine's matmul rate this run."""
    device = torch.device(device_name)
    n, k, m = _MM_SHAPE
    a = random_normal((n, k), device, seed=90)
    b = random_normal((k, m), device, seed=91)
    torch.mm(a, b)  # warm-up (thread pool, first-touch of the output)
    seconds = _median_seconds(lambda: torch.mm(a, b), device, 7)
    return 2.0 * n * k * m / seconds / 1e9


_RATE_CACHE: Dict[Tuple[str, str, int], float] = {}


def _note_rate(live: _LiveNotes, key: str, ours: Callable[[Inputs], Any], inputs: Inputs, flops: float) -> None:
    """Time ours a few more times (after the runner's first call) and note its GFLOP/s next to
    torch.mm's; rows sharing ``key`` (same op, inputs and device) share one measurement."""
    device = inputs["device"]
    cache_key = (key, str(device), torch.get_num_threads())
    if cache_key not in _RATE_CACHE:
        first = _median_seconds(lambda: ours(inputs), device, 1)
        calls = 5 if first < 0.2 else (3 if first < 5 else 0)
        _RATE_CACHE[cache_key] = _median_seconds(lambda: ours(inputs), device, calls) if calls else first
    ours_gflops = flops / _RATE_CACHE[cache_key] / 1e9
    mm_gflops = _matmul_gflops(str(device), torch.get_num_threads())
    live.set(
        "rate",
        f"ours {ours_gflops:.0f} GFLOP/s (2NMD = {flops / 1e9:.2f} GFLOP), "
        f"torch.mm (4096x128)@(128x4096) {mm_gflops:.0f} GFLOP/s this run",
    )


# --------------------------------------------------------------------------------------------
# peak extra memory of one call of ours, in a fresh process
# --------------------------------------------------------------------------------------------


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _peak_memory_child(name: str) -> None:
    """Run in the subprocess: set up the row ``name``, run ours once, print the peak extra RSS."""
    import resource

    matches = [workload for workload in all_workloads() if workload.name == name]
    if not matches:
        raise SystemExit(f"no workload named {name!r} in the subprocess")
    workload = matches[0]
    device = torch.device("cpu")
    from pyvision_ops import _extension

    _extension.ensure_loaded()
    small_setup = _SMALL_SETUPS.get(name)
    if small_setup is not None:
        workload.ours(small_setup(device))  # one-time costs outside the measurement
    torch.mm(torch.ones(64, 64), torch.ones(64, 64))  # the thread pool too
    inputs = workload.setup(device)
    gc.collect()
    method = "VmHWM reset through /proc/self/clear_refs"
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as clear_refs:
            clear_refs.write("5")
        baseline_kib = _status_kib("VmRSS")
        if baseline_kib is None:
            raise OSError("no VmRSS")
    except OSError:
        method = "ru_maxrss delta (a lower bound: setup's own peak hides anything below it)"
        baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    workload.ours(inputs)
    seconds = time.perf_counter() - start
    peak_kib = _status_kib("VmHWM") if method.startswith("VmHWM") else None
    if peak_kib is None:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"extra_bytes": max(0, peak_kib - baseline_kib) * 1024, "seconds": seconds, "method": method}))


def _measure_peak_memory(workload: Workload, timeout: float = 900.0) -> Dict[str, Any]:
    code = (
        "import sys, torch\n"
        "torch.set_num_threads(int(sys.argv[2]))\n"
        "from pyvision_ops.bench.workloads import distance\n"
        "distance._peak_memory_child(sys.argv[1])\n"
    )
    environment = dict(os.environ)
    environment[QUICK_ENVIRONMENT_VARIABLE] = "1" if _QUICK else "0"
    completed = subprocess.run(
        [sys.executable, "-c", code, workload.name, str(torch.get_num_threads())],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )
    if completed.returncode != 0:
        lines = (completed.stderr or completed.stdout).strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {completed.returncode}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _note_peak_memory(live: _LiveNotes, inputs: Inputs, goal_bytes: Optional[int] = None) -> None:
    """Peak extra RSS of one call of ours (CPU: fresh subprocess; CUDA: max_memory_allocated)."""
    device = inputs["device"]
    if device.type != "cpu":
        return
    if live.workload is None:
        return
    try:
        measured = _measure_peak_memory(live.workload)
    except Exception as error:  # the row's numbers still stand; the memory note says why it is missing
        live.set("memory", f"peak extra RSS: unavailable ({type(error).__name__}: {error})")
        return
    extra = measured["extra_bytes"]
    goal = ""
    if goal_bytes is not None:
        goal = f", goal < {_mib(goal_bytes)}: {'met' if extra < goal_bytes else 'MISSED'}"
    how = "" if measured["method"].startswith("VmHWM") else f" ({measured['method']})"
    live.set(
        "memory",
        f"peak extra RSS of ours {_mib(extra)} (fresh process, one call {measured['seconds']:.2f} s{goal}){how}",
    )


def _note_cuda_peak(live: _LiveNotes, ours: Callable[[Inputs], Any], inputs: Inputs) -> None:
    device = inputs["device"]
    if device.type != "cuda":
        return
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = ours(inputs)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - baseline
    del result
    live.set("memory", f"peak extra CUDA memory of ours {_mib(peak)} (max_memory_allocated)")


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def _clustered(n: int, device: torch.device, seed: int, with_grad: bool = False) -> Inputs:
    """``n`` L2-normalised embeddings of dimension 128 in n/16 classes of 16, labels shuffled."""
    generator = torch.Generator().manual_seed(seed)
    classes = n // PER_CLASS
    centres = torch.randn((classes, DIM), generator=generator)
    labels = (torch.arange(n) // PER_CLASS)[torch.randperm(n, generator=generator)]
    embeddings = F.normalize(centres[labels] + _SPREAD * torch.randn((n, DIM), generator=generator), dim=1)
    return {
        "device": device,
        "embeddings": embeddings.to(device).requires_grad_(with_grad),
        "labels": labels.to(device),
    }


def _describe_clustered(n: int) -> str:
    return f"N={n} ({n // PER_CLASS} classes x {PER_CLASS}), D={DIM} fp32, unit-norm clustered, margin {MARGIN}"


def _pml_objects(inputs: Inputs) -> Inputs:
    from pytorch_metric_learning import distances, losses, miners, reducers

    distance = distances.LpDistance(power=2, normalize_embeddings=False)  # squared euclidean, as given
    inputs["pml_batch_hard"] = miners.BatchHardMiner(distance=distance)
    inputs["pml_loss"] = losses.TripletMarginLoss(margin=MARGIN, distance=distance, reducer=reducers.MeanReducer())
    inputs["pml_semihard"] = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard", distance=distance)
    return inputs


# --------------------------------------------------------------------------------------------
# plain-torch references (what a user writes) and float64 truths (for the checks)
# --------------------------------------------------------------------------------------------


def _rows_per_chunk(columns: int, budget_elements: int = 2**26) -> int:
    return max(1, budget_elements // max(1, columns))


def _torch_topk(queries: torch.Tensor, database: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """torch.cdist + torch.topk, chunked over the queries (each chunk's distances <= 256 MiB)."""
    values, indices = [], []
    for chunk in queries.split(_rows_per_chunk(database.shape[0])):
        chunk_values, chunk_indices = torch.cdist(chunk, database).topk(k, dim=1, largest=False)
        values.append(chunk_values.pow(2))
        indices.append(chunk_indices)
    return torch.cat(values), torch.cat(indices)


def _torch_batch_hard_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """Batch-hard triplet loss, squared euclidean, the usual plain-torch way."""
    distances = torch.cdist(embeddings, embeddings).pow(2)
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    negative = ~same
    hardest_positive = distances.masked_fill(~positive, float("-inf")).max(dim=1).values
    hardest_negative = distances.masked_fill(~negative, float("inf")).min(dim=1).values
    valid = positive.any(dim=1) & negative.any(dim=1)
    return F.relu(hardest_positive - hardest_negative + margin)[valid].mean()


def _chunk_masks(labels: torch.Tensor, anchors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    same = labels[anchors].unsqueeze(1) == labels.unsqueeze(0)
    positive = same.clone()
    positive[torch.arange(len(anchors), device=labels.device), anchors] = False
    return positive, ~same


def _torch_mine_batch_hard(embeddings: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Batch-hard mining in plain torch, chunked over the anchors (cdist ** 2, masks, max/min)."""
    n = len(labels)
    anchors_out, positives_out, negatives_out = [], [], []
    all_anchors = torch.arange(n, device=labels.device)
    for anchors in all_anchors.split(_rows_per_chunk(n)):
        distances = torch.cdist(embeddings[anchors], embeddings).pow(2)
        positive, negative = _chunk_masks(labels, anchors)
        positives = distances.masked_fill(~positive, float("-inf")).argmax(dim=1)
        negatives = distances.masked_fill(~negative, float("inf")).argmin(dim=1)
        valid = positive.any(dim=1) & negative.any(dim=1)
        anchors_out.append(anchors[valid])
        positives_out.append(positives[valid])
        negatives_out.append(negatives[valid])
    return torch.cat(anchors_out), torch.cat(positives_out), torch.cat(negatives_out)


def _pair_rows(distances: torch.Tensor, positive: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(local anchor, positive) of every positive pair of a chunk, and their distances."""
    local, positives = positive.nonzero(as_tuple=True)
    return local, positives, distances[local, positives]


def _sorted_negatives(
    distances: torch.Tensor, negative: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each anchor's negatives by ascending distance (stable: equal distances by index), the other
    columns last as +inf; returns (sorted distances, their columns, negatives per anchor)."""
    values, order = distances.masked_fill(~negative, float("inf")).sort(dim=1, stable=True)
    return values, order, negative.sum(dim=1)


def _anchor_chunks(n: int, device: torch.device) -> List[torch.Tensor]:
    return list(torch.arange(n, device=device).split(_rows_per_chunk(n, 2**22)))


class _Pairs:
    """The positive pairs of a chunk of anchors, and binary searches of their distances in each
    anchor's sorted negatives (one padded (anchors, most positives) search, not one per column)."""

    def __init__(self, positive: torch.Tensor) -> None:
        device = positive.device
        self.local, self.positives = positive.nonzero(as_tuple=True)
        counts = positive.sum(dim=1)
        starts = torch.cumsum(counts, 0) - counts
        self.rank = torch.arange(len(self.local), device=device) - starts[self.local]
        width = max(1, int(counts.max())) if len(counts) else 1
        self.padded = torch.zeros((positive.shape[0], width), dtype=torch.long, device=device)
        self.padded[self.local, self.rank] = self.positives

    def search(
        self, values: torch.Tensor, distances: torch.Tensor, shift: float = 0.0, right: bool = True
    ) -> torch.Tensor:
        """Per pair (a, p): how many of a's sorted ``values`` are <= d(a,p) + shift (``right``) or < it."""
        bounds = distances.gather(1, self.padded)
        if shift:
            bounds = bounds + shift
        return torch.searchsorted(values, bounds, right=right)[self.local, self.rank]


def _torch_mine_window(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = MARGIN
) -> Tuple[torch.Tensor, ...]:
    """Every (a, p, n) with d(a,p) < d(a,n) <= d(a,p) + margin (PML's semihard TripletMarginMiner
    without its N^3 mask), in lexicographic order: chunked over the anchors, each anchor's
    negatives sorted once, each pair's window found by binary search."""
    n = len(labels)
    out: List[Tuple[torch.Tensor, ...]] = []
    for anchors in _anchor_chunks(n, labels.device):
        distances = torch.cdist(embeddings[anchors], embeddings).pow(2)
        positive, negative = _chunk_masks(labels, anchors)
        values, order, _ = _sorted_negatives(distances, negative)
        pairs = _Pairs(positive)
        local, positives = pairs.local, pairs.positives
        lower = pairs.search(values, distances)
        upper = pairs.search(values, distances, margin)
        counts = upper - lower
        pair = torch.repeat_interleave(torch.arange(len(local), device=labels.device), counts)
        starts = torch.cumsum(counts, 0) - counts
        rank = lower[pair] + torch.arange(len(pair), device=labels.device) - starts[pair]
        negatives = order[local[pair], rank]
        keys = (local[pair] * n + positives[pair]) * n + negatives
        keys = keys.sort().values
        out.append((anchors[keys // (n * n)], (keys // n) % n, keys % n))
    return tuple(torch.cat([part[i] for part in out]) for i in range(3))


def _torch_mine_semi_hard(embeddings: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """TF-Addons / FaceNet semi-hard mining in plain torch (the nearest negative farther than the
    positive, else the farthest negative): chunked over the anchors, negatives sorted once per
    anchor, binary search per pair."""
    n = len(labels)
    out: List[Tuple[torch.Tensor, ...]] = []
    for anchors in _anchor_chunks(n, labels.device):
        distances = torch.cdist(embeddings[anchors], embeddings).pow(2)
        positive, negative = _chunk_masks(labels, anchors)
        values, order, count = _sorted_negatives(distances, negative)
        positive &= (count > 0).unsqueeze(1)
        pairs = _Pairs(positive)
        local, positives = pairs.local, pairs.positives
        first_farther = pairs.search(values, distances)
        pair_count = count[local]
        has = first_farther < pair_count
        rank = torch.where(has, first_farther, pair_count - 1)
        out.append((anchors[local], positives, order[local, rank]))
    return tuple(torch.cat([part[i] for part in out]) for i in range(3))


def _float64_sq_distances(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Squared distances in float64 by the matmul expansion (error ~1e-16 * |x|^2, far below the
    float32 rounding the checks allow for); not for the near-duplicate accuracy row."""
    rows2 = (rows * rows).sum(dim=1, keepdim=True)
    columns2 = (columns * columns).sum(dim=1).unsqueeze(0)
    return (rows2 + columns2 - 2.0 * rows @ columns.T).clamp_min_(0)


def _pair_sq_distances(x64: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return (x64[first] - x64[second]).pow(2).sum(dim=-1)


def _tie_tolerance(x64: torch.Tensor) -> float:
    """How close two float64 distances must be for float32 kernels to order them either way:
    4e-5 of (|x|^2 + |y|^2), the scale of a float32 distance's rounding (with margin for both)."""
    return 8e-5 * max(float((x64 * x64).sum(dim=1).max()), 1e-30)


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------


def _check_tensor(label: str, tensor: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise CheckFailed(f"{label}: ours returned {type(tensor).__name__}, expected a Tensor")
    if tensor.dtype != dtype:
        raise CheckFailed(f"{label}: dtype {tensor.dtype}, expected {dtype}")
    if tensor.device != device:
        raise CheckFailed(f"{label}: on {tensor.device}, the inputs are on {device}")
    return tensor


def _scaled_close(
    label: str, ours: torch.Tensor, reference: torch.Tensor, tolerance: float, mask: Optional[torch.Tensor] = None
) -> float:
    """Close within ``tolerance`` of the reference's largest magnitude (on ``mask``'s entries)."""
    ours, reference = ours.detach(), reference.detach()
    if mask is not None:
        ours, reference = ours[mask], reference[mask]
    scale = float(reference.abs().max()) if reference.numel() else 1.0
    return assert_close(label, ours, reference, atol=tolerance * (scale or 1.0), rtol=tolerance)


def _triplets(label: str, result: Any, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise CheckFailed(f"{label}: expected (anchor, positive, negative), got {type(result).__name__}")
    parts = [_check_tensor(f"{label} {name}", part, torch.int64, device) for name, part in zip("apn", result)]
    if any(part.dim() != 1 or len(part) != len(parts[0]) for part in parts):
        raise CheckFailed(f"{label}: anchor/positive/negative must be 1-D of equal length, got "
                          f"{[tuple(part.shape) for part in parts]}")
    return parts[0].cpu(), parts[1].cpu(), parts[2].cpu()


def _check_labels_valid(label: str, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, labels: torch.Tensor) -> None:
    size = len(labels)
    for name, index in (("anchor", a), ("positive", p), ("negative", n)):
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= size):
            raise CheckFailed(f"{label}: {name} index out of range [0, {size})")
    bad = (labels[a] != labels[p]) | (a == p) | (labels[a] == labels[n])
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0, 0])
        raise CheckFailed(f"{label}: {int(bad.sum())} triplets are not (anchor, positive, negative); first "
                          f"({int(a[first])}, {int(p[first])}, {int(n[first])})")


def _batch_hard_truth(embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor) -> "_BatchHardTruth":
    """:class:`_BatchHardTruth`, remembered for the last inputs (the loss rows share theirs)."""
    x = embeddings.detach().cpu()
    fingerprint = (
        tuple(x.shape),
        float(x.double().sum()),
        float((x.double() * x.double()).sum(dim=1)[::7].sum()),
        int(labels.cpu().long().mul(torch.arange(1, len(labels) + 1)).sum()),
        anchors.cpu().numpy().tobytes(),
    )
    cached = _TRUTH_CACHE.get("last")
    if cached is None or cached[0] != fingerprint:
        _TRUTH_CACHE["last"] = (fingerprint, _BatchHardTruth(embeddings, labels, anchors))
    return _TRUTH_CACHE["last"][1]


_TRUTH_CACHE: Dict[str, Tuple[Any, "_BatchHardTruth"]] = {}


class _BatchHardTruth:
    """float64 batch-hard selection of some anchors, with the near-ties float32 may order either way."""

    def __init__(
        self, embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, margin: float = MARGIN
    ) -> None:
        x64 = embeddings.detach().cpu().double()
        labels = labels.cpu()
        self.x64, self.labels, self.anchors = x64, labels, anchors
        self.tolerance = _tie_tolerance(x64)
        count = len(labels)
        hardest_positive, hardest_negative, valid, ambiguous = [], [], [], []
        self.excluded_rows = torch.zeros(count, dtype=torch.bool)
        for chunk in anchors.split(max(1, _rows_per_chunk(count, 2**25))):
            distances = _float64_sq_distances(x64[chunk], x64)
            positive, negative = _chunk_masks(labels, chunk)
            hp = distances.masked_fill(~positive, float("-inf")).max(dim=1).values
            hn = distances.masked_fill(~negative, float("inf")).min(dim=1).values
            ok = positive.any(dim=1) & negative.any(dim=1)
            near_p = positive & (distances >= hp.unsqueeze(1) - self.tolerance)
            near_n = negative & (distances <= hn.unsqueeze(1) + self.tolerance)
            tie = ok & ((near_p.sum(dim=1) > 1) | (near_n.sum(dim=1) > 1))
            kink = ok & ((hp - hn + margin).abs() <= self.tolerance)
            touched = tie | kink
            self.excluded_rows[chunk[touched]] = True
            self.excluded_rows |= near_p[touched].any(dim=0) | near_n[touched].any(dim=0)
            hardest_positive.append(hp)
            hardest_negative.append(hn)
            valid.append(ok)
            ambiguous.append(tie)
        self.hardest_positive = torch.cat(hardest_positive)
        self.hardest_negative = torch.cat(hardest_negative)
        self.valid = torch.cat(valid)
        self.ambiguous = torch.cat(ambiguous)

    def check(self, label: str, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, sampled: bool) -> float:
        """Check one side's batch-hard triplets of ``self.anchors`` (all anchors, or a sorted sample of
        them); returns the largest distance by which a choice misses the float64 optimum."""
        expected = self.anchors[self.valid]
        if sampled:  # a is ascending: find each sampled anchor's triplet
            position = torch.searchsorted(a, expected)
            found = position < len(a)
            found[found.clone()] = a[position[found]] == expected[found]
            if not bool(found.all()):
                raise CheckFailed(f"{label}: {int((~found).sum())} sampled valid anchors have no triplet")
            a, p, n = a[position], p[position], n[position]
        elif not torch.equal(a, expected):
            raise CheckFailed(f"{label}: anchors must be the {len(expected)} valid anchors in ascending order, got "
                              f"{len(a)} anchors")
        _check_labels_valid(label, a, p, n, self.labels)
        d_ap = _pair_sq_distances(self.x64, a, p)
        d_an = _pair_sq_distances(self.x64, a, n)
        hp, hn = self.hardest_positive[self.valid], self.hardest_negative[self.valid]
        error = torch.maximum(hp - d_ap, d_an - hn)
        bad = error > self.tolerance
        if bool(bad.any()):
            first = int(torch.nonzero(bad)[0, 0])
            raise CheckFailed(
                f"{label}: {int(bad.sum())} of {len(a)} anchors have a positive not the farthest or a negative not "
                f"the nearest (beyond ties of {self.tolerance:.1e}); first anchor {int(a[first])}: positive "
                f"{int(p[first])} at {float(d_ap[first]):.6g} (farthest {float(hp[first]):.6g}), negative "
                f"{int(n[first])} at {float(d_an[first]):.6g} (nearest {float(hn[first]):.6g})",
                float(error.max()),
            )
        return float(error.clamp_min(0).max()) if len(error) else 0.0


def _mine_batch_hard_check(live: _LiveNotes, sample: Optional[int] = None) -> Callable[[Any, Any, Inputs], float]:
    def check(ours: Any, reference: Any, inputs: Inputs) -> float:
        device = inputs["device"]
        labels = inputs["labels"]
        count = len(labels)
        if sample is None:
            anchors = torch.arange(count)
        else:
            anchors = torch.randperm(count, generator=torch.Generator().manual_seed(7))[:sample].sort().values
        truth = _batch_hard_truth(inputs["embeddings"], labels, anchors)
        a, p, n = _triplets("ours", ours, device)
        if len(a) and not bool((a[1:] > a[:-1]).all()):
            raise CheckFailed("ours: anchors must be strictly ascending (one triplet per valid anchor)")
        if sample is not None and len(a) != _valid_count(labels):
            raise CheckFailed(f"ours: {len(a)} triplets, expected one per valid anchor ({_valid_count(labels)})")
        error = truth.check("ours", a, p, n, sampled=sample is not None)
        text = f"checked {'all' if sample is None else sample} anchors against float64"
        if reference is not None:
            ra, rp, rn = _triplets("reference", tuple(reference), device)
            truth.check("reference", ra, rp, rn, sampled=False)
            same = int(((p == rp) & (n == rn)).sum())
            text = f"same triplet as the reference for {same} of {len(a)} anchors"
            if same < len(a):
                text += " (the others: float32 near-ties)"
        live.set("check", text)
        return error

    return check


def _valid_count(labels: torch.Tensor) -> int:
    labels = labels.cpu()
    _, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
    has_positive = counts[inverse] > 1
    has_negative = counts[inverse] < len(labels)
    return int((has_positive & has_negative).sum())


def _loss_check(live: Optional[_LiveNotes], tolerance: float = 1e-4) -> Callable[[Any, Any, Inputs], float]:
    """(loss, grad) against (loss, grad): the loss within ``tolerance``, the gradient on the rows
    that no float32 near-tie (selection or hinge) touches."""

    def check(ours: Any, reference: Any, inputs: Inputs) -> float:
        ours_loss, ours_grad = ours[0], ours[1]
        reference_loss, reference_grad = reference[0], reference[1]
        device = inputs["device"]
        _check_tensor("loss", ours_loss, torch.float32, device)
        if ours_loss.dim() != 0:
            raise CheckFailed(f"loss: expected a scalar, got shape {tuple(ours_loss.shape)}")
        error = assert_close("loss", ours_loss.detach().cpu(), reference_loss.detach().cpu().reshape(()),
                             atol=1e-6, rtol=tolerance)
        _check_tensor("grad", ours_grad, torch.float32, device)
        labels = inputs["labels"]
        truth = _batch_hard_truth(inputs["embeddings"], labels, torch.arange(len(labels)))
        keep = ~truth.excluded_rows
        label = "grad (rows without near-ties)"
        error = max(error, _scaled_close(label, ours_grad.cpu(), reference_grad.cpu(), tolerance, keep))
        if live is not None:
            text = f"grad compared on {int(keep.sum())} of {len(keep)} rows (the others touch float32 near-ties)"
            live.set("check", text)
        return error

    return check


def _keys(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, count: int) -> torch.Tensor:
    return (a * count + p) * count + n


def _window_check(live: _LiveNotes, margin: float = MARGIN) -> Callable[[Any, Any, Inputs], float]:
    """Ours' semi_hard_window triplets against the reference's, as sets: a triplet in one and not in
    the other must sit within float32 rounding of the window's edges (float64 distances)."""

    def check(ours: Any, reference: Any, inputs: Inputs) -> float:
        device = inputs["device"]
        labels = inputs["labels"].cpu()
        count = len(labels)
        a, p, n = _triplets("ours", ours, device)
        ra, rp, rn = _triplets("reference", tuple(reference), device)
        _check_labels_valid("ours", a, p, n, labels)
        keys = _keys(a, p, n, count)
        if len(keys) > 1 and not bool((keys[1:] > keys[:-1]).all()):
            raise CheckFailed("ours: triplets must be unique and in lexicographic (a, p, n) order")
        reference_keys = _keys(ra, rp, rn, count).sort().values
        x64 = inputs["embeddings"].detach().cpu().double()
        tolerance = _tie_tolerance(x64)
        worst = 0.0
        differing = 0
        sides = (("only in ours", keys, reference_keys), ("only in the reference", reference_keys, keys))
        for label, mine, theirs in sides:
            extra = mine[~torch.isin(mine, theirs)]
            differing += len(extra)
            if not len(extra):
                continue
            ea, ep, en = extra // (count * count), (extra // count) % count, extra % count
            gap = _pair_sq_distances(x64, ea, en) - _pair_sq_distances(x64, ea, ep)
            edge = torch.minimum(gap.abs(), (gap - margin).abs())
            worst = max(worst, float(edge.max()))
            bad = edge > tolerance
            if bool(bad.any()):
                first = int(torch.nonzero(bad)[0, 0])
                raise CheckFailed(
                    f"{int(bad.sum())} triplets {label} lie clear of the window's edges (tolerance {tolerance:.1e}); "
                    f"first ({int(ea[first])}, {int(ep[first])}, {int(en[first])}): d(a,n) - d(a,p) = "
                    f"{float(gap[first]):.6g}, window (0, {margin}]",
                    float(edge.max()),
                )
        text = f"ours {len(keys)} triplets, reference {len(reference_keys)}"
        if differing:
            text += f"; {differing} differ, all at the window's edges within float32 rounding"
        live.set("check", text)
        return worst

    return check


def _semi_hard_truth_check(live: _LiveNotes) -> Callable[[Any, Any, Inputs], float]:
    """Ours' semi_hard triplets against a float64 TF-Addons semi-hard miner (the timed reference,
    PML's window miner or the plain-torch one, computes other triplets or is float32)."""

    def check(ours: Any, reference: Any, inputs: Inputs) -> float:
        device = inputs["device"]
        labels = inputs["labels"].cpu()
        count = len(labels)
        a, p, n = _triplets("ours", ours, device)
        _check_labels_valid("ours", a, p, n, labels)
        x64 = inputs["embeddings"].detach().cpu().double()
        tolerance = _tie_tolerance(x64)
        expected_a, expected_p, expected_n, ambiguous = [], [], [], []
        for anchors in _anchor_chunks(count, torch.device("cpu")):
            distances = _float64_sq_distances(x64[anchors], x64)
            positive, negative = _chunk_masks(labels, anchors)
            values, order, negatives_count = _sorted_negatives(distances, negative)
            positive &= (negatives_count > 0).unsqueeze(1)
            pairs = _Pairs(positive)
            local, positives = pairs.local, pairs.positives
            first_farther = pairs.search(values, distances)
            pair_count = negatives_count[local]
            has = first_farther < pair_count
            rank = torch.where(has, first_farther, pair_count - 1)
            # near-ties: a negative within rounding of d(a,p) (the edge), or the runner-up (the
            # next farther one, or for the farthest the one before it) within rounding of the choice
            below_edge = pairs.search(values, distances, -tolerance, right=False)
            at_edge = pairs.search(values, distances, tolerance) > below_edge
            chosen = values[local, rank]
            neighbour = torch.where(has, rank + 1, rank - 1)
            neighbour_ok = (neighbour >= 0) & (neighbour < pair_count)
            neighbour_value = values[local, neighbour.clamp(0, count - 1)]
            runner_up = neighbour_ok & ((neighbour_value - chosen).abs() <= tolerance)
            expected_a.append(anchors[local])
            expected_p.append(positives)
            expected_n.append(order[local, rank])
            ambiguous.append(at_edge | runner_up)
        ea, ep, en, loose = (torch.cat(parts) for parts in (expected_a, expected_p, expected_n, ambiguous))
        if len(a) != len(ea) or not torch.equal(a, ea) or not torch.equal(p, ep):
            raise CheckFailed(f"ours: {len(a)} triplets; expected one per (anchor, positive) pair of a valid anchor, "
                              f"{len(ea)}, ordered by (a, p)")
        wrong = (n != en) & ~loose
        gap = (_pair_sq_distances(x64, a, n) - _pair_sq_distances(x64, a, en)).abs()
        if bool(wrong.any()):
            first = int(torch.nonzero(wrong)[0, 0])
            raise CheckFailed(
                f"{int(wrong.sum())} of {len(a)} semi-hard negatives differ from float64 TF-Addons semantics away "
                f"from ties; first (a={int(a[first])}, p={int(p[first])}): ours n={int(n[first])}, "
                f"expected {int(en[first])}",
                float(gap[wrong].max()),
            )
        live.set("check", f"{int((n == en).sum())} of {len(a)} negatives as float64 TF-Addons semi-hard; "
                          f"{int(loose.sum())} pairs have float32 near-ties")
        return float(gap[~loose].max()) if bool((~loose).any()) else 0.0

    return check


def _topk_check(live: _LiveNotes, numpy_reference: bool) -> Callable[[Any, Any, Inputs], float]:
    """Same k nearest neighbours up to ties, values within float32 rounding of float64."""

    def check(ours: Any, reference: Any, inputs: Inputs) -> float:
        device = inputs["device"]
        queries, database, k = inputs["queries"], inputs["database"], inputs["k"]
        if not isinstance(ours, tuple) or len(ours) != 2:
            raise CheckFailed(f"ours: expected (values, indices), got {type(ours).__name__}")
        values = _check_tensor("values", ours[0], queries.dtype, device).cpu()
        indices = _check_tensor("indices", ours[1], torch.int64, device).cpu()
        shape = (queries.shape[0], k)
        if tuple(values.shape) != shape or tuple(indices.shape) != shape:
            raise CheckFailed(f"values {tuple(values.shape)}, indices {tuple(indices.shape)}, expected {shape}")
        if numpy_reference:
            reference_values = torch.from_numpy(reference[0])
            reference_indices = torch.from_numpy(reference[1]).long()
        else:
            reference_values, reference_indices = reference[0].cpu(), reference[1].cpu()
        if int(indices.min()) < 0 or int(indices.max()) >= database.shape[0]:
            raise CheckFailed("indices out of range")
        ordered = indices.sort(dim=1).values
        if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
            raise CheckFailed("a query's indices repeat")
        if bool((values[:, 1:] < values[:, :-1]).any()):
            raise CheckFailed("values are not sorted ascending")
        q64, db64 = queries.cpu().double(), database.cpu().double()
        truth = (q64.unsqueeze(1) - db64[indices]).pow(2).sum(dim=-1)
        reference_truth = (q64.unsqueeze(1) - db64[reference_indices]).pow(2).sum(dim=-1)
        # float32 rounding: ours <= 1e-5 of the value (the contract), a matmul expansion (faiss,
        # cdist) ~1e-6 of |q|^2 + |db|^2.
        scale = float((q64 * q64).sum(1).max() + (db64 * db64).sum(1).max())
        assert_close("values vs float64", values, truth.float(), atol=1e-6 * scale, rtol=5e-5)
        tolerance = 2e-5 * float(truth.max()) + 4e-6 * scale
        # The same neighbours up to ties: both sides' sorted true distances agree.
        gap = (truth.sort(dim=1).values - reference_truth.sort(dim=1).values).abs()
        if float(gap.max()) > tolerance:
            row = int(gap.max(dim=1).values.argmax())
            raise CheckFailed(
                f"query {row}: neighbours {indices[row].tolist()} at float64 distances "
                f"{[round(v, 5) for v in truth[row].tolist()]}, reference {reference_indices[row].tolist()} at "
                f"{[round(v, 5) for v in reference_truth[row].tolist()]} (tolerance {tolerance:.1e})",
                float(gap.max()),
            )
        same = int((ordered == reference_indices.sort(dim=1).values).all(dim=1).sum())
        text = f"same neighbour set for {same} of {shape[0]} queries"
        if same < shape[0]:
            text += f" (the others: ties within {tolerance:.0e})"
        live.set("check", text)
        return float((values.double() - reference_values.double()).abs().max())

    return check


# --------------------------------------------------------------------------------------------
# pairwise_distance
# --------------------------------------------------------------------------------------------

_PAIR_SHAPE = (4096, 4096, DIM)  # N, M, D


def _pair_inputs(device: torch.device, with_grad: bool) -> Inputs:
    n, m, d = _PAIR_SHAPE
    inputs: Inputs = {
        "device": device,
        "x": random_normal((n, d), device, seed=11).requires_grad_(with_grad),
        "y": random_normal((m, d), device, seed=12).requires_grad_(with_grad),
    }
    if with_grad:
        inputs["grad_out"] = random_normal((n, m), device, seed=13)
    return inputs


def _register_pairwise_distance() -> None:
    n, m, d = _PAIR_SHAPE
    description = f"x ({n}, {d}), y ({m}, {d}) fp32 standard normal"
    variant = f"sqeuclidean {n}x{m}x{d}"
    live = _LiveNotes(SPEED_GOALS["sqeuclidean fwd"])

    def ours(inputs: Inputs) -> torch.Tensor:
        return library().pairwise_distance(inputs["x"], inputs["y"], metric="sqeuclidean")

    def check(ours_result: Any, reference: Any, inputs: Inputs) -> float:
        _check_tensor("distances", ours_result, torch.float32, inputs["device"])
        error = _scaled_close("sqeuclidean vs cdist**2", ours_result, reference.pow(2), 2e-5)
        _note_rate(live, variant, ours, inputs, 2.0 * n * m * d)
        return error

    _register(
        live,
        op="pairwise_distance",
        variant=variant,
        description=description,
        mode=MODE_FORWARD,
        setup=lambda device: _pair_inputs(device, with_grad=False),
        ours=ours,
        reference=lambda inputs: torch.cdist(inputs["x"], inputs["y"]),
        check=check,
        ours_label="pairwise_distance(x, y)",
        reference_label="torch.cdist(x, y) (** 2 in the check)",
    )

    euclidean = f"euclidean {n}x{m}x{d}"

    def forward(inputs: Inputs) -> torch.Tensor:
        return library().pairwise_distance(inputs["x"], inputs["y"], metric="euclidean")

    def ours_grad(inputs: Inputs) -> Tuple[torch.Tensor, ...]:
        out = forward(inputs)
        return (out,) + torch.autograd.grad(out, (inputs["x"], inputs["y"]), inputs["grad_out"])

    def reference_grad(inputs: Inputs) -> Tuple[torch.Tensor, ...]:
        out = torch.cdist(inputs["x"], inputs["y"])
        return (out,) + torch.autograd.grad(out, (inputs["x"], inputs["y"]), inputs["grad_out"])

    def ours_backward(inputs: Inputs) -> Tuple[torch.Tensor, ...]:
        inputs["y"].grad = None
        out, grad_x = sum_backward(inputs["x"], lambda: forward(inputs))
        return out, grad_x, inputs["y"].grad

    def reference_backward(inputs: Inputs) -> Tuple[torch.Tensor, ...]:
        inputs["y"].grad = None
        out, grad_x = sum_backward(inputs["x"], lambda: torch.cdist(inputs["x"], inputs["y"]))
        return out, grad_x, inputs["y"].grad

    def grad_check(ours_result: Any, reference: Any, inputs: Inputs) -> float:
        error = 0.0
        for label, mine, theirs in zip(("distances", "grad x", "grad y"), ours_result, reference):
            _check_tensor(label, mine, torch.float32, inputs["device"])
            error = max(error, _scaled_close(label, mine, theirs, 1e-4))
        return error

    for mode, ours_function, reference_function, ours_label, reference_label, notes in (
        (MODE_AUTOGRAD_GRAD, ours_grad, reference_grad, "pairwise_distance(x, y, 'euclidean') + grad x, y",
         "torch.cdist(x, y) + grad x, y", "autograd.grad to x and y with a fixed dense upstream gradient"),
        (MODE_BACKWARD, ours_backward, reference_backward, "pairwise_distance(x, y, 'euclidean').sum().backward()",
         "torch.cdist(x, y).sum().backward()", _notes(SPEED_GOALS["euclidean fwd+.backward()"],
                                                      "x and y require grad; .grad set to None each call")),
    ):
        _register(
            op="pairwise_distance",
            variant=euclidean,
            description=description,
            mode=mode,
            setup=lambda device: _pair_inputs(device, with_grad=True),
            ours=ours_function,
            reference=reference_function,
            check=grad_check,
            ours_label=ours_label,
            reference_label=reference_label,
            notes=notes,
        )

    _register_accuracy_row()


_ACCURACY_N = 512
_ACCURACY_SCALE = 1e3
_ACCURACY_OFFSET = 1e-2


def _accuracy_inputs(device: torch.device) -> Inputs:
    generator = torch.Generator().manual_seed(17)
    centre = _ACCURACY_SCALE * torch.randn((1, DIM), generator=generator)
    x = centre + _ACCURACY_OFFSET * torch.randn((_ACCURACY_N, DIM), generator=generator)
    y = centre + _ACCURACY_OFFSET * torch.randn((_ACCURACY_N, DIM), generator=generator)
    truth = torch.cdist(x.double(), y.double(), compute_mode="donot_use_mm_for_euclid_dist")  # explicit differences
    return {"device": device, "x": x.to(device), "y": y.to(device), "truth": truth}


def _register_accuracy_row() -> None:
    live = _LiveNotes("accuracy row: the error columns are vs float64 of the same float32 inputs (goal: ours <= 1e-5)")

    def check(ours: Any, reference: Any, inputs: Inputs) -> float:
        _check_tensor("distances", ours, torch.float32, inputs["device"])
        truth = inputs["truth"]
        if tuple(ours.shape) != tuple(truth.shape):
            raise CheckFailed(f"shape {tuple(ours.shape)}, expected {tuple(truth.shape)}")
        denominator = truth.clamp_min(1e-300)
        ours_relative = float(((ours.cpu().double() - truth).abs() / denominator).max())
        cdist_relative = float(((reference.cpu().double() - truth).abs() / denominator).max())
        live.set("accuracy", f"max rel error vs float64: ours {ours_relative:.1e}, torch.cdist {cdist_relative:.1e}")
        if not ours_relative <= 1e-5:
            raise CheckFailed(f"ours' max relative error vs float64 is {ours_relative:.3g} (> 1e-5)",
                              float((ours.cpu().double() - truth).abs().max()))
        return float((ours.cpu().double() - truth).abs().max())

    _register(
        live,
        op="pairwise_distance",
        variant=f"euclidean accuracy near-duplicates 1e3 N={_ACCURACY_N}",
        description=(f"x, y ({_ACCURACY_N}, {DIM}) fp32: one centre ~N(0, {_ACCURACY_SCALE:g}^2) per coordinate plus "
                     f"offsets ~N(0, {_ACCURACY_OFFSET:g}^2)"),
        mode=MODE_FORWARD,
        setup=_accuracy_inputs,
        ours=lambda inputs: library().pairwise_distance(inputs["x"], inputs["y"], metric="euclidean"),
        reference=lambda inputs: torch.cdist(inputs["x"], inputs["y"]),
        check=check,
        ours_label="pairwise_distance(x, y, 'euclidean')",
        reference_label="torch.cdist(x, y)",
    )


# --------------------------------------------------------------------------------------------
# pairwise_topk
# --------------------------------------------------------------------------------------------

_TOPK_K = 10


def _topk_shape() -> Tuple[int, int]:
    return (1024, 8192) if _QUICK else (8192, 65536)


def _topk_inputs(device: torch.device, queries: int, database: int, with_faiss: bool) -> Inputs:
    inputs: Inputs = {
        "device": device,
        "queries": random_normal((queries, DIM), device, seed=21),
        "database": random_normal((database, DIM), device, seed=22),
        "k": _TOPK_K,
    }
    if with_faiss:
        import faiss

        index = faiss.IndexFlatL2(DIM)
        index.add(inputs["database"].cpu().numpy())
        inputs["faiss_index"] = index
        inputs["queries_numpy"] = inputs["queries"].cpu().numpy().copy()
    return inputs


def _faiss_search(inputs: Inputs) -> Any:
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    return inputs["faiss_index"].search(inputs["queries_numpy"], inputs["k"])


def _register_pairwise_topk() -> None:
    queries, database = _topk_shape()
    variant = f"k={_TOPK_K} {queries}x{database}x{DIM}" + (" quick" if _QUICK else "")
    description = f"{queries} queries vs a {database} x {DIM} database, fp32 standard normal, k={_TOPK_K}"
    flops = 2.0 * queries * database * DIM

    def ours(inputs: Inputs) -> Any:
        return tuple(library().pairwise_topk(inputs["queries"], inputs["database"], inputs["k"]))

    def with_rate(live: _LiveNotes, numpy_reference: bool) -> Callable[[Any, Any, Inputs], float]:
        base = _topk_check(live, numpy_reference)

        def check(ours_result: Any, reference: Any, inputs: Inputs) -> float:
            error = base(ours_result, reference, inputs)
            _note_rate(live, variant, ours, inputs, flops)
            return error

        return check

    if _FAISS is not None:
        live = _LiveNotes(_notes(SPEED_GOALS["topk faiss"], f"faiss {_FAISS}, torch's thread count"))
        _register(
            live,
            op="pairwise_topk",
            variant=f"{variant} vs faiss",
            description=description,
            mode=MODE_FORWARD,
            setup=lambda device: _topk_inputs(device, queries, database, with_faiss=True),
            ours=ours,
            reference=_faiss_search,
            check=with_rate(live, numpy_reference=True),
            ours_label="pairwise_topk(q, db, 10)",
            reference_label="faiss.IndexFlatL2(128).search(q, 10)",
            devices=("cpu",),
        )
    live = _LiveNotes("" if _FAISS is not None else _NO_FAISS)
    _register(
        live,
        op="pairwise_topk",
        variant=f"{variant} vs torch",
        description=description,
        mode=MODE_FORWARD,
        setup=lambda device: _topk_inputs(device, queries, database, with_faiss=False),
        ours=ours,
        reference=lambda inputs: _torch_topk(inputs["queries"], inputs["database"], inputs["k"]),
        check=with_rate(live, numpy_reference=False),
        ours_label="pairwise_topk(q, db, 10)",
        reference_label=f"torch.cdist(q_chunk, db).topk(10, largest=False) per {_rows_per_chunk(database)}-query chunk",
        devices=("cpu",),
    )


# --------------------------------------------------------------------------------------------
# batch_hard_triplet_loss
# --------------------------------------------------------------------------------------------

_LOSS_N = 4096


def _loss_inputs(device: torch.device, n: int, with_pml: bool) -> Inputs:
    inputs = _clustered(n, device, seed=31, with_grad=True)
    return _pml_objects(inputs) if with_pml else inputs


def _ours_loss(inputs: Inputs) -> torch.Tensor:
    return library().batch_hard_triplet_loss(inputs["embeddings"], inputs["labels"], margin=MARGIN)


def _pml_loss(inputs: Inputs) -> torch.Tensor:
    embeddings, labels = inputs["embeddings"], inputs["labels"]
    return inputs["pml_loss"](embeddings, labels, inputs["pml_batch_hard"](embeddings, labels))


def _grad_of(loss_function: Callable[[Inputs], torch.Tensor]) -> Callable[[Inputs], Tuple[torch.Tensor, torch.Tensor]]:
    def run(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        loss = loss_function(inputs)
        (grad,) = torch.autograd.grad(loss, inputs["embeddings"])
        return loss, grad

    return run


def _backward_of(
    loss_function: Callable[[Inputs], torch.Tensor]
) -> Callable[[Inputs], Tuple[torch.Tensor, torch.Tensor]]:
    def run(inputs: Inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        return sum_backward(inputs["embeddings"], lambda: loss_function(inputs))

    return run


def _register_batch_hard_loss() -> None:
    n = _LOSS_N
    description = _describe_clustered(n)
    variant = f"N={n} D={DIM}"
    torch_notes = SPEED_GOALS["loss torch"] if _PML else _notes(SPEED_GOALS["loss torch"], _NO_PML)
    references = [
        ("vs torch", lambda inputs: _torch_batch_hard_loss(inputs["embeddings"], inputs["labels"]),
         "cdist**2, masks, max/min, relu, mean", torch_notes, False, ("cpu", "cuda")),
    ]
    if _PML is not None:
        pml_label = "PML TripletMarginLoss(BatchHardMiner()), LpDistance(power=2), MeanReducer"
        pml_notes = _notes(SPEED_GOALS["loss pml"], f"pytorch-metric-learning {_PML}")
        references.append(("vs PML", _pml_loss, pml_label, pml_notes, True, ("cpu",)))
    for suffix, reference, reference_label, notes, with_pml, devices in references:
        for mode, wrap, ours_label, mode_note in (
            (MODE_AUTOGRAD_GRAD, _grad_of, "batch_hard_triplet_loss(e, labels) + grad", ""),
            (MODE_BACKWARD, _backward_of, "batch_hard_triplet_loss(e, labels).backward()",
             "e.grad set to None each call"),
        ):
            live = _LiveNotes(_notes(notes, mode_note))
            _register(
                live,
                op="batch_hard_triplet_loss",
                variant=f"{variant} {suffix}",
                description=description,
                mode=mode,
                setup=lambda device, with_pml=with_pml: _loss_inputs(device, n, with_pml),
                ours=wrap(_ours_loss),
                reference=wrap(reference),
                check=_loss_check(live),
                ours_label=ours_label,
                reference_label=reference_label + (" + grad" if mode == MODE_AUTOGRAD_GRAD else " .backward()"),
                devices=devices,
            )


# --------------------------------------------------------------------------------------------
# mine_triplets
# --------------------------------------------------------------------------------------------


def _mine_inputs(device: torch.device, n: int, with_pml: bool) -> Inputs:
    inputs = _clustered(n, device, seed=41)
    return _pml_objects(inputs) if with_pml else inputs


def _ours_mine(strategy: str) -> Callable[[Inputs], Any]:
    def run(inputs: Inputs) -> Any:
        return tuple(library().mine_triplets(inputs["embeddings"], inputs["labels"], strategy=strategy, margin=MARGIN))

    return run


def _pml_semihard_bytes(n: int) -> int:
    """What PML's TripletMarginMiner holds at its peak for N embeddings in classes of 16: the
    N^3 uint8 product of the label masks, the (T, 3) int64 indices of every valid triplet, their
    float32 distances and margins and the boolean conditions (T = N * 15 * (N - 16))."""
    triplets = n * (PER_CLASS - 1) * (n - PER_CLASS)
    return n**3 + triplets * (3 * 8 + 3 * 4 + 3) + 4 * n * n


def _pml_fits(n: int) -> Tuple[bool, str]:
    needed = _pml_semihard_bytes(n)
    available = _available_memory_bytes()
    if available is None:
        return n <= 1024, f"needs ~{_gib(needed)}, available memory unknown"
    text = f"needs ~{_gib(needed)} (N^3 uint8 mask + every valid triplet), {_gib(available)} available"
    return needed * 1.25 < available, text


def _register_mine_batch_hard() -> None:
    n = _LOSS_N
    peer = f"pytorch-metric-learning {_PML}" if _PML else _NO_PML + "; timed against a chunked plain-torch miner"
    live = _LiveNotes(_notes(SPEED_GOALS["mine batch_hard"], peer))
    if _PML is not None:
        reference: Callable[[Inputs], Any] = lambda inputs: inputs["pml_batch_hard"](
            inputs["embeddings"], inputs["labels"]
        )
        reference_label = "PML BatchHardMiner(LpDistance(power=2))(e, labels)"
        suffix = "vs PML"
    else:
        reference = lambda inputs: _torch_mine_batch_hard(inputs["embeddings"], inputs["labels"])
        reference_label = "chunked cdist**2, masks, argmax/argmin"
        suffix = "vs torch"
    _register(
        live,
        op="mine_triplets",
        variant=f"batch_hard N={n} {suffix}",
        description=_describe_clustered(n),
        mode=MODE_FORWARD,
        setup=lambda device: _mine_inputs(device, n, _PML is not None),
        ours=_ours_mine("batch_hard"),
        reference=reference,
        check=_mine_batch_hard_check(live),
        ours_label="mine_triplets(e, labels, 'batch_hard')",
        reference_label=reference_label,
        devices=("cpu",),
    )


_PML_ONCE: Dict[int, float] = {}


def _pml_semihard_once(inputs: Inputs) -> Tuple[Any, float]:
    start = time.perf_counter()
    result = inputs["pml_semihard"](inputs["embeddings"], inputs["labels"])
    return result, time.perf_counter() - start


def _register_semi_hard(n: int) -> None:
    description = _describe_clustered(n)
    fits, memory_text = _pml_fits(n)
    # At N=1024 PML is the timed reference; at 4096 (gigabytes) the timed reference is the chunked
    # plain-torch miner, and PML, where it fits (and not with --quick), runs once in the check.
    # Row names depend on N and the installed packages only (the peak-memory subprocess finds
    # its row by name), never on the memory free at the moment.
    pml_timed = _PML is not None and n <= 1024
    pml_once = _PML is not None and not pml_timed and fits and not _QUICK
    if _PML is None:
        why = _NO_PML + "; timed against a chunked plain-torch miner"
    elif pml_timed:
        why = f"pytorch-metric-learning {_PML}"
    elif pml_once:
        why = f"PML semihard miner {memory_text}: measured once in the check (see 'PML once')"
    elif fits:
        why = "PML semihard miner: measured once in a full run only (--quick skips it)"
    else:
        why = (f"PML semihard miner {memory_text}: reference unavailable, skipped; "
               "timed against a chunked plain-torch miner")

    for strategy in ("semi_hard_window", "semi_hard"):
        ours = _ours_mine(strategy)
        if pml_timed:
            reference: Callable[[Inputs], Any] = lambda inputs: inputs["pml_semihard"](
                inputs["embeddings"], inputs["labels"]
            )
            reference_label = "PML TripletMarginMiner(0.2, 'semihard', LpDistance(power=2))(e, labels)"
            suffix = "vs PML"
        elif strategy == "semi_hard_window":
            reference = lambda inputs: _torch_mine_window(inputs["embeddings"], inputs["labels"])
            reference_label = "chunked cdist**2, masks, sorted negatives + searchsorted (every window triplet, as PML)"
            suffix = "vs torch"
        else:
            reference = lambda inputs: _torch_mine_semi_hard(inputs["embeddings"], inputs["labels"])
            reference_label = "chunked cdist**2, masks, sorted negatives + searchsorted (TF-Addons semi-hard)"
            suffix = "vs torch"
        goal = SPEED_GOALS[strategy]
        if strategy == "semi_hard" and pml_timed:
            goal = _notes(goal, "timed against PML's window miner (other triplets); checked against float64 TF-Addons")
        live = _LiveNotes(_notes(goal, why))
        base_check = _window_check(live) if strategy == "semi_hard_window" else _semi_hard_truth_check(live)

        def check(ours_result: Any, reference_result: Any, inputs: Inputs, live: _LiveNotes = live,
                  base_check: Callable[[Any, Any, Inputs], float] = base_check, strategy: str = strategy,
                  ours: Callable[[Inputs], Any] = ours) -> float:
            error = base_check(ours_result, reference_result, inputs)
            if pml_once and inputs["device"].type == "cpu":
                _note_pml_once(live, strategy, ours, ours_result, inputs)
            _note_peak_memory(live, inputs)
            return error

        _register(
            live,
            op="mine_triplets",
            variant=f"{strategy} N={n} {suffix}",
            description=description,
            mode=MODE_FORWARD,
            setup=lambda device: _mine_inputs(device, n, _PML is not None),
            small_setup=lambda device: _mine_inputs(device, 64, with_pml=False),
            ours=ours,
            reference=reference,
            check=check,
            ours_label=f"mine_triplets(e, labels, '{strategy}')",
            reference_label=reference_label,
            devices=("cpu",),
        )


def _note_pml_once(
    live: _LiveNotes, strategy: str, ours: Callable[[Inputs], Any], ours_result: Any, inputs: Inputs
) -> None:
    """One timed call of PML's semihard miner (too large to time repeatedly); its triplets are
    compared with ours for semi_hard_window."""
    n = len(inputs["labels"])
    ours_seconds = _median_seconds(lambda: ours(inputs), inputs["device"], 1)
    if strategy == "semi_hard_window" or n not in _PML_ONCE:
        result, seconds = _pml_semihard_once(inputs)
        _PML_ONCE[n] = seconds
        if strategy == "semi_hard_window":
            _window_check(_LiveNotes(""))(ours_result, result, inputs)
        del result
    seconds = _PML_ONCE[n]
    live.set("pml", f"PML once: {seconds:.1f} s = {seconds / ours_seconds:.0f}x ours' {ours_seconds * 1e3:.0f} ms")


# --------------------------------------------------------------------------------------------
# N=65536 (ours only) and CUDA rows
# --------------------------------------------------------------------------------------------

_LARGE_N = 65536
_LARGE_MEMORY_GOAL = 256 * MIB


def _no_reference(inputs: Inputs) -> None:
    return None


def _large_loss_check(live: _LiveNotes) -> Callable[[Any, Any, Inputs], float]:
    """The loss and gradient against float64 autograd through ours' own batch-hard triplets (which
    the mining row checks), excluding the rows of triplets at the hinge's kink."""

    def check(ours: Any, reference: Any, inputs: Inputs) -> float:
        loss, grad = ours
        device = inputs["device"]
        _check_tensor("loss", loss, torch.float32, device)
        _check_tensor("grad", grad, torch.float32, device)
        embeddings, labels = inputs["embeddings"], inputs["labels"]
        a, p, n = _triplets("mine_triplets", tuple(library().mine_triplets(embeddings.detach(), labels)), device)
        x64 = embeddings.detach().cpu().double().requires_grad_(True)
        violation = _pair_sq_distances(x64, a, p) - _pair_sq_distances(x64, a, n) + MARGIN
        expected = F.relu(violation).mean()
        (expected_grad,) = torch.autograd.grad(expected, x64)
        error = assert_close("loss", loss.detach().cpu().double(), expected.detach(), atol=1e-6, rtol=1e-4)
        kink = violation.detach().abs() <= _tie_tolerance(x64.detach())
        excluded = torch.zeros(len(labels), dtype=torch.bool)
        for index in (a, p, n):
            excluded[index[kink]] = True
        error = max(error, _scaled_close("grad", grad.cpu().double(), expected_grad, 1e-4, ~excluded))
        live.set("check", "vs float64 autograd through ours' mine_triplets(batch_hard) triplets")
        _note_peak_memory(live, inputs, _LARGE_MEMORY_GOAL)
        return error

    return check


def _register_large() -> None:
    if _QUICK:
        return
    n = _LARGE_N
    description = _describe_clustered(n)
    ours_only = _notes(SPEED_GOALS["N=65536"], "ours only: no reference fits, the reference column times a no-op")
    mining_live = _LiveNotes(ours_only)
    mining_check = _mine_batch_hard_check(mining_live, sample=256)

    def check(ours: Any, reference: Any, inputs: Inputs) -> float:
        error = mining_check(ours, None, inputs)
        _note_peak_memory(mining_live, inputs, _LARGE_MEMORY_GOAL)
        return error

    _register(
        mining_live,
        op="mine_triplets",
        variant=f"batch_hard N={n} ours only",
        description=description,
        mode=MODE_FORWARD,
        setup=lambda device: _mine_inputs(device, n, with_pml=False),
        small_setup=lambda device: _mine_inputs(device, 64, with_pml=False),
        ours=_ours_mine("batch_hard"),
        reference=_no_reference,
        check=check,
        ours_label="mine_triplets(e, labels, 'batch_hard')",
        reference_label="none",
        devices=("cpu",),
    )
    loss_live = _LiveNotes(ours_only)
    _register(
        loss_live,
        op="batch_hard_triplet_loss",
        variant=f"N={n} D={DIM} ours only",
        description=description,
        mode=MODE_AUTOGRAD_GRAD,
        setup=lambda device: _loss_inputs(device, n, with_pml=False),
        small_setup=lambda device: _loss_inputs(device, 64, with_pml=False),
        ours=_grad_of(_ours_loss),
        reference=_no_reference,
        check=_large_loss_check(loss_live),
        ours_label="batch_hard_triplet_loss(e, labels) + grad",
        reference_label="none",
        devices=("cpu",),
    )


def _register_cuda() -> None:
    n = _LARGE_N
    mining_live = _LiveNotes("CUDA; no goal stated")
    mining_check = _mine_batch_hard_check(mining_live, sample=256)

    def check(ours: Any, reference: Any, inputs: Inputs) -> float:
        error = mining_check(ours, None, inputs)
        _note_cuda_peak(mining_live, _ours_mine("batch_hard"), inputs)
        return error

    _register(
        mining_live,
        op="mine_triplets",
        variant=f"batch_hard N={n} cuda vs torch",
        description=_describe_clustered(n),
        mode=MODE_FORWARD,
        setup=lambda device: _mine_inputs(device, n, with_pml=False),
        ours=_ours_mine("batch_hard"),
        reference=lambda inputs: _torch_mine_batch_hard(inputs["embeddings"], inputs["labels"]),
        check=check,
        ours_label="mine_triplets(e, labels, 'batch_hard')",
        reference_label="chunked cdist**2, masks, argmax/argmin on the GPU",
        devices=("cuda",),
    )

    queries, database = _topk_shape()
    variant = f"k={_TOPK_K} {queries}x{database}x{DIM}" + (" quick" if _QUICK else "") + " cuda vs torch"
    topk_live = _LiveNotes("CUDA; no goal stated")
    base = _topk_check(topk_live, numpy_reference=False)
    flops = 2.0 * queries * database * DIM

    def ours_topk(inputs: Inputs) -> Any:
        return tuple(library().pairwise_topk(inputs["queries"], inputs["database"], inputs["k"]))

    def topk_check(ours: Any, reference: Any, inputs: Inputs) -> float:
        error = base(ours, reference, inputs)
        _note_rate(topk_live, variant, ours_topk, inputs, flops)
        return error

    _register(
        topk_live,
        op="pairwise_topk",
        variant=variant,
        description=f"{queries} queries vs a {database} x {DIM} database, fp32 standard normal, k={_TOPK_K}",
        mode=MODE_FORWARD,
        setup=lambda device: _topk_inputs(device, queries, database, with_faiss=False),
        ours=ours_topk,
        reference=lambda inputs: _torch_topk(inputs["queries"], inputs["database"], inputs["k"]),
        check=topk_check,
        ours_label="pairwise_topk(q, db, 10)",
        reference_label=f"torch.cdist(q_chunk, db).topk(10, largest=False) per {_rows_per_chunk(database)}-query chunk",
        devices=("cuda",),
    )


def _register_distance_family() -> None:
    _register_pairwise_distance()
    _register_pairwise_topk()
    _register_batch_hard_loss()
    _register_mine_batch_hard()
    for n in (1024, 4096):
        _register_semi_hard(n)
    _register_large()
    _register_cuda()


_register_distance_family()
