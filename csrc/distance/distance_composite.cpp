// Operators of the distance family built only on ATen operators, registered once for
// CompositeExplicitAutograd (CPU and CUDA alike): the backward of pairwise_distance and of
// pairwise_topk (batched matrix products through ATen's BLAS / cuBLAS), and the triplet and
// contrastive losses, which are O(B D) row operations (the O(N^2 D) work of a triplet loss is the
// mining, in the kernels of distance_cpu.cpp / distance_kernel.cu).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <limits>

#include "common/checks.h"
#include "distance/distance.h"
#include "distance/distance_checks.h"

namespace pyvision_ops {
namespace {

at::Tensor empty_grad(const at::Tensor& like) { return at::empty({0}, like.options()); }

// Gradients of one metric's value d(u, v) over paired rows (broadcasting leading dims) with
// respect to u and v, in the rows' dtype. `value` is d(u, v) itself (for euclidean and cosine).
struct PairGrads {
  at::Tensor du, dv;
};

at::Tensor clamped_norm(const at::Tensor& rows) {
  return rows.square().sum(-1, true).sqrt().clamp_min(kCosineNormEps);
}

PairGrads pair_grads(DistanceMetric metric, const at::Tensor& u, const at::Tensor& v, const at::Tensor& value) {
  switch (metric) {
    case DistanceMetric::SqEuclidean: {
      const at::Tensor g = 2 * (u - v);
      return {g, -g};
    }
    case DistanceMetric::Euclidean: {
      const at::Tensor d = value.unsqueeze(-1);
      const at::Tensor g = at::where(d > 0, (u - v) / d, at::zeros({}, u.options()));
      return {g, -g};
    }
    case DistanceMetric::Cosine: {
      // d = 1 - uh.vh with uh = u / max(|u|, eps): dd/du = -(vh - cos uh) / |u| where |u| > eps,
      // and -vh / eps where the norm is clamped (uh is then linear in u).
      const at::Tensor nu = clamped_norm(u), nv = clamped_norm(v);
      const at::Tensor uh = u / nu, vh = v / nv;
      const at::Tensor cos = (uh * vh).sum(-1, true);
      const at::Tensor clamped_u = u.square().sum(-1, true).sqrt() <= kCosineNormEps;
      const at::Tensor clamped_v = v.square().sum(-1, true).sqrt() <= kCosineNormEps;
      const at::Tensor du = at::where(clamped_u, -vh / nu, -(vh - cos * uh) / nu);
      const at::Tensor dv = at::where(clamped_v, -uh / nv, -(uh - cos * vh) / nv);
      return {du, dv};
    }
    case DistanceMetric::Dot: {
      // d(u, v) = u.v over broadcast rows: each side's gradient is the other row.
      const auto both = at::broadcast_tensors({u, v});
      return {both[1], both[0]};
    }
  }
  return {};
}

// --- pairwise_distance backward ----------------------------------------------------------------

// grad_x and grad_y of sum_ij G_ij d(x_i, y_j) for (B, N, D) x, (B, M, D) y, (B, N, M) G and
// values O, as batched products.
void pairwise_grads(DistanceMetric metric, const at::Tensor& G, const at::Tensor& O, const at::Tensor& X,
                    const at::Tensor& Y, bool need_x, bool need_y, at::Tensor& gx, at::Tensor& gy) {
  switch (metric) {
    case DistanceMetric::SqEuclidean:
    case DistanceMetric::Euclidean: {
      // d2: dd/dx_i = 2 (x_i - y_j); d: (x_i - y_j) / d_ij (0 at d_ij = 0).
      const at::Tensor W = metric == DistanceMetric::SqEuclidean
                               ? 2 * G
                               : at::where(O > 0, G / O, at::zeros({}, G.options()));
      if (need_x) gx = W.sum(-1, true) * X - at::bmm(W, Y);
      if (need_y) gy = W.sum(-2).unsqueeze(-1) * Y - at::bmm(W.transpose(1, 2), X);
      return;
    }
    case DistanceMetric::Dot:
      if (need_x) gx = at::bmm(G, Y);
      if (need_y) gy = at::bmm(G.transpose(1, 2), X);
      return;
    case DistanceMetric::Cosine: {
      const at::Tensor nx = clamped_norm(X), ny = clamped_norm(Y);
      const at::Tensor xh = X / nx, yh = Y / ny;
      const at::Tensor GC = G * (1 - O);  // G_ij cos_ij
      if (need_x) {
        const at::Tensor s = at::bmm(G, yh);
        const at::Tensor clamped = X.square().sum(-1, true).sqrt() <= kCosineNormEps;
        gx = at::where(clamped, -s / nx, -(s - GC.sum(-1, true) * xh) / nx);
      }
      if (need_y) {
        const at::Tensor s = at::bmm(G.transpose(1, 2), xh);
        const at::Tensor clamped = Y.square().sum(-1, true).sqrt() <= kCosineNormEps;
        gy = at::where(clamped, -s / ny, -(s - GC.sum(-2).unsqueeze(-1) * yh) / ny);
      }
      return;
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pairwise_distance_backward_composite(const at::Tensor& grad, const at::Tensor& x,
                                                              const c10::optional<at::Tensor>& y_opt,
                                                              const at::Tensor& out, c10::string_view metric_name,
                                                              std::array<bool, 2> mask) {
  constexpr const char* op = "pairwise_distance_backward";
  const at::Tensor y = y_opt.has_value() ? *y_opt : at::Tensor();
  const DistanceMetric metric = parse_distance_metric(op, metric_name);
  const int64_t batch = check_pairwise_inputs(op, x, y);
  check_pairwise_backward_inputs(op, grad, out, x, y);
  const int64_t n = x.size(-2), dim = x.size(-1), m = y.defined() ? y.size(-2) : n;
  const at::ScalarType compute = distance_compute_dtype(x.scalar_type());
  const at::Tensor X = x.reshape({batch, n, dim}).to(compute);
  const at::Tensor Y = y.defined() ? y.reshape({batch, m, dim}).to(compute) : X;
  const at::Tensor G = grad.reshape({batch, n, m}).to(compute);
  const at::Tensor O = out.reshape({batch, n, m}).to(compute);
  at::Tensor gx, gy;
  if (!y.defined()) {
    if (!mask[0]) return {empty_grad(x), empty_grad(x)};
    // x against itself: x_i is both a row and a column.
    pairwise_grads(metric, G, O, X, X, true, true, gx, gy);
    return {(gx + gy).to(x.scalar_type()).reshape(x.sizes()).contiguous(), empty_grad(x)};
  }
  if (batch * n * m == 0) {
    return {mask[0] ? at::zeros(x.sizes(), x.options()) : empty_grad(x),
            mask[1] ? at::zeros(y.sizes(), y.options()) : empty_grad(y)};
  }
  pairwise_grads(metric, G, O, X, Y, mask[0], mask[1], gx, gy);
  return {mask[0] ? gx.to(x.scalar_type()).reshape(x.sizes()).contiguous() : empty_grad(x),
          mask[1] ? gy.to(y.scalar_type()).reshape(y.sizes()).contiguous() : empty_grad(y)};
}

namespace {

// --- pairwise_topk backward --------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> pairwise_topk_backward(const at::Tensor& grad_values, const at::Tensor& x,
                                                          const at::Tensor& y, const at::Tensor& indices,
                                                          c10::string_view metric_name, std::array<bool, 2> mask) {
  constexpr const char* op = "pairwise_topk_backward";
  const DistanceMetric metric = parse_distance_metric(op, metric_name);
  const int64_t batch = check_pairwise_inputs(op, x, y);
  const int64_t n = x.size(-2), m = y.size(-2), dim = x.size(-1), k = indices.size(-1);
  const at::ScalarType compute = distance_compute_dtype(x.scalar_type());
  const at::Tensor X = x.reshape({batch, n, dim}).to(compute);
  const at::Tensor Y = y.reshape({batch, m, dim}).to(compute);
  const at::Tensor I = indices.reshape({batch, n * k});
  const at::Tensor G = grad_values.reshape({batch, n, k}).to(compute).unsqueeze(-1);
  // The chosen rows of y, (B, N, k, D), and each pair's value again (exact form).
  const at::Tensor Yk = at::gather(Y, 1, I.unsqueeze(-1).expand({batch, n * k, dim})).reshape({batch, n, k, dim});
  const at::Tensor Xk = X.unsqueeze(2);
  at::Tensor value;
  if (metric == DistanceMetric::Euclidean) value = (Xk - Yk).square().sum(-1).sqrt();
  if (metric == DistanceMetric::Cosine) value = at::zeros({}, X.options());
  const PairGrads g = pair_grads(metric, Xk, Yk, value);
  at::Tensor gx = empty_grad(x), gy = empty_grad(y);
  if (mask[0]) gx = (G * g.du).sum(2).to(x.scalar_type()).reshape(x.sizes()).contiguous();
  if (mask[1]) {
    const at::Tensor contrib = (G * g.dv).reshape({batch, n * k, dim});
    gy = at::zeros({batch, m, dim}, X.options()).scatter_add_(1, I.unsqueeze(-1).expand({batch, n * k, dim}), contrib);
    gy = gy.to(y.scalar_type()).reshape(y.sizes()).contiguous();
  }
  return {gx, gy};
}

// --- triplet and contrastive losses ------------------------------------------------------------

// d(u, v) of the triplet loss: torch.nn.functional.pairwise_distance's ||u - v + eps|| for the
// euclidean forms.
at::Tensor triplet_distance(DistanceMetric metric, const at::Tensor& u, const at::Tensor& v, double eps) {
  switch (metric) {
    case DistanceMetric::SqEuclidean: return (u - v + eps).square().sum(-1);
    case DistanceMetric::Euclidean: return (u - v + eps).square().sum(-1).sqrt();
    case DistanceMetric::Cosine: return 1 - ((u / clamped_norm(u)) * (v / clamped_norm(v))).sum(-1);
    case DistanceMetric::Dot: break;
  }
  TORCH_CHECK_VALUE(false, "triplet_margin_loss: metric must be 'sqeuclidean', 'euclidean' or 'cosine', got 'dot'");
}

PairGrads triplet_distance_grads(DistanceMetric metric, const at::Tensor& u, const at::Tensor& v, double eps,
                                 const at::Tensor& value) {
  if (metric == DistanceMetric::Cosine) return pair_grads(metric, u, v, value);
  const at::Tensor diff = u - v + eps;
  if (metric == DistanceMetric::SqEuclidean) return {2 * diff, -2 * diff};
  const at::Tensor d = value.unsqueeze(-1);
  const at::Tensor g = at::where(d > 0, diff / d, at::zeros({}, diff.options()));
  return {g, -g};
}

void check_triplet_rows(const char* op, const at::Tensor& a, const at::Tensor& p, const at::Tensor& n) {
  check_floating(a, op, "anchor");
  TORCH_CHECK_VALUE(a.dim() == 1 || a.dim() == 2, op, ": anchor must be (B, D) or (D,), got shape ",
                    shape_string(a.sizes()));
  TORCH_CHECK_VALUE(p.sizes() == a.sizes() && n.sizes() == a.sizes(), op,
                    ": anchor, positive and negative must have the same shape, got ", shape_string(a.sizes()), ", ",
                    shape_string(p.sizes()), " and ", shape_string(n.sizes()));
  TORCH_CHECK(p.scalar_type() == a.scalar_type() && n.scalar_type() == a.scalar_type(), op,
              ": anchor, positive and negative must have the same dtype, got ", a.scalar_type(), ", ",
              p.scalar_type(), " and ", n.scalar_type());
  check_same_device(a, p, op, "anchor", "positive");
  check_same_device(a, n, op, "anchor", "negative");
}

void check_reduction(const char* op, int64_t reduction) {
  TORCH_CHECK_VALUE(reduction >= 0 && reduction <= 2, op, ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ",
                    reduction);
}

at::Tensor reduce_loss(const at::Tensor& per_item, int64_t reduction) {
  if (reduction == 0) return per_item;
  const at::Tensor total = per_item.sum();
  if (reduction == 2) return total;
  return per_item.numel() > 0 ? total / static_cast<double>(per_item.numel()) : total;
}

// The upstream gradient of each item of a reduced loss.
at::Tensor item_weights(const at::Tensor& grad, const at::Tensor& like_items, int64_t reduction) {
  if (reduction == 0) return grad;
  const int64_t count = like_items.numel();
  const at::Tensor g = reduction == 1 && count > 0 ? grad / static_cast<double>(count) : grad;
  return g.expand_as(like_items);
}

struct TripletTerms {
  at::Tensor d_ap, d_an, d_pn, use_pn, per_item;
};

TripletTerms triplet_terms(DistanceMetric metric, const at::Tensor& a, const at::Tensor& p, const at::Tensor& n,
                           double margin, double eps, bool swap, bool soft) {
  TripletTerms t;
  t.d_ap = triplet_distance(metric, a, p, eps);
  t.d_an = triplet_distance(metric, a, n, eps);
  at::Tensor d_neg = t.d_an;
  if (swap) {
    t.d_pn = triplet_distance(metric, p, n, eps);
    t.use_pn = t.d_pn < t.d_an;
    d_neg = at::where(t.use_pn, t.d_pn, t.d_an);
  }
  t.per_item = soft ? at::softplus(t.d_ap - d_neg) : at::clamp_min(t.d_ap - d_neg + margin, 0);
  return t;
}

at::Tensor triplet_loss(const at::Tensor& a, const at::Tensor& p, const at::Tensor& n, double margin,
                        c10::string_view metric_name, double eps, bool swap, bool soft, int64_t reduction) {
  constexpr const char* op = "triplet_margin_loss";
  const DistanceMetric metric = parse_distance_metric(op, metric_name);
  check_triplet_rows(op, a, p, n);
  check_reduction(op, reduction);
  const at::ScalarType compute = distance_compute_dtype(a.scalar_type());
  const TripletTerms t = triplet_terms(metric, a.to(compute), p.to(compute), n.to(compute), margin, eps, swap, soft);
  return reduce_loss(t.per_item, reduction).to(a.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> triplet_loss_backward(const at::Tensor& grad, const at::Tensor& a_in,
                                                                     const at::Tensor& p_in, const at::Tensor& n_in,
                                                                     double margin, c10::string_view metric_name,
                                                                     double eps, bool swap, bool soft,
                                                                     int64_t reduction) {
  constexpr const char* op = "triplet_margin_loss_backward";
  const DistanceMetric metric = parse_distance_metric(op, metric_name);
  check_triplet_rows(op, a_in, p_in, n_in);
  check_reduction(op, reduction);
  const at::ScalarType compute = distance_compute_dtype(a_in.scalar_type());
  const at::Tensor a = a_in.to(compute), p = p_in.to(compute), n = n_in.to(compute);
  const TripletTerms t = triplet_terms(metric, a, p, n, margin, eps, swap, soft);
  const at::Tensor w = item_weights(grad.to(compute), t.per_item, reduction);
  at::Tensor d_neg = swap ? at::where(t.use_pn, t.d_pn, t.d_an) : t.d_an;
  // d loss_i / d (d_ap - d_neg): the hinge's step, or softplus' sigmoid.
  const at::Tensor slope = soft ? at::sigmoid(t.d_ap - d_neg) : (t.d_ap - d_neg + margin > 0).to(compute);
  const at::Tensor c = (w * slope).unsqueeze(-1);
  const PairGrads ap = triplet_distance_grads(metric, a, p, eps, t.d_ap);
  const PairGrads an = triplet_distance_grads(metric, a, n, eps, t.d_an);
  at::Tensor ga = c * ap.du, gp = c * ap.dv, gn = at::zeros_like(a);
  if (swap) {
    const PairGrads pn = triplet_distance_grads(metric, p, n, eps, t.d_pn);
    const at::Tensor use = t.use_pn.unsqueeze(-1);
    ga = ga - at::where(use, at::zeros({}, a.options()), c * an.du);
    gp = gp - at::where(use, c * pn.du, at::zeros({}, a.options()));
    gn = -at::where(use, c * pn.dv, c * an.dv);
  } else {
    ga = ga - c * an.du;
    gn = -c * an.dv;
  }
  return {ga.to(a_in.scalar_type()).contiguous(), gp.to(p_in.scalar_type()).contiguous(),
          gn.to(n_in.scalar_type()).contiguous()};
}

}  // namespace

at::Tensor triplet_loss_indexed_composite(const at::Tensor& embeddings, const at::Tensor& a, const at::Tensor& p,
                                          const at::Tensor& n, double margin, c10::string_view metric_name,
                                          bool soft) {
  constexpr const char* op = "batch_hard_triplet_loss";
  const DistanceMetric metric = parse_distance_metric(op, metric_name);
  check_indexed_triplets(op, embeddings, a, p, n);
  const at::ScalarType compute = distance_compute_dtype(embeddings.scalar_type());
  const at::Tensor e = embeddings.to(compute);
  const TripletTerms t = triplet_terms(metric, e.index_select(0, a), e.index_select(0, p), e.index_select(0, n),
                                       margin, 0.0, false, soft);
  return reduce_loss(t.per_item, 1).to(embeddings.scalar_type());
}

at::Tensor triplet_loss_indexed_backward_composite(const at::Tensor& grad, const at::Tensor& embeddings,
                                                   const at::Tensor& a, const at::Tensor& p, const at::Tensor& n,
                                                   double margin, c10::string_view metric_name, bool soft) {
  constexpr const char* op = "batch_hard_triplet_loss_backward";
  check_indexed_triplets(op, embeddings, a, p, n);
  at::Tensor ga, gp, gn;
  const at::ScalarType compute = distance_compute_dtype(embeddings.scalar_type());
  const at::Tensor e = embeddings.to(compute);
  std::tie(ga, gp, gn) = triplet_loss_backward(grad, e.index_select(0, a), e.index_select(0, p), e.index_select(0, n),
                                               margin, metric_name, 0.0, false, soft, 1);
  at::Tensor g = at::zeros(e.sizes(), e.options());
  g.index_add_(0, a, ga).index_add_(0, p, gp).index_add_(0, n, gn);
  return g.to(embeddings.scalar_type());
}

namespace {

void check_contrastive(const char* op, const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& same) {
  check_floating(x1, op, "x1");
  TORCH_CHECK_VALUE(x1.dim() == 1 || x1.dim() == 2, op, ": x1 must be (B, D) or (D,), got shape ",
                    shape_string(x1.sizes()));
  TORCH_CHECK_VALUE(x2.sizes() == x1.sizes(), op, ": x1 and x2 must have the same shape, got ",
                    shape_string(x1.sizes()), " and ", shape_string(x2.sizes()));
  TORCH_CHECK(x2.scalar_type() == x1.scalar_type(), op, ": x1 and x2 must have the same dtype, got ",
              x1.scalar_type(), " and ", x2.scalar_type());
  check_same_device(x1, x2, op, "x1", "x2");
  check_same_device(x1, same, op, "x1", "same");
  const int64_t b = x1.dim() == 2 ? x1.size(0) : 1;
  TORCH_CHECK_VALUE(same.numel() == b && same.dim() <= 1, op, ": same must have one entry per pair (", b,
                    "), got shape ", shape_string(same.sizes()));
}

at::Tensor contrastive_loss(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& same, double margin,
                            int64_t reduction) {
  constexpr const char* op = "contrastive_loss";
  check_contrastive(op, x1, x2, same);
  check_reduction(op, reduction);
  const at::ScalarType compute = distance_compute_dtype(x1.scalar_type());
  const at::Tensor d2 = (x1.to(compute) - x2.to(compute)).square().sum(-1);
  const at::Tensor y = same.to(compute).reshape(d2.sizes());
  const at::Tensor per_item = y * d2 + (1 - y) * at::clamp_min(margin * margin - d2, 0);
  return reduce_loss(per_item, reduction).to(x1.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> contrastive_loss_backward(const at::Tensor& grad, const at::Tensor& x1,
                                                             const at::Tensor& x2, const at::Tensor& same,
                                                             double margin, int64_t reduction) {
  constexpr const char* op = "contrastive_loss_backward";
  check_contrastive(op, x1, x2, same);
  check_reduction(op, reduction);
  const at::ScalarType compute = distance_compute_dtype(x1.scalar_type());
  const at::Tensor diff = x1.to(compute) - x2.to(compute);
  const at::Tensor d2 = diff.square().sum(-1);
  const at::Tensor y = same.to(compute).reshape(d2.sizes());
  const at::Tensor w = item_weights(grad.to(compute), d2, reduction);
  // d loss / d d2 = y - (1 - y) [margin^2 > d2]; d d2 / d x1 = 2 diff.
  const at::Tensor slope = y - (1 - y) * (margin * margin - d2 > 0).to(compute);
  const at::Tensor g = (2 * w * slope).unsqueeze(-1) * diff;
  return {g.to(x1.scalar_type()).contiguous(), (-g).to(x2.scalar_type()).contiguous()};
}

}  // namespace

namespace {

// The k-means assignment on any device: pairwise_topk(x, centroids, 1) through the dispatcher
// (on CUDA the family's fused top-k kernel). The CPU kernel (distance_cpu.cpp) takes precedence.
std::tuple<at::Tensor, at::Tensor> kmeans_assign_composite(const at::Tensor& x, const at::Tensor& centroids) {
  check_kmeans_assign_inputs("kmeans", x, centroids);
  static const auto topk = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("pyvision_ops::pairwise_topk", "")
                               .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t,
                                                                        c10::string_view, bool)>();
  auto [values, indices] = topk.call(x, centroids, 1, "sqeuclidean", false);
  return {indices.squeeze(-1), values.squeeze(-1)};
}

}  // namespace

// Every gradient these kernels return is contiguous, whatever the inputs' strides: the fake
// kernels (pyvision_ops/ops/distance.py) promise that layout to torch.compile.
TORCH_LIBRARY_IMPL(pyvision_ops, CompositeExplicitAutograd, m) {
  m.impl("_kmeans_assign", &kmeans_assign_composite);
  m.impl("_pairwise_distance_backward", &pairwise_distance_backward_composite);
  m.impl("_pairwise_topk_backward", &pairwise_topk_backward);
  m.impl("_triplet_loss", &triplet_loss);
  m.impl("_triplet_loss_backward", &triplet_loss_backward);
  m.impl("_triplet_loss_indexed", &triplet_loss_indexed_composite);
  m.impl("_triplet_loss_indexed_backward", &triplet_loss_indexed_backward_composite);
  m.impl("_contrastive_loss", &contrastive_loss);
  m.impl("_contrastive_loss_backward", &contrastive_loss_backward);
}

}  // namespace pyvision_ops
