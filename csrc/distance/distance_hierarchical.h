// The hierarchical triplet loss (Ge et al., ECCV 2018) of the metric-learning module: the
// per-pair math shared by the CPU kernel (distance_cpu.cpp) and the CUDA kernel
// (distance_kernel.cu). Torch-free.
//
// Inputs: the euclidean distances d (N, N) of a batch, the class position c_i in [0, P) of every
// row, and the margin table alpha (P, P): alpha[c_a * P + c_n] = beta + merge_distance(c_a, c_n) -
// spread(c_a). A triplet (a, p, n) is valid when p != a has a's class and n has another; its
// term is max(0, d_ap - d_an + alpha[c_a, c_n]) = max(0, d_ap - e_an) with the shifted negative
// distance e_an = d_an - alpha[c_a, c_n]. The loss is (sum of the terms) / (2 Z), Z the number of
// valid triplets (0 when there is none), so
//   dL/dd_ap = (number of negatives n with d_ap > e_an) / (2 Z)        (p a positive of a)
//   dL/dd_an = -(number of positives p with d_ap > e_an) / (2 Z)       (n a negative of a)
// and every other entry of the gradient (the diagonal, pairs of other classes' rows) is 0.
// The loss is not symmetric in d: row a holds the anchor a's pairs only.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace pyvision_ops {

// The hinge of one triplet from the anchor-positive distance and the shifted negative distance
// (NaN propagates).
template <typename Acc>
PVO_HOST_DEVICE inline Acc hierarchical_hinge(Acc d_ap, Acc e_an) {
  const Acc z = d_ap - e_an;
  return z <= Acc(0) ? Acc(0) : z;
}

// Whether the triplet's hinge is active (its gradient is nonzero): the rule for both signs.
template <typename Acc>
PVO_HOST_DEVICE inline bool hierarchical_active(Acc d_ap, Acc e_an) {
  return d_ap - e_an > Acc(0);
}

// Entry (a, j) of the loss terms and of the count matrix, straight from row a of d, for a
// kernel with one thread per entry: for a positive j (j != a, c_j == c_a), term = the sum over
// the row's negatives of the hinge and count = the number of active ones; for a negative j,
// term = 0 and count = -(the number of positives p with an active triplet (a, p, j)); otherwise
// both are 0. The CPU kernel computes the same sums from compacted rows (distance_cpu.cpp).
template <typename T, typename Acc>
PVO_HOST_DEVICE inline void hierarchical_entry(const T* d_row, const int64_t* classes, const T* alpha_row, int64_t n,
                                               int64_t a, int64_t j, Acc* term, Acc* count) {
  *term = Acc(0);
  *count = Acc(0);
  if (j == a) return;
  const int64_t ca = classes[a];
  if (classes[j] == ca) {
    const Acc d_ap = static_cast<Acc>(d_row[j]);
    for (int64_t t = 0; t < n; ++t) {
      const int64_t ct = classes[t];
      if (ct == ca) continue;
      const Acc e = static_cast<Acc>(d_row[t]) - static_cast<Acc>(alpha_row[ct]);
      *term += hierarchical_hinge(d_ap, e);
      *count += hierarchical_active(d_ap, e) ? Acc(1) : Acc(0);
    }
  } else {
    const Acc e = static_cast<Acc>(d_row[j]) - static_cast<Acc>(alpha_row[classes[j]]);
    for (int64_t t = 0; t < n; ++t) {
      if (t == a || classes[t] != ca) continue;
      *count -= hierarchical_active(static_cast<Acc>(d_row[t]), e) ? Acc(1) : Acc(0);
    }
  }
}

}  // namespace pyvision_ops
