"""nn.Module wrappers of the functional ops, one module per op family.

``MaxPool2d`` and ``MaxUnpool1d/2d/3d`` (family ``unpool``) subclass their ``torch.nn`` namesakes
and are drop-in replacements. ``GramMatrix``, ``StyleLoss`` and ``PerceptualLoss`` (family
``gram``) and ``HungarianMatcher`` and ``SetCriterion`` (family ``assign``, DETR's matcher and
loss) have no ``torch.nn`` counterpart, nor do ``TripletLoss`` and ``ContrastiveLoss`` (family ``distance``,
metric learning: the triplet loss on mined triplets, across ranks with ``gather=True``).
``MultiheadAttention`` (family ``attention``) subclasses ``torch.nn.MultiheadAttention`` and runs
on the fused ``scaled_dot_product_attention``; ``TransformerEncoderLayer``,
``TransformerEncoder``, ``TransformerDecoderLayer`` and ``TransformerDecoder`` take their
``torch.nn`` namesakes' arguments and load their state_dicts (``batch_first=True`` by default);
``PositionalEncoding`` adds the sinusoidal position encoding.
"""

from pyvision_ops.nn.assign import HungarianMatcher, SetCriterion
from pyvision_ops.nn.attention import (
    MultiheadAttention,
    PositionalEncoding,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)
from pyvision_ops.nn.distance import ContrastiveLoss, TripletLoss
from pyvision_ops.nn.gram import GramMatrix, PerceptualLoss, StyleLoss
from pyvision_ops.nn.unpool import MaxPool2d, MaxUnpool1d, MaxUnpool2d, MaxUnpool3d

__all__ = ["MaxPool2d", "MaxUnpool1d", "MaxUnpool2d", "MaxUnpool3d", "GramMatrix", "StyleLoss", "PerceptualLoss",
           "HungarianMatcher", "SetCriterion", "TripletLoss", "ContrastiveLoss", "MultiheadAttention",
           "PositionalEncoding", "TransformerEncoderLayer", "TransformerEncoder", "TransformerDecoderLayer",
           "TransformerDecoder"]
