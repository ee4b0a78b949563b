"""Shared pytest configuration: markers, the CUDA skip, seeding, both CPU kernel paths."""

from __future__ import annotations

import os
import sys
import zlib
from typing import Sequence

import pytest
import torch

# tests/ is not a package: make `import references` (and `contract`) work from any working directory.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# torchvision's convention: tests marked `needs_cuda` are skipped where no GPU is visible, and
# `pytest -m needs_cuda` selects exactly the GPU tests (scripts/gpu_check.sh runs them under
# compute-sanitizer).
needs_cuda = pytest.mark.needs_cuda

# Parametrize a test over devices: the CUDA case is collected everywhere and skipped without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cuda-subset", type=int, default=0, metavar="N",
        help="keep at most N of each test file's CUDA tests, spread evenly over its parametrisations "
             "(scripts/gpu_check.sh runs compute-sanitizer over such a subset); 0 keeps all",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_cuda: runs on a CUDA device; skipped when none is available")
    config.addinivalue_line("markers", "slow: takes more than a few seconds; deselect with -m 'not slow'")


# --------------------------------------------------------------------------------------------
# both CPU kernel paths
# --------------------------------------------------------------------------------------------

#: The test modules whose CPU tests run twice: on the vectorised kernels ("simd": whatever the
#: CPU-feature dispatch picks, AVX2 here) and on the portable ones ("portable": forced with
#: ``_C._set_cpu_simd(False)``, what a CPU without AVX2 runs). One switch covers every family.
BOTH_CPU_PATHS_MODULES = frozenset(
    f"test_{family}{suffix}" for family in ("unpool", "gram", "assign", "distance", "metric_learning", "attention")
    for suffix in ("", "_nn")
)
CPU_PATHS = ("simd", "portable")


def _runs_on_both_cpu_paths(module_name: str) -> bool:
    return module_name.rsplit(".", 1)[-1] in BOTH_CPU_PATHS_MODULES


@pytest.hookimpl(trylast=True)  # after the tests' own parametrization: the path comes last in the id
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cpu_path" in metafunc.fixturenames and _runs_on_both_cpu_paths(metafunc.module.__name__):
        metafunc.parametrize("cpu_path", CPU_PATHS, indirect=True, ids=list(CPU_PATHS))


@pytest.fixture(autouse=True)
def cpu_path(request: pytest.FixtureRequest):
    """The CPU kernel path this test runs on: "simd" (the default), or "portable" with every
    family's vectorised kernels switched off for the test and switched back afterwards, also when
    it fails. Without the compiled extension there is nothing to switch: "portable" copies skip."""
    path = getattr(request, "param", "simd")
    if path == "simd":
        yield path
        return
    try:
        from pyvision_ops import _C
    except ImportError as error:
        pytest.skip(f"the compiled extension is not built ({error}): no CPU path to switch")
    if not hasattr(_C, "_set_cpu_simd"):
        pytest.skip("this build of pyvision_ops._C has no _set_cpu_simd switch")
    previous = _C._set_cpu_simd(False)
    try:
        capability = dict(_C.build_info()).get("cpu_capability", "portable")
        assert capability == "portable", f"_set_cpu_simd(False) left the CPU kernels on {capability!r}"
        yield path
    finally:
        _C._set_cpu_simd(previous)


def _is_cuda_test(item: pytest.Item) -> bool:
    return "needs_cuda" in item.keywords


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    # The portable switch is a CPU matter: a CUDA case runs once (its "simd" copy).
    portable_cuda = [
        item for item in items
        if _is_cuda_test(item) and getattr(getattr(item, "callspec", None), "params", {}).get("cpu_path") == "portable"
    ]
    if portable_cuda:
        dropped = set(map(id, portable_cuda))
        config.hook.pytest_deselected(items=portable_cuda)
        items[:] = [item for item in items if id(item) not in dropped]
    _keep_cuda_subset(config, items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if _is_cuda_test(item):
            item.add_marker(skip)


def _keep_cuda_subset(config: pytest.Config, items: list) -> None:
    """--cuda-subset N: every k-th CUDA test of each file, so that N tests still cover its ops,
    dtypes and layouts (consecutive tests differ in the last parameter only)."""
    limit = config.getoption("--cuda-subset")
    if limit <= 0:
        return
    by_file: dict = {}
    for item in items:
        if _is_cuda_test(item):
            by_file.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    dropped = []
    for cuda_items in by_file.values():
        if len(cuda_items) <= limit:
            continue
        kept = {int(i * len(cuda_items) / limit) for i in range(limit)}
        dropped += [item for position, item in enumerate(cuda_items) if position not in kept]
    if dropped:
        ids = set(map(id, dropped))
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if id(item) not in ids]


@pytest.fixture(autouse=True)
def _seed(request: pytest.FixtureRequest) -> None:
    """A different but reproducible seed per test: inputs are fresh yet a failure replays."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _grad_mode_on() -> None:
    """Every test starts with grad mode on, whatever an earlier test left behind."""
    torch.set_grad_enabled(True)


# --------------------------------------------------------------------------------------------
# helpers shared by the op families' tests
# --------------------------------------------------------------------------------------------

#: What bad input may raise: never a crash, never a device assert.
ERRORS = (RuntimeError, ValueError)


def assert_unchanged(before: torch.Tensor, after: torch.Tensor) -> None:
    """The caller's tensor still holds exactly what it held before the call."""
    torch.testing.assert_close(after, before, rtol=0, atol=0, equal_nan=True)


def poison_of(dtype: torch.dtype):
    """A value a kernel must never produce or read: NaN for floats, an invalid index for ints."""
    if dtype.is_floating_point:
        return float("nan")
    return 255 if dtype == torch.uint8 else -1


def poison_allocator(shape: Sequence[int], dtype: torch.dtype, device) -> None:
    """Free a poison-filled block of the output's size just before the op allocates its output.

    The caching (CUDA) and malloc (CPU) allocators hand the same block back, so a kernel that
    forgets to zero-fill or to write every element (a missed tile, an unmirrored triangle)
    returns NaN instead of a plausible zero.
    """
    block = torch.full(tuple(shape), poison_of(dtype), dtype=dtype, device=device)
    del block


def raises(match: str):
    return pytest.raises(ERRORS, match=match)


def sync(device) -> None:
    """Surface any asynchronous CUDA error here, in the test that caused it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def expect_error(fn, tensors: Sequence[torch.Tensor], match: str):
    """``fn()`` raises an error matching ``match`` and leaves ``tensors`` untouched."""
    before = [t.clone() for t in tensors]
    with raises(match) as info:
        fn()
        sync(tensors[0].device)
    for b, t in zip(before, tensors):
        assert_unchanged(b, t)
    sync(tensors[0].device)  # no sticky asynchronous error left behind
    return info


@pytest.fixture(scope="module")
def single_process_group():
    """A one-rank gloo default process group (HashStore), for gather=True paths; torn down after
    the module (module scope: hypothesis tests may use it)."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    if dist.is_initialized():
        pytest.skip("a default process group is already initialised")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
