// The CPU solver: Jonker-Volgenant (1987) shortest augmenting paths, on the wide orientation
// (n rows <= m columns, Crouse's rectangular case), with column prices v only.
//
// Invariant between phases: every matched row i sits on a column of minimum reduced cost
// c[i][j] - v[j] in its row, and v[j] = 0 for every column never matched (so that the
// rectangular optimum's dual condition holds). Phases:
//   1. square problems: column reduction + reduction transfer (JV's initialisation);
//   2. augmenting row reduction, twice (cheap auction-like moves that match most rows);
//   3. one Dijkstra search per remaining free row over reduced costs, with JV's scan lists:
//      all columns at the current minimum distance are settled together, and a free column at
//      the minimum ends the search; then prices of settled columns move and the path flips.
// +inf costs stay +inf in every reduced cost and are never settled; a search whose minimum
// distance is +inf proves infeasibility (no complete matching avoids them).
//
// Used from assign_cpu.cpp only (not device code); header so that its template is visible.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "assign/assign.h"
#include "assign/assign_cpu_simd.h"

namespace pyvision_ops {
namespace lap {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Augmenting row reduction gives up on a row after this many moves per row position (JV bound
// it by the column count; on dense float problems that lets it run an auction with vanishing
// steps, measured 3x slower on 1000x1000 uniform than stopping early and searching).
constexpr int64_t kArrLimitPerRow = 4;

// Workspace of one thread, reused across the problems it solves.
struct Workspace {
  std::vector<double> v, open, list_d;
  std::vector<int32_t> x, y, pred, list, reached, free_rows, row_of_stored;
  std::vector<uint8_t> unique;
  std::vector<RowMin2> row_minima;
  std::vector<double> min_value;  // scratch of transpose_check_min_rows_avx2
  std::vector<int64_t> min_row;
  std::vector<double> transposed;  // a tall problem's transpose, contiguous rows
  std::vector<float> transposed_f;
  // Frees the buffers when they hold more than kKeepBytes (a thread keeps small ones for its
  // next call).
  void trim() {
    constexpr size_t kKeepBytes = size_t{1} << 20;
    const size_t bytes = v.capacity() * (4 * sizeof(double) + 7 * sizeof(int32_t) + 1 + sizeof(RowMin2) + 8) +
                         transposed.capacity() * sizeof(double) + transposed_f.capacity() * sizeof(float);
    if (bytes > kKeepBytes) *this = Workspace();
  }
  void reserve(int32_t n, int32_t m) {
    const size_t big = static_cast<size_t>(std::max(n, m));
    v.resize(big);
    open.resize(big);
    list_d.resize(big);
    x.resize(big);
    y.resize(big);
    pred.resize(big);
    list.resize(big);
    reached.resize(big);
    free_rows.resize(big);
    row_of_stored.resize(big);
    unique.resize(big);
    row_minima.resize(big);
    min_value.resize(big);
    min_row.resize(big);
  }
};

// Solves the wide problem c (n x m row-major, row stride m, n <= m). On success x[0..n) holds
// each row's column. Returns an AssignStatus (the caller has already rejected invalid entries).
template <typename T>
class Solver {
 public:
  // row_minima (optional, rectangular problems): each row's smallest cost and its column (u1,
  // j1), computed while transposing; they seed a greedy start.
  Solver(const T* c, int32_t n, int32_t m, Workspace& ws, const RowMin2* row_minima = nullptr)
      : c_(c), row_minima_(n < m ? row_minima : nullptr), n_(n), m_(m), v_(ws.v.data()), open_(ws.open.data()), list_d_(ws.list_d.data()),
        x_(ws.x.data()), y_(ws.y.data()), pred_(ws.pred.data()), list_(ws.list.data()), reached_(ws.reached.data()),
        free_(ws.free_rows.data()), unique_(ws.unique.data()), kernels_(lap_kernels<T>()) {}

  int32_t solve() {
    std::fill(x_, x_ + n_, -1);
    std::fill(y_, y_ + m_, -1);
    int32_t n_free;
    if (n_ == m_) {
      n_free = column_reduction();
      if (n_free < 0) return kAssignInfeasible;
    } else {
      // Rectangular: greedy start at zero prices, a row takes its cheapest column when that is
      // still free (the minima come from the transpose when it computed them). Measured on
      // 300x100 problems: greedy, then augmenting row reduction on the rows that collided,
      // solves in half the time of the reduction on every row.
      std::fill(v_, v_ + m_, 0.0);
      n_free = 0;
      for (int32_t i = 0; i < n_; ++i) {
        const RowMin2 best = row_minima_ != nullptr ? row_minima_[i] : kernels_.row_min2(row(i), v_, m_);
        if (best.u1 == kInf) return kAssignInfeasible;  // a row of +inf only
        const int32_t j = best.j1;
        if (y_[j] < 0) {
          x_[i] = j;
          y_[j] = i;
        } else {
          free_[n_free++] = i;
        }
      }
    }
    for (int pass = 0; pass < 2 && n_free > 0; ++pass) {
      n_free = augmenting_row_reduction(n_free);
      if (n_free < 0) return kAssignInfeasible;
    }
    for (int32_t f = 0; f < n_free; ++f) {
      if (!augment(free_[f])) return kAssignInfeasible;
    }
    return kAssignOk;
  }

 private:
  const T* row(int32_t i) const { return c_ + static_cast<int64_t>(i) * m_; }

  // JV's column reduction (square only): v[j] = min over column j; each column goes to its
  // minimum row if that row has none yet (columns taken from the right). Then reduction
  // transfer: a row that got exactly one column lowers that column's price to its second-best
  // reduced cost. Returns the number of free rows (listed in free_), or -1 when a column is
  // all +inf (it can never be matched).
  int32_t column_reduction() {
    for (int32_t j = 0; j < m_; ++j) {
      v_[j] = kInf;
      y_[j] = -1;
    }
    for (int32_t i = 0; i < n_; ++i) kernels_.column_min(row(i), m_, v_, y_, i);
    for (int32_t i = 0; i < n_; ++i) unique_[i] = 1;
    for (int32_t j = m_ - 1; j >= 0; --j) {
      if (v_[j] == kInf) return -1;
      const int32_t i = y_[j];
      if (x_[i] < 0) {
        x_[i] = j;
      } else {
        unique_[i] = 0;
        y_[j] = -1;
      }
    }
    int32_t n_free = 0;
    for (int32_t i = 0; i < n_; ++i) {
      if (x_[i] < 0) {
        free_[n_free++] = i;
      } else if (unique_[i]) {
        const int32_t j = x_[i];
        const RowMin2 best = kernels_.row_min2(row(i), v_, m_);  // min over k != j of c[i][k] - v[k]:
        const double second = best.j1 == j ? best.u2 : best.u1;  // the row's own is a minimum
        if (second < kInf) v_[j] -= second;  // the row's reduced costs stay >= 0, its own at `second`
      }
    }
    return n_free;
  }

  // JV's augmenting row reduction: a free row takes its best column j1, lowering v[j1] by the
  // gap to its second best (so it stays the row's minimum), and the column's former row becomes
  // free in turn. Bounded by JV's counter, so float ties cannot cycle. Returns the rows still
  // free (in free_), or -1 when a row is all +inf.
  int32_t augmenting_row_reduction(int32_t n_free) {
    int32_t current = 0, new_free = 0;
    int64_t count = 0;
    const int64_t limit_per_row = kArrLimitPerRow;
    while (current < n_free) {
      ++count;
      const int32_t i = free_[current++];
      const RowMin2 best = kernels_.row_min2(row(i), v_, m_);
      double u1 = best.u1, u2 = best.u2;
      int32_t j1 = best.j1, j2 = best.j2;
      if (u1 == kInf) return -1;
      int32_t i0 = y_[j1];
      const bool lowers = u2 > u1 && u2 < kInf;
      if (count < static_cast<int64_t>(current) * limit_per_row) {
        if (lowers) {
          v_[j1] -= u2 - u1;
        } else if (i0 >= 0 && j2 >= 0 && u2 == u1) {
          // a tie: take the other minimum column instead, which may be free
          j1 = j2;
          i0 = y_[j2];
        }
        if (i0 >= 0) {
          if (lowers) {
            free_[--current] = i0;  // try the displaced row again right away
          } else {
            free_[new_free++] = i0;
          }
        }
      } else if (i0 >= 0) {
        free_[new_free++] = i0;
      }
      if (i0 >= 0) x_[i0] = -1;
      x_[i] = j1;
      y_[j1] = i;
    }
    return new_free;
  }

  // One Dijkstra search from free row `start` (JV's augmentation) over dense arrays, so that the
  // scans vectorise. open_[j] is the tentative distance of a column not yet reached at the
  // minimum, -inf once it is ("closed": listed in list_, where [0, lo) are scanned and [lo, hi)
  // wait to be scanned, each with the distance it closed at in list_d_). All columns closed in
  // one round share the round's minimum, so a column's final distance is its closing value.
  // Returns false when every open column is at +inf (infeasible).
  bool augment(int32_t start) {
    kernels_.start_row(row(start), v_, m_, open_, pred_, start);
    int32_t lo = 0, hi = 0, sink = -1;
    double mind = 0.0;
    while (sink < 0) {
      if (lo == hi) {
        mind = kernels_.open_min(open_, m_);
        if (mind == kInf) return false;
        const int32_t added = kernels_.close_at(open_, m_, mind, list_ + hi);
        for (int32_t k = hi; k < hi + added; ++k) {
          list_d_[k] = mind;
          if (sink < 0 && y_[list_[k]] < 0) sink = list_[k];
        }
        hi += added;
        if (sink >= 0) break;
      }
      // scan the row matched to one column at the minimum
      const int32_t j = list_[lo++];
      const int32_t i = y_[j];
      const T* ci = row(i);
      const double h = static_cast<double>(ci[j]) - v_[j] - mind;
      const int32_t reached = kernels_.scan_row(ci, v_, h, mind, open_, pred_, i, m_, reached_);
      for (int32_t e = 0; e < reached; ++e) {
        const int32_t j2 = reached_[e];
        if (y_[j2] < 0) {
          sink = j2;
          break;
        }
        open_[j2] = -kInf;
        list_[hi] = j2;
        list_d_[hi++] = mind;
      }
    }
    // prices of the closed columns (the ones closed in the last round move by zero)
    for (int32_t k = 0; k < hi; ++k) v_[list_[k]] += list_d_[k] - mind;
    // flip the path
    int32_t j = sink;
    while (true) {
      const int32_t i = pred_[j];
      y_[j] = i;
      std::swap(x_[i], j);
      if (i == start) break;
    }
    return true;
  }

  const T* c_;
  const RowMin2* row_minima_;
  int32_t n_, m_;
  double* v_;
  double* open_;
  double* list_d_;
  int32_t* x_;
  int32_t* y_;
  int32_t* pred_;
  int32_t* list_;
  int32_t* reached_;
  int32_t* free_;
  uint8_t* unique_;
  LapKernels<T> kernels_;
};

}  // namespace lap
}  // namespace pyvision_ops
