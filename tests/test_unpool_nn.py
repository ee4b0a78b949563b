"""Op family 1 in use: the pyvision_ops.nn pooling modules and the models built on them.

The modules are checked against their torch.nn namesakes (the reference); SegNet (encoder pooling
with indices, decoder unpooling) for shapes, gradients, index formats and training; the DeconvNet
projection against one written with torch.nn.functional alone (tests/references/unpool.py) and
against autograd's adjoint.
"""

from __future__ import annotations

from typing import List, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyvision_ops.nn as pvnn
from conftest import DEVICES
from pyvision_ops.data import synthetic_rectangles
from pyvision_ops.models import SegNet, deconvnet_project
from references.unpool import reference_deconvnet_projection

# --------------------------------------------------------------------------------------------
# MaxPool2d, MaxUnpool1d/2d/3d: drop-in for torch.nn
# --------------------------------------------------------------------------------------------

# (kernel_size, stride, padding, dilation, ceil_mode)
POOL_CONFIGS = [
    (2, None, 0, 1, False),
    (3, 2, 1, 1, False),
    (3, 1, 1, 1, False),  # overlapping windows: an input can be the maximum of several
    (3, 2, 1, 2, True),
    ((2, 3), (1, 2), (1, 0), 1, True),
]


@pytest.mark.parametrize("config", POOL_CONFIGS)
@pytest.mark.parametrize("return_indices", [True, False])
def test_max_pool2d_matches_torch(config, return_indices):
    kernel_size, stride, padding, dilation, ceil_mode = config
    args = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    ours = pvnn.MaxPool2d(**args, return_indices=return_indices)
    reference = torch.nn.MaxPool2d(**args, return_indices=return_indices)
    x = torch.randn(2, 3, 11, 14).requires_grad_()
    x_reference = x.detach().clone().requires_grad_()

    output, expected = ours(x), reference(x_reference)
    if return_indices:
        (values, indices), (expected_values, expected_indices) = output, expected
        assert indices.dtype == torch.int64
        torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)
    else:
        assert isinstance(output, torch.Tensor)
        values, expected_values = output, expected
    torch.testing.assert_close(values, expected_values, rtol=0, atol=0)

    grad = torch.randn(*values.shape)
    values.backward(grad)
    expected_values.backward(grad)
    torch.testing.assert_close(x.grad, x_reference.grad)


def test_max_pool2d_unbatched_input():
    x = torch.randn(3, 9, 10)
    values, indices = pvnn.MaxPool2d(2, return_indices=True)(x)
    expected_values, expected_indices = torch.nn.MaxPool2d(2, return_indices=True)(x)
    assert values.shape == (3, 4, 5)
    torch.testing.assert_close(values, expected_values, rtol=0, atol=0)
    torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)


@pytest.mark.parametrize("config", [c for c in POOL_CONFIGS if c[3] == 1])
def test_compact_indices_unpool_like_flat_indices(config):
    kernel_size, stride, padding, _dilation, ceil_mode = config
    pool = pvnn.MaxPool2d(kernel_size, stride, padding, return_indices=True, ceil_mode=ceil_mode, compact=True)
    x = torch.randn(2, 3, 11, 14)
    values, compact_indices = pool(x)
    assert compact_indices.dtype == torch.uint8
    expected_values, flat_indices = F.max_pool2d(
        x, kernel_size, stride, padding, ceil_mode=ceil_mode, return_indices=True
    )
    torch.testing.assert_close(values, expected_values, rtol=0, atol=0)

    unpool = pvnn.MaxUnpool2d(kernel_size, stride, padding)
    reference = torch.nn.MaxUnpool2d(kernel_size, stride, padding)
    restored = unpool(values, compact_indices, output_size=x.shape)
    expected = reference(expected_values, flat_indices, output_size=x.shape)
    assert restored.shape == x.shape
    torch.testing.assert_close(restored, expected, rtol=0, atol=0)


