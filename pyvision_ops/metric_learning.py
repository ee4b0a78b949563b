"""Metric learning on the distance family: k-means, the class hierarchy, the hierarchical
triplet loss (Ge et al., ECCV 2018) and its batch sampler.

``kmeans`` runs Lloyd iterations with scikit-learn's semantics (``KMeans(algorithm="lloyd")``);
its assignment step is a fused nearest-centroid kernel (the distance family's dot-product tiles
with a running argmin per row; ``pairwise_topk(x, centroids, 1)`` off the CPU), so no N x K matrix
exists beyond one tile. ``ClassTree`` clusters the classes of a set of
embeddings with SciPy's ``linkage`` on ``class_distance_matrix``; ``HierarchicalBatchSampler``
draws batches of neighbouring classes from it; ``hierarchical_triplet_loss`` is the fused loss
over every valid triplet of a batch with the tree's dynamic margin.
"""

from __future__ import annotations

import math
import operator
from typing import Iterator, List, NamedTuple, Optional, Sequence, Union

import torch

from pyvision_ops._extension import ops
from pyvision_ops.ops.distance import class_distance_matrix, pairwise_distance

__all__ = ["KMeansResult", "kmeans", "ClassTree", "HierarchicalBatchSampler", "hierarchical_triplet_loss"]


class KMeansResult(NamedTuple):
    centroids: torch.Tensor
    labels: torch.Tensor
    inertia: float
    n_iter: int


def _check_int(value, name: str, lower: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)  # int and NumPy integers
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < lower:
        raise ValueError(f"{name} must be >= {lower}, got {value}")
    return value


