"""Op family `attention` in use: MultiheadAttention, PositionalEncoding and the transformer layers
(pyvision_ops.nn.attention), the TransformerEncoder classifier (pyvision_ops.models.transformer)
and DETR on them.

The references are torch.nn's own modules with the same weights (``load_state_dict`` of the
torch module's ``state_dict``), run in float64 on torch's math path, and the sinusoidal encoding
written out with ``math.sin``/``math.cos``. torch.nn gives NaN for a query row with every key
masked where ours gives zeros: the masks compared against torch always leave key 0 open to every
query; the fully masked case is checked on its own.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import DEVICES, sync
import pyvision_ops.nn.attention as attention_module
from pyvision_ops.data import synthetic_detection_batch
from pyvision_ops.models import DETR
from pyvision_ops.models import TransformerEncoder as TransformerClassifier
from pyvision_ops.nn import (
    HungarianMatcher,
    MultiheadAttention,
    PositionalEncoding,
    SetCriterion,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

DTYPE = torch.float64
BATCH, HEADS, EMBED = 3, 4, 16
#: Query and key lengths of the cross-attention cases (L != S, neither a multiple of a tile).
LENGTH, SOURCE = 5, 7
MASK_KINDS = ("none", "key_padding_bool", "key_padding_float", "attn2d_bool", "attn2d_float", "attn3d_bool",
              "attn3d_float", "both_bool", "both_float", "causal", "causal_hint", "causal_key_padding")


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def random_masks(kind: str, batch: int, length: int, source: int, heads: int = HEADS, dtype=DTYPE):
    """(ours, torch's) keyword arguments of one mask kind. Key 0 is never masked, so that no
    query row is fully masked (torch would give NaN there)."""
    def bool_mask(*shape):
        mask = torch.rand(*shape) < 0.4
        mask[..., 0] = False
        return mask

    def float_mask(*shape):
        mask = torch.randn(*shape, dtype=dtype)
        mask = mask.masked_fill(bool_mask(*shape), -math.inf)
        mask[..., 0] = torch.randn(mask[..., 0].shape, dtype=dtype)
        return mask

    causal = torch.ones(length, source, dtype=torch.bool).triu(1)
    if kind == "none":
        ours = {}
    elif kind == "key_padding_bool":
        ours = {"key_padding_mask": bool_mask(batch, source)}
    elif kind == "key_padding_float":
        ours = {"key_padding_mask": float_mask(batch, source)}
    elif kind == "attn2d_bool":
        ours = {"attn_mask": bool_mask(length, source)}
    elif kind == "attn2d_float":
        ours = {"attn_mask": float_mask(length, source)}
    elif kind == "attn3d_bool":
        ours = {"attn_mask": bool_mask(batch * heads, length, source)}
    elif kind == "attn3d_float":
        ours = {"attn_mask": float_mask(batch * heads, length, source)}
    elif kind == "both_bool":
        ours = {"attn_mask": bool_mask(length, source), "key_padding_mask": bool_mask(batch, source)}
    elif kind == "both_float":
        ours = {"attn_mask": float_mask(batch * heads, length, source), "key_padding_mask": float_mask(batch, source)}
    elif kind == "causal":  # ours needs no mask; torch.nn asks for it along with the hint
        return {"is_causal": True}, {"is_causal": True, "attn_mask": causal}
    elif kind == "causal_hint":
        ours = {"is_causal": True, "attn_mask": causal}
    elif kind == "causal_key_padding":
        padding = bool_mask(batch, source)
        return ({"is_causal": True, "key_padding_mask": padding},
                {"is_causal": True, "attn_mask": causal, "key_padding_mask": padding})
    else:
        raise AssertionError(kind)
    return ours, dict(ours)


def sequence(batch: int, length: int, features: int, batch_first: bool, dtype=DTYPE, device="cpu") -> Tensor:
    shape = (batch, length, features) if batch_first else (length, batch, features)
    return torch.randn(*shape, dtype=dtype, device=device)


def copy_of(reference: nn.Module, cls, *args, **kwargs) -> nn.Module:
    """Our module with the reference's weights (a strict load: the parameter names match)."""
    ours = cls(*args, **kwargs)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours.to(next(reference.parameters()).device)


def randomize_biases(module: nn.Module) -> nn.Module:
    """torch.nn starts the attention biases at 0 and the norms at (1, 0): give them values, so
    that a swapped or missing bias shows."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.dim() == 1:
                centre = 1.0 if "norm" in name and "weight" in name else 0.0
                parameter.copy_(torch.randn_like(parameter) * 0.5 + centre)
    return module


def outputs_and_grads(module: nn.Module, inputs: List[Tensor], call) -> Tuple[List[Tensor], Dict[str, Tensor]]:
    """Outputs of ``call(module, *leaves)`` and the gradients of a random projection of them
    with respect to the inputs and the parameters (the same projection for both modules: it
    is drawn from a fixed seed)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    module.zero_grad(set_to_none=True)
    results = call(module, *leaves)
    results = [r for r in (results if isinstance(results, tuple) else (results,)) if r is not None]
    generator = torch.Generator().manual_seed(1234)
    loss = sum((r * torch.randn(r.shape, generator=generator, dtype=r.dtype).to(r.device)).sum() for r in results)
    loss.backward()
    grads = {f"input{i}": leaf.grad for i, leaf in enumerate(leaves) if leaf.grad is not None}
    grads.update({name: p.grad for name, p in module.named_parameters() if p.grad is not None})
    return [r.detach() for r in results], grads


def assert_same_results(ours, reference, rtol=None, atol=None) -> None:
    our_outputs, our_grads = ours
    expected_outputs, expected_grads = reference
    assert len(our_outputs) == len(expected_outputs)
    for got, expected in zip(our_outputs, expected_outputs):
        assert bool(torch.isfinite(expected).all())
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
    assert set(our_grads) == set(expected_grads)
    for name in expected_grads:
        torch.testing.assert_close(our_grads[name], expected_grads[name], rtol=rtol, atol=atol, msg=name)


# --------------------------------------------------------------------------------------------
# MultiheadAttention against torch.nn.MultiheadAttention
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_multihead_attention_matches_torch_for_every_mask(kind, batch_first, need_weights):
    reference = randomize_biases(nn.MultiheadAttention(EMBED, HEADS, batch_first=batch_first, dtype=DTYPE))
    ours = copy_of(reference, MultiheadAttention, EMBED, HEADS, batch_first=batch_first, dtype=DTYPE)
    # Cross-attention (key is value) of L = 5 queries over S = 7 keys; causal cases included:
    # top-left aligned in both.
    query = sequence(BATCH, LENGTH, EMBED, batch_first)
    memory = sequence(BATCH, SOURCE, EMBED, batch_first)
    our_masks, torch_masks = random_masks(kind, BATCH, LENGTH, SOURCE)

    def call(masks):
        return lambda module, q, kv: module(q, kv, kv, need_weights=need_weights, **masks)

    got = outputs_and_grads(ours, [query, memory], call(our_masks))
    expected = outputs_and_grads(reference, [query, memory], call(torch_masks))
    assert got[0][0].shape == query.shape
    if need_weights:
        assert got[0][1].shape == (BATCH, LENGTH, SOURCE)
    assert_same_results(got, expected)


@pytest.mark.parametrize("kind", ["none", "key_padding_bool", "causal", "causal_key_padding", "both_float"])
def test_self_attention_packed_projection_matches_torch(kind):
    reference = randomize_biases(nn.MultiheadAttention(EMBED, HEADS, batch_first=True, dtype=DTYPE))
    ours = copy_of(reference, MultiheadAttention, EMBED, HEADS, dtype=DTYPE)
    x = sequence(BATCH, 6, EMBED, batch_first=True)
    our_masks, torch_masks = random_masks(kind, BATCH, 6, 6)
    got = outputs_and_grads(ours, [x], lambda m, x: m(x, x, x, need_weights=False, **our_masks))
    expected = outputs_and_grads(reference, [x], lambda m, x: m(x, x, x, need_weights=False, **torch_masks))
    assert_same_results(got, expected)


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("kind", ["none", "key_padding_bool", "attn3d_float"])
def test_kdim_vdim_separate_projections_match_torch(kind, need_weights):
    reference = randomize_biases(nn.MultiheadAttention(EMBED, HEADS, kdim=6, vdim=10, batch_first=True, dtype=DTYPE))
    ours = copy_of(reference, MultiheadAttention, EMBED, HEADS, kdim=6, vdim=10, dtype=DTYPE)
    assert ours.in_proj_weight is None and ours.k_proj_weight.shape == (EMBED, 6)
    assert set(ours.state_dict()) == set(reference.state_dict())
    query, key, value = (sequence(BATCH, LENGTH, EMBED, True), sequence(BATCH, SOURCE, 6, True),
                         sequence(BATCH, SOURCE, 10, True))
    our_masks, torch_masks = random_masks(kind, BATCH, LENGTH, SOURCE)
    got = outputs_and_grads(ours, [query, key, value], lambda m, q, k, v: m(q, k, v, need_weights=need_weights,
                                                                           **our_masks))
    expected = outputs_and_grads(reference, [query, key, value], lambda m, q, k, v: m(
        q, k, v, need_weights=need_weights, **torch_masks))
    assert_same_results(got, expected)


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("options", [{"bias": False}, {"add_bias_kv": True}, {"add_zero_attn": True},
                                     {"add_bias_kv": True, "add_zero_attn": True, "bias": False}],
                         ids=["no_bias", "bias_kv", "zero_attn", "all"])
def test_bias_options_match_torch(options, need_weights):
    reference = randomize_biases(nn.MultiheadAttention(EMBED, HEADS, batch_first=True, dtype=DTYPE, **options))
    ours = copy_of(reference, MultiheadAttention, EMBED, HEADS, dtype=DTYPE, **options)
    assert set(ours.state_dict()) == set(reference.state_dict())
    if options.get("bias") is False:
        assert ours.in_proj_bias is None and ours.out_proj.bias is None
    query, key, value = (sequence(BATCH, LENGTH, EMBED, True) for _ in range(3))
    padding = torch.rand(BATCH, LENGTH) < 0.4
    padding[:, 0] = False
    call = lambda m, q, k, v: m(q, k, v, key_padding_mask=padding, need_weights=need_weights,  # noqa: E731
                                average_attn_weights=False)
    got = outputs_and_grads(ours, [query, key, value], call)
    expected = outputs_and_grads(reference, [query, key, value], call)
    assert_same_results(got, expected)


def test_per_head_and_unbatched_weights_match_torch():
    reference = randomize_biases(nn.MultiheadAttention(EMBED, HEADS, batch_first=True, dtype=DTYPE))
    ours = copy_of(reference, MultiheadAttention, EMBED, HEADS, dtype=DTYPE)
    query, memory = sequence(BATCH, LENGTH, EMBED, True), sequence(BATCH, SOURCE, EMBED, True)
    out, weights = ours(query, memory, memory, average_attn_weights=False)
    expected_out, expected_weights = reference(query, memory, memory, average_attn_weights=False)
    assert weights.shape == (BATCH, HEADS, LENGTH, SOURCE)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(weights.sum(-1), torch.ones(BATCH, HEADS, LENGTH, dtype=DTYPE))
    torch.testing.assert_close(out, expected_out)
    # Unbatched (L, E) input, with a per-head (H, L, S) mask and an (S,) padding mask.
    mask = torch.rand(HEADS, LENGTH, SOURCE) < 0.4
    mask[..., 0] = False
    padding = torch.zeros(SOURCE, dtype=torch.bool)
    padding[-2:] = True
    for need_weights in (False, True):
        got = ours(query[0], memory[0], memory[0], attn_mask=mask, key_padding_mask=padding, need_weights=need_weights)
        expected = reference(query[0], memory[0], memory[0], attn_mask=mask, key_padding_mask=padding,
                             need_weights=need_weights)
        assert got[0].shape == (LENGTH, EMBED)
        torch.testing.assert_close(got[0], expected[0])
        if need_weights:
            assert got[1].shape == (LENGTH, SOURCE)
            torch.testing.assert_close(got[1], expected[1])


def test_float32_matches_torch():
    reference = nn.MultiheadAttention(32, 4, batch_first=True)
    ours = copy_of(reference, MultiheadAttention, 32, 4)
    x = torch.randn(2, 33, 32)
    padding = torch.rand(2, 33) < 0.3
    padding[:, 0] = False
    for need_weights in (False, True):
        got = ours(x, x, x, key_padding_mask=padding, need_weights=need_weights)
        expected = reference(x, x, x, key_padding_mask=padding, need_weights=need_weights)
        assert got[0].dtype == torch.float32
        torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
        if need_weights:
            torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-6)