def _pooled_with_flat_indices(dims: int, x: torch.Tensor, kernel_size, stride, padding):
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
    return pool(x, kernel_size, stride, padding, return_indices=True)


UNPOOL_CASES = [
    # dims, input shape, kernel_size, stride, padding
    (1, (2, 3, 17), 2, None, 0),
    (1, (2, 3, 16), 3, 2, 1),
    (2, (2, 3, 11, 14), 2, None, 0),
    (2, (2, 3, 11, 14), 3, 2, 1),
    (3, (1, 2, 7, 9, 6), 2, None, 0),
    (3, (1, 2, 7, 9, 6), 3, 2, 1),
]


@pytest.mark.parametrize("case", UNPOOL_CASES)
@pytest.mark.parametrize("output_size_form", ["none", "spatial", "full"])
def test_max_unpool_matches_torch(case, output_size_form):
    dims, shape, kernel_size, stride, padding = case
    ours = {1: pvnn.MaxUnpool1d, 2: pvnn.MaxUnpool2d, 3: pvnn.MaxUnpool3d}[dims](kernel_size, stride, padding)
    reference = {1: torch.nn.MaxUnpool1d, 2: torch.nn.MaxUnpool2d, 3: torch.nn.MaxUnpool3d}[dims](
        kernel_size, stride, padding
    )
    x = torch.randn(*shape)
    if output_size_form == "none":
        # The default output size, (pooled - 1) * stride - 2 * padding + kernel_size, can be
        # smaller than the input; crop the input to it so every index lands inside.
        pooled = _pooled_with_flat_indices(dims, x, kernel_size, stride, padding)[0].shape[2:]
        k, s, p = ours.kernel_size, ours.stride, ours.padding
        default_size = [(pooled[d] - 1) * s[d] - 2 * p[d] + k[d] for d in range(dims)]
        x = x[(..., *(slice(0, size) for size in default_size))]
    values, indices = _pooled_with_flat_indices(dims, x, kernel_size, stride, padding)
    # "none" gives the default size; the others restore the (possibly odd) pre-pooling size.
    output_size = {"none": None, "spatial": shape[2:], "full": shape}[output_size_form]

    values = values.detach().requires_grad_()
    values_reference = values.detach().clone().requires_grad_()
    restored = ours(values, indices, output_size=output_size)
    expected = reference(values_reference, indices, output_size=output_size)
    assert restored.shape == expected.shape == x.shape
    torch.testing.assert_close(restored, expected, rtol=0, atol=0)

    grad = torch.randn(*restored.shape)
    restored.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(values.grad, values_reference.grad, rtol=0, atol=0)


def test_max_unpool2d_int32_indices_and_unbatched():
    x = torch.randn(3, 11, 14)
    values, indices = F.max_pool2d(x, 2, return_indices=True)
    restored = pvnn.MaxUnpool2d(2)(values, indices.to(torch.int32), output_size=x.shape[-2:])
    expected = torch.nn.MaxUnpool2d(2)(values, indices, output_size=x.shape[-2:])
    assert restored.shape == (3, 11, 14)
    torch.testing.assert_close(restored, expected, rtol=0, atol=0)


def test_pool_unpool_round_trip_float64():
    x = torch.randn(2, 4, 9, 13, dtype=torch.float64)
    pool, unpool = pvnn.MaxPool2d(2, return_indices=True, compact=True), pvnn.MaxUnpool2d(2)
    restored = unpool(*pool(x), output_size=x.shape[-2:])
    assert restored.dtype == torch.float64
    # Every window's maximum is back in place, everything else is zero.
    kept = restored != 0
    torch.testing.assert_close(restored[kept], x[kept], rtol=0, atol=0)
    assert int(kept.sum()) == 2 * 4 * 4 * 6


