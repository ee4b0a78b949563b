// The hierarchical triplet loss's per-entry rule (csrc/distance/distance_hierarchical.h, one CUDA
// thread per entry) against a triple loop over (anchor, positive, negative) written from the
// definition, on random small problems with integer distances (exact ties: hinges at exactly 0,
// which are inactive) and random class layouts (singletons, one class, all distinct):
//   * sum over entries of term == sum over valid triplets of max(0, d_ap - d_an + alpha[c_a][c_n]);
//   * count(a, p) == the number of active triplets (a, p, *), count(a, n) == -that of (a, *, n),
//     and 0 on the diagonal and wherever no valid triplet uses the entry.
// Prints "bad N" (N failures).
#include "distance/distance_hierarchical.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

using namespace pyvision_ops;

int main(int argc, char** argv) {
  const int trials = argc > 1 ? std::atoi(argv[1]) : 200;
  std::mt19937_64 rng(7);
  int bad = 0;
  for (int trial = 0; trial < trials; ++trial) {
    const int64_t n = 1 + static_cast<int64_t>(rng() % 24);
    const int64_t p = 1 + static_cast<int64_t>(rng() % std::min<int64_t>(n, 6));
    std::vector<int64_t> cls(n);
    for (auto& c : cls) c = static_cast<int64_t>(rng() % p);
    std::vector<double> d(n * n), alpha(p * p);
    for (auto& v : d) v = static_cast<double>(rng() % 7);
    for (auto& v : alpha) v = static_cast<double>(static_cast<int>(rng() % 5) - 2);
    double want_total = 0;
    std::vector<double> want_count(n * n, 0.0);
    for (int64_t a = 0; a < n; ++a) {
      for (int64_t q = 0; q < n; ++q) {
        if (q == a || cls[q] != cls[a]) continue;
        for (int64_t m = 0; m < n; ++m) {
          if (cls[m] == cls[a]) continue;
          const double z = d[a * n + q] - d[a * n + m] + alpha[cls[a] * p + cls[m]];
          if (z > 0) {
            want_total += z;
            want_count[a * n + q] += 1;
            want_count[a * n + m] -= 1;
          }
        }
      }
    }
    double got_total = 0;
    for (int64_t a = 0; a < n; ++a) {
      for (int64_t j = 0; j < n; ++j) {
        double term, count;
        hierarchical_entry<double, double>(d.data() + a * n, cls.data(), alpha.data() + cls[a] * p, n, a, j, &term,
                                           &count);
        got_total += term;
        if (count != want_count[a * n + j]) {
          if (bad < 20) std::printf("FAIL count (trial %d, entry %lld, %lld)\n", trial, (long long)a, (long long)j);
          ++bad;
        }
      }
    }
    if (std::fabs(got_total - want_total) > 1e-9 * (1 + std::fabs(want_total))) {
      if (bad < 20) std::printf("FAIL total (trial %d): %g vs %g\n", trial, got_total, want_total);
      ++bad;
    }
  }
  std::printf("bad %d\n", bad);
  return 0;
}
