// Torch-side checks of the distance family, shared by the CPU kernels, the CUDA glue and the
// composite operators: argument parsing and the prepared (centred, packed-ready) rows.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "distance/distance.h"

namespace pyvision_ops {

// "sqeuclidean" | "euclidean" | "cosine" | "dot"; anything else raises, naming `metric`.
DistanceMetric parse_distance_metric(const char* op, c10::string_view metric);
const char* distance_metric_name(DistanceMetric metric);

// "batch_hard" | "semi_hard" | "semi_hard_window" | "hard".
TripletStrategy parse_triplet_strategy(const char* op, c10::string_view strategy);

// The dtype the kernels compute in: float64 for float64, float32 otherwise.
at::ScalarType distance_compute_dtype(at::ScalarType dtype);

// x (..., N, D) and y (..., M, D) (y may be undefined: x against itself): floating, same dtype
// and device, equal leading dims and D. Returns the batch size (the product of leading dims).
int64_t check_pairwise_inputs(const char* op, const at::Tensor& x, const at::Tensor& y);

// pairwise_topk's inputs: check_pairwise_inputs plus 1 <= k <= M. Returns the batch size.
int64_t check_topk_inputs(const char* op, const at::Tensor& x, const at::Tensor& y, int64_t k);

// Mined triplets (anchor, positive, negative) of _triplet_loss_indexed: 1-D int64 of one
// length on the embeddings' device, every index in [0, N) for embeddings (N, D).
void check_indexed_triplets(const char* op, const at::Tensor& embeddings, const at::Tensor& anchor,
                            const at::Tensor& positive, const at::Tensor& negative);

// The backward's grad and saved out must have pairwise_distance's output shape (..., N, M).
void check_pairwise_backward_inputs(const char* op, const at::Tensor& grad, const at::Tensor& out, const at::Tensor& x,
                                    const at::Tensor& y);

// Rows ready for the kernels, in the compute dtype, contiguous (B, n, D):
//   orig:     the original rows (the unit rows for cosine), for the exact form of a pair;
//   centered: orig - c, c the mean of all rows of x and y of the batch item (none for "dot");
//   norms:    |centered|^2 (B, n), accumulated in float64.
struct PreparedRows {
  at::Tensor orig, centered, norms;
};
// Prepares x and, when y is defined, y (with the shared centre); y_rows is left empty otherwise,
// except for "cosine" with a row shorter than 1e-8: then both sides are cosine_augmented_rows
// (no centre, norms 1) and y_rows always holds y's (or x's) augmented rows, a side of its own.
// centre_from_y: the centre is the mean of y's rows only (the miners, whose anchors x are a
// slice of y: the centre is then the one pairwise_distance(y) uses).
void prepare_distance_rows(DistanceMetric metric, const at::Tensor& x, const at::Tensor& y, int64_t batch,
                           PreparedRows& x_rows, PreparedRows& y_rows, bool centre_from_y = false);

// The tile kernels take 1 - cos as half the squared distance of unit rows, wrong for a row
// shorter than 1e-8 (its unit row is shorter than 1). Where x or y (x when
// y is undefined) has such a row, returns true and sets x_out and y_out (..., n, D + 2) in
// `compute`: the unit rows, then sqrt(1 - |unit row|^2) in column D for x's short rows and in
// column D + 1 for y's. Every augmented row has norm 1 and the cross products are those of the
// unit rows, so half the squared distance of an augmented x row and y row is exactly 1 - xh.yh,
// in the matrix-product form and the exact form alike (x and y must then be two sides, never
// one set against itself). Returns false (one min/max pass over the rows) when there is none.
bool cosine_augmented_rows(const at::Tensor& x, const at::Tensor& y, at::ScalarType compute, at::Tensor& x_out,
                           at::Tensor& y_out);

// Embeddings to mine must be finite: raises naming `embeddings` otherwise.
void check_finite_embeddings(const char* op, const at::Tensor& embeddings);

// Labels (N,) of an integer dtype on the embeddings' device, for embeddings (N, D); returns the
// labels as contiguous int64.
at::Tensor check_mining_inputs(const char* op, const at::Tensor& embeddings, const at::Tensor& labels);

// The k-means assignment's inputs: x (N, D) and centroids (K >= 1, D) floating, one dtype and device.
void check_kmeans_assign_inputs(const char* op, const at::Tensor& x, const at::Tensor& centroids);

// The hierarchical triplet loss's inputs (distance_hierarchical.h): distances (N, N) floating,
// classes (N,) int64 with every value in [0, P), margins (P, P) floating, all on one device.
// Returns them contiguous in the compute dtype (classes as int64) with the number of valid
// triplets Z = sum over rows a of (|class of a| - 1) (N - |class of a|).
struct HierarchicalInputs {
  at::Tensor distances, classes, margins;
  int64_t n = 0, p = 0;
  double triplets = 0;
};
HierarchicalInputs check_hierarchical_inputs(const char* op, const at::Tensor& distances, const at::Tensor& classes,
                                             const at::Tensor& margins);

// The ATen form of _pairwise_distance_backward (distance_composite.cpp): every metric, every
// device; the CPU kernel uses it for "cosine".
std::tuple<at::Tensor, at::Tensor> pairwise_distance_backward_composite(const at::Tensor& grad, const at::Tensor& x,
                                                                        const c10::optional<at::Tensor>& y,
                                                                        const at::Tensor& out,
                                                                        c10::string_view metric,
                                                                        std::array<bool, 2> output_mask);

}  // namespace pyvision_ops
