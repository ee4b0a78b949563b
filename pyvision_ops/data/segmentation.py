"""Toy segmentation data: small enough to train a tiny SegNet on a CPU in seconds."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["synthetic_rectangles"]


def synthetic_rectangles(
    batch_size: int,
    height: int = 32,
    width: int = 32,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """A toy segmentation batch: one bright random rectangle on Gaussian noise per image.

    Small enough to train a tiny SegNet on a CPU in seconds; used by the tests and by
    ``examples/segnet_synthetic.py``.

    Parameters
    ----------
    batch_size, height, width : int
        Batch and image size (height, width >= 4).
    generator : torch.Generator, optional
        Source of randomness, for reproducible batches.

    Returns
    -------
    images : Tensor (batch_size, 1, height, width), float32
    labels : Tensor (batch_size, height, width), int64: 1 inside the rectangle, 0 outside
    """
    images = torch.randn(batch_size, 1, height, width, generator=generator)
    labels = torch.zeros(batch_size, height, width, dtype=torch.int64)
    for i in range(batch_size):
        # Each side spans between a quarter and three quarters of the image.
        box_height = int(torch.randint(height // 4, 3 * height // 4 + 1, (1,), generator=generator))
        box_width = int(torch.randint(width // 4, 3 * width // 4 + 1, (1,), generator=generator))
        top = int(torch.randint(0, height - box_height + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - box_width + 1, (1,), generator=generator))
        labels[i, top : top + box_height, left : left + box_width] = 1
    # Brightness offset of 1.5 noise standard deviations: visible, yet pixels overlap in value,
    # so the network has to use context rather than a per-pixel threshold.
    images += 1.5 * labels.unsqueeze(1).to(images.dtype)
    return images, labels
