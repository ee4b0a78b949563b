"""Data sets for the examples and tests, all without downloads: synthetic ones and
scikit-learn's bundled digits."""

from pyvision_ops.data.detection import COLOURS, synthetic_detection_batch
from pyvision_ops.data.digits import load_digits_split
from pyvision_ops.data.segmentation import synthetic_rectangles

__all__ = ["synthetic_rectangles", "synthetic_detection_batch", "COLOURS", "load_digits_split"]
