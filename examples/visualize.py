"""Train a small CNN on real handwritten digits, then look inside it with ``pyvision_ops.visualize``.

The data are scikit-learn's bundled digits (``sklearn.datasets.load_digits``: 1797 real 8x8
images, no download), upsampled to 32x32 (bilinear) so that the network has room for three
convolution + max pooling stages and the pictures have room for an occluding square, and split
into training and held-out test images (a fixed, stratified split; pixel values in [0, 1], the
background 0). After training (a progress bar per epoch) it prints the test accuracy and writes
one PNG per method into ``--out``:

- ``deconvnet.png``: for four feature maps of each of two layers (the second and third ReLU), the
  nine test digits that excite the map most, each projected back to pixel space with the
  DeconvNet (Zeiler and Fergus), above the digits themselves, both cropped to a window around
  the projection (12x12 and 24x24 pixels, about the layers' receptive fields);
- ``occlusion.png``: test digits with, while a black 8x8 square slides over them (stride 2), the
  probability of the true class, the most probable class (``tab10`` colours: 0 blue, 1 orange,
  2 green, 3 red, 4 purple, 5 brown, 6 pink, 7 grey, 8 olive, 9 cyan) and the total activation of
  the last convolution's strongest feature map; map position (i, j) is the square whose top-left
  pixel is (2i, 2j);
- ``saliency.png``: test digits and their saliency maps for the true class (Simonyan et al.);
- ``class-models.png``: one class-model image per digit (Simonyan et al.), blurred every 4 steps;
- ``deep-dream.png``: test digits and their DeepDreams at two layers, two octaves (Mordvintsev et al.).

    python examples/visualize.py                      # about 30 s on a 2-core CPU
    python examples/visualize.py --out pictures/ --epochs 4
    python examples/visualize.py --short              # 5 training steps, short ascents: the test suite's run

Needs scikit-learn (the digits) and matplotlib (the pictures); tqdm for progress bars:
``pip install scikit-learn matplotlib tqdm``.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Iterable, Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pyvision_ops import visualize
from pyvision_ops.data import load_digits_split

try:
    from tqdm import tqdm
except ImportError:  # tqdm is optional: print a line every so often instead
    tqdm = None

SIZE = 32


class DigitsCNN(nn.Module):
    """Three convolution + ReLU + max pooling stages (``features``, a DeconvNet-compatible stack)
    and a linear classifier: 32x32 -> 16x16 -> 8x8 -> 4x4 feature maps -> 10 scores."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(4 * width * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _PlainProgress:
    """The part of tqdm's interface used here, printing a line at the end of each epoch."""

    def __init__(self, iterable: Iterable, total: int, desc: str) -> None:
        self.iterable, self.total, self.desc, self.postfix = iterable, total, desc, ""

    def __iter__(self) -> Iterator:
        yield from self.iterable
        print(f"{self.desc}: {self.total} steps {self.postfix}", flush=True)

    def set_postfix(self, **values: str) -> None:
        self.postfix = " ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        pass


def progress_bar(iterable: Iterable, total: int, desc: str):
    if tqdm is None:
        return _PlainProgress(iterable, total, desc)
    return tqdm(iterable, total=total, desc=desc, unit="step")


def load_digits_32(held_out: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels); images (N, 1, 32, 32) in [0, 1],
    each digit split in the same proportion."""
    return load_digits_split(held_out, seed, size=SIZE)


def shift(images: torch.Tensor, generator: torch.Generator, most: int = 2) -> torch.Tensor:
    """The batch shifted by up to ``most`` pixels each way (zero padding), one shift per batch."""
    padded = F.pad(images, (most, most, most, most))
    dy, dx = torch.randint(0, 2 * most + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + images.shape[2], dx : dx + images.shape[3]]


def train(model: DigitsCNN, images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int, lr: float,
          max_steps: int, generator: torch.Generator) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(images) // batch_size)
    if max_steps > 0:
        steps_per_epoch = min(steps_per_epoch, max_steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        batches = (order[i * batch_size : (i + 1) * batch_size] for i in range(steps_per_epoch))
        bar = progress_bar(batches, steps_per_epoch, f"epoch {epoch + 1}/{epochs}")
        for batch in bar:
            loss = F.cross_entropy(model(shift(images[batch], generator)), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
    model.eval()


@torch.no_grad()
def accuracy(model: DigitsCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(images).argmax(1) == labels).double().mean())


def receptive_window(projection: torch.Tensor, size: int) -> Tuple[slice, slice]:
    """A size x size window (inside the image) centred on the projection's centre of mass."""
    weight = projection.abs().sum(dim=0)
    weight = weight / weight.sum().clamp_min(1e-12)
    rows = torch.arange(weight.shape[0], dtype=weight.dtype)
    cols = torch.arange(weight.shape[1], dtype=weight.dtype)
    centre = (float((weight.sum(1) * rows).sum()), float((weight.sum(0) * cols).sum()))
    starts = [min(max(0, round(c - size / 2)), extent - size) for c, extent in zip(centre, weight.shape)]
    return slice(starts[0], starts[0] + size), slice(starts[1], starts[1] + size)


