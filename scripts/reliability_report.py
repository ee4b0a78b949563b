"""Runs every reliability check of the project and writes docs/reliability.md (`make reliability`).

Each check is a pytest file (or, for the sanitizers, scripts/sanitize.py) run in its own
process with a JUnit XML report; some also write a JSON of their own figures through an
environment variable. The script counts, per check, the cases run, passed, failed, expected to
fail (known bugs, strict xfails) and skipped, adds the check's own figures, and writes the table
with the machine, the date and the commit. It exits non-zero when any check failed, so the table
in the repository is the one of a run where every figure that must be zero is zero, or says
which is not.

    python scripts/reliability_report.py                 # the bounded versions, ~15 minutes
    python scripts/reliability_report.py --full          # longer fuzzing, full sanitizer run
    python scripts/reliability_report.py --only fuzz,threads --output /tmp/r.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Check:
    """One row of the table."""

    name: str
    what: str
    command: Callable[[Path, bool], List[str]]  # (work dir, full) -> argv
    env: Callable[[Path, bool], Dict[str, str]] = lambda work, full: {}
    figures: Callable[[Path], str] = lambda work: ""  # the check's own figures, from its JSON
    must_be_zero: str = "failed"


@dataclass
class Result:
    check: Check
    returncode: int
    seconds: float
    counts: Dict[str, int] = field(default_factory=dict)
    figures: str = ""
    failures: List[str] = field(default_factory=list)


def _pytest(*files: str, extra: Optional[List[str]] = None) -> Callable[[Path, bool], List[str]]:
    def command(work: Path, full: bool) -> List[str]:
        return [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider", "-rfE",
                f"--junitxml={work / 'junit.xml'}", *(extra or [])]
    return command


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _json_figures(name: str, render: Callable[[dict], str]) -> Callable[[Path], str]:
    def figures(work: Path) -> str:
        data = _read_json(work / name)
        if data is None:
            return "(no figures written)"
        try:
            return render(data)
        except (KeyError, TypeError, ValueError) as error:
            return f"(figures unreadable: {error!r})"
    return figures


def _sum_key(data: dict, key: str) -> int:
    """data[key] if it is a number, else the sum of data[...][key] over a dict of per-op dicts."""
    if isinstance(data.get(key), (int, float)):
        return int(data[key])
    return int(sum(v.get(key, 0) for v in data.values() if isinstance(v, dict)))


CHECKS: List[Check] = [
    Check(
        "bad inputs",
        "every public op and module: wrong rank / dtype / device, shape mismatches, bad kernel, "
        "stride and padding, out-of-range indices, NaN/inf, empty and zero-size, non-contiguous, "
        "channels_last, expanded and overlapping memory, size overflow; risky cases in a "
        "subprocess; caller's tensors compared before/after",
        _pytest("tests/test_reliability_inputs.py"),
        env=lambda work, full: {"PVO_INPUTS_STATS": str(work / "inputs.json")},
        figures=_json_figures("inputs.json", lambda d: ", ".join(f"{k} {v}" for k, v in d.items()
                                                                    if isinstance(v, (int, float)))),
    ),
    Check(
        "fuzzing",
        "hypothesis over shapes, strides, dtypes and parameters of every public op against the "
        "float64 references (profile `ci`: derandomized; `--full`: profile `fuzz`)",
        _pytest("tests/test_fuzz.py"),
        env=lambda work, full: {"PVO_FUZZ_STATS": str(work / "fuzz.json"),
                                "PVO_FUZZ_PROFILE": "fuzz" if full else "ci"},
        figures=_json_figures("fuzz.json", lambda d: f"{_sum_key(d, 'examples')} examples"
                              if _sum_key(d, "examples") else json.dumps(d)[:200]),
    ),
    Check(
        "threads",
        "every public op (both CPU kernel paths) and the models' forwards from 4 Python threads "
        "at once, bitwise equal to serial calls; two serial calls bitwise equal",
        _pytest("tests/test_reliability_threads.py"),
    ),
    Check(
        "determinism",
        "outputs and gradients of every op in two fresh interpreters, bitwise equal (1 and 2 "
        "threads); on CUDA: deterministic or raising under use_deterministic_algorithms",
        _pytest("tests/test_reliability_determinism.py"),
    ),
    Check(
        "memory",
        "1000 calls of every op (forward, and backward where differentiable) and model after a "
        "warm-up: RSS growth bounded; cases beyond 2^31 elements for unpooling and distances",
        _pytest("tests/test_reliability_memory.py"),
        env=lambda work, full: {"PVO_MEMORY_STATS": str(work / "memory.json")},
        figures=_json_figures("memory.json", lambda d: ", ".join(
            f"{k}: {v['wall_s']} s, peak {v['peak_rss_gib']} GiB" for k, v in d.items()
            if k.startswith("bigmem_") and isinstance(v, dict))),
    ),
    Check(
        "compilation",
        "torch.compile(fullgraph=True) with inductor, static and dynamic shapes, and torch.export, "
        "for every op and model, against eager",
        _pytest("tests/test_reliability_compile.py"),
        env=lambda work, full: {"PVO_COMPILE_STATS": str(work / "compile.json"), "PVO_RELIABILITY_COMPILE": "1",
                                **({"PVO_RELIABILITY_FULL": "1"} if full else {})},
        figures=_json_figures("compile.json", lambda d: ", ".join(f"{k} {v}" for k, v in d.items()
                                                                     if isinstance(v, (int, float)))),
    ),
    Check(
        "opcheck",
        "torch.library.opcheck (schema, fake kernel, autograd registration) and aot_eager "
        "fullgraph compile on every sample of every op's contract test",
        _pytest("tests", extra=["-k", "test_opcheck or test_compile_fullgraph_matches_eager"]),
    ),
    Check(
        "sanitizers",
        "the CPU kernels built with AddressSanitizer + UndefinedBehaviorSanitizer, the test suite "
        "run under them (`ci` subset; `--full`: all of tests/); reports from this project's code; "
        "a copy with a planted heap overflow and signed overflow must have both reported",
        lambda work, full: [sys.executable, "scripts/sanitize.py", "--self-check", "--subset", "all" if full else "ci",
                            "--json", str(work / "sanitize.json")],
        figures=_json_figures("sanitize.json", lambda d: ", ".join(f"{k} {v}" for k, v in d.items()
                                                                      if isinstance(v, (int, float)))),
        must_be_zero="failed, reports",
    ),
]


def _junit_counts(path: Path) -> Dict[str, int]:
    counts = {"tests": 0, "passed": 0, "failed": 0, "xfailed": 0, "skipped": 0}
    try:
        tree = ElementTree.parse(path)
    except (OSError, ElementTree.ParseError):
        return {}
    for case in tree.iter("testcase"):
        counts["tests"] += 1
        children = {child.tag: child for child in case}
        if "failure" in children or "error" in children:
            counts["failed"] += 1
        elif "skipped" in children:
            if "xfail" in (children["skipped"].get("type", "") + children["skipped"].get("message", "")).lower():
                counts["xfailed"] += 1
            else:
                counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def _failures(path: Path) -> List[str]:
    try:
        tree = ElementTree.parse(path)
    except (OSError, ElementTree.ParseError):
        return []
    names = []
    for case in tree.iter("testcase"):
        if any(child.tag in ("failure", "error") for child in case):
            names.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return names


def run_check(check: Check, full: bool, log_dir: Path) -> Result:
    work = Path(tempfile.mkdtemp(prefix=f"pvo-reliability-{check.name.replace(' ', '-')}-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **check.env(work, full)}
    command = check.command(work, full)
    print(f"[reliability] {check.name}: {' '.join(command)}", flush=True)
    start = time.monotonic()
    log = log_dir / f"{check.name.replace(' ', '-')}.log"
    with open(log, "w") as out:
        completed = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    result = Result(check, completed.returncode, seconds, _junit_counts(work / "junit.xml"),
                    check.figures(work), _failures(work / "junit.xml"))
    sanitize = _read_json(work / "sanitize.json")
    if sanitize is not None:
        result.counts = {key: int(sanitize[key]) for key in ("tests", "passed", "failed", "skipped", "xfailed")
                         if isinstance(sanitize.get(key), (int, float))}
    print(f"[reliability] {check.name}: exit {completed.returncode}, {seconds:.0f} s, {result.counts} "
          f"{result.figures} (log {log})", flush=True)
    return result


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{'CUDA device ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device'}")


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        # The report's own files (docs/reliability.*, written by this run) do not count.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)docs/reliability.md", ":(exclude)docs/reliability.json"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def render(results: List[Result], full: bool) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Reliability",
        "",
        "Written by `make reliability` (`python scripts/reliability_report.py" + (" --full" if full else "") + "`);",
        f"this run: {date}, commit {_commit()}, {_machine()}, "
        f"{'full' if full else 'bounded'} versions of the checks. CI (`.ci/run`) runs every bounded check: "
        "`make test` holds the bad-input, fuzzing, thread, determinism, memory and opcheck "
        "files, `make compile-check` the compilation file, `make sanitize SANITIZE_SUBSET=ci` the sanitizers.",
        "",
        "Counts are test cases (pytest); *failed* includes crashes (a case that kills its subprocess "
        "or the interpreter fails), wrong answers, unclear errors and modified inputs; *known bugs* "
        "are strict xfails (each names the bug; fixed bugs turn them into failures). Sanitizer "
        "reports count only those whose stack reaches this project's code.",
        "",
        "| check | what is tried | cases | passed | failed | known bugs | skipped | figures | time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        c = r.counts
        status = "" if r.returncode == 0 else f" (exit {r.returncode})"
        lines.append(
            f"| {r.check.name}{status} | {r.check.what} | {c.get('tests', '-')} | {c.get('passed', '-')} | "
            f"{c.get('failed', '-')} | {c.get('xfailed', '-')} | {c.get('skipped', '-')} | {r.figures or '-'} | "
            f"{r.seconds:.0f} s |")
    failed = [r for r in results if r.returncode != 0]
    lines.append("")
    if failed:
        lines.append("Checks that did not pass in this run: " + ", ".join(r.check.name for r in failed) + ".")
        for r in failed:
            for name in r.failures[:20]:
                lines.append(f"- {r.check.name}: `{name}`")
    else:
        lines.append("Every check passed: 0 crashes, 0 wrong answers or unclear errors, 0 modified inputs, "
                     "0 nondeterministic results, 0 leaks and 0 sanitizer reports in what was tried.")
    lines.append("")
    lines += ["## Determinism per op", "",
              "Enforced by tests/test_reliability_determinism.py (its DETERMINISM table): CPU results bitwise "
              "equal across interpreters at a fixed thread count; CUDA under "
              "`torch.use_deterministic_algorithms(True)` bitwise equal or raising.", ""]
    try:
        sys.path.insert(0, str(ROOT / "tests"))
        from test_reliability_determinism import markdown_table

        lines.append(markdown_table())
    except Exception as error:  # noqa: BLE001 -- the table is documentation; the row above says why
        lines.append(f"(the table could not be imported: {type(error).__name__}: {error})")
    lines.append("")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the long versions (fuzz profile, full sanitizer run)")
    parser.add_argument("--only", default="", help="comma-separated check names (default: all): "
                        + ", ".join(c.name for c in CHECKS))
    parser.add_argument("--output", default=str(ROOT / "docs" / "reliability.md"))
    parser.add_argument("--logs", default=str(ROOT / ".venv" / "reliability-logs"))
    parser.add_argument("--keep", action="store_true",
                        help="with --only: keep the other checks' rows of the last run (the JSON next to --output)")
    args = parser.parse_args(argv)
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = wanted - {c.name for c in CHECKS}
    if unknown:
        parser.error(f"--only: unknown checks {sorted(unknown)}; known: {[c.name for c in CHECKS]}")
    log_dir = Path(args.logs)
    log_dir.mkdir(parents=True, exist_ok=True)
    results = [run_check(c, args.full, log_dir) for c in CHECKS if not wanted or c.name in wanted]
    saved = Path(args.output).with_suffix(".json")
    if args.keep and saved.exists():
        previous = {row["check"]: row for row in json.loads(saved.read_text())}
        fresh = {r.check.name: r for r in results}
        by_name = {c.name: c for c in CHECKS}
        results = [fresh[c.name] if c.name in fresh else
                   Result(by_name[c.name], previous[c.name]["returncode"], previous[c.name]["seconds"],
                          previous[c.name]["counts"], previous[c.name]["figures"], previous[c.name]["failures"])
                   for c in CHECKS if c.name in fresh or c.name in previous]
    saved.write_text(json.dumps([{"check": r.check.name, "returncode": r.returncode, "seconds": r.seconds,
                                  "counts": r.counts, "figures": r.figures, "failures": r.failures}
                                 for r in results], indent=1) + "\n")
    Path(args.output).write_text(render(results, args.full))
    print(f"[reliability] wrote {args.output}")
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
