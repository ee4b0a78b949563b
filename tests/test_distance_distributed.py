"""Op family `distance` across processes: mine_triplets(gather=True), gather_embeddings and
TripletLoss(gather=True) on a 2-process gloo group, against one process over the whole batch.

The parent test starts 2 worker processes (this file run as a script, on a free localhost port,
gloo, with timeouts so that a hang fails instead of blocking); each rank holds its own slice of one
global float64 batch (the ranks hold different numbers of items), runs the scenarios and saves what
it got with torch.save; the parent checks it:

1. ``mine_triplets(..., gather=True)`` on each rank returns indices into the rank-major gathered
   batch, equal to one process's mining of the concatenated batch restricted to that rank's anchors;
2. the gradient each rank gets for its embeddings from its own ``TripletLoss(gather=True)`` loss
   (``torch.distributed.nn.functional.all_gather``'s backward sums every rank's contribution) equals
   the gradient of sum_r loss_r over the concatenated batch in one process, loss_r the loss over
   rank r's anchors (a plain float64 PyTorch formula over those anchors' triplets);
3. ``gather_embeddings`` returns the concatenation (embeddings and labels), and its backward sums
   the gradients of every rank's use of the gathered batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

WORLD_SIZE = 2
#: Seconds a collective may wait (gloo's timeout) and the whole run of both workers may take.
COLLECTIVE_TIMEOUT_S = 30
RUN_TIMEOUT_S = 120
DIM = 5

#: Each scenario: the labels of every rank (the ranks' sizes differ).
SCENARIOS: Dict[str, Tuple[List[int], ...]] = {
    # class 0 lives on rank 0 only; classes 1-3 have members on both ranks (class 3 one on each:
    # each anchor's only positive is on the other rank); 4 and 5 are singletons (skipped anchors).
    "mixed": ([0, 0, 1, 2, 3, 1, 4], [1, 2, 2, 3, 5]),
    # Rank 1 has no valid anchor (singletons), so its loss is 0, yet its embeddings are negatives
    # of rank 0's anchors: it must still take part in the backward and get nonzero gradients.
    "no_anchor_on_rank_1": ([0, 0, 0, 0], [7, 8, 9]),
    # Rank 1 holds no item at all (the last, short batch of a sampler); int32 labels.
    "empty_rank_1": ([0, 0, 1, 1, 2], []),
}
LABEL_DTYPES = {"empty_rank_1": torch.int32}  # int64 for the others

#: mine_triplets cases: name -> keyword arguments.
MINING_CASES: Dict[str, dict] = {
    "batch_hard": dict(strategy="batch_hard"),
    "batch_hard_cosine": dict(strategy="batch_hard", metric="cosine"),
    "semi_hard": dict(strategy="semi_hard", metric="euclidean"),
    "semi_hard_window": dict(strategy="semi_hard_window", margin=0.6, metric="cosine"),
    "hard": dict(strategy="hard", margin=0.5),
    "hard_capped": dict(strategy="hard", margin=0.5, max_triplets=3),
}

#: TripletLoss(gather=True) cases: name -> constructor arguments.
LOSS_CASES: Dict[str, dict] = {
    "batch_hard": dict(strategy="batch_hard", margin=0.5),
    "batch_hard_soft_euclidean": dict(strategy="batch_hard", metric="euclidean", soft=True),
    "semi_hard": dict(strategy="semi_hard", margin=0.5),
    "hard": dict(strategy="hard", margin=0.5),
}


def global_batch(scenario: str) -> Tuple[Tensor, Tensor, List[int]]:
    """The whole batch (rank-major), its labels and the ranks' sizes; the same in every process."""
    per_rank = SCENARIOS[scenario]
    labels = torch.tensor([label for rank_labels in per_rank for label in rank_labels],
                          dtype=LABEL_DTYPES.get(scenario, torch.int64))
    generator = torch.Generator().manual_seed(sum(map(ord, scenario)))
    x = F.normalize(torch.randn(labels.numel(), DIM, generator=generator, dtype=torch.float64), dim=1)
    return x, labels, [len(rank_labels) for rank_labels in per_rank]


