"""EmbeddingNet: a small CNN that maps images to unit-norm embeddings for metric learning.

Trained with the distance family's losses (``batch_hard_triplet_loss``, ``TripletLoss``,
``contrastive_loss``) or ``metric_learning.hierarchical_triplet_loss``; its output lies on the
unit sphere, where the squared euclidean distance is 2 - 2 cos.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyvision_ops.nn.unpool import MaxPool2d

__all__ = ["EmbeddingNet"]


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class EmbeddingNet(nn.Module):
    """conv-bn-relu x2, 2x2 max pooling (the library's op), conv-bn-relu x2, global average
    pooling, a linear layer to ``embedding_dim`` and L2 normalisation.

    Parameters
    ----------
    in_channels : int, default 1
    embedding_dim : int, default 64
    width : int, default 32 (channels of the first two convolutions; twice as many after pooling)

    Shape
    -----
    input : (N, in_channels, H, W), H and W >= 2
    output : (N, embedding_dim), every row of norm 1
    """

    def __init__(self, in_channels: int = 1, embedding_dim: int = 64, width: int = 32):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("embedding_dim", embedding_dim), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.embedding_dim = embedding_dim
        self.features = nn.Sequential(
            _conv_block(in_channels, width),
            _conv_block(width, width),
            MaxPool2d(2),
            _conv_block(width, 2 * width),
            _conv_block(2 * width, 2 * width),
        )
        self.head = nn.Linear(2 * width, embedding_dim)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"images must be (N, {self.in_channels}, H, W), got shape {tuple(images.shape)}"
            )
        features = self.features(images).mean(dim=(2, 3))
        return F.normalize(self.head(features), dim=1)
