"""nn.Module wrappers, drop-in where torch.nn has the same module."""

from pyvision_ops.nn.pooling import MaxPool2d, MaxUnpool1d, MaxUnpool2d, MaxUnpool3d

__all__ = ["MaxPool2d", "MaxUnpool1d", "MaxUnpool2d", "MaxUnpool3d"]
