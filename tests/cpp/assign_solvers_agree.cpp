// The CPU solver (assign_jv.h, with every transpose variant of assign_cpu_simd.cpp) against the CUDA
// kernel's algorithm (assign_sap_team.h, run by a team of one) on random problems: uniform, integer
// ties, +inf patterns, 1e30 costs, NaN/-inf. Statuses must agree and totals must match. The team
// algorithm also runs with teams of 3 and 4 threads (std::barrier for __syncthreads, an arg-min
// over per-member slots as the block's), which must give the team of one's assignment exactly:
// the strided loops, the ownership of columns by j % size and the barriers the GPU relies on.
// Built with AddressSanitizer/UBSan by tests/test_assign_cpp.py.
#include "assign/assign_jv.h"
#include "assign/assign_sap_team.h"
#include <barrier>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>
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
// A team of `size` threads, as a CUDA block runs sap_solve: every member calls every team function.
struct TeamState {
  explicit TeamState(int size) : barrier(size), slots(size), flags(size) {}
  std::barrier<> barrier;
  std::vector<SapCandidate> slots;
  std::vector<char> flags;
};
struct ThreadTeam {
  TeamState* state; int member, members;
  int rank() const { return member; }
  int size() const { return members; }
  bool leader() const { return member == 0; }
  void sync() { state->barrier.arrive_and_wait(); }
  SapCandidate reduce_min(const SapCandidate& c) {
    state->slots[member] = c; sync();
    SapCandidate best = sap_no_candidate();
    for (const SapCandidate& s : state->slots) if (sap_better(s, best)) best = s;
    sync();  // the slots are reused by the next call
    return best;
  }
  bool any(bool flag) {
    state->flags[member] = flag; sync();
    bool found = false;
    for (char f : state->flags) found |= f != 0;
    sync();
    return found;
  }
};
template <typename T>
int solve_sap_threads(const std::vector<T>& c, int rows, int cols, int size, std::vector<int64_t>& ro, std::vector<int64_t>& co) {
  const bool tr = rows > cols; int n = tr ? cols : rows, m = tr ? rows : cols;
  SapWorkspace ws = sap_workspace_layout(n, m);
  std::vector<double> d(ws.doubles); std::vector<int32_t> iv(ws.ints); ws.bind(d.data(), iv.data());
  TeamState state(size); std::vector<int> status(size); std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) threads.emplace_back([&, r] { ThreadTeam team{&state, r, size}; status[r] = sap_solve(team, c.data(), cols, tr, n, m, ws); });
  for (auto& t : threads) t.join();
  for (int r = 1; r < size; ++r) if (status[r] != status[0]) return -100;  // members disagree
  if (status[0]) return status[0];
  ro.resize(n); co.resize(n);
  assign_write_result(ws.col4row, n, tr, rows, ws.scratch_rows, ro.data(), co.data());
  return 0;
}
// sap_next near 2^31: the indices a member of a team of 1024 visits below a bound of 2^31 - 2.
int check_strided_loop_bound() {
  const int32_t bound = INT_MAX - 1; int bad = 0;
  for (int32_t rank : {0, 5, 1023}) {
    int64_t visits = 0, last = -1;
    for (int32_t j = bound - 3000 + rank; j < bound; j = sap_next(j, 1024, bound)) { ++visits; last = j; }
    const int64_t expected = (3000 - rank + 1023) / 1024;
    if (visits != expected || last + 1024 < bound) { ++bad; printf("sap_next: rank %d visited %lld, expected %lld\n", rank, (long long)visits, (long long)expected); }
  }
  return bad;
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
    if (it % 4 == 0) {
      for (int size : {3, 4}) {
        std::vector<int64_t> r3, c3;
        int s3 = solve_sap_threads(c, rows, cols, size, r3, c3);
        if (s3 != s2 || (!s3 && (r3 != r2 || c3 != c2))) { ++bad; printf("team of %d differs from the team of one: status %d vs %d (kind %d %dx%d)\n", size, s3, s2, kind, rows, cols); }
      }
    }
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
  int b = check_strided_loop_bound() + run<double>(iters, 40) + run<float>(iters, 40) + run<double>(iters / 20, 300) + run<float>(iters / 20, 300);
  printf("bad %d\n", b);
  return b != 0;
}
