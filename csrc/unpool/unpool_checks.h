// Torch-side checks and layouts of the pooling family, shared by the CPU kernels' entry points
// (unpool_cpu.cpp) and the CUDA glue (unpool_cuda.cpp), so that both devices run exactly the same
// checks and produce the same layouts and error messages.
#pragma once

#include <ATen/ATen.h>

#include "unpool/unpool.h"

namespace pyvision_ops {

// Checks of _max_pool2d_backward (grad_output and indices alike, compact flag matching the index
// dtype) and its geometry: grad_output is the pooled source, the input size the target.
UnpoolParams make_pool_backward_params(const at::Tensor& grad_output, const at::Tensor& indices,
                                       c10::IntArrayRef input_size, c10::IntArrayRef kernel_size,
                                       c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                       bool compact);

// Checks of _max_unpool_backward and its geometry: the indices' shape is the pooled source,
// grad_output the full-size target (read in place, any strides); the result is channels-last
// when the indices or a dense grad_output are.
UnpoolParams make_unpool_backward_params(const at::Tensor& grad_output, const at::Tensor& indices,
                                         c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                         c10::IntArrayRef padding, c10::IntArrayRef dilation);

// Checks the arguments of max_pool2d_with_indices and returns the geometry. `x` is 4-D.
PoolParams make_pool_params(const at::Tensor& x, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                            c10::IntArrayRef padding, c10::IntArrayRef dilation, bool ceil_mode, bool compact);

// Checks the arguments of max_unpool{1,2,3}d (`dims` spatial dims) and returns the geometry.
UnpoolParams make_unpool_params(const char* op, int64_t dims, const at::Tensor& x, const at::Tensor& indices,
                                c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                c10::IntArrayRef output_size);

// Geometry of the pooling backward / unpooling backward: moving values between the pooled
// `source` (grad_output of pooling, or indices' shape) and the full-size `target`.
// `values` is the floating tensor moved (grad_output), `source_sizes` the pooled shape.
UnpoolParams make_backward_params(const char* op, c10::IntArrayRef source_sizes, const at::Tensor& values,
                                  const at::Tensor& indices,
                                  c10::IntArrayRef target_spatial, c10::IntArrayRef kernel_size,
                                  c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation);

// The layout the kernels use for `t`: channels-last when t is channels-last and not also
// contiguous (the same rule as pyvision_ops/ops/unpool.py::_suggests_channels_last).
bool suggests_channels_last(const at::Tensor& t);

// How the kernels read `t` (N, C, spatial...) in place: its strides, spatial dims aligned to the
// last of (d, h, w) (unpool.h).
StridedView strided_view(const at::Tensor& t);

// `t` made dense in the requested layout (no copy when it already is).
at::Tensor dense_in_layout(const at::Tensor& t, bool channels_last);

// A new dense tensor of `sizes` in the requested layout.
at::Tensor empty_in_layout(c10::IntArrayRef sizes, const at::TensorOptions& options, bool channels_last);

IndexKind index_kind(const at::Tensor& indices, const char* op);

// Raises the out-of-range error for the element of `indices` at logical position
// (n * C + c) * plane + s, naming the index, its position and the valid range.
[[noreturn]] void raise_bad_index(const char* op, const at::Tensor& indices, const UnpoolParams& p,
                                  int64_t logical_position, bool compact);

// Pooling windows that hold padding only (dilation > 1 allows them: a 1x1 input, kernel 2,
// padding 1, dilation 2). The forward gives such a window -inf and an index outside the plane,
// as PyTorch does; its backward must move nothing for it. Returns a bool mask broadcastable to
// `indices` (1, 1, spatial...) of those windows, or an undefined tensor when there is none (the
// common case; always without dilation; O(output size) host work).
at::Tensor padding_only_windows(const UnpoolParams& p, const at::Tensor& indices);

// `indices` as int64 flat positions with 0 at the windows of `mask` (compact indices decoded);
// undefined when a compact index outside `mask` is bad (the kernels then report it).
at::Tensor flat_indices_without(const UnpoolParams& p, const at::Tensor& indices, const at::Tensor& mask);

// _max_pool2d_backward's arguments with the windows of padding only taken out: grad_output
// masked to 0 there and flat int64 indices pointing at element 0 of their plane, dense in the
// layout of `p`, with their params (scatter them with accumulation, so that those zeros
// overwrite nothing). False (nothing set) when there is no such window or a bad index elsewhere.
struct PoolBackwardRewrite {
  at::Tensor grad_output, indices;
  UnpoolParams params;
};
bool pool_backward_without_padding_only(const UnpoolParams& p, const at::Tensor& grad_output,
                                        const at::Tensor& indices, c10::IntArrayRef input_size,
                                        c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                        c10::IntArrayRef padding, c10::IntArrayRef dilation, PoolBackwardRewrite& out);

// _max_unpool_backward's indices with the windows of padding only pointing at element 0 (dense in
// the layout of `p`) and the mask of those windows, whose gathered values must then be zeroed.
// False when there is no such window or a bad index elsewhere.
bool unpool_backward_without_padding_only(const UnpoolParams& p, const at::Tensor& indices, at::Tensor& flat,
                                          at::Tensor& mask);

// No bad index seen (the reduction identity for "first bad position").
constexpr int64_t kNoBadIndex = INT64_MAX;

}  // namespace pyvision_ops
