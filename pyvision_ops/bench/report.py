"""Presenting a :class:`~pyvision_ops.bench.runner.BenchmarkReport`: table, JSON, plot."""

from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

from pyvision_ops.bench.runner import STATUS_ERROR, STATUS_FAIL, STATUS_OK, BenchmarkReport, WorkloadResult

__all__ = ["format_table", "format_header", "write_json", "plot_speedups"]

TABLE_COLUMNS = (
    "op",
    "workload",
    "mode",
    "ours ms",
    "reference ms",
    "speedup",
    "max error",
    "GB/s",
    "% copy",
    "ref GB/s",
    "notes",
)
_LEFT_ALIGNED = {"op", "workload", "mode", "notes"}

# Other processes keeping more than this many CPUs busy while a row was timed make it suspect.
_BUSY_MACHINE_CPUS = 0.25

# A row whose samples spread more than this (max-min over median) gets a warning in its notes:
# the development machine is shared, and such a ratio should not be trusted to 15%.
_NOISY_SPREAD = 0.5


def _format_milliseconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    milliseconds = seconds * 1e3
    if milliseconds >= 100:
        return f"{milliseconds:.0f}"
    if milliseconds >= 10:
        return f"{milliseconds:.1f}"
    if milliseconds >= 1:
        return f"{milliseconds:.2f}"
    return f"{milliseconds:.3f}"


def _format_optional(value: Optional[float], template: str) -> str:
    return "-" if value is None else template.format(value)


def _format_max_error(result: WorkloadResult) -> str:
    if result.status == STATUS_FAIL:
        return "FAIL" if result.max_error is None else f"FAIL {result.max_error:.1e}"
    if result.status == STATUS_ERROR:
        return "ERROR"
    if result.max_error is None:
        return "-"
    if result.max_error == 0.0:
        return "0 (exact)" if result.workload.exact else "0"
    return f"{result.max_error:.1e}"


def _notes(result: WorkloadResult) -> str:
    notes = [result.workload.notes] if result.workload.notes else []
    if result.thread_scaling is not None:
        notes.append(f"{result.threads} threads vs 1: {result.thread_scaling:.2f}x")
    noisy = [
        f"{label} spread {stats.spread:.0%}"
        for label, stats in (("ours", result.ours), ("ref", result.reference))
        if stats is not None and stats.spread > _NOISY_SPREAD
    ]
    if noisy:
        notes.append("noisy: " + ", ".join(noisy))
    if result.other_processes_cpus is not None and result.other_processes_cpus > _BUSY_MACHINE_CPUS:
        notes.append(f"busy machine: others used {result.other_processes_cpus:.1f} CPUs")
    if result.status != STATUS_OK:
        notes.append(f"{result.status}: see below")
    return "; ".join(notes)


def _row_cells(result: WorkloadResult) -> List[str]:
    workload = result.workload
    return [
        workload.op,
        workload.variant,
        workload.mode,
        _format_milliseconds(None if result.ours is None else result.ours.median_seconds),
        _format_milliseconds(None if result.reference is None else result.reference.median_seconds),
        _format_optional(result.speedup, "{:.2f}x"),
        _format_max_error(result),
        _format_optional(result.ours_gbps, "{:.1f}"),
        _format_optional(result.percent_of_copy_bandwidth, "{:.0f}%"),
        _format_optional(result.reference_gbps, "{:.1f}"),
        _notes(result),
    ]


