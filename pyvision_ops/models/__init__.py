"""Thin model definitions built on the library's own ops."""

from pyvision_ops.models.detr import DETR
from pyvision_ops.models.embedding import EmbeddingNet
from pyvision_ops.models.segnet import SegNet
from pyvision_ops.models.deconvnet import deconvnet_project
from pyvision_ops.models.vgg import VGGFeatures, imagenet_normalize
from pyvision_ops.models.style_transfer import style_transfer
from pyvision_ops.models.transformer import TransformerEncoder

__all__ = ["SegNet", "deconvnet_project", "VGGFeatures", "imagenet_normalize", "style_transfer", "DETR", "EmbeddingNet",
           "TransformerEncoder"]
