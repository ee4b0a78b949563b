"""pyvision_ops.visualize: saliency, occlusion, class models, DeepDream, top activations, save_grid.

Most checks run on a hand-built CNN with a planted feature: its class-0 score depends only on
the pixels of one square region, so the right answer is known in advance (the saliency is zero
outside the region, occluding the region is what hurts class 0, the class-model image lives in
the region). The numbers are also compared with independent references: finite differences and
``torch.autograd.functional.jacobian`` (saliency), a plain Python loop over the square's
positions (occlusion), the ascent written out step by step (class models, DeepDream), SciPy's
Gaussian filter (the blur) and ``deconvnet_project`` on a ranking computed layer by layer
(top activations).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_unchanged, needs_cuda
from pyvision_ops import visualize
from pyvision_ops.models import deconvnet_project
from pyvision_ops.visualize import _gaussian_blur

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# the planted feature
# --------------------------------------------------------------------------------------------

SIZE = 16
#: The input pixels class 0 reads: the receptive fields of pooled positions 3 and 4 (conv rows
#: 6..9, input rows 5..10), in both directions.
REGION = (slice(5, 11), slice(5, 11))


def region_mask(size: int = SIZE) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[REGION] = True
    return mask


def planted_model(dtype=torch.float64) -> nn.Sequential:
    """conv 3x3 (4 channels) -> ReLU -> max pool 2 -> linear to 3 classes. Channel 0 is a mean
    filter; the class-0 row of the linear layer reads only channel 0 at the pooled positions
    whose receptive field lies in REGION (with weight 4 and bias -8), so class 0 depends on the
    REGION pixels alone; classes 1 and 2 read everything, weakly."""
    g = torch.Generator().manual_seed(1234)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    linear = nn.Linear(4 * 8 * 8, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
        conv.bias.copy_(torch.randn(4, generator=g) * 0.1)
        conv.weight[0] = 1 / 9
        conv.bias[0] = 0.05
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 0.05)
        linear.bias.copy_(torch.randn(3, generator=g) * 0.1)
        row = torch.zeros(4, 8, 8)
        row[0, 3:5, 3:5] = 4.0
        linear.weight[0] = row.flatten()
        linear.bias[0] = -8.0
    return nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), linear).to(dtype).eval()


def planted_images(count: int, dtype=torch.float64, generator=None) -> torch.Tensor:
    """Dim noise everywhere, a bright 4x4 square inside REGION: class 0 wins clearly."""
    images = torch.rand(count, 1, SIZE, SIZE, generator=generator, dtype=dtype) * 0.2
    images[:, :, 6:10, 6:10] += 0.8
    return images


def test_the_planted_model_depends_on_the_region_only():
    """The premise of the planted tests, checked directly: changing every pixel outside REGION
    leaves the class-0 score as it was; changing pixels inside moves it."""
    model = planted_model()
    x = planted_images(3)
    outside = x.clone()
    outside[:, :, ~region_mask()] = torch.rand_like(outside[:, :, ~region_mask()]) * 5
    inside = x.clone()
    inside[:, :, REGION[0], REGION[1]] = 0
    with torch.no_grad():
        scores, scores_outside, scores_inside = model(x), model(outside), model(inside)
    torch.testing.assert_close(scores_outside[:, 0], scores[:, 0], rtol=0, atol=1e-12)
    assert not torch.allclose(scores_outside[:, 1:], scores[:, 1:])
    assert (scores[:, 0] - scores_inside[:, 0]).min() > 5
    assert (scores.softmax(1)[:, 0] > 0.99).all()


# --------------------------------------------------------------------------------------------
# saliency
# --------------------------------------------------------------------------------------------


def test_saliency_is_zero_outside_the_planted_region():
    model = planted_model()
    x = planted_images(4)
    saliency = visualize.saliency_map(model, x, 0)
    assert saliency.shape == (4, SIZE, SIZE) and saliency.dtype == x.dtype
    assert (saliency[:, ~region_mask()] == 0).all()
    assert (saliency[:, region_mask()].amax(dim=1) > 0.1).all()
    # Another class reads the whole image.
    assert (visualize.saliency_map(model, x, 1)[:, ~region_mask()] > 0).any()


def small_colour_model() -> nn.Sequential:
    """Three input channels, smooth (tanh): finite differences are accurate."""
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(5 * 3 * 3, 4)
    ).double().eval()


def test_saliency_matches_finite_differences():
    model = small_colour_model()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    target = torch.tensor([3, 1])
    saliency = visualize.saliency_map(model, x, target)
    eps = 1e-6
    with torch.no_grad():
        gradient = torch.empty_like(x)
        for index in np.ndindex(*x.shape):
            step = torch.zeros_like(x)
            step[index] = eps
            n = index[0]
            gradient[index] = (model(x + step)[n, target[n]] - model(x - step)[n, target[n]]) / (2 * eps)
    torch.testing.assert_close(saliency, gradient.abs().amax(dim=1), rtol=1e-6, atol=1e-8)


def test_saliency_matches_the_jacobian_and_takes_one_image():
    model = small_colour_model()
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    target = torch.tensor([0, 2, 3])
    jacobian = torch.autograd.functional.jacobian(model, x)  # (N, classes, N, C, H, W)
    expected = torch.stack([jacobian[n, target[n], n].abs().amax(dim=0) for n in range(3)])
    torch.testing.assert_close(visualize.saliency_map(model, x, target), expected, rtol=1e-10, atol=1e-12)
    single = visualize.saliency_map(model, x[1], 2)
    assert single.shape == (6, 6)
    torch.testing.assert_close(single, expected[1], rtol=1e-10, atol=1e-12)


def test_saliency_inside_no_grad():
    model = planted_model()
    x = planted_images(2)
    with torch.no_grad():
        saliency = visualize.saliency_map(model, x, 0)
    torch.testing.assert_close(saliency, visualize.saliency_map(model, x, 0))
    assert saliency.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# occlusion
# --------------------------------------------------------------------------------------------


def occlusion_reference(model, images, target, patch, stride, fill, layer):
    """A plain double loop over the square's positions, one forward pass per occluded copy."""
    count, _, height, width = images.shape
    rows = range(0, height - patch + 1, stride)
    cols = range(0, width - patch + 1, stride)
    probability = torch.empty(count, len(rows), len(cols), dtype=torch.float64)
    label = torch.empty(count, len(rows), len(cols), dtype=torch.int64)
    activation = torch.empty(count, len(rows), len(cols), dtype=torch.float64)
    seen = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.__setitem__("a", output.clone()))
    try:
        with torch.no_grad():
            for n in range(count):
                model(images[n : n + 1])
                channel = int(seen["a"][0].flatten(1).amax(1).argmax())
                value = images[n].mean(dim=(1, 2), keepdim=True) if fill is None else fill
                for i, top in enumerate(rows):
                    for j, left in enumerate(cols):
                        occluded = images[n : n + 1].clone()
                        occluded[:, :, top : top + patch, left : left + patch] = value
                        p = model(occluded)[0].softmax(0)
                        probability[n, i, j] = p[target[n]]
                        label[n, i, j] = p.argmax()
                        activation[n, i, j] = seen["a"][0, channel].sum()
    finally:
        handle.remove()
    return probability, label, activation


