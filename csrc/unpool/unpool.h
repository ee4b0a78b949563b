// Max pooling with indices and max unpooling: parameter structs and the per-element math shared
// by the CPU kernels (unpool_cpu.cpp) and the CUDA kernels (unpool_kernel.cu). No torch headers.
//
// Layouts. Every tensor is dense in one of two layouts, chosen by the glue:
//   planar        (N, C, S...)  element (n, c, s) at (n * C + c) * S + s
//   channels-last (N, S..., C)  element (n, c, s) at (n * S + s) * C + c
// where s is the flat spatial position (d * H + h) * W + w. 1-D and 2-D problems are the 3-D
// problem with leading spatial sizes of 1.
//
// Index formats. Flat: s in the target plane (PyTorch's format). Compact (uint8): the
// window-local position (kd * kH + kh) * kW + kw of the selected element.
//
// The tensor whose values an op moves (unpooling's x, the backward ops' grad_output) is read in
// place through a StridedView, whatever its strides: an upstream gradient may be expanded
// (stride 0, the gradient of out.sum()), sliced or channels-last, and is never copied.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace pyvision_ops {

// Element (n, c, d, h, w) of a tensor read in place: n * stride_n + c * stride_c +
// d * stride[0] + h * stride[1] + w * stride[2] elements from its first element.
struct StridedView {
  int64_t stride_n = 0, stride_c = 0;
  int64_t stride[3] = {0, 0, 0};
  // When the spatial strides nest (stride[1] == W * stride[2] and stride[0] == H * stride[1],
  // ignoring dims of size 1) the flat spatial position s = (d * H + h) * W + w sits at
  // s * flat_step: true of dense planes, channels-last and stride-0 tensors. Otherwise s is split
  // into (d, h, w).
  bool flat = true;
  int64_t flat_step = 0;

  PVO_HOST_DEVICE int64_t at(int64_t n, int64_t c, int64_t d, int64_t h, int64_t w) const {
    return n * stride_n + c * stride_c + d * stride[0] + h * stride[1] + w * stride[2];
  }
  // Element (n, c, s) for spatial sizes `size` (d, h, w).
  PVO_HOST_DEVICE int64_t at(int64_t n, int64_t c, int64_t s, const int64_t* size) const {
    if (flat) return n * stride_n + c * stride_c + s * flat_step;
    const int64_t w = s % size[2];
    const int64_t dh = s / size[2];
    return at(n, c, dh / size[1], dh % size[1], w);
  }
  // True when every plane (n, c) is contiguous: the kernels can then take a pointer to it.
  PVO_HOST_DEVICE bool planes_contiguous() const { return flat && flat_step == 1; }
};

struct PoolParams {
  int64_t batch = 0, channels = 0;
  int64_t in_h = 0, in_w = 0, out_h = 0, out_w = 0;
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1;
  bool channels_last = false;
};

// Unpooling, and everything that moves values between a pooled tensor ("source", the unpool
// input or pool's grad_output) and a full-size tensor ("target", the unpool output or pool's
// grad_input) through indices.
struct UnpoolParams {
  int64_t batch = 0, channels = 0;
  int64_t source_size[3] = {1, 1, 1};  // pooled spatial sizes (d, h, w)
  int64_t target_size[3] = {1, 1, 1};  // full-size spatial sizes (d, h, w)
  int64_t kernel[3] = {1, 1, 1};
  int64_t stride[3] = {1, 1, 1};
  int64_t padding[3] = {0, 0, 0};
  int64_t dilation[3] = {1, 1, 1};
  bool channels_last = false;  // layout of the tensors the op writes and of its indices
  StridedView values;          // the tensor of values moved (see the top of this file)

  PVO_HOST_DEVICE int64_t source_plane() const { return source_size[0] * source_size[1] * source_size[2]; }
  PVO_HOST_DEVICE int64_t target_plane() const { return target_size[0] * target_size[1] * target_size[2]; }
  PVO_HOST_DEVICE int64_t window_elements() const { return kernel[0] * kernel[1] * kernel[2]; }
};

// Offset of element (n, c, s) of a dense tensor with `plane` spatial elements.
PVO_HOST_DEVICE PVO_INLINE int64_t element_offset(int64_t n, int64_t c, int64_t s, int64_t channels,
                                                  int64_t plane, bool channels_last) {
  return channels_last ? (n * plane + s) * channels + c : (n * channels + c) * plane + s;
}

// Inverse of element_offset for a linear position in memory order. The CUDA kernels pass a
// 32-bit offset_t when every tensor of the launch is small enough (integer division is far
// cheaper in 32 bits), else 64-bit.
template <typename offset_t>
PVO_HOST_DEVICE PVO_INLINE void element_coords(offset_t linear, offset_t channels, offset_t plane, bool channels_last,
                                               offset_t& n, offset_t& c, offset_t& s) {
  if (channels_last) {
    c = linear % channels;
    const offset_t ns = linear / channels;
    s = ns % plane;
    n = ns / plane;
  } else {
    s = linear % plane;
    const offset_t nc = linear / plane;
    c = nc % channels;
    n = nc / channels;
  }
}

