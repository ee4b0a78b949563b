"""Functional API: one module per op family."""

from pyvision_ops.ops.assign import linear_sum_assignment
from pyvision_ops.ops.gram import gram_matrix, perceptual_loss, style_loss
from pyvision_ops.ops.unpool import (
    max_pool2d_with_indices,
    max_unpool1d,
    max_unpool2d,
    max_unpool3d,
)

__all__ = [
    "linear_sum_assignment",
    "gram_matrix",
    "style_loss",
    "perceptual_loss",
    "max_pool2d_with_indices",
    "max_unpool1d",
    "max_unpool2d",
    "max_unpool3d",
]
