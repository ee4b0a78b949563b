// The shortest-augmenting-path solver the CUDA kernel runs (one thread block per problem), written
// once for a "team" of threads so that the CPU can run the very same code with a team of one
// (op _linear_sum_assignment_team_reference, exercised by the CPU tests).
//
// Algorithm: Crouse's rectangular variant of the Hungarian method (the one SciPy uses), on the
// wide orientation (n <= m), after a row reduction that matches each row to its cheapest column
// where that column is still free: for each row left over, a Dijkstra search over reduced costs
// c[i][j] - u[i] - v[j] until a free column is settled; then the duals of the rows and columns
// the search settled move and the path flips. The team parallelises each scan of a row over the
// columns (column j belongs to member j % size) and settles the next column with one team-wide
// arg-min (ties: a free column first, then the lowest index). Everything a member writes during a
// search is its own columns' state, so the only synchronisation is the arg-min itself plus one
// barrier around the dual update and the path flip, both done per augmentation.
//
// Team interface (see SequentialTeam): rank(), size(), leader(), sync(), reduce_min(SapCandidate),
// any(bool). Every member calls every team function the same number of times.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "assign/assign.h"
#include "common/host_device.h"

namespace pyvision_ops {

// A column offered to the arg-min: its tentative distance, whether it is matched, its index.
struct SapCandidate {
  double value;
  int32_t matched;  // 0 = free column (preferred on ties: it ends the search)
  int32_t col;      // -1 = no candidate
};

PVO_HOST_DEVICE PVO_INLINE SapCandidate sap_no_candidate() { return SapCandidate{INFINITY, 1, -1}; }

// True when a should be settled before b.
PVO_HOST_DEVICE PVO_INLINE bool sap_better(const SapCandidate& a, const SapCandidate& b) {
  if (b.col < 0) return a.col >= 0;
  if (a.col < 0) return false;
  if (a.value != b.value) return a.value < b.value;
  if (a.matched != b.matched) return a.matched < b.matched;
  return a.col < b.col;
}

// The scratch one problem needs: 3 double arrays and 6 int arrays.
struct SapWorkspace {
  int32_t n = 0, m = 0;
  size_t doubles = 0, ints = 0;
  double* u = nullptr;  // row duals (n)
  double* v = nullptr;  // column duals (m)
  double* d = nullptr;  // tentative distances of the current search (m)
  int32_t* col4row = nullptr;       // n
  int32_t* row4col = nullptr;       // m
  int32_t* path = nullptr;          // predecessor row of each column (m)
  int32_t* row_seen = nullptr;      // rows reached by the current search (n)
  int32_t* col_settled = nullptr;   // columns settled by the current search (m)
  int32_t* scratch_rows = nullptr;  // result inversion of a transposed problem (m)

