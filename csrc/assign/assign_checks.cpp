// Checks and batch layout shared by the CPU and CUDA kernels of linear_sum_assignment.
#include "assign/assign_checks.h"

#include <c10/util/Exception.h>

#include <limits>

#include "common/checks.h"

namespace pyvision_ops {
namespace {

constexpr int64_t kMaxSide = std::numeric_limits<int32_t>::max() - 1;

at::Tensor solver_cost(const char* op, const at::Tensor& cost, bool maximize) {
  TORCH_CHECK_TYPE(cost.scalar_type() != at::kBool && !cost.is_complex(), op,
                   ": cost must be a real floating or integer tensor, got dtype ", cost.scalar_type());
  at::Tensor c = cost;
  if (c.scalar_type() == at::kHalf || c.scalar_type() == at::kBFloat16) {
    c = c.to(at::kFloat);
  } else if (!c.is_floating_point()) {
    c = c.to(at::kDouble);  // integers up to 2^53 are exact in float64
  }
  // The solver reads rows contiguously; maximizing solves the negated matrix (SciPy's rule, so
  // -inf then forbids a pair and +inf is invalid). Both give a new tensor, never the caller's.
  return maximize ? c.neg().contiguous() : c.contiguous();
}

void check_side(const char* op, int64_t side, const char* what) {
  TORCH_CHECK_VALUE(side <= kMaxSide, op, ": ", what, " must be < 2^31, got ", side);
}

}  // namespace

AssignBatch prepare_assign_dense(const char* op, const at::Tensor& cost, bool maximize) {
  TORCH_CHECK_VALUE(cost.dim() == 2 || cost.dim() == 3, op, ": cost must be 2-D (N, M) or 3-D (B, N, M), got ",
                    cost.dim(), "-D tensor of shape ", shape_string(cost.sizes()));
  AssignBatch batch;
  batch.cost = solver_cost(op, cost, maximize);
  const bool batched = cost.dim() == 3;
  const int64_t b = batched ? cost.size(0) : 1;
  const int64_t n = cost.size(-2), m = cost.size(-1);
  check_side(op, n, "the number of rows");
  check_side(op, m, "the number of columns");
  const int64_t k = std::min(n, m);
  const auto index_options = cost.options().dtype(at::kLong);
  batch.rows = batched ? at::empty({b, k}, index_options) : at::empty({k}, index_options);
  batch.cols = at::empty_like(batch.rows);
  if (n * m == 0) return batch;  // nothing to solve (K = 0, or no problems)
  batch.problems.reserve(static_cast<size_t>(b));
  for (int64_t p = 0; p < b; ++p) {
    batch.problems.push_back(AssignProblem{p * n * m, p * k, static_cast<int32_t>(n), static_cast<int32_t>(m), 0});
  }
  return batch;
}

AssignBatch prepare_assign_packed(const char* op, const at::Tensor& costs, c10::IntArrayRef shapes,
                                  bool maximize) {
  TORCH_CHECK_VALUE(costs.dim() == 1, op, ": costs must be 1-D (the matrices concatenated), got ", costs.dim(),
                    "-D tensor of shape ", shape_string(costs.sizes()));
  TORCH_CHECK_VALUE(shapes.size() % 2 == 0, op, ": shapes must list (rows, cols) pairs, got ", shapes.size(),
                    " values");
  AssignBatch batch;
  batch.cost = solver_cost(op, costs, maximize);
  int64_t elements = 0, results = 0;
  const size_t count = shapes.size() / 2;
  batch.problems.reserve(count);
  for (size_t p = 0; p < count; ++p) {
    const int64_t n = shapes[2 * p], m = shapes[2 * p + 1];
    TORCH_CHECK_VALUE(n >= 0 && m >= 0, op, ": shapes must be non-negative, got (", n, ", ", m, ") for problem ",
                      p);
    check_side(op, n, "the number of rows");
    check_side(op, m, "the number of columns");
    if (n * m > 0) {
      batch.problems.push_back(AssignProblem{elements, results, static_cast<int32_t>(n), static_cast<int32_t>(m), 0});
    }
    elements += n * m;
    results += std::min(n, m);
  }
  TORCH_CHECK_VALUE(elements == costs.numel(), op, ": costs has ", costs.numel(),
                    " elements but shapes describe ", elements);
  const auto index_options = costs.options().dtype(at::kLong);
  batch.rows = at::empty({results}, index_options);
  batch.cols = at::empty({results}, index_options);
  return batch;
}

void raise_assign_status(const char* op, const int32_t* status, int64_t count) {
  int32_t worst = kAssignOk;
  int64_t where = -1;
  for (int64_t p = 0; p < count; ++p) {
    if (status[p] > worst) {
      worst = status[p];
      where = p;
    }
  }
  // SciPy's messages, so code that matches on them keeps working.
  TORCH_CHECK_VALUE(worst != kAssignInvalid, "matrix contains invalid numeric entries (", op, ": problem ", where,
                    " has a NaN, or a -inf (+inf when maximize=True))");
  TORCH_CHECK_VALUE(worst != kAssignInfeasible, "cost matrix is infeasible (", op, ": problem ", where,
                    " has no complete matching that avoids the forbidden +inf pairs)");
}

}  // namespace pyvision_ops
