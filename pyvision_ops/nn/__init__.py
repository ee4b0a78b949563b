"""nn.Module wrappers, drop-in where torch.nn has the same module."""

from pyvision_ops.nn.detr import HungarianMatcher, SetCriterion
from pyvision_ops.nn.pooling import MaxPool2d, MaxUnpool1d, MaxUnpool2d, MaxUnpool3d
from pyvision_ops.nn.style import GramMatrix, PerceptualLoss, StyleLoss

__all__ = ["MaxPool2d", "MaxUnpool1d", "MaxUnpool2d", "MaxUnpool3d", "GramMatrix", "StyleLoss", "PerceptualLoss",
           "HungarianMatcher", "SetCriterion"]
