#include "gram/gram_checks.h"

#include "common/checks.h"

namespace pyvision_ops {

at::ScalarType gram_compute_dtype(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

GramInput prepare_gram_input(const char* op, const at::Tensor& features, bool normalize) {
  TORCH_CHECK_VALUE(features.dim() == 3 || features.dim() == 4, op,
                    ": features must be 3-D (N, C, L) or 4-D (N, C, H, W), got ", features.dim(),
                    "-D tensor of shape ", shape_string(features.sizes()));
  check_floating(features, op, "features");
  GramInput in;
  GramParams& p = in.params;
  p.batch = features.size(0);
  p.channels = features.size(1);
  p.length = 1;
  for (int64_t d = 2; d < features.dim(); ++d) p.length *= features.size(d);
  p.scale = (normalize && p.channels * p.length > 0) ? 1.0 / static_cast<double>(p.channels * p.length) : 1.0;
  // Channels-last memory (C innermost) is read in place as X (N, L, C): G = X^T X.
  const at::Tensor moved = features.movedim(1, -1);  // (N, spatial..., C), a view
  const bool channels_last = features.size(1) > 1 && moved.is_contiguous() && !features.is_contiguous();
  p.channels_last = channels_last;
  in.view = channels_last ? moved.reshape({p.batch, p.length, p.channels})
                          : features.contiguous().reshape({p.batch, p.channels, p.length});
  return in;
}

}  // namespace pyvision_ops
