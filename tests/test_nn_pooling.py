"""pyvision_ops.nn pooling modules against their torch.nn namesakes (the reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pyvision_ops.nn as pvnn

# (kernel_size, stride, padding, dilation, ceil_mode)
POOL_CONFIGS = [
    (2, None, 0, 1, False),
    (3, 2, 1, 1, False),
    (3, 1, 1, 1, False),  # overlapping windows: an input can be the maximum of several
    (3, 2, 1, 2, True),
    ((2, 3), (1, 2), (1, 0), 1, True),
]


def _random(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype)


@pytest.mark.parametrize("config", POOL_CONFIGS)
@pytest.mark.parametrize("return_indices", [True, False])
def test_max_pool2d_matches_torch(config, return_indices):
    kernel_size, stride, padding, dilation, ceil_mode = config
    args = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    ours = pvnn.MaxPool2d(**args, return_indices=return_indices)
    reference = torch.nn.MaxPool2d(**args, return_indices=return_indices)
    x = _random(2, 3, 11, 14, seed=1).requires_grad_()
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

    grad = _random(*values.shape, seed=2)
    values.backward(grad)
    expected_values.backward(grad)
    torch.testing.assert_close(x.grad, x_reference.grad)


def test_max_pool2d_unbatched_input():
    x = _random(3, 9, 10, seed=3)
    values, indices = pvnn.MaxPool2d(2, return_indices=True)(x)
    expected_values, expected_indices = torch.nn.MaxPool2d(2, return_indices=True)(x)
    assert values.shape == (3, 4, 5)
    torch.testing.assert_close(values, expected_values, rtol=0, atol=0)
    torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)


@pytest.mark.parametrize("config", [c for c in POOL_CONFIGS if c[3] == 1])
def test_compact_indices_unpool_like_flat_indices(config):
    kernel_size, stride, padding, _dilation, ceil_mode = config
    pool = pvnn.MaxPool2d(kernel_size, stride, padding, return_indices=True, ceil_mode=ceil_mode, compact=True)
    x = _random(2, 3, 11, 14, seed=4)
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
    x = _random(*shape, seed=5)
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

    grad = _random(*restored.shape, seed=6)
    restored.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(values.grad, values_reference.grad, rtol=0, atol=0)


def test_max_unpool2d_int32_indices_and_unbatched():
    x = _random(3, 11, 14, seed=7)
    values, indices = F.max_pool2d(x, 2, return_indices=True)
    restored = pvnn.MaxUnpool2d(2)(values, indices.to(torch.int32), output_size=x.shape[-2:])
    expected = torch.nn.MaxUnpool2d(2)(values, indices, output_size=x.shape[-2:])
    assert restored.shape == (3, 11, 14)
    torch.testing.assert_close(restored, expected, rtol=0, atol=0)


def test_pool_unpool_round_trip_float64():
    x = _random(2, 4, 9, 13, seed=8, dtype=torch.float64)
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
