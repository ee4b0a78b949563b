// Torch-side checks of the attention family, shared by the CPU kernels and the CUDA glue: the
// argument checks and the prepared (contiguous, compute-dtype) inputs with their params.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

#include "attention/attention.h"

namespace pyvision_ops {

// The compute dtype: float64 for float64, float32 otherwise.
at::ScalarType attention_compute_dtype(at::ScalarType dtype);

struct AttentionInputs {
  at::Tensor q, k, v;  // contiguous, compute dtype (or the inputs' dtype, see widen below)
  at::Tensor mask;     // the mask in the compute dtype (uint8 for bool) before broadcasting, or undefined
  AttentionParams params;
};

// Checks q (B, Hq, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev) (floating, one dtype and device, Hq
// a multiple of Hkv, E and Ev <= 256, k and v of one length), the mask (bool or floating,
// broadcastable to (B, Hq, L, S), not together with is_causal), dropout_p in [0, 1] and a finite
// scale; returns the prepared inputs and params (params.mask points into inputs.mask). With
// widen = false, q, k and v keep their dtype (contiguous copies only; the mask is still in the
// compute dtype): the CUDA tensor-core path reads float16 / bfloat16 directly.
AttentionInputs prepare_attention_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const c10::optional<at::Tensor>& mask, double dropout_p, bool is_causal,
                                         double scale, int64_t seed, bool widen = true);

// The backward's working tensors, shared by the CPU kernel and the CUDA glue: grad_out, out
// (B, Hq, L, Ev) and stats (B, Hq, L, 2) are checked against the forward's shapes; dO, the row
// stats and delta_i = dO_i . O_i (the softmax backward's row term) come back contiguous in the
// compute dtype, dq, dk, dv zero-filled in it; dO comes back in in.q's dtype (the compute dtype,
// or the 16-bit dtype of inputs prepared with widen = false).
struct AttentionBackwardTensors {
  at::Tensor grad_out, stats, delta, dq, dk, dv;
};
AttentionBackwardTensors prepare_attention_backward(const char* op, const AttentionInputs& in,
                                                    const at::Tensor& grad_out, const at::Tensor& out,
                                                    const at::Tensor& stats);

// dq, dk, dv in the dtypes of q, k, v where output_mask asks for them, empty (0,) tensors elsewhere.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_result(const AttentionBackwardTensors& t,
                                                                         const at::Tensor& q, const at::Tensor& k,
                                                                         const at::Tensor& v,
                                                                         std::array<bool, 3> output_mask);

}  // namespace pyvision_ops
