"""Runs workloads: correctness check first, then ours and the reference timed side by side.

Method (the development machine is shared and noisy; see docs/performance.md):

* Both implementations are timed in the same process, on the same inputs, one right after
  the other: repeat ``r`` times ours then the reference, repeat ``r + 1`` the reference then
  ours, so slow drift (other tenants, frequency changes) hits both alike.
* Each sample is ``number`` back-to-back calls, ``number`` chosen from the warm-up so a
  sample lasts at least ``min_sample_seconds``; the reported time is the median per call.
* The garbage collector is off while timing; CUDA work is synchronised around each sample.
* Every call allocates its outputs, as a user's call would: large fresh allocations pay
  first-touch page faults on the CPU, and they are part of what is compared.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import statistics
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from pyvision_ops.bench.bandwidth import CopyBandwidth, measure_copy_bandwidth
from pyvision_ops.bench.timing import repeat_without_gc, synchronizer, time_calls
from pyvision_ops.bench.workloads import CheckFailed, Inputs, Workload

__all__ = [
    "TimingSettings",
    "FULL_SETTINGS",
    "QUICK_SETTINGS",
    "TimingStats",
    "WorkloadResult",
    "BenchmarkReport",
    "time_side_by_side",
    "run_workload",
    "run_benchmark",
    "machine_info",
    "OtherProcessesLoad",
]

STATUS_OK = "ok"
STATUS_FAIL = "FAIL"  # results disagree: a kernel bug, never hidden
STATUS_ERROR = "ERROR"  # setup or a call raised


@dataclasses.dataclass(frozen=True)
class TimingSettings:
    """How long and how often to time each implementation.

    Attributes
    ----------
    warmup_calls : int
        Untimed calls before timing (the fastest also estimates the per-call time).
    repeats : int
        Samples per implementation (fewer if ``max_seconds_per_workload`` would be exceeded,
        but never fewer than ``min_repeats``).
    min_sample_seconds : float
        A sample repeats the call until it lasts about this long (timer resolution, jitter).
    max_seconds_per_workload : float
        Time budget for the timed samples of ours and the reference together.
    min_repeats : int
    """

    warmup_calls: int = 3
    repeats: int = 21
    min_sample_seconds: float = 0.03
    max_seconds_per_workload: float = 10.0
    min_repeats: int = 3

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


FULL_SETTINGS = TimingSettings()
QUICK_SETTINGS = TimingSettings(warmup_calls=1, repeats=5, min_sample_seconds=0.005, max_seconds_per_workload=2.0)


@dataclasses.dataclass
class TimingStats:
    """Per-call times of one implementation, in seconds."""

    median_seconds: float
    min_seconds: float
    max_seconds: float
    calls_per_sample: int
    samples_seconds: List[float]

    @classmethod
    def from_samples(cls, samples_seconds: List[float], calls_per_sample: int) -> "TimingStats":
        return cls(
            median_seconds=statistics.median(samples_seconds),
            min_seconds=min(samples_seconds),
            max_seconds=max(samples_seconds),
            calls_per_sample=calls_per_sample,
            samples_seconds=list(samples_seconds),
        )

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy this row was."""
        return (self.max_seconds - self.min_seconds) / self.median_seconds

    def as_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["spread"] = self.spread
        return data


