"""`make sanitize`: the CPU kernels built with AddressSanitizer + UndefinedBehaviorSanitizer, and
the test suite run against that build.

    python scripts/sanitize.py --subset ci  --json sanitize.json    # CI: a subset, < 10 minutes
    python scripts/sanitize.py --subset all --json sanitize.json    # every CPU test

Steps:

1. Build. The CPU sources setup.py compiles (csrc/**/*.cpp without the *_cuda.cpp glue; no .cu)
   are compiled by ninja into build-sanitize/ with -O1 -g1 -fno-omit-frame-pointer
   -fsanitize=address,undefined -fsanitize-recover=address -fno-sanitize=vptr and linked into
   build-sanitize/_C.so. The libtorch headers are compiled once, with the same flags, into a
   precompiled header (PCH_HEADERS) that the sources reaching libtorch are built with. vptr is
   off because libtorch is not instrumented: the check would need type information libtorch's
   objects do not carry, and reports false positives on them. The in-place pyvision_ops/_C*.so
   and build/ are never touched.
2. Test. pytest runs with the compiler's libasan (and libubsan) in LD_PRELOAD (an instrumented
   library loaded into an uninstrumented python needs the runtime first), PYVISION_OPS_EXTENSION
   naming the sanitized _C.so (pyvision_ops/_extension.py then loads it as pyvision_ops._C), and
   halt_on_error=0, so one report does not hide the next; each process writes its reports to
   <log dir>/asan.<pid> and <log dir>/ubsan.<pid> (the latter through a constructor compiled
   into the sanitized library, UBSAN_REPORT_PATH_SOURCE: with ASan loaded, UBSan ignores its
   log_path option). Leak detection is off: CPython frees little of
   what it allocates at exit, and every interpreter would "leak". Subprocesses started by the tests
   inherit the environment, so they run the sanitized build too.
3. Count. Every report is split out of the logs; a report "touches this project" when one of its
   stack frames (or its source location) lies in csrc/ or in the sanitized _C.so. Both counts are
   printed with the reports of this project in full; --json writes
   {"tests", "passed", "failed", "reports", "all reports"}. The exit status is non-zero when a
   report touches this project, a test failed, or pytest did not finish.

Reports from libtorch or python alone would be suppressed through the files in
scripts/sanitize_suppressions/ (each entry documented there); none is needed at present.

4. Self-check (--self-check, which make sanitize and make reliability pass): the library is linked
   again with a heap overflow and a signed overflow planted in a copy of PLANT_SOURCE, a few tests
   run against it as above, and both bugs must be reported; the JSON gains "planted bugs" and
   "planted bugs reported", and the exit status is non-zero otherwise.

Options: --csrc and --build-dir build another source tree; arguments after `--` go to pytest in
place of the subset's selection.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
SUPPRESSIONS = ROOT / "scripts" / "sanitize_suppressions"

#: -g1 (line tables) is what a report's symbolised stack needs: function, file and line. Full -g
#: made the build about a third slower on libtorch's templates and told a report nothing more.
SANITIZE_FLAGS = [
    "-O1", "-g1", "-fno-omit-frame-pointer",
    "-fsanitize=address,undefined", "-fsanitize-recover=address", "-fno-sanitize=vptr",
]

#: The CI subset: every family's op tests on the kernels this CPU picks ("simd"), not the slow
#: ones, plus the thread/determinism matrix of tests/test_reliability_threads.py (every public op
#: and model) on both CPU paths, so that the portable kernels run under the sanitizers too. The
#: full run (--subset all) adds the portable copies of every test, the nn modules, the models,
#: metric learning and the slow tests.
CI_SELECTION = [
    "tests/test_unpool.py",
    "tests/test_gram.py",
    "tests/test_distance.py",
    "tests/test_assign.py",
    "tests/test_attention.py",
    "tests/test_reliability_threads.py",
    "-m", "not slow and not needs_cuda",
    "-k", "not portable or test_reliability_threads",
]

#: The full run: every test that can run without a GPU.
ALL_SELECTION = ["tests", "-m", "not needs_cuda"]

#: Tests whose subject is "the compiled extension is absent": they start interpreters on a copy of
#: the package without _C and expect has_ops() False, which the PYVISION_OPS_EXTENSION variable
#: they inherit (the point of this run) turns into True. They test Python only; nothing to sanitize.
DESELECTED = [
    "tests/test_package.py::test_import_without_the_extension_and_calling_an_op_says_how_to_build",
    "tests/test_package.py::test_info_says_the_extension_is_not_built",
    "tests/test_package.py::test_bench_lists_its_workloads_without_the_extension",
]


def _say(message: str) -> None:
    print(f"[sanitize] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------


def cpu_sources(csrc: Path) -> List[Path]:
    """The sources setup.py compiles when there is no CUDA: every .cpp except the *_cuda.cpp glue."""
    sources = sorted(Path(p) for p in glob.glob(str(csrc / "**" / "*.cpp"), recursive=True))
    return [s for s in sources if not s.name.endswith("_cuda.cpp")]


#: The libtorch headers the sources include, compiled once into a precompiled header that every
#: source reaching a libtorch header is built with (-include). Parsing them was most of the time of
#: the small sources (the argument checks: 16 s each, 4 s with it).
PCH_HEADERS = [
    "ATen/ATen.h", "ATen/Parallel.h", "ATen/OpMathType.h", "ATen/core/dispatch/Dispatcher.h",
    "torch/library.h",
]
_INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)
_TORCH_PREFIXES = ("ATen/", "torch/", "c10/")


def reaches_torch(source: Path, csrc: Path, seen: Optional[Dict[Path, bool]] = None) -> bool:
    """Whether `source` includes a libtorch header, directly or through this project's headers
    (quoted includes resolved against its own folder and csrc/)."""
    seen = {} if seen is None else seen
    if source in seen:
        return seen[source]
    seen[source] = False  # an include cycle adds nothing
    found = False
    for quote, name in _INCLUDE.findall(source.read_text(errors="replace")):
        if name.startswith(_TORCH_PREFIXES):
            found = True
            break
        if quote == '"':
            for folder in (source.parent, csrc):
                header = (folder / name).resolve()
                if header.is_file():
                    if reaches_torch(header, csrc, seen):
                        found = True
                    break
            if found:
                break
    seen[source] = found
    return found


#: Compiled into the sanitized library only. With ASan loaded, GCC's UBSan runtime ignores
#: UBSAN_OPTIONS' log_path and prints its reports to stderr, where pytest's capture swallows them
#: (the self-check found this: its signed overflow was never counted). Its own copy of
#: __sanitizer_set_report_path (looked up in libubsan, not the one ASan interposes) does set the
#: path; this runs it when the library loads, before any other initialiser of the library.
UBSAN_REPORT_PATH_SOURCE = """// Generated by scripts/sanitize.py; do not edit.
#include <dlfcn.h>
#include <cstdlib>

