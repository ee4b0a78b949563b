"""Op family `distance` in use: the metric-learning modules TripletLoss and ContrastiveLoss
(pyvision_ops.nn.distance), and a small embedding network trained with them.

The references here are written for this file, in plain float64 PyTorch, independently of the
library and of tests/references/distance.py: the batch-hard loss by masked row maxima/minima of
the distance matrix (Hermans et al.'s formulation), the other strategies by enumerating every
(anchor, positive, negative) and keeping those the strategy's definition selects, the contrastive
loss by its formula. Gradients are autograd's through these formulas. The distributed
(gather=True) path is tested in tests/test_distance_distributed.py.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import DEVICES, sync
from pyvision_ops.nn import ContrastiveLoss, TripletLoss

STRATEGIES = ("batch_hard", "semi_hard", "semi_hard_window", "hard")
MINED = ("semi_hard", "semi_hard_window", "hard")
METRICS = ("sqeuclidean", "euclidean", "cosine")
#: Class sizes of the test batch: a singleton class (an anchor without a positive) among them.
CLASS_SIZES = (4, 3, 3, 2, 1)


# --------------------------------------------------------------------------------------------
# float64 references
# --------------------------------------------------------------------------------------------


def reference_distances(x: Tensor, metric: str) -> Tensor:
    """(N, N) float64 distances from explicit differences; euclidean distances 0 (the diagonal,
    duplicate points) are kept out of the square root so that their gradient is 0, not NaN."""
    x = x.to(torch.float64)
    if metric == "cosine":
        norms = x.norm(dim=1).clamp_min(1e-8)
        return 1.0 - (x @ x.T) / (norms[:, None] * norms[None, :])
    squared = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)
    if metric == "sqeuclidean":
        return squared
    zero = squared == 0
    return torch.where(zero, torch.zeros_like(squared), torch.where(zero, torch.ones_like(squared), squared).sqrt())


def reference_batch_hard_loss(x: Tensor, labels: Tensor, margin: float, metric: str, soft: bool) -> Tensor:
    """Masked batch-hard loss: per anchor the largest positive distance and the smallest negative
    distance; the mean over anchors that have both."""
    d = reference_distances(x, metric)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(labels.numel(), dtype=torch.bool)
    negative = ~same
    hardest_positive = torch.where(positive, d, torch.full_like(d, -math.inf)).max(dim=1).values
    hardest_negative = torch.where(negative, d, torch.full_like(d, math.inf)).min(dim=1).values
    valid = positive.any(dim=1) & negative.any(dim=1)
    if not bool(valid.any()):
        return x.sum() * 0.0
    gap = (hardest_positive - hardest_negative)[valid]
    return (F.softplus(gap) if soft else torch.relu(gap + margin)).mean()


def reference_triplets(d: Tensor, labels: Tensor, strategy: str, margin: float,
                       max_triplets: Optional[int] = None) -> List[Tuple[int, int, int]]:
    """Every (a, p, n) the strategy selects, from an enumeration of all triplets of the batch."""
    d = d.detach()
    n_items = labels.numel()
    lab = labels.tolist()
    chosen = []
    for a in range(n_items):
        positives = [p for p in range(n_items) if p != a and lab[p] == lab[a]]
        negatives = [n for n in range(n_items) if lab[n] != lab[a]]
        for p in positives:
            if strategy == "semi_hard":
                farther = [n for n in negatives if d[a, n] > d[a, p]]
                if farther:
                    chosen.append((a, p, min(farther, key=lambda n: float(d[a, n]))))
                elif negatives:
                    chosen.append((a, p, max(negatives, key=lambda n: float(d[a, n]))))
                continue
            for n in negatives:
                if strategy == "semi_hard_window":
                    keep = d[a, p] < d[a, n] <= d[a, p] + margin
                elif strategy == "hard":
                    keep = d[a, p] - d[a, n] + margin > 0
                else:
                    raise AssertionError(strategy)
                if keep:
                    chosen.append((a, p, n))
    if max_triplets is not None:
        chosen = sorted(chosen, key=lambda t: -float(d[t[0], t[1]] - d[t[0], t[2]]))[:max_triplets]
    return chosen


def reference_mined_loss(x: Tensor, labels: Tensor, strategy: str, margin: float, metric: str, soft: bool,
                         max_triplets: Optional[int] = None) -> Tuple[Tensor, int]:
    """Mean hinge (or softplus) over the reference triplets, and how many there are."""
    d = reference_distances(x, metric)
    triplets = reference_triplets(d, labels, strategy, margin, max_triplets)
    if not triplets:
        return x.sum() * 0.0, 0
    a, p, n = torch.tensor(triplets, dtype=torch.int64).T
    gap = d[a, p] - d[a, n]
    return (F.softplus(gap) if soft else torch.relu(gap + margin)).mean(), len(triplets)


def reference_contrastive(x1: Tensor, x2: Tensor, same: Tensor, margin: float, reduction: str) -> Tensor:
    y = same.to(torch.float64)
    squared = (x1.to(torch.float64) - x2.to(torch.float64)).pow(2).sum(-1)
    per_pair = y * squared + (1 - y) * torch.relu(margin ** 2 - squared)
    if reduction == "none":
        return per_pair
    if reduction == "sum":
        return per_pair.sum()
    return per_pair.mean() if per_pair.numel() else per_pair.sum()


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def labelled_batch(dim: int, dtype=torch.float64, class_sizes=CLASS_SIZES) -> Tuple[Tensor, Tensor]:
    """Unit-norm embeddings (distances of order 1, as a trained network gives) in shuffled order."""
    labels = torch.cat([torch.full((size,), 10 + 3 * c, dtype=torch.int64) for c, size in enumerate(class_sizes)])
    labels = labels[torch.randperm(labels.numel())]
    x = F.normalize(torch.randn(labels.numel(), dim, dtype=torch.float64), dim=1)
    return x.to(dtype).requires_grad_(True), labels


def loss_and_grad(module: nn.Module, x: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
    leaf = x.detach().clone().requires_grad_(True)
    loss = module(leaf, labels)
    loss.backward()
    return loss.detach(), leaf.grad


def reference_loss_and_grad(fn, x: Tensor, *args) -> Tuple[Tensor, Tensor, int]:
    leaf = x.detach().to(torch.float64).clone().requires_grad_(True)
    result = fn(leaf, *args)
    loss, count = result if isinstance(result, tuple) else (result, -1)
    loss.backward()
    return loss.detach(), leaf.grad, count


# --------------------------------------------------------------------------------------------
# TripletLoss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("metric", METRICS)
def test_batch_hard_matches_the_masked_reference(metric, soft):
    x, labels = labelled_batch(dim=6)
    margin = 0.3
    loss, grad = loss_and_grad(TripletLoss("batch_hard", margin=margin, metric=metric, soft=soft), x, labels)
    expected, expected_grad, _ = reference_loss_and_grad(reference_batch_hard_loss, x, labels, margin, metric, soft)
    assert loss.dtype == torch.float64 and loss.shape == ()
    assert expected > 0
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("dim", [3, 40])  # few dims: distances of the triplets' rows; many: of the anchors' matrix
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("strategy", MINED)
def test_mined_strategies_match_the_reference(strategy, metric, soft, dim):
    x, labels = labelled_batch(dim)
    # A margin in the scale of each metric's distances between unit vectors, so that the window
    # and the hard criteria keep some triplets and drop others.
    margin = {"sqeuclidean": 0.5, "euclidean": 0.25, "cosine": 0.25}[metric]
    loss, grad = loss_and_grad(TripletLoss(strategy, margin=margin, metric=metric, soft=soft), x, labels)
    expected, expected_grad, count = reference_loss_and_grad(
        reference_mined_loss, x, labels, strategy, margin, metric, soft)
    total = sum(size * (size - 1) * (labels.numel() - size) for size in CLASS_SIZES)
    assert 0 < count and (strategy == "semi_hard" or count < total)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("metric", METRICS)
def test_duplicate_embeddings_give_finite_gradients(metric):
    # An anchor equal to one of its positives (distance exactly 0): the euclidean gradient there
    # is 0, never NaN.
    x, labels = labelled_batch(dim=4)
    x = x.detach().clone()
    first, second = [i for i in range(labels.numel()) if labels[i] == labels[0]][:2]
    x[second] = x[first]
    for strategy in STRATEGIES:
        for soft in (False, True):
            criterion = TripletLoss(strategy, margin=0.5, metric=metric, soft=soft)
            loss, grad = loss_and_grad(criterion, x, labels)
            if strategy == "batch_hard":
                expected, expected_grad, _ = reference_loss_and_grad(
                    reference_batch_hard_loss, x, labels, 0.5, metric, soft)
            else:
                expected, expected_grad, _ = reference_loss_and_grad(
                    reference_mined_loss, x, labels, strategy, 0.5, metric, soft)
            assert bool(torch.isfinite(grad).all()), (strategy, soft)
            torch.testing.assert_close(loss, expected)
            torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("soft", [False, True])
def test_each_way_of_computing_the_mined_distances(monkeypatch, soft):
    # Few triplets of few dims: from the triplets' rows (the fused triplet_margin_loss, or batched
    # pairwise_distance for the soft loss); many: from the anchors' distance matrix.
    import pyvision_ops.nn.distance as module

    calls = []
    for name in ("pairwise_distance", "triplet_margin_loss"):
        original = getattr(module, name)

        def recorded(*args, _name=name, _original=original, **kwargs):
            calls.append((_name, tuple(args[0].shape)))
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, recorded)
    for strategy, dim, expected_call in (("semi_hard", 3, "rows"), ("hard", 3, "matrix"), ("semi_hard", 40, "matrix")):
        x, labels = labelled_batch(dim)
        calls.clear()
        loss, grad = loss_and_grad(TripletLoss(strategy, margin=0.5, soft=soft), x, labels)
        expected, expected_grad, _ = reference_loss_and_grad(reference_mined_loss, x, labels, strategy, 0.5,
                                                             "sqeuclidean", soft)
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(grad, expected_grad)
        names = [name for name, _ in calls]
        if expected_call == "matrix":
            assert names == ["pairwise_distance"] and len(calls[0][1]) == 2, calls
        elif soft:
            assert names == ["pairwise_distance"] * 2 and len(calls[0][1]) == 3, calls
        else:
            assert names == ["triplet_margin_loss"], calls


def test_gradcheck_of_every_strategy():
    # The mined triplets do not change under a tiny perturbation, so the loss is locally the mean
    # of fixed distance differences: gradcheck holds.
    x, labels = labelled_batch(dim=4)
    for strategy in STRATEGIES:
        criterion = TripletLoss(strategy, margin=0.4)
        assert torch.autograd.gradcheck(lambda e: criterion(e, labels), (x.detach().clone().requires_grad_(True),),
                                        eps=1e-7, atol=1e-6)


def test_hard_with_max_triplets_keeps_the_largest_violations():
    x, labels = labelled_batch(dim=5)
    margin, cap = 0.5, 7
    loss, grad = loss_and_grad(TripletLoss("hard", margin=margin, max_triplets=cap), x, labels)
    expected, expected_grad, count = reference_loss_and_grad(
        reference_mined_loss, x, labels, "hard", margin, "sqeuclidean", False, cap)
    _, _, uncapped = reference_loss_and_grad(reference_mined_loss, x, labels, "hard", margin, "sqeuclidean", False)
    assert count == cap < uncapped
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    # A cap above the number of hard triplets keeps them all.
    torch.testing.assert_close(TripletLoss("hard", margin=margin, max_triplets=10 ** 6)(x, labels),
                               TripletLoss("hard", margin=margin)(x, labels))


def test_float32_agrees_with_float64():
    x, labels = labelled_batch(dim=8)
    for strategy in STRATEGIES:
        criterion = TripletLoss(strategy, margin=0.5)
        loss32, grad32 = loss_and_grad(criterion, x.detach().float(), labels)
        loss64, grad64 = loss_and_grad(criterion, x.detach(), labels)
        assert loss32.dtype == torch.float32
        torch.testing.assert_close(loss32.double(), loss64, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad32.double(), grad64, rtol=1e-4, atol=1e-5)


def test_labels_of_other_integer_dtypes():
    x, labels = labelled_batch(dim=4)
    for strategy in STRATEGIES:
        criterion = TripletLoss(strategy, margin=0.5)
        expected = criterion(x, labels)
        for dtype in (torch.int32, torch.int16, torch.uint8):
            torch.testing.assert_close(criterion(x, labels.to(dtype)), expected)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", ["empty", "one_class", "singletons", "no_violation"])
def test_no_triplet_gives_zero_with_zero_gradient(strategy, case):
    if case == "empty":
        x, labels = torch.randn(0, 5, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    elif case == "one_class":
        x, labels = torch.randn(6, 5, dtype=torch.float64), torch.full((6,), 3, dtype=torch.int64)
    elif case == "singletons":
        x, labels = torch.randn(6, 5, dtype=torch.float64), torch.arange(6)
    else:
        # Two tight clusters far apart: with a negative margin no triplet is "hard" or in the
        # window; batch_hard and semi_hard still select triplets (with a zero hinge).
        labels = torch.tensor([0, 0, 0, 1, 1, 1])
        x = torch.randn(6, 5, dtype=torch.float64) * 0.01 + 10.0 * labels[:, None].double()
    margin = -1.0 if case == "no_violation" else 0.2
    x.requires_grad_(True)
    loss = TripletLoss(strategy, margin=margin)(x, labels)
    assert loss.shape == () and loss.dtype == torch.float64
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_soft_loss_of_a_batch_without_triplets_is_zero(strategy):
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = TripletLoss(strategy, soft=True)(x, torch.zeros(4, dtype=torch.int64))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_triplet_loss_module_has_no_state_and_shows_its_options():
    criterion = TripletLoss("hard", margin=0.5, metric="cosine", soft=True, max_triplets=16)
    assert list(criterion.state_dict()) == [] and list(criterion.parameters()) == []
    text = repr(criterion)
    for piece in ("strategy='hard'", "margin=0.5", "metric='cosine'", "soft=True", "max_triplets=16", "gather=False"):
        assert piece in text, text
    assert repr(TripletLoss()) == ("TripletLoss(strategy='batch_hard', margin=0.2, metric='sqeuclidean', "
                                   "soft=False, max_triplets=None, gather=False)")


def test_triplet_loss_bad_arguments():
    with pytest.raises(ValueError, match="strategy"):
        TripletLoss("hardest")
    with pytest.raises(ValueError, match="metric"):
        TripletLoss(metric="dot")
    with pytest.raises(ValueError, match="metric"):
        TripletLoss(metric="manhattan")
    for margin in (math.nan, math.inf):
        with pytest.raises(ValueError, match="margin"):
            TripletLoss(margin=margin)
    with pytest.raises(ValueError, match="max_triplets"):
        TripletLoss("hard", max_triplets=-1)
    with pytest.raises(ValueError, match="max_triplets"):
        TripletLoss("batch_hard", max_triplets=4)


def test_gather_without_a_process_group_raises():
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    x, labels = labelled_batch(dim=3)
    for strategy in STRATEGIES:
        with pytest.raises(RuntimeError, match="init_process_group|distributed"):
            TripletLoss(strategy, gather=True)(x, labels)


@pytest.mark.parametrize("device", DEVICES)
def test_modules_on_device_match_float64_cpu(device):
    x, labels = labelled_batch(dim=16, dtype=torch.float32)
    for strategy in STRATEGIES:
        criterion = TripletLoss(strategy, margin=0.5)
        on_device = x.detach().to(device).requires_grad_(True)
        loss = criterion(on_device, labels.to(device))
        loss.backward()
        sync(device)
        expected, expected_grad = loss_and_grad(criterion, x.detach().double(), labels)
        assert loss.device.type == torch.device(device).type
        torch.testing.assert_close(loss.detach().cpu().double(), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(on_device.grad.cpu().double(), expected_grad, rtol=1e-4, atol=1e-5)
    x1, x2 = torch.randn(2, 6, 5, device=device)
    same = torch.tensor([True, False, True, False, False, True], device=device)
    torch.testing.assert_close(ContrastiveLoss(1.5)(x1, x2, same).cpu().double(),
                               reference_contrastive(x1.cpu(), x2.cpu(), same.cpu(), 1.5, "mean"),
                               rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# ContrastiveLoss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("same_dtype", [torch.bool, torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_contrastive_matches_the_formula(reduction, same_dtype):
    x1 = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    same = torch.tensor([1, 0, 0, 1, 0, 1, 0, 0, 1]).to(same_dtype)
    margin = 2.5  # some different pairs inside the margin, some outside
    loss = ContrastiveLoss(margin, reduction)(x1, x2, same)
    r1, r2 = x1.detach().clone().requires_grad_(True), x2.detach().clone().requires_grad_(True)
    expected = reference_contrastive(r1, r2, same, margin, reduction)
    squared = (x1 - x2).detach().pow(2).sum(-1)
    assert bool((squared[same == 0] < margin ** 2).any()) and bool((squared[same == 0] > margin ** 2).any())
    torch.testing.assert_close(loss, expected)
    weights = torch.randn(9, dtype=torch.float64) if reduction == "none" else torch.tensor(1.0, dtype=torch.float64)
    (loss * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x1.grad, r1.grad)
    torch.testing.assert_close(x2.grad, r2.grad)


def test_contrastive_empty_batch():
    x1 = torch.randn(0, 3, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(0, 3, dtype=torch.float64, requires_grad=True)
    same = torch.zeros(0, dtype=torch.bool)
    loss = ContrastiveLoss()(x1, x2, same)
    assert loss.shape == () and loss.item() == 0.0
    loss.backward()
    assert x1.grad is not None and x1.grad.shape == (0, 3)
    assert ContrastiveLoss(reduction="sum")(x1, x2, same).item() == 0.0
    assert ContrastiveLoss(reduction="none")(x1, x2, same).shape == (0,)


def test_contrastive_module_options():
    criterion = ContrastiveLoss(margin=0.5, reduction="sum")
    assert list(criterion.state_dict()) == []
    assert repr(criterion) == "ContrastiveLoss(margin=0.5, reduction='sum')"
    with pytest.raises(ValueError, match="reduction"):
        ContrastiveLoss(reduction="max")
    with pytest.raises(ValueError, match="margin"):
        ContrastiveLoss(margin=math.nan)


# --------------------------------------------------------------------------------------------
# a tiny embedding network trained with the losses
# --------------------------------------------------------------------------------------------


def clustered_points(centres: Tensor, n_per_class: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """n_per_class noisy points around each of the class centres (C, 8)."""
    labels = torch.arange(centres.shape[0]).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(labels.numel(), centres.shape[1], generator=generator), labels


class TinyEmbeddingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.layers(x), dim=1)


def training_setup(seed: int):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the network's initialisation
    centres = torch.randn(4, 8, generator=generator) * 1.5
    net = TinyEmbeddingNet()
    return generator, centres, net, torch.optim.Adam(net.parameters(), lr=0.02)


# Each bound leaves room around what this seed gives (0.16, 0.07, 0.33 of the initial loss): the
# loss on "hard" triplets falls more slowly, the miner keeps finding new ones.
@pytest.mark.parametrize("strategy,bound", [("batch_hard", 0.5), ("semi_hard", 0.5), ("hard", 0.7)])
def test_training_an_embedding_network_lowers_the_triplet_loss(strategy, bound):
    generator, centres, net, optimizer = training_setup(0)
    criterion = TripletLoss(strategy, margin=0.3)
    held_out, held_out_labels = clustered_points(centres, 8, generator)
    with torch.no_grad():
        before = criterion(net(held_out), held_out_labels).item()
    for _ in range(40):
        points, labels = clustered_points(centres, 8, generator)
        optimizer.zero_grad()
        criterion(net(points), labels).backward()
        optimizer.step()
    with torch.no_grad():
        after = criterion(net(held_out), held_out_labels).item()
    assert before > 0.1
    assert after < bound * before, (before, after)


def test_training_with_the_contrastive_loss_lowers_it():
    generator, centres, net, optimizer = training_setup(0)
    criterion = ContrastiveLoss(margin=1.0)

    def pairs() -> Tuple[Tensor, Tensor, Tensor]:
        """Each point paired with another member of its class and with a member of another class."""
        points, labels = clustered_points(centres, 8, generator)
        index = torch.arange(labels.numel())
        same_class = (index // 8) * 8 + (index % 8 + torch.randint(1, 8, index.shape, generator=generator)) % 8
        other_class = (index + 8 * torch.randint(1, 4, index.shape, generator=generator)) % labels.numel()
        first, second = torch.cat([index, index]), torch.cat([same_class, other_class])
        return points[first], points[second], labels[first] == labels[second]

    held_out = pairs()
    assert int(held_out[2].sum()) == 32
    with torch.no_grad():
        before = criterion(net(held_out[0]), net(held_out[1]), held_out[2]).item()
    for _ in range(40):
        a, b, same = pairs()
        optimizer.zero_grad()
        criterion(net(a), net(b), same).backward()
        optimizer.step()
    with torch.no_grad():
        after = criterion(net(held_out[0]), net(held_out[1]), held_out[2]).item()
    assert after < 0.5 * before, (before, after)
