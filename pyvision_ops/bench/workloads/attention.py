"""Benchmark workloads of the ``attention`` family: fused scaled-dot-product attention.

CPU rows: float32, (B=4, H=8, L=S=1024, E=64), the issue's shape; references
``torch.nn.functional.scaled_dot_product_attention`` (PyTorch's CPU flash kernel; with dropout it
falls back to its math path) and the naive math form (``softmax(q k^T * scale) v`` with the full
L x S matrix). CUDA rows: bfloat16 (B=8, H=16, L=S=4096, E=128) against PyTorch's SDPA.

Checks: outputs and gradients within float32 tolerance of the reference. The dropout row cannot
match PyTorch's random mask; its check compares ours with dropout against ours without it: the
kept fraction of weights, seen through a value matrix of ones (every output entry is then the
row's sum of kept weights / (1 - p), whose mean is 1), must average 1 within 1%.

Notes: the check of the main rows times ours and ``torch.mm`` on a square product (2048^3 on the
CPU, 8192^3 in bfloat16 on CUDA) five times each, alternating, and writes the GFLOP/s of the
fastest call of each (4 B H L S E flops forward, half of the pairs for causal) and their ratio, and the extra resident memory of one call (the kernel's high-water mark
reset through ``/proc/self/clear_refs``; 0 where the kernel offers no such counter).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from pyvision_ops.bench.workloads.core import (
    MIB,
    MODE_AUTOGRAD_GRAD,
    MODE_BACKWARD,
    MODE_FORWARD,
    CheckFailed,
    Inputs,
    LiveNotes as _LiveNotes,
    Workload,
    assert_close,
    library,
    median_seconds as _median_seconds,
    register,
    sum_backward,
)

__all__: list = []

FAMILY = "attention"
CPU_SHAPE = (4, 8, 1024, 64)
CUDA_SHAPE = (8, 16, 4096, 128)

SPEED_GOALS = {
    "fwd": "goal >= 1.0x SDPA",
    "bwd": "goal >= 1.0x SDPA",
    "causal": "goal >= 1.3x SDPA",
    "mask": "goal >= 1.2x SDPA",
    "dropout": "goal >= 2x SDPA (its math path)",
    "naive": "goal >= 3x the naive math form",
    "cuda": "goal >= 350 TFLOP/s and >= 1.0x SDPA (H200)",
    "cuda mask": "goal >= 1.5x SDPA with the mask (H200)",
}


def _register(live: _LiveNotes, **fields: Any) -> None:
    fields.setdefault("notes", live.static)
    live.workload = register(Workload(family=FAMILY, **fields))


_MM_OPERANDS: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}


def _rates(ours: Callable[[], Any], flops: float, device: torch.device, rounds: int = 5) -> Tuple[float, float]:
    """(ours, torch.mm) GFLOP/s, each from its fastest of ``rounds`` calls, the two alternating
    so that the machine's drift reaches both alike. torch.mm: a square product (2048^3 float32
    on the CPU, 8192^3 bfloat16 on CUDA), bound by the multiply, not by memory."""
    key = str(device)
    if key not in _MM_OPERANDS:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        n = 2048 if device.type == "cpu" else 8192
        _MM_OPERANDS[key] = (torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype))
    a, b = _MM_OPERANDS[key]
    a @ b
    ours_best = mm_best = math.inf
    for _ in range(rounds):
        ours_best = min(ours_best, _median_seconds(ours, device, 1))
        mm_best = min(mm_best, _median_seconds(lambda: a @ b, device, 1))
    return flops / ours_best / 1e9, 2.0 * a.shape[0] ** 3 / mm_best / 1e9


def _rss_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _extra_memory_mib(fn: Callable[[], Any]) -> Optional[float]:
    """Peak resident memory of one call beyond what was resident before it (Linux only)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as refs:
            refs.write("5")
    except OSError:
        return None
    before = _rss_kib("VmRSS")
    result = fn()
    peak = _rss_kib("VmHWM")
    del result
    if before is None or peak is None:
        return None
    return max(peak - before, 0) / 1024.0


def _inputs(device: torch.device, shape: Tuple[int, int, int, int], dtype: torch.dtype, grad: bool,
            mask: bool = False) -> Inputs:
    b, h, length, e = shape
    generator = torch.Generator().manual_seed(7)
    make = lambda: torch.randn((b, h, length, e), generator=generator).to(device=device, dtype=dtype)  # noqa: E731
    inputs: Inputs = {"q": make().requires_grad_(grad), "k": make().requires_grad_(grad),
                      "v": make().requires_grad_(grad), "device": device}
    if mask:
        # Key padding: batch item n keeps its first length - 64 n keys.
        keep = torch.arange(length).unsqueeze(0) < (length - 64 * torch.arange(b)).unsqueeze(1)
        inputs["mask"] = keep.view(b, 1, 1, length).to(device)
    return inputs


