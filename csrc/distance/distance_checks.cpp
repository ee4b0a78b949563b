#include "distance/distance_checks.h"

#include "common/checks.h"

namespace pyvision_ops {

DistanceMetric parse_distance_metric(const char* op, c10::string_view metric) {
  if (metric == "sqeuclidean") return DistanceMetric::SqEuclidean;
  if (metric == "euclidean") return DistanceMetric::Euclidean;
  if (metric == "cosine") return DistanceMetric::Cosine;
  if (metric == "dot") return DistanceMetric::Dot;
  TORCH_CHECK_VALUE(false, op, ": metric must be 'sqeuclidean', 'euclidean', 'cosine' or 'dot', got '",
                    std::string(metric), "'");
}

const char* distance_metric_name(DistanceMetric metric) {
  switch (metric) {
    case DistanceMetric::SqEuclidean: return "sqeuclidean";
    case DistanceMetric::Euclidean: return "euclidean";
    case DistanceMetric::Cosine: return "cosine";
    case DistanceMetric::Dot: return "dot";
  }
  return "?";
}

TripletStrategy parse_triplet_strategy(const char* op, c10::string_view strategy) {
  if (strategy == "batch_hard") return TripletStrategy::BatchHard;
  if (strategy == "semi_hard") return TripletStrategy::SemiHard;
  if (strategy == "semi_hard_window") return TripletStrategy::SemiHardWindow;
  if (strategy == "hard") return TripletStrategy::Hard;
  TORCH_CHECK_VALUE(false, op, ": strategy must be 'batch_hard', 'semi_hard', 'semi_hard_window' or 'hard', got '",
                    std::string(strategy), "'");
}

at::ScalarType distance_compute_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

int64_t check_pairwise_inputs(const char* op, const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK_VALUE(x.dim() >= 2, op, ": x must be at least 2-D (..., N, D), got ", x.dim(),
                    "-D tensor of shape ", shape_string(x.sizes()));
  check_floating(x, op, "x");
  int64_t batch = 1;
  for (int64_t d = 0; d < x.dim() - 2; ++d) batch *= x.size(d);
  if (!y.defined()) return batch;
  check_floating(y, op, "y");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), op, ": x and y must have the same dtype, got ", x.scalar_type(),
              " and ", y.scalar_type());
  check_same_device(x, y, op, "x", "y");
  TORCH_CHECK_VALUE(y.dim() == x.dim(), op, ": y must have as many dimensions as x (", x.dim(), "), got ",
                    y.dim(), "-D tensor of shape ", shape_string(y.sizes()));
  for (int64_t d = 0; d < x.dim() - 2; ++d) {
    TORCH_CHECK_VALUE(x.size(d) == y.size(d), op, ": x and y must have the same leading (batch) dimensions, got ",
                      shape_string(x.sizes()), " and ", shape_string(y.sizes()));
  }
  TORCH_CHECK_VALUE(x.size(-1) == y.size(-1), op, ": x and y must have the same feature size D (last dimension), got ",
                    x.size(-1), " and ", y.size(-1), " (shapes ", shape_string(x.sizes()), " and ",
                    shape_string(y.sizes()), ")");
  return batch;
}

namespace {

at::Tensor as_rows(const at::Tensor& t, int64_t batch, at::ScalarType compute) {
  return t.reshape({batch, t.size(-2), t.size(-1)}).to(compute).contiguous();
}

at::Tensor unit_rows(const at::Tensor& rows) {
  // Norms in float64, clamped as torch.nn.functional.cosine_similarity clamps them.
  const at::Tensor norms = rows.to(at::kDouble).square().sum(-1, true).sqrt().clamp_min(kCosineNormEps);
  return (rows.to(at::kDouble) / norms).to(rows.scalar_type()).contiguous();
}

}  // namespace

void prepare_distance_rows(DistanceMetric metric, const at::Tensor& x, const at::Tensor& y, int64_t batch,
                           PreparedRows& x_rows, PreparedRows& y_rows) {
  const at::ScalarType compute = distance_compute_dtype(x.scalar_type());
  x_rows.orig = as_rows(x, batch, compute);
  if (y.defined()) y_rows.orig = as_rows(y, batch, compute);
  if (metric == DistanceMetric::Cosine) {
    x_rows.orig = unit_rows(x_rows.orig);
    if (y.defined()) y_rows.orig = unit_rows(y_rows.orig);
  }
  if (metric == DistanceMetric::Dot) {
    x_rows.centered = x_rows.orig;
    x_rows.norms = at::zeros({batch, x_rows.orig.size(1)}, x_rows.orig.options());
    if (y.defined()) {
      y_rows.centered = y_rows.orig;
      y_rows.norms = at::zeros({batch, y_rows.orig.size(1)}, y_rows.orig.options());
    }
    return;
  }
  // The centre: the float64 mean of every row of x and y of the batch item.
  at::Tensor sum = x_rows.orig.to(at::kDouble).sum(1, true);
  int64_t count = x_rows.orig.size(1);
  if (y.defined()) {
    sum = sum + y_rows.orig.to(at::kDouble).sum(1, true);
    count += y_rows.orig.size(1);
  }
  const at::Tensor centre = (count > 0 ? sum / static_cast<double>(count) : sum).to(compute);
  auto finish = [&](PreparedRows& rows) {
    rows.centered = (rows.orig - centre).contiguous();
    rows.norms = rows.centered.to(at::kDouble).square().sum(-1).to(compute).contiguous();
  };
  finish(x_rows);
  if (y.defined()) finish(y_rows);
}

at::Tensor check_mining_inputs(const char* op, const at::Tensor& embeddings, const at::Tensor& labels) {
  check_dim(embeddings, 2, op, "embeddings", "(N, D)");
  check_floating(embeddings, op, "embeddings");
  TORCH_CHECK_VALUE(labels.dim() == 1, op, ": labels must be 1-D (N,), got ", labels.dim(), "-D tensor of shape ",
                    shape_string(labels.sizes()));
  const auto dtype = labels.scalar_type();
  TORCH_CHECK_VALUE(at::isIntegralType(dtype, /*includeBool=*/false), op,
                    ": labels must have an integer dtype, got ", dtype);
  check_same_device(embeddings, labels, op, "embeddings", "labels");
  TORCH_CHECK_VALUE(labels.size(0) == embeddings.size(0), op, ": labels must have one entry per embedding (N = ",
                    embeddings.size(0), "), got ", labels.size(0));
  return labels.to(at::kLong).contiguous();
}

}  // namespace pyvision_ops
