"""The package around the ops: importable without a build, one version, the CPU-path switch.

The "no build" checks run in subprocesses on a copy of the ``pyvision_ops`` package without the
compiled ``_C`` library, first on PYTHONPATH, from a working directory outside the repository and
without the editable install's import hook, so that the repository's build cannot be imported.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import site
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Sequence

import pytest

import pyvision_ops

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyvision_ops"

# --------------------------------------------------------------------------------------------
# without the compiled extension
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unbuilt(tmp_path_factory: pytest.TempPathFactory):
    """(PYTHONPATH root holding a copy of the package without _C*, a working directory elsewhere)."""
    root = tmp_path_factory.mktemp("unbuilt")
    shutil.copytree(PACKAGE, root / "pyvision_ops", ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "_C*.dll", "__pycache__"))
    assert not list((root / "pyvision_ops").glob("_C*")), "the compiled extension was copied"
    elsewhere = tmp_path_factory.mktemp("cwd")
    return root, elsewhere


def run_unbuilt(unbuilt, arguments: Sequence[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -S <arguments>`` with the copy first on the path, then site-packages (for torch).

    ``-S`` skips the .pth files, among them the editable install's import hook, which would
    otherwise resolve ``pyvision_ops._C`` to the repository's build behind the copy's back.
    """
    root, elsewhere = unbuilt
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    path = [str(root), *site.getsitepackages()]
    env.update(PYTHONPATH=os.pathsep.join(path), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, "-S", *arguments], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_import_without_the_extension_and_calling_an_op_says_how_to_build(unbuilt):
    script = textwrap.dedent(
        """
        import json, torch
        import pyvision_ops
        from pyvision_ops import _extension
        result = {"file": pyvision_ops.__file__, "has_ops": pyvision_ops.has_ops(), "has_cuda": pyvision_ops.has_cuda(),
                  "load_error": repr(_extension._load_error)}
        try:
            pyvision_ops.max_pool2d_with_indices(torch.randn(1, 1, 4, 4), 2)
        except RuntimeError as error:
            result["error"] = str(error)
        print(json.dumps(result))
        """
    )
    ran = run_unbuilt(unbuilt, ["-c", script])
    assert ran.returncode == 0, ran.stdout + ran.stderr
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve().is_relative_to(unbuilt[0].resolve()), (
        f"imported {result['file']}, not the copy without the extension"
    )
    assert result["has_ops"] is False and result["has_cuda"] is False, result
    assert "error" in result, "calling an op without the extension did not raise RuntimeError"
    message = result["error"]
    assert re.search(r"not built", message), message
    assert "make build" in message, f"the error does not say how to build: {message}"


def test_info_says_the_extension_is_not_built(unbuilt):
    ran = run_unbuilt(unbuilt, ["-m", "pyvision_ops.info"])
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, f"python -m pyvision_ops.info exited {ran.returncode}:\n{output[-3000:]}"
    assert re.search(r"(?i)not built", ran.stdout), f"info does not say the extension is not built:\n{ran.stdout}"
    assert "Traceback" not in output, output[-3000:]


def test_bench_lists_its_workloads_without_the_extension(unbuilt):
    helped = run_unbuilt(unbuilt, ["-m", "pyvision_ops.bench", "--help"])
    if helped.returncode != 0 or "--list" not in helped.stdout:
        pytest.skip(f"python -m pyvision_ops.bench has no --list here: {(helped.stdout + helped.stderr)[-500:]}")
    listed = run_unbuilt(unbuilt, ["-m", "pyvision_ops.bench", "--list"])
    assert listed.returncode == 0, (listed.stdout + listed.stderr)[-3000:]
    lines = [line for line in listed.stdout.splitlines() if line.strip()]
    assert lines, "--list printed no workloads"
    for family in ("unpool", "gram", "assign"):
        assert any(family in line for line in lines), f"no {family} workload listed:\n{listed.stdout}"


# --------------------------------------------------------------------------------------------
# one version
# --------------------------------------------------------------------------------------------


def project_version() -> str:
    """pyproject.toml's version: its static ``version``, or the attribute its dynamic one names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    if "version" in project["project"]:
        return project["project"]["version"]
    assert "version" in project["project"].get("dynamic", []), "pyproject.toml declares no version"
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]  # e.g. pyvision_ops._version.__version__
    module, name = attr.rsplit(".", 1)
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    match = re.search(rf"^{re.escape(name)}\s*=\s*[\"']([^\"']+)[\"']", source, re.M)
    assert match, f"{module} defines no {name}"
    return match.group(1)


def test_version_matches_pyproject_and_installed_metadata():
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", pyvision_ops.__version__), pyvision_ops.__version__
    assert pyvision_ops.__version__ == project_version()
    # the installed (editable) metadata: a stale install after a version change shows up here
    assert importlib.metadata.version("pyvision_ops") == pyvision_ops.__version__
    if pyvision_ops.has_ops():
        assert pyvision_ops.build_info()["version"] == pyvision_ops.__version__


# --------------------------------------------------------------------------------------------
# the one switch to the portable CPU kernels
# --------------------------------------------------------------------------------------------


def test_set_cpu_simd_toggles_the_cpu_capability():
    if not pyvision_ops.has_ops():
        pytest.skip("the compiled extension is not built")
    from pyvision_ops import _C

    info = pyvision_ops.build_info()
    hardware = info.get("cpu_hardware_capability", info["cpu_capability"])
    assert info["cpu_capability"] == hardware, f"SIMD is on by default: {info}"
    previous = _C._set_cpu_simd(False)
    try:
        assert previous is True, "the previous setting (vectorised kernels on) was not returned"
        assert pyvision_ops.build_info()["cpu_capability"] == "portable"
        assert _C._set_cpu_simd(False) is False  # already off
        assert pyvision_ops.build_info()["cpu_capability"] == "portable"
        assert _C._set_cpu_simd(True) is False
        assert pyvision_ops.build_info()["cpu_capability"] == hardware
        assert _C._set_cpu_simd(True) is True
    finally:
        _C._set_cpu_simd(previous)
    assert pyvision_ops.build_info()["cpu_capability"] == hardware
