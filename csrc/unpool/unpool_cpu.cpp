// CPU kernels of the pooling family: max_pool2d_with_indices (flat or compact indices), its
// backward, max_unpool{1,2,3}d and their backward. Parallel over planes (or images for the
// channels-last layout) with at::parallel_for, which runs on OpenMP threads (-fopenmp). The
// 2x2/2 float32 rows go through the family's kernel table (unpool_cpu_simd.h: AVX2 or
// portable); the values an op moves are read in place through a StridedView (unpool.h).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "unpool/unpool.h"
#include "unpool/unpool_cpu_simd.h"
#include "unpool/unpool_checks.h"

namespace pyvision_ops {
namespace {

// Planes handed to one thread at a time; a 112x112 plane is ~50 KB, so a few per task.
constexpr int64_t kPlaneGrain = 4;

// ---------------------------------------------------------------------------------------------
// max_pool2d_with_indices
// ---------------------------------------------------------------------------------------------

template <typename scalar_t, typename index_t, bool Compact>
void pool_forward_planar(const PoolParams& p, const scalar_t* x, scalar_t* out, index_t* indices) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = p.batch * p.channels * p.out_h;
  const int64_t in_plane = p.in_h * p.in_w;
  const bool is_2x2 = p.kernel_h == 2 && p.kernel_w == 2 && p.stride_h == 2 && p.stride_w == 2 && p.pad_h == 0 &&
                      p.pad_w == 0 && p.dilation_h == 1 && p.dilation_w == 1;
  // The vector rows need the row width to fit the 32-bit multiply of the flat-index computation.
  const UnpoolCpuKernels& kernels =
      p.in_w < (int64_t{1} << 31) ? unpool_cpu_kernels() : unpool_portable_kernels();
  at::parallel_for(0, rows, std::max<int64_t>(1, 2048 / std::max<int64_t>(1, p.out_w)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t plane = row / p.out_h;
      const int64_t oh = row % p.out_h;
      const scalar_t* x_plane = x + plane * in_plane;
      scalar_t* out_row = out + row * p.out_w;
      index_t* index_row = indices + row * p.out_w;
      int64_t ow = 0;
      if (is_2x2 && 2 * oh + 1 < p.in_h) {
        // SegNet's 2x2/2 windows: four loads, three compares, no bounds checks. The same rules
        // as pool_window_argmax (first max wins, NaN replaces), unrolled.
        const scalar_t* r0 = x_plane + 2 * oh * p.in_w;
        const scalar_t* r1 = r0 + p.in_w;
        const int64_t full = std::min(p.out_w, p.in_w / 2);
        const int64_t base = 2 * oh * p.in_w;
        if constexpr (std::is_same_v<scalar_t, float>) {
          kernels.max_pool2x2_row(r0, r1, out_row, Compact ? nullptr : reinterpret_cast<int64_t*>(index_row),
                                  Compact ? reinterpret_cast<uint8_t*>(index_row) : nullptr, full, base, p.in_w);
          ow = full;
        }
        for (; ow < full; ++ow) {
          const acc_t a = static_cast<acc_t>(r0[2 * ow]);
          const acc_t b = static_cast<acc_t>(r0[2 * ow + 1]);
          const acc_t c = static_cast<acc_t>(r1[2 * ow]);
          const acc_t d = static_cast<acc_t>(r1[2 * ow + 1]);
          acc_t best = a;
          int32_t local = 0;
          if (b > best || b != b) { best = b; local = 1; }
          if (c > best || c != c) { best = c; local = 2; }
          if (d > best || d != d) { best = d; local = 3; }
          out_row[ow] = static_cast<scalar_t>(best);
          if (Compact) {
            index_row[ow] = static_cast<index_t>(local);
          } else {
            index_row[ow] = static_cast<index_t>(base + (local >> 1) * p.in_w + 2 * ow + (local & 1));
          }
        }
      }
      for (; ow < p.out_w; ++ow) {
        acc_t best;
        int64_t best_flat, best_local;
        pool_window_argmax<acc_t>(
            p, oh, ow, [&](int64_t pos) { return static_cast<acc_t>(x_plane[pos]); }, best, best_flat, best_local);
        out_row[ow] = static_cast<scalar_t>(best);
        index_row[ow] = static_cast<index_t>(Compact ? best_local : best_flat);
      }
    }
  });
}