__attribute__((constructor(101))) static void pvo_sanitize_ubsan_report_path() {
  const char* path = std::getenv("PVO_UBSAN_LOG_PATH");
  const char* runtime = std::getenv("PVO_UBSAN_RUNTIME");
  if (path == nullptr || *path == 0) return;
  void* ubsan = dlopen(runtime != nullptr && *runtime != 0 ? runtime : "libubsan.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (ubsan == nullptr) return;
  using SetReportPath = void (*)(const char*);
  auto set_report_path = reinterpret_cast<SetReportPath>(dlsym(ubsan, "__sanitizer_set_report_path"));
  if (set_report_path != nullptr) set_report_path(path);
}
"""


def _write_build_info(folder: Path) -> None:
    """The header csrc/python_module.cpp includes, as setup.py writes it for a CPU-only build."""
    import torch

    version = re.search(r'^__version__ = "([^"]+)"', (ROOT / "pyvision_ops" / "_version.py").read_text(), re.M)
    folder.mkdir(parents=True, exist_ok=True)
    text = (
        "// Generated by scripts/sanitize.py; do not edit.\n#pragma once\n"
        f"#define PVO_VERSION \"{version.group(1) if version else 'unknown'}\"\n"
        f"#define PVO_TORCH_VERSION \"{torch.__version__}\"\n"
        "#define PVO_WITH_CUDA 0\n"
        "#define PVO_CUDA_VERSION \"\"\n"
        "#define PVO_CUDA_ARCHS \"\"\n"
    )
    header = folder / "pvo_build_info.h"
    if not header.exists() or header.read_text() != text:
        header.write_text(text)


def _ninja() -> str:
    for candidate in (Path(sys.executable).parent / "ninja", shutil.which("ninja")):
        if candidate and os.path.exists(candidate):
            return str(candidate)
    raise SystemExit("[sanitize] ninja is needed for the build (pip install ninja)")


def _compiler() -> str:
    for candidate in (os.environ.get("CXX"), "g++", "c++"):
        if candidate and shutil.which(candidate):
            return candidate
    raise SystemExit("[sanitize] no C++ compiler found (set CXX)")


def build(csrc: Path, build_dir: Path, jobs: int, replaced: Optional[Dict[Path, Path]] = None,
          objects_from: Optional[Path] = None) -> Path:
    """Compile and link the sanitized CPU extension; returns the path of the _C.so.

    With `replaced` ({source under csrc: the file to compile in its place}) and `objects_from` (an
    earlier build's folder), only the replacements are compiled; every other object is that
    build's (the self-check's cheap build)."""
    from torch.utils import cpp_extension

    csrc = csrc.resolve()
    build_dir = build_dir.resolve()
    for forbidden in (ROOT / "build", ROOT / "pyvision_ops"):
        if build_dir == forbidden or forbidden in build_dir.parents:
            raise SystemExit(f"[sanitize] refusing to build into {build_dir}: it holds the regular build")
    generated = build_dir / "generated"
    _write_build_info(generated)
    sources = cpu_sources(csrc)
    if not sources:
        raise SystemExit(f"[sanitize] no C++ sources under {csrc}")
    cxx = _compiler()
    includes = [csrc, generated, *map(Path, cpp_extension.include_paths()), Path(sysconfig.get_paths()["include"])]
    cflags = [
        "-fPIC", "-std=c++20", "-fopenmp", "-Wall", "-Wno-unknown-pragmas", "-Wno-sign-compare",
        "-DNDEBUG", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
        *SANITIZE_FLAGS, *(f"-I{folder}" for folder in includes),
    ]
    torch_lib = Path(cpp_extension.library_paths()[0])
    ldflags = [
        "-shared", "-fopenmp", *SANITIZE_FLAGS, f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}",
        "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python",
    ]
    output = build_dir / "_C.so"
    quote = lambda parts: " ".join(shlex.quote(str(p)) for p in parts)  # noqa: E731
    lines = [
        "ninja_required_version = 1.3",
        f"cxx = {shlex.quote(cxx)}",
        f"cflags = {quote(cflags)}",
        f"ldflags = {quote(ldflags)}",
        "rule compile",
        "  command = $cxx -MMD -MF $out.d $cflags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = compile $in",
        "rule pch",
        "  command = $cxx -MMD -MF $out.d $cflags -x c++-header $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = precompile $in",
        "rule link",
        "  command = $cxx $in -o $out $ldflags",
        "  description = link $out",
    ]
    pch_header = generated / "pvo_torch_pch.h"
    pch_text = "// Generated by scripts/sanitize.py; do not edit.\n" + "".join(
        f"#include <{name}>\n" for name in PCH_HEADERS)
    if not pch_header.exists() or pch_header.read_text() != pch_text:
        pch_header.write_text(pch_text)
    pch = Path(str(pch_header) + ".gch")
    replaced = {(csrc / key).resolve(): value.resolve() for key, value in (replaced or {}).items()}
    objects = []
    seen: Dict[Path, bool] = {}
    with_pch = 0
    ubsan_source = generated / "pvo_ubsan_report_path.cpp"
    if not ubsan_source.exists() or ubsan_source.read_text() != UBSAN_REPORT_PATH_SOURCE:
        ubsan_source.write_text(UBSAN_REPORT_PATH_SOURCE)
    ubsan_object = build_dir / "obj" / "pvo_ubsan_report_path.o"
    lines.append(f"build {ubsan_object}: compile {ubsan_source}")
    objects.append(ubsan_object)
    for original in sources:
        relative = original.relative_to(csrc).with_suffix(".o")
        if objects_from is not None and original not in replaced:
            objects.append(objects_from.resolve() / "obj" / relative)
            continue
        source = replaced.get(original, original)
        obj = build_dir / "obj" / relative
        objects.append(obj)
        if reaches_torch(source, csrc, seen):
            if not with_pch:
                lines.append(f"build {pch}: pch {pch_header}")
            # the .gch next to the header is used in its place; -Winvalid-pch says so if it is not
            with_pch += 1
            lines.append(f"build {obj}: compile {source} | {pch}")
            lines.append(f"  cflags = $cflags -Winvalid-pch -include {shlex.quote(str(pch_header))}")
        else:
            lines.append(f"build {obj}: compile {source}")
    lines.append(f"build {output}: link {' '.join(map(str, objects))}")
    lines.append(f"default {output}")
    build_dir.mkdir(parents=True, exist_ok=True)
    ninja_file = build_dir / "build.ninja"
    text = "\n".join(lines) + "\n"
    if not ninja_file.exists() or ninja_file.read_text() != text:
        ninja_file.write_text(text)
    compiled = len(sources) if objects_from is None else len(replaced)
    _say(f"building {compiled} CPU sources of {csrc} ({with_pch} with the libtorch headers precompiled) "
         f"with {' '.join(SANITIZE_FLAGS)} into {build_dir} ({jobs} jobs)")
    started = time.monotonic()
    done = subprocess.run([_ninja(), "-C", str(build_dir), "-j", str(jobs)])
    if done.returncode != 0:
        raise SystemExit(f"[sanitize] the sanitized build failed (ninja exit {done.returncode})")
    _say(f"built {output} in {time.monotonic() - started:.0f} s")
    return output


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------


def sanitizer_runtimes(cxx: str) -> List[str]:
    """The compiler's ASan and UBSan runtimes, ASan first (it must come before every other library)."""
    runtimes = []
    for name in ("libasan.so", "libubsan.so"):
        found = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        if not found or not os.path.isabs(found) or not os.path.exists(found):
            raise SystemExit(f"[sanitize] {cxx} does not know where {name} is (got {found!r})")
        runtimes.append(os.path.realpath(found))
    return runtimes


_PLUGIN = '''"""Written by scripts/sanitize.py: records each test's outcome as it finishes, so the counts
survive a run that a sanitizer (or a crash) ends early."""
import json, os

_PATH = os.environ["PVO_SANITIZE_RESULTS"]


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        outcome = "xfailed" if (report.skipped and hasattr(report, "wasxfail")) else report.outcome
        if report.when != "call" and outcome == "failed":
            outcome = "error"
        with open(_PATH, "a") as results:
            results.write(json.dumps({"nodeid": report.nodeid, "when": report.when, "outcome": outcome}) + "\\n")
'''


@dataclass
class TestCounts:
    outcomes: Dict[str, str] = field(default_factory=dict)

    def count(self, *kinds: str) -> int:
        return sum(1 for outcome in self.outcomes.values() if outcome in kinds)


def read_results(path: Path) -> TestCounts:
    """One outcome per test: a failure in setup/call/teardown wins over a pass."""
    counts = TestCounts()
    if not path.exists():
        return counts
    rank = {"passed": 0, "skipped": 1, "xfailed": 1, "failed": 2, "error": 2}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        previous = counts.outcomes.get(entry["nodeid"])
        if previous is None or rank.get(entry["outcome"], 2) >= rank.get(previous, 2):
            counts.outcomes[entry["nodeid"]] = entry["outcome"]
    return counts


def run_tests(library: Path, log_dir: Path, pytest_args: Sequence[str], cxx: str) -> tuple[int, TestCounts]:
    if log_dir.exists():
        shutil.rmtree(log_dir)
    log_dir.mkdir(parents=True)
    plugin_dir = log_dir / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "pvo_sanitize_results.py").write_text(_PLUGIN)
    results = log_dir / "results.jsonl"

    asan = ["detect_leaks=0", "halt_on_error=0", f"log_path={log_dir / 'asan'}",
            # the CUDA driver, when torch probes for it, maps memory inside ASan's shadow gap
            "protect_shadow_gap=0", "detect_odr_violation=0",
            # an allocation too large for ASan's allocator fails as glibc's does (torch raises
            # "out of memory") instead of aborting the process
            "allocator_may_return_null=1"]
    # The runtimes share their flags: UBSan's log_path, parsed last, is the one ASan's reports
    # follow, so it names ASan's logs. UBSan's own reports go through PVO_UBSAN_LOG_PATH (see
    # UBSAN_REPORT_PATH_SOURCE); the self-check shows both arrive.
    ubsan = ["print_stacktrace=1", "halt_on_error=0", f"log_path={log_dir / 'asan'}"]
    for options, name in ((asan, "asan.supp"), (ubsan, "ubsan.supp")):
        supp = SUPPRESSIONS / name
        if supp.exists():
            options.append(f"suppressions={supp}")
    env = dict(os.environ)
    runtimes = sanitizer_runtimes(cxx)
    env.update(
        PVO_UNDER_SANITIZERS="1",
        PVO_UBSAN_LOG_PATH=str(log_dir / "ubsan"),
        PVO_UBSAN_RUNTIME=runtimes[1],
        LD_PRELOAD=" ".join(runtimes + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else [])),
        ASAN_OPTIONS=":".join(asan),
        UBSAN_OPTIONS=":".join(ubsan),
        PYVISION_OPS_EXTENSION=str(library),
        PVO_SANITIZE_RESULTS=str(results),
        PYTHONPATH=os.pathsep.join([str(plugin_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "pvo_sanitize_results", "-p", "no:cacheprovider",
               *(f"--deselect={test}" for test in DESELECTED), *pytest_args]
    _say("running: " + " ".join(shlex.quote(c) for c in command))
    _say(f"  LD_PRELOAD={env['LD_PRELOAD']}")
    _say(f"  ASAN_OPTIONS={env['ASAN_OPTIONS']}")
    _say(f"  UBSAN_OPTIONS={env['UBSAN_OPTIONS']}")
    _say(f"  PVO_UBSAN_LOG_PATH={env['PVO_UBSAN_LOG_PATH']} (UBSan reports, set by the library)")
    _say(f"  PYVISION_OPS_EXTENSION={library}")
    started = time.monotonic()
    returncode = subprocess.run(command, cwd=ROOT, env=env).returncode
    _say(f"pytest exited with {returncode} after {time.monotonic() - started:.0f} s")
    return returncode, read_results(results)


# --------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------

_START = re.compile(r"(^==\d+==ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer))|(runtime error: )")
_SUMMARY = re.compile(r"^SUMMARY: \w+Sanitizer")


@dataclass
class Report:
    log: Path
    lines: List[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def headline(self) -> str:
        return self.lines[0].strip()


def split_reports(log: Path) -> List[Report]:
    """The reports in one sanitizer log: each from its ERROR / "runtime error" line to its SUMMARY
    line (or to the next report)."""
    reports: List[Report] = []
    current: Optional[List[str]] = None
    for line in log.read_text(errors="replace").splitlines():
        if _START.search(line):
            if current:
                reports.append(Report(log, current))
            current = [line]
        elif current is not None:
            current.append(line)
            if _SUMMARY.match(line):
                reports.append(Report(log, current))
                current = None
    if current:
        reports.append(Report(log, current))
    return reports


def touches_project(report: Report, markers: Sequence[str]) -> bool:
    return any(marker in report.text for marker in markers)


def collect_reports(log_dir: Path) -> List[Report]:
    reports = []
    for log in sorted(log_dir.glob("asan.*")) + sorted(log_dir.glob("ubsan.*")):
        reports += split_reports(log)
    return reports


# --------------------------------------------------------------------------------------------
# self-check: a copy of the library with two planted bugs must be reported
# --------------------------------------------------------------------------------------------

#: Where the bugs are planted: a torch-free source, so the planted build compiles one small file
#: and links it with the main build's other objects.
PLANT_SOURCE = Path("common") / "cpu_features.cpp"
PLANT = """
// Planted by scripts/sanitize.py --self-check (never in the real library): a heap overflow and a
// signed overflow, run when the library loads, so that every process of the run meets them.
namespace {
struct PvoPlantedBugs {
  PvoPlantedBugs() {
    int* block = new int[4];
    volatile int index = 4;
    block[index] = 1;
    volatile int largest = 2147483647;
    volatile int sum = largest + index;
    (void)sum;
    delete[] block;
  }
} pvo_planted_bugs;
}  // namespace
"""
#: What each planted bug must produce, in a report whose stack reaches the planted file.
PLANTED_REPORTS = {"heap overflow": "heap-buffer-overflow", "signed overflow": "signed integer overflow"}
SELF_CHECK_SELECTION = ["tests/test_gram.py", "-k", "float32 and not portable"]


def self_check(csrc: Path, build_dir: Path, jobs: int, cxx: str) -> Dict[str, bool]:
    """Builds the library again with PLANT appended to PLANT_SOURCE (reusing every other object of
    `build_dir`), runs a few tests against it the way the real run does, and returns which planted
    bug was reported. A harness that counted nothing (sanitizers not loaded, the wrong library
    tested, logs not found) fails here instead of passing with zero reports."""
    folder = build_dir.resolve() / "self-check"
    planted = folder / "planted" / PLANT_SOURCE
    planted.parent.mkdir(parents=True, exist_ok=True)
    text = (csrc / PLANT_SOURCE).read_text() + PLANT
    if not planted.exists() or planted.read_text() != text:
        planted.write_text(text)
    _say(f"self-check: the library with two planted bugs in {planted}")
    library = build(csrc, folder, jobs, replaced={PLANT_SOURCE: planted}, objects_from=build_dir)
    returncode, counts = run_tests(library, folder / "logs", SELF_CHECK_SELECTION, cxx)
    reports = [r for r in collect_reports(folder / "logs") if touches_project(r, [str(planted)])]
    caught = {name: any(kind in r.text for r in reports) for name, kind in PLANTED_REPORTS.items()}
    _say(f"self-check: {len(reports)} reports of the planted bugs; "
         + ", ".join(f"{name} {'reported' if found else 'NOT reported'}" for name, found in caught.items())
         + f"; pytest exit {returncode}, {counts.count('passed')} passed")
    if returncode != 0 or not counts.count("passed"):
        caught = {name: False for name in caught}
    return caught


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", choices=("ci", "all"), default="ci",
                        help="ci: each family's op tests on the default CPU path and the thread matrix on both, "
                             "not the slow ones; "
                             "all: every test that needs no GPU (default: ci)")
    parser.add_argument("--json", type=Path, help="write {tests, passed, failed, reports, all reports} here")
    parser.add_argument("--csrc", type=Path, default=ROOT / "csrc", help="the sources to build (default: csrc/)")
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build-sanitize",
                        help="where the objects, the _C.so and the logs go (default: build-sanitize/)")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2") or 2),
                        help="parallel compile jobs (default: $MAX_JOBS or 2)")
    parser.add_argument("--log-dir", type=Path, help="where the sanitizer logs go (default: <build dir>/logs)")
    parser.add_argument("--build-only", action="store_true", help="build, run no test")
    parser.add_argument("--self-check", action="store_true",
                        help="also build a copy with two planted bugs and fail unless both are reported")
    options = parser.parse_args(argv)

    started = time.monotonic()
    cxx = _compiler()
    library = build(options.csrc, options.build_dir, max(1, options.jobs))
    if options.build_only:
        return 0
    caught: Optional[Dict[str, bool]] = None
    if options.self_check:
        caught = self_check(options.csrc.resolve(), options.build_dir, max(1, options.jobs), cxx)
    log_dir = (options.log_dir or options.build_dir / "logs").resolve()
    selection = extra or (CI_SELECTION if options.subset == "ci" else ALL_SELECTION)
    returncode, counts = run_tests(library, log_dir, selection, cxx)

    markers = [str(options.csrc.resolve()) + os.sep, str(library)]
    reports = collect_reports(log_dir)
    ours = [r for r in reports if touches_project(r, markers)]
    others = [r for r in reports if r not in ours]
    for report in ours:
        print(f"\n---- sanitizer report touching this project ({report.log.name}) ----\n{report.text}")
    for report in others:
        print(f"\n---- sanitizer report outside this project ({report.log.name}): {report.headline}")

    failed = counts.count("failed", "error")
    summary = {
        "tests": len(counts.outcomes),
        "passed": counts.count("passed"),
        "failed": failed,
        "reports": len(ours),
        "all reports": len(reports),
    }
    if caught is not None:
        summary["planted bugs"] = len(caught)
        summary["planted bugs reported"] = sum(caught.values())
    _say(f"{summary['tests']} tests: {summary['passed']} passed, {failed} failed, "
         f"{counts.count('skipped')} skipped, {counts.count('xfailed')} xfailed; "
         f"sanitizer reports: {len(ours)} in this project's code, {len(reports)} in all "
         f"(logs in {log_dir}); {time.monotonic() - started:.0f} s in all")
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(summary, indent=2) + "\n")
    if returncode not in (0,):
        _say(f"FAILED: pytest exit status {returncode}")
    if ours:
        _say(f"FAILED: {len(ours)} sanitizer report(s) in this project's code")
    missed = [name for name, found in (caught or {}).items() if not found]
    if missed:
        _say(f"FAILED: the self-check's planted bugs were not all reported: {', '.join(missed)}")
    return 1 if (ours or failed or returncode != 0 or missed) else 0


if __name__ == "__main__":
    sys.exit(main())
