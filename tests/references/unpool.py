"""Independent float64 references of op family 1 (max pooling with indices, max unpooling).

Every reference works on float64 copies on the CPU and returns CPU tensors, so a test can
compare any device and dtype of ours against it. They use PyTorch's own functional ops
(the contract says "identical to torch.nn.functional") plus plain index arithmetic for the
compact (uint8, window-local) index format, which PyTorch does not have.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "as_list",
    "compact_to_flat",
    "flat_to_compact",
    "reference_deconvnet_projection",
    "reference_max_pool2d",
    "reference_max_pool2d_backward",
    "reference_max_unpool",
    "reference_max_unpool_backward",
    "unpool_output_range",
]

IntOrTuple = Union[int, Sequence[int]]


def as_list(value: Optional[IntOrTuple], n: int, default: Optional[IntOrTuple] = None) -> List[int]:
    """``value`` as ``n`` ints (an int is repeated); ``None`` means ``default``."""
    if value is None:
        value = default
    if isinstance(value, int):
        return [value] * n
    values = [int(v) for v in value]
    return values * n if len(values) == 1 else values


def _window_origin(out_positions: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    return out_positions * stride - padding


def compact_to_flat(
    compact: torch.Tensor,
    input_width: int,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
) -> torch.Tensor:
    """Window-local uint8 indices ``kh * kW + kw`` of shape (..., OH, OW) -> int64 flat indices.

    flat = (oh * sH - pH + kh * dH) * W + (ow * sW - pW + kw * dW), W = ``input_width`` (the
    width of the pooled plane, i.e. the unpooled output width).
    """
    k = as_list(kernel_size, 2)
    s = as_list(stride, 2, k)
    p = as_list(padding, 2)
    d = as_list(dilation, 2)
    local = compact.to(torch.int64).cpu()
    out_h, out_w = local.shape[-2], local.shape[-1]
    oh = torch.arange(out_h, dtype=torch.int64).view(out_h, 1)
    ow = torch.arange(out_w, dtype=torch.int64).view(1, out_w)
    kh = local // k[1]
    kw = local % k[1]
    h = _window_origin(oh, s[0], p[0]) + kh * d[0]
    w = _window_origin(ow, s[1], p[1]) + kw * d[1]
    return h * input_width + w


def flat_to_compact(
    flat: torch.Tensor,
    input_width: int,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
) -> torch.Tensor:
    """Inverse of ``compact_to_flat``: int64 flat indices (..., OH, OW) -> uint8 ``kh * kW + kw``.

    Asserts that every flat index lies on its window's (dilated) grid, so a wrong reference
    shape or a bad flat index is caught here rather than silently truncated.
    """
    k = as_list(kernel_size, 2)
    s = as_list(stride, 2, k)
    p = as_list(padding, 2)
    d = as_list(dilation, 2)
    flat = flat.to(torch.int64).cpu()
    out_h, out_w = flat.shape[-2], flat.shape[-1]
    oh = torch.arange(out_h, dtype=torch.int64).view(out_h, 1)
    ow = torch.arange(out_w, dtype=torch.int64).view(1, out_w)
    dh = flat // input_width - _window_origin(oh, s[0], p[0])
    dw = flat % input_width - _window_origin(ow, s[1], p[1])
    assert bool(((dh % d[0]) == 0).all()) and bool(((dw % d[1]) == 0).all()), "index off the window grid"
    kh, kw = dh // d[0], dw // d[1]
    assert bool(((kh >= 0) & (kh < k[0]) & (kw >= 0) & (kw < k[1])).all()), "index outside its window"
    compact = kh * k[1] + kw
    assert k[0] * k[1] <= 256
    return compact.to(torch.uint8)


def reference_max_pool2d(
    x: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    ceil_mode: bool = False,
    compact: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(values float64, indices) of ``max_pool2d_with_indices`` on the CPU in float64.

    Flat indices are exactly PyTorch's (first maximum in window order, NaN as PyTorch); compact
    indices are the same choices expressed window-locally.
    """
    x64 = x.detach().to(device="cpu", dtype=torch.float64).contiguous()
    k = as_list(kernel_size, 2)
    s = as_list(stride, 2, k)
    values, flat = F.max_pool2d(
        x64, k, s, as_list(padding, 2), as_list(dilation, 2), ceil_mode=ceil_mode, return_indices=True
    )
    if not compact:
        return values, flat
    return values, flat_to_compact(flat, x.shape[-1], k, s, padding, dilation)


def reference_max_pool2d_backward(
    x: torch.Tensor,
    grad_values: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    ceil_mode: bool = False,
) -> torch.Tensor:
    """Gradient of max pooling w.r.t. ``x`` (float64, CPU), through PyTorch's autograd.

    A dilated window can hold padding only (a 1x1 input, kernel 2, padding 1, dilation 2); its
    gradient is zero. PyTorch's CPU backward writes such a window's gradient at the forward's
    index, outside the plane (heap corruption in torch 2.14 once N*C > 1), so where one exists
    the gradient is the scatter-add of the other windows' gradients at PyTorch's indices."""
    x64 = x.detach().to(device="cpu", dtype=torch.float64).contiguous().requires_grad_(True)
    k = as_list(kernel_size, 2)
    args = (k, as_list(stride, 2, k), as_list(padding, 2), as_list(dilation, 2), ceil_mode)
    g64 = grad_values.detach().to(device="cpu", dtype=torch.float64)
    # windows that hold an input: the max over zeros is 0 there and -inf over padding only
    has_input = F.max_pool2d(torch.zeros_like(x64.detach()), *args) == 0
    if bool(has_input.all()):
        F.max_pool2d(x64, *args).backward(g64)
        return x64.grad
    _, flat = F.max_pool2d(x64.detach(), *args, return_indices=True)
    planes = x64.shape[:-2].numel()
    plane = x64.shape[-2] * x64.shape[-1]
    index = flat.where(has_input, 0).reshape(planes, -1)
    src = g64.where(has_input, 0.0).reshape(planes, -1)
    grad = torch.zeros(planes, plane, dtype=torch.float64).scatter_add_(1, index, src)
    return grad.reshape(x64.shape)