def _flops(shape: Tuple[int, int, int, int], causal: bool, backward: bool) -> float:
    b, h, length, e = shape
    forward = 4.0 * b * h * length * length * e
    total = forward * (3.5 if backward else 1.0)  # the backward: 5 products of the forward's 2 + recompute
    return total / 2 if causal else total


def _ours(causal: bool = False, mask: bool = False, dropout: float = 0.0):
    def run(inputs: Inputs) -> torch.Tensor:
        return library().scaled_dot_product_attention(
            inputs["q"], inputs["k"], inputs["v"], attn_mask=inputs.get("mask") if mask else None,
            dropout_p=dropout, is_causal=causal)

    return run


def _sdpa(causal: bool = False, mask: bool = False, dropout: float = 0.0):
    def run(inputs: Inputs) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            inputs["q"], inputs["k"], inputs["v"], attn_mask=inputs.get("mask") if mask else None,
            dropout_p=dropout, is_causal=causal)

    return run


def _naive(inputs: Inputs) -> torch.Tensor:
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v


def _grad_of(forward):
    def run(inputs: Inputs):
        out = forward(inputs)
        grads = torch.autograd.grad(out, (inputs["q"], inputs["k"], inputs["v"]), inputs["grad"])
        return (out, *grads)

    return run


def _sum_backward_of(forward):
    def run(inputs: Inputs):
        for name in ("k", "v"):
            inputs[name].grad = None
        out, grad_q = sum_backward(inputs["q"], lambda: forward(inputs))
        return out, grad_q, inputs["k"].grad, inputs["v"].grad

    return run


def _close_check(live: Optional[_LiveNotes], ours_fn, shape, causal: bool, backward: bool, tolerance: float):
    def check(ours: Any, reference: Any, inputs: Inputs) -> float:
        ours_list = ours if isinstance(ours, tuple) else (ours,)
        reference_list = reference if isinstance(reference, tuple) else (reference,)
        error = 0.0
        for label, a, b in zip(("out", "dq", "dk", "dv"), ours_list, reference_list):
            scale = float(b.detach().abs().max()) or 1.0
            error = max(error, assert_close(label, a.detach().float(), b.detach().float(),
                                            atol=tolerance * scale, rtol=tolerance))
        if live is not None:
            device = inputs["device"]
            rate, mm_rate = _rates(lambda: ours_fn(inputs), _flops(shape, causal, backward), device)
            text = (f"ours {rate:.0f} GFLOP/s = {100 * rate / mm_rate:.0f}% of torch.mm's {mm_rate:.0f} "
                    "(best of 5 alternating calls each)")
            if device.type == "cpu":
                extra = _extra_memory_mib(lambda: ours_fn(inputs))
                if extra is not None:
                    text += f", extra memory {extra:.0f} MiB (inputs {3 * inputs['q'].numel() * 4 / MIB:.0f} MiB)"
            live.set("rate", text)
        return error

    return check


def _dropout_check(ours: Any, reference: Any, inputs: Inputs) -> float:
    ones = torch.ones_like(inputs["v"])
    kept = library().scaled_dot_product_attention(inputs["q"], inputs["k"], ones, dropout_p=0.1)
    mean = float(kept.detach().double().mean())
    if not math.isfinite(mean) or abs(mean - 1.0) > 0.01:
        raise CheckFailed(f"dropout: the kept weights average {mean:.4f} / row, expected 1 +- 0.01", abs(mean - 1.0))
    if tuple(ours.shape) != tuple(reference.shape) or not bool(torch.isfinite(ours).all()):
        raise CheckFailed("dropout: output shape or finiteness differs from the reference", float("inf"))
    return abs(mean - 1.0)


