#include "unpool/unpool_checks.h"

#include <limits>
#include <sstream>
#include <string>

#include "common/checks.h"

namespace pyvision_ops {

namespace {

// PyTorch's pooling_output_shape: floor (or ceil) division, and with ceil_mode the last window
// must start inside the input or the left padding. In 128-bit arithmetic: dilation * (kernel - 1)
// and input + 2 * pad can exceed int64 for valid (huge) arguments, whose window is then simply
// larger than the padded input. Any out outside [1, int64 max] comes back as 0, which the caller
// rejects (a window larger than the padded input; no tensor has more than int64 elements).
int64_t pooled_size(int64_t input, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation, bool ceil_mode) {
  using wide = __int128;
  const wide numerator = wide(input) + 2 * wide(pad) - wide(dilation) * (wide(kernel) - 1) - 1 +
                         (ceil_mode ? wide(stride) - 1 : 0);
  wide out = (numerator >= 0 ? numerator / stride : -((-numerator + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= wide(input) + pad) --out;
  if (out < 1 || out > wide(std::numeric_limits<int64_t>::max())) return 0;
  return static_cast<int64_t>(out);
}

// A 128-bit integer in decimal (the bounds of max_unpool's output_size rule, which can pass int64).
std::string wide_string(__int128 value) {
  if (value == 0) return "0";
  const bool negative = value < 0;
  unsigned __int128 magnitude = negative ? -static_cast<unsigned __int128>(value) : value;
  std::string digits;
  for (; magnitude != 0; magnitude /= 10) digits.insert(digits.begin(), static_cast<char>('0' + magnitude % 10));
  return negative ? "-" + digits : digits;
}

}  // namespace

bool suggests_channels_last(const at::Tensor& t) {
  if (t.dim() == 4) return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
  if (t.dim() == 5) return t.is_contiguous(at::MemoryFormat::ChannelsLast3d) && !t.is_contiguous();
  return false;
}

StridedView strided_view(const at::Tensor& t) {
  StridedView view;
  view.stride_n = t.stride(0);
  view.stride_c = t.stride(1);
  const int64_t dims = t.dim() - 2;
  int64_t sizes[3] = {1, 1, 1};
  for (int64_t d = 0; d < dims; ++d) {
    sizes[3 - dims + d] = t.size(2 + d);
    view.stride[3 - dims + d] = t.stride(2 + d);
  }
  // flat_step: the stride of the innermost spatial dim longer than 1; every longer dim outside
  // it must then step by the elements inside it times flat_step.
  int64_t inner = 1;
  bool have_step = false;
  for (int d = 2; d >= 0; --d) {
    if (sizes[d] == 1) continue;
    if (!have_step) {
      view.flat_step = view.stride[d];
      have_step = true;
    } else if (view.stride[d] != inner * view.flat_step) {
      view.flat = false;
    }
    inner *= sizes[d];
  }
  return view;
}

at::Tensor dense_in_layout(const at::Tensor& t, bool channels_last) {
  if (!channels_last) return t.contiguous();
  return t.contiguous(t.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast);
}

at::Tensor empty_in_layout(c10::IntArrayRef sizes, const at::TensorOptions& options, bool channels_last) {
  if (!channels_last) return at::empty(sizes, options);
  return at::empty(sizes, options.memory_format(sizes.size() == 5 ? at::MemoryFormat::ChannelsLast3d
                                                                    : at::MemoryFormat::ChannelsLast));
}

at::Tensor padding_only_windows(const UnpoolParams& p, const at::Tensor& indices) {
  // Undilated pooling windows always hold an input (padding <= kernel / 2), and the unpooling
  // backward (dilation 1) takes any index of the plane, whatever its window.
  if (p.dilation[0] == 1 && p.dilation[1] == 1 && p.dilation[2] == 1) return at::Tensor();
  std::vector<uint8_t> empty[3];
  bool any = false;
  for (int d = 0; d < 3; ++d) {
    empty[d].assign(static_cast<size_t>(p.source_size[d]), 0);
    for (int64_t o = 0; o < p.source_size[d]; ++o) {
      const int64_t start = o * p.stride[d] - p.padding[d];
      const bool none = pool_first_tap(start, p.dilation[d]) >=
                        pool_tap_end(start, p.dilation[d], p.kernel[d], p.target_size[d]);
      empty[d][static_cast<size_t>(o)] = none;
      any = any || none;
    }
  }
  if (!any) return at::Tensor();
  const auto axis = [&](int d) {
    std::vector<int64_t> shape = {1, 1, 1};
    shape[d] = p.source_size[d];
    return at::tensor(c10::ArrayRef<uint8_t>(empty[d]), at::kByte).to(at::kBool).reshape(shape);
  };
  const at::Tensor mask = axis(0).logical_or(axis(1)).logical_or(axis(2));  // (SD, SH, SW)
  std::vector<int64_t> shape = {1, 1};
  for (int64_t d = 3 - (indices.dim() - 2); d < 3; ++d) shape.push_back(p.source_size[d]);
  return mask.reshape(shape).to(indices.device());
}

at::Tensor flat_indices_without(const UnpoolParams& p, const at::Tensor& indices, const at::Tensor& mask) {
  at::Tensor flat;
  if (indices.scalar_type() != at::kByte) {
    flat = indices.to(at::kLong).masked_fill(mask, 0);
  } else {
    // Decode the window-local indices (compact_target in unpool.h) into flat positions.
    const at::TensorOptions longs = indices.options().dtype(at::kLong);
    const at::Tensor local = indices.to(at::kLong).reshape(
        {p.batch, p.channels, p.source_size[0], p.source_size[1], p.source_size[2]});
    const int64_t kd = p.kernel[0], kh = p.kernel[1], kw = p.kernel[2];
    at::Tensor valid = local.lt(kd * kh * kw);
    at::Tensor position = at::zeros_like(local);
    const at::Tensor taps[3] = {local.div(kh * kw, "floor"), local.div(kw, "floor").remainder(kh), local.remainder(kw)};
    for (int d = 0; d < 3; ++d) {
      std::vector<int64_t> shape = {1, 1, 1, 1, 1};
      shape[2 + d] = p.source_size[d];
      const at::Tensor start = at::arange(p.source_size[d], longs).mul(p.stride[d]).sub(p.padding[d]).reshape(shape);
      const at::Tensor at_d = start + taps[d] * p.dilation[d];
      valid = valid.logical_and(at_d.ge(0)).logical_and(at_d.lt(p.target_size[d]));
      position = position * p.target_size[d] + at_d;
    }
    const at::Tensor window_mask = mask.reshape({1, 1, p.source_size[0], p.source_size[1], p.source_size[2]});
    // An index that is bad in a window with inputs: undefined, so that the kernel reports it.
    if (valid.logical_or(window_mask).logical_not().any().item<bool>()) return at::Tensor();
    flat = position.masked_fill(window_mask, 0).reshape(indices.sizes());
  }
  return flat;
}

bool pool_backward_without_padding_only(const UnpoolParams& p, const at::Tensor& grad_output,
                                        const at::Tensor& indices, c10::IntArrayRef input_size,
                                        c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                        c10::IntArrayRef padding, c10::IntArrayRef dilation, PoolBackwardRewrite& out) {
  const at::Tensor mask = padding_only_windows(p, indices);
  if (!mask.defined()) return false;
  const at::Tensor flat = flat_indices_without(p, indices, mask);
  if (!flat.defined()) return false;
  // the layouts stay those the fake kernel promises
  out.grad_output = dense_in_layout(grad_output.masked_fill(mask, 0), p.channels_last);
  out.indices = dense_in_layout(flat, p.channels_last);
  out.params = make_pool_backward_params(out.grad_output, out.indices, input_size, kernel_size, stride, padding,
                                         dilation, /*compact=*/false);
  return true;
}

bool unpool_backward_without_padding_only(const UnpoolParams& p, const at::Tensor& indices, at::Tensor& flat,
                                          at::Tensor& mask) {
  mask = padding_only_windows(p, indices);
  if (!mask.defined()) return false;
  const at::Tensor rewritten = flat_indices_without(p, indices, mask);
  if (!rewritten.defined()) return false;
  flat = dense_in_layout(rewritten, p.channels_last);
  return true;
}

IndexKind index_kind(const at::Tensor& indices, const char* op) {
  switch (indices.scalar_type()) {
    case at::kLong: return IndexKind::Int64;
    case at::kInt: return IndexKind::Int32;
    case at::kByte: return IndexKind::Uint8Compact;
    default:
      TORCH_CHECK(false, op, ": indices must be int64 or int32 (flat) or uint8 (compact), got ",
                  indices.scalar_type());
  }
}

PoolParams make_pool_params(const at::Tensor& x, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                            c10::IntArrayRef padding, c10::IntArrayRef dilation, bool ceil_mode, bool compact) {
  constexpr const char* op = "max_pool2d_with_indices";
  check_dim(x, 4, op, "x", "(N, C, H, W)");
  check_floating(x, op, "x");
  check_all_at_least(kernel_size, 1, 2, op, "kernel_size");
  check_all_at_least(stride, 1, 2, op, "stride");
  check_all_at_least(padding, 0, 2, op, "padding");
  check_all_at_least(dilation, 1, 2, op, "dilation");
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK_VALUE(padding[d] <= kernel_size[d] / 2, op,
                      ": padding must be at most half of kernel_size, got padding=", shape_string(padding),
                      " and kernel_size=", shape_string(kernel_size));
  }
  if (compact) {
    TORCH_CHECK_VALUE(kernel_size[0] * kernel_size[1] <= 256, op,
                      ": compact=True stores window positions in uint8 and needs kH * kW <= 256, got kernel_size=",
                      shape_string(kernel_size), " (", kernel_size[0] * kernel_size[1], " positions)");
  }
  TORCH_CHECK_VALUE(x.size(1) > 0 && x.size(2) > 0 && x.size(3) > 0, op,
                    ": x must have non-zero C, H and W (only the batch may be empty), got shape ",
                    shape_string(x.sizes()));
  PoolParams p;
  p.batch = x.size(0);
  p.channels = x.size(1);
  p.in_h = x.size(2);
  p.in_w = x.size(3);
  p.kernel_h = kernel_size[0];
  p.kernel_w = kernel_size[1];
  p.stride_h = stride[0];
  p.stride_w = stride[1];
  p.pad_h = padding[0];
  p.pad_w = padding[1];
  p.dilation_h = dilation[0];
  p.dilation_w = dilation[1];
  p.out_h = pooled_size(p.in_h, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h, ceil_mode);
  p.out_w = pooled_size(p.in_w, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w, ceil_mode);
  TORCH_CHECK_VALUE(p.out_h >= 1 && p.out_w >= 1, op, ": input of spatial size (", p.in_h, ", ", p.in_w,
                    ") is too small for kernel_size=", shape_string(kernel_size), ", dilation=",
                    shape_string(dilation), " and padding=", shape_string(padding), ": the output would be (",
                    p.out_h, ", ", p.out_w, ")");
  p.channels_last = suggests_channels_last(x);
  return p;
}

UnpoolParams make_unpool_params(const char* op, int64_t dims, const at::Tensor& x, const at::Tensor& indices,
                                c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                c10::IntArrayRef output_size) {
  static const char* layouts[] = {"", "(N, C, L)", "(N, C, H, W)", "(N, C, D, H, W)"};
  check_dim(x, dims + 2, op, "x", layouts[dims]);
  check_floating(x, op, "x");
  const IndexKind kind = index_kind(indices, op);
  check_same_device(x, indices, op, "x", "indices");
  TORCH_CHECK_VALUE(indices.sizes() == x.sizes(), op, ": indices must have the shape of x ",
                    shape_string(x.sizes()), ", got ", shape_string(indices.sizes()));
  check_all_at_least(kernel_size, 1, dims, op, "kernel_size");
  check_all_at_least(stride, 1, dims, op, "stride");
  check_all_at_least(padding, 0, dims, op, "padding");
  check_all_at_least(output_size, 0, dims, op, "output_size");
  UnpoolParams p;
  p.batch = x.size(0);
  p.channels = x.size(1);
  const int offset = 3 - static_cast<int>(dims);
  for (int64_t d = 0; d < dims; ++d) {
    // In 128 bits: with huge strides or kernels the default size and its bounds pass int64.
    using wide = __int128;
    const wide default_size = (wide(x.size(2 + d)) - 1) * stride[d] - 2 * wide(padding[d]) + kernel_size[d];
    const wide low = default_size - stride[d];
    const wide high = default_size + stride[d];
    // F.max_unpool*d's rule: output_size may differ from the default by less than the stride.
    TORCH_CHECK_VALUE(output_size[d] > low && output_size[d] < high && output_size[d] > 0, op,
                      ": invalid output_size ", shape_string(output_size), ": dimension ", d,
                      " must be strictly between ", wide_string(low), " and ", wide_string(high),
                      " for input size ", x.size(2 + d),
                      ", kernel_size ", kernel_size[d], ", stride ", stride[d], " and padding ", padding[d]);
    p.source_size[offset + d] = x.size(2 + d);
    p.target_size[offset + d] = output_size[d];
    p.kernel[offset + d] = kernel_size[d];
    p.stride[offset + d] = stride[d];
    p.padding[offset + d] = padding[d];
  }
  // The output's size in bytes must fit in int64 (a tensor's storage size), checked here so that
  // the error names output_size rather than coming from the allocator.
  unsigned __int128 bytes = static_cast<unsigned __int128>(p.batch) * static_cast<unsigned __int128>(p.channels) *
                            static_cast<unsigned __int128>(x.element_size());
  for (int64_t d = 0; d < dims && bytes != 0; ++d) {
    bytes *= static_cast<unsigned __int128>(output_size[d]);
    if (bytes > static_cast<unsigned __int128>(std::numeric_limits<int64_t>::max())) break;
  }
  TORCH_CHECK_VALUE(bytes <= static_cast<unsigned __int128>(std::numeric_limits<int64_t>::max()), op,
                    ": output_size ", shape_string(output_size), " with ", p.batch, " x ", p.channels,
                    " planes of ", x.element_size(), "-byte elements is more than 2^63 - 1 bytes (the output ",
                    "would overflow int64)");
  if (kind == IndexKind::Uint8Compact) {
    TORCH_CHECK_VALUE(p.window_elements() <= 256, op, ": uint8 (compact) indices need at most 256 window ",
                      "positions, got kernel_size=", shape_string(kernel_size));
  }
  p.channels_last = suggests_channels_last(x);
  return p;
}

UnpoolParams make_backward_params(const char* op, c10::IntArrayRef source_sizes, const at::Tensor& values,
                                  const at::Tensor& indices,
                                  c10::IntArrayRef target_spatial, c10::IntArrayRef kernel_size,
                                  c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  const int64_t dims = static_cast<int64_t>(kernel_size.size());
  TORCH_CHECK_VALUE(dims >= 1 && dims <= 3, op, ": kernel_size must have 1 to 3 elements, got ",
                    shape_string(kernel_size));
  check_floating(values, op, "grad_output");
  index_kind(indices, op);
  check_same_device(values, indices, op, "grad_output", "indices");
  TORCH_CHECK_VALUE(static_cast<int64_t>(source_sizes.size()) == dims + 2, op, ": expected a ", dims + 2,
                    "-D pooled shape, got ", shape_string(source_sizes));
  check_all_at_least(kernel_size, 1, dims, op, "kernel_size");
  check_all_at_least(stride, 1, dims, op, "stride");
  check_all_at_least(padding, 0, dims, op, "padding");
  check_all_at_least(dilation, 1, dims, op, "dilation");
  check_all_at_least(target_spatial, 0, dims, op, "target size");
  UnpoolParams p;
  p.batch = source_sizes[0];
  p.channels = source_sizes[1];
  const int offset = 3 - static_cast<int>(dims);
  for (int64_t d = 0; d < dims; ++d) {
    p.source_size[offset + d] = source_sizes[2 + d];
    p.target_size[offset + d] = target_spatial[d];
    p.kernel[offset + d] = kernel_size[d];
    p.stride[offset + d] = stride[d];
    p.padding[offset + d] = padding[d];
    p.dilation[offset + d] = dilation[d];
  }
  p.channels_last = suggests_channels_last(indices) || suggests_channels_last(values);
  return p;
}

UnpoolParams make_pool_backward_params(const at::Tensor& grad_output, const at::Tensor& indices,
                                       c10::IntArrayRef input_size, c10::IntArrayRef kernel_size,
                                       c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                       bool compact) {
  constexpr const char* op = "_max_pool2d_backward";
  TORCH_CHECK_VALUE(indices.sizes() == grad_output.sizes(), op, ": indices must have the shape of grad_output ",
                    shape_string(grad_output.sizes()), ", got ", shape_string(indices.sizes()));
  TORCH_CHECK(compact == (indices.scalar_type() == at::kByte), op, ": compact=", compact,
              " does not match indices of dtype ", indices.scalar_type());
  return make_backward_params(op, grad_output.sizes(), grad_output, indices, input_size, kernel_size, stride, padding,
                              dilation);
}

UnpoolParams make_unpool_backward_params(const at::Tensor& grad_output, const at::Tensor& indices,
                                         c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                         c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  constexpr const char* op = "_max_unpool_backward";
  const int64_t dims = static_cast<int64_t>(kernel_size.size());
  TORCH_CHECK_VALUE(indices.dim() == dims + 2 && grad_output.dim() == dims + 2, op,
                    ": grad_output and indices must be ", dims + 2, "-D, got ", grad_output.dim(), "-D and ",
                    indices.dim(), "-D");
  TORCH_CHECK_VALUE(indices.size(0) == grad_output.size(0) && indices.size(1) == grad_output.size(1), op,
                    ": grad_output ", shape_string(grad_output.sizes()), " and indices ", shape_string(indices.sizes()),
                    " must agree in batch and channels");
  return make_backward_params(op, indices.sizes(), grad_output, indices, grad_output.sizes().slice(2), kernel_size,
                              stride, padding, dilation);
}

void raise_bad_index(const char* op, const at::Tensor& indices, const UnpoolParams& p, int64_t logical_position,
                     bool compact) {
  const int64_t plane = p.source_plane();
  const int64_t s = logical_position % plane;
  const int64_t nc = logical_position / plane;
  const int64_t c = nc % p.channels;
  const int64_t n = nc / p.channels;
  // Coordinates of the bad element in the indices tensor (spatial dims as the caller sees them).
  const int64_t dims = indices.dim() - 2;
  std::vector<int64_t> coords = {n, c};
  const int64_t spatial[3] = {s / (p.source_size[1] * p.source_size[2]), (s / p.source_size[2]) % p.source_size[1],
                              s % p.source_size[2]};
  for (int64_t d = 3 - dims; d < 3; ++d) coords.push_back(spatial[d]);
  at::Tensor element = indices;
  for (auto coord : coords) element = element.select(0, coord);
  const int64_t value = element.item<int64_t>();
  std::ostringstream where;
  where << "indices[";
  for (size_t i = 0; i < coords.size(); ++i) where << (i ? ", " : "") << coords[i];
  where << "] = " << value;
  std::vector<int64_t> target(p.target_size + (3 - dims), p.target_size + 3);
  if (compact) {
    TORCH_CHECK(false, op, ": invalid compact index ", where.str(), ": a uint8 index is a window position and ",
                "must be < ", p.window_elements(), " (the kernel's size) and name an element inside the ",
                "output of spatial size ", shape_string(target));
  }
  TORCH_CHECK(false, op, ": index out of range: ", where.str(), ", but a flat index must be in [0, ",
              p.target_plane(), ") for an output of spatial size ", shape_string(target));
}

}  // namespace pyvision_ops
