// `make cmake-check`: calls pyvision_ops::max_unpool2d (and the pooling op) through the
// dispatcher from a C++ program linked against the CMake-built library, and compares with ATen.
#include <ATen/ATen.h>

#include <cstdio>

#include "pyvision_ops_api.h"

int main() {
  at::manual_seed(0);
  const at::Tensor x = at::randn({2, 3, 10, 14});
  auto [values, indices] = pyvision_ops::max_pool2d_with_indices(x, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false, false);
  auto [ref_values, ref_indices] = at::max_pool2d_with_indices(x, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false);
  const at::Tensor unpooled = pyvision_ops::max_unpool2d(values, indices, {2, 2}, {2, 2}, {0, 0}, {10, 14});
  const at::Tensor ref_unpooled = at::max_unpool2d(ref_values, ref_indices, {10, 14});
  auto [compact_values, compact_indices] =
      pyvision_ops::max_pool2d_with_indices(x, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false, true);
  const at::Tensor compact_unpooled =
      pyvision_ops::max_unpool2d(compact_values, compact_indices, {2, 2}, {2, 2}, {0, 0}, {10, 14});
  const bool ok = at::equal(values, ref_values) && at::equal(indices, ref_indices) &&
                  at::equal(unpooled, ref_unpooled) && at::equal(compact_unpooled, ref_unpooled) &&
                  compact_indices.scalar_type() == at::kByte;
  bool raised = false;
  try {
    pyvision_ops::max_unpool2d(values, indices + 1000, {2, 2}, {2, 2}, {0, 0}, {10, 14});
  } catch (const c10::Error&) {
    raised = true;
  }
  std::printf("pyvision_ops C++ dispatch check: pooling/unpooling %s, bad index %s\n", ok ? "match ATen" : "MISMATCH",
              raised ? "raises" : "DID NOT RAISE");
  return ok && raised ? 0 : 1;
}