@pytest.mark.parametrize(
    "ours, reference",
    [
        (pvnn.MaxPool2d(2), torch.nn.MaxPool2d(2)),
        (pvnn.MaxPool2d(3, 2, 1, 2, True, True), torch.nn.MaxPool2d(3, 2, 1, 2, True, True)),
        (pvnn.MaxPool2d((2, 3), stride=(1, 2)), torch.nn.MaxPool2d((2, 3), stride=(1, 2))),
        (pvnn.MaxUnpool1d(3, 2, 1), torch.nn.MaxUnpool1d(3, 2, 1)),
        (pvnn.MaxUnpool2d(2), torch.nn.MaxUnpool2d(2)),
        (pvnn.MaxUnpool2d((2, 3), (1, 2), (1, 0)), torch.nn.MaxUnpool2d((2, 3), (1, 2), (1, 0))),
        (pvnn.MaxUnpool3d(2, padding=1), torch.nn.MaxUnpool3d(2, padding=1)),
    ],
)
def test_drop_in_repr_attributes_and_state(ours, reference):
    assert repr(ours) == repr(reference)
    assert isinstance(ours, type(reference))
    for name in ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"):
        assert getattr(ours, name, None) == getattr(reference, name, None)
    assert ours.state_dict() == {} == reference.state_dict()
    assert list(ours.parameters()) == []


def test_compact_shows_in_repr():
    assert repr(pvnn.MaxPool2d(2, compact=True)) == (
        "MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False, compact=True)"
    )


# --------------------------------------------------------------------------------------------
# SegNet
# --------------------------------------------------------------------------------------------

TINY_STAGES = ((8, 8), (16, 16), (16,))


