"""Loads the compiled extension ``pyvision_ops._C`` and remembers why it failed, if it did.

Importing ``_C`` runs the ``TORCH_LIBRARY`` registrations, after which every operator is
reachable as ``torch.ops.pyvision_ops.<name>``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

__all__ = ["has_ops", "has_cuda", "build_info", "ensure_loaded"]

_load_error: Optional[BaseException] = None
_C: Any = None

try:
    from pyvision_ops import _C  # type: ignore[attr-defined,no-redef]  # noqa: F401
except (ImportError, OSError) as error:  # pragma: no cover - exercised only on broken installs
    _load_error = error


def has_ops() -> bool:
    """True when the compiled operators are available."""
    return _C is not None


def ensure_loaded() -> None:
    """Raise the real load error (not a vague 'operator not found') when ``_C`` is missing."""
    if _C is None:
        raise RuntimeError(
            "pyvision_ops' compiled extension could not be loaded; build it with "
            "`pip install --no-build-isolation -e .` (or `make test`). Original error: "
            f"{_load_error!r}"
        ) from _load_error


def has_cuda() -> bool:
    """True when the extension was built with its CUDA kernels (a GPU may still be absent)."""
    return _C is not None and bool(_C.build_info().get("with_cuda", False))


def build_info() -> Dict[str, Any]:
    """How the extension was built: torch and CUDA versions, archs, whether CUDA kernels are in."""
    ensure_loaded()
    info = dict(_C.build_info())
    info["torch_runtime"] = torch.__version__
    return info
