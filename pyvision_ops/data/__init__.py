"""Synthetic data sets for the examples and tests (no downloads)."""

from pyvision_ops.data.detection import COLOURS, synthetic_detection_batch
from pyvision_ops.data.segmentation import synthetic_rectangles

__all__ = ["synthetic_rectangles", "synthetic_detection_batch", "COLOURS"]