def unpool_output_range(input_size: int, kernel_size: int, stride: int, padding: int) -> Tuple[int, int]:
    """Inclusive (min, max) of a valid unpool ``output_size`` in one dimension (PyTorch's rule)."""
    default = (input_size - 1) * stride - 2 * padding + kernel_size
    return default - stride + 1, default + stride - 1


def reference_max_unpool(
    dims: int,
    x: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
    output_size: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """``max_unpool{dims}d`` in float64 on the CPU, batched or unbatched ``x``.

    int64/int32 indices are flat (PyTorch's format); uint8 indices are compact (2-D only) and are
    converted to flat first. When several elements name the same output position the last one in
    raster order wins (the contract, and PyTorch's CPU loop where one thread handles a plane).
    """
    k = as_list(kernel_size, dims)
    s = as_list(stride, dims, k)
    p = as_list(padding, dims)
    unbatched = x.dim() == dims + 1
    x64 = x.detach().to(device="cpu", dtype=torch.float64).contiguous()
    idx = indices.detach().cpu().contiguous()
    if unbatched:
        x64, idx = x64.unsqueeze(0), idx.unsqueeze(0)
    spatial_in = list(x64.shape[2:])
    if output_size is None:
        out = [(spatial_in[i] - 1) * s[i] - 2 * p[i] + k[i] for i in range(dims)]
    else:
        out = [int(v) for v in list(output_size)[-dims:]]
    if idx.dtype == torch.uint8:
        assert dims == 2, "compact indices are 2-D only"
        idx = compact_to_flat(idx, out[1], k, s, p)
    idx = idx.to(torch.int64)
    plane = 1
    for size in out:
        plane *= size
    assert bool(((idx >= 0) & (idx < plane)).all()), "reference_max_unpool: index out of range"
    # Last writer in raster order wins: for each output element, the largest source position
    # naming it (scatter_reduce's amax is order-independent, so this is deterministic). F.max_unpool
    # is not a usable oracle here: its CPU kernel splits a plane across threads on many-core
    # machines (seen on 16 cores, torch 2.11), so duplicates there give a racy winner.
    planes, length = x64.shape[0] * x64.shape[1], x64[0, 0].numel()
    flat_idx = idx.reshape(planes, length)
    values = x64.reshape(planes, length)
    position = torch.arange(length).expand(planes, length)
    last = torch.full((planes, plane), -1, dtype=torch.int64).scatter_reduce(
        1, flat_idx, position, reduce="amax", include_self=True
    )
    result = torch.where(last >= 0, values.gather(1, last.clamp(min=0)), torch.zeros((), dtype=torch.float64))
    result = result.reshape(x64.shape[0], x64.shape[1], *out)
    if int(last.ge(0).sum()) == planes * length:
        # No duplicates: then PyTorch's own unpooling must agree (a check on this reference).
        unpool = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}[dims]
        assert torch.equal(unpool(x64, idx, k, s, p, output_size=out), result)
    return result.squeeze(0) if unbatched else result


def reference_max_unpool_backward(
    grad_output: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: Optional[IntOrTuple] = None,
    padding: IntOrTuple = 0,
) -> torch.Tensor:
    """Gradient of unpooling w.r.t. its input: a gather of ``grad_output`` at the indices."""
    dims = grad_output.dim() - 2
    k = as_list(kernel_size, dims)
    s = as_list(stride, dims, k)
    p = as_list(padding, dims)
    g = grad_output.detach().to(device="cpu", dtype=torch.float64).contiguous()
    idx = indices.detach().cpu().contiguous()
    if idx.dtype == torch.uint8:
        idx = compact_to_flat(idx, g.shape[-1], k, s, p)
    idx = idx.to(torch.int64)
    plane = g.flatten(2)
    return plane.gather(2, idx.flatten(2)).view(idx.shape)


def reference_deconvnet_projection(
    conv: torch.nn.Conv2d, x: torch.Tensor, channel: torch.Tensor, top_only: bool = False
) -> torch.Tensor:
    """DeconvNet's projection through Conv -> ReLU -> 2x2 max pooling and back, from
    torch.nn.functional alone: keep channel ``channel[n]`` of sample n's pooled map (only its
    strongest activation when ``top_only``), unpool with the pooling switches, ReLU, and apply the
    transposed filters."""
    activations = F.relu(F.conv2d(x, conv.weight, conv.bias, padding=conv.padding))
    pooled, indices = F.max_pool2d(activations, 2, return_indices=True)
    selected = torch.zeros_like(pooled)
    for sample in range(x.shape[0]):
        feature_map = pooled[sample, channel[sample]]
        if top_only:
            kept = torch.zeros_like(feature_map)
            top = feature_map.argmax()
            kept.view(-1)[top] = feature_map.view(-1)[top]
            feature_map = kept
        selected[sample, channel[sample]] = feature_map
    unpooled = F.max_unpool2d(selected, indices, 2, output_size=activations.shape[-2:])
    return F.conv_transpose2d(F.relu(unpooled), conv.weight, padding=conv.padding)
