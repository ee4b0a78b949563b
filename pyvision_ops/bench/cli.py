"""``python -m pyvision_ops.bench``: check our ops against their references, time both, print one table.

Exit status: 0 when every selected workload matched its reference, 1 when any failed its check
or raised, 2 for a usage error (unknown ``--ops``, CUDA asked for but unavailable, extension
missing or built without CUDA). ``--list`` and ``--families`` need neither the extension nor a GPU.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Iterable, List, Optional, Sequence

import torch

from pyvision_ops.bench.workloads import Workload, families, select_workloads

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (also used by ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m pyvision_ops.bench",
        description=(
            "Check each pyvision_ops op against its reference (PyTorch, SciPy, ...) on fixed inputs, "
            "then time ours and the reference side by side and print one table."
        ),
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    parser.add_argument(
        "--ops",
        nargs="+",
        metavar="NAME",
        help="only workloads whose family equals NAME or whose name contains NAME (case-insensitive), "
        "e.g. --ops unpool, --ops models, --ops compact, --ops '.backward()'",
    )
    parser.add_argument("--quick", action="store_true", help="fewer warm-up calls and repeats (same shapes)")
    parser.add_argument("--json", metavar="FILE", help="write every number (machine info and all rows) to FILE")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the speedups as a bar chart into FILE.png")
    parser.add_argument("--threads", type=int, metavar="N", help="torch.set_num_threads(N) before running")
    parser.add_argument(
        "--thread-scaling",
        action="store_true",
        help="CPU: also time ours with 1 thread and show how much the other threads help",
    )
    parser.add_argument("--list", action="store_true", help="list the selected workloads and exit")
    parser.add_argument(
        "--families",
        action="store_true",
        help="print the registered workload families, one per line in table order, and exit",
    )
    return parser


def _progress_wrapper() -> Callable[[Sequence[Workload]], Iterable[Workload]]:
    """tqdm on stderr when installed and stderr is a terminal, else one line per workload."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if not sys.stderr.isatty():  # a redirected log gets readable lines, not carriage returns
        tqdm = None

    if tqdm is not None:

        def with_tqdm(workloads: Sequence[Workload]) -> Iterable[Workload]:
            bar = tqdm(workloads, desc="bench", unit="workload", file=sys.stderr, dynamic_ncols=True)
            for workload in bar:
                bar.set_postfix_str(f"{workload.op} {workload.variant} {workload.mode}")
                yield workload

        return with_tqdm

    def with_text(workloads: Sequence[Workload]) -> Iterable[Workload]:
        for position, workload in enumerate(workloads, start=1):
            print(f"[{position}/{len(workloads)}] {workload.name}", file=sys.stderr, flush=True)
            yield workload

    return with_text


def _usage_error(message: str) -> int:
    print(f"python -m pyvision_ops.bench: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _extension_problem(device: torch.device) -> Optional[str]:
    """Why our ops cannot run on ``device``, or None."""
    try:
        from pyvision_ops import _extension

        _extension.ensure_loaded()
    except Exception as error:  # RuntimeError from ensure_loaded, ImportError from a broken package
        return str(error)
    if device.type == "cuda" and not _extension.has_cuda():
        return (
            "the pyvision_ops extension was built without CUDA kernels "
            "(rebuild with a CUDA torch and nvcc, or FORCE_CUDA=1)"
        )
    return None


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    if args.families:
        # Before any device check: scripts ask for the families on machines without the GPU too.
        for name in families():
            print(name)
        return EXIT_OK
    device = torch.device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            return _usage_error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    workloads = select_workloads(args.ops, device=device.type)
    if not workloads:
        known = ", ".join(families())
        selection = " ".join(args.ops or [])
        return _usage_error(f"no workload matches --ops {selection} on {device.type} (families: {known})")
    if args.list:
        for workload in workloads:
            print(f"{workload.name}  --  {workload.description}")
        return EXIT_OK
    if device.type == "cuda" and not torch.cuda.is_available():
        return _usage_error(
            f"--device cuda was asked for but CUDA is not available (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda or 'none'}, {torch.cuda.device_count()} visible GPUs)"
        )

    problem = _extension_problem(device)
    if problem is not None:
        return _usage_error(problem)

    # Imported here so --help and --list work even where the runner's imports would be slow.
    from pyvision_ops.bench.report import format_table, plot_speedups, write_json
    from pyvision_ops.bench.runner import FULL_SETTINGS, QUICK_SETTINGS, run_benchmark

    report = run_benchmark(
        workloads,
        device,
        settings=QUICK_SETTINGS if args.quick else FULL_SETTINGS,
        thread_scaling=args.thread_scaling,
        progress=_progress_wrapper(),
    )
    arguments = argv if argv is not None else sys.argv[1:]
    report.machine["command"] = " ".join(["python -m pyvision_ops.bench", *arguments])
    print(format_table(report), flush=True)
    if args.json:
        write_json(report, args.json)
        print(f"numbers written to {args.json}", file=sys.stderr)
    if args.plot:
        plot_speedups(report, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return EXIT_CHECK_FAILED if report.failed else EXIT_OK