def gather_weights(scenario: str) -> Tensor:
    """(WORLD_SIZE, N, D): rank r's loss for the gather_embeddings backward is sum(W[r] * gathered)."""
    x, _, _ = global_batch(scenario)
    generator = torch.Generator().manual_seed(7)
    return torch.randn(WORLD_SIZE, *x.shape, generator=generator, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# worker (this file run as a script)
# --------------------------------------------------------------------------------------------


def _worker(rank: int, out_dir: Path) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    from pyvision_ops import gather_embeddings, mine_triplets
    from pyvision_ops.nn import TripletLoss

    try:
        for scenario in SCENARIOS:
            x_all, labels_all, sizes = global_batch(scenario)
            start = sum(sizes[:rank])
            x = x_all[start:start + sizes[rank]].clone().requires_grad_(True)
            labels = labels_all[start:start + sizes[rank]].clone()
            results: Dict[str, object] = {}
            path = out_dir / f"{scenario}-rank{rank}.pt"

            gathered, gathered_labels = gather_embeddings(x, labels)
            results["gathered"] = (gathered.detach().clone(), gathered_labels.clone())
            (gathered * gather_weights(scenario)[rank]).sum().backward()
            results["gather_grad"] = x.grad.clone()
            x.grad = None
            torch.save(results, path)  # saved after each stage: a later failure keeps what passed

            for name, kwargs in MINING_CASES.items():
                results[f"mine/{name}"] = tuple(t.clone() for t in mine_triplets(x, labels, gather=True, **kwargs))
            torch.save(results, path)

            for name, kwargs in LOSS_CASES.items():
                loss = TripletLoss(gather=True, **kwargs)(x, labels)
                loss.backward()
                results[f"loss/{name}"] = loss.detach().clone()
                results[f"grad/{name}"] = x.grad.clone()
                x.grad = None

            # The inputs are left as they were.
            results["unchanged"] = bool(torch.equal(x.detach(), x_all[start:start + sizes[rank]])
                                        and torch.equal(labels, labels_all[start:start + sizes[rank]]))
            torch.save(results, path)
        dist.barrier()
    except BaseException:
        (out_dir / f"error-rank{rank}.txt").write_text(traceback.format_exc())
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # the other rank's pending collective then fails at once instead of waiting
    dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# parent: run the workers once, then check what they saved
# --------------------------------------------------------------------------------------------

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_workers(out_dir: Path) -> Optional[str]:
    """Run both ranks; None when both succeeded, else what went wrong (tracebacks, logs)."""
    repo_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(WORLD_SIZE),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p),
    )
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only, whatever the hostname resolves to
    processes, logs = [], []
    for rank in range(WORLD_SIZE):
        log = open(out_dir / f"log-rank{rank}.txt", "w")
        logs.append(log)
        processes.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", str(rank), str(out_dir)],
            env={**env, "RANK": str(rank)}, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        ))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    timed_out = False
    try:
        while any(p.poll() is None for p in processes):
            if time.monotonic() > deadline:
                timed_out = True
                break
            if any(p.poll() not in (None, 0) for p in processes):
                # One rank failed: give the other a moment to fail on its own, then stop it.
                grace = time.monotonic() + 10
                while any(p.poll() is None for p in processes) and time.monotonic() < grace:
                    time.sleep(0.05)
                break
            time.sleep(0.05)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait()
        for log in logs:
            log.close()
    if not timed_out and all(p.returncode == 0 for p in processes):
        return None
    report = [f"worker exit codes {[p.returncode for p in processes]}"
              + (f"; killed after {RUN_TIMEOUT_S} s" if timed_out else "")]
    for rank in range(WORLD_SIZE):
        error = out_dir / f"error-rank{rank}.txt"
        if error.exists():
            report.append(f"--- rank {rank} traceback ---\n{error.read_text()}")
        report.append(f"--- rank {rank} output (last 4000 characters) ---\n"
                      f"{(out_dir / f'log-rank{rank}.txt').read_text()[-4000:]}")
    return "\n".join(report)


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    started = time.monotonic()
    for _attempt in range(2):  # once more if another process took the free port in the meantime
        out_dir = tmp_path_factory.mktemp("distance_distributed")
        failure = _run_workers(out_dir)
        if failure is None or "address already in use" not in failure.lower():
            break
    return out_dir, failure, time.monotonic() - started


def load(worker_results, scenario: str, key: str) -> List[Dict[str, object]]:
    """Both ranks' results of `scenario`; fails with the workers' tracebacks where either rank
    did not get as far as `key`."""
    out_dir, failure, _ = worker_results
    paths = [out_dir / f"{scenario}-rank{rank}.pt" for rank in range(WORLD_SIZE)]
    results = [torch.load(path, weights_only=False) if path.exists() else {} for path in paths]
    if not all(key in rank_results for rank_results in results):
        pytest.fail(f"the workers saved no {key!r} for scenario {scenario!r}:\n{failure}", pytrace=False)
    return results


def rank_slices(sizes: List[int]) -> List[slice]:
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    return [slice(start, start + size) for start, size in zip(starts, sizes)]


def reference_distance(u: Tensor, v: Tensor, metric: str) -> Tensor:
    """Row-wise float64 distances of u and v (T, D), written out (the pairs are never equal)."""
    if metric == "sqeuclidean":
        return (u - v).pow(2).sum(-1)
    if metric == "euclidean":
        return (u - v).pow(2).sum(-1).sqrt()
    if metric == "cosine":
        return 1.0 - (u * v).sum(-1) / (u.norm(dim=-1).clamp_min(1e-8) * v.norm(dim=-1).clamp_min(1e-8))
    raise AssertionError(metric)


