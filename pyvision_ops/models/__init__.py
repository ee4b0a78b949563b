"""Thin model definitions built on the library's own ops."""

from pyvision_ops.models.segnet import SegNet
from pyvision_ops.models.deconvnet import deconvnet_project

__all__ = ["SegNet", "deconvnet_project"]