def format_header(report: BenchmarkReport) -> str:
    """Machine, threads, versions, date and the copy bandwidth, in a few lines."""
    machine = report.machine
    device = machine["device"]
    hardware = machine.get("gpu_name") or machine["cpu_model"]
    build = machine.get("extension_build")
    build_text = build if isinstance(build, str) else ", ".join(f"{k}={v}" for k, v in sorted(build.items()))
    bandwidth = report.copy_bandwidth
    settings = report.settings
    lines = [
        f"pyvision_ops {machine.get('pyvision_ops_version') or '?'} benchmark on {device} ({hardware}), "
        f"{machine['logical_cpus']} logical CPUs, torch {machine['torch_version']} with "
        f"{machine['torch_threads']} threads, {machine['date']}"
        + (f", commit {machine['git_commit']}" if machine.get("git_commit") else ""),
        f"extension: {build_text}",
        f"copy bandwidth (dst.copy_(src), {bandwidth.buffer_bytes // 2**20} MiB fp32, read+write bytes): "
        f"{bandwidth.median_gbps:.1f} GB/s median, {bandwidth.best_gbps:.1f} best",
        f"timing: median per call over up to {settings.repeats} interleaved samples after "
        f"{settings.warmup_calls} warm-up calls; speedup = reference / ours; GB/s = compulsory bytes / time",
    ]
    if report.other_processes_cpus is not None:
        warning = (
            "  WARNING: the machine was busy, timings are unreliable"
            if report.other_processes_cpus > _BUSY_MACHINE_CPUS
            else ""
        )
        lines.append(
            f"other processes kept {report.other_processes_cpus:.2f} CPUs busy on average during the run{warning}"
        )
    descriptions = {}
    for result in report.results:
        descriptions.setdefault(result.workload.family, [])
        if result.workload.description not in descriptions[result.workload.family]:
            descriptions[result.workload.family].append(result.workload.description)
    for family, texts in descriptions.items():
        lines.append(f"{family}: " + "; ".join(texts))
    return "\n".join(lines)


def format_table(report: BenchmarkReport) -> str:
    """The header, one aligned table of all rows, and the failures spelled out below it."""
    rows = [list(TABLE_COLUMNS)] + [_row_cells(result) for result in report.results]
    widths = [max(len(row[column]) for row in rows) for column in range(len(TABLE_COLUMNS))]

    def render(cells: Sequence[str]) -> str:
        rendered = [
            cell.ljust(width) if name in _LEFT_ALIGNED else cell.rjust(width)
            for cell, width, name in zip(cells, widths, TABLE_COLUMNS)
        ]
        return "  ".join(rendered).rstrip()

    lines = [format_header(report), "", render(rows[0]), render(["-" * width for width in widths])]
    lines += [render(cells) for cells in rows[1:]]
    failed = report.failed
    passed = len(report.results) - len(failed)
    lines += ["", f"{len(report.results)} workloads: {passed} ok, {len(failed)} failed; "
                  f"run took {report.duration_seconds:.0f} s"]
    for result in failed:
        lines.append(f"{result.status} {result.workload.name}: {result.message}")
    return "\n".join(lines)


def write_json(report: BenchmarkReport, path: str) -> None:
    """Every number of the run (machine, settings, copy bandwidth, all samples of all rows)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as output:
        json.dump(report.as_dict(), output, indent=2)
        output.write("\n")


def plot_speedups(report: BenchmarkReport, path: str) -> None:
    """Horizontal bar chart of speedups (reference / ours) with a line at 1x; PNG (or any
    format matplotlib infers from ``path``)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on benchmark machines
    import matplotlib.pyplot as plt

    timed = [result for result in report.results if result.speedup is not None]
    labels = [f"{r.workload.op} {r.workload.variant} [{r.workload.mode}]" for r in timed]
    speedups = [r.speedup for r in timed]
    colours = [
        "tab:grey" if r.status != STATUS_OK else ("tab:green" if r.speedup >= 1 else "tab:red") for r in timed
    ]
    figure, axes = plt.subplots(figsize=(10, 0.45 * len(timed) + 1.8))
    positions = list(range(len(timed)))[::-1]  # first row at the top, as in the table
    axes.barh(positions, speedups, color=colours)
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_yticks(positions)
    axes.set_yticklabels(labels, fontsize=8)
    axes.set_xlabel("speedup = reference time / our time (grey: check failed)")
    for position, result in zip(positions, timed):
        axes.text(result.speedup, position, f" {result.speedup:.2f}x", va="center", fontsize=8)
    machine = report.machine
    axes.set_title(
        f"pyvision_ops vs reference on {machine['device']} ({machine.get('gpu_name') or machine['cpu_model']}, "
        f"{machine['torch_threads']} threads), torch {machine['torch_version']}",
        fontsize=9,
    )
    axes.set_xlim(0, max(speedups + [1.0]) * 1.2)
    figure.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
