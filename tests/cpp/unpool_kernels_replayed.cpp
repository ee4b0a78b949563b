// The unpooling CUDA kernels (tile_unpool, claim + resolve, scatter, gather of
// csrc/unpool/unpool_kernel.cu) run on the host: each thread's element is a function of
// csrc/unpool/unpool_cuda_elements.h, called here for every element, in the glue's order
// (unpool_cuda.cpp): the write-once tile kernel where the windows tile the target, the claim +
// resolve fallback when it reports an index outside its window (or where they do not tile), the
// scatter of the pooling backward (adding), the gather of the unpooling backward; the status words
// as the kernels set them (smallest bad logical position, the "outside" flag), integer atomicMax
// for the claims. Both offset types (32- and 64-bit) are run.
//
// Reference, written from the definitions: unpooling = zeros, then every source element in
// raster order writes its value where its index points (the last one wins, as PyTorch's CPU
// loop); compact indices name a window-local position (kd, kh, kw) of the window at
// (pd * stride - padding + kd * dilation, ...); the smallest bad logical position is the error.
// Values are small integers (sums exact in float). Every output buffer starts poisoned and has
// its exact size (AddressSanitizer); values are read through strided views (planar, channels-last
// and transposed) as p.values allows.
// Cases: 1-D, 2-D and 3-D windows, planar and channels-last, flat and compact indices, pooling
// indices, indices outside their window but inside the plane, duplicates, out-of-range indices,
// targets larger than the windows cover, windows that do not tile (stride != kernel, padding).
// Usage: unpool_kernels_replayed. Prints "bad N" (N failures).
#include "unpool/unpool_cuda_elements.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "expect.h"

using namespace pyvision_ops;

