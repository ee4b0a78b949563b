#include "distance/distance_checks.h"

#include <array>
#include <utility>

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

int64_t check_topk_inputs(const char* op, const at::Tensor& x, const at::Tensor& y, int64_t k) {
  TORCH_CHECK_VALUE(y.defined(), op, ": y must be a tensor (..., M, D)");
  const int64_t batch = check_pairwise_inputs(op, x, y);
  const int64_t m = y.size(-2);
  TORCH_CHECK_VALUE(k >= 1 && k <= m, op, ": k must be in [1, M] with M = ", m, " (rows of y), got k = ", k);
  return batch;
}

void check_indexed_triplets(const char* op, const at::Tensor& embeddings, const at::Tensor& a, const at::Tensor& p,
                            const at::Tensor& n) {
  check_dim(embeddings, 2, op, "embeddings", "(N, D)");
  check_floating(embeddings, op, "embeddings");
  const int64_t rows = embeddings.size(0);
  const std::array<std::pair<const at::Tensor*, const char*>, 3> args{{{&a, "anchor"}, {&p, "positive"}, {&n, "negative"}}};
  for (const auto& [t, name] : args) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->scalar_type() == at::kLong && t->size(0) == a.size(0), op, ": ", name,
                      " must be 1-D int64 of the anchors' length (", a.size(0), "), got ", t->scalar_type(),
                      " of shape ", shape_string(t->sizes()));
    check_same_device(embeddings, *t, op, "embeddings", name);
    if (t->numel() > 0) {
      // One read-back of the extremes (a sync on CUDA); the first bad position is named on CPU.
      const int64_t lo = t->min().item<int64_t>(), hi = t->max().item<int64_t>();
      TORCH_CHECK_VALUE(lo >= 0 && hi < rows, op, ": ", name, " indices must lie in [0, ", rows, "), got ",
                        lo < 0 ? lo : hi);
    }
  }
}

void check_kmeans_assign_inputs(const char* op, const at::Tensor& x, const at::Tensor& centroids) {
  check_dim(x, 2, op, "x", "(N, D)");
  check_dim(centroids, 2, op, "centroids", "(K, D)");
  check_floating(x, op, "x");
  TORCH_CHECK(centroids.scalar_type() == x.scalar_type(), op, ": x and centroids must have the same dtype, got ",
              x.scalar_type(), " and ", centroids.scalar_type());
  check_same_device(x, centroids, op, "x", "centroids");
  TORCH_CHECK_VALUE(centroids.size(0) >= 1 && centroids.size(1) == x.size(1), op,
                    ": centroids must be (K >= 1, D) with x's D = ", x.size(1), ", got shape ",
                    shape_string(centroids.sizes()));
}

HierarchicalInputs check_hierarchical_inputs(const char* op, const at::Tensor& distances, const at::Tensor& classes,
                                             const at::Tensor& margins) {
  check_dim(distances, 2, op, "distances", "(N, N)");
  check_floating(distances, op, "distances");
  TORCH_CHECK_VALUE(distances.size(0) == distances.size(1), op, ": distances must be square (N, N), got shape ",
                    shape_string(distances.sizes()));
  const int64_t n = distances.size(0);
  TORCH_CHECK_VALUE(classes.dim() == 1 && classes.scalar_type() == at::kLong && classes.size(0) == n, op,
                    ": classes must be 1-D int64 of length ", n, " (one per row of distances), got ",
                    classes.scalar_type(), " of shape ", shape_string(classes.sizes()));
  check_dim(margins, 2, op, "margins", "(P, P)");
  check_floating(margins, op, "margins");
  TORCH_CHECK_VALUE(margins.size(0) == margins.size(1), op, ": margins must be square (P, P), got shape ",
                    shape_string(margins.sizes()));
  check_same_device(distances, classes, op, "distances", "classes");
  check_same_device(distances, margins, op, "distances", "margins");
  HierarchicalInputs in;
  in.n = n;
  in.p = margins.size(0);
  const at::ScalarType compute = distance_compute_dtype(distances.scalar_type());
  in.distances = distances.to(compute).contiguous();
  in.margins = margins.to(compute).contiguous();
  in.classes = classes.contiguous();
  if (n > 0) {
    const int64_t lo = classes.min().item<int64_t>(), hi = classes.max().item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi < in.p, op, ": classes must lie in [0, ", in.p, ") (rows of margins), got ",
                      lo < 0 ? lo : hi);
    const at::Tensor counts = at::bincount(in.classes, {}, in.p).to(at::kDouble);
    in.triplets = (counts * (counts - 1) * (static_cast<double>(n) - counts)).sum().item<double>();
  }
  return in;
}

void check_pairwise_backward_inputs(const char* op, const at::Tensor& grad, const at::Tensor& out, const at::Tensor& x,
                                    const at::Tensor& y) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(y.defined() ? y.size(-2) : x.size(-2));
  TORCH_CHECK_VALUE(grad.sizes() == c10::IntArrayRef(shape), op, ": grad must have the output's shape ",
                    shape_string(shape), ", got ", shape_string(grad.sizes()));
  TORCH_CHECK_VALUE(out.sizes() == c10::IntArrayRef(shape), op, ": out must have the output's shape ",
                    shape_string(shape), ", got ", shape_string(out.sizes()));
  check_same_device(x, grad, op, "x", "grad");
  check_same_device(x, out, op, "x", "out");
}