@dataclasses.dataclass
class WorkloadResult:
    """One table row: the check's outcome and both timings."""

    workload: Workload
    device: str
    status: str
    message: str = ""
    max_error: Optional[float] = None
    ours: Optional[TimingStats] = None
    reference: Optional[TimingStats] = None
    copy_bandwidth_gbps: Optional[float] = None
    threads: int = 0
    other_processes_cpus: Optional[float] = None
    ours_single_thread: Optional[TimingStats] = None

    @property
    def speedup(self) -> Optional[float]:
        """reference time / our time (> 1: ours is faster)."""
        if self.ours is None or self.reference is None:
            return None
        return self.reference.median_seconds / self.ours.median_seconds

    @property
    def ours_gbps(self) -> Optional[float]:
        if self.ours is None or self.workload.bytes_moved is None:
            return None
        return self.workload.bytes_moved / self.ours.median_seconds / 1e9

    @property
    def reference_gbps(self) -> Optional[float]:
        reference_bytes = self.workload.effective_reference_bytes_moved
        if self.reference is None or reference_bytes is None:
            return None
        return reference_bytes / self.reference.median_seconds / 1e9

    @property
    def percent_of_copy_bandwidth(self) -> Optional[float]:
        """Our achieved GB/s as a percentage of the machine's measured copy bandwidth."""
        if self.ours_gbps is None or not self.copy_bandwidth_gbps:
            return None
        return 100.0 * self.ours_gbps / self.copy_bandwidth_gbps

    @property
    def thread_scaling(self) -> Optional[float]:
        """Single-thread time / all-threads time of ours (> 1: the extra threads help)."""
        if self.ours is None or self.ours_single_thread is None:
            return None
        return self.ours_single_thread.median_seconds / self.ours.median_seconds

    def as_dict(self) -> Dict[str, Any]:
        workload = self.workload
        return {
            "name": workload.name,
            "family": workload.family,
            "op": workload.op,
            "variant": workload.variant,
            "description": workload.description,
            "mode": workload.mode,
            "device": self.device,
            "threads": self.threads,
            "other_processes_cpus": self.other_processes_cpus,
            "ours_label": workload.ours_label,
            "reference_label": workload.reference_label,
            "status": self.status,
            "message": self.message,
            "exact": workload.exact,
            "max_error": self.max_error,
            "ours": None if self.ours is None else self.ours.as_dict(),
            "reference": None if self.reference is None else self.reference.as_dict(),
            "ours_ms": None if self.ours is None else self.ours.median_seconds * 1e3,
            "reference_ms": None if self.reference is None else self.reference.median_seconds * 1e3,
            "speedup": self.speedup,
            "bytes_moved": workload.bytes_moved,
            "reference_bytes_moved": workload.effective_reference_bytes_moved,
            "ours_gbps": self.ours_gbps,
            "reference_gbps": self.reference_gbps,
            "percent_of_copy_bandwidth": self.percent_of_copy_bandwidth,
            "ours_single_thread": None if self.ours_single_thread is None else self.ours_single_thread.as_dict(),
            "thread_scaling": self.thread_scaling,
            "notes": workload.notes,
        }


@dataclasses.dataclass
class BenchmarkReport:
    """Everything one run measured: machine, copy bandwidth, settings and the rows."""

    machine: Dict[str, Any]
    copy_bandwidth: CopyBandwidth
    settings: TimingSettings
    results: List[WorkloadResult]
    duration_seconds: float
    other_processes_cpus: Optional[float] = None

    @property
    def failed(self) -> List[WorkloadResult]:
        """Rows whose check failed or that raised."""
        return [result for result in self.results if result.status != STATUS_OK]

    def as_dict(self) -> Dict[str, Any]:
        return {
            "machine": self.machine,
            "copy_bandwidth": self.copy_bandwidth.as_dict(),
            "settings": self.settings.as_dict(),
            "duration_seconds": self.duration_seconds,
            "other_processes_cpus": self.other_processes_cpus,
            "rows": [result.as_dict() for result in self.results],
        }


# --------------------------------------------------------------------------------------------
# how busy the rest of the machine was (the development VM is shared: a compile running next
# to the benchmark halves memory bandwidth and quantises timings to scheduler ticks)
# --------------------------------------------------------------------------------------------


def _system_busy_seconds() -> Optional[float]:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(value) for value in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    busy_ticks = sum(fields) - fields[3] - fields[4]
    return busy_ticks / os.sysconf("SC_CLK_TCK")


