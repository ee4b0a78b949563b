"""scikit-learn's bundled handwritten digits (1797 8 x 8 images, no download) as tensors, split
per digit into training and held-out parts."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F


def load_digits_split(held_out: float, seed: int, size: Optional[int] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, held-out images, held-out labels).

    Images are (N, 1, 8, 8) float32 in [0, 1], or (N, 1, size, size) upsampled bilinearly (and
    clamped to [0, 1]) when ``size`` is given; labels int64. Each digit is shuffled with
    ``seed`` and a fraction ``held_out`` of it held out, so both parts hold every digit in the
    same proportion. Needs scikit-learn.
    """
    from sklearn.datasets import load_digits

    if not 0.0 <= held_out <= 1.0:
        raise ValueError(f"load_digits_split: held_out must be in [0, 1], got {held_out}")
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size is not None:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    train_idx: List[torch.Tensor] = []
    test_idx: List[torch.Tensor] = []
    for digit in range(10):
        members = torch.nonzero(labels == digit).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        cut = int(round(members.numel() * held_out))
        test_idx.append(members[:cut])
        train_idx.append(members[cut:])
    train, test = torch.cat(train_idx), torch.cat(test_idx)
    return images[train], labels[train], images[test], labels[test]
