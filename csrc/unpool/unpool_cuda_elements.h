// What one thread of each unpooling CUDA kernel (unpool_kernel.cu) computes for its element, as
// host-and-device functions over the geometry of unpool.h: the kernels are grid-stride loops
// around them, and tests/cpp/unpool_kernels_replayed.cpp runs them for every element on the host.
// Torch-free and CUDA-free. `linear` is an element's position in memory order (planar or
// channels-last, p.channels_last) of the tensor the kernel walks; offset_t is the kernels' 32- or
// 64-bit offset type.
#pragma once

#include <cstdint>

#include "common/host_device.h"
#include "unpool/unpool.h"

namespace pyvision_ops {

// tile_unpool_kernel (windows tile the target): target element `linear` is its window's value
// when the window's index names it, else zero. Returns whether it takes the value, which is then
// source element (n, c, window) (read through p.values). `outside` is set (never cleared) by the
// window's first element when the window's index does not lie inside the window: the glue then
// redoes the tensor by claim + resolve.
template <typename index_t, bool Compact, typename offset_t>
PVO_HOST_DEVICE PVO_INLINE bool tile_unpool_element(const UnpoolParams& p, const index_t* indices, offset_t linear,
                                                    offset_t& n, offset_t& c, offset_t& window, bool& outside) {
  const offset_t target_plane = static_cast<offset_t>(p.target_plane());
  const offset_t source_plane = static_cast<offset_t>(p.source_plane());
  const offset_t channels = static_cast<offset_t>(p.channels);
  const offset_t tw_size = static_cast<offset_t>(p.target_size[2]), th_size = static_cast<offset_t>(p.target_size[1]);
  const offset_t kd_size = static_cast<offset_t>(p.kernel[0]), kh_size = static_cast<offset_t>(p.kernel[1]),
                 kw_size = static_cast<offset_t>(p.kernel[2]);
  offset_t t;
  element_coords<offset_t>(linear, channels, target_plane, p.channels_last, n, c, t);
  const offset_t tw = t % tw_size;
  const offset_t th = (t / tw_size) % th_size;
  const offset_t td = t / (tw_size * th_size);
  const offset_t pd = td / kd_size, ph = th / kh_size, pw = tw / kw_size;
  window = 0;
  if (!(pd < p.source_size[0] && ph < p.source_size[1] && pw < p.source_size[2])) return false;  // past the windows
  const offset_t kd = td - pd * kd_size, kh = th - ph * kh_size, kw = tw - pw * kw_size;
  window = (pd * static_cast<offset_t>(p.source_size[1]) + ph) * static_cast<offset_t>(p.source_size[2]) + pw;
  const offset_t at =
      p.channels_last ? (n * source_plane + window) * channels + c : (n * channels + c) * source_plane + window;
  const int64_t value_index = static_cast<int64_t>(indices[at]);
  const offset_t local = (kd * kh_size + kh) * kw_size + kw;
  if (local == 0) {
    bool inside;
    if (Compact) {
      inside = value_index < static_cast<int64_t>(kd_size * kh_size * kw_size);  // tiles lie inside the target
    } else {
      const int64_t offset = value_index - static_cast<int64_t>(t);  // from the window's first element
      inside = false;
      for (offset_t a = 0; a < kd_size; ++a) {
        for (offset_t b = 0; b < kh_size; ++b) {
          const int64_t row = (static_cast<int64_t>(a) * th_size + b) * tw_size;
          inside |= offset >= row && offset < row + kw_size;
        }
      }
    }
    if (!inside) outside = true;
  }
  return value_index == (Compact ? static_cast<int64_t>(local) : static_cast<int64_t>(t));
}

// (n, c, s) of element `linear` (memory order) of a tensor with `plane` spatial elements, divided
// in offset_t.
template <typename offset_t>
PVO_HOST_DEVICE PVO_INLINE void element_coords_of(const UnpoolParams& p, offset_t linear, int64_t plane, int64_t& n,
                                                  int64_t& c, int64_t& s) {
  offset_t n_, c_, s_;
  element_coords<offset_t>(linear, static_cast<offset_t>(p.channels), static_cast<offset_t>(plane), p.channels_last, n_,
                           c_, s_);
  n = n_;
  c = c_;
  s = s_;
}

// scatter_kernel, claim_kernel, gather_kernel: source element `linear` (memory order of the
// indices) is (n, c, s); returns the flat target position its index names in its plane, or -1
// for a bad index (the kernels then report the logical position (n * C + c) * source_plane + s).
template <typename index_t, bool Compact, typename offset_t>
PVO_HOST_DEVICE PVO_INLINE int64_t source_element_target(const UnpoolParams& p, const index_t* indices, offset_t linear,
                                                         int64_t& n, int64_t& c, int64_t& s) {
  element_coords_of<offset_t>(p, linear, p.source_plane(), n, c, s);
  return index_target<Compact>(p, s, static_cast<int64_t>(indices[linear]));
}

// resolve_kernel: target element `linear` (memory order) is (n, c, t) of plane n * C + c.
template <typename offset_t>
PVO_HOST_DEVICE PVO_INLINE void target_element(const UnpoolParams& p, offset_t linear, int64_t& plane, int64_t& n,
                                               int64_t& c, int64_t& t) {
  element_coords_of<offset_t>(p, linear, p.target_plane(), n, c, t);
  plane = n * p.channels + c;
}

}  // namespace pyvision_ops
