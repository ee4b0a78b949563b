"""Reliability (issue 14): torch.compile (inductor) and torch.export of every public op, the nn
modules that add logic, and every model.

Each row of ``CASES`` is a function of tensors around one public op (or module, or model) with its
non-tensor arguments fixed, and ``inputs(variant)``: variant 0 and variant 1 differ only in the
sizes listed in ``dynamic`` (the dims a user would vary: batch, length, spatial size). The checks:

* ``test_inductor_static``: ``torch.compile(fullgraph=True, backend="inductor", dynamic=False)``
  gives the eager outputs and gradients (gradients of every floating input that requires grad,
  with fixed upstream weights).
* ``test_inductor_dynamic``: the same with ``dynamic=True``, called on variant 0 then variant 1;
  the second call runs under ``torch._dynamo.config.error_on_recompile`` (a recompilation is a
  failure) and the compiled-graph counter must not grow.
* ``test_export``: ``torch.export.export`` (strict and non-strict) of a module around the case;
  ``ep.module()(*inputs)`` equals eager.
* ``test_export_dynamic``: non-strict export with a ``torch.export.Dim`` per dynamic dim, run on
  the other size.
* ``test_inductor_fusion``: one compiled function per family where inductor-generated kernels
  produce the ops' inputs and consume their outputs (layouts chosen by inductor, fake-kernel
  strides checked by inductor's own ``assert_size_stride``).
* ``test_every_registered_op_has_a_contract``: every ``torch.ops.pyvision_ops`` operator has an
  ``OpContract`` subclass in tests/ (contract.py runs opcheck and aot_eager compile per op).

Inductor compiles C++ on the CPU: the default run keeps to graphs made of the library's own
kernels (cheap: no C++ is generated) plus a few fused and model graphs; ``PVO_RELIABILITY_FULL=1``
runs everything. Compiled artefacts go to ``TORCHINDUCTOR_CACHE_DIR`` (default: a folder under the
repository's .venv). With ``PVO_COMPILE_STATS=FILE`` the counts are written there as a flat JSON
dict of numbers.
"""

from __future__ import annotations

import ast
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest
import torch
import torch.fx.experimental._config  # noqa: F401  (use_duck_shape, patched by the dynamic checks)
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent


def _library_fingerprint() -> str:
    """A hash of the package's Python sources and its built extension: inductor's and AOTAutograd's
    caches key graphs on the traced code, not on the custom ops' schemas or fake kernels, so a
    cache filled by an older build could replay that build's guards."""
    import hashlib

    digest = hashlib.sha256()
    package = REPO / "pyvision_ops"
    for path in sorted(package.rglob("*.py")) + sorted(package.glob("_C*.so")):
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(REPO / ".venv" / "inductor-cache" / _library_fingerprint()))

import pyvision_ops  # noqa: E402
from pyvision_ops import models  # noqa: E402
from pyvision_ops import nn as pnn  # noqa: E402

FULL = os.environ.get("PVO_RELIABILITY_FULL", "") not in ("", "0")
#: The file runs from `make compile-check` (CI, after `make test`) and `make reliability` (both set
#: PVO_RELIABILITY_COMPILE), not in `make test`: its bounded form takes 2-3 minutes of inductor
#: compiles here (2 cores). `make test` keeps tests/test_fake_layouts.py (fake-kernel strides).
RUN = FULL or os.environ.get("PVO_RELIABILITY_COMPILE", "") not in ("", "0")
pytestmark = pytest.mark.skipif(not RUN, reason="compile/export reliability checks: make reliability "
                                "(PVO_RELIABILITY_COMPILE=1)")
STATS_FILE = os.environ.get("PVO_COMPILE_STATS", "")

STATS: Dict[str, int] = {
    "cases": 0, "passed": 0, "failed": 0, "xfailed": 0, "graph breaks": 0, "recompiles": 0,
    "inductor static": 0, "inductor dynamic": 0, "export": 0, "export dynamic": 0, "fusion": 0,
}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _flatten(value) -> List[torch.Tensor]:
    """Every tensor of a (nested) result, in a fixed order (dicts by sorted key)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for key in sorted(value) for t in _flatten(value[key])]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _flatten(item)]
    return []


def _weights(t: torch.Tensor) -> torch.Tensor:
    """A fixed, non-uniform upstream gradient of t's shape (no RNG)."""
    w = torch.cos(torch.arange(t.numel(), dtype=torch.float64) * 0.7 + 0.3).to(t.dtype)
    return w.reshape(t.shape)