template <typename scalar_t, typename index_t, bool Compact>
void pool_forward_channels_last(const PoolParams& p, const scalar_t* x, scalar_t* out, index_t* indices) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = p.channels;
  const int64_t pixels = p.batch * p.out_h * p.out_w;
  at::parallel_for(0, pixels, std::max<int64_t>(1, 4096 / C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> best(C);
    std::vector<int64_t> best_index(C);
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const int64_t ow = pixel % p.out_w;
      const int64_t oh = (pixel / p.out_w) % p.out_h;
      const int64_t n = pixel / (p.out_w * p.out_h);
      const scalar_t* x_image = x + n * p.in_h * p.in_w * C;
      const int64_t h0 = oh * p.stride_h - p.pad_h;
      const int64_t w0 = ow * p.stride_w - p.pad_w;
      bool have_best = false;
      const int64_t kh_end = pool_tap_end(h0, p.dilation_h, p.kernel_h, p.in_h);
      const int64_t kw_end = pool_tap_end(w0, p.dilation_w, p.kernel_w, p.in_w);
      for (int64_t kh = pool_first_tap(h0, p.dilation_h); kh < kh_end; ++kh) {
        const int64_t ih = h0 + kh * p.dilation_h;
        for (int64_t kw = pool_first_tap(w0, p.dilation_w); kw < kw_end; ++kw) {
          const int64_t iw = w0 + kw * p.dilation_w;
          const scalar_t* v = x_image + (ih * p.in_w + iw) * C;
          const int64_t position = Compact ? kh * p.kernel_w + kw : ih * p.in_w + iw;
          if (!have_best) {
            for (int64_t c = 0; c < C; ++c) {
              best[c] = static_cast<acc_t>(v[c]);
              best_index[c] = position;
            }
            have_best = true;
          } else {
            for (int64_t c = 0; c < C; ++c) {
              const acc_t value = static_cast<acc_t>(v[c]);
              const bool take = value > best[c] || value != value;
              best[c] = take ? value : best[c];
              best_index[c] = take ? position : best_index[c];
            }
          }
        }
      }
      scalar_t* out_pixel = out + pixel * C;
      index_t* index_pixel = indices + pixel * C;
      if (!have_best) {
        // Window entirely in the padding (only reachable with dilation): -inf and the first
        // in-bounds position, computed by the shared helper.
        acc_t value;
        int64_t flat, local;
        pool_window_argmax<acc_t>(p, oh, ow, [](int64_t) { return acc_t(0); }, value, flat, local);
        for (int64_t c = 0; c < C; ++c) {
          out_pixel[c] = static_cast<scalar_t>(-static_cast<acc_t>(INFINITY));
          index_pixel[c] = static_cast<index_t>(Compact ? local : flat);
        }
        continue;
      }
      for (int64_t c = 0; c < C; ++c) {
        out_pixel[c] = static_cast<scalar_t>(best[c]);
        index_pixel[c] = static_cast<index_t>(best_index[c]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices_cpu(const at::Tensor& x_in, c10::IntArrayRef kernel_size,
                                                               c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                               c10::IntArrayRef dilation, bool ceil_mode,
                                                               bool compact) {
  const PoolParams p = make_pool_params(x_in, kernel_size, stride, padding, dilation, ceil_mode, compact);
  const at::Tensor x = dense_in_layout(x_in, p.channels_last);
  const std::vector<int64_t> out_sizes = {p.batch, p.channels, p.out_h, p.out_w};
  at::Tensor values = empty_in_layout(out_sizes, x.options(), p.channels_last);
  at::Tensor indices = empty_in_layout(out_sizes, x.options().dtype(compact ? at::kByte : at::kLong), p.channels_last);
  if (values.numel() == 0) return {values, indices};
  PVO_DISPATCH_FLOATING_TYPES(x.scalar_type(), "max_pool2d_with_indices_cpu", [&] {
    const auto* x_data = x.const_data_ptr<scalar_t>();
    auto* out_data = values.mutable_data_ptr<scalar_t>();
    if (compact) {
      auto* index_data = indices.mutable_data_ptr<uint8_t>();
      p.channels_last ? pool_forward_channels_last<scalar_t, uint8_t, true>(p, x_data, out_data, index_data)
                      : pool_forward_planar<scalar_t, uint8_t, true>(p, x_data, out_data, index_data);
    } else {
      auto* index_data = indices.mutable_data_ptr<int64_t>();
      p.channels_last ? pool_forward_channels_last<scalar_t, int64_t, false>(p, x_data, out_data, index_data)
                      : pool_forward_planar<scalar_t, int64_t, false>(p, x_data, out_data, index_data);
    }
  });
  return {values, indices};
}

// ---------------------------------------------------------------------------------------------
// Moving values from a pooled "source" to a full-size "target" through indices: unpooling
// (overwrite) and the pooling backward (accumulate when windows overlap).
// ---------------------------------------------------------------------------------------------

// Zero the target plane, then scatter. Returns the first bad logical position of this plane.
template <typename source_t, typename target_t, typename index_t, bool Compact, bool Accumulate>
int64_t scatter_plane(const UnpoolParams& p, int64_t plane, const source_t* source, const index_t* indices,
                      target_t* target) {
  const int64_t source_plane = p.source_plane();
  std::fill(target, target + p.target_plane(), target_t(0));
  for (int64_t s = 0; s < source_plane; ++s) {
    const int64_t t = index_target<Compact>(p, s, static_cast<int64_t>(indices[s]));
    if (t < 0) return plane * source_plane + s;
    if (Accumulate) {
      target[t] += static_cast<target_t>(source[s]);
    } else {
      target[t] = static_cast<target_t>(source[s]);
    }
  }
  return kNoBadIndex;
}

// Write-once unpooling of one plane when the windows tile the target (stride == kernel, no
// padding): each target element is either its window's value or zero, so the target is written
// in one dense pass instead of zero-fill then scatter. Returns false (plane must be redone by
// scatter_plane) if some index does not point inside its own window.
template <typename source_t, typename target_t, typename index_t, bool Compact, int64_t KernelW>
bool tile_plane(const UnpoolParams& p, const UnpoolCpuKernels& kernels, const source_t* source, const index_t* indices,
                target_t* target) {
  const int64_t kernel_w = KernelW > 0 ? KernelW : p.kernel[2];
  const int64_t sd = p.source_size[0], sh = p.source_size[1], sw = p.source_size[2];
  const int64_t th_size = p.target_size[1], tw_size = p.target_size[2];
  const int64_t covered_w = sw * kernel_w;
  int64_t matches = 0;
  if constexpr (std::is_same_v<source_t, float> && std::is_same_v<target_t, float> &&
                (std::is_same_v<index_t, int64_t> || std::is_same_v<index_t, uint8_t>)) {
    if (kernel_w == 2 && p.kernel[1] == 2 && p.kernel[0] == 1 && sd == 1) {
      // 2-D 2x2 windows: two target rows per source row, through the family's row kernel.
      for (int64_t ph = 0; ph < sh; ++ph) {
        float* t0 = target + 2 * ph * tw_size;
        const int64_t* flat = nullptr;
        const uint8_t* compact = nullptr;
        if constexpr (std::is_same_v<index_t, int64_t>) flat = indices + ph * sw;
        else compact = indices + ph * sw;
        matches += kernels.max_unpool2x2_row(source + ph * sw, flat, compact, t0, t0 + tw_size, sw, 2 * ph * tw_size,
                                             tw_size);
        std::fill(t0 + covered_w, t0 + tw_size, 0.0f);
        std::fill(t0 + tw_size + covered_w, t0 + 2 * tw_size, 0.0f);
      }
      std::fill(target + 2 * sh * tw_size, target + p.target_plane(), 0.0f);
      return matches == p.source_plane();
    }
  }
  for (int64_t pd = 0; pd < sd; ++pd) {
    for (int64_t kd = 0; kd < p.kernel[0]; ++kd) {
      const int64_t td = pd * p.kernel[0] + kd;
      for (int64_t ph = 0; ph < sh; ++ph) {
        const source_t* source_row = source + (pd * sh + ph) * sw;
        const index_t* index_row = indices + (pd * sh + ph) * sw;
        for (int64_t kh = 0; kh < p.kernel[1]; ++kh) {
          const int64_t th = ph * p.kernel[1] + kh;
          const int64_t row_start = (td * th_size + th) * tw_size;
          target_t* target_row = target + row_start;
          const int64_t local_row = (kd * p.kernel[1] + kh) * kernel_w;
          for (int64_t pw = 0; pw < sw; ++pw) {
            const int64_t value_index = static_cast<int64_t>(index_row[pw]);
            const target_t value = static_cast<target_t>(source_row[pw]);
            for (int64_t kw = 0; kw < kernel_w; ++kw) {
              const int64_t expected = Compact ? local_row + kw : row_start + pw * kernel_w + kw;
              const bool hit = value_index == expected;
              matches += hit;
              target_row[pw * kernel_w + kw] = hit ? value : target_t(0);
            }
          }
          std::fill(target_row + covered_w, target_row + tw_size, target_t(0));
        }
      }
      // Rows below the last window of this depth slice.
      std::fill(target + (td * th_size + sh * p.kernel[1]) * tw_size, target + (td + 1) * th_size * tw_size,
                target_t(0));
    }
  }
  // Depth slices past the last window.
  std::fill(target + sd * p.kernel[0] * th_size * tw_size, target + p.target_plane(), target_t(0));
  return matches == p.source_plane();
}

// Folds a task's first bad position into the op's (the smallest over all tasks).
inline void keep_first_bad(std::atomic<int64_t>& first, int64_t local_first) {
  int64_t seen = first.load();
  while (local_first < seen && !first.compare_exchange_weak(seen, local_first)) {
  }
}

// Planar layout, one task per group of planes. The source plane is read in place when it is
// contiguous, else copied (one pass over a pooled plane, which stays in cache) from its strides.
template <typename source_t, typename target_t, typename index_t, bool Compact, bool Accumulate>
int64_t scatter_planar(const UnpoolParams& p, const source_t* source, const index_t* indices, target_t* target) {
  const int64_t planes = p.batch * p.channels;
  const int64_t source_plane = p.source_plane();
  const int64_t target_plane = p.target_plane();
  const bool tile = !Accumulate && windows_tile_target(p);
  const StridedView& view = p.values;
  const UnpoolCpuKernels& kernels = unpool_cpu_kernels();
  std::atomic<int64_t> first(kNoBadIndex);
  at::parallel_for(0, planes, kPlaneGrain, [&](int64_t begin, int64_t end) {
    int64_t local_first = kNoBadIndex;
    std::vector<source_t> copied(view.planes_contiguous() ? 0 : static_cast<size_t>(source_plane));
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / p.channels, c = plane % p.channels;
      const source_t* s = source + view.at(n, c, 0, p.source_size);
      if (!view.planes_contiguous()) {
        for (int64_t k = 0; k < source_plane; ++k) copied[k] = source[view.at(n, c, k, p.source_size)];
        s = copied.data();
      }
      const index_t* i = indices + plane * source_plane;
      target_t* t = target + plane * target_plane;
      bool done = false;
      if (tile) {
        done = p.kernel[2] == 2 ? tile_plane<source_t, target_t, index_t, Compact, 2>(p, kernels, s, i, t)
                                : tile_plane<source_t, target_t, index_t, Compact, 0>(p, kernels, s, i, t);
      }
      if (!done) {
        const int64_t plane_bad = scatter_plane<source_t, target_t, index_t, Compact, Accumulate>(p, plane, s, i, t);
        local_first = std::min(local_first, plane_bad);
      }
    }
    keep_first_bad(first, local_first);
  });
  return first.load();
}

// Channels-last layout, one task per image; the source is read through its strides.
template <typename source_t, typename target_t, typename index_t, bool Compact, bool Accumulate>
int64_t scatter_channels_last(const UnpoolParams& p, const source_t* source, const index_t* indices,
                              target_t* target) {
  const int64_t C = p.channels;
  const int64_t source_plane = p.source_plane();
  const int64_t target_plane = p.target_plane();
  const StridedView& view = p.values;
  std::atomic<int64_t> first(kNoBadIndex);
  at::parallel_for(0, p.batch, 1, [&](int64_t begin, int64_t end) {
    int64_t local_first = kNoBadIndex;
    for (int64_t n = begin; n < end; ++n) {
      const index_t* i_image = indices + n * source_plane * C;
      target_t* t_image = target + n * target_plane * C;
      std::fill(t_image, t_image + target_plane * C, target_t(0));
      for (int64_t s = 0; s < source_plane; ++s) {
        for (int64_t c = 0; c < C; ++c) {
          const int64_t t = index_target<Compact>(p, s, static_cast<int64_t>(i_image[s * C + c]));
          if (t < 0) {
            local_first = std::min(local_first, (n * C + c) * source_plane + s);
            continue;
          }
          const source_t value = source[view.at(n, c, s, p.source_size)];
          if (Accumulate) {
            t_image[t * C + c] += static_cast<target_t>(value);
          } else {
            t_image[t * C + c] = static_cast<target_t>(value);
          }
        }
      }
    }
    keep_first_bad(first, local_first);
  });
  return first.load();
}

// Dispatches on layout, index type and accumulation; returns the first bad logical position.
template <typename source_t, typename target_t>
int64_t scatter_to_target(const UnpoolParams& p, const source_t* source, const at::Tensor& indices, target_t* target,
                          bool accumulate) {
  auto run = [&](auto index_tag, auto compact_tag, auto accumulate_tag) {
    using index_t = decltype(index_tag);
    constexpr bool compact = decltype(compact_tag)::value;
    constexpr bool acc = decltype(accumulate_tag)::value;
    const index_t* index_data = indices.const_data_ptr<index_t>();
    return p.channels_last ? scatter_channels_last<source_t, target_t, index_t, compact, acc>(p, source, index_data, target)
                           : scatter_planar<source_t, target_t, index_t, compact, acc>(p, source, index_data, target);
  };
  using yes = std::true_type;
  using no = std::false_type;
  switch (indices.scalar_type()) {
    case at::kLong: return accumulate ? run(int64_t{}, no{}, yes{}) : run(int64_t{}, no{}, no{});
    case at::kInt: return accumulate ? run(int32_t{}, no{}, yes{}) : run(int32_t{}, no{}, no{});
    default: return accumulate ? run(uint8_t{}, yes{}, yes{}) : run(uint8_t{}, yes{}, no{});
  }
}

// Unpool (accumulate=false) or pooling backward: returns the new target tensor of `target_sizes`.
// `source` (x, or the pooling's grad_output) is read in place, whatever its strides.
at::Tensor source_to_target(const char* op, const at::Tensor& source, const at::Tensor& indices_in,
                            UnpoolParams p, c10::IntArrayRef target_sizes, bool accumulate) {
  const at::Tensor indices = dense_in_layout(indices_in, p.channels_last);
  at::Tensor target = empty_in_layout(target_sizes, source.options(), p.channels_last);
  if (target.numel() == 0) return target;
  if (source.numel() == 0) return target.zero_();
  p.values = strided_view(source);
  const bool compact = indices.scalar_type() == at::kByte;
  int64_t bad = kNoBadIndex;
  const bool reduced = source.scalar_type() == at::kHalf || source.scalar_type() == at::kBFloat16;
  if (accumulate && reduced) {
    // Overlapping windows add several gradients into one element: sum them in float32.
    at::Tensor wide = empty_in_layout(target_sizes, source.options().dtype(at::kFloat), p.channels_last);
    PVO_DISPATCH_FLOATING_TYPES(source.scalar_type(), "max_unpool_cpu", [&] {
      bad = scatter_to_target<scalar_t, float>(p, source.const_data_ptr<scalar_t>(), indices,
                                               wide.mutable_data_ptr<float>(), true);
    });
    if (bad == kNoBadIndex) target.copy_(wide);
  } else {
    PVO_DISPATCH_FLOATING_TYPES(source.scalar_type(), "max_unpool_cpu", [&] {
      bad = scatter_to_target<scalar_t, scalar_t>(p, source.const_data_ptr<scalar_t>(), indices,
                                                  target.mutable_data_ptr<scalar_t>(), accumulate);
    });
  }
  if (bad != kNoBadIndex) raise_bad_index(op, indices, p, bad, compact);
  return target;
}

template <int64_t Dims>
at::Tensor max_unpool_cpu(const at::Tensor& x, const at::Tensor& indices, c10::IntArrayRef kernel_size,
                          c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef output_size) {
  static const char* names[] = {"", "max_unpool1d", "max_unpool2d", "max_unpool3d"};
  const UnpoolParams p = make_unpool_params(names[Dims], Dims, x, indices, kernel_size, stride, padding, output_size);
  std::vector<int64_t> sizes = {p.batch, p.channels};
  sizes.insert(sizes.end(), output_size.begin(), output_size.end());
  return source_to_target(names[Dims], x, indices, p, sizes, /*accumulate=*/false);
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                   c10::IntArrayRef input_size, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                   c10::IntArrayRef padding, c10::IntArrayRef dilation, bool compact) {
  const UnpoolParams p =
      make_pool_backward_params(grad_output, indices, input_size, kernel_size, stride, padding, dilation, compact);
  const std::vector<int64_t> sizes = {p.batch, p.channels, input_size[0], input_size[1]};
  // Windows of padding only add a zero to element 0 of their plane (accumulating, so that no
  // window's gradient is overwritten).
  PoolBackwardRewrite rewrite;
  if (pool_backward_without_padding_only(p, grad_output, indices, input_size, kernel_size, stride, padding, dilation,
                                         rewrite)) {
    return source_to_target("_max_pool2d_backward", rewrite.grad_output, rewrite.indices, rewrite.params, sizes,
                            /*accumulate=*/true);
  }
  return source_to_target("_max_pool2d_backward", grad_output, indices, p, sizes, windows_overlap(p));
}

// ---------------------------------------------------------------------------------------------
// Gather: the unpooling backward (grad_x[i] = grad_output[target(i)]).
// ---------------------------------------------------------------------------------------------

// Window-local offsets of every compact position, so that decoding an index needs no division.
struct CompactWindowTable {
  int64_t count = 0;
  int64_t offset[3][256] = {};  // (d, h, w) offset of window position `local` from the window start

  explicit CompactWindowTable(const UnpoolParams& p) {
    count = p.window_elements();
    for (int64_t local = 0; local < count && local < 256; ++local) {
      offset[0][local] = (local / (p.kernel[1] * p.kernel[2])) * p.dilation[0];
      offset[1][local] = ((local / p.kernel[2]) % p.kernel[1]) * p.dilation[1];
      offset[2][local] = (local % p.kernel[2]) * p.dilation[2];
    }
  }
};

// Gather (the unpooling backward): source[i] = target[target_of(indices[i])], the target (the
// upstream gradient) read in place through p.values. Source positions are walked as (d, h, w)
// loops so compact indices decode through the table, not by division; flat indices need a
// division only when the target's spatial strides do not nest (p.values.flat is false).
template <typename scalar_t, typename index_t, bool Compact, bool ChannelsLast>
int64_t gather_from_target_layout(const UnpoolParams& p, const scalar_t* __restrict__ target,
                                  const index_t* __restrict__ indices, scalar_t* __restrict__ source) {
  const int64_t C = p.channels;
  const int64_t source_plane = p.source_plane();
  const int64_t target_plane = p.target_plane();
  const int64_t SD = p.source_size[0], SH = p.source_size[1], SW = p.source_size[2];
  const int64_t TD = p.target_size[0], TH = p.target_size[1], TW = p.target_size[2];
  const int64_t stride_d = p.stride[0], stride_h = p.stride[1], stride_w = p.stride[2];
  const int64_t pad_d = p.padding[0], pad_h = p.padding[1], pad_w = p.padding[2];
  const StridedView& view = p.values;
  const CompactWindowTable table(p);
  const int64_t* off_d = table.offset[0];
  const int64_t* off_h = table.offset[1];
  const int64_t* off_w = table.offset[2];
  const int64_t window_count = table.count;
  // Planar: one task per plane; channels-last: one per image, channels innermost.
  const int64_t inner = ChannelsLast ? C : 1;
  std::atomic<int64_t> first(kNoBadIndex);
  at::parallel_for(0, ChannelsLast ? p.batch : p.batch * C, ChannelsLast ? 1 : kPlaneGrain,
                   [&](int64_t begin, int64_t end) {
    int64_t local_first = kNoBadIndex;
    for (int64_t o = begin; o < end; ++o) {
      const index_t* i_base = indices + o * source_plane * inner;
      scalar_t* s_base = source + o * source_plane * inner;
      const int64_t n = ChannelsLast ? o : o / C;
      int64_t s = 0;
      for (int64_t pd = 0; pd < SD; ++pd) {
        const int64_t d0 = pd * stride_d - pad_d;
        for (int64_t ph = 0; ph < SH; ++ph) {
          const int64_t h0 = ph * stride_h - pad_h;
          for (int64_t pw = 0; pw < SW; ++pw, ++s) {
            const int64_t w0 = pw * stride_w - pad_w;
            for (int64_t k = 0; k < inner; ++k) {
              const int64_t c = ChannelsLast ? k : o % C;
              const int64_t i = s * inner + k;
              const int64_t value = static_cast<int64_t>(i_base[i]);
              int64_t at = -1;
              if constexpr (Compact) {
                if (value < window_count) {
                  const int64_t td = d0 + off_d[value], th = h0 + off_h[value], tw = w0 + off_w[value];
                  if (static_cast<uint64_t>(td) < static_cast<uint64_t>(TD) &&
                      static_cast<uint64_t>(th) < static_cast<uint64_t>(TH) &&
                      static_cast<uint64_t>(tw) < static_cast<uint64_t>(TW)) {
                    at = view.at(n, c, td, th, tw);
                  }
                }
              } else if (static_cast<uint64_t>(value) < static_cast<uint64_t>(target_plane)) {
                at = view.at(n, c, value, p.target_size);
              }
              if (at < 0) {
                local_first = std::min(local_first, (n * C + c) * source_plane + s);
                s_base[i] = scalar_t(0);
                continue;
              }
              s_base[i] = target[at];
            }
          }
        }
      }
    }
    keep_first_bad(first, local_first);
  });
  return first.load();
}

// SegNet's case (planar, compact, 2-D 2x2 windows tiling the target): the code picks one of two
// target rows and one of two columns, with no other arithmetic.
template <typename scalar_t>
int64_t gather_compact_2x2_planar(const UnpoolParams& p, const scalar_t* __restrict__ target,
                                  const uint8_t* __restrict__ indices, scalar_t* __restrict__ source) {
  const int64_t SH = p.source_size[1], SW = p.source_size[2];
  const int64_t source_plane = p.source_plane();
  const StridedView& view = p.values;
  const int64_t row_step = view.stride[1], column_step = view.stride[2];
  std::atomic<int64_t> first(kNoBadIndex);
  at::parallel_for(0, p.batch * p.channels, kPlaneGrain, [&](int64_t begin, int64_t end) {
    int64_t local_first = kNoBadIndex;
    for (int64_t o = begin; o < end; ++o) {
      const scalar_t* plane = target + view.at(o / p.channels, o % p.channels, 0, 0, 0);
      for (int64_t ph = 0; ph < SH; ++ph) {
        const scalar_t* row0 = plane + 2 * ph * row_step;
        const uint8_t* codes = indices + o * source_plane + ph * SW;
        scalar_t* out = source + o * source_plane + ph * SW;
        for (int64_t pw = 0; pw < SW; ++pw) {
          const int64_t code = codes[pw];
          if (code > 3) {
            local_first = std::min(local_first, o * source_plane + ph * SW + pw);
            out[pw] = scalar_t(0);
            continue;
          }
          // Arithmetic, not a branch on the code: the codes are random, a branch mispredicts.
          out[pw] = row0[(code >> 1) * row_step + (2 * pw + (code & 1)) * column_step];
        }
      }
    }
    keep_first_bad(first, local_first);
  });
  return first.load();
}

// Flat indices, planar layout, target spatial strides that nest (p.values.flat): the index is
// the target element's position times a constant step, so each plane is one tight loop.
template <typename scalar_t, typename index_t, bool UnitStep>
int64_t gather_flat_planar(const UnpoolParams& p, const scalar_t* __restrict__ target,
                           const index_t* __restrict__ indices, scalar_t* __restrict__ source) {
  const int64_t source_plane = p.source_plane();
  const uint64_t target_plane = static_cast<uint64_t>(p.target_plane());
  const StridedView& view = p.values;
  const int64_t step = UnitStep ? 1 : view.flat_step;
  std::atomic<int64_t> first(kNoBadIndex);
  at::parallel_for(0, p.batch * p.channels, kPlaneGrain, [&](int64_t begin, int64_t end) {
    int64_t local_first = kNoBadIndex;
    for (int64_t o = begin; o < end; ++o) {
      const scalar_t* plane = target + view.at(o / p.channels, o % p.channels, 0, 0, 0);
      const index_t* codes = indices + o * source_plane;
      scalar_t* out = source + o * source_plane;
      for (int64_t s = 0; s < source_plane; ++s) {
        const int64_t value = static_cast<int64_t>(codes[s]);
        if (static_cast<uint64_t>(value) >= target_plane) {
          local_first = std::min(local_first, o * source_plane + s);
          out[s] = scalar_t(0);
          continue;
        }
        out[s] = plane[value * step];
      }
    }
    keep_first_bad(first, local_first);
  });
  return first.load();
}

// The gradient of out.sum() for SegNet's float32 case (planar, 2-D 2x2 windows tiling the target,
// int64 flat or uint8 compact indices): the upstream gradient is constant over each plane
// (spatial strides 0), so each source row is a fill of that value where the index lies inside
// its window (the kernel table's fill row). A row with an index outside its window (legal for flat indices) is
// redone by the general rule, which also reports bad ones.
template <typename index_t>
int64_t gather_2x2_constant_planar(const UnpoolParams& p, const float* __restrict__ target,
                                   const index_t* __restrict__ indices, float* __restrict__ source) {
  constexpr bool Compact = std::is_same_v<index_t, uint8_t>;
  const int64_t SH = p.source_size[1], SW = p.source_size[2], TW = p.target_size[2];
  const int64_t source_plane = p.source_plane();
  const StridedView& view = p.values;
  const UnpoolCpuKernels& kernels = unpool_cpu_kernels();
  std::atomic<int64_t> first(kNoBadIndex);
  at::parallel_for(0, p.batch * p.channels, kPlaneGrain, [&](int64_t begin, int64_t end) {
    int64_t local_first = kNoBadIndex;
    for (int64_t o = begin; o < end; ++o) {
      const int64_t n = o / p.channels, c = o % p.channels;
      uint32_t value_bits;
      std::memcpy(&value_bits, target + view.at(n, c, 0, 0, 0), sizeof(value_bits));
      for (int64_t ph = 0; ph < SH; ++ph) {
        const index_t* row_indices = indices + o * source_plane + ph * SW;
        const int64_t* flat = nullptr;
        const uint8_t* compact = nullptr;
        if constexpr (Compact) compact = row_indices;
        else flat = row_indices;
        uint32_t* out = reinterpret_cast<uint32_t*>(source + o * source_plane + ph * SW);
        if (kernels.max_unpool2x2_fill_row(value_bits, flat, compact, out, SW, 2 * ph * TW, TW) == SW) continue;
        for (int64_t pw = 0; pw < SW; ++pw) {
          const int64_t s = ph * SW + pw;
          const int64_t t = index_target<Compact>(p, s, static_cast<int64_t>(row_indices[pw]));
          if (t < 0) {
            local_first = std::min(local_first, o * source_plane + s);
            out[pw] = 0;
            continue;
          }
          out[pw] = value_bits;
        }
      }
    }
    keep_first_bad(first, local_first);
  });
  return first.load();
}

// The 2x2 gather paths above walk one depth slice: a single slice of 2x2 windows that tile the
// target (2-D unpooling, or 3-D with one source depth slice); 3-D (1, 2, 2) windows over several
// slices take the general loops.
inline bool is_2d_2x2_tiling(const UnpoolParams& p) {
  return p.kernel[0] == 1 && p.kernel[1] == 2 && p.kernel[2] == 2 && p.source_size[0] == 1 && windows_tile_target(p);
}

template <typename scalar_t, typename index_t, bool Compact>
int64_t gather_from_target(const UnpoolParams& p, const scalar_t* target, const index_t* indices, scalar_t* source) {
  if constexpr (std::is_same_v<scalar_t, float> && (std::is_same_v<index_t, uint8_t> || std::is_same_v<index_t, int64_t>)) {
    if (!p.channels_last && is_2d_2x2_tiling(p) && p.values.stride[1] == 0 && p.values.stride[2] == 0) {
      return gather_2x2_constant_planar<index_t>(p, target, indices, source);
    }
  }
  if constexpr (Compact) {
    if (!p.channels_last && is_2d_2x2_tiling(p)) {
      return gather_compact_2x2_planar<scalar_t>(p, target, indices, source);
    }
  } else {
    if (!p.channels_last && p.values.planes_contiguous()) {
      return gather_flat_planar<scalar_t, index_t, true>(p, target, indices, source);
    }
    if (!p.channels_last && p.values.flat) return gather_flat_planar<scalar_t, index_t, false>(p, target, indices, source);
  }
  return p.channels_last ? gather_from_target_layout<scalar_t, index_t, Compact, true>(p, target, indices, source)
                         : gather_from_target_layout<scalar_t, index_t, Compact, false>(p, target, indices, source);
}

at::Tensor gather_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices_in, UnpoolParams p) {
  constexpr const char* op = "_max_unpool_backward";
  const at::Tensor indices = dense_in_layout(indices_in, p.channels_last);
  at::Tensor grad_x = empty_in_layout(indices.sizes(), grad_output.options(), p.channels_last);
  if (grad_x.numel() == 0) return grad_x;
  p.values = strided_view(grad_output);
  int64_t bad = kNoBadIndex;
  PVO_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "max_unpool_backward_cpu", [&] {
    const auto* target = grad_output.const_data_ptr<scalar_t>();
    auto* source = grad_x.mutable_data_ptr<scalar_t>();
    switch (indices.scalar_type()) {
      case at::kLong:
        bad = gather_from_target<scalar_t, int64_t, false>(p, target, indices.const_data_ptr<int64_t>(), source);
        break;
      case at::kInt:
        bad = gather_from_target<scalar_t, int32_t, false>(p, target, indices.const_data_ptr<int32_t>(), source);
        break;
      default:
        bad = gather_from_target<scalar_t, uint8_t, true>(p, target, indices.const_data_ptr<uint8_t>(), source);
    }
  });
  if (bad != kNoBadIndex) raise_bad_index(op, indices, p, bad, indices.scalar_type() == at::kByte);
  return grad_x;
}

at::Tensor max_unpool_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                   c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                   c10::IntArrayRef dilation) {
  const UnpoolParams p = make_unpool_backward_params(grad_output, indices, kernel_size, stride, padding, dilation);
  // The adjoint of the pooling backward: a window of padding only gathers nothing (zero).
  at::Tensor flat, padding_only;
  if (unpool_backward_without_padding_only(p, indices, flat, padding_only)) {
    return gather_backward_cpu(grad_output, flat, p).masked_fill_(padding_only, 0);
  }
  return gather_backward_cpu(grad_output, indices, p);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyvision_ops, CPU, m) {
  m.impl("max_pool2d_with_indices", &max_pool2d_with_indices_cpu);
  m.impl("_max_pool2d_backward", &max_pool2d_backward_cpu);
  m.impl("max_unpool1d", &max_unpool_cpu<1>);
  m.impl("max_unpool2d", &max_unpool_cpu<2>);
  m.impl("max_unpool3d", &max_unpool_cpu<3>);
  m.impl("_max_unpool_backward", &max_unpool_backward_cpu);
}

}  // namespace pyvision_ops
