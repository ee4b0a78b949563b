"""Op family 2 in use: the style-transfer modules (GramMatrix, StyleLoss, PerceptualLoss) and the
models built on them (VGGFeatures, style_transfer). Gram references: tests/references/gram.py."""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict

import pytest
import torch
from torch import Tensor, nn

from pyvision_ops.models import VGGFeatures, imagenet_normalize, style_transfer
from pyvision_ops.models.style_transfer import total_variation
from pyvision_ops.models.vgg import vgg_layer_names
from pyvision_ops.nn import GramMatrix, PerceptualLoss, StyleLoss
from references.gram import reference_gram_matrix

# torchvision's features indices of the Conv2d layers (counted from its cfgs "D" and "E" by
# hand, independently of VGG_CONFIGS) and the (out, in) channels of each.
TORCHVISION_CONV_INDICES = {
    "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
    "vgg19": [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
}
TORCHVISION_CONV_WIDTHS = {
    "vgg16": [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512],
    "vgg19": [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512],
}
TINY_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1")
TINY_CONTENT_LAYERS = ("relu2_2",)


class _TwoLayerExtractor(nn.Module):
    """A small conv net returning two named layers, as VGGFeatures does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.conv2 = nn.Conv2d(5, 7, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        a = torch.relu(self.conv1(x))
        return OrderedDict(a=a, b=torch.tanh(self.conv2(a)))


# --------------------------------------------------------------------------------------------
# GramMatrix, StyleLoss, PerceptualLoss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (3, 4, 11)])
def test_gram_matrix_module_matches_formula(shape, normalize):
    features = torch.randn(*shape, dtype=torch.float64)
    gram = GramMatrix(normalize)(features)
    assert gram.shape == (shape[0], shape[1], shape[1])
    torch.testing.assert_close(gram, reference_gram_matrix(features, normalize))
    assert list(GramMatrix().state_dict()) == []


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("normalize", [True, False])
def test_style_loss_module_matches_formula(normalize, reduction):
    target_features = torch.randn(1, 6, 9, 5, dtype=torch.float64)
    features = torch.randn(3, 6, 7, 8, dtype=torch.float64)  # batch shares the target; other size
    criterion = StyleLoss(target_features, normalize=normalize, reduction=reduction)

    target_gram = reference_gram_matrix(target_features, normalize)
    torch.testing.assert_close(criterion.target_gram, target_gram)
    squared = (reference_gram_matrix(features, normalize) - target_gram).pow(2)
    expected = squared.sum() if reduction == "sum" else squared.mean()
    torch.testing.assert_close(criterion(features), expected)

    # The target Gram is a buffer computed once: it is saved, and later edits of the
    # features it came from do not change it.
    assert list(criterion.state_dict()) == ["target_gram"]
    target_features.add_(1.0)
    torch.testing.assert_close(criterion.target_gram, target_gram)


def test_style_loss_gradient_flows_to_input_only():
    target_features = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    criterion = StyleLoss(target_features)
    assert not criterion.target_gram.requires_grad

    features = torch.randn(2, 4, 5, 7, dtype=torch.float64, requires_grad=True)
    criterion(features).backward()
    reference = features.detach().clone().requires_grad_(True)
    (reference_gram_matrix(reference, True) - reference_gram_matrix(target_features.detach(), True)).pow(2).sum().backward()
    assert features.grad is not None and features.grad.abs().max() > 0
    torch.testing.assert_close(features.grad, reference.grad)
    assert target_features.grad is None


def test_style_loss_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        StyleLoss(torch.randn(1, 3, 4, 4), reduction="max")


def test_perceptual_loss_module_matches_formula():
    extractor = _TwoLayerExtractor().double()
    criterion = PerceptualLoss(extractor, ["a", "b"], weights=[0.5, 2.0])
    assert any(m is extractor for m in criterion.modules())  # follows .to() with the loss

    output = torch.rand(2, 3, 10, 12, dtype=torch.float64, requires_grad=True)
    target = torch.rand(2, 3, 10, 12, dtype=torch.float64, requires_grad=True)
    loss = criterion(output, target)

    reference_output = output.detach().clone().requires_grad_(True)
    out_features, target_features = extractor(reference_output), extractor(target.detach())
    expected = sum(
        weight * ((out_features[name] - target_features[name]).pow(2).sum() / out_features[name][0].numel() / 2)
        for name, weight in (("a", 0.5), ("b", 2.0))
    )
    torch.testing.assert_close(loss, expected)

    loss.backward()
    expected.backward()
    torch.testing.assert_close(output.grad, reference_output.grad)
    assert target.grad is None  # the target is a constant
    assert criterion(target, target).item() == 0.0


def test_perceptual_loss_bad_arguments():
    extractor = _TwoLayerExtractor()
    with pytest.raises(ValueError, match="one entry per layer"):
        PerceptualLoss(extractor, ["a", "b"], weights=[1.0])
    with pytest.raises(KeyError, match="'c'"):
        PerceptualLoss(extractor, ["c"])(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        PerceptualLoss(extractor, ["a"])(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))


# --------------------------------------------------------------------------------------------
# VGGFeatures
# --------------------------------------------------------------------------------------------


def test_vgg_features_returns_requested_layers_with_their_shapes():
    vgg = VGGFeatures("vgg16", layers=("relu4_3", "conv1_1", "pool2", "relu3_2"))
    images = torch.randn(2, 3, 32, 48)

    # Nothing after the deepest requested layer (relu4_3, index 22) runs.
    ran = []
    for index, module in enumerate(vgg.features):
        module.register_forward_hook(lambda module, args, output, index=index: ran.append(index))
    outputs = vgg(images)

    assert list(outputs) == ["conv1_1", "pool2", "relu3_2", "relu4_3"]  # network order
    assert {name: tuple(f.shape) for name, f in outputs.items()} == {
        "conv1_1": (2, 64, 32, 48),
        "pool2": (2, 128, 8, 12),
        "relu3_2": (2, 256, 8, 12),
        "relu4_3": (2, 512, 4, 6),
    }
    assert ran == list(range(23))
    # ReLUs are not in place: the stored conv output still has negative values.
    assert (outputs["conv1_1"] < 0).any() and (outputs["relu3_2"] >= 0).all()
    # Same module sequence as applying the layers by hand.
    expected = images
    for module in vgg.features[:10]:
        expected = module(expected)
    torch.testing.assert_close(outputs["pool2"], expected)


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_vgg_state_dict_keys_match_torchvision(arch):
    vgg = VGGFeatures(arch)
    indices, widths = TORCHVISION_CONV_INDICES[arch], TORCHVISION_CONV_WIDTHS[arch]
    expected = {}
    for index, c_in, c_out in zip(indices, [3] + widths[:-1], widths):
        expected[f"features.{index}.weight"] = (c_out, c_in, 3, 3)
        expected[f"features.{index}.bias"] = (c_out,)
    assert {key: tuple(value.shape) for key, value in vgg.state_dict().items()} == expected
    assert list(vgg.state_dict()) == list(expected)
    names = vgg_layer_names(arch)
    assert len(names) == len(vgg.features) == indices[-1] + 3  # ... conv5_x, relu5_x, pool5
    assert [names[i] for i in indices][-1] == ("conv5_3" if arch == "vgg16" else "conv5_4")
    assert all(isinstance(vgg.features[i], nn.Conv2d) for i in indices)


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_vgg_loads_a_torchvision_state_dict_file(arch, tmp_path):
    # A file shaped like torchvision's vgg state dict: features.* plus classifier.* entries.
    source = VGGFeatures(arch, seed=123)
    state = {key: torch.randn_like(value) for key, value in source.state_dict().items()}
    state["classifier.0.weight"] = torch.randn(16, 8)  # the real one is (4096, 25088)
    state["classifier.0.bias"] = torch.randn(16)
    state["classifier.6.weight"] = torch.randn(10, 16)
    path = tmp_path / f"{arch}.pth"
    torch.save(state, path)

    for weights in (path, str(path), state):
        vgg = VGGFeatures(arch, layers=("relu1_1",), weights=weights)
        assert vgg.pretrained
        loaded = vgg.state_dict()
        assert list(loaded) == [key for key in state if key.startswith("features.")]
        for key, value in loaded.items():
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)
        assert not any(p.requires_grad for p in vgg.parameters())

    # Our own features load strictly into a fresh model of the same arch.
    VGGFeatures(arch).features.load_state_dict(VGGFeatures(arch, seed=5).features.state_dict(), strict=True)


def test_vgg_refuses_weights_of_another_architecture(tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save(VGGFeatures("vgg16").state_dict(), path)
    with pytest.raises(RuntimeError, match="vgg19"):
        VGGFeatures("vgg19", weights=path)
    with pytest.raises(ValueError, match="features"):
        VGGFeatures("vgg16", weights={"classifier.0.weight": torch.randn(2, 2)})


def test_vgg_random_init_is_fixed_and_leaves_the_global_rng_alone():
    rng_state = torch.get_rng_state()
    first, second = VGGFeatures("vgg16", layers=("relu1_1",)), VGGFeatures("vgg16", layers=("relu1_1",))
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert not first.pretrained
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    other_seed = VGGFeatures("vgg16", layers=("relu1_1",), seed=1)
    assert not torch.equal(other_seed.features[0].weight, first.features[0].weight)
    assert first.features[0].weight.std() > 0 and first.features[0].bias.abs().max() == 0


def test_vgg_options():
    avg = VGGFeatures("vgg16", layers=("pool1",), pooling="avg", requires_grad=True)
    assert isinstance(avg.features[4], nn.AvgPool2d)
    assert all(p.requires_grad for p in avg.parameters())
    images = torch.randn(1, 3, 8, 8)
    expected = nn.functional.avg_pool2d(avg.features[:4](images), 2)
    torch.testing.assert_close(avg(images)["pool1"], expected)
    assert list(avg.state_dict()) == list(VGGFeatures("vgg16").state_dict())
    assert isinstance(VGGFeatures("vgg16").features[4], nn.MaxPool2d)

    with pytest.raises(ValueError, match="relu6_1"):
        VGGFeatures("vgg16", layers=("relu6_1",))
    with pytest.raises(ValueError, match="relu5_4"):
        VGGFeatures("vgg16", layers=("relu5_4",))  # vgg19 only
    with pytest.raises(ValueError, match="arch"):
        VGGFeatures("vgg11")
    with pytest.raises(ValueError, match="pooling"):
        VGGFeatures("vgg16", pooling="min")


def test_imagenet_normalize():
    images = torch.rand(2, 3, 4, 5)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(imagenet_normalize(images), (images - mean) / std)
    with pytest.raises(ValueError, match="RGB"):
        imagenet_normalize(torch.rand(1, 4, 4, 4))


# --------------------------------------------------------------------------------------------
# style_transfer
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vgg() -> VGGFeatures:
    return VGGFeatures("vgg16", layers=TINY_STYLE_LAYERS + TINY_CONTENT_LAYERS)


@pytest.mark.parametrize("optimizer,steps", [("adam", 5), ("lbfgs", 8)])
def test_style_transfer_lowers_the_loss(tiny_vgg, optimizer, steps):
    content, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 24, 40)
    image, history = style_transfer(
        content, style, tiny_vgg, steps=steps, tv_weight=1.0, optimizer=optimizer,
        content_layers=TINY_CONTENT_LAYERS, style_layers=TINY_STYLE_LAYERS, progress=False,
    )
    assert image.shape == content.shape and image.dtype == content.dtype
    assert 0 <= image.min() and image.max() <= 1
    assert not image.requires_grad
    assert set(history) == {"total", "content", "style", "tv"}
    assert 2 <= len(history["total"]) <= steps + 25  # LBFGS's last line search may overrun
    assert all(len(values) == len(history["total"]) for values in history.values())
    assert history["content"][0] == 0.0  # starts from the content image
    assert history["total"][-1] < history["total"][0]
    assert not torch.equal(image, content)
    assert all(p.grad is None for p in tiny_vgg.parameters())


def test_style_transfer_targets_are_the_style_grams(tiny_vgg):
    # Starting from the style image itself (same size), the style term is zero and the content
    # term is the perceptual distance of the two images.
    content, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    _image, history = style_transfer(
        content, style, tiny_vgg, steps=1, optimizer="adam", init=style,
        content_layers=TINY_CONTENT_LAYERS, style_layers=TINY_STYLE_LAYERS, progress=False,
    )
    assert history["style"][0] == pytest.approx(0.0, abs=1e-3)
    with torch.no_grad():
        a, b = tiny_vgg(imagenet_normalize(style))["relu2_2"], tiny_vgg(imagenet_normalize(content))["relu2_2"]
    assert history["content"][0] == pytest.approx(float((a - b).pow(2).mean()), rel=1e-4)


def test_style_transfer_default_extractor_warns():
    content, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with pytest.warns(UserWarning, match="random weights"):
        image, history = style_transfer(content, style, steps=2, optimizer="adam", progress=False)
    assert image.shape == content.shape and len(history["total"]) == 2


def test_style_transfer_bad_arguments(tiny_vgg):
    content, style = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="optimizer"):
        style_transfer(content, style, tiny_vgg, optimizer="sgd", progress=False)
    with pytest.raises(KeyError, match="relu4_2"):
        style_transfer(content, style, tiny_vgg, steps=1, progress=False)  # default content layer
    with pytest.raises(ValueError, match="4-D"):
        style_transfer(content[0], style, tiny_vgg, progress=False)
    with pytest.raises(ValueError, match="style must hold"):
        style_transfer(content, style.expand(2, -1, -1, -1), tiny_vgg, progress=False)


def test_total_variation():
    images = torch.rand(2, 3, 5, 6, dtype=torch.float64)
    vertical = sum((images[..., i + 1, :] - images[..., i, :]).pow(2).sum() for i in range(4)) / (2 * 3 * 4 * 6)
    horizontal = sum((images[..., j + 1] - images[..., j]).pow(2).sum() for j in range(5)) / (2 * 3 * 5 * 5)
    torch.testing.assert_close(total_variation(images), vertical + horizontal)
    assert total_variation(torch.ones(1, 3, 4, 4)).item() == 0.0