def test_state_dicts_load_both_ways_and_module_is_a_torch_mha():
    ours = MultiheadAttention(EMBED, HEADS, add_bias_kv=True, dtype=DTYPE)
    assert isinstance(ours, nn.MultiheadAttention) and ours.batch_first
    reference = nn.MultiheadAttention(EMBED, HEADS, add_bias_kv=True, batch_first=True, dtype=DTYPE)
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = sequence(2, 4, EMBED, True)
    torch.testing.assert_close(ours(x, x, x)[0], reference(x, x, x)[0])


def test_fused_path_calls_the_kernel_without_an_l_by_s_mask(monkeypatch):
    calls = []
    original = attention_module.scaled_dot_product_attention

    def recorded(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        calls.append((tuple(q.shape), None if attn_mask is None else tuple(attn_mask.shape), is_causal))
        return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(attention_module, "scaled_dot_product_attention", recorded)
    ours = MultiheadAttention(EMBED, HEADS, dtype=DTYPE)
    x = sequence(BATCH, 6, EMBED, True)
    padding = torch.zeros(BATCH, 6, dtype=torch.bool)
    ours(x, x, x, key_padding_mask=padding, need_weights=False)
    ours(x, x, x, is_causal=True, need_weights=False)
    ours(x, x, x, attn_mask=torch.zeros(6, 6, dtype=torch.bool), need_weights=False)
    head_shape = (BATCH, HEADS, 6, EMBED // HEADS)
    # A padding mask reaches the kernel as (B, 1, 1, S), a 2-D mask as (1, 1, L, S), causal as the flag.
    assert calls == [(head_shape, (BATCH, 1, 1, 6), False), (head_shape, None, True), (head_shape, (1, 1, 6, 6), False)]
    calls.clear()
    ours(x, x, x)  # need_weights=True (the default): the explicit path, not the kernel
    assert calls == []


@pytest.mark.parametrize("need_weights", [False, True])
def test_fully_masked_rows_give_zeros_not_nan(need_weights):
    reference = randomize_biases(nn.MultiheadAttention(EMBED, HEADS, batch_first=True, dtype=DTYPE))
    ours = copy_of(reference, MultiheadAttention, EMBED, HEADS, dtype=DTYPE)
    query, memory = sequence(BATCH, LENGTH, EMBED, True), sequence(BATCH, SOURCE, EMBED, True)
    padding = torch.zeros(BATCH, SOURCE, dtype=torch.bool)
    padding[1] = True  # every key of batch item 1
    mask = torch.zeros(LENGTH, SOURCE, dtype=torch.bool)
    mask[2] = True  # every key of query 2
    leaf = query.clone().requires_grad_(True)
    out, weights = ours(leaf, memory, memory, key_padding_mask=padding, attn_mask=mask, need_weights=need_weights)
    expected, _ = reference(query, memory, memory, key_padding_mask=padding, attn_mask=mask)
    assert torch.isnan(expected[1]).all() and torch.isnan(expected[:, 2]).all()  # torch.nn's NaN
    # A row that attends nothing has a zero attention output: out_proj leaves its bias.
    torch.testing.assert_close(out[1], ours.out_proj.bias.detach().expand(LENGTH, EMBED))
    torch.testing.assert_close(out[:, 2], ours.out_proj.bias.detach().expand(BATCH, EMBED))
    rows = torch.tensor([0, 2])
    keep = torch.tensor([0, 1, 3, 4])
    torch.testing.assert_close(out[rows][:, keep], expected[rows][:, keep])
    if need_weights:
        assert (weights[1] == 0).all() and (weights[:, 2] == 0).all()
    out.sum().backward()
    assert torch.isfinite(leaf.grad).all()
    assert (leaf.grad[1] == 0).all() and (leaf.grad[:, 2] == 0).all()


def test_dropout_only_in_training_and_reproducible():
    ours = MultiheadAttention(EMBED, HEADS, dropout=0.5, dtype=DTYPE)
    x = sequence(2, 8, EMBED, True)
    ours.eval()
    evaluated = ours(x, x, x, need_weights=False)[0]
    reference = nn.MultiheadAttention(EMBED, HEADS, batch_first=True, dtype=DTYPE)
    reference.load_state_dict(ours.state_dict())
    torch.testing.assert_close(evaluated, reference.eval()(x, x, x, need_weights=False)[0])
    ours.train()
    for need_weights in (False, True):
        torch.manual_seed(7)
        first = ours(x, x, x, need_weights=need_weights)[0]
        torch.manual_seed(7)
        second = ours(x, x, x, need_weights=need_weights)[0]
        assert torch.equal(first, second)
        assert not torch.allclose(first, evaluated)


def test_bad_arguments_raise():
    with pytest.raises((ValueError, AssertionError)):
        MultiheadAttention(10, 3)  # not divisible, as torch.nn
    with pytest.raises((ValueError, AssertionError)):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(ValueError):
        MultiheadAttention(0, 2)
    ours = MultiheadAttention(EMBED, HEADS, dtype=DTYPE)
    x = sequence(2, 4, EMBED, True)
    with pytest.raises(ValueError, match="key_padding_mask"):
        ours(x, x, x, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_padding_mask"):
        ours(x, x, x, key_padding_mask=torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="attn_mask"):
        ours(x, x, x, attn_mask=torch.zeros(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask"):
        ours(x, x, x, attn_mask=torch.zeros(2 * HEADS + 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask"):
        ours(x, x, x, attn_mask=torch.zeros(1, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="query"):
        ours(x[..., :-1], x, x)
    with pytest.raises(ValueError, match="query"):
        ours(x[None], x[None], x[None])
    with pytest.raises(ValueError, match="same batch size and length"):
        ours(x, x, x[:, :3])
    with pytest.raises(ValueError, match="3-D"):
        ours(x, x[0], x[0])


# --------------------------------------------------------------------------------------------
# PositionalEncoding
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d_model", [6, 7])
def test_positional_encoding_values(d_model):
    encoding = PositionalEncoding(d_model, max_len=3000)
    assert encoding.pe.shape == (3000, d_model) and encoding.pe.dtype == torch.float32
    assert "pe" not in encoding.state_dict()
    for position in (0, 1, 17, 2999):
        for feature in range(d_model):
            angle = position / 10000 ** ((feature - feature % 2) / d_model)
            expected = math.sin(angle) if feature % 2 == 0 else math.cos(angle)
            assert encoding.pe[position, feature].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("layout", ["batch_first", "sequence_first", "unbatched"])
def test_positional_encoding_adds_to_the_input(layout):
    d_model, length = 5, 9
    x = torch.randn(2, length, d_model, dtype=DTYPE)
    pe = PositionalEncoding(d_model, max_len=20, batch_first=layout != "sequence_first").to(DTYPE)
    expected = x + pe.pe[:length]
    if layout == "batch_first":
        torch.testing.assert_close(pe(x), expected)
    elif layout == "sequence_first":
        torch.testing.assert_close(pe(x.transpose(0, 1)), expected.transpose(0, 1))
    else:
        torch.testing.assert_close(pe(x[0]), expected[0])
    assert pe(x).dtype == DTYPE
    with pytest.raises(ValueError, match="max_len"):
        pe(torch.randn(21, d_model))
    with pytest.raises(ValueError, match="input"):
        pe(torch.randn(2, 3, d_model + 1))


def test_positional_encoding_dropout_and_gradient():
    pe = PositionalEncoding(8, dropout=0.5)
    x = torch.randn(4, 10, 8, requires_grad=True)
    pe.train()
    dropped = pe(x)
    assert (dropped == 0).any()
    pe.eval()
    out = pe(x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


# --------------------------------------------------------------------------------------------
# transformer layers against torch.nn
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_matches_torch(norm_first, activation, batch_first):
    arguments = dict(d_model=EMBED, nhead=HEADS, dim_feedforward=24, dropout=0.1, activation=activation,
                     norm_first=norm_first, batch_first=batch_first, dtype=DTYPE)
    reference = randomize_biases(nn.TransformerEncoderLayer(**arguments)).eval()
    ours = copy_of(reference, TransformerEncoderLayer, **arguments).eval()
    src = sequence(BATCH, 6, EMBED, batch_first)
    padding = torch.rand(BATCH, 6) < 0.4
    padding[:, 0] = False
    mask = torch.rand(6, 6) < 0.3
    mask[:, 0] = False
    for kwargs in ({}, {"src_key_padding_mask": padding}, {"src_mask": mask, "src_key_padding_mask": padding}):
        call = lambda m, x: m(x, **kwargs)  # noqa: E731
        assert_same_results(outputs_and_grads(ours, [src], call), outputs_and_grads(reference, [src], call))
    # Causal: ours needs no mask.
    causal = nn.Transformer.generate_square_subsequent_mask(6, dtype=DTYPE)
    got = outputs_and_grads(ours, [src], lambda m, x: m(x, is_causal=True))
    expected = outputs_and_grads(reference, [src], lambda m, x: m(x, src_mask=causal, is_causal=True))
    assert_same_results(got, expected)


def test_encoder_layer_default_arguments_and_bias_false():
    layer = TransformerEncoderLayer(EMBED, HEADS)
    assert layer.self_attn.batch_first and layer.linear1.out_features == 2048 and layer.dropout.p == 0.1
    assert layer.norm1.eps == 1e-5 and not layer.norm_first
    reference = randomize_biases(nn.TransformerEncoderLayer(EMBED, HEADS, 20, bias=False, batch_first=True,
                                                            dtype=DTYPE)).eval()
    ours = copy_of(reference, TransformerEncoderLayer, EMBED, HEADS, 20, bias=False, dtype=DTYPE).eval()
    assert ours.linear1.bias is None and ours.norm1.bias is None
    src = sequence(2, 5, EMBED, True)
    call = lambda m, x: m(x)  # noqa: E731
    assert_same_results(outputs_and_grads(ours, [src], call), outputs_and_grads(reference, [src], call))
    with pytest.raises(ValueError, match="activation"):
        TransformerEncoderLayer(EMBED, HEADS, activation="tanh")


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch(norm_first, activation):
    arguments = dict(d_model=EMBED, nhead=HEADS, dim_feedforward=24, activation=activation, norm_first=norm_first,
                     batch_first=True, dtype=DTYPE)
    reference = randomize_biases(nn.TransformerDecoderLayer(**arguments)).eval()
    ours = copy_of(reference, TransformerDecoderLayer, **arguments).eval()
    tgt, memory = sequence(BATCH, LENGTH, EMBED, True), sequence(BATCH, SOURCE, EMBED, True)
    tgt_padding = torch.rand(BATCH, LENGTH) < 0.3
    tgt_padding[:, 0] = False
    memory_padding = torch.rand(BATCH, SOURCE) < 0.4
    memory_padding[:, 0] = False
    memory_mask = torch.rand(LENGTH, SOURCE) < 0.3
    memory_mask[:, 0] = False
    causal = nn.Transformer.generate_square_subsequent_mask(LENGTH, dtype=DTYPE)
    causal_bool = torch.isinf(causal)
    cases = [
        ({}, {}),
        ({"tgt_is_causal": True, "memory_key_padding_mask": memory_padding},
         {"tgt_mask": causal, "tgt_is_causal": True, "memory_key_padding_mask": memory_padding}),
        ({"tgt_mask": causal_bool, "tgt_key_padding_mask": tgt_padding, "memory_mask": memory_mask},) * 2,
    ]
    for our_kwargs, torch_kwargs in cases:
        got = outputs_and_grads(ours, [tgt, memory], lambda m, t, s: m(t, s, **our_kwargs))
        expected = outputs_and_grads(reference, [tgt, memory], lambda m, t, s: m(t, s, **torch_kwargs))
        assert_same_results(got, expected)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_stack_with_final_norm_matches_torch(norm_first):
    layer = nn.TransformerEncoderLayer(EMBED, HEADS, 24, dropout=0.1, norm_first=norm_first, batch_first=True,
                                       dtype=DTYPE)
    reference = nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(EMBED, dtype=DTYPE), enable_nested_tensor=False)
    randomize_biases(reference).eval()
    ours = copy_of(reference, TransformerEncoder,
                   TransformerEncoderLayer(EMBED, HEADS, 24, norm_first=norm_first, dtype=DTYPE), 3,
                   norm=nn.LayerNorm(EMBED, dtype=DTYPE)).eval()
    src = sequence(BATCH, 6, EMBED, True)
    padding = torch.rand(BATCH, 6) < 0.4
    padding[:, 0] = False
    causal = nn.Transformer.generate_square_subsequent_mask(6, dtype=DTYPE)
    for kwargs in ({"src_key_padding_mask": padding}, {"mask": causal}, {"mask": causal, "is_causal": True}):
        call = lambda m, x: m(x, **kwargs)  # noqa: E731
        assert_same_results(outputs_and_grads(ours, [src], call), outputs_and_grads(reference, [src], call))


def test_encoder_stack_deep_copies_its_layer():
    layer = TransformerEncoderLayer(EMBED, HEADS, 24)
    stack = TransformerEncoder(layer, 2)
    assert len(stack.layers) == 2 and stack.layers[0] is not layer and stack.layers[0] is not stack.layers[1]
    first, second = stack.layers[0].linear1.weight, stack.layers[1].linear1.weight
    assert first is not second and torch.equal(first, second) and torch.equal(first, layer.linear1.weight)
    # torch.nn's state_dict keys, one by one.
    reference = nn.TransformerEncoder(nn.TransformerEncoderLayer(EMBED, HEADS, 24, batch_first=True), 2,
                                      enable_nested_tensor=False)
    assert list(stack.state_dict()) == list(reference.state_dict())


def test_decoder_stack_matches_torch():
    layer = nn.TransformerDecoderLayer(EMBED, HEADS, 24, batch_first=True, dtype=DTYPE)
    reference = randomize_biases(nn.TransformerDecoder(layer, 2, norm=nn.LayerNorm(EMBED, dtype=DTYPE))).eval()
    ours = copy_of(reference, TransformerDecoder, TransformerDecoderLayer(EMBED, HEADS, 24, dtype=DTYPE), 2,
                   norm=nn.LayerNorm(EMBED, dtype=DTYPE)).eval()
    tgt, memory = sequence(BATCH, LENGTH, EMBED, True), sequence(BATCH, SOURCE, EMBED, True)
    causal = nn.Transformer.generate_square_subsequent_mask(LENGTH, dtype=DTYPE)
    call = lambda m, t, s: m(t, s, tgt_mask=causal)  # noqa: E731  (detected as causal in both)
    assert_same_results(outputs_and_grads(ours, [tgt, memory], call), outputs_and_grads(reference, [tgt, memory], call))


def test_layers_train_with_dropout_and_gradients_reach_every_parameter():
    layer = TransformerEncoderLayer(EMBED, HEADS, 24, dropout=0.2)
    stack = TransformerEncoder(layer, 2, norm=nn.LayerNorm(EMBED)).train()
    x = torch.randn(BATCH, 6, EMBED, requires_grad=True)
    torch.manual_seed(3)
    first = stack(x)
    torch.manual_seed(3)
    assert torch.equal(stack(x), first)
    first.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, parameter in stack.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("device", DEVICES)
def test_layers_on_device_match_torch(device):
    reference = randomize_biases(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, norm_first=True)).to(device)
    ours = copy_of(reference, TransformerEncoderLayer, 32, 4, 64, norm_first=True).to(device)
    reference.eval()
    ours.eval()
    x = torch.randn(2, 40, 32, device=device)
    padding = torch.rand(2, 40, device=device) < 0.3
    padding[:, 0] = False
    for kwargs in ({}, {"src_key_padding_mask": padding}):
        call = lambda m, x: m(x, **kwargs)  # noqa: E731
        got = outputs_and_grads(ours, [x], call)
        sync(device)
        assert_same_results(got, outputs_and_grads(reference, [x], call), rtol=1e-4, atol=1e-4)
    attention = copy_of(reference.self_attn, MultiheadAttention, 32, 4).to(device)
    for kwargs in ({"is_causal": True, "attn_mask": torch.ones(40, 40, dtype=torch.bool, device=device).triu(1)},
                   {"key_padding_mask": padding}):
        got = attention(x, x, x, need_weights=False, **kwargs)[0]
        expected = reference.self_attn(x, x, x, need_weights=False, **kwargs)[0]
        sync(device)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.needs_cuda
def test_half_precision_on_cuda_matches_float32(dtype):
    ours = MultiheadAttention(64, 4, device="cuda")
    x = torch.randn(2, 70, 64, device="cuda")
    expected = ours(x, x, x, need_weights=False)[0]
    got = ours.to(dtype)(x.to(dtype), x.to(dtype), x.to(dtype), need_weights=False)[0]
    sync("cuda")
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2)


# --------------------------------------------------------------------------------------------
# models: the TransformerEncoder classifier, DETR
# --------------------------------------------------------------------------------------------


def test_classifier_builds_with_defaults_and_trains():
    model = TransformerClassifier()
    tokens = torch.randint(1, 1000, (4, 12))
    tokens[1, 8:] = 0  # padding
    logits = model(tokens)
    assert logits.shape == (4, 2) and torch.isfinite(logits).all()
    loss = F.cross_entropy(logits, torch.tensor([0, 1, 1, 0]))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert model.embedding.weight.grad[0].abs().sum() == 0  # the padding token learns nothing


def test_classifier_ignores_padding():
    model = TransformerClassifier(num_classes=3, vocab_size=50, num_layers=2).eval()
    tokens = torch.randint(1, 50, (2, 7))
    padded = torch.cat([tokens, torch.zeros(2, 5, dtype=torch.int64)], dim=1)
    torch.testing.assert_close(model(padded), model(tokens), rtol=1e-5, atol=1e-5)
    # Every position padded: the head's bias, finite.
    empty = model(torch.zeros(1, 4, dtype=torch.int64))
    torch.testing.assert_close(empty[0], model.head.bias.detach())


def test_classifier_on_features_and_state_dict(tmp_path):
    model = TransformerClassifier(num_classes=4, vocab_size=None, input_dim=6, d_model=32, nhead=2).eval()
    x = torch.randn(3, 9, 6)
    padding = torch.zeros(3, 9, dtype=torch.bool)
    padding[0, 5:] = True
    logits = model(x, key_padding_mask=padding)
    assert logits.shape == (3, 4)
    torch.testing.assert_close(logits[0], model(x[:1, :5])[0], rtol=1e-5, atol=1e-5)
    path = tmp_path / "classifier.pth"
    torch.save(model.state_dict(), path)
    clone = TransformerClassifier(num_classes=4, vocab_size=None, input_dim=6, d_model=32, nhead=2,
                                  state_dict=str(path)).eval()
    torch.testing.assert_close(clone(x, key_padding_mask=padding), logits)
    with pytest.raises(ValueError, match="vocab_size"):
        TransformerClassifier(vocab_size=None)
    with pytest.raises(ValueError, match="d_model"):
        TransformerClassifier(d_model=30, nhead=4)
    with pytest.raises(ValueError, match="feature input"):
        model(torch.randn(3, 9, 5))


def test_detr_transformer_runs_on_the_fused_kernel_and_matches_torch(monkeypatch):
    model = DETR().eval()
    assert isinstance(model.transformer, nn.Transformer)
    assert isinstance(model.transformer.encoder, TransformerEncoder)
    assert isinstance(model.transformer.decoder.layers[0].multihead_attn, MultiheadAttention)
    # The stock torch.nn.Transformer of the same configuration loads its weights and agrees.
    stock = nn.Transformer(64, 4, 2, 2, 128, 0.0, batch_first=True).eval()
    stock.load_state_dict(model.transformer.state_dict(), strict=True)
    tokens, queries = torch.randn(2, 16, 64), torch.randn(2, 10, 64)
    torch.testing.assert_close(model.transformer(tokens, queries), stock(tokens, queries), rtol=1e-5, atol=1e-5)

    calls = []
    original = attention_module.scaled_dot_product_attention
    monkeypatch.setattr(attention_module, "scaled_dot_product_attention",
                        lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    outputs = model(torch.randn(2, 3, 64, 64))
    assert outputs["pred_logits"].shape == (2, 10, 4) and outputs["pred_boxes"].shape == (2, 10, 4)
    assert len(calls) == 2 + 2 * 2  # encoder self-attention, decoder self- and cross-attention


def test_detr_one_training_step():
    torch.manual_seed(0)
    model = DETR(num_queries=6, aux_loss=True)
    criterion = SetCriterion(3, HungarianMatcher(), {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
                             eos_coef=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, targets = synthetic_detection_batch(4, image_size=32, min_size=4, max_size=12)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = criterion.weighted_sum(criterion(model(images), targets))
    optimizer.zero_grad()
    loss.backward()
    for name, parameter in model.transformer.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert any(name.startswith("transformer.encoder") for name in changed)
    assert any(name.startswith("transformer.decoder") for name in changed)