def _fresh(args: Sequence[Any]) -> Tuple[Any, ...]:
    """Independent copies of the inputs (a leaf that requires grad stays one)."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            copy = a.detach().clone()
            out.append(copy.requires_grad_(a.requires_grad))
        else:
            out.append(a)
    return tuple(out)


def _run(fn: Callable, args: Sequence[Any], grad: bool = True) -> List[torch.Tensor]:
    """Outputs of fn(*args) and, when grad, the gradients of the inputs that require grad."""
    outputs = _flatten(fn(*args))
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    differentiable = [o for o in outputs if o.requires_grad]
    results = [o.detach() for o in outputs]
    if grad and leaves and differentiable:
        grads = torch.autograd.grad(differentiable, leaves, [_weights(o) for o in differentiable], allow_unused=True)
        results += [g if g is not None else torch.zeros(0) for g in grads]
    return results


def _assert_close(expected: List[torch.Tensor], got: List[torch.Tensor], rtol: float, atol: float, what: str):
    assert len(got) == len(expected), f"{what}: {len(got)} results, expected {len(expected)}"
    for i, (e, g) in enumerate(zip(expected, got)):
        assert g.shape == e.shape and g.dtype == e.dtype, (
            f"{what}: result {i} is {g.dtype}{tuple(g.shape)}, expected {e.dtype}{tuple(e.shape)}"
        )
        if e.is_floating_point():
            tol = (rtol, atol) if e.dtype != torch.float64 else (1e-10, 1e-12)
            torch.testing.assert_close(g, e, rtol=tol[0], atol=tol[1], equal_nan=True, msg=lambda m: f"{what}: result {i}: {m}")
        else:
            assert torch.equal(g, e), f"{what}: result {i} ({e.dtype}): {int((g != e).sum())} elements differ"


class _Around(torch.nn.Module):
    """A module around a case's function (an nn.Module function is registered as a child, so its
    parameters and buffers are the exported program's)."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        if isinstance(fn, torch.nn.Module):
            self.inner = fn
        else:
            self._fn = fn

    def forward(self, *args):
        fn = self.inner if hasattr(self, "inner") else self._fn
        return tuple(_flatten(fn(*args)))


# --------------------------------------------------------------------------------------------
# the matrix
# --------------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    family: str
    fn: Callable
    inputs: Callable[[int], Tuple[Any, ...]]
    #: (argument index, dim, Dim name) of the sizes that differ between variant 0 and 1
    dynamic: Sequence[Tuple[int, int, str]] = ()
    #: export Dim ranges where the op or model bounds a size (a positional table's max_len);
    #: every other Dim is 2..4096
    dim_range: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    rtol: float = 1e-5
    atol: float = 1e-6
    #: torch._dynamo.config / torch._inductor.config settings the case compiles under
    dynamo_config: Dict[str, Any] = field(default_factory=dict)
    inductor_config: Dict[str, Any] = field(default_factory=dict)
    #: reseed before every call (ops that draw from the global generator)
    seed: Optional[int] = None
    #: generates C++ kernels under inductor (slow to compile): default run only when listed in CI_HEAVY
    heavy: bool = False
    grad: bool = True


def _leaf(*size, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*size, dtype=dtype).requires_grad_(True)


def _pool_case(name, compact=False, **kw):
    def inputs(v):
        return (_leaf(2 + v, 3, 9 + 2 * v, 9 + 2 * v),)
    # Export ranges from 5: below, a pooled size is 1, and export guards against that as it
    # does for F.max_pool2d (the contiguity of a size-1 dim).
    return Case(name, "unpool", lambda x: pyvision_ops.max_pool2d_with_indices(x, 3, 2, compact=compact, **kw),
                inputs, dynamic=[(0, 0, "batch"), (0, 2, "height"), (0, 3, "width")],
                dim_range={"height": (5, 4096), "width": (5, 4096)})


def _unpool2d_inputs(compact, dtype=torch.int64):
    def inputs(v):
        size = 8 + 4 * v
        with torch.no_grad():
            values, idx = pyvision_ops.max_pool2d_with_indices(torch.randn(2 + v, 3, size, size), 2, 2, compact=compact)
        if not compact:
            idx = idx.to(dtype)
        return values.detach().clone().requires_grad_(True), idx
    return inputs


def _unpool1d_inputs(v):
    values, idx = F.max_pool1d(torch.randn(2 + v, 3, 12 + 4 * v), 2, return_indices=True)
    return values.detach().clone().requires_grad_(True), idx


def _unpool3d_inputs(v):
    values, idx = F.max_pool3d(torch.randn(2 + v, 2, 4, 6 + 2 * v, 6), 2, return_indices=True)
    return values.detach().clone().requires_grad_(True), idx


def _labels(n: int, classes: int = 3) -> torch.Tensor:
    return torch.arange(n) % classes


def _emb_labels(v):
    n = 12 + 3 * v
    return _leaf(n, 6), _labels(n)


def _mine_inputs(v):
    n = 12 + 3 * v
    return torch.randn(n, 6), _labels(n)


def _sdpa_inputs(v, lq=5, lk=7, hq=2, mask=None, causal=False):
    b = 2 + v
    q = _leaf(b, hq, (6 if causal else lq) + v, 8)
    k = _leaf(b, 2, (6 if causal else lk) + 2 * v if not causal else 6 + v, 8)
    val = _leaf(b, 2, k.shape[2], 6 if not causal else 8)
    if mask == "bool":
        m = torch.rand(b, 1, q.shape[2], k.shape[2]) > 0.4
        m[..., 0] = True
        return q, k, val, m
    if mask == "float":
        return q, k, val, torch.randn(q.shape[2], k.shape[2])
    return q, k, val


def _cost_inputs(v, batched=False, dtype=torch.float32):
    shape = (3, 6 + v, 4 + v) if batched else (5 + v, 7 + v)
    return (torch.rand(*shape, dtype=dtype),)


SDPA = pyvision_ops.scaled_dot_product_attention
SDPA_B = [(0, 0, "b"), (1, 0, "b"), (2, 0, "b")]
SDPA_BLS = [*SDPA_B, (0, 2, "l"), (1, 2, "s"), (2, 2, "s")]