namespace {

constexpr int64_t kNone = LLONG_MAX;  // the status word's "no bad index"

struct Case {
  std::string name;
  int64_t batch, channels;
  int64_t source[3], target[3], kernel[3], stride[3], padding[3];
  bool channels_last;
  bool compact;
  enum Indices { Pooling, OutsideWindow, Duplicates, OutOfRange } indices;
  int values_layout;  // 0 dense in the op's layout, 1 the other layout, 2 h and w swapped in memory
};

struct Problem {
  UnpoolParams p;
  std::vector<float> values;     // storage of the source values (read through p.values)
  std::vector<int64_t> flat;     // indices, memory order of the op's layout
  std::vector<uint8_t> compact;  // the same as compact indices (when the case is compact)
  std::vector<float> grad_target;  // a full-size upstream gradient (dense, the op's layout) for the gather
};

// Window-local position (kd, kh, kw) -> flat target position, or -1 outside the target.
int64_t decode_local(const UnpoolParams& p, int64_t s, int64_t local) {
  if (local < 0 || local >= p.kernel[0] * p.kernel[1] * p.kernel[2]) return -1;
  const int64_t pw = s % p.source_size[2], ph = (s / p.source_size[2]) % p.source_size[1],
                pd = s / (p.source_size[2] * p.source_size[1]);
  const int64_t kw = local % p.kernel[2], kh = (local / p.kernel[2]) % p.kernel[1],
                kd = local / (p.kernel[2] * p.kernel[1]);
  const int64_t t[3] = {pd * p.stride[0] - p.padding[0] + kd, ph * p.stride[1] - p.padding[1] + kh,
                        pw * p.stride[2] - p.padding[2] + kw};
  for (int d = 0; d < 3; ++d) {
    if (t[d] < 0 || t[d] >= p.target_size[d]) return -1;
  }
  return (t[0] * p.target_size[1] + t[1]) * p.target_size[2] + t[2];
}

Problem make_problem(const Case& c, std::mt19937& rng) {
  Problem pr;
  UnpoolParams& p = pr.p;
  p.batch = c.batch;
  p.channels = c.channels;
  for (int d = 0; d < 3; ++d) {
    p.source_size[d] = c.source[d];
    p.target_size[d] = c.target[d];
    p.kernel[d] = c.kernel[d];
    p.stride[d] = c.stride[d];
    p.padding[d] = c.padding[d];
  }
  p.channels_last = c.channels_last;
  const int64_t N = c.batch, C = c.channels, sp = p.source_plane(), tp = p.target_plane();
  // Source values: small integers, stored in one of three layouts.
  pr.values.resize(static_cast<size_t>(N * C * sp));
  std::uniform_int_distribution<int> value(-50, 50);
  for (auto& v : pr.values) v = static_cast<float>(value(rng));
  StridedView& view = p.values;
  const int64_t SH = c.source[1], SW = c.source[2];
  const bool planar_values = c.values_layout == 0 ? !c.channels_last : c.values_layout == 1 ? c.channels_last : true;
  if (c.values_layout == 2) {
    // planar with h and w swapped in memory: (n, c, d, w, h)
    view.stride_n = C * sp;
    view.stride_c = sp;
    view.stride[0] = SH * SW;
    view.stride[1] = 1;
    view.stride[2] = SH;
    view.flat = SH == 1 || SW == 1;
    view.flat_step = 1;
  } else if (planar_values) {
    view.stride_n = C * sp;
    view.stride_c = sp;
    view.stride[0] = SH * SW;
    view.stride[1] = SW;
    view.stride[2] = 1;
    view.flat = true;
    view.flat_step = 1;
  } else {
    view.stride_n = sp * C;
    view.stride_c = 1;
    view.stride[0] = SH * SW * C;
    view.stride[1] = SW * C;
    view.stride[2] = C;
    view.flat = true;
    view.flat_step = C;
  }
  // Indices, per (n, c, s), then stored in the op's memory order.
  std::uniform_int_distribution<int64_t> pick_local(0, p.kernel[0] * p.kernel[1] * p.kernel[2] - 1);
  std::uniform_int_distribution<int64_t> pick_target(0, tp - 1);
  std::uniform_int_distribution<int> percent(0, 99);
  pr.flat.resize(static_cast<size_t>(N * C * sp));
  pr.compact.resize(pr.flat.size());
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t ch = 0; ch < C; ++ch) {
      for (int64_t s = 0; s < sp; ++s) {
        int64_t local = pick_local(rng), t = decode_local(p, s, local);
        for (int tries = 0; t < 0 && tries < 100; ++tries) {  // a local position inside the target
          local = pick_local(rng);
          t = decode_local(p, s, local);
        }
        if (t < 0) local = 0, t = decode_local(p, s, 0);
        if (c.indices == Case::OutsideWindow && percent(rng) < 10) {
          // flat only: anywhere in the plane, or just right of the window (the first column of
          // the next window, the position an off-by-one bound would take for inside)
          const int64_t first = decode_local(p, s, 0);
          const bool room = first >= 0 && (first % p.target_size[2]) + p.kernel[2] < p.target_size[2];
          t = percent(rng) < 50 && room ? first + p.kernel[2] : pick_target(rng);
        }
        if (c.indices == Case::Duplicates && s > 0 && percent(rng) < 30) t = decode_local(p, s - 1, 0);
        const bool forced = n == N - 1 && ch == C - 1 && s == sp / 2;  // at least one bad index
        if (c.indices == Case::OutOfRange && (forced || percent(rng) < 3)) {
          t = percent(rng) < 50 ? tp + 3 : -2;
          local = 200;
        }
        const int64_t at = element_offset(n, ch, s, C, sp, c.channels_last);
        pr.flat[at] = t < 0 && c.indices != Case::OutOfRange ? 0 : t;
        pr.compact[at] = static_cast<uint8_t>(local);
      }
    }
  }
  pr.grad_target.resize(static_cast<size_t>(N * C * tp));
  for (auto& g : pr.grad_target) g = static_cast<float>(value(rng));
  return pr;
}

float source_value(const Problem& pr, int64_t n, int64_t c, int64_t s) {
  return pr.values[pr.p.values.at(n, c, s, pr.p.source_size)];
}

