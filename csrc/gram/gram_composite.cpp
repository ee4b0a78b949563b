// The Gram family's operators built on gram_matrix and ATen ops only (the backward and the fused
// style loss): one registration (CompositeExplicitAutograd) serves every device. On the CPU the
// backward's product dF = S F runs through the packed kernel of gram_cpu.cpp where it applies.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "common/checks.h"
#include "gram/gram_checks.h"

namespace pyvision_ops {

namespace {

at::Tensor call_gram_matrix(const at::Tensor& features, bool normalize) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pyvision_ops::gram_matrix", "")
                       .typed<at::Tensor(const at::Tensor&, bool)>();
  return op.call(features, normalize);
}

// dF = S F for a symmetric S (N, C, C), laid out like `features` (channels-last stays so): the
// CPU's packed AVX2 kernel where it applies (symmetric_times_features_cpu), bmm otherwise.
at::Tensor symmetric_times_features(const at::Tensor& symmetric, const at::Tensor& features, const GramInput& in) {
  const at::Tensor view = in.view.to(symmetric.scalar_type());
  const bool channels_last = in.params.channels_last;
  at::Tensor product;
  if (view.is_cpu() && symmetric.is_cpu()) {
    // S is exactly symmetric here ((dG + dG^T) * s), which the CPU kernel relies on.
    product = symmetric_times_features_cpu(symmetric, view, channels_last);
  }
  if (!product.defined()) {
    // Channels-last X (N, L, C): dX = X S (S symmetric).
    product = channels_last ? at::bmm(view, symmetric) : at::bmm(symmetric, view);
  }
  if (channels_last) {
    // Kept in (N, L, C) memory = the caller's channels-last.
    std::vector<int64_t> moved_sizes = {features.size(0)};
    for (int64_t d = 2; d < features.dim(); ++d) moved_sizes.push_back(features.size(d));
    moved_sizes.push_back(features.size(1));
    product = product.view(moved_sizes).movedim(-1, 1);
  } else {
    product = product.view(features.sizes());
  }
  return product.to(features.scalar_type());
}

// The target Gram as (N, C, C) in `dtype`: (N, C, C), or (C, C) / (1, C, C) for the whole batch.
at::Tensor expand_target(const char* op, const at::Tensor& target, const GramParams& p, at::ScalarType dtype,
                         const at::Tensor& features) {
  check_floating(target, op, "target_gram");
  check_same_device(features, target, op, "features", "target_gram");
  const int64_t C = p.channels;
  const bool shared = (target.dim() == 2 && target.size(0) == C && target.size(1) == C) ||
                      (target.dim() == 3 && target.size(0) == 1 && target.size(1) == C && target.size(2) == C);
  const bool per_item = target.dim() == 3 && target.size(0) == p.batch && target.size(1) == C && target.size(2) == C;
  TORCH_CHECK_VALUE(shared || per_item, op, ": target_gram must have shape (", p.batch, ", ", C, ", ", C, "), (", C,
                    ", ", C, ") or (1, ", C, ", ", C, ") for features of shape ", shape_string(features.sizes()),
                    ", got ", shape_string(target.sizes()));
  at::Tensor t = target.to(dtype);
  if (t.dim() == 2) t = t.unsqueeze(0);
  return t.expand({p.batch, C, C});
}

double reduction_scale(int64_t reduction, const GramParams& p) {
  TORCH_CHECK_VALUE(reduction == 0 || reduction == 1, "style_loss: reduction must be 0 (sum) or 1 (mean), got ",
                    reduction);
  if (reduction == 0) return 1.0;
  const int64_t count = p.batch * p.channels * p.channels;
  return count > 0 ? 1.0 / static_cast<double>(count) : std::numeric_limits<double>::quiet_NaN();
}

at::Tensor gram_matrix_backward(const at::Tensor& grad_gram, const at::Tensor& features, bool normalize) {
  constexpr const char* op = "_gram_matrix_backward";
  const GramInput in = prepare_gram_input(op, features, normalize);
  const int64_t C = in.params.channels;
  TORCH_CHECK_VALUE(grad_gram.dim() == 3 && grad_gram.size(0) == in.params.batch && grad_gram.size(1) == C &&
                        grad_gram.size(2) == C,
                    op, ": grad_gram must have shape (", in.params.batch, ", ", C, ", ", C, "), got ",
                    shape_string(grad_gram.sizes()));
  if (features.numel() == 0) return at::zeros_like(features);
  const at::ScalarType compute = gram_compute_dtype(features.scalar_type());
  const at::Tensor g = grad_gram.to(compute);
  const at::Tensor symmetric = (g + g.transpose(1, 2)).mul_(in.params.scale);
  return symmetric_times_features(symmetric, features, in);
}

std::tuple<at::Tensor, at::Tensor> style_loss_forward(const at::Tensor& features, const at::Tensor& target_gram,
                                                      bool normalize, int64_t reduction) {
  constexpr const char* op = "style_loss";
  const GramInput in = prepare_gram_input(op, features, normalize);
  const at::ScalarType compute = gram_compute_dtype(features.scalar_type());
  const at::Tensor target = expand_target(op, target_gram, in.params, compute, features);
  const double scale = reduction_scale(reduction, in.params);
  const at::Tensor gram = call_gram_matrix(features, normalize);
  // The loss is summed in float32 (float64 for float64) from the Gram.
  const at::Tensor difference = gram.to(compute) - target;
  at::Tensor loss = difference.pow(2).sum().mul_(scale);
  return {loss.to(features.scalar_type()), gram};
}

at::Tensor style_loss_backward(const at::Tensor& grad_loss, const at::Tensor& grad_gram, const at::Tensor& features,
                               const at::Tensor& gram, const at::Tensor& target_gram, bool normalize,
                               int64_t reduction) {
  constexpr const char* op = "_style_loss_backward";
  const GramInput in = prepare_gram_input(op, features, normalize);
  const int64_t N = in.params.batch, C = in.params.channels;
  // Checked here, not only in Python: a wrong shape would otherwise broadcast into a plausible
  // gradient.
  TORCH_CHECK_VALUE(grad_loss.dim() == 0, op, ": grad_loss must be 0-D (the gradient of the scalar loss), got shape ",
                    shape_string(grad_loss.sizes()));
  TORCH_CHECK_VALUE(gram.dim() == 3 && gram.size(0) == N && gram.size(1) == C && gram.size(2) == C, op,
                    ": gram must have shape (", N, ", ", C, ", ", C, ") (the Gram of the forward), got ",
                    shape_string(gram.sizes()));
  const bool no_grad_gram = grad_gram.dim() == 1 && grad_gram.numel() == 0;
  TORCH_CHECK_VALUE(no_grad_gram || (grad_gram.dim() == 3 && grad_gram.size(0) == N && grad_gram.size(1) == C &&
                                     grad_gram.size(2) == C),
                    op, ": grad_gram must have shape (", N, ", ", C, ", ", C, "), or (0,) when the Gram output has no ",
                    "gradient, got ", shape_string(grad_gram.sizes()));
  check_same_device(features, grad_loss, op, "features", "grad_loss");
  check_same_device(features, gram, op, "features", "gram");
  if (features.numel() == 0) return at::zeros_like(features);
  const at::ScalarType compute = gram_compute_dtype(features.scalar_type());
  const at::Tensor target = expand_target(op, target_gram, in.params, compute, features);
  const double scale = reduction_scale(reduction, in.params);
  // d loss / d G = 2 * scale * (G - G_t); through G = F F^T * s: dF = (dG + dG^T) F * s.
  const at::Tensor difference = gram.to(compute) - target;
  at::Tensor d_gram = difference.mul(grad_loss.to(compute).mul(2.0 * scale));
  if (!no_grad_gram) d_gram = d_gram + grad_gram.to(compute);
  const at::Tensor symmetric = (d_gram + d_gram.transpose(1, 2)).mul_(in.params.scale);
  return symmetric_times_features(symmetric, features, in);
}

}  // namespace

// Built on gram_matrix and ATen ops only, so one registration serves every device.
TORCH_LIBRARY_IMPL(pyvision_ops, CompositeExplicitAutograd, m) {
  m.impl("_gram_matrix_backward", &gram_matrix_backward);
  m.impl("_style_loss_forward", &style_loss_forward);
  m.impl("_style_loss_backward", &style_loss_backward);
}

}  // namespace pyvision_ops
