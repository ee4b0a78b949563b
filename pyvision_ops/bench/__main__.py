"""Entry point of ``python -m pyvision_ops.bench``; see :mod:`pyvision_ops.bench.cli`."""

from pyvision_ops.bench.cli import main

__all__: list = []

if __name__ == "__main__":
    raise SystemExit(main())