namespace {

at::Tensor as_rows(const at::Tensor& t, int64_t batch, at::ScalarType compute) {
  return t.reshape({batch, t.size(-2), t.size(-1)}).to(compute).contiguous();
}

// Float64 reductions over (B, n, D) rows, a bounded slice of rows at a time (no float64 copy
// of the whole input).
constexpr int64_t kF64Slice = 8192;

at::Tensor row_sum_f64(const at::Tensor& rows) {
  at::Tensor sum = at::zeros({rows.size(0), 1, rows.size(2)}, rows.options().dtype(at::kDouble));
  for (int64_t r = 0; r < rows.size(1); r += kF64Slice) {
    sum += rows.narrow(1, r, std::min(kF64Slice, rows.size(1) - r)).to(at::kDouble).sum(1, true);
  }
  return sum;
}

at::Tensor squared_norms_f64(const at::Tensor& rows) {
  at::Tensor norms = at::empty({rows.size(0), rows.size(1)}, rows.options().dtype(at::kDouble));
  for (int64_t r = 0; r < rows.size(1); r += kF64Slice) {
    const int64_t len = std::min(kF64Slice, rows.size(1) - r);
    norms.narrow(1, r, len).copy_(rows.narrow(1, r, len).to(at::kDouble).square().sum(-1));
  }
  return norms;
}

at::Tensor unit_rows(const at::Tensor& rows) {
  // Norms in float64, clamped as torch.nn.functional.cosine_similarity clamps them.
  const at::Tensor norms = rows.to(at::kDouble).square().sum(-1, true).sqrt().clamp_min(kCosineNormEps);
  return (rows.to(at::kDouble) / norms).to(rows.scalar_type()).contiguous();
}

}  // namespace

void prepare_distance_rows(DistanceMetric metric, const at::Tensor& x, const at::Tensor& y, int64_t batch,
                           PreparedRows& x_rows, PreparedRows& y_rows, bool centre_from_y) {
  const at::ScalarType compute = distance_compute_dtype(x.scalar_type());
  at::Tensor xa, ya;
  if (metric == DistanceMetric::Cosine && cosine_augmented_rows(x, y, compute, xa, ya)) {
    // Rows of norm 1 by construction: no centre, norms exactly 1, and y's rows always their own
    // side (also for x against itself). A zero row then gets exactly 1 - 0 = 1 from any row.
    for (auto [rows, t] : {std::pair<PreparedRows*, const at::Tensor*>{&x_rows, &xa}, {&y_rows, &ya}}) {
      rows->orig = as_rows(*t, batch, compute);
      rows->centered = rows->orig;
      rows->norms = at::ones({batch, rows->orig.size(1)}, rows->orig.options());
    }
    return;
  }
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
  const bool y_only = centre_from_y && y.defined();
  at::Tensor sum = at::zeros({batch, 1, x_rows.orig.size(2)}, x_rows.orig.options().dtype(at::kDouble));
  int64_t count = 0;
  if (!y_only) {
    sum += row_sum_f64(x_rows.orig);
    count += x_rows.orig.size(1);
  }
  if (y.defined()) {
    sum += row_sum_f64(y_rows.orig);
    count += y_rows.orig.size(1);
  }
  const at::Tensor centre = (count > 0 ? sum / static_cast<double>(count) : sum).to(compute);
  auto finish = [&](PreparedRows& rows) {
    rows.centered = (rows.orig - centre).contiguous();
    rows.norms = squared_norms_f64(rows.centered).to(compute).contiguous();
  };
  finish(x_rows);
  if (y.defined()) finish(y_rows);
}

namespace {

// Whether some row may be shorter than kCosineNormEps: every entry of such a row is below it in
// magnitude (a necessary condition, exact in any dtype; the min and max are compared in double).
bool may_have_short_rows(const at::Tensor& t) {
  if (t.numel() == 0) {
    // no rows, or rows of no entries (D = 0: every row is a zero row)
    if (t.size(-1) != 0) return false;
    int64_t rows = 1;
    for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
    return rows > 0;
  }
  const auto minmax = at::aminmax(t, -1);
  const at::Tensor peak = at::maximum(std::get<1>(minmax).to(at::kDouble), std::get<0>(minmax).to(at::kDouble).neg());
  return peak.lt(kCosineNormEps).any().item<bool>();
}

}  // namespace

bool cosine_augmented_rows(const at::Tensor& x, const at::Tensor& y, at::ScalarType compute, at::Tensor& x_out,
                           at::Tensor& y_out) {
  if (!may_have_short_rows(x) && !(y.defined() && may_have_short_rows(y))) return false;
  // unit rows and the column that completes a short one to norm 1 (0 for the others), in double
  const auto unit_and_fill = [](const at::Tensor& t, at::Tensor& unit, at::Tensor& fill) {
    const at::Tensor d = t.to(at::kDouble);
    const at::Tensor norms = d.square().sum(-1, true).sqrt();
    unit = d / norms.clamp_min(kCosineNormEps);
    fill = (1 - unit.square().sum(-1, true)).clamp_min(0).sqrt() * norms.lt(kCosineNormEps);
  };
  at::Tensor xu, xf, yu, yf;
  unit_and_fill(x, xu, xf);
  if (y.defined()) {
    unit_and_fill(y, yu, yf);
  } else {
    yu = xu;
    yf = xf;
  }
  if (!(xf.gt(0).any().item<bool>() || yf.gt(0).any().item<bool>())) return false;
  x_out = at::cat({xu, xf, at::zeros_like(xf)}, -1).to(compute);
  y_out = at::cat({yu, at::zeros_like(yf), yf}, -1).to(compute);
  return true;
}

void check_finite_embeddings(const char* op, const at::Tensor& embeddings) {
  TORCH_CHECK_VALUE(at::isfinite(embeddings).all().item<bool>(), op,
                    ": embeddings must be finite (no NaN or infinity)");
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