// The flat target position the index of (n, c, s) names, or -1.
int64_t reference_target(const Case& c, const Problem& pr, int64_t n, int64_t ch, int64_t s) {
  const UnpoolParams& p = pr.p;
  const int64_t at = element_offset(n, ch, s, p.channels, p.source_plane(), p.channels_last);
  if (c.compact) return decode_local(p, s, pr.compact[at]);
  const int64_t t = pr.flat[at];
  return t >= 0 && t < p.target_plane() ? t : -1;
}

// --- the glue's flows over the element functions --------------------------------------------

template <typename index_t, bool Compact, typename offset_t>
void unpool_flow(const Problem& pr, const index_t* indices, std::vector<float>& target, int64_t& bad, bool& used_tile,
                 bool& fell_back) {
  const UnpoolParams& p = pr.p;
  const int64_t total = p.batch * p.channels * p.target_plane();
  long long status[2] = {kNone, 0};
  used_tile = fell_back = false;
  if (windows_tile_target(p)) {
    used_tile = true;
    for (int64_t linear = 0; linear < total; ++linear) {
      offset_t n, c, window;
      bool outside = false;
      const bool take =
          tile_unpool_element<index_t, Compact, offset_t>(p, indices, static_cast<offset_t>(linear), n, c, window, outside);
      if (outside) status[1] = 1;
      target[linear] = take ? pr.values[p.values.at(n, c, window, p.source_size)] : 0.0f;
    }
    if (status[1] == 0) {
      bad = kNone;
      return;
    }
    fell_back = true;
  }
  // claim + resolve
  const int64_t sp = p.source_plane(), tp = p.target_plane();
  std::vector<int64_t> winner(static_cast<size_t>(p.batch * p.channels * tp), -1);
  for (int64_t linear = 0; linear < p.batch * p.channels * sp; ++linear) {
    int64_t n, c, s;
    const int64_t t = source_element_target<index_t, Compact, offset_t>(p, indices, static_cast<offset_t>(linear), n, c, s);
    const int64_t plane = n * p.channels + c;
    if (t < 0) {
      status[0] = std::min<long long>(status[0], plane * sp + s);
      continue;
    }
    int64_t& w = winner[plane * tp + t];
    w = std::max(w, s);  // atomicMax
  }
  for (int64_t linear = 0; linear < total; ++linear) {
    int64_t plane, n, c, t;
    target_element<offset_t>(p, static_cast<offset_t>(linear), plane, n, c, t);
    const int64_t w = winner[plane * tp + t];
    target[linear] = w < 0 ? 0.0f : pr.values[p.values.at(n, c, w, p.source_size)];
  }
  bad = status[0];
}

template <typename index_t, bool Compact, typename offset_t>
void scatter_add_flow(const Problem& pr, const index_t* indices, std::vector<float>& target, int64_t& bad) {
  const UnpoolParams& p = pr.p;
  const int64_t sp = p.source_plane(), tp = p.target_plane();
  std::fill(target.begin(), target.end(), 0.0f);  // the glue's zero_()
  long long status = kNone;
  for (int64_t linear = 0; linear < p.batch * p.channels * sp; ++linear) {
    int64_t n, c, s;
    const int64_t t = source_element_target<index_t, Compact, offset_t>(p, indices, static_cast<offset_t>(linear), n, c, s);
    if (t < 0) {
      status = std::min<long long>(status, (n * p.channels + c) * sp + s);
      continue;
    }
    target[element_offset(n, c, t, p.channels, tp, p.channels_last)] += pr.values[p.values.at(n, c, s, p.source_size)];
  }
  bad = status;
}