@pytest.mark.parametrize("patch,stride,fill,batch_size", [(6, 2, None, 256), (4, 3, 0.5, 7), (16, 1, None, 1)],
                         ids=["mean-fill", "constant-fill-small-batches", "whole-image"])
def test_occlusion_matches_a_plain_loop(patch, stride, fill, batch_size):
    model = planted_model()
    x = torch.cat([planted_images(2), torch.rand(1, 1, SIZE, SIZE, dtype=torch.float64)])
    target = torch.tensor([0, 1, 2])
    maps = visualize.occlusion_map(model, x, target, patch=patch, stride=stride, fill=fill, layer=model[1],
                                   batch_size=batch_size)
    side = (SIZE - patch) // stride + 1
    assert maps.probability.shape == maps.label.shape == maps.activation.shape == (3, side, side)
    assert maps.label.dtype == torch.int64
    probability, label, activation = occlusion_reference(model, x, target, patch, stride, fill, model[1])
    torch.testing.assert_close(maps.probability, probability, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(maps.label, label, rtol=0, atol=0)
    torch.testing.assert_close(maps.activation, activation, rtol=1e-12, atol=1e-12)


def test_occlusion_minimum_lies_where_the_square_covers_the_planted_region():
    model = planted_model()
    x = planted_images(3)
    patch, stride = 6, 2
    maps = visualize.occlusion_map(model, x, 0, patch=patch, stride=stride)
    assert maps.activation is None
    region = region_mask()
    for n in range(3):
        p = maps.probability[n]
        i, j = divmod(int(p.argmin()), p.shape[1])
        covered = torch.zeros_like(region)
        covered[i * stride : i * stride + patch, j * stride : j * stride + patch] = True
        assert (covered & region).sum() >= 25  # the minimum's square covers most of the 6x6 region
        # Every square that misses the region leaves class 0 almost certain; the minimum is far below.
        for a in range(p.shape[0]):
            for b in range(p.shape[1]):
                square = torch.zeros_like(region)
                square[a * stride : a * stride + patch, b * stride : b * stride + patch] = True
                if not (square & region).any():
                    assert p[a, b] > 0.99
        assert p.min() < 0.5
        assert maps.label[n, i, j] != 0


def test_occlusion_of_one_image_and_of_an_empty_batch():
    model = planted_model()
    x = planted_images(2)
    one = visualize.occlusion_map(model, x[1], 0, patch=5, stride=3, layer=model[0])
    both = visualize.occlusion_map(model, x, 0, patch=5, stride=3, layer=model[0])
    assert one.probability.shape == (4, 4)
    for single, batched in zip(one, both):
        torch.testing.assert_close(single, batched[1])
    empty = visualize.occlusion_map(model, x[:0], 0, patch=5, stride=3)
    assert empty.probability.shape == empty.label.shape == (0, 4, 4)


# --------------------------------------------------------------------------------------------
# class models and the blur
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.5, 1.3])
def test_gaussian_blur_matches_scipy(sigma):
    from scipy.ndimage import gaussian_filter

    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    expected = gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
    torch.testing.assert_close(_gaussian_blur(x, sigma), torch.from_numpy(expected), rtol=1e-12, atol=1e-12)