def _rand(generator: Optional[torch.Generator], n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """n uniform numbers in [0, 1) from `generator` (on its own device), moved to `device`."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, device=gen_device, dtype=dtype).to(device)


def _randperm(generator: Optional[torch.Generator], n: int, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=gen_device).to(device)


def _nearest(x: torch.Tensor, centroids: torch.Tensor):
    """Labels (N,) int64 and squared distances (N,) of every row's nearest centroid (the first of
    equally near ones), from the fused assignment kernel."""
    return ops()._kmeans_assign(x, centroids)


def _kmeans_plusplus(x: torch.Tensor, k: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur and Vassilvitskii; scikit-learn's variant): the first
    centroid uniformly at random, then at each step 2 + floor(ln k) candidates drawn with
    probability proportional to the squared distance to the nearest centroid so far, keeping the
    candidate that lowers the total the most."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = int(_randperm(generator, n, torch.device("cpu"))[0])
    centers = [x[first]]
    closest = pairwise_distance(x[first : first + 1], x, "sqeuclidean")[0].to(torch.float64)
    for _ in range(1, k):
        potential = closest.sum()
        cumulative = torch.cumsum(closest, 0)
        draws = _rand(generator, trials, x.device, torch.float64) * potential
        candidates = torch.searchsorted(cumulative, draws).clamp_(max=n - 1)
        to_candidates = pairwise_distance(x[candidates], x, "sqeuclidean").to(torch.float64)
        candidate_closest = torch.minimum(closest.unsqueeze(0), to_candidates)
        best = int(torch.argmin(candidate_closest.sum(1)))
        closest = candidate_closest[best]
        centers.append(x[candidates[best]])
    return torch.stack(centers)


def _initial_centroids(x: torch.Tensor, k: int, init, generator) -> torch.Tensor:
    if isinstance(init, torch.Tensor):
        if init.shape != (k, x.shape[1]):
            raise ValueError(f"init must have shape ({k}, {x.shape[1]}) (k, D), got {tuple(init.shape)}")
        if not init.dtype.is_floating_point:
            raise ValueError(f"init must be a floating-point tensor, got {init.dtype}")
        if not bool(torch.isfinite(init).all()):
            raise ValueError("init must be finite, got NaN or infinite values")
        return init.detach().to(device=x.device, dtype=x.dtype).clone()
    if init == "k-means++":
        return _kmeans_plusplus(x, k, generator)
    if init == "random":
        return x[_randperm(generator, x.shape[0], x.device)[:k]].clone()
    raise ValueError(f"init must be 'k-means++', 'random' or a ({k}, D) tensor, got {init!r}")


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    init: Union[str, torch.Tensor] = "k-means++",
    max_iter: int = 300,
    tol: float = 1e-4,
    generator: Optional[torch.Generator] = None,
) -> KMeansResult:
    """Lloyd's k-means with scikit-learn's semantics (``KMeans(algorithm="lloyd", n_init=1)``).

    Each iteration assigns every row to its nearest centroid (a fused kernel: never an N x K
    matrix) and moves each centroid to the mean of its rows. An
    empty cluster is re-seeded with the row farthest from its centroid (the farthest rows go,
    in decreasing distance, to the empty clusters in increasing index; each leaves its old
    cluster; as in scikit-learn, the rows are shifted by their mean while iterating, so a cluster
    left empty by this gets the mean). Iteration stops when no label changes, or when the squared Frobenius norm of the
    centroid shift is <= tol times the mean per-feature variance of x, or after max_iter
    iterations (``tol=0`` runs max_iter unless the labels stop changing); the labels are then
    reassigned to the returned centroids unless they had stopped changing.

    Parameters
    ----------
    x : Tensor (N, D), float32 or float64, finite; not modified and not differentiated.
    k : int, 1 <= k <= N
    init : "k-means++" (greedy k-means++ seeding), "random" (k distinct rows) or a (k, D) tensor.
    max_iter : int >= 1
    tol : float >= 0
    generator : torch.Generator for the seeding (reproducible results), or None.

    Returns
    -------
    KMeansResult(centroids (k, D) x's dtype, labels (N,) int64, inertia (the sum of squared
    distances of the rows to their centroids, a float), n_iter (scikit-learn's ``n_iter_``)).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (N, D), got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    n, dim = x.shape
    if n == 0 or dim == 0:
        raise ValueError(f"x must have at least one row and one feature, got shape {tuple(x.shape)}")
    k = _check_int(k, "k", 1)
    if k > n:
        raise ValueError(f"k must be <= the number of rows of x ({n}), got {k}")
    max_iter = _check_int(max_iter, "max_iter", 1)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0 or math.isinf(tol):
        raise ValueError(f"tol must be a finite float >= 0, got {tol!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    x = x.detach()
    # As scikit-learn, iterate on data shifted by its mean (the mean is added back at the end):
    # a cluster emptied by a re-seeding gets the origin of the shifted data, the mean.
    mean = x.mean(0)
    shifted = x - mean
    # scikit-learn's _tolerance: tol times the mean of the per-feature variances (x's dtype).
    variance = shifted.square().mean(0)
    # NaN or inf anywhere in x makes the mean or the variance non-finite (the full scan runs only
    # then, to tell an overflow of the variance from a bad input).
    if not bool(torch.isfinite(variance).all()) and not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite, got NaN or infinite values")
    threshold = float(variance.to(torch.float64).mean()) * float(tol)
    centroids = _initial_centroids(x, k, init, generator)
    x = shifted
    centroids = centroids - mean
    compute = x.dtype  # sums in x's dtype, as scikit-learn's
    labels_old = None
    strict = False
    iteration = 0
    labels = distances = None
    for iteration in range(max_iter):
        labels, distances = _nearest(x, centroids)
        sums = torch.zeros((k, dim), dtype=compute, device=x.device).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(compute)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel() > 0:
            far = torch.topk(distances.to(compute), empty.numel()).indices
            old = labels[far]
            sums[empty] = x[far].to(compute)
            counts[empty] = 1
            sums.index_add_(0, old, -x[far].to(compute))
            counts.index_add_(0, old, -torch.ones_like(old, dtype=compute))
        new_centroids = (sums / counts.clamp(min=1).unsqueeze(1)).to(x.dtype)
        shift = float((new_centroids - centroids).to(torch.float64).square().sum())
        centroids = new_centroids
        if labels_old is not None and torch.equal(labels, labels_old):
            strict = True
            break
        if shift <= threshold:
            break
        labels_old = labels
    if not strict:
        labels, distances = _nearest(x, centroids)
    inertia = float(distances.to(torch.float64).sum())
    return KMeansResult(centroids + mean, labels, inertia, iteration + 1)


class ClassTree:
    """The hierarchy of the classes of a set of embeddings (Ge et al. 2018, section 3.1).

    Attributes
    ----------
    classes : Tensor (P,), the class labels in ``torch.unique`` order.
    class_distances : Tensor (P, P), ``class_distance_matrix`` (its diagonal is each class's
        own spread: the mean squared distance between two of its members).
    linkage : Tensor (P - 1, 4) float64, SciPy's linkage matrix over the classes' positions.
    """

    def __init__(self, classes: torch.Tensor, class_distances: torch.Tensor, linkage: torch.Tensor):
        from scipy.cluster.hierarchy import cophenet
        from scipy.spatial.distance import squareform

        self.classes = classes
        self.class_distances = class_distances
        self.linkage = linkage
        p = classes.numel()
        if p >= 2:
            heights = squareform(cophenet(linkage.numpy()))
        else:
            heights = [[0.0]] if p == 1 else []
        self._merge = torch.as_tensor(heights, dtype=torch.float64).reshape(p, p).to(
            device=class_distances.device, dtype=class_distances.dtype
        )

    @classmethod
    def from_embeddings(cls, embeddings: torch.Tensor, labels: torch.Tensor, method: str = "average") -> "ClassTree":
        """Builds the tree with ``scipy.cluster.hierarchy.linkage(condensed, method)`` on the
        condensed `class_distance_matrix` of (embeddings, labels) (not differentiated)."""
        from scipy.cluster.hierarchy import linkage
        from scipy.spatial.distance import squareform

        if not isinstance(method, str):
            raise TypeError(f"method must be a str, got {type(method).__name__}")
        with torch.no_grad():
            distances = class_distance_matrix(embeddings.detach(), labels)
        classes = torch.unique(labels)
        symmetric = (distances.to(torch.float64) + distances.to(torch.float64).T) / 2
        p = classes.numel()
        if p >= 2:
            condensed = squareform(symmetric.cpu().numpy(), force="tovector", checks=False)
            try:
                z = linkage(condensed, method=method)
            except ValueError as error:
                raise ValueError(f"method {method!r}: {error}") from None
        else:
            z = torch.zeros((0, 4), dtype=torch.float64).numpy()
        return cls(classes, distances.detach(), torch.as_tensor(z, dtype=torch.float64))

    def positions(self, labels: torch.Tensor) -> torch.Tensor:
        """The position in `classes` of every label (int64, labels' shape); raises ValueError for a
        label that is not one of the tree's classes."""
        labels = torch.as_tensor(labels)
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
        classes = self.classes.to(labels.device)
        where = torch.searchsorted(classes, labels.to(classes.dtype)).clamp_(max=max(classes.numel() - 1, 0))
        if classes.numel() == 0 or not bool((classes[where] == labels).all()):
            raise ValueError("labels must all be classes of the tree (ClassTree.classes)")
        return where

    def merge_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The height at which classes a and b first share a node (0 for a == b); a and b are
        tensors of class labels, broadcast against each other."""
        pa, pb = self.positions(a), self.positions(b)
        merge = self._merge.to(pa.device)
        return merge[pa, pb]

    def margins(self, beta: float) -> torch.Tensor:
        """The dynamic margin table (P, P): alpha[i, j] = beta + merge(i, j) - class_distances[i, i]."""
        return beta + self._merge - torch.diagonal(self.class_distances).unsqueeze(1)

    def __repr__(self) -> str:
        return f"ClassTree(classes={self.classes.numel()})"


def hierarchical_triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, tree: ClassTree, beta: float = 0.1
) -> torch.Tensor:
    """The hierarchical triplet loss over every valid triplet of a batch.

    L = 1/(2Z) sum over (a, p, n) of max(0, ||x_a - x_p|| - ||x_a - x_n|| + alpha(y_a, y_n)),
    p != a of a's class, n of another class, Z their number; alpha(y_a, y_n) = beta +
    tree.merge_distance(y_a, y_n) - s(y_a), s the class's own spread (the diagonal of
    tree.class_distances). 0 (finite, differentiable) when there is no valid triplet.

    The distances come from `pairwise_distance` (euclidean, exact 0 on the diagonal with a zero
    gradient); one fused kernel sums the hinges of each anchor's row of positives against its
    row of negatives (memory O(N^2), never N^3), its backward the counts of active triplets.
    Differentiable with respect to embeddings (the tree is a constant).
    """
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"embeddings must be a Tensor, got {type(embeddings).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a Tensor, got {type(labels).__name__}")
    if not isinstance(tree, ClassTree):
        raise TypeError(f"tree must be a ClassTree, got {type(tree).__name__}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite float, got {beta!r}")
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be 2-D (N, D), got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must have shape ({embeddings.shape[0]},) (one per embedding), got {tuple(labels.shape)}"
        )
    if labels.device != embeddings.device:
        raise ValueError(f"labels must be on embeddings' device ({embeddings.device}), got {labels.device}")
    positions = tree.positions(labels)
    margins = tree.margins(float(beta)).to(device=embeddings.device)
    distances = pairwise_distance(embeddings, None, "euclidean")
    compute = torch.float64 if distances.dtype == torch.float64 else torch.float32
    return ops()._hierarchical_triplet_loss(distances, positions, margins.to(compute))


class HierarchicalBatchSampler(torch.utils.data.Sampler):
    """Batches of neighbouring classes for the hierarchical triplet loss (Ge et al. 2018, 3.2).

    Each batch draws l_prime classes at random without replacement, then adds, for each drawn
    class in turn, its m - 1 nearest classes by ``tree.class_distances`` (a class already in the
    batch is skipped for the next nearest), and t images of each of the l_prime * m classes
    (without replacement; with replacement for a class with fewer than t images). Use it as
    ``DataLoader(dataset, batch_sampler=sampler)``; batches are lists of indices into labels,
    t images per class, classes in the order they were chosen.

    Parameters
    ----------
    labels : the dataset's labels (N,), a tensor or a sequence of ints.
    tree : ClassTree over the dataset's classes (every class of the tree must have images).
    l_prime, m, t : ints >= 1, l_prime * m <= the number of classes of the tree.
    num_batches : batches per iteration (default: N // (t * m * l_prime), at least 1).
    generator : torch.Generator; the same generator state gives the same batches.
    """

    def __init__(
        self,
        labels: Union[torch.Tensor, Sequence[int]],
        tree: ClassTree,
        l_prime: int,
        m: int,
        t: int,
        num_batches: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ):
        if not isinstance(tree, ClassTree):
            raise TypeError(f"tree must be a ClassTree, got {type(tree).__name__}")
        labels = torch.as_tensor(labels).detach().cpu()
        if labels.dim() != 1:
            raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
        self.l_prime = _check_int(l_prime, "l_prime", 1)
        self.m = _check_int(m, "m", 1)
        self.t = _check_int(t, "t", 1)
        classes = tree.classes.cpu()
        p = classes.numel()
        if l_prime * m > p:
            raise ValueError(f"l_prime * m must be <= the number of classes of the tree ({p}), got {l_prime * m}")
        positions = tree.positions(labels)
        order = torch.argsort(positions, stable=True)
        counts = torch.bincount(positions, minlength=p)
        if bool((counts == 0).any()):
            missing = classes[counts == 0][0].item()
            raise ValueError(f"labels must hold at least one image of every class of the tree, none of {missing}")
        self._members: List[torch.Tensor] = list(torch.split(order, counts.tolist()))
        distances = tree.class_distances.detach().to(device="cpu", dtype=torch.float64)
        # Nearest first; a class's own entry is never a neighbour.
        distances = distances.clone().fill_diagonal_(float("inf"))
        self._neighbours = torch.argsort(distances, dim=1, stable=True)
        self.batch_size = self.t * self.m * self.l_prime
        if num_batches is None:
            num_batches = max(labels.numel() // self.batch_size, 1)
        self.num_batches = _check_int(num_batches, "num_batches", 1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator

    def __len__(self) -> int:
        return self.num_batches

    def _batch_classes(self, generator: torch.Generator) -> List[int]:
        p = len(self._members)
        drawn = torch.randperm(p, generator=generator)[: self.l_prime].tolist()
        chosen = list(drawn)
        taken = set(drawn)
        for c in drawn:
            added = 0
            for neighbour in self._neighbours[c].tolist():
                if added == self.m - 1:
                    break
                if neighbour in taken or neighbour == c:
                    continue
                chosen.append(neighbour)
                taken.add(neighbour)
                added += 1
        return chosen

    def __iter__(self) -> Iterator[List[int]]:
        generator = self.generator
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        for _ in range(self.num_batches):
            batch: List[int] = []
            for c in self._batch_classes(generator):
                members = self._members[c]
                if members.numel() >= self.t:
                    pick = members[torch.randperm(members.numel(), generator=generator)[: self.t]]
                else:
                    pick = members[torch.randint(members.numel(), (self.t,), generator=generator)]
                batch.extend(pick.tolist())
            yield batch
