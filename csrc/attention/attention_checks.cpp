#include "attention/attention_checks.h"

#include <cmath>
#include <limits>
#include <vector>

#include "common/checks.h"

namespace pyvision_ops {

at::ScalarType attention_compute_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

AttentionInputs prepare_attention_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const c10::optional<at::Tensor>& mask, double dropout_p, bool is_causal,
                                         double scale, int64_t seed, bool widen) {
  check_dim(q, 4, op, "query", "(B, Hq, L, E)");
  check_dim(k, 4, op, "key", "(B, Hkv, S, E)");
  check_dim(v, 4, op, "value", "(B, Hkv, S, Ev)");
  check_floating(q, op, "query");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": query, key and value must have one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), " and ",
              v.scalar_type());
  check_same_device(q, k, op, "query", "key");
  check_same_device(q, v, op, "query", "value");
  const int64_t b = q.size(0), hq = q.size(1), l = q.size(2), e = q.size(3);
  TORCH_CHECK_VALUE(k.size(0) == b && v.size(0) == b, op, ": query, key and value must have one batch size, got ",
                    b, ", ", k.size(0), " and ", v.size(0));
  TORCH_CHECK_VALUE(v.size(1) == k.size(1), op, ": key and value must have the same number of heads, got ", k.size(1),
                    " and ", v.size(1));
  TORCH_CHECK_VALUE(v.size(2) == k.size(2), op, ": key and value must have the same length S, got ", k.size(2),
                    " and ", v.size(2));
  TORCH_CHECK_VALUE(k.size(3) == e, op, ": query and key must have the same head dim E, got ", e, " and ", k.size(3));
  const int64_t hkv = k.size(1), s = k.size(2), ev = v.size(3);
  TORCH_CHECK_VALUE(hkv >= 1 && hq % hkv == 0, op, ": the query's heads (", hq,
                    ") must be a multiple of the key's and value's heads (", hkv, ")");
  TORCH_CHECK_VALUE(e <= kAttentionMaxHeadDim && ev <= kAttentionMaxHeadDim, op, ": head dims must be <= ",
                    kAttentionMaxHeadDim, ", got E = ", e, " and Ev = ", ev);
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p <= 1.0, op, ": dropout_p must be in [0, 1], got ", dropout_p);
  TORCH_CHECK_VALUE(std::isfinite(scale), op, ": scale must be finite, got ", scale);

  AttentionInputs in;
  const at::ScalarType compute = attention_compute_dtype(q.scalar_type());
  in.q = (widen ? q.to(compute) : q).contiguous();
  in.k = (widen ? k.to(compute) : k).contiguous();
  in.v = (widen ? v.to(compute) : v).contiguous();
  AttentionParams& p = in.params;
  p.batch = b;
  p.heads = hq;
  p.kv_heads = hkv;
  p.q_len = l;
  p.kv_len = s;
  p.head_dim = e;
  p.value_dim = ev;
  p.scale = scale;
  p.causal = is_causal;
  p.dropout = dropout_p;
  p.seed = static_cast<uint64_t>(seed);
  if (mask.has_value() && mask->defined()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK_VALUE(!is_causal, op, ": attn_mask and is_causal=True cannot be given together");
    TORCH_CHECK(m.scalar_type() == at::kBool || at::isFloatingType(m.scalar_type()), op,
                ": attn_mask must be bool or floating, got ", m.scalar_type());
    check_same_device(q, m, op, "query", "attn_mask");
    const std::vector<int64_t> full{b, hq, l, s};
    bool ok = m.dim() <= 4;
    for (int64_t d = 0; ok && d < m.dim(); ++d) {
      const int64_t size = m.size(m.dim() - 1 - d), want = full[3 - d];
      ok = size == 1 || size == want;
    }
    TORCH_CHECK_VALUE(ok, op, ": attn_mask must be broadcastable to (B, Hq, L, S) = ", shape_string(full), ", got ",
                      shape_string(m.sizes()));
    // Converted before broadcasting, so a (B, 1, 1, S) mask stays that size in memory; a boolean
    // mask becomes the additive 0 / -inf mask of its shape (one vectorised add in the kernels).
    if (m.scalar_type() == at::kBool) {
      in.mask = at::zeros(m.sizes(), m.options().dtype(compute))
                    .masked_fill_(m.logical_not(), -std::numeric_limits<double>::infinity());
    } else {
      in.mask = m.to(compute);
    }
    const at::Tensor view = in.mask.expand(full);
    for (int d = 0; d < 4; ++d) p.mask_stride[d] = view.size(d) == 1 ? 0 : view.stride(d);
    p.mask_kind = AttentionMask::Additive;
    p.mask = in.mask.data_ptr();
  }
  return in;
}

AttentionBackwardTensors prepare_attention_backward(const char* op, const AttentionInputs& in,
                                                    const at::Tensor& grad_out, const at::Tensor& out,
                                                    const at::Tensor& stats) {
  const AttentionParams& p = in.params;
  const std::vector<int64_t> out_shape{p.batch, p.heads, p.q_len, p.value_dim};
  const std::vector<int64_t> stats_shape{p.batch, p.heads, p.q_len, 2};
  TORCH_CHECK_VALUE(grad_out.sizes() == c10::IntArrayRef(out_shape), op, ": grad_out must have the output's shape ",
                    shape_string(out_shape), ", got ", shape_string(grad_out.sizes()));
  TORCH_CHECK_VALUE(out.sizes() == c10::IntArrayRef(out_shape), op, ": out must have the output's shape ",
                    shape_string(out_shape), ", got ", shape_string(out.sizes()));
  TORCH_CHECK_VALUE(stats.sizes() == c10::IntArrayRef(stats_shape), op, ": stats must have shape ",
                    shape_string(stats_shape), ", got ", shape_string(stats.sizes()));
  check_same_device(in.q, grad_out, op, "query", "grad_out");
  check_same_device(in.q, out, op, "query", "out");
  check_same_device(in.q, stats, op, "query", "stats");
  // in.q is in the compute dtype, or (unwidened 16-bit inputs of the tensor-core path) in the
  // input's own: grad_out then stays 16-bit, the rest is float32.
  const at::ScalarType compute = attention_compute_dtype(in.q.scalar_type());
  const at::TensorOptions options = in.q.options().dtype(compute);
  AttentionBackwardTensors t;
  t.grad_out = grad_out.to(in.q.scalar_type()).contiguous();
  t.stats = stats.to(compute).contiguous();
  // From the contiguous dO, so that the reduction order (and delta's bits) does not depend on the
  // upstream gradient's layout.
  t.delta = (t.grad_out.to(compute) * out.to(compute)).sum(-1).contiguous();
  t.dq = at::zeros({p.batch, p.heads, p.q_len, p.head_dim}, options);
  t.dk = at::zeros({p.batch, p.kv_heads, p.kv_len, p.head_dim}, options);
  t.dv = at::zeros({p.batch, p.kv_heads, p.kv_len, p.value_dim}, options);
  return t;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_result(const AttentionBackwardTensors& t,
                                                                         const at::Tensor& q, const at::Tensor& k,
                                                                         const at::Tensor& v,
                                                                         std::array<bool, 3> output_mask) {
  return {output_mask[0] ? t.dq.to(q.scalar_type()) : at::empty({0}, q.options()),
          output_mask[1] ? t.dk.to(k.scalar_type()) : at::empty({0}, k.options()),
          output_mask[2] ? t.dv.to(v.scalar_type()) : at::empty({0}, v.options())};
}

}  // namespace pyvision_ops
