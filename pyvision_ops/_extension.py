"""Loads the compiled extension ``pyvision_ops._C`` if it is built, and remembers why not.

Importing ``_C`` runs the C++ ``TORCH_LIBRARY`` registrations, after which every operator is
reachable as ``torch.ops.pyvision_ops.<name>``. ``import pyvision_ops`` works without it (the
pattern of torchvision's ``_has_ops``): the Python registrations that need the operators' schemas
(fake kernels, autograd) run only when ``_C`` loaded, through :func:`register_when_loaded`, and
calling an operator without it raises an error saying how to build it.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

import torch

__all__ = ["has_ops", "has_cuda", "build_info", "ensure_loaded", "ops", "register_when_loaded", "BUILD_HINT"]

#: How to build the extension, quoted by every "not built" error.
BUILD_HINT = (
    "build it from the repository root with `make build` (or `pip install --no-build-isolation -e .` "
    "in an environment that has torch, ninja and pybind11)"
)

_load_error: Optional[BaseException] = None
_C: Any = None

#: Names a compiled extension to load as ``pyvision_ops._C`` instead of the in-place build (an
#: absolute path to a ``.so``); scripts/sanitize.py points it at its AddressSanitizer build.
EXTENSION_OVERRIDE_VARIABLE = "PYVISION_OPS_EXTENSION"


def _load_override(path: str) -> Any:
    """Load the shared library at ``path`` as the module ``pyvision_ops._C``."""
    import importlib.machinery
    import importlib.util
    import sys

    loader = importlib.machinery.ExtensionFileLoader("pyvision_ops._C", path)
    spec = importlib.util.spec_from_file_location("pyvision_ops._C", path, loader=loader)
    if spec is None:
        raise ImportError(f"{EXTENSION_OVERRIDE_VARIABLE}={path!r} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pyvision_ops._C"] = module
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules["pyvision_ops._C"]
        raise
    import pyvision_ops

    pyvision_ops._C = module  # what a normal submodule import would have set
    return module


try:
    _override = os.environ.get(EXTENSION_OVERRIDE_VARIABLE, "").strip()
    if _override:
        _C = _load_override(_override)
    else:
        from pyvision_ops import _C  # type: ignore[attr-defined,no-redef]  # noqa: F401
except (ImportError, OSError) as error:
    _load_error = error


def has_ops() -> bool:
    """True when the compiled operators are available."""
    return _C is not None


def ensure_loaded() -> None:
    """Raise a RuntimeError that says the extension is not built, and how to build it."""
    if _C is None:
        raise RuntimeError(
            f"pyvision_ops: the compiled extension pyvision_ops._C is not built or could not be loaded; "
            f"{BUILD_HINT}. The import failed with: {_load_error!r}"
        ) from _load_error


def ops() -> Any:
    """``torch.ops.pyvision_ops``, after checking that the extension is loaded."""
    if _C is None:
        ensure_loaded()
    return torch.ops.pyvision_ops


def register_when_loaded(register: Callable[[], None]) -> Callable[[], None]:
    """Run ``register`` (a family's fake-kernel and autograd registrations) now if the operators
    exist; without the extension there is nothing to register them on."""
    if _C is not None:
        register()
    return register


def has_cuda() -> bool:
    """True when the extension was built with its CUDA kernels (a GPU may still be absent)."""
    return _C is not None and bool(_C.build_info().get("with_cuda", False))


def build_info() -> Dict[str, Any]:
    """How the extension was built: torch and CUDA versions, archs, CPU kernels in use."""
    ensure_loaded()
    info = dict(_C.build_info())
    info["torch_runtime"] = torch.__version__
    return info
