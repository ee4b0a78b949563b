"""Learn an embedding of real handwritten digits with a triplet loss, and show what it learned.

The data are scikit-learn's bundled digits (``sklearn.datasets.load_digits``: 1797 real 8x8
images, no download), split into training images and held-out images (a fixed, stratified
split). ``EmbeddingNet`` is trained with the batch-hard triplet loss on batches of P classes x
K images, or, with ``--hierarchical``, with ``hierarchical_triplet_loss`` on batches drawn by
``HierarchicalBatchSampler`` from a ``ClassTree`` rebuilt from the current embeddings of the
training images at the start of every epoch (Ge et al. 2018). Before and after training it
prints, on the held-out images, recall@1 (the fraction whose nearest other held-out image has
the same digit) and the purity of a k-means clustering (K=10) of their embeddings, and writes a
PNG with a 2-D PCA of the held-out embeddings before and after, coloured by digit.

    python examples/metric_learning.py                     # about 30 s on a 2-core CPU
    python examples/metric_learning.py --hierarchical
    python examples/metric_learning.py --epochs 2 --out digits.png

Needs scikit-learn (the digits) and matplotlib (the picture): ``pip install scikit-learn matplotlib``.
"""

from __future__ import annotations

import argparse
import time
from typing import Dict, Iterable, Iterator, List

import torch

import pyvision_ops
from pyvision_ops import metric_learning
from pyvision_ops.data import load_digits_split
from pyvision_ops.models import EmbeddingNet

try:
    from tqdm import tqdm
except ImportError:  # tqdm is optional: print a line every so often instead
    tqdm = None


class _PlainProgress:
    """The part of tqdm's interface used here, printing a line every ``every`` steps."""

    def __init__(self, iterable: Iterable, total: int, every: int = 20) -> None:
        self.iterable, self.total, self.every = iterable, total, every
        self.postfix = ""

    def __iter__(self) -> Iterator:
        for step, item in enumerate(self.iterable):
            yield item
            if (step + 1) % self.every == 0:
                print(f"training: step {step + 1}/{self.total} {self.postfix}", flush=True)

    def set_postfix(self, **values: str) -> None:
        self.postfix = " ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        pass


def progress_bar(iterable: Iterable, total: int, desc: str):
    if tqdm is None:
        return _PlainProgress(iterable, total)
    return tqdm(iterable, total=total, desc=desc, unit="step")


@torch.no_grad()
def embed(model: EmbeddingNet, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return out


def recall_at_1(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose nearest other row (euclidean) has the same label."""
    _, nearest = pyvision_ops.pairwise_topk(embeddings, embeddings, 2)
    # The row itself is at distance 0, normally first; skip it wherever it is.
    rows = torch.arange(len(labels))
    other = torch.where(nearest[:, 0] == rows, nearest[:, 1], nearest[:, 0])
    return float((labels[other] == labels).double().mean())


def kmeans_purity(embeddings: torch.Tensor, labels: torch.Tensor, k: int = 10, seed: int = 0) -> float:
    """Purity of a k-means clustering: the fraction of rows whose cluster's majority label is theirs."""
    result = metric_learning.kmeans(embeddings, k, generator=torch.Generator().manual_seed(seed))
    counts = torch.zeros((k, int(labels.max()) + 1), dtype=torch.int64)
    counts.index_put_((result.labels, labels), torch.ones_like(labels), accumulate=True)
    return float(counts.max(dim=1).values.sum()) / len(labels)


def metrics(model: EmbeddingNet, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    e = embed(model, images)
    return {"recall@1": recall_at_1(e, labels), "purity": kmeans_purity(e, labels)}


def pk_batches(labels: torch.Tensor, classes_per_batch: int, per_class: int, batches: int,
               generator: torch.Generator) -> Iterator[List[int]]:
    """Batches of `classes_per_batch` random classes x `per_class` random images of each."""
    classes = torch.unique(labels)
    members = [torch.nonzero(labels == c).flatten() for c in classes.tolist()]
    for _ in range(batches):
        batch: List[int] = []
        for c in torch.randperm(len(classes), generator=generator)[:classes_per_batch].tolist():
            pick = torch.randperm(members[c].numel(), generator=generator)[:per_class]
            batch.extend(members[c][pick].tolist())
        yield batch


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel (zero padding), so the network cannot memorise pixels."""
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + images.shape[2], dx : dx + images.shape[3]]


def save_pca_plot(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, embeddings, name in ((axes[0], before, "before training"), (axes[1], after, "after training")):
        centred = embeddings - embeddings.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        xy = (centred @ v[:2].T).numpy()
        scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels.numpy(), cmap="tab10", s=10, vmin=-0.5, vmax=9.5)
        ax.set_title(name)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.colorbar(scatter, ax=axes, ticks=range(10), label="digit")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hierarchical", action="store_true",
                        help="hierarchical triplet loss with HierarchicalBatchSampler instead of batch-hard")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=40)
    parser.add_argument("--embedding-dim", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--margin", type=float, default=0.2, help="batch-hard margin (euclidean)")
    parser.add_argument("--beta", type=float, default=0.1, help="hierarchical loss: the margin's constant part")
    parser.add_argument("--held-out", type=float, default=0.3, help="fraction of each digit held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="metric-learning.png", help="the PCA picture (PNG)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    train_x, train_y, test_x, test_y = load_digits_split(args.held_out, args.seed)
    model = EmbeddingNet(in_channels=1, embedding_dim=args.embedding_dim, width=args.width)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    loss_name = "hierarchical triplet" if args.hierarchical else "batch-hard triplet"
    print(f"digits: {len(train_x)} training, {len(test_x)} held-out images; loss: {loss_name}")

    before_embeddings = embed(model, test_x)
    before = metrics(model, test_x, test_y)
    print(f"before training: held-out recall@1 {before['recall@1']:.3f}, k-means purity {before['purity']:.3f}")

    start = time.perf_counter()
    total = args.epochs * args.steps_per_epoch
    for epoch in range(args.epochs):
        if args.hierarchical:
            # The tree follows the embedding: rebuilt from the training images every epoch.
            tree = metric_learning.ClassTree.from_embeddings(embed(model, train_x), train_y)
            batches = metric_learning.HierarchicalBatchSampler(
                train_y, tree, l_prime=2, m=5, t=16, num_batches=args.steps_per_epoch, generator=generator
            )
        else:
            batches = pk_batches(train_y, 10, 16, args.steps_per_epoch, generator)
        bar = progress_bar(batches, args.steps_per_epoch, f"epoch {epoch + 1}/{args.epochs}")
        for batch in bar:
            index = torch.as_tensor(batch)
            embeddings = model(augment(train_x[index], generator))
            if args.hierarchical:
                loss = metric_learning.hierarchical_triplet_loss(embeddings, train_y[index], tree, beta=args.beta)
            else:
                loss = pyvision_ops.batch_hard_triplet_loss(embeddings, train_y[index], margin=args.margin,
                                                            metric="euclidean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{float(loss):.4f}")
        bar.close()
    seconds = time.perf_counter() - start

    after_embeddings = embed(model, test_x)
    after = metrics(model, test_x, test_y)
    print(f"after {total} steps ({seconds:.1f} s): held-out recall@1 {after['recall@1']:.3f}, "
          f"k-means purity {after['purity']:.3f}")
    save_pca_plot(before_embeddings, after_embeddings, test_y, args.out,
                  f"held-out digits, EmbeddingNet + {loss_name} loss: recall@1 {before['recall@1']:.2f} -> "
                  f"{after['recall@1']:.2f}, k-means purity {before['purity']:.2f} -> {after['purity']:.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