// Flat target position of a compact index stored at source position `source_s`, or -1 when the
// index is outside the window or the position it names is outside the target plane.
PVO_HOST_DEVICE PVO_INLINE int64_t compact_target(const UnpoolParams& p, int64_t source_s, int64_t local) {
  if (local < 0 || local >= p.window_elements()) return -1;
  const int64_t pw = source_s % p.source_size[2];
  const int64_t ph = (source_s / p.source_size[2]) % p.source_size[1];
  const int64_t pd = source_s / (p.source_size[2] * p.source_size[1]);
  const int64_t kw = local % p.kernel[2];
  const int64_t kh = (local / p.kernel[2]) % p.kernel[1];
  const int64_t kd = local / (p.kernel[2] * p.kernel[1]);
  const int64_t td = pd * p.stride[0] - p.padding[0] + kd * p.dilation[0];
  const int64_t th = ph * p.stride[1] - p.padding[1] + kh * p.dilation[1];
  const int64_t tw = pw * p.stride[2] - p.padding[2] + kw * p.dilation[2];
  if (td < 0 || td >= p.target_size[0] || th < 0 || th >= p.target_size[1] || tw < 0 || tw >= p.target_size[2]) {
    return -1;
  }
  return (td * p.target_size[1] + th) * p.target_size[2] + tw;
}

// Flat target position named by index value `value` at source position `source_s`, or -1 when
// it is out of range. Flat indices are used as they are; compact ones are decoded.
template <bool Compact>
PVO_HOST_DEVICE PVO_INLINE int64_t index_target(const UnpoolParams& p, int64_t source_s, int64_t value) {
  if (Compact) return compact_target(p, source_s, value);
  return (value >= 0 && value < p.target_plane()) ? value : -1;
}

// True when the windows tile the target exactly: stride == kernel, no padding, no dilation. Then
// every target element belongs to at most one window and unpooling can write each element once.
inline bool windows_tile_target(const UnpoolParams& p) {
  for (int d = 0; d < 3; ++d) {
    if (p.stride[d] != p.kernel[d] || p.padding[d] != 0 || p.dilation[d] != 1) return false;
    if (p.source_size[d] * p.kernel[d] > p.target_size[d]) return false;
  }
  return true;
}

// True when two windows can share a target element (a scatter into it then accumulates); false
// when no two do.
inline bool windows_overlap(const UnpoolParams& p) {
  for (int d = 0; d < 3; ++d) {
    if (p.source_size[d] > 1 && p.stride[d] < (p.kernel[d] - 1) * p.dilation[d] + 1) return true;
  }
  return false;
}

// The kernel taps of one pooling window along one dim: tap k reads input position
// start + k * dilation; the taps inside [0, size) are [pool_first_tap, pool_tap_end), computed
// in O(1) (a window of 2^40 taps over 8 inputs must not walk its taps).
PVO_HOST_DEVICE PVO_INLINE int64_t pool_first_tap(int64_t start, int64_t dilation) {
  return start >= 0 ? 0 : (-start + dilation - 1) / dilation;
}

PVO_HOST_DEVICE PVO_INLINE int64_t pool_tap_end(int64_t start, int64_t dilation, int64_t kernel, int64_t size) {
  if (start >= size) return 0;
  const int64_t end = (size - 1 - start) / dilation + 1;
  return end < kernel ? end : kernel;
}

// row * width + column in two's-complement wrapping arithmetic (no signed overflow).
PVO_HOST_DEVICE PVO_INLINE int64_t pool_wrapping_index(int64_t row, int64_t width, int64_t column) {
  return static_cast<int64_t>(static_cast<uint64_t>(row) * static_cast<uint64_t>(width) +
                              static_cast<uint64_t>(column));
}

// The max of one pooling window, PyTorch's rules: the first maximum in window order wins ties;
// a NaN replaces the running max (so NaN propagates); the index starts at the first in-bounds
// position. `load(flat_input_position)` returns the element converted to acc_t.
template <typename acc_t, typename Load>
PVO_HOST_DEVICE PVO_INLINE void pool_window_argmax(const PoolParams& p, int64_t oh, int64_t ow, const Load& load,
                                                   acc_t& best, int64_t& best_flat, int64_t& best_local) {
  const int64_t h0 = oh * p.stride_h - p.pad_h;
  const int64_t w0 = ow * p.stride_w - p.pad_w;
  const int64_t kh_first = pool_first_tap(h0, p.dilation_h), kw_first = pool_first_tap(w0, p.dilation_w);
  const int64_t kh_end = pool_tap_end(h0, p.dilation_h, p.kernel_h, p.in_h);
  const int64_t kw_end = pool_tap_end(w0, p.dilation_w, p.kernel_w, p.in_w);
  // A window entirely in the padding keeps these (PyTorch's index for it); with huge kernels or
  // dilations they can pass int64, so they wrap (defined, unsigned) instead of overflowing. The
  // window-local index is only stored for compact indices, whose window has at most 256 taps.
  best_flat = pool_wrapping_index(h0 + kh_first * p.dilation_h, p.in_w, w0 + kw_first * p.dilation_w);
  best_local = pool_wrapping_index(kh_first, p.kernel_w, kw_first);
  bool have_best = false;
  for (int64_t kh = kh_first; kh < kh_end; ++kh) {
    const int64_t ih = h0 + kh * p.dilation_h;
    for (int64_t kw = kw_first; kw < kw_end; ++kw) {
      const int64_t iw = w0 + kw * p.dilation_w;
      const acc_t v = load(ih * p.in_w + iw);
      // PyTorch starts from -inf and takes "v > best || isnan(v)"; taking the first element
      // unconditionally is the same (a first -inf leaves best at -inf and the index here).
      if (!have_best || v > best || v != v) {
        best = v;
        best_flat = ih * p.in_w + iw;
        best_local = pool_wrapping_index(kh, p.kernel_w, kw);
        have_best = true;
      }
    }
  }
  if (!have_best) {
    best = -static_cast<acc_t>(INFINITY);  // window entirely in the padding: -inf, as PyTorch
  }
}

}  // namespace pyvision_ops
