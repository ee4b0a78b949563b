// Schemas of the attention family (fused scaled-dot-product attention and its backward).
// Kernels: attention_cpu.cpp, attention_cuda.cpp; fake kernels and autograd:
// pyvision_ops/ops/attention.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pyvision_ops, m) {
  // q (B, Hq, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev); mask (bool or floating) broadcastable to
  // (B, Hq, L, S); seed: the dropout hash's key (attention.h). Returns out (B, Hq, L, Ev) in q's
  // dtype, lse (B, Hq, L) (float32, float64 for float64 inputs; -inf for a fully masked row) and
  // stats (B, Hq, L, 2): each row's maximum score m and log of its sum of exp(s - m), which the
  // backward uses (lse = m + log l rounds log l away when |m| is large, e.g. -1e9 padding).
  m.def("_attention_forward(Tensor q, Tensor k, Tensor v, Tensor? mask, float dropout_p, bool is_causal, "
        "float scale, SymInt seed) -> (Tensor out, Tensor lse, Tensor stats)");
  // output_mask: which of (dq, dk, dv) to compute; the others come back as empty tensors.
  m.def("_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? mask, Tensor out, "
        "Tensor stats, float dropout_p, bool is_causal, float scale, SymInt seed, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
}
