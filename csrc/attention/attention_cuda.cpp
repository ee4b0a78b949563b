// CUDA glue of the attention family: the checks and prepared inputs of the CPU path
// (attention_checks.h), the current stream, allocation, one launch check per launcher.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "attention/attention.h"
#include "attention/attention_checks.h"
#include "attention/attention_kernel.h"
#include "common/checks.h"
#include "common/cuda_launch.h"

namespace pyvision_ops {
namespace {

// The tensor-core kernels read 16-byte vectors: a contiguous view at an odd storage offset (a
// slice of a larger buffer) is copied into a fresh, aligned allocation.
at::Tensor aligned_16(const at::Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.const_data_ptr()) % 16 == 0 ? t : t.clone(at::MemoryFormat::Contiguous);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_forward_cuda(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& v, const c10::optional<at::Tensor>& mask,
                                                          double dropout_p, bool is_causal, double scale,
                                                          int64_t seed) {
  constexpr const char* op = "scaled_dot_product_attention";
  const c10::cuda::CUDAGuard guard(q.device());
  if (q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16) {
    // float16 / bfloat16 within the tensor-core kernel's scope: q, k, v stay 16-bit.
    const AttentionInputs in = prepare_attention_inputs(op, q, k, v, mask, dropout_p, is_causal, scale, seed,
                                                        /*widen=*/false);
    const AttentionParams& p = in.params;
    if (k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() &&
        attention_mma_supported(scalar_kind(in.q.scalar_type()), p)) {
      const at::TensorOptions f32 = in.q.options().dtype(at::kFloat);
      at::Tensor out = at::empty({p.batch, p.heads, p.q_len, p.value_dim}, f32);
      at::Tensor lse = at::empty({p.batch, p.heads, p.q_len}, f32);
      at::Tensor stats = at::empty({p.batch, p.heads, p.q_len, 2}, f32);
      if (p.kv_len == 0) {
        out.zero_();
        lse.fill_(-std::numeric_limits<double>::infinity());
        stats.fill_(-std::numeric_limits<double>::infinity());
      } else {
        const at::Tensor q16 = aligned_16(in.q), k16 = aligned_16(in.k), v16 = aligned_16(in.v);
        check_cuda_launch(launch_attention_forward_mma(scalar_kind(in.q.scalar_type()), p, q16.const_data_ptr(),
                                                       k16.const_data_ptr(), v16.const_data_ptr(),
                                                       out.mutable_data_ptr<float>(), lse.mutable_data_ptr<float>(),
                                                       stats.mutable_data_ptr<float>(),
                                                       at::cuda::getCurrentCUDAStream()),
                          op, "attention_forward_mma_kernel");
      }
      return {out.to(q.scalar_type()), lse, stats};
    }
  }
  const AttentionInputs in = prepare_attention_inputs(op, q, k, v, mask, dropout_p, is_causal, scale, seed);
  const AttentionParams& p = in.params;
  at::Tensor out = at::empty({p.batch, p.heads, p.q_len, p.value_dim}, in.q.options());
  at::Tensor lse = at::empty({p.batch, p.heads, p.q_len}, in.q.options());
  at::Tensor stats = at::empty({p.batch, p.heads, p.q_len, 2}, in.q.options());
  if (p.kv_len == 0) {
    out.zero_();
    lse.fill_(-std::numeric_limits<double>::infinity());
    stats.fill_(-std::numeric_limits<double>::infinity());
  } else {
    check_cuda_launch(launch_attention_forward(scalar_kind(in.q.scalar_type()), p, in.q.const_data_ptr(),
                                               in.k.const_data_ptr(), in.v.const_data_ptr(), out.mutable_data_ptr(),
                                               lse.mutable_data_ptr(), stats.mutable_data_ptr(),
                                               at::cuda::getCurrentCUDAStream()),
                      op, "attention_forward_kernel");
  }
  return {out.to(q.scalar_type()), lse, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& mask, const at::Tensor& out, const at::Tensor& stats, double dropout_p,
    bool is_causal, double scale, int64_t seed, std::array<bool, 3> output_mask) {
  constexpr const char* op = "scaled_dot_product_attention_backward";
  const c10::cuda::CUDAGuard guard(q.device());
  if (q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16) {
    // The tensor-core backward for the calls the tensor-core forward takes.
    const AttentionInputs in = prepare_attention_inputs(op, q, k, v, mask, dropout_p, is_causal, scale, seed,
                                                        /*widen=*/false);
    const AttentionParams& p = in.params;
    if (attention_mma_supported(scalar_kind(in.q.scalar_type()), p)) {
      AttentionBackwardTensors t = prepare_attention_backward(op, in, grad_out, out, stats);
      const at::Tensor q16 = aligned_16(in.q), k16 = aligned_16(in.k), v16 = aligned_16(in.v);
      const at::Tensor go16 = aligned_16(t.grad_out);
      check_cuda_launch(launch_attention_backward_mma(
                            scalar_kind(in.q.scalar_type()), p, q16.const_data_ptr(), k16.const_data_ptr(),
                            v16.const_data_ptr(), go16.const_data_ptr(), t.stats.const_data_ptr<float>(),
                            t.delta.const_data_ptr<float>(), t.dq.mutable_data_ptr<float>(),
                            t.dk.mutable_data_ptr<float>(), t.dv.mutable_data_ptr<float>(),
                            at::cuda::getCurrentCUDAStream()),
                        op, "attention_backward_mma_kernels");
      return attention_backward_result(t, q, k, v, output_mask);
    }
  }
  const AttentionInputs in = prepare_attention_inputs(op, q, k, v, mask, dropout_p, is_causal, scale, seed);
  const AttentionParams& p = in.params;
  AttentionBackwardTensors t = prepare_attention_backward(op, in, grad_out, out, stats);
  check_cuda_launch(launch_attention_backward(scalar_kind(in.q.scalar_type()), p, in.q.const_data_ptr(),
                                              in.k.const_data_ptr(), in.v.const_data_ptr(), t.grad_out.const_data_ptr(),
                                              t.stats.const_data_ptr(), t.delta.const_data_ptr(),
                                              t.dq.mutable_data_ptr(), t.dk.mutable_data_ptr(), t.dv.mutable_data_ptr(),
                                              at::cuda::getCurrentCUDAStream()),
                    op, "attention_backward_kernels");
  return attention_backward_result(t, q, k, v, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyvision_ops, CUDA, m) {
  m.impl("_attention_forward", &attention_forward_cuda);
  m.impl("_attention_backward", &attention_backward_cuda);
}

}  // namespace pyvision_ops