def test_class_model_lives_in_the_planted_region_and_its_score_rises():
    model = planted_model()
    scores = []
    for steps in (0, 1, 5, 20, 60):
        image = visualize.class_model_visualisation(model, 0, (1, SIZE, SIZE), steps=steps, lr=0.05, l2=1e-3)
        assert image.shape == (1, SIZE, SIZE) and image.dtype == torch.float64
        with torch.no_grad():
            scores.append(float(model(image[None])[0, 0]))
        if steps:
            energy = image[0] ** 2
            assert energy[~region_mask()].sum() == 0 and energy[region_mask()].sum() > 0
    assert all(later > earlier for earlier, later in zip(scores, scores[1:])), scores


def test_class_model_with_blur_and_clipping_still_concentrates_in_the_region():
    model = planted_model()
    image = visualize.class_model_visualisation(model, 0, (1, SIZE, SIZE), steps=60, lr=0.05, l2=1e-3,
                                                blur_every=5, blur_sigma=0.5, clip_small=1e-3)
    energy = image[0] ** 2
    assert energy[region_mask()].sum() > 0.9 * energy.sum()
    assert (image[0][~region_mask()].abs() >= 1e-3).sum() < (image[0][~region_mask()] == 0).sum()


def class_model_reference(model, target, shape, steps, lr, l2, blur_every, sigma, clip_small, start):
    """The ascent written out: backward() into a leaf image on a deep copy of the model."""
    model = copy.deepcopy(model).eval()
    image = start.clone()
    for step in range(steps):
        leaf = image.clone().requires_grad_(True)
        (model(leaf[None])[0, target] - l2 * (leaf**2).sum()).backward()
        image = leaf.detach() + lr * leaf.grad
        if blur_every and (step + 1) % blur_every == 0:
            image = _gaussian_blur(image[None], sigma)[0]
        image[image.abs() < clip_small] = 0
    return image