class OtherProcessesLoad:
    """Measures how many CPUs other processes kept busy between :meth:`start` and :meth:`stop`."""

    def start(self) -> "OtherProcessesLoad":
        self._wall = time.perf_counter()
        self._own = time.process_time()
        self._busy = _system_busy_seconds()
        return self

    def stop(self) -> Optional[float]:
        """Average number of CPUs busy with work other than this process (None if unknown)."""
        busy = _system_busy_seconds()
        wall = time.perf_counter() - self._wall
        if busy is None or self._busy is None or wall <= 0:
            return None
        others = (busy - self._busy) - (time.process_time() - self._own)
        return max(0.0, others / wall)


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def _warm_up(
    function: Callable[[Inputs], Any], inputs: Inputs, settings: TimingSettings, synchronize: Callable[[], None]
) -> Tuple[float, int]:
    """Run the warm-up calls; return the fastest call's seconds and the calls per sample it implies."""
    fastest = min(time_calls(lambda: function(inputs), 1, synchronize) for _ in range(max(1, settings.warmup_calls)))
    fastest = max(fastest, 1e-9)
    return fastest, max(1, math.ceil(settings.min_sample_seconds / fastest))


def _repeats_within_budget(settings: TimingSettings, seconds_per_repeat: float, budget_seconds: float) -> int:
    affordable = int(budget_seconds / seconds_per_repeat)
    return min(settings.repeats, max(settings.min_repeats, affordable))


def time_side_by_side(
    ours: Callable[[Inputs], Any],
    reference: Callable[[Inputs], Any],
    inputs: Inputs,
    device: torch.device,
    settings: TimingSettings,
) -> Tuple[TimingStats, TimingStats]:
    """Time ``ours`` and ``reference`` on ``inputs``, interleaved; see the module docstring.

    Returns
    -------
    (ours, reference) : tuple of TimingStats
    """
    synchronize = synchronizer(device)
    functions = {"ours": ours, "reference": reference}
    warm = {label: _warm_up(function, inputs, settings, synchronize) for label, function in functions.items()}
    calls_per_sample = {label: number for label, (_, number) in warm.items()}
    seconds_per_repeat = sum(fastest * number for fastest, number in warm.values())
    repeats = _repeats_within_budget(settings, seconds_per_repeat, settings.max_seconds_per_workload)

    samples: Dict[str, List[float]] = {label: [] for label in functions}
    order = list(functions)

    def take_sample(repeat: int) -> None:
        # Alternate who goes first so neither always runs on the warmer (or colder) machine.
        for label in order if repeat % 2 == 0 else reversed(order):
            function = functions[label]
            samples[label].append(time_calls(lambda: function(inputs), calls_per_sample[label], synchronize))

    repeat_without_gc(take_sample, repeats)
    return (
        TimingStats.from_samples(samples["ours"], calls_per_sample["ours"]),
        TimingStats.from_samples(samples["reference"], calls_per_sample["reference"]),
    )


def _time_alone(
    function: Callable[[Inputs], Any], inputs: Inputs, device: torch.device, settings: TimingSettings
) -> TimingStats:
    """Time one implementation by itself (used for the single-thread comparison)."""
    synchronize = synchronizer(device)
    fastest, number = _warm_up(function, inputs, settings, synchronize)
    repeats = _repeats_within_budget(settings, fastest * number, settings.max_seconds_per_workload / 2)
    samples: List[float] = []
    repeat_without_gc(lambda _: samples.append(time_calls(lambda: function(inputs), number, synchronize)), repeats)
    return TimingStats.from_samples(samples, number)


