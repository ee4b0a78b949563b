"""Toy detection data: coloured rectangles whose class is their colour (DETR's target format)."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from pyvision_ops.box_ops import box_xyxy_to_cxcywh

__all__ = ["synthetic_detection_batch", "COLOURS"]

#: RGB colours of the classes of ``synthetic_detection_batch``: red, green, blue, yellow, magenta, cyan.
COLOURS: Tuple[Tuple[float, float, float], ...] = (
    (0.9, 0.15, 0.15),
    (0.15, 0.8, 0.2),
    (0.2, 0.3, 0.95),
    (0.9, 0.85, 0.1),
    (0.85, 0.2, 0.85),
    (0.1, 0.85, 0.85),
)


def synthetic_detection_batch(
    batch_size: int,
    image_size: int = 64,
    num_classes: int = 3,
    max_objects: int = 4,
    min_size: int = 10,
    max_size: int = 28,
    noise: float = 0.15,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, List[Dict[str, Tensor]]]:
    """A toy detection batch: 1 to ``max_objects`` coloured rectangles on a noisy grey background.

    The class of a rectangle is its colour (``COLOURS[label]``). Rectangles do not overlap, so
    every box is fully visible. Used by the tests and by ``examples/detr_synthetic.py``.

    Parameters
    ----------
    batch_size : int
    image_size : int, default 64
        Side of the square images, in pixels (> ``max_size``).
    num_classes : int, default 3
        Number of colours used, at most ``len(COLOURS)``.
    max_objects : int, default 4
        Most rectangles per image; each image draws a count in [1, max_objects] (fewer when no
        free spot is found for one).
    min_size, max_size : int, default 10, 28
        Range of the rectangles' sides, in pixels.
    noise : float, default 0.15
        Standard deviation of the Gaussian noise added to every pixel.
    generator : torch.Generator, optional
        Source of randomness, for reproducible batches.

    Returns
    -------
    images : Tensor (batch_size, 3, image_size, image_size), float32
    targets : list of batch_size dicts with ``labels`` int64 (T,) and ``boxes`` float32 (T, 4),
        (cx, cy, w, h) normalised by the image size (DETR's target format)
    """
    if not 1 <= num_classes <= len(COLOURS):
        raise ValueError(f"synthetic_detection_batch: num_classes must be in [1, {len(COLOURS)}], got {num_classes}")
    if not 1 <= min_size <= max_size < image_size:
        raise ValueError(f"synthetic_detection_batch: need 1 <= min_size <= max_size < image_size, got "
                         f"{min_size}, {max_size}, {image_size}")
    colours = torch.tensor(COLOURS[:num_classes])
    images = 0.4 + noise * torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    targets: List[Dict[str, Tensor]] = []

    def draw(high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=generator))

    for i in range(batch_size):
        count = 1 + draw(max_objects)
        corners: List[Tuple[int, int, int, int]] = []
        labels: List[int] = []
        for _ in range(20 * count):  # rejection sampling of free spots; gives up on crowded images
            if len(corners) == count:
                break
            width = min_size + draw(max_size - min_size + 1)
            height = min_size + draw(max_size - min_size + 1)
            x0, y0 = draw(image_size - width + 1), draw(image_size - height + 1)
            x1, y1 = x0 + width, y0 + height
            # One free pixel between rectangles, so that neighbours stay separable.
            if any(x0 <= bx1 and bx0 <= x1 and y0 <= by1 and by0 <= y1 for bx0, by0, bx1, by1 in corners):
                continue
            label = draw(num_classes)
            images[i, :, y0:y1, x0:x1] += colours[label][:, None, None] - 0.4
            corners.append((x0, y0, x1, y1))
            labels.append(label)
        xyxy = torch.tensor(corners, dtype=torch.float32).reshape(-1, 4) / image_size
        targets.append({"labels": torch.tensor(labels, dtype=torch.int64), "boxes": box_xyxy_to_cxcywh(xyxy)})
    return images, targets
