"""The version of pyvision_ops, defined here once (pyproject.toml, setup.py and CMakeLists.txt read it)."""

__version__ = "0.1.0"
