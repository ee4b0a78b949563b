// The CPU solver (assign_jv.h, with every transpose variant of assign_cpu_simd.cpp) against the CUDA
// kernel's algorithm (assign_sap_team.h, run by a team of one) on random problems: uniform, integer
// ties, +inf patterns, 1e30 costs, NaN/-inf. Statuses must agree and totals must match.
// Built with AddressSanitizer/UBSan by tests/test_assign_cpp.py.
#include "assign/assign_jv.h"
#include "assign/assign_sap_team.h"
#include <cstdio>
#include <cstdlib>
#include <random>
using namespace pyvision_ops;
template <typename T>
int solve_jv(const std::vector<T>& c, int rows, int cols, lap::Workspace& ws, std::vector<int64_t>& ro, std::vector<int64_t>& co, int variant) {
  const bool tr = rows > cols; int n = tr ? cols : rows, m = tr ? rows : cols;
  const T* wide = c.data(); const lap::RowMin2* mins = nullptr;
  std::vector<T> t((size_t)rows * cols);
  ws.reserve(n, m);
  if (tr) {
    bool bad;
    if constexpr (std::is_same_v<T, double>) {
      if (variant == 0) { bad = lap::transpose_check_min_rows_avx2(c.data(), rows, cols, t.data(), ws.row_minima.data(), ws.min_value.data(), ws.min_row.data()); mins = ws.row_minima.data(); }
      else if (variant == 1) bad = lap::transpose_check_portable(c.data(), rows, cols, t.data());
      else bad = lap::transpose_check(c.data(), rows, cols, t.data());
    } else {
      if (variant == 1) { bad = lap::transpose_check_min_avx2(c.data(), rows, cols, t.data(), ws.row_minima.data()); mins = ws.row_minima.data(); }
      else bad = lap::transpose_check(c.data(), rows, cols, t.data());
    }
    if (bad) return kAssignInvalid;
    wide = t.data();
  } else if (lap::any_invalid(c.data(), (int64_t)rows * cols)) return kAssignInvalid;
  lap::Solver<T> s(wide, n, m, ws, mins);
  int st = s.solve(); if (st) return st;
  ro.resize(n); co.resize(n); std::vector<int32_t> scratch(m);
  assign_write_result(ws.x.data(), n, tr, rows, scratch.data(), ro.data(), co.data());
  return 0;
}
template <typename T>
int solve_sap(const std::vector<T>& c, int rows, int cols, std::vector<int64_t>& ro, std::vector<int64_t>& co) {
  const bool tr = rows > cols; int n = tr ? cols : rows, m = tr ? rows : cols;
  SapWorkspace ws = sap_workspace_layout(n, m);
  std::vector<double> d(ws.doubles); std::vector<int32_t> iv(ws.ints); ws.bind(d.data(), iv.data());
  SequentialTeam team; int st = sap_solve(team, c.data(), cols, tr, n, m, ws); if (st) return st;
  ro.resize(n); co.resize(n);
  assign_write_result(ws.col4row, n, tr, rows, ws.scratch_rows, ro.data(), co.data());
  return 0;
}
template <typename T>
int run(int iters, int max_side) {
  std::mt19937_64 g(7); lap::Workspace ws; int bad = 0;
  for (int it = 0; it < iters; ++it) {
    int rows = 1 + g() % max_side, cols = 1 + g() % max_side, kind = g() % 5;
    std::vector<T> c((size_t)rows * cols);
    for (auto& x : c) {
      switch (kind) {
        case 0: x = (T)std::uniform_real_distribution<double>(0, 1)(g); break;
        case 1: x = (T)(g() % 4); break;
        case 2: x = (g() % 4 == 0) ? (T)INFINITY : (T)(g() % 10); break;
        case 3: x = (T)((g() % 3 == 0) ? 1e30 : (double)(g() % 100)); break;
        default: x = (g() % 200 == 0) ? (T)NAN : (g() % 300 == 0 ? (T)-INFINITY : (T)std::uniform_real_distribution<double>(-5, 5)(g)); break;
      }
    }
    std::vector<int64_t> r1, c1, r2, c2;
    int s2 = solve_sap(c, rows, cols, r2, c2);
    for (int variant = 0; variant < 3; ++variant) {
      int s1 = solve_jv(c, rows, cols, ws, r1, c1, variant);
      if (s1 != s2) { ++bad; printf("status mismatch %d vs %d (kind %d %dx%d v%d)\n", s1, s2, kind, rows, cols, variant); continue; }
      if (s1) continue;
      double t1 = 0, t2 = 0;
      for (size_t k = 0; k < r1.size(); ++k) t1 += (double)c[r1[k] * cols + c1[k]];
      for (size_t k = 0; k < r2.size(); ++k) t2 += (double)c[r2[k] * cols + c2[k]];
      double tol = 1e-9 * std::max(1.0, std::abs(t2)) + (sizeof(T) == 4 ? 1e-4 * std::max(1.0, std::abs(t2)) : 0);
      if (std::abs(t1 - t2) > tol) { ++bad; printf("total mismatch %g vs %g (kind %d %dx%d v%d)\n", t1, t2, kind, rows, cols, variant); }
    }
  }
  return bad;
}
int main(int argc, char** argv) {
  const int iters = argc > 1 ? atoi(argv[1]) : 2000;
  int b = run<double>(iters, 40) + run<float>(iters, 40) + run<double>(iters / 20, 300) + run<float>(iters / 20, 300);
  printf("bad %d\n", b);
  return b != 0;
}