template <typename index_t, bool Compact, typename offset_t>
void gather_flow(const Problem& pr, const index_t* indices, std::vector<float>& source, int64_t& bad) {
  UnpoolParams p = pr.p;
  const int64_t sp = p.source_plane(), tp = p.target_plane();
  // The upstream gradient is dense in the op's layout; p.values describes it (target sizes).
  StridedView& view = p.values;
  if (p.channels_last) {
    view.stride_n = tp * p.channels;
    view.stride_c = 1;
    view.stride[0] = p.target_size[1] * p.target_size[2] * p.channels;
    view.stride[1] = p.target_size[2] * p.channels;
    view.stride[2] = p.channels;
    view.flat_step = p.channels;
  } else {
    view.stride_n = p.channels * tp;
    view.stride_c = tp;
    view.stride[0] = p.target_size[1] * p.target_size[2];
    view.stride[1] = p.target_size[2];
    view.stride[2] = 1;
    view.flat_step = 1;
  }
  view.flat = true;
  long long status = kNone;
  for (int64_t linear = 0; linear < p.batch * p.channels * sp; ++linear) {
    int64_t n, c, s;
    const int64_t t = source_element_target<index_t, Compact, offset_t>(p, indices, static_cast<offset_t>(linear), n, c, s);
    if (t < 0) {
      status = std::min<long long>(status, (n * p.channels + c) * sp + s);
      source[linear] = 0.0f;
      continue;
    }
    source[linear] = pr.grad_target[p.values.at(n, c, t, p.target_size)];
  }
  bad = status;
}

// --- checks ------------------------------------------------------------------------------------

template <typename offset_t>
void check_case(const Case& c, const Problem& pr) {
  const UnpoolParams& p = pr.p;
  const int64_t N = p.batch, C = p.channels, sp = p.source_plane(), tp = p.target_plane();
  const std::string label = c.name + (sizeof(offset_t) == 4 ? " (32-bit offsets)" : " (64-bit offsets)");
  // Reference: first bad position, unpooled target (last wins), scatter-add, gather.
  int64_t want_bad = kNone;
  std::vector<float> want_unpool(static_cast<size_t>(N * C * tp), 0.0f), want_add(want_unpool.size(), 0.0f);
  std::vector<float> want_gather(static_cast<size_t>(N * C * sp), 0.0f);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t ch = 0; ch < C; ++ch) {
      for (int64_t s = 0; s < sp; ++s) {
        const int64_t t = reference_target(c, pr, n, ch, s);
        if (t < 0) {
          want_bad = std::min(want_bad, (n * C + ch) * sp + s);
          continue;
        }
        const int64_t at = element_offset(n, ch, t, C, tp, p.channels_last);
        want_unpool[at] = source_value(pr, n, ch, s);
        want_add[at] += source_value(pr, n, ch, s);
        want_gather[element_offset(n, ch, s, C, sp, p.channels_last)] = pr.grad_target[at];
      }
    }
  }
  const float poison = -777.0f;
  std::vector<float> unpooled(want_unpool.size(), poison), added(want_add.size(), poison);
  std::vector<float> gathered(want_gather.size(), poison);
  int64_t bad_unpool = 0, bad_add = 0, bad_gather = 0;
  bool used_tile = false, fell_back = false;
  if (c.compact) {
    unpool_flow<uint8_t, true, offset_t>(pr, pr.compact.data(), unpooled, bad_unpool, used_tile, fell_back);
    scatter_add_flow<uint8_t, true, offset_t>(pr, pr.compact.data(), added, bad_add);
    gather_flow<uint8_t, true, offset_t>(pr, pr.compact.data(), gathered, bad_gather);
  } else {
    unpool_flow<int64_t, false, offset_t>(pr, pr.flat.data(), unpooled, bad_unpool, used_tile, fell_back);
    scatter_add_flow<int64_t, false, offset_t>(pr, pr.flat.data(), added, bad_add);
    gather_flow<int64_t, false, offset_t>(pr, pr.flat.data(), gathered, bad_gather);
  }
  int64_t wrong = 0;
  EXPECT(bad_unpool == want_bad && bad_add == want_bad && bad_gather == want_bad,
         "%s: first bad index %lld / %lld / %lld, expected %lld", label.c_str(), static_cast<long long>(bad_unpool),
         static_cast<long long>(bad_add), static_cast<long long>(bad_gather), static_cast<long long>(want_bad));
  if (want_bad == kNone) {
    // (With a bad index the glue raises; the outputs are then not compared.)
    auto compare = [&](const char* what, const std::vector<float>& got, const std::vector<float>& want) {
      for (size_t e = 0; e < want.size(); ++e) {
        if (got[e] != want[e] && ++wrong <= 3) {
          EXPECT(false, "%s: %s[%zu] = %g, expected %g", label.c_str(), what, e, got[e], want[e]);
        }
      }
    };
    compare("unpool", unpooled, want_unpool);
    compare("scatter-add", added, want_add);
    compare("gather", gathered, want_gather);
  }
  // The tile kernel must have been used where the windows tile, and fall back exactly when some
  // index is not inside its window.
  if (windows_tile_target(p)) {
    bool any_outside = false;
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t ch = 0; ch < C; ++ch) {
        for (int64_t s = 0; s < sp; ++s) {
          const int64_t at = element_offset(n, ch, s, C, sp, p.channels_last);
          if (c.compact) {
            any_outside |= pr.compact[at] >= p.kernel[0] * p.kernel[1] * p.kernel[2];
          } else {
            const int64_t t = pr.flat[at];
            bool inside = false;
            for (int64_t local = 0; local < p.kernel[0] * p.kernel[1] * p.kernel[2]; ++local) {
              inside |= t == decode_local(p, s, local);
            }
            any_outside |= !inside;
          }
        }
      }
    }
    EXPECT(used_tile && fell_back == any_outside, "%s: tile %d, fell back %d, some index outside its window %d",
           label.c_str(), used_tile, fell_back, any_outside);
  }
  std::printf("%-76s %s%s %s\n", label.c_str(), used_tile ? "tile" : "claim+resolve",
              fell_back ? " -> claim+resolve" : "", wrong == 0 ? "ok" : "WRONG");
}

}  // namespace