def _conv_channels(module: nn.Module) -> List[Tuple[int, int]]:
    return [(m.in_channels, m.out_channels) for m in module.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compact_indices", [True, False])
def test_segnet_odd_input_size_keeps_resolution(device, compact_indices):
    model = SegNet(in_channels=3, num_classes=5, stages=TINY_STAGES, compact_indices=compact_indices).to(device)
    images = torch.randn(2, 3, 45, 61, device=device)
    logits = model(images)
    assert logits.shape == (2, 5, 45, 61)
    assert logits.device == images.device
    assert torch.isfinite(logits).all()


def test_segnet_default_is_vgg16_bn_layout():
    model = SegNet()
    # VGG16's convolutional part ("configuration D"): widths of its 13 convolutions.
    vgg16_widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    encoder_channels = list(zip([3] + vgg16_widths[:-1], vgg16_widths))
    assert _conv_channels(model.encoder) == encoder_channels
    # The decoder mirrors the encoder; its last convolution is the classifier.
    mirrored = [(c_out, c_in) for c_in, c_out in reversed(encoder_channels)]
    assert _conv_channels(model.decoder) + _conv_channels(model.classifier) == mirrored[:-1] + [(64, 11)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13 + 12
    assert model.pool.compact and model.pool.return_indices

    with torch.no_grad():
        logits = model.eval()(torch.randn(1, 3, 32, 32))
    assert logits.shape == (1, 11, 32, 32)


def test_segnet_backward_reaches_every_parameter():
    model = SegNet(in_channels=3, num_classes=4, stages=TINY_STAGES)
    images = torch.randn(2, 3, 21, 26, requires_grad=True)
    labels = torch.randint(0, 4, (2, 21, 26))
    F.cross_entropy(model(images), labels).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.parametrize("compact_indices, index_dtype", [(True, torch.uint8), (False, torch.int64)])
def test_segnet_switches_format(compact_indices, index_dtype):
    model = SegNet(in_channels=3, num_classes=4, stages=TINY_STAGES, compact_indices=compact_indices)
    features, switches = model.encode(torch.randn(2, 3, 45, 61))
    assert features.shape == (2, 16, 5, 7)
    assert [tuple(s.input_size) for s in switches] == [(45, 61), (22, 30), (11, 15)]
    assert [tuple(s.indices.shape) for s in switches] == [(2, 8, 22, 30), (2, 16, 11, 15), (2, 16, 5, 7)]
    assert all(s.indices.dtype == index_dtype for s in switches)


@pytest.mark.parametrize("train_mode", [True, False])
def test_segnet_compact_and_flat_indices_give_identical_outputs(train_mode):
    compact = SegNet(in_channels=3, num_classes=4, stages=TINY_STAGES, compact_indices=True)
    flat = SegNet(in_channels=3, num_classes=4, stages=TINY_STAGES, compact_indices=False)
    flat.load_state_dict(compact.state_dict())
    compact.train(train_mode)
    flat.train(train_mode)
    images = torch.randn(2, 3, 45, 61)
    compact_logits, flat_logits = compact(images), flat(images)
    torch.testing.assert_close(compact_logits, flat_logits, rtol=0, atol=0)

    grad = torch.randn_like(compact_logits)
    compact_logits.backward(grad)
    flat_logits.backward(grad)
    for (name, a), (_, b) in zip(compact.named_parameters(), flat.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, msg=name)


def test_segnet_loads_state_dict_from_path_or_mapping(tmp_path):
    source = SegNet(in_channels=1, num_classes=2, stages=((4,), (8,))).eval()
    path = tmp_path / "segnet.pt"
    torch.save(source.state_dict(), path)
    images = torch.randn(1, 1, 16, 20)
    with torch.no_grad():
        expected = source(images)
        for weights in (path, str(path), source.state_dict()):
            loaded = SegNet(in_channels=1, num_classes=2, stages=((4,), (8,)), state_dict=weights).eval()
            torch.testing.assert_close(loaded(images), expected, rtol=0, atol=0)


def test_segnet_compiles_without_graph_breaks():
    # aot_eager traces the ops' fake kernels and autograd formulas without needing a compiler.
    model = SegNet(in_channels=3, num_classes=4, stages=((8,), (16,)))
    images = torch.randn(2, 3, 21, 26)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    logits = compiled(images)
    logits.sum().backward()
    torch.testing.assert_close(logits, model(images))


def test_segnet_rejects_empty_stages():
    with pytest.raises(ValueError, match="stages"):
        SegNet(stages=())
    with pytest.raises(ValueError, match="stages"):
        SegNet(stages=((8,), ()))


def test_segnet_learns_synthetic_rectangles():
    torch.manual_seed(0)
    model = SegNet(in_channels=1, num_classes=2, stages=((8, 8), (16, 16)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _step in range(40):
        images, labels = synthetic_rectangles(8, 32, 32, generator=generator)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    initial, final = losses[0], sum(losses[-5:]) / 5
    assert final < 0.7 * initial, f"loss went from {initial:.3f} to {final:.3f}"


def test_synthetic_rectangles_labels_mark_the_bright_box():
    images, labels = synthetic_rectangles(16, 24, 30, generator=torch.Generator().manual_seed(1))
    assert images.shape == (16, 1, 24, 30) and labels.shape == (16, 24, 30)
    assert labels.dtype == torch.int64 and set(labels.unique().tolist()) == {0, 1}
    inside, outside = images[:, 0][labels == 1].mean(), images[:, 0][labels == 0].mean()
    assert inside - outside > 1.0


# --------------------------------------------------------------------------------------------
# DeconvNet projection
# --------------------------------------------------------------------------------------------


class _VGGStyle(nn.Module):
    """A module with a ``features`` stack, as torchvision's VGG."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1),
            nn.ReLU(inplace=True),
            pvnn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(12, 16, 3, stride=2),
            nn.ReLU(inplace=True),
        )


@pytest.mark.parametrize("top_only", [False, True])
@pytest.mark.parametrize("channel", [None, 3])
def test_deconvnet_matches_manual_projection(channel, top_only):
    conv = nn.Conv2d(3, 6, 3, padding=1).double()
    net = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2))
    x = torch.randn(2, 3, 17, 20, dtype=torch.float64)
    projection = deconvnet_project(net, 2, x, channel=channel, top_only=top_only)

    with torch.no_grad():
        pooled = F.max_pool2d(F.relu(conv(x)), 2)
        if channel is None:
            chosen = pooled.flatten(2).amax(dim=2).argmax(dim=1)
        else:
            chosen = torch.full((2,), channel)
        expected = reference_deconvnet_projection(conv, x, chosen, top_only)
    assert projection.shape == x.shape
    assert projection.abs().sum() > 0
    torch.testing.assert_close(projection, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layer", [0, 2, 5, 7, -1])
def test_deconvnet_output_has_input_shape(device, layer):
    model = _VGGStyle().to(device)
    x = torch.randn(2, 3, 37, 45, device=device)
    projection = deconvnet_project(model, layer, x)
    assert projection.shape == x.shape and projection.device == x.device
    assert torch.isfinite(projection).all() and projection.abs().sum() > 0


def test_deconvnet_unbatched_input():
    model = _VGGStyle()
    x = torch.randn(3, 29, 33)
    projection = deconvnet_project(model, 5, x, channel=0)
    assert projection.shape == x.shape
    torch.testing.assert_close(projection, deconvnet_project(model, 5, x[None], channel=0)[0])


def test_deconvnet_leaves_model_and_input_untouched():
    model = _VGGStyle().train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    x = torch.randn(1, 3, 32, 32)
    x_before = x.clone()
    projection = deconvnet_project(model, 7, x, channel=1)
    assert not projection.requires_grad
    assert model.training
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0, msg=name)
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)


def test_deconvnet_layer_by_module_index_or_negative_index():
    model = _VGGStyle()
    x = torch.randn(1, 3, 32, 32)
    by_module = deconvnet_project(model, model.features[5], x, channel=2)
    by_index = deconvnet_project(model.features, 5, x, channel=2)
    by_negative = deconvnet_project(list(model.features)[:6], -1, x, channel=2)
    torch.testing.assert_close(by_module, by_index, rtol=0, atol=0)
    torch.testing.assert_close(by_module, by_negative, rtol=0, atol=0)


def test_deconvnet_compact_and_flat_switches_agree():
    model = _VGGStyle()
    x = torch.randn(2, 3, 37, 45)
    compact = deconvnet_project(model, 7, x, compact_indices=True)
    flat = deconvnet_project(model, 7, x, compact_indices=False)
    torch.testing.assert_close(compact, flat, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_deconvnet_of_linear_stack_is_the_adjoint():
    # Without ReLU, the projection is the transpose of the network's Jacobian applied to the
    # selected map, which autograd computes independently (non-overlapping pooling windows, so
    # unpooling and the pooling gradient agree).
    torch.manual_seed(0)
    layers = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(6, 6, 3, padding="same", dilation=2, groups=3),
        nn.Conv2d(6, 8, 4, padding="same"),  # even kernel: 'same' pads one more after than before
        pvnn.MaxPool2d(3, padding=1),
        nn.Conv2d(8, 5, (3, 2), stride=(2, 3), padding=(1, 0)),
    ).double()
    x = torch.randn(2, 3, 41, 53, dtype=torch.float64, requires_grad=True)
    channel = 4
    projection = deconvnet_project(layers, -1, x, channel=channel)

    output = layers(x)
    selected = torch.zeros_like(output)
    selected[:, channel] = output[:, channel].detach()
    (expected,) = torch.autograd.grad(output, x, grad_outputs=selected)
    assert projection.shape == x.shape
    torch.testing.assert_close(projection, expected)


def test_deconvnet_rejects_bad_arguments():
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(TypeError, match="BatchNorm2d"):
        deconvnet_project(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()), 2, x)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(IndexError, match="channel"):
        deconvnet_project(net, 1, x, channel=4)
    with pytest.raises(IndexError, match="layer"):
        deconvnet_project(net, 2, x)
    with pytest.raises(ValueError, match="top-level"):
        deconvnet_project(net, nn.ReLU(), x)
    with pytest.raises(ValueError, match="padding_mode"):
        deconvnet_project(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")), 0, x)
