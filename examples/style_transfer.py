"""Neural style transfer (Gatys et al.) on the two sample photos that ship with scikit-learn.

The content is ``china.jpg`` (a temple), the style ``flower.jpg``; both are resized so that their
shorter side is ``--size`` pixels. The Gram matrices and the style loss run on ``pyvision_ops``'
kernels. Without ``--weights`` the VGG19 is a fixed-seed random network (nothing is
downloaded): it still transfers colours and textures, but ImageNet weights do much better:

    # once, where torchvision is installed: save its VGG19 weights to a file
    python -c "import torch, torchvision as tv; torch.save(tv.models.vgg19(weights='DEFAULT').state_dict(),'vgg19.pth')"

    python examples/style_transfer.py                         # random VGG19, 128 px, 100 steps
    python examples/style_transfer.py --weights vgg19.pth --size 256 --steps 300 --out temple.png
    python examples/style_transfer.py --synthetic             # generated images, no scikit-learn

Needs scikit-learn (for the photos) and Pillow (to read them and write the PNG):
``pip install scikit-learn pillow``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from pyvision_ops.models import VGGFeatures, style_transfer
from pyvision_ops.models.style_transfer import CONTENT_LAYERS, STYLE_LAYERS


def to_image_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (1, 3, H, W) in [0, 1]."""
    # np.array copies: the sample images are read-only, which torch.from_numpy warns about.
    return torch.from_numpy(np.array(array, dtype=np.uint8, copy=True)).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def resize_shorter_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (1, 3, H, W) so that min(H, W) == size, keeping the aspect ratio (antialiased)."""
    height, width = image.shape[-2:]
    scale = size / min(height, width)
    new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(image, size=new_size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def load_sample_photos() -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's china.jpg (content) and flower.jpg (style) as (1, 3, 427, 640) tensors."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        sys.exit(
            "This example takes its photos from scikit-learn: pip install scikit-learn pillow\n"
            "(or run it with --synthetic to use two generated images instead)"
        )
    dataset = load_sample_images()
    photos = {os.path.basename(filename): image for filename, image in zip(dataset.filenames, dataset.images)}
    return to_image_tensor(photos["china.jpg"]), to_image_tensor(photos["flower.jpg"])


def synthetic_photos(height: int = 128, width: int = 192) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two generated images: a shaded disc on a sky gradient (content), coloured waves (style)."""
    y = torch.linspace(0, 1, height).view(height, 1).expand(height, width)
    x = torch.linspace(0, 1, width).view(1, width).expand(height, width)
    disc = (((x - 0.5) * width / height) ** 2 + (y - 0.55) ** 2 < 0.09).float()
    sky = torch.stack([0.3 + 0.4 * y, 0.5 + 0.3 * y, 0.9 - 0.2 * y])
    shade = torch.stack([0.8 - 0.4 * x, 0.3 + 0.2 * y, 0.2 + 0.1 * x])
    content = sky * (1 - disc) + shade * disc
    phase = 2 * math.pi * (6 * x + 3 * torch.sin(2 * math.pi * 2 * y))
    style = 0.5 + 0.5 * torch.stack([torch.sin(phase), torch.sin(phase + 2.1), torch.cos(3 * phase)])
    return content.unsqueeze(0).clamp(0, 1), style.unsqueeze(0).clamp(0, 1)


def save_png(image: torch.Tensor, path: str) -> None:
    """Write (1, 3, H, W) in [0, 1] as an 8-bit PNG with Pillow.

    Pillow is needed anyway: scikit-learn reads its sample JPEGs with it, and matplotlib's
    ``imsave`` writes through it, so it is no fallback.
    """
    array = (image[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    try:
        from PIL import Image
    except ImportError:
        sys.exit("Writing the PNG needs Pillow: pip install pillow")
    Image.fromarray(array).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="torchvision VGG19 state dict file (default: fixed-seed random VGG19)")
    parser.add_argument("--size", type=int, default=128, help="shorter image side in pixels (default: 128)")
    parser.add_argument("--steps", type=int, default=100, help="loss evaluations (default: 100)")
    parser.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: 1 for LBFGS, 0.02 for Adam)")
    parser.add_argument("--content-weight", type=float, default=1.0)
    parser.add_argument("--style-weight", type=float, default=1e6)
    parser.add_argument("--tv-weight", type=float, default=0.0, help="total-variation weight (try 10 to 100)")
    parser.add_argument("--pooling", choices=("max", "avg"), default="max")
    parser.add_argument("--out", default="style_transfer.png", help="output PNG (default: style_transfer.png)")
    parser.add_argument("--synthetic", action="store_true", help="use two generated images instead of the photos")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    content, style = synthetic_photos() if args.synthetic else load_sample_photos()
    content = resize_shorter_side(content, args.size).to(args.device)
    style = resize_shorter_side(style, args.size).to(args.device)

    layers = tuple(dict.fromkeys([*STYLE_LAYERS, *CONTENT_LAYERS]))
    extractor = VGGFeatures("vgg19", layers=layers, weights=args.weights, pooling=args.pooling).to(args.device)
    if extractor.pretrained:
        print(f"VGG19 weights from {args.weights}")
    else:
        print("No --weights given: using a fixed-seed random VGG19 (nothing is downloaded). It transfers colours "
              "and textures; ImageNet weights (see --help) give real style transfer.")
    print(f"content {tuple(content.shape[-2:])}, style {tuple(style.shape[-2:])}, {args.steps} steps of "
          f"{args.optimizer} on {args.device}")

    start = time.perf_counter()
    image, history = style_transfer(
        content,
        style,
        extractor,
        steps=args.steps,
        content_weight=args.content_weight,
        style_weight=args.style_weight,
        tv_weight=args.tv_weight,
        optimizer=args.optimizer,
        lr=args.lr,
    )
    elapsed = time.perf_counter() - start
    print(f"loss {history['total'][0]:.4g} -> {history['total'][-1]:.4g} "
          f"(content {history['content'][-1]:.4g}, style {history['style'][-1]:.4g}) "
          f"in {len(history['total'])} evaluations, {elapsed:.1f} s")
    save_png(image, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