def _register_cpu() -> None:
    shape = CPU_SHAPE
    b, h, length, e = shape
    description = f"q, k, v (B={b}, H={h}, L=S={length}, E={e}) fp32"
    cpu = ("cpu",)
    for variant, causal, mask, goal in (("", False, False, "fwd"), ("causal", True, False, "causal"),
                                       ("key padding mask", False, True, "mask")):
        live = _LiveNotes(SPEED_GOALS[goal])
        _register(
            live, op="scaled_dot_product_attention", variant=variant or "dense", description=description,
            mode=MODE_FORWARD, setup=lambda device, m=mask: _inputs(device, shape, torch.float32, False, m),
            ours=_ours(causal, mask), reference=_sdpa(causal, mask),
            check=_close_check(live, _ours(causal, mask), shape, causal, False, 2e-5),
            ours_label="scaled_dot_product_attention(q, k, v" + (", is_causal" if causal else "")
            + (", mask" if mask else "") + ")",
            reference_label="F.scaled_dot_product_attention", devices=cpu)
    live = _LiveNotes(SPEED_GOALS["naive"])
    _register(
        live, op="scaled_dot_product_attention", variant="vs naive math", description=description,
        mode=MODE_FORWARD, setup=lambda device: _inputs(device, shape, torch.float32, False),
        ours=_ours(), reference=_naive, check=_close_check(None, _ours(), shape, False, False, 2e-5),
        ours_label="scaled_dot_product_attention(q, k, v)", reference_label="softmax(q k^T / sqrt(E)) v", devices=cpu)
    _register(
        _LiveNotes(SPEED_GOALS["dropout"]), op="scaled_dot_product_attention", variant="dropout 0.1",
        description=description, mode=MODE_FORWARD,
        setup=lambda device: _inputs(device, shape, torch.float32, False),
        ours=_ours(dropout=0.1), reference=_sdpa(dropout=0.1), check=_dropout_check,
        ours_label="scaled_dot_product_attention(q, k, v, dropout_p=0.1)",
        reference_label="F.scaled_dot_product_attention(dropout_p=0.1)", devices=cpu)

    def grad_setup(device: torch.device) -> Inputs:
        inputs = _inputs(device, shape, torch.float32, True)
        inputs["grad"] = torch.randn(inputs["q"].shape, generator=torch.Generator().manual_seed(8)).to(device)
        return inputs

    live = _LiveNotes(SPEED_GOALS["bwd"])
    _register(
        live, op="scaled_dot_product_attention", variant="dense", description=description,
        mode=MODE_AUTOGRAD_GRAD, setup=grad_setup, ours=_grad_of(_ours()), reference=_grad_of(_sdpa()),
        check=_close_check(live, _grad_of(_ours()), shape, False, True, 1e-4),
        ours_label="scaled_dot_product_attention + autograd.grad", reference_label="F.sdpa + autograd.grad",
        devices=cpu)
    _register(
        _LiveNotes(SPEED_GOALS["bwd"]), op="scaled_dot_product_attention", variant="dense", description=description,
        mode=MODE_BACKWARD, setup=grad_setup, ours=_sum_backward_of(_ours()), reference=_sum_backward_of(_sdpa()),
        check=_close_check(None, None, shape, False, True, 1e-4),
        ours_label="scaled_dot_product_attention(...).sum().backward()", reference_label="F.sdpa(...).sum().backward()",
        devices=cpu)


def _register_cuda() -> None:
    shape = CUDA_SHAPE
    b, h, length, e = shape
    description = f"q, k, v (B={b}, H={h}, L=S={length}, E={e}) bf16"
    for variant, causal, mask, goal in (("dense cuda", False, False, "cuda"), ("causal cuda", True, False, "cuda"),
                                       ("key padding mask cuda", False, True, "cuda mask")):
        live = _LiveNotes(SPEED_GOALS[goal])
        _register(
            live, op="scaled_dot_product_attention", variant=variant, description=description, mode=MODE_FORWARD,
            setup=lambda device, m=mask: _inputs(device, shape, torch.bfloat16, False, m),
            ours=_ours(causal, mask), reference=_sdpa(causal, mask),
            check=_close_check(live, _ours(causal, mask), shape, causal, False, 2e-2),
            ours_label="scaled_dot_product_attention", reference_label="F.scaled_dot_product_attention",
            devices=("cuda",))

    def grad_setup(device: torch.device) -> Inputs:
        inputs = _inputs(device, shape, torch.bfloat16, True)
        inputs["grad"] = torch.randn(inputs["q"].shape, generator=torch.Generator().manual_seed(8)).to(
            device=device, dtype=torch.bfloat16)
        return inputs

    for variant, causal in (("dense cuda", False), ("causal cuda", True)):
        live = _LiveNotes("report (H200)")
        _register(
            live, op="scaled_dot_product_attention", variant=variant, description=description,
            mode=MODE_AUTOGRAD_GRAD, setup=grad_setup, ours=_grad_of(_ours(causal)), reference=_grad_of(_sdpa(causal)),
            check=_close_check(live, _grad_of(_ours(causal)), shape, causal, True, 5e-2),
            ours_label="scaled_dot_product_attention + autograd.grad", reference_label="F.sdpa + autograd.grad",
            devices=("cuda",))


_register_cpu()
_register_cuda()
