"""Functional API: one module per op family."""

from pyvision_ops.ops.assign import linear_sum_assignment
from pyvision_ops.ops.attention import scaled_dot_product_attention
from pyvision_ops.ops.distance import (
    TopK,
    batch_hard_triplet_loss,
    class_distance_matrix,
    contrastive_loss,
    gather_embeddings,
    mine_triplets,
    pairwise_distance,
    pairwise_topk,
    triplet_margin_loss,
)
from pyvision_ops.ops.gram import gram_matrix, perceptual_loss, style_loss
from pyvision_ops.ops.unpool import (
    max_pool2d_with_indices,
    max_unpool1d,
    max_unpool2d,
    max_unpool3d,
)

__all__ = [
    "linear_sum_assignment",
    "scaled_dot_product_attention",
    "pairwise_distance",
    "pairwise_topk",
    "TopK",
    "mine_triplets",
    "batch_hard_triplet_loss",
    "triplet_margin_loss",
    "contrastive_loss",
    "class_distance_matrix",
    "gather_embeddings",
    "gram_matrix",
    "style_loss",
    "perceptual_loss",
    "max_pool2d_with_indices",
    "max_unpool1d",
    "max_unpool2d",
    "max_unpool3d",
]
