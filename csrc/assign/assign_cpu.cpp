// CPU kernels of linear_sum_assignment: the Jonker-Volgenant solver (assign_jv.h) run over the
// problems of a batch with at::parallel_for, one workspace per thread and call; plus the CPU run
// of the CUDA kernel's algorithm (assign_sap_team.h), used by the tests.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "assign/assign.h"
#include "assign/assign_checks.h"
#include "assign/assign_jv.h"
#include "assign/assign_sap_team.h"

namespace pyvision_ops {
namespace {

template <typename T>
std::vector<T>& transpose_buffer(lap::Workspace& ws);
template <>
std::vector<double>& transpose_buffer<double>(lap::Workspace& ws) {
  return ws.transposed;
}
template <>
std::vector<float>& transpose_buffer<float>(lap::Workspace& ws) {
  return ws.transposed_f;
}

// Solves problem `p` with the JV solver; returns its status.
template <typename T>
int32_t solve_one_jv(const T* base, const AssignProblem& p, lap::Workspace& ws, int64_t* rows_out,
                     int64_t* cols_out) {
  const T* c = base + p.cost_offset;
  const int64_t count = static_cast<int64_t>(p.rows) * p.cols;
  const bool transposed = p.rows > p.cols;
  const int32_t n = transposed ? p.cols : p.rows, m = transposed ? p.rows : p.cols;
  const T* wide = c;
  const lap::RowMin2* row_minima = nullptr;
  if (transposed) {  // solve on the transpose, stored with contiguous rows (checked on the way)
    std::vector<T>& t = transpose_buffer<T>(ws);
    if (t.size() < static_cast<size_t>(count)) t.resize(static_cast<size_t>(count));
    ws.reserve(n, m);
    bool invalid;
    // The rows' minima come with the transpose and seed the solver's greedy start. float64 reads
    // the source in its row order with the minima in scratch (streams from memory: measured 61 us
    // vs 105 us per 300x100 problem for column-block order); float32 uses column blocks on
    // cache-sized problems and lets the solver scan the transposed rows otherwise.
    constexpr int64_t kFusedMinimaMaxEntries = 8192;
    const lap::LapKernels<T>& kernels = lap::lap_kernels<T>();
    if (kernels.transpose_check_min_rows != nullptr) {
      invalid = kernels.transpose_check_min_rows(c, p.rows, p.cols, t.data(), ws.row_minima.data(),
                                                 ws.min_value.data(), ws.min_row.data());
      row_minima = ws.row_minima.data();
    } else if (kernels.transpose_check_min != nullptr && count <= kFusedMinimaMaxEntries) {
      invalid = kernels.transpose_check_min(c, p.rows, p.cols, t.data(), ws.row_minima.data());
      row_minima = ws.row_minima.data();
    } else {
      invalid = kernels.transpose_check(c, p.rows, p.cols, t.data());
    }
    if (invalid) return kAssignInvalid;
    wide = t.data();
  } else if (lap::any_invalid(c, count)) {
    return kAssignInvalid;
  }
  ws.reserve(n, m);
  lap::Solver<T> solver(wide, n, m, ws, row_minima);
  const int32_t status = solver.solve();
  if (status != kAssignOk) return status;
  assign_write_result(ws.x.data(), n, transposed, p.rows, ws.row_of_stored.data(), rows_out + p.out_offset,
                      cols_out + p.out_offset);
  return kAssignOk;
}

// The CUDA kernel's algorithm, run by one CPU thread (a team of one).
template <typename T>
int32_t solve_one_team(const T* base, const AssignProblem& p, std::vector<double>& scratch_d,
                       std::vector<int32_t>& scratch_i, int64_t* rows_out, int64_t* cols_out) {
  const T* c = base + p.cost_offset;  // sap_solve checks the entries itself
  const bool transposed = p.rows > p.cols;
  const int32_t n = transposed ? p.cols : p.rows, m = transposed ? p.rows : p.cols;
  SapWorkspace ws = sap_workspace_layout(n, m);
  if (scratch_d.size() < ws.doubles) scratch_d.resize(ws.doubles);
  if (scratch_i.size() < ws.ints) scratch_i.resize(ws.ints);
  ws.bind(scratch_d.data(), scratch_i.data());
  SequentialTeam team;
  const int32_t status = sap_solve(team, c, p.cols, transposed, n, m, ws);
  if (status != kAssignOk) return status;
  assign_write_result(ws.col4row, n, transposed, p.rows, ws.scratch_rows, rows_out + p.out_offset,
                      cols_out + p.out_offset);
  return kAssignOk;
}

// One workspace per thread, kept between calls (small batches spend as long allocating a fresh
// one as solving); Workspace::trim gives back what a large problem left behind.
lap::Workspace& thread_workspace() {
  static thread_local lap::Workspace workspace;
  return workspace;
}

// Problems per task: enough cost entries (a rough proxy for the work) that waking a second
// thread pays; a small batch runs on the calling thread.
int64_t problems_per_task(const AssignBatch& batch) {
  constexpr int64_t kEntriesPerTask = 32768;
  int64_t entries = 0;
  for (const AssignProblem& p : batch.problems) entries += static_cast<int64_t>(p.rows) * p.cols;
  const int64_t count = static_cast<int64_t>(batch.problems.size());
  const int64_t mean = std::max<int64_t>(1, entries / std::max<int64_t>(1, count));
  return std::max<int64_t>(1, kEntriesPerTask / mean);
}

template <typename T>
void solve_batch_jv(const AssignBatch& batch, int32_t* status) {
  const T* base = batch.cost.const_data_ptr<T>();
  int64_t* rows = batch.rows.mutable_data_ptr<int64_t>();
  int64_t* cols = batch.cols.mutable_data_ptr<int64_t>();
  const int64_t count = static_cast<int64_t>(batch.problems.size());
  at::parallel_for(0, count, problems_per_task(batch), [&](int64_t begin, int64_t end) {
    lap::Workspace& ws = thread_workspace();
    for (int64_t p = begin; p < end; ++p) status[p] = solve_one_jv<T>(base, batch.problems[p], ws, rows, cols);
    ws.trim();
  });
}

template <typename T>
void solve_batch_team(const AssignBatch& batch, int32_t* status) {
  const T* base = batch.cost.const_data_ptr<T>();
  int64_t* rows = batch.rows.mutable_data_ptr<int64_t>();
  int64_t* cols = batch.cols.mutable_data_ptr<int64_t>();
  const int64_t count = static_cast<int64_t>(batch.problems.size());
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> scratch_d;
    std::vector<int32_t> scratch_i;
    for (int64_t p = begin; p < end; ++p) {
      status[p] = solve_one_team<T>(base, batch.problems[p], scratch_d, scratch_i, rows, cols);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> run(const char* op, AssignBatch batch, bool team) {
  const int64_t count = static_cast<int64_t>(batch.problems.size());
  if (count == 0) return {batch.rows, batch.cols};
  std::vector<int32_t> status(static_cast<size_t>(count), kAssignOk);
  if (batch.cost.scalar_type() == at::kDouble) {
    team ? solve_batch_team<double>(batch, status.data()) : solve_batch_jv<double>(batch, status.data());
  } else {
    team ? solve_batch_team<float>(batch, status.data()) : solve_batch_jv<float>(batch, status.data());
  }
  raise_assign_status(op, status.data(), count);
  return {batch.rows, batch.cols};
}

std::tuple<at::Tensor, at::Tensor> linear_sum_assignment_cpu(const at::Tensor& cost, bool maximize) {
  constexpr const char* op = "linear_sum_assignment";
  return run(op, prepare_assign_dense(op, cost, maximize), false);
}

std::tuple<at::Tensor, at::Tensor> linear_sum_assignment_packed_cpu(const at::Tensor& costs,
                                                                     c10::IntArrayRef shapes, bool maximize) {
  constexpr const char* op = "linear_sum_assignment";
  return run(op, prepare_assign_packed(op, costs, shapes, maximize), false);
}

std::tuple<at::Tensor, at::Tensor> linear_sum_assignment_team_reference_cpu(const at::Tensor& cost, bool maximize) {
  constexpr const char* op = "_linear_sum_assignment_team_reference";
  return run(op, prepare_assign_dense(op, cost, maximize), true);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyvision_ops, CPU, m) {
  m.impl("linear_sum_assignment", &linear_sum_assignment_cpu);
  m.impl("_linear_sum_assignment_packed", &linear_sum_assignment_packed_cpu);
  m.impl("_linear_sum_assignment_team_reference", &linear_sum_assignment_team_reference_cpu);
}

}  // namespace pyvision_ops