# --------------------------------------------------------------------------------------------
# one workload, all workloads
# --------------------------------------------------------------------------------------------


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def run_workload(
    workload: Workload,
    device: torch.device,
    settings: TimingSettings,
    copy_bandwidth_gbps: Optional[float] = None,
    thread_scaling: bool = False,
) -> WorkloadResult:
    """Check ``workload`` (ours against the reference), then time both.

    A failed check still gets timed (the numbers help to judge the bug) but is marked FAIL;
    an exception in setup or in either implementation marks the row ERROR and skips timing.

    Parameters
    ----------
    workload : Workload
    device : torch.device
    settings : TimingSettings
    copy_bandwidth_gbps : float, optional
        The run's copy bandwidth, for the "% of copy" column.
    thread_scaling : bool
        On the CPU, also time ours with one thread (to see that more threads help).
    """
    device = torch.device(device)
    result = WorkloadResult(
        workload=workload,
        device=str(device),
        status=STATUS_OK,
        copy_bandwidth_gbps=copy_bandwidth_gbps,
        threads=torch.get_num_threads(),
    )
    stage = "setup"
    try:
        inputs = workload.setup(device)
        stage = "ours"
        ours_result = workload.ours(inputs)
        stage = "reference"
        reference_result = workload.reference(inputs)
        stage = "check"
        try:
            result.max_error = float(workload.check(ours_result, reference_result, inputs))
        except CheckFailed as mismatch:
            result.status, result.message = STATUS_FAIL, str(mismatch)
            result.max_error = mismatch.max_abs_error
        del ours_result, reference_result
        stage = "timing"
        load = OtherProcessesLoad().start()
        result.ours, result.reference = time_side_by_side(workload.ours, workload.reference, inputs, device, settings)
        result.other_processes_cpus = load.stop()
        if thread_scaling and device.type == "cpu" and torch.get_num_threads() > 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                result.ours_single_thread = _time_alone(workload.ours, inputs, device, settings)
            finally:
                torch.set_num_threads(threads)
    except Exception as error:  # one broken row must not hide the others
        result.status = STATUS_ERROR
        result.message = f"{stage} raised {_describe(error)}"
    return result


def _read_cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> Optional[str]:
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.strip() or None


def machine_info(device: torch.device) -> Dict[str, Any]:
    """What the numbers depend on: CPU/GPU, threads, versions, build, date."""
    device = torch.device(device)
    info: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "cpu_model": _read_cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info["gpu_name"] = properties.name
        info["gpu_memory_gib"] = round(properties.total_memory / 1024**3, 1)
    try:
        import pyvision_ops

        info["pyvision_ops_version"] = getattr(pyvision_ops, "__version__", None)
        info["extension_build"] = {key: str(value) for key, value in pyvision_ops.build_info().items()}
    except Exception as error:  # the rows will show the load error; the header just notes it
        info["extension_build"] = f"unavailable ({_describe(error)})"
    return info


def run_benchmark(
    workloads: Sequence[Workload],
    device: torch.device,
    settings: TimingSettings = FULL_SETTINGS,
    thread_scaling: bool = False,
    progress: Optional[Callable[[Sequence[Workload]], Any]] = None,
) -> BenchmarkReport:
    """Measure the copy bandwidth once, then run every workload on ``device``.

    Parameters
    ----------
    workloads : sequence of Workload
    device : torch.device
    settings : TimingSettings
    thread_scaling : bool
        See :func:`run_workload`.
    progress : callable, optional
        Wraps the workload sequence for iteration (e.g. ``tqdm``) to show progress.
    """
    device = torch.device(device)
    started = time.perf_counter()
    load = OtherProcessesLoad().start()
    info = machine_info(device)
    bandwidth = measure_copy_bandwidth(device)
    results = []
    for workload in progress(workloads) if progress is not None else workloads:
        results.append(run_workload(workload, device, settings, bandwidth.median_gbps, thread_scaling))
    return BenchmarkReport(
        machine=info,
        copy_bandwidth=bandwidth,
        settings=settings,
        results=results,
        duration_seconds=time.perf_counter() - started,
        other_processes_cpus=load.stop(),
    )