OP_CASES: List[Case] = [
    # ---- unpool
    _pool_case("max_pool2d_with_indices"),
    _pool_case("max_pool2d_with_indices-compact", compact=True),
    _pool_case("max_pool2d_with_indices-pad-dilation-ceil", padding=1, dilation=2, ceil_mode=True),
    Case("max_unpool1d", "unpool", lambda x, i: pyvision_ops.max_unpool1d(x, i, 2), _unpool1d_inputs,
         dynamic=[(0, 0, "batch"), (1, 0, "batch"), (0, 2, "length"), (1, 2, "length")]),
    Case("max_unpool2d", "unpool", lambda x, i: pyvision_ops.max_unpool2d(x, i, 2, 2),
         _unpool2d_inputs(False), dynamic=[(0, 0, "batch"), (1, 0, "batch"), (0, 2, "h"), (1, 2, "h"),
                                           (0, 3, "w"), (1, 3, "w")]),
    Case("max_unpool2d-compact", "unpool", lambda x, i: pyvision_ops.max_unpool2d(x, i, 2, 2),
         _unpool2d_inputs(True), dynamic=[(0, 0, "batch"), (1, 0, "batch"), (0, 2, "h"), (1, 2, "h"),
                                          (0, 3, "w"), (1, 3, "w")]),
    Case("max_unpool2d-int32", "unpool", lambda x, i: pyvision_ops.max_unpool2d(x, i, 2, 2),
         _unpool2d_inputs(False, torch.int32), dynamic=[(0, 0, "batch"), (1, 0, "batch"), (0, 2, "h"), (1, 2, "h"),
                                                        (0, 3, "w"), (1, 3, "w")]),
    Case("max_unpool3d", "unpool", lambda x, i: pyvision_ops.max_unpool3d(x, i, 2), _unpool3d_inputs,
         dynamic=[(0, 0, "batch"), (1, 0, "batch"), (0, 3, "h"), (1, 3, "h")]),
    # ---- gram
    Case("gram_matrix", "gram", lambda f: pyvision_ops.gram_matrix(f), lambda v: (_leaf(3 + v, 5, 6, 6 + 2 * v),),
         dynamic=[(0, 0, "batch"), (0, 3, "width")]),
    Case("gram_matrix-3d-unnormalized", "gram", lambda f: pyvision_ops.gram_matrix(f, normalize=False),
         lambda v: (_leaf(3, 4, 20 + 5 * v),), dynamic=[(0, 2, "length")], rtol=1e-5, atol=1e-5),
    Case("style_loss-sum", "gram", lambda f, t: pyvision_ops.style_loss(f, t, reduction="sum"),
         lambda v: (_leaf(2 + v, 4, 6, 6), torch.randn(2 + v, 4, 4)), dynamic=[(0, 0, "batch"), (1, 0, "batch")]),
    Case("style_loss-mean-shared-target", "gram", lambda f, t: pyvision_ops.style_loss(f, t, reduction="mean"),
         lambda v: (_leaf(2, 4, 6 + 2 * v, 6), torch.randn(4, 4)), dynamic=[(0, 2, "height")]),
    Case("perceptual_loss", "gram", pyvision_ops.perceptual_loss,
         lambda v: (_leaf(2 + v, 3, 5, 5), torch.randn(2 + v, 3, 5, 5)), dynamic=[(0, 0, "batch"), (1, 0, "batch")],
         heavy=True),
    # ---- assign (not differentiable)
    Case("linear_sum_assignment-2d", "assign", lambda c: pyvision_ops.linear_sum_assignment(c), _cost_inputs,
         dynamic=[(0, 0, "rows"), (0, 1, "cols")]),
    Case("linear_sum_assignment-batched-maximize", "assign",
         lambda c: pyvision_ops.linear_sum_assignment(c, maximize=True),
         lambda v: _cost_inputs(v, batched=True, dtype=torch.float64), dynamic=[(0, 1, "rows"), (0, 2, "cols")]),
    Case("linear_sum_assignment-list", "assign", lambda a, b: pyvision_ops.linear_sum_assignment([a, b]),
         lambda v: (torch.rand(3 + v, 5), torch.rand(4, 2 + v)), dynamic=[(0, 0, "rows_a"), (1, 1, "cols_b")]),
    # ---- distance
    *[Case(f"pairwise_distance-{m}", "distance", (lambda m: lambda x, y: pyvision_ops.pairwise_distance(x, y, m))(m),
           lambda v: (_leaf(7 + v, 5), _leaf(9 + 2 * v, 5)), dynamic=[(0, 0, "n"), (1, 0, "m")])
      for m in ("sqeuclidean", "euclidean", "cosine", "dot")],
    Case("pairwise_distance-self-batched", "distance", lambda x: pyvision_ops.pairwise_distance(x, metric="euclidean"),
         lambda v: (_leaf(2, 7 + v, 5),), dynamic=[(0, 1, "n")]),
    Case("pairwise_topk", "distance", lambda x, y: pyvision_ops.pairwise_topk(x, y, 3),
         lambda v: (_leaf(6 + v, 5), _leaf(11 + v, 5)), dynamic=[(0, 0, "n"), (1, 0, "m")]),
    Case("pairwise_topk-dot-largest", "distance", lambda x, y: pyvision_ops.pairwise_topk(x, y, 3, "dot", True),
         lambda v: (_leaf(6 + v, 5), _leaf(11 + v, 5)), dynamic=[(0, 0, "n"), (1, 0, "m")]),
    *[Case(f"mine_triplets-{s}", "distance",
           (lambda s: lambda e, l: pyvision_ops.mine_triplets(e, l, strategy=s))(s), _mine_inputs,
           dynamic=[(0, 0, "n"), (1, 0, "n")], grad=False)
      for s in ("batch_hard", "semi_hard", "semi_hard_window", "hard")],
    Case("mine_triplets-hard-capped", "distance",
         lambda e, l: pyvision_ops.mine_triplets(e, l, strategy="hard", max_triplets=7), _mine_inputs,
         dynamic=[(0, 0, "n"), (1, 0, "n")], grad=False),
    Case("batch_hard_triplet_loss", "distance", lambda e, l: pyvision_ops.batch_hard_triplet_loss(e, l),
         _emb_labels, dynamic=[(0, 0, "n"), (1, 0, "n")]),
    Case("batch_hard_triplet_loss-soft-euclidean", "distance",
         lambda e, l: pyvision_ops.batch_hard_triplet_loss(e, l, metric="euclidean", soft=True),
         _emb_labels, dynamic=[(0, 0, "n"), (1, 0, "n")]),
    Case("triplet_margin_loss", "distance", pyvision_ops.triplet_margin_loss,
         lambda v: (_leaf(6 + v, 5), _leaf(6 + v, 5), _leaf(6 + v, 5)),
         dynamic=[(0, 0, "b"), (1, 0, "b"), (2, 0, "b")]),
    Case("triplet_margin_loss-swap-cosine-none", "distance",
         lambda a, p, n: pyvision_ops.triplet_margin_loss(a, p, n, metric="cosine", swap=True, reduction="none"),
         lambda v: (_leaf(6 + v, 5), _leaf(6 + v, 5), _leaf(6 + v, 5)),
         dynamic=[(0, 0, "b"), (1, 0, "b"), (2, 0, "b")]),
    Case("contrastive_loss", "distance", pyvision_ops.contrastive_loss,
         lambda v: (_leaf(8 + 2 * v, 5), _leaf(8 + 2 * v, 5), torch.tensor([True, False] * (4 + v))),
         dynamic=[(0, 0, "b"), (1, 0, "b"), (2, 0, "b")]),
    Case("contrastive_loss-none-float", "distance",
         lambda a, b, s: pyvision_ops.contrastive_loss(a, b, s, margin=0.5, reduction="none"),
         lambda v: (_leaf(8 + 2 * v, 5), _leaf(8 + 2 * v, 5), torch.tensor([1.0, 0.0] * (4 + v))),
         dynamic=[(0, 0, "b"), (1, 0, "b"), (2, 0, "b")]),
    Case("class_distance_matrix", "distance", pyvision_ops.class_distance_matrix, _emb_labels,
         dynamic=[(0, 0, "n"), (1, 0, "n")], heavy=True, rtol=1e-5, atol=1e-5),
    # ---- attention
    Case("scaled_dot_product_attention", "attention", SDPA, lambda v: _sdpa_inputs(v), dynamic=SDPA_BLS),
    Case("scaled_dot_product_attention-causal", "attention", lambda q, k, v: SDPA(q, k, v, is_causal=True),
         lambda v: _sdpa_inputs(v, causal=True), dynamic=[*SDPA_B, (0, 2, "l"), (1, 2, "l"), (2, 2, "l")]),
    Case("scaled_dot_product_attention-bool-mask", "attention", lambda q, k, v, m: SDPA(q, k, v, attn_mask=m),
         lambda v: _sdpa_inputs(v, mask="bool"),
         dynamic=[*SDPA_BLS, (3, 0, "b"), (3, 2, "l"), (3, 3, "s")]),
    Case("scaled_dot_product_attention-float-mask-scale", "attention",
         lambda q, k, v, m: SDPA(q, k, v, attn_mask=m, scale=0.3), lambda v: _sdpa_inputs(v, mask="float"),
         dynamic=[*SDPA_BLS, (3, 0, "l"), (3, 1, "s")]),
    Case("scaled_dot_product_attention-gqa", "attention", lambda q, k, v: SDPA(q, k, v, enable_gqa=True),
         lambda v: _sdpa_inputs(v, hq=4), dynamic=SDPA_BLS),
    Case("scaled_dot_product_attention-3d", "attention", SDPA,
         lambda v: tuple(t[:, 0].detach().clone().requires_grad_(True) for t in _sdpa_inputs(v)),
         dynamic=[*SDPA_B, (0, 1, "l"), (1, 1, "s"), (2, 1, "s")]),
    Case("scaled_dot_product_attention-dropout", "attention", lambda q, k, v: SDPA(q, k, v, dropout_p=0.3),
         lambda v: _sdpa_inputs(v), dynamic=SDPA_BLS, seed=1234,
         inductor_config={"fallback_random": True}),
]