def test_class_model_matches_the_ascent_written_out_and_adds_the_mean():
    model = small_colour_model()
    shape = (3, 6, 6)
    arguments = dict(steps=7, lr=0.3, l2=0.01, blur_every=3, blur_sigma=0.7, clip_small=1e-3)
    expected = class_model_reference(model, 2, shape, 7, 0.3, 0.01, 3, 0.7, 1e-3, torch.zeros(shape, dtype=torch.float64))
    image = visualize.class_model_visualisation(model, 2, shape, **arguments)
    torch.testing.assert_close(image, expected, rtol=1e-12, atol=1e-12)
    mean = torch.rand(3, 1, 1, dtype=torch.float64)
    with_mean = visualize.class_model_visualisation(model, 2, shape, mean=mean, **arguments)
    torch.testing.assert_close(with_mean, expected + mean, rtol=0, atol=1e-15)
    # A generator: the same noisy start for the same seed, another for another.
    first = visualize.class_model_visualisation(model, 2, shape, generator=torch.Generator().manual_seed(5), **arguments)
    again = visualize.class_model_visualisation(model, 2, shape, generator=torch.Generator().manual_seed(5), **arguments)
    other = visualize.class_model_visualisation(model, 2, shape, generator=torch.Generator().manual_seed(6), **arguments)
    assert torch.equal(first, again) and not torch.equal(first, other)
    start = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 1e-2
    torch.testing.assert_close(first, class_model_reference(model, 2, shape, 7, 0.3, 0.01, 3, 0.7, 1e-3, start))


# --------------------------------------------------------------------------------------------
# DeepDream
# --------------------------------------------------------------------------------------------


def dream_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 10 * 10, 5),
    ).double().eval()


@pytest.mark.parametrize("octaves", [1, 3])
def test_deep_dream_raises_the_layer_activation_norm(octaves):
    model = dream_model()
    image = torch.rand(2, 3, 20, 20, dtype=torch.float64)
    dream = visualize.deep_dream(model, image, model[3], steps=10, lr=0.02, octaves=octaves)
    assert dream.shape == image.shape and dream.dtype == image.dtype
    with torch.no_grad():
        before = model[:4](image).flatten(1).norm(dim=1)
        after = model[:4](dream).flatten(1).norm(dim=1)
    assert (after > 1.5 * before).all(), (before, after)
    one = visualize.deep_dream(model, image[1], "3", steps=10, lr=0.02, octaves=octaves)
    torch.testing.assert_close(one, dream[1])


def test_deep_dream_matches_the_steps_written_out():
    """Two normalised steps on 0.5 ||a||^2, a computed by slicing the model (no hook)."""
    model = dream_model()
    image = torch.rand(2, 3, 20, 20, dtype=torch.float64)
    x = image.clone()
    for _ in range(2):
        leaf = x.clone().requires_grad_(True)
        (0.5 * model[:3](leaf).pow(2).sum()).backward()
        x = x + 0.05 * leaf.grad / leaf.grad.abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(visualize.deep_dream(model, image, model[2], steps=2, lr=0.05), x, rtol=1e-12, atol=1e-12)


