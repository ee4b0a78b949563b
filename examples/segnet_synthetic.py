"""Train a small SegNet to segment bright rectangles on noise, and report how much it learned.

The decoder upsamples with the encoder's pooling indices (``pyvision_ops.max_unpool2d``, stored
as uint8 by default). Prints pixel accuracy and the rectangle class's IoU on a fixed held-out
set before and after training.

    python examples/segnet_synthetic.py                  # about 30 s on a 2-core CPU
    python examples/segnet_synthetic.py --steps 1000 --device cuda
    python examples/segnet_synthetic.py --stages 16,16:32,32:64,64 --flat-indices
"""

from __future__ import annotations

import argparse
import time
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pyvision_ops.models import SegNet
from pyvision_ops.data import synthetic_rectangles


def parse_stages(text: str) -> Tuple[Tuple[int, ...], ...]:
    """``"16,16:32,32"`` -> ``((16, 16), (32, 32))``: stages split by ':', widths by ','."""
    return tuple(tuple(int(width) for width in stage.split(",")) for stage in text.split(":"))


@torch.no_grad()
def evaluate(model: SegNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Dict[str, float]:
    """Pixel accuracy and rectangle IoU over ``images`` (N, 1, H, W) against ``labels`` (N, H, W)."""
    was_training = model.training
    model.eval()
    correct = intersection = union = 0
    for start in range(0, len(images), batch_size):
        predicted = model(images[start : start + batch_size]).argmax(dim=1)
        target = labels[start : start + batch_size]
        correct += int((predicted == target).sum())
        intersection += int(((predicted == 1) & (target == 1)).sum())
        union += int(((predicted == 1) | (target == 1)).sum())
    model.train(was_training)
    return {"pixel_accuracy": correct / labels.numel(), "iou": intersection / max(union, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=350, help="training steps (default: 350, ~30 s on a 2-core CPU)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=48, help="square image side in pixels")
    parser.add_argument("--stages", type=parse_stages, default=parse_stages("16,16:32,32:32"),
                        help="conv widths per encoder stage, e.g. 16,16:32,32:32 (default)")
    parser.add_argument("--flat-indices", action="store_true", help="store int64 pooling indices, not uint8")
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    parser.add_argument("--eval-images", type=int, default=128, help="size of the held-out set")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = SegNet(in_channels=1, num_classes=2, stages=args.stages, compact_indices=not args.flat_indices)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    parameter_count = sum(p.numel() for p in model.parameters())
    print(f"SegNet stages={args.stages}, {parameter_count:,} parameters, "
          f"{'int64' if args.flat_indices else 'uint8'} pooling indices, device={device}")

    # Separate generators: the held-out set stays the same whatever the number of steps.
    eval_images, eval_labels = synthetic_rectangles(
        args.eval_images, args.image_size, args.image_size, generator=torch.Generator().manual_seed(args.seed + 1)
    )
    eval_images, eval_labels = eval_images.to(device), eval_labels.to(device)
    train_generator = torch.Generator().manual_seed(args.seed)

    before = evaluate(model, eval_images, eval_labels, args.batch_size)
    print(f"before training: pixel accuracy {before['pixel_accuracy']:.3f}, IoU {before['iou']:.3f}")

    model.train()
    start = time.perf_counter()
    progress = tqdm(range(args.steps), desc="training", unit="step")
    for _step in progress:
        images, labels = synthetic_rectangles(
            args.batch_size, args.image_size, args.image_size, generator=train_generator
        )
        images, labels = images.to(device), labels.to(device)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
    elapsed = time.perf_counter() - start

    after = evaluate(model, eval_images, eval_labels, args.batch_size)
    print(f"after {args.steps} steps ({elapsed:.1f} s): "
          f"pixel accuracy {after['pixel_accuracy']:.3f}, IoU {after['iou']:.3f}")


if __name__ == "__main__":
    main()