# ---- nn modules that add logic over the functional ops

def _module_cases() -> List[Case]:
    mha = pnn.MultiheadAttention(16, 2).eval()
    enc = pnn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0).eval()
    dec = pnn.TransformerDecoderLayer(16, 2, dim_feedforward=32, dropout=0.0).eval()
    pos = pnn.PositionalEncoding(16, max_len=64)
    pool, unpool = pnn.MaxPool2d(2, 2, return_indices=True, compact=True), pnn.MaxUnpool2d(2, 2)
    style = pnn.StyleLoss(torch.randn(1, 4, 6, 6))

    def pool_unpool(x):
        values, indices = pool(x)
        return unpool(values, indices, output_size=x.shape[-2:])

    def mha_padding(q, kv, padding):
        return mha(q, kv, kv, key_padding_mask=padding, need_weights=False)[0]

    def seq_inputs(v):
        b, length = 2 + v, 6 + 2 * v
        padding = torch.zeros(b, length, dtype=torch.bool)
        padding[1, -2:] = True
        return _leaf(b, 5 + v, 16), _leaf(b, length, 16), padding

    return [
        Case("nn.MaxPool2d-MaxUnpool2d", "unpool", pool_unpool, lambda v: (_leaf(2, 3, 8 + 4 * v, 8),),
             dynamic=[(0, 2, "h")], dim_range={"h": (4, 4096)}),
        Case("nn.StyleLoss", "gram", style, lambda v: (_leaf(2 + v, 4, 6, 6),), dynamic=[(0, 0, "b")]),
        Case("nn.ContrastiveLoss", "distance", pnn.ContrastiveLoss(margin=0.7),
             lambda v: (_leaf(8 + 2 * v, 5), _leaf(8 + 2 * v, 5), torch.tensor([True, False] * (4 + v))),
             dynamic=[(0, 0, "b"), (1, 0, "b"), (2, 0, "b")]),
        Case("nn.TripletLoss-batch_hard", "distance", pnn.TripletLoss(), _emb_labels,
             dynamic=[(0, 0, "n"), (1, 0, "n")]),
        Case("nn.TripletLoss-semi_hard", "distance", pnn.TripletLoss(strategy="semi_hard"), _emb_labels,
             dynamic=[(0, 0, "n"), (1, 0, "n")]),
        Case("nn.MultiheadAttention-key-padding", "attention", mha_padding, seq_inputs,
             dynamic=[(0, 0, "b"), (1, 0, "b"), (2, 0, "b"), (0, 1, "t"), (1, 1, "s"), (2, 1, "s")], heavy=True),
        Case("nn.TransformerEncoderLayer-causal", "attention",
             lambda x: enc(x, is_causal=True, src_mask=torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu_(1)),
             lambda v: (_leaf(2, 6 + 2 * v, 16),), dynamic=[(0, 1, "l")], heavy=True, rtol=1e-4, atol=1e-5),
        Case("nn.TransformerDecoderLayer", "attention", dec,
             lambda v: (_leaf(2, 4 + v, 16), _leaf(2, 6 + 2 * v, 16)), dynamic=[(0, 1, "t"), (1, 1, "s")],
             heavy=True, rtol=1e-4, atol=1e-5),
        Case("nn.PositionalEncoding", "attention", pos, lambda v: (_leaf(2, 6 + 2 * v, 16),), dynamic=[(0, 1, "l")],
             dim_range={"l": (2, 64)}, heavy=True),
    ]