def one_per_digit(labels: torch.Tensor, digits: Iterable[int]) -> List[int]:
    """The index of the first test image of each digit."""
    return [int(torch.nonzero(labels == d)[0]) for d in digits]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="visualize-out", help="folder for the PNGs (created)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=16, help="channels of the first convolution")
    parser.add_argument("--held-out", type=float, default=0.3, help="fraction of each digit held out for testing")
    parser.add_argument("--class-model-steps", type=int, default=300)
    parser.add_argument("--dream-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--short", action="store_true",
                        help="one epoch of 5 steps and short ascents: checks that everything runs, in seconds")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    max_steps = 0
    if args.short:
        args.epochs, max_steps, args.class_model_steps, args.dream_steps = 1, 5, 20, 5

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train_x, train_y, test_x, test_y = load_digits_32(args.held_out, args.seed)
    train_in, test_in = train_x, test_x
    print(f"digits: {len(train_x)} training, {len(test_x)} test images, upsampled to {SIZE}x{SIZE}")

    model = DigitsCNN(args.width)
    start = time.perf_counter()
    train(model, train_in, train_y, args.epochs, args.batch_size, args.lr, max_steps, generator)
    seconds = time.perf_counter() - start
    print(f"trained {args.epochs} epoch(s) in {seconds:.1f} s: test accuracy {accuracy(model, test_in, test_y):.3f}")

    os.makedirs(args.out, exist_ok=True)
    written = []
    start = time.perf_counter()

    # DeconvNet: the top 9 test digits of four feature maps of the second and third ReLU, each
    # projection and its digit cropped to the layer's receptive field around the projection.
    images, titles = [], []
    for layer, crop in ((4, 12), (7, 24)):
        with torch.no_grad():
            strongest = model.features[: layer + 1](test_in).amax(dim=(2, 3)).amax(dim=0)
        for channel in strongest.topk(4).indices.tolist():
            top = visualize.top_activations(model, layer, test_in, channel=channel, k=9)
            windows = [receptive_window(p, crop) for p in top.projections]
            images += [p[:, r, c] for p, (r, c) in zip(top.projections, windows)]
            images += [test_x[i][:, r, c] for i, (r, c) in zip(top.indices.tolist(), windows)]
            titles += [f"layer {layer} map {channel}"] + [""] * 8 + [f"{v:.1f}" for v in top.values.tolist()]
    path = os.path.join(args.out, "deconvnet.png")
    visualize.save_grid(images, path, nrow=9, titles=titles, cell_inches=1.0,
                        suptitle="DeconvNet projections of the 9 strongest activations, above their digits")
    written.append(path)

    # Occlusion with a black square: probability of the true class, most probable class, strongest
    # last-layer map.
    picks = one_per_digit(test_y, range(0, 10, 2))
    maps = visualize.occlusion_map(model, test_in[picks], test_y[picks], patch=8, stride=2, fill=0.0,
                                   layer=model.features[7])
    images, titles, cmaps = [], [], []
    for row, i in enumerate(picks):
        activation = maps.activation[row]
        images += [test_x[i], maps.probability[row], (maps.label[row].double() + 0.5) / 10,
                   (activation - activation.min()) / (activation.max() - activation.min()).clamp_min(1e-12)]
        titles += [f"digit {int(test_y[i])}", f"p({int(test_y[i])}) min {float(maps.probability[row].min()):.2f}",
                   "labels " + ",".join(map(str, torch.unique(maps.label[row]).tolist())),
                   "strongest map, layer 7"]
        cmaps += ["gray", "inferno", "tab10", "viridis"]
    path = os.path.join(args.out, "occlusion.png")
    visualize.save_grid(images, path, nrow=4, normalize=False, titles=titles, cmap=cmaps,
                        suptitle="occluding an 8x8 square (Zeiler and Fergus, fig. 7)")
    written.append(path)

    # Saliency for the true class.
    picks = one_per_digit(test_y, range(10))
    saliency = visualize.saliency_map(model, test_in[picks], test_y[picks])
    path = os.path.join(args.out, "saliency.png")
    visualize.save_grid([test_x[i] for i in picks] + list(saliency), path, nrow=10,
                        titles=[f"digit {int(test_y[i])}" for i in picks] + ["saliency"] * 10,
                        suptitle="saliency maps |dS/dI| (Simonyan et al. 2014)")
    written.append(path)

    # Class models: gradient ascent from a black image, blurred every 4 steps.
    class_models = [
        visualize.class_model_visualisation(model, digit, (1, SIZE, SIZE), steps=args.class_model_steps, lr=0.1,
                                            l2=0.05, blur_every=4, blur_sigma=0.6)
        for digit in range(10)
    ]
    path = os.path.join(args.out, "class-models.png")
    visualize.save_grid(class_models, path, nrow=10, titles=[f"class {d}" for d in range(10)], value_range=(0, 1),
                        suptitle="class-model images (Simonyan et al. 2014), values in [0, 1]")
    written.append(path)

    # DeepDream at the second and third ReLU.
    picks = one_per_digit(test_y, (3, 5, 8))
    images, titles = [], []
    for i in picks:
        images.append(test_x[i])
        titles.append(f"digit {int(test_y[i])}")
        for layer in (4, 7):
            dream = visualize.deep_dream(model, test_in[i], model.features[layer], steps=args.dream_steps, lr=0.01,
                                         octaves=2)
            images.append(dream)
            titles.append(f"dream, layer {layer}")
    path = os.path.join(args.out, "deep-dream.png")
    visualize.save_grid(images, path, nrow=3, titles=titles, value_range=(0, 1),
                        suptitle="DeepDream (Mordvintsev et al. 2015)")
    written.append(path)

    print(f"pictures in {time.perf_counter() - start:.1f} s:")
    for path in written:
        print(f"  {path}")


if __name__ == "__main__":
    main()