int main() {
  std::vector<Case> cases;
  using I = Case::Indices;
  // name, N, C, source (d,h,w), target, kernel, stride, padding, channels_last, compact, indices, values layout
  const std::pair<const char*, I> kinds[] = {{"pooling", I::Pooling},
                                             {"outside window", I::OutsideWindow},
                                             {"duplicates", I::Duplicates},
                                             {"out of range", I::OutOfRange}};
  for (const auto& [kind_name, kind] : kinds) {
    for (bool channels_last : {false, true}) {
      for (bool compact : {false, true}) {
        if (compact && (kind == I::OutsideWindow || kind == I::Duplicates)) continue;  // flat-index cases
        const std::string tag = std::string(kind_name) + (channels_last ? " channels-last" : " planar") +
                                (compact ? " compact" : " flat");
        cases.push_back({"2-D 2x2/2 7x6 -> 14x12, " + tag, 2, 3, {1, 7, 6}, {1, 14, 12}, {1, 2, 2}, {1, 2, 2},
                         {0, 0, 0}, channels_last, compact, kind, 0});
        cases.push_back({"2-D 2x2/2 3x3 -> 7x8 (uncovered rim), " + tag, 1, 2, {1, 3, 3}, {1, 7, 8}, {1, 2, 2},
                         {1, 2, 2}, {0, 0, 0}, channels_last, compact, kind, 1});
        cases.push_back({"1-D 3/3 5 -> 16, " + tag, 2, 2, {1, 1, 5}, {1, 1, 16}, {1, 1, 3}, {1, 1, 3}, {0, 0, 0},
                         channels_last, compact, kind, 0});
        cases.push_back({"3-D 2x2x2/2 2x3x2 -> 4x6x5, " + tag, 1, 3, {2, 3, 2}, {4, 6, 5}, {2, 2, 2}, {2, 2, 2},
                         {0, 0, 0}, channels_last, compact, kind, 2});
        cases.push_back({"2-D 3x3/2 pad 1 (no tiling) 4x4 -> 7x7, " + tag, 2, 2, {1, 4, 4}, {1, 7, 7}, {1, 3, 3},
                         {1, 2, 2}, {0, 1, 1}, channels_last, compact, kind, 0});
      }
    }
  }
  std::mt19937 rng(11);
  for (const Case& c : cases) {
    const Problem pr = make_problem(c, rng);
    check_case<int32_t>(c, pr);
    check_case<int64_t>(c, pr);
  }
  std::printf("bad %d\n", failures);
  return 0;
}