# ---- models (small configurations, eval mode)

def _model_cases() -> List[Case]:
    torch.manual_seed(0)
    embedding = models.EmbeddingNet(in_channels=1, embedding_dim=8, width=4).eval()
    segnet = models.SegNet(in_channels=3, num_classes=3, stages=((4, 4), (8, 8))).eval()
    encoder = models.TransformerEncoder(num_classes=3, vocab_size=50, d_model=16, nhead=2, num_layers=1,
                                        dim_feedforward=32, max_len=32, dropout=0.0).eval()
    detr = models.DETR(num_classes=3, num_queries=4, hidden_dim=16, num_heads=2, num_encoder_layers=1,
                       num_decoder_layers=1, dim_feedforward=32, backbone_channels=(4, 8, 8)).eval()
    vgg = models.VGGFeatures("vgg16", layers=("relu1_1", "relu2_1")).eval()
    deconv_net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                     torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU()).eval()

    def tokens(v):
        t = torch.randint(1, 50, (2 + v, 6 + 2 * v))
        t[1, -2:] = 0  # padding
        return (t,)

    def images(channels, size, step):
        return lambda v: (torch.randn(2 + v, channels, size + step * v, size + step * v),)

    rgb = [(0, 0, "b"), (0, 2, "h"), (0, 3, "w")]
    # Export ranges where every pooling stage keeps a size above 1 (see _pool_case); DETR's
    # backbone needs 9 pixels or more.
    images_from = lambda low: {"h": (low, 4096), "w": (low, 4096)}  # noqa: E731
    return [
        Case("model-EmbeddingNet", "models", embedding, images(1, 12, 4), dynamic=rgb,
             dim_range=images_from(8), heavy=True, rtol=1e-4, atol=1e-5),
        Case("model-SegNet", "models", segnet, images(3, 16, 8), dynamic=rgb,
             dim_range=images_from(8), heavy=True, rtol=1e-4, atol=1e-5),
        Case("model-TransformerEncoder", "models", encoder, tokens, dynamic=[(0, 0, "b"), (0, 1, "l")],
             dim_range={"l": (2, 32)}, heavy=True, rtol=1e-4, atol=1e-5),
        Case("model-DETR", "models", detr, images(3, 32, 16), dynamic=rgb,
             dim_range=images_from(16), heavy=True, rtol=1e-4, atol=1e-5),
        Case("model-VGGFeatures", "models", vgg, images(3, 16, 8), dynamic=rgb,
             dim_range=images_from(8), heavy=True, rtol=1e-4, atol=1e-5),
        Case("model-deconvnet_project", "models",
             lambda x: models.deconvnet_project(deconv_net, 4, x, channel=2), images(3, 8, 4), dynamic=rgb,
             dim_range=images_from(8), heavy=True, rtol=1e-4, atol=1e-5, grad=False),
    ]


CASES: List[Case] = OP_CASES + _module_cases() + _model_cases()
BY_NAME = {c.name: c for c in CASES}

#: Heavy (C++-generating) cases the default run still compiles with inductor: one of each kind.
CI_HEAVY = {"perceptual_loss", "model-EmbeddingNet", "model-TransformerEncoder"}