  PVO_HOST_DEVICE void bind(double* dbuf, int32_t* ibuf) {
    u = dbuf;
    v = u + n;
    d = v + m;
    col4row = ibuf;
    row4col = col4row + n;
    path = row4col + m;
    row_seen = path + m;
    col_settled = row_seen + n;
    scratch_rows = col_settled + m;
  }
};

PVO_HOST_DEVICE PVO_INLINE SapWorkspace sap_workspace_layout(int32_t n, int32_t m) {
  SapWorkspace ws;
  ws.n = n;
  ws.m = m;
  ws.doubles = static_cast<size_t>(n) + 2 * static_cast<size_t>(m);
  ws.ints = 2 * static_cast<size_t>(n) + 4 * static_cast<size_t>(m);
  return ws;
}

// A team of one: the CPU reference.
struct SequentialTeam {
  int rank() const { return 0; }
  int size() const { return 1; }
  bool leader() const { return true; }
  void sync() {}
  SapCandidate reduce_min(const SapCandidate& c) { return c; }
  bool any(bool flag) { return flag; }
};

// The next index of a member's strided loop (index + size), without passing int32 when the
// bound is within a team size of 2^31 (a side of up to 2^31 - 2 is accepted).
PVO_HOST_DEVICE PVO_INLINE int32_t sap_next(int32_t index, int size, int32_t bound) {
  return bound - index > size ? index + size : bound;
}

// Solves one wide problem (n <= m; cost(r, c) = wide_cost(cost, stored_cols, transposed, r, c)).
// On kAssignOk, ws.col4row holds each row's column. Every member gets the same return value.
template <typename Team, typename T>
PVO_HOST_DEVICE int32_t sap_solve(Team& team, const T* cost, int32_t stored_cols, bool transposed, int32_t n,
                                  int32_t m, SapWorkspace& ws) {
  const int rank = team.rank(), size = team.size();
  // entries: NaN and -inf are invalid (checked by the whole team)
  bool bad = false;
  const int64_t count = static_cast<int64_t>(n) * m;
  for (int64_t e = rank; e < count; e += size) bad |= assign_invalid_entry(cost[e]);
  if (team.any(bad)) return kAssignInvalid;

  for (int32_t i = rank; i < n; i = sap_next(i, size, n)) {
    ws.u[i] = 0.0;
    ws.col4row[i] = -1;
  }
  for (int32_t j = rank; j < m; j = sap_next(j, size, m)) {
    ws.v[j] = 0.0;
    ws.row4col[j] = -1;
  }
  team.sync();

  // Row reduction with greedy matching: u[i] = the row's minimum, and the row takes that column
  // when it is still free (a free one first among equal minima). This is a valid start for the
  // searches (u[i] + v[j] <= c[i][j], tight on the matched pairs, v = 0) and leaves them only
  // the rows that collided. A row of +inf only can never be matched.
  for (int32_t i = 0; i < n; ++i) {
    SapCandidate best = sap_no_candidate();
    for (int32_t j = rank; j < m; j = sap_next(j, size, m)) {
      const SapCandidate mine{wide_cost(cost, stored_cols, transposed, i, j), ws.row4col[j] >= 0 ? 1 : 0, j};
      if (sap_better(mine, best)) best = mine;
    }
    const SapCandidate chosen = team.reduce_min(best);
    if (chosen.col < 0 || chosen.value == INFINITY) return kAssignInfeasible;
    if (team.leader()) {
      ws.u[i] = chosen.value;
      if (!chosen.matched) {
        ws.row4col[chosen.col] = i;
        ws.col4row[i] = chosen.col;
      }
    }
    team.sync();  // the next row's candidates read row4col
  }

  for (int32_t current = 0; current < n; ++current) {
    if (ws.col4row[current] >= 0) continue;  // matched by the greedy start (every member agrees)
    for (int32_t i = rank; i < n; i = sap_next(i, size, n)) ws.row_seen[i] = 0;
    for (int32_t j = rank; j < m; j = sap_next(j, size, m)) {
      ws.d[j] = INFINITY;
      ws.col_settled[j] = 0;
    }
    team.sync();
    int32_t i = current, sink = -1;
    double min_value = 0.0;
    while (sink < 0) {
      if (team.leader()) ws.row_seen[i] = 1;
      const double base = min_value - ws.u[i];
      SapCandidate best = sap_no_candidate();
      for (int32_t j = rank; j < m; j = sap_next(j, size, m)) {
        if (ws.col_settled[j]) continue;
        const double reduced = base + wide_cost(cost, stored_cols, transposed, i, j) - ws.v[j];
        if (reduced < ws.d[j]) {
          ws.d[j] = reduced;
          ws.path[j] = i;
        }
        const SapCandidate mine{ws.d[j], ws.row4col[j] >= 0 ? 1 : 0, j};
        if (sap_better(mine, best)) best = mine;
      }
      const SapCandidate chosen = team.reduce_min(best);
      if (chosen.col < 0 || chosen.value == INFINITY) return kAssignInfeasible;
      min_value = chosen.value;
      const int32_t j = chosen.col;
      if (j % size == rank) ws.col_settled[j] = 1;  // its owner: no other member reads it
      if (ws.row4col[j] < 0) {
        sink = j;
      } else {
        i = ws.row4col[j];
      }
    }
    team.sync();  // distances, paths and settled flags of every member are visible
    if (team.leader()) ws.u[current] += min_value;
    for (int32_t r = rank; r < n; r = sap_next(r, size, n)) {
      if (ws.row_seen[r] && r != current) ws.u[r] += min_value - ws.d[ws.col4row[r]];
    }
    for (int32_t c = rank; c < m; c = sap_next(c, size, m)) {
      if (ws.col_settled[c]) ws.v[c] -= min_value - ws.d[c];
    }
    team.sync();
    if (team.leader()) {
      int32_t j = sink;
      while (true) {
        const int32_t r = ws.path[j];
        ws.row4col[j] = r;
        const int32_t previous = ws.col4row[r];
        ws.col4row[r] = j;
        j = previous;
        if (r == current) break;
      }
    }
    team.sync();
  }
  return kAssignOk;
}

}  // namespace pyvision_ops