def expected_triplets(x: Tensor, labels: Tensor, anchors: slice, strategy: str = "batch_hard",
                      margin: float = 0.2, metric: str = "sqeuclidean",
                      max_triplets: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """One process's mining of the whole batch, restricted to the anchors in `anchors`. A cap
    keeps the largest violations among these anchors' triplets (ties: lexicographically first)."""
    from pyvision_ops import mine_triplets

    a, p, n = mine_triplets(x, labels, strategy=strategy, margin=margin, metric=metric)
    own = (a >= anchors.start) & (a < anchors.stop)
    a, p, n = a[own], p[own], n[own]
    if max_triplets is not None:
        violation = (reference_distance(x[a], x[p], metric) - reference_distance(x[a], x[n], metric) + margin).tolist()
        order = sorted(range(a.numel()), key=lambda i: (-violation[i], int(a[i]), int(p[i]), int(n[i])))
        keep = sorted(order[:max_triplets], key=lambda i: (int(a[i]), int(p[i]), int(n[i])))
        a, p, n = a[keep], p[keep], n[keep]
    return a, p, n


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_gather_embeddings_returns_the_concatenation(worker_results, scenario):
    results = load(worker_results, scenario, "gather_grad")
    x, labels, sizes = global_batch(scenario)
    weights = gather_weights(scenario)
    for rank, (rank_results, rows) in enumerate(zip(results, rank_slices(sizes))):
        gathered, gathered_labels = rank_results["gathered"]
        assert gathered.dtype == torch.float64 and gathered_labels.dtype == labels.dtype
        torch.testing.assert_close(gathered, x, rtol=0, atol=0)
        assert torch.equal(gathered_labels, labels)
        # Every rank used the gathered batch in its own loss: each rank's gradient sums them all.
        torch.testing.assert_close(rank_results["gather_grad"], weights.sum(0)[rows])


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_callers_tensors_are_left_unchanged(worker_results, scenario):
    assert all(rank_results["unchanged"] for rank_results in load(worker_results, scenario, "unchanged"))


@pytest.mark.parametrize("case", list(MINING_CASES))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_mining_with_gather_matches_one_process(worker_results, scenario, case):
    results = load(worker_results, scenario, f"mine/{case}")
    x, labels, sizes = global_batch(scenario)
    found_any = False
    for rank, (rank_results, rows) in enumerate(zip(results, rank_slices(sizes))):
        got = rank_results[f"mine/{case}"]
        expected = expected_triplets(x, labels, rows, **MINING_CASES[case])
        assert all(t.dtype == torch.int64 for t in got)
        for name, g, e in zip(("anchor", "positive", "negative"), got, expected):
            assert g.tolist() == e.tolist(), f"rank {rank} {name}: got {g.tolist()}, expected {e.tolist()}"
        assert all(rows.start <= a < rows.stop for a in got[0].tolist())  # its own anchors only
        found_any |= got[0].numel() > 0
    assert found_any


@pytest.mark.parametrize("case", list(LOSS_CASES))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_triplet_loss_gradients_with_gather_sum_over_ranks(worker_results, scenario, case):
    results = load(worker_results, scenario, f"grad/{case}")
    x, labels, sizes = global_batch(scenario)
    options = dict(LOSS_CASES[case])
    strategy, margin = options.get("strategy", "batch_hard"), options.get("margin", 0.2)
    metric, soft = options.get("metric", "sqeuclidean"), options.get("soft", False)
    leaf = x.clone().requires_grad_(True)
    losses = []
    for rows in rank_slices(sizes):
        a, p, n = expected_triplets(x, labels, rows, strategy=strategy, margin=margin, metric=metric)
        if a.numel() == 0:
            losses.append(leaf.sum() * 0.0)
            continue
        gap = reference_distance(leaf[a], leaf[p], metric) - reference_distance(leaf[a], leaf[n], metric)
        losses.append((F.softplus(gap) if soft else torch.relu(gap + margin)).mean())
    torch.stack(losses).sum().backward()
    assert leaf.grad.abs().max() > 0
    for rank, (rank_results, rows) in enumerate(zip(results, rank_slices(sizes))):
        torch.testing.assert_close(rank_results[f"loss/{case}"], losses[rank].detach(),
                                   msg=lambda message: f"rank {rank} loss: {message}")
        torch.testing.assert_close(rank_results[f"grad/{case}"], leaf.grad[rows],
                                   msg=lambda message: f"rank {rank} gradient: {message}")
    if scenario == "no_anchor_on_rank_1":
        assert losses[1].item() == 0.0 and results[1][f"grad/{case}"].abs().max() > 0


def test_the_workers_finish_quickly(worker_results):
    _, failure, seconds = worker_results
    assert failure is None, failure
    assert seconds < 60, f"the 2 workers took {seconds:.1f} s"


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--worker":
    _worker(int(sys.argv[2]), Path(sys.argv[3]))