#: (check, case) -> why it fails: recorded as a strict xfail (the fix's place is in the reason).
KNOWN_FAILURES: Dict[Tuple[str, str], str] = {}


def _params(check: str, cases: Sequence[Case], ci_filter: Callable[[Case], bool]):
    params = []
    for case in cases:
        marks = []
        if (check, case.name) in KNOWN_FAILURES:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[(check, case.name)]))
        if not FULL and not ci_filter(case):
            marks.append(pytest.mark.skip(reason="in the exhaustive run only (PVO_RELIABILITY_FULL=1)"))
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


def _static_in_ci(case: Case) -> bool:
    return not case.heavy or case.name in CI_HEAVY


def _dynamic_in_ci(case: Case) -> bool:
    return not case.heavy


# --------------------------------------------------------------------------------------------
# bookkeeping: counts for the report script
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _write_stats():
    yield
    if STATS_FILE:
        Path(STATS_FILE).write_text(json.dumps(STATS, indent=1, sort_keys=True) + "\n")


class _Tally:
    """Marks the case as passed (the test's last statement); anything else is a failure, or an
    xfail where the case is listed in KNOWN_FAILURES."""

    def __init__(self) -> None:
        self.ok = False

    def passed(self) -> None:
        self.ok = True


@pytest.fixture
def tally(request):
    """Counts the case as tried, then as passed / failed / xfailed, and its graph breaks."""
    from torch._dynamo.utils import counters

    counters.clear()
    torch._dynamo.reset()
    check = request.node.originalname.replace("test_", "").replace("_", " ")
    STATS["cases"] += 1
    STATS[check] = STATS.get(check, 0) + 1
    result = _Tally()
    yield result
    STATS["graph breaks"] += sum(counters["graph_break"].values())
    if result.ok:
        STATS["passed"] += 1
    elif request.node.get_closest_marker("xfail") is not None:
        STATS["xfailed"] += 1
    else:
        STATS["failed"] += 1
    torch._dynamo.reset()


class _config:
    """The case's dynamo and inductor settings for the duration of a block."""

    def __init__(self, case: Case, **dynamo: Any) -> None:
        import torch._inductor.config as inductor_config

        self._patches = [torch._dynamo.config.patch(**{**case.dynamo_config, **dynamo}),
                         inductor_config.patch(**case.inductor_config)]

    def __enter__(self):
        for p in self._patches:
            p.__enter__()

    def __exit__(self, *exc):
        for p in reversed(self._patches):
            p.__exit__(*exc)


def _call(case: Case, fn: Callable, args: Sequence[Any]) -> List[torch.Tensor]:
    if case.seed is not None:
        torch.manual_seed(case.seed)
    return _run(fn, args, grad=case.grad)


def _compare_compiled(case: Case, compiled: Callable, variant: int, what: str) -> None:
    args = case.inputs(variant)
    expected = _call(case, case.fn, _fresh(args))
    got = _call(case, compiled, _fresh(args))
    _assert_close(expected, got, case.rtol, case.atol, f"{case.name} {what}")


# --------------------------------------------------------------------------------------------
# torch.compile with inductor
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", _params("inductor_static", CASES, _static_in_ci))
def test_inductor_static(case: Case, tally) -> None:
    compiled = torch.compile(case.fn, backend="inductor", fullgraph=True, dynamic=False)
    with _config(case):
        _compare_compiled(case, compiled, 0, "inductor static")
    tally.passed()


@pytest.mark.parametrize("case", _params("inductor_dynamic", CASES, _dynamic_in_ci))
def test_inductor_dynamic(case: Case, tally) -> None:
    from torch._dynamo.utils import counters

    compiled = torch.compile(case.fn, backend="inductor", fullgraph=True, dynamic=True)
    # Without duck sizing: two dims of equal size in the first call must not become one symbol
    # (a guard of dynamo's, not of the ops; the check is about the ops not specialising sizes).
    no_duck = torch.fx.experimental._config.patch(use_duck_shape=False)
    with no_duck, _config(case):
        _compare_compiled(case, compiled, 0, "inductor dynamic, first size")
        graphs = counters["stats"]["unique_graphs"]
    try:
        with no_duck, _config(case, error_on_recompile=True):
            _compare_compiled(case, compiled, 1, "inductor dynamic, second size")
    except torch._dynamo.exc.RecompileError:
        STATS["recompiles"] += 1
        raise
    recompiled = counters["stats"]["unique_graphs"] - graphs
    STATS["recompiles"] += recompiled
    assert recompiled == 0, f"{case.name}: {recompiled} more graphs compiled for the second size"
    tally.passed()


# --------------------------------------------------------------------------------------------
# torch.export
# --------------------------------------------------------------------------------------------

def _export(case: Case, strict: bool, dynamic_shapes=None):
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in case.inputs(0))
    with _config(case):
        program = torch.export.export(_Around(case.fn), args, dynamic_shapes=dynamic_shapes, strict=strict)
    return program


def _check_exported(case: Case, program, variant: int, what: str) -> None:
    args = case.inputs(variant)
    # The exported program runs the forward only: compare outputs (gradients through the
    # exported module are checked too where the case has leaves).
    expected = _call(case, case.fn, _fresh(args))
    got = _call(case, program.module(), _fresh(args))
    _assert_close(expected, got, case.rtol, case.atol, f"{case.name} {what}")


