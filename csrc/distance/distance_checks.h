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

// Rows ready for the kernels, in the compute dtype, contiguous (B, n, D):
//   orig:     the original rows (the unit rows for cosine), for the exact form of a pair;
//   centered: orig - c, c the mean of all rows of x and y of the batch item (none for "dot");
//   norms:    |centered|^2 (B, n), accumulated in float64.
struct PreparedRows {
  at::Tensor orig, centered, norms;
};
// Prepares x and, when y is defined, y (with the shared centre); y_rows is left empty otherwise.
void prepare_distance_rows(DistanceMetric metric, const at::Tensor& x, const at::Tensor& y, int64_t batch,
                           PreparedRows& x_rows, PreparedRows& y_rows);

// Labels (N,) of an integer dtype on the embeddings' device, for embeddings (N, D); returns the
// labels as contiguous int64.
at::Tensor check_mining_inputs(const char* op, const at::Tensor& embeddings, const at::Tensor& labels);

}  // namespace pyvision_ops