def test_deep_dream_octaves_start_small():
    """With two octaves and no steps on the large one, the result is the image plus the small
    octave's detail enlarged (bilinear)."""
    model = dream_model()
    image = torch.rand(1, 3, 20, 20, dtype=torch.float64)
    small = F.interpolate(image, size=(10, 10), mode="bilinear", align_corners=False)
    small_dream = visualize.deep_dream(model, small, model[1], steps=3, lr=0.05)
    detail = F.interpolate(small_dream - small, size=(20, 20), mode="bilinear", align_corners=False)
    # steps=3 on both octaves: compare against doing the large octave by hand from image + detail.
    both = visualize.deep_dream(model, image, model[1], steps=3, lr=0.05, octaves=2, octave_scale=2.0)
    torch.testing.assert_close(both, visualize.deep_dream(model, image + detail, model[1], steps=3, lr=0.05))


# --------------------------------------------------------------------------------------------
# top activations
# --------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(6 * 6 * 6, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.mark.parametrize("channel", [None, 2, -1])
def test_top_activations_ranks_and_projects(channel):
    model = SmallCNN().double().eval()
    images = torch.randn(20, 1, 12, 12, dtype=torch.float64)
    top = visualize.top_activations(model, 4, images, channel=channel, k=5, batch_size=6)
    with torch.no_grad():
        strength = model.features(images).amax(dim=(2, 3))  # (20, 6)
    chosen = int(strength.max(dim=0).values.argmax()) if channel is None else channel % 6
    order = strength[:, chosen].argsort(descending=True)[:5]
    torch.testing.assert_close(top.indices, order, rtol=0, atol=0)
    torch.testing.assert_close(top.values, strength[order, chosen], rtol=0, atol=0)
    expected = deconvnet_project(model, 4, images[order], channel=chosen, top_only=True)
    torch.testing.assert_close(top.projections, expected, rtol=0, atol=0)
    assert top.projections.shape == (5, 1, 12, 12)
    # The layer module works as well as its index; whole maps with top_only=False.
    by_module = visualize.top_activations(model, model.features[4], images, channel=chosen, k=5, top_only=False)
    torch.testing.assert_close(by_module.indices, order, rtol=0, atol=0)
    whole = deconvnet_project(model, 4, images[order], channel=chosen)
    torch.testing.assert_close(by_module.projections, whole, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# the model and the caller's tensors are left as they were
# --------------------------------------------------------------------------------------------


class StatefulCNN(nn.Module):
    """In train mode, with batch-norm buffers, dropout, a frozen parameter, gradients already
    accumulated, one submodule in eval mode and an in-place ReLU as its first layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout2d(0.5),
            nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        )
        self.norm = nn.BatchNorm2d(4)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 8 * 8, 3))

    def forward(self, x):
        return self.classifier(self.norm(self.features(x)))


def stateful_model() -> StatefulCNN:
    model = StatefulCNN().double().train()
    model.features[3].eval()  # mixed modes must come back as they were, not all train
    model.features[1].bias.requires_grad_(False)
    model(torch.randn(4, 1, SIZE, SIZE, dtype=torch.float64)).sum().backward()  # .grad and running stats
    return model


def snapshot(model: nn.Module):
    return (
        {name: value.clone() for name, value in model.state_dict().items()},
        {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        {name: p.requires_grad for name, p in model.named_parameters()},
        {name: m.training for name, m in model.named_modules()},
    )


def assert_same_snapshot(before, after) -> None:
    states, grads, flags, modes = before
    states_after, grads_after, flags_after, modes_after = after
    assert states.keys() == states_after.keys()
    for name in states:
        assert_unchanged(states[name], states_after[name])
    for name in grads:
        assert (grads[name] is None) == (grads_after[name] is None), name
        if grads[name] is not None:
            assert_unchanged(grads[name], grads_after[name])
    assert flags == flags_after
    assert modes == modes_after


CALLS = {
    "saliency_map": lambda m, x: visualize.saliency_map(m, x, 1),
    "occlusion_map": lambda m, x: visualize.occlusion_map(m, x, 2, patch=6, stride=5, layer=m.features[5], batch_size=3),
    "class_model_visualisation": lambda m, x: visualize.class_model_visualisation(
        m, 0, (1, SIZE, SIZE), steps=3, blur_every=2, generator=torch.Generator().manual_seed(0)),
    "deep_dream": lambda m, x: visualize.deep_dream(m, x, m.features[5], steps=2, octaves=2),
    "top_activations": lambda m, x: visualize.top_activations(m, 5, x, k=2),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_leaves_the_model_and_the_images_as_they_were(name):
    model = stateful_model()
    before = snapshot(model)
    images = torch.randn(3, 1, SIZE, SIZE, dtype=torch.float64).requires_grad_(True)  # negatives: in-place ReLU
    original = images.detach().clone()
    result = CALLS[name](model, images)
    assert_same_snapshot(before, snapshot(model))
    assert_unchanged(original, images.detach())
    assert images.requires_grad and images.grad is None
    for tensor in (result if isinstance(result, tuple) else (result,)):
        if tensor is not None:
            assert not tensor.requires_grad


#: Calls that fail half-way: after the model was switched to eval mode and hooks were registered.
FAILING_CALLS = {
    "saliency_map": lambda m, x: visualize.saliency_map(m, x, 7),
    "occlusion_map": lambda m, x: visualize.occlusion_map(m, x, 7, patch=6, stride=5, layer=m.features[5]),
    "class_model_visualisation": lambda m, x: visualize.class_model_visualisation(m, 7, (1, SIZE, SIZE)),
    "deep_dream": lambda m, x: visualize.deep_dream(m, x[..., :4, :4], m.classifier[2]),  # too small: linear fails
    "top_activations": lambda m, x: visualize.top_activations(m, 5, x, channel=10),
}


@pytest.mark.parametrize("name", list(FAILING_CALLS))
def test_leaves_the_model_as_it_was_when_it_fails(name):
    model = stateful_model()
    before = snapshot(model)
    images = torch.randn(3, 1, SIZE, SIZE, dtype=torch.float64)
    original = images.clone()
    with pytest.raises((ValueError, RuntimeError)):
        FAILING_CALLS[name](model, images)
    assert_same_snapshot(before, snapshot(model))
    assert_unchanged(original, images)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def _bad_inputs():
    model = planted_model()
    stack = SmallCNN().double().eval()
    x = planted_images(2)
    stranger = nn.Conv2d(1, 4, 3)
    s, o, c, d, t = (visualize.saliency_map, visualize.occlusion_map, visualize.class_model_visualisation,
                     visualize.deep_dream, visualize.top_activations)
    return [
        ("occlusion patch larger", lambda: o(model, x, 0, patch=17), r"occlusion_map: patch must be <= the image size \(16\), got 17"),
        ("occlusion patch zero", lambda: o(model, x, 0, patch=0), r"patch must be >= 1, got 0"),
        ("occlusion stride zero", lambda: o(model, x, 0, stride=0), r"occlusion_map: stride must be >= 1, got 0"),
        ("occlusion batch_size", lambda: o(model, x, 0, batch_size=0), r"batch_size must be >= 1"),
        ("occlusion unknown layer", lambda: o(model, x, 0, layer=stranger), r"occlusion_map: layer must be a submodule of model"),
        ("occlusion unknown layer name", lambda: o(model, x, 0, layer="nope"), r"layer must name a submodule of model, got 'nope'"),
        ("occlusion target", lambda: o(model, x, 3), r"occlusion_map: target must be in \[0, 3\) \(the model's classes\), got 3"),
        ("occlusion target shape", lambda: o(model, x, torch.tensor([0, 1, 2])), r"target must be an int or of shape \(N,\) = \(2,\)"),
        ("occlusion images rank", lambda: o(model, x[None], 0), r"occlusion_map: images must be \(N, C, H, W\) or \(C, H, W\), got shape \(1, 2, 1, 16, 16\)"),
        ("occlusion fill", lambda: o(model, x, 0, fill=torch.zeros(3)), r"fill must broadcast to \(N, C, 1, 1\)"),
        ("saliency target", lambda: s(model, x, torch.tensor([0, -1])), r"saliency_map: target must be in \[0, 3\) .*got -1"),
        ("saliency images rank", lambda: s(model, x[0, 0], 0), r"saliency_map: images must be \(N, C, H, W\) or \(C, H, W\), got shape \(16, 16\)"),
        ("saliency model output", lambda: s(model[:2], x, 0), r"model must return pre-softmax scores of shape \(N, classes\)"),
        ("class model target", lambda: c(model, 5, (1, SIZE, SIZE)), r"class_model_visualisation: target must be in \[0, 3\)"),
        ("class model shape", lambda: c(model, 0, (SIZE, SIZE)), r"shape must be \(C, H, W\)"),
        ("class model mean", lambda: c(model, 0, (1, SIZE, SIZE), mean=torch.zeros(1, 4, 4)), r"mean must be \(C, H, W\)"),
        ("class model blur sigma", lambda: c(model, 0, (1, SIZE, SIZE), blur_every=2, blur_sigma=0.0), r"blur_sigma must be"),
        ("class model steps", lambda: c(model, 0, (1, SIZE, SIZE), steps=-1), r"steps must be >= 0"),
        ("dream unknown layer", lambda: d(model, x, stranger), r"deep_dream: layer must be a submodule of model"),
        ("dream image rank", lambda: d(model, x[0, 0], model[0]), r"deep_dream: image must be \(N, C, H, W\) or \(C, H, W\)"),
        ("dream octaves", lambda: d(model, x, model[0], octaves=0), r"octaves must be >= 1"),
        ("dream octave_scale", lambda: d(model, x, model[0], octaves=2, octave_scale=1.0), r"octave_scale must be"),
        ("top unknown layer", lambda: t(stack, stranger, x), r"top_activations: layer must be one of the model's layers"),
        ("top layer index", lambda: t(stack, 5, x), r"layer must be in \[-5, 5\)"),
        ("top images rank", lambda: t(stack, 1, x[0]), r"top_activations: images must be \(N, C, H, W\)"),
        ("top k", lambda: t(stack, 1, x, k=3), r"k must be <= the number of images \(2\), got 3"),
        ("top channel", lambda: t(stack, 1, x, channel=4, k=1), r"channel must be in \[0, 4\)"),
    ], x


BAD, BAD_IMAGES = _bad_inputs()


@pytest.mark.parametrize("call,match", [(call, match) for _, call, match in BAD], ids=[name for name, _, _ in BAD])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    original = BAD_IMAGES.clone()
    with pytest.raises(ValueError, match=match):
        call()
    assert_unchanged(original, BAD_IMAGES)


def test_wrong_types_raise_type_error():
    model = planted_model()
    x = planted_images(1)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        visualize.saliency_map(lambda t: t, x, 0)
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        visualize.saliency_map(model, x.long(), 0)
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        visualize.occlusion_map(model, x, torch.tensor([0.0]))
    with pytest.raises(TypeError, match="layer must be an nn.Module"):
        visualize.deep_dream(model, x, 3)
    with pytest.raises(TypeError, match="patch must be an int"):
        visualize.occlusion_map(model, x, 0, patch=2.5)


# --------------------------------------------------------------------------------------------
# save_grid
# --------------------------------------------------------------------------------------------


def test_save_grid_draws_grey_images_and_coloured_heat_maps(tmp_path):
    import matplotlib.image

    grey = torch.rand(1, 8, 8)
    heat = torch.rand(8, 8)
    path = tmp_path / "grid.png"
    visualize.save_grid([grey, heat], path, nrow=2, cell_inches=1.0)
    picture = matplotlib.image.imread(path)[..., :3]  # (100, 200, 3) at 100 dpi
    assert picture.shape[:2] == (100, 200)
    left, right = picture[:, :100], picture[:, 100:]
    spread = lambda part: (part.max(axis=2) - part.min(axis=2)).max()  # noqa: E731
    assert spread(left) < 1e-6  # grey: R = G = B everywhere
    assert spread(right) > 0.3  # the colour map

    path = tmp_path / "batch.png"
    visualize.save_grid(torch.rand(5, 3, 6, 6), path, nrow=3, titles=list("abcde"), suptitle="five")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape[1] == round(3 * 1.4 * 100)


def test_save_grid_rejects_bad_input(tmp_path):
    path = tmp_path / "x.png"
    with pytest.raises(ValueError, match="at least one image"):
        visualize.save_grid([], path)
    with pytest.raises(ValueError, match=r"images\[1\] must be \(1, H, W\), \(3, H, W\) or a \(H, W\) heat map"):
        visualize.save_grid([torch.rand(8, 8), torch.rand(2, 8, 8)], path)
    with pytest.raises(ValueError, match="titles must hold one title per image"):
        visualize.save_grid(torch.rand(2, 8, 8), path, titles=["a"])
    with pytest.raises(ValueError, match="cmap must be one name or one per image"):
        visualize.save_grid(torch.rand(2, 8, 8), path, cmap=["gray"])
    assert not path.exists()


# --------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------


@needs_cuda
def test_every_function_runs_on_cuda_and_matches_the_cpu():
    model = planted_model()
    x = planted_images(3)
    gpu_model, gx = copy.deepcopy(model).cuda(), x.cuda()
    close = dict(rtol=1e-9, atol=1e-9)
    saliency = visualize.saliency_map(gpu_model, gx, 0)
    assert saliency.is_cuda
    torch.testing.assert_close(saliency.cpu(), visualize.saliency_map(model, x, 0), **close)
    maps = visualize.occlusion_map(gpu_model, gx, 0, patch=6, stride=2, layer=gpu_model[1], batch_size=16)
    expected = visualize.occlusion_map(model, x, 0, patch=6, stride=2, layer=model[1], batch_size=16)
    for got, want in zip(maps, expected):
        assert got.is_cuda
        torch.testing.assert_close(got.cpu(), want, **close)
    image = visualize.class_model_visualisation(gpu_model, 0, (1, SIZE, SIZE), steps=20, lr=0.05, blur_every=5,
                                                mean=torch.full((1, 1, 1), 0.5, dtype=torch.float64))
    assert image.is_cuda
    torch.testing.assert_close(image.cpu(), visualize.class_model_visualisation(
        model, 0, (1, SIZE, SIZE), steps=20, lr=0.05, blur_every=5, mean=torch.full((1, 1, 1), 0.5, dtype=torch.float64)),
        **close)
    dream = visualize.deep_dream(gpu_model, gx, gpu_model[0], steps=5, octaves=2)
    torch.testing.assert_close(dream.cpu(), visualize.deep_dream(model, x, model[0], steps=5, octaves=2), **close)
    top = visualize.top_activations(gpu_model[:3], 2, gx, k=2)
    want = visualize.top_activations(model[:3], 2, x, k=2)
    assert top.projections.is_cuda
    for got, expected_part in zip(top, want):
        torch.testing.assert_close(got.cpu(), expected_part, **close)
    torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------
# the example, in its short mode
# --------------------------------------------------------------------------------------------

EXAMPLE_PICTURES = ("deconvnet.png", "occlusion.png", "saliency.png", "class-models.png", "deep-dream.png")


def test_example_writes_one_picture_per_method(tmp_path):
    out = tmp_path / "pictures"
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "visualize.py"), "--short", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "test accuracy" in run.stdout
    for name in EXAMPLE_PICTURES:
        picture = out / name
        assert picture.exists(), name
        assert picture.stat().st_size > 5_000, name
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert sorted(p.name for p in out.iterdir()) == sorted(EXAMPLE_PICTURES)