EXPORT_PARAMS = [
    pytest.param(case, strict, id=f"{case.name}-{'strict' if strict else 'nonstrict'}",
                 marks=[pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[(f"export_{'strict' if strict else 'nonstrict'}", case.name)])]
                 if (f"export_{'strict' if strict else 'nonstrict'}", case.name) in KNOWN_FAILURES else [])
    for case in CASES for strict in (False, True)
]


@pytest.mark.parametrize("case, strict", EXPORT_PARAMS)
def test_export(case: Case, strict: bool, tally) -> None:
    program = _export(case, strict)
    _check_exported(case, program, 0, f"export (strict={strict})")
    tally.passed()


def _differing_dims(case: Case) -> List[Tuple[int, int]]:
    first, second = case.inputs(0), case.inputs(1)
    return [(arg, dim) for arg, (a, b) in enumerate(zip(first, second)) if isinstance(a, torch.Tensor)
            for dim in range(a.dim()) if a.shape[dim] != b.shape[dim]]


def _dims(case: Case):
    marked = {(arg, dim) for arg, dim, _ in case.dynamic}
    unmarked = [d for d in _differing_dims(case) if d not in marked]
    assert not unmarked, f"{case.name}: (argument, dim) {unmarked} differ between the variants but are not in dynamic"
    dims: Dict[str, Any] = {}
    count = len(case.inputs(0))
    spec: List[Optional[Dict[int, Any]]] = [None] * count
    for arg, dim, name in case.dynamic:
        if name not in dims:
            low, high = case.dim_range.get(name, (2, 4096))
            dims[name] = torch.export.Dim(name.replace(".", "_"), min=low, max=high)
        spec[arg] = {**(spec[arg] or {}), dim: dims[name]}
    # _Around.forward takes *args: one parameter, whose spec is the per-argument tuple
    return (tuple(spec),)


@pytest.mark.parametrize("case", _params("export_dynamic", [c for c in CASES if c.dynamic], lambda c: True))
def test_export_dynamic(case: Case, tally) -> None:
    program = _export(case, strict=False, dynamic_shapes=_dims(case))
    _check_exported(case, program, 0, "export dynamic, first size")
    _check_exported(case, program, 1, "export dynamic, second size")
    tally.passed()


# --------------------------------------------------------------------------------------------
# fused graphs: inductor kernels around the ops
# --------------------------------------------------------------------------------------------

def _fusion_unpool(x):
    x = (x * 1.5).contiguous(memory_format=torch.channels_last)
    values, idx = pyvision_ops.max_pool2d_with_indices(x, 2, 2)
    cvalues, cidx = pyvision_ops.max_pool2d_with_indices(x.tanh(), 2, 2, compact=True)
    up = pyvision_ops.max_unpool2d(values.relu() + 1.0, idx, 2, 2, output_size=x.shape[-2:])
    upc = pyvision_ops.max_unpool2d(cvalues * 2, cidx, 2, 2, output_size=x.shape[-2:])
    return up.sum(1) + upc.mean(1), idx.float().mean(), cidx.to(torch.int64) + 1


def _fusion_gram(f):
    g = pyvision_ops.gram_matrix(f.transpose(2, 3) * 2.0)
    loss = pyvision_ops.style_loss(f.sigmoid(), (g * 0.5).detach())
    return g.sum(-1), loss * 3.0 + 1.0


def _fusion_distance(x, y):
    d = pyvision_ops.pairwise_distance(x.t().contiguous().t() * 2, y + 1.0, "euclidean")
    values, indices = pyvision_ops.pairwise_topk(x.exp(), y, 2)
    loss = pyvision_ops.triplet_margin_loss(x[:4] * 0.5, y[:4], y[4:8])
    return d.square().sum(0), values * 2 + 1, indices + 1, loss.exp()


def _fusion_attention(q, k, v):
    out = SDPA(q.transpose(1, 2) * 2, k.transpose(1, 2), v.transpose(1, 2).relu())
    return out.transpose(1, 2).softmax(-1) + 1.0


def _fusion_assign(c):
    rows, cols = pyvision_ops.linear_sum_assignment(c.exp() * 2)
    return c[rows, cols].sum(), cols * 2


FUSION_CASES = [
    Case("fusion-unpool", "unpool", _fusion_unpool, lambda v: (_leaf(2, 3, 8 + 4 * v, 8),), dynamic=[(0, 2, "h")],
         heavy=True),
    Case("fusion-gram", "gram", _fusion_gram, lambda v: (_leaf(2 + v, 4, 5, 6),), dynamic=[(0, 0, "b")], heavy=True),
    Case("fusion-distance", "distance", _fusion_distance, lambda v: (_leaf(8 + v, 5), _leaf(9 + v, 5)),
         dynamic=[(0, 0, "n"), (1, 0, "m")], heavy=True),
    Case("fusion-attention", "attention", _fusion_attention,
         lambda v: (_leaf(2, 5 + v, 2, 8), _leaf(2, 7 + v, 2, 8), _leaf(2, 7 + v, 2, 6)),
         dynamic=[(0, 1, "l"), (1, 1, "s"), (2, 1, "s")], heavy=True, rtol=1e-4, atol=1e-5),
    Case("fusion-assign", "assign", _fusion_assign, lambda v: (torch.rand(5 + v, 7),), dynamic=[(0, 0, "rows")],
         heavy=True, grad=False),
]
CI_FUSION = {"fusion-unpool", "fusion-distance"}


# Skipped by a mark, not from the body: a skip inside the test would be counted as a failure by
# the tally.
@pytest.mark.parametrize("dynamic", [False, pytest.param(True, marks=[] if FULL else [pytest.mark.skip(
    reason="dynamic fused graphs: in the exhaustive run only (PVO_RELIABILITY_FULL=1)")])], ids=["static", "dynamic"])
@pytest.mark.parametrize("case", _params("fusion", FUSION_CASES, lambda c: c.name in CI_FUSION))
def test_inductor_fusion(case: Case, dynamic: bool, tally) -> None:
    compiled = torch.compile(case.fn, backend="inductor", fullgraph=True, dynamic=dynamic)
    with torch.fx.experimental._config.patch(use_duck_shape=False), _config(case):
        _compare_compiled(case, compiled, 0, f"fused (dynamic={dynamic})")
        if dynamic:
            with torch._dynamo.config.patch(error_on_recompile=True):
                _compare_compiled(case, compiled, 1, "fused, second size")
    tally.passed()


# --------------------------------------------------------------------------------------------
# coverage: every public op has a compile case, every registered op a contract test
# --------------------------------------------------------------------------------------------

#: Public names that are not functions to compile.
NOT_COMPILED = {"TopK": "a NamedTuple (the return type of pairwise_topk)"}
#: Public ops that need a process group: compiled by their own test below instead of a CASES row.
COMPILED_BY_TEST = {"gather_embeddings": "test_gather_embeddings_compiled"}


@pytest.mark.parametrize("name", pyvision_ops.ops.__all__)
def test_every_public_op_has_a_compile_case(name: str) -> None:
    if name in NOT_COMPILED:
        pytest.skip(NOT_COMPILED[name])
    if name in COMPILED_BY_TEST:
        assert callable(globals().get(COMPILED_BY_TEST[name])), f"{COMPILED_BY_TEST[name]} is missing"
        return
    assert any(c.name == name or c.name.startswith(name + "-") for c in CASES), f"no compile case for {name}"


def _gathered_distances(embeddings, labels):
    all_embeddings, all_labels = pyvision_ops.gather_embeddings(embeddings, labels)
    return pyvision_ops.pairwise_distance(embeddings, all_embeddings), all_labels


def test_gather_embeddings_compiled(single_process_group) -> None:
    """gather_embeddings exchanges the ranks' batch sizes (``dist.all_gather`` of one int64 per
    rank, then ``.item()``: ranks may hold different numbers of rows) and is excluded from tracing
    (``torch.compiler.disable``: traced, dynamo's fake pass of the collectives hangs). Default
    ``torch.compile`` (inductor) breaks the graph there and compiles the rest; in a one-rank gloo
    group it gives the eager outputs and gradients, on two batch sizes."""
    compiled = torch.compile(_gathered_distances, backend="inductor")
    for n in (6, 9):
        e = _leaf(n, 5)
        labels = _labels(n)
        expected = _run(_gathered_distances, _fresh((e, labels)))
        got = _run(compiled, _fresh((e, labels)))
        _assert_close(expected, got, 1e-5, 1e-6, f"gather_embeddings n={n}")
    torch._dynamo.reset()


@pytest.mark.xfail(strict=True, raises=torch._dynamo.exc.Unsupported,
                   reason="fullgraph=True cannot hold: gather_embeddings runs eagerly (torch.compiler.disable in "
                          "pyvision_ops/ops/distance.py; its batch-size exchange reads each rank's row count with "
                          ".item(), and dynamo's trace of the collectives hangs)")
def test_gather_embeddings_fullgraph(single_process_group) -> None:
    compiled = torch.compile(_gathered_distances, backend="inductor", fullgraph=True)
    try:
        _run(compiled, (_leaf(6, 5), _labels(6)))
    finally:
        torch._dynamo.reset()


def _registered_ops() -> List[str]:
    from pyvision_ops._extension import has_ops

    if not has_ops():
        return []
    names = set()
    for schema in torch._C._jit_get_all_schemas():
        if schema.name.startswith("pyvision_ops::"):
            names.add(schema.name.split("::", 1)[1])
    return sorted(names)


def _contract_ops() -> Dict[str, str]:
    """op_name -> the OpContract subclass (collected by pytest: named Test*) that covers it."""
    found: Dict[str, str] = {}
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        bases: Dict[str, List[str]] = {}
        op_names: Dict[str, str] = {}
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                bases[node.name] = [b.id for b in node.bases if isinstance(b, ast.Name)]
                for stmt in node.body:
                    if (isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "op_name" for t in stmt.targets)
                            and isinstance(stmt.value, ast.Constant)):
                        op_names[node.name] = stmt.value.value

        def is_contract(name: str, seen=()) -> bool:
            if name == "OpContract":
                return True
            return any(is_contract(b, seen + (name,)) for b in bases.get(name, []) if b not in seen)

        for cls, op in op_names.items():
            if cls.startswith("Test") and is_contract(cls):
                found.setdefault(op, f"{path.name}::{cls}")
    return found


#: Registered ops without an OpContract subclass: op -> what covers it instead.
WITHOUT_CONTRACT: Dict[str, str] = {}


@pytest.mark.parametrize("op_name", _registered_ops() or ["<extension not loaded>"])
def test_every_registered_op_has_a_contract(op_name: str, request) -> None:
    if op_name in WITHOUT_CONTRACT:
        request.applymarker(pytest.mark.xfail(strict=True, reason=WITHOUT_CONTRACT[op_name]))
    assert op_name in _contract_ops(), f"torch.ops.pyvision_ops.{op_name} has no OpContract test in tests/"
