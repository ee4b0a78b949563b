// CPU Gram kernels. Where the family's kernel table has packed kernels (gram_cpu_simd.h: AVX2),
// features go through them:
// each chunk of L is packed once into panels of one cache line per position (16 float32
// channels, float16/bfloat16 widened while packing; 8 float64 channels) and the upper triangle's
// blocks are accumulated in place in G by register-blocked outer-product micro-kernels, parallel
// over batch items (and over slices of L when the batch is smaller than the thread count). CPUs
// without AVX2 use portable loops over upper-triangle tiles, parallel over (batch item, tile
// pair).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <cstdlib>
#include <vector>

#include "common/checks.h"
#include "gram/gram.h"
#include "gram/gram_cpu_simd.h"
#include "gram/gram_checks.h"

namespace pyvision_ops {
namespace {

constexpr int64_t kTile = 64;        // rows of G per tile side (portable path)
constexpr int64_t kChunk = 512;      // elements of L per pass (portable path)

// Writes the tile's accumulators, scaled, into G and its mirror.
template <typename acc_t>
void store_tile(const GramParams& p, int64_t n, int64_t row0, int64_t col0, const acc_t* acc, acc_t* gram) {
  const int64_t C = p.channels;
  const acc_t scale = static_cast<acc_t>(p.scale);
  acc_t* g = gram + n * C * C;
  for (int64_t i = 0; i < kTile && row0 + i < C; ++i) {
    for (int64_t j = 0; j < kTile && col0 + j < C; ++j) {
      const int64_t r = row0 + i, c = col0 + j;
      if (c < r) continue;
      const acc_t v = acc[i * kTile + j] * scale;
      g[r * C + c] = v;
      g[c * C + r] = v;
    }
  }
}

// The portable loops read the features in their own dtype and accumulate in acc_t (float32, or
// float64 for float64), so half types need no widened copy.
template <typename scalar_t, typename acc_t>
void gram_planar(const GramParams& p, const scalar_t* features, acc_t* gram) {
  const int64_t C = p.channels, L = p.length;
  const int64_t tiles = (C + kTile - 1) / kTile;
  const int64_t pairs = triangle_tile_count(tiles);
  at::parallel_for(0, p.batch * pairs, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(kTile * kTile);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / pairs;
      int64_t tile_row, tile_col;
      triangle_tile(task % pairs, tiles, tile_row, tile_col);
      const int64_t row0 = tile_row * kTile, col0 = tile_col * kTile;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const scalar_t* base = features + n * C * L;
      for (int64_t l0 = 0; l0 < L; l0 += kChunk) {
        const int64_t len = std::min(kChunk, L - l0);
        for (int64_t i = 0; i < kTile && row0 + i < C; ++i) {
          const scalar_t* x = base + (row0 + i) * L + l0;
          // On a diagonal tile only entries on or above the diagonal are needed.
          for (int64_t j = tile_row == tile_col ? i : 0; j < kTile && col0 + j < C; ++j) {
            const scalar_t* y = base + (col0 + j) * L + l0;
            acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int64_t l = 0; l < len; ++l) sum += static_cast<acc_t>(x[l]) * static_cast<acc_t>(y[l]);
            acc[i * kTile + j] += sum;
          }
        }
      }
      store_tile(p, n, row0, col0, acc.data(), gram);
    }
  });
}

// Channels-last: X (N, L, C) read in place; each position l adds the outer product of its row.
template <typename scalar_t, typename acc_t>
void gram_channels_last(const GramParams& p, const scalar_t* features, acc_t* gram) {
  const int64_t C = p.channels, L = p.length;
  const int64_t tiles = (C + kTile - 1) / kTile;
  const int64_t pairs = triangle_tile_count(tiles);
  at::parallel_for(0, p.batch * pairs, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(kTile * kTile);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / pairs;
      int64_t tile_row, tile_col;
      triangle_tile(task % pairs, tiles, tile_row, tile_col);
      const int64_t row0 = tile_row * kTile, col0 = tile_col * kTile;
      const int64_t rows = std::min(kTile, C - row0), cols = std::min(kTile, C - col0);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t l = 0; l < L; ++l) {
        const scalar_t* x = features + (n * L + l) * C;
        for (int64_t i = 0; i < rows; ++i) {
          const acc_t xi = static_cast<acc_t>(x[row0 + i]);
          const scalar_t* xj = x + col0;
          acc_t* a = acc.data() + i * kTile;
          const int64_t j_start = tile_row == tile_col ? i : 0;
#pragma omp simd
          for (int64_t j = j_start; j < cols; ++j) a[j] += xi * static_cast<acc_t>(xj[j]);
        }
      }
      store_tile(p, n, row0, col0, acc.data(), gram);
    }
  });
}

// --- the packed AVX2 path: float32 accumulation (float32/float16/bfloat16), float64 for float64 -

// A 64-byte aligned buffer (the micro-kernels' column loads are aligned).
template <typename T>
class AlignedBuffer {
 public:
  explicit AlignedBuffer(int64_t count) {
    const size_t bytes = (static_cast<size_t>(count) * sizeof(T) + 63) / 64 * 64;
    data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    TORCH_CHECK(data_ != nullptr, "gram_matrix: could not allocate ", bytes, " bytes of workspace");
  }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  T* data() const { return data_; }

 private:
  T* data_ = nullptr;
};

// Positions of L per packed chunk: the chunk's panels (~256 KB) stay in L2 next to the rows of G
// they update, and a column panel (P x kc elements) fits L1 beside the row slice it meets.
template <typename T>
int64_t packed_chunk_length(int64_t panels) {
  const int64_t bytes_per_position = panels * kGramPanelOf<T> * static_cast<int64_t>(sizeof(T));
  const int64_t kc = std::clamp<int64_t>((int64_t{1} << 18) / bytes_per_position, 64, 1024);
  return kc - kc % 8;
}

constexpr int64_t kMinSliceLength = 512;         // positions of L per slice when L is split
constexpr int64_t kMaxSliceBytes = int64_t{1} << 26;  // extra C x C buffers of a split (64 MiB)

// T: the accumulation type (float for float32/float16/bfloat16 sources, double for float64).
template <typename T>
void gram_packed(const GramPackedKernels<T>& kernels, const GramParams& p, GramSource source, const void* features,
                 int64_t element_size, T* gram) {
  constexpr int64_t P = kGramPanelOf<T>;
  const int64_t C = p.channels, L = p.length;
  const int64_t panels = (C + P - 1) / P;
  const int64_t kc = packed_chunk_length<T>(panels);
  // Tasks are (item, slice of L) pairs claimed dynamically by the threads, so that a thread the
  // VM (or a neighbour) slows down does not leave the other idle at the end. Batches smaller
  // than the thread count are split over L, one task per thread (more slices measured slower):
  // slice s > 0 of item n sums into its own C x C buffer, added in slice order (the result
  // depends on the thread count only through this split, like a BLAS).
  const int64_t threads = at::get_num_threads();
  int64_t slices = 1;
  if (p.batch < threads) {
    slices = std::min((threads + p.batch - 1) / p.batch, std::max<int64_t>(1, L / kMinSliceLength));
    while (slices > 1 && (slices - 1) * p.batch * C * C * static_cast<int64_t>(sizeof(T)) > kMaxSliceBytes) --slices;
  }
  int64_t slice_length = (L + slices - 1) / slices;
  slice_length = (slice_length + 7) / 8 * 8;
  slices = (L + slice_length - 1) / slice_length;
  std::vector<T> partial(static_cast<size_t>((slices - 1) * p.batch * C * C));
  const T scale = static_cast<T>(p.scale);
  const int64_t tasks = p.batch * slices;
  // Tiny problems stay on the calling thread.
  const int64_t workers = C * C * slice_length >= (int64_t{1} << 18) ? std::min(threads, tasks) : 1;
  std::atomic<int64_t> next_task{0};
  const char* base = static_cast<const char*>(features);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    AlignedBuffer<T> packed(panels * P * kc);
    std::vector<T> edge(static_cast<size_t>(panels * P * P));
    for (int64_t task = next_task.fetch_add(1); task < tasks; task = next_task.fetch_add(1)) {
      const int64_t n = task / slices, s = task % slices;
      T* g = s == 0 ? gram + n * C * C : partial.data() + ((s - 1) * p.batch + n) * C * C;
      std::fill(g, g + C * C, T(0));
      std::fill(edge.begin(), edge.end(), T(0));
      const void* item = base + n * C * L * element_size;
      const int64_t l_begin = s * slice_length, l_end = std::min(L, (s + 1) * slice_length);
      kernels.pack_item(source, p.channels_last, item, C, L, l_begin, l_end, kc, packed.data(), edge.data(), g);
      if (slices == 1) gram_finish_upper(g, nullptr, 0, C, scale);
    }
  });
  if (slices == 1) return;
  at::parallel_for(0, p.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<const T*> partials(static_cast<size_t>(slices - 1));
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t s = 1; s < slices; ++s) partials[s - 1] = partial.data() + ((s - 1) * p.batch + n) * C * C;
      gram_finish_upper(gram + n * C * C, partials.data(), slices - 1, C, scale);
    }
  });
}

template <typename T>
at::Tensor symmetric_times_features_packed(const GramPackedKernels<T>& kernels, const at::Tensor& symmetric,
                                           const at::Tensor& view, bool channels_last) {
  constexpr int64_t P = kGramPanelOf<T>;
  const int64_t C = channels_last ? view.size(2) : view.size(1);
  const at::Tensor f = view.contiguous();
  const at::Tensor sym = symmetric.contiguous();
  const int64_t N = f.size(0), L = channels_last ? f.size(1) : f.size(2);
  at::Tensor out = at::empty(f.sizes(), f.options());
  if (out.numel() == 0) return out;
  const int64_t panels = C / P;
  // Work units: 16-position strips (planar) or blocks (channels-last) of L; planar strips are
  // packed kGramStripsPerPass at a time, so parts are whole passes.
  const int64_t units = (L + P - 1) / P;
  const int64_t unit_group = channels_last ? 1 : kGramStripsPerPass;
  // Tasks: (item, range of units), claimed dynamically; items are split when there are fewer
  // of them than threads (each task re-packs its item's S: C^2 copies against C^2 L products).
  const int64_t threads = at::get_num_threads();
  int64_t parts = 1;
  if (N < threads) parts = std::min((threads + N - 1) / N, (units + unit_group - 1) / unit_group);
  int64_t units_per_part = (units + parts - 1) / parts;
  units_per_part = (units_per_part + unit_group - 1) / unit_group * unit_group;
  parts = (units + units_per_part - 1) / units_per_part;
  const int64_t tasks = N * parts;
  const int64_t workers = C * C * L >= (int64_t{1} << 18) ? std::min(threads, tasks) : 1;
  std::atomic<int64_t> next_task{0};
  const T* sym_data = sym.const_data_ptr<T>();
  const T* f_data = f.const_data_ptr<T>();
  T* out_data = out.mutable_data_ptr<T>();
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    AlignedBuffer<T> packed(panels * P * C);
    AlignedBuffer<T> scratch((channels_last ? 1 : kGramStripsPerPass) * C * P);
    std::vector<T> edge(static_cast<size_t>(C * P));
    int64_t packed_item = -1;
    for (int64_t task = next_task.fetch_add(1); task < tasks; task = next_task.fetch_add(1)) {
      const int64_t n = task / parts, part = task % parts;
      if (n != packed_item) {
        kernels.pack_symmetric(sym_data + n * C * C, C, packed.data());
        packed_item = n;
      }
      const int64_t first = part * units_per_part, last = std::min(units, (part + 1) * units_per_part);
      if (channels_last) {
        kernels.symmetric_product_channels_last(packed.data(), f_data + n * L * C, C, L, first, last, scratch.data(),
                                                edge.data(), out_data + n * L * C);
      } else {
        kernels.symmetric_product(packed.data(), f_data + n * C * L, C, L, first, last, scratch.data(), edge.data(),
                                    out_data + n * C * L);
      }
    }
  });
  return out;
}

}  // namespace

at::Tensor symmetric_times_features_cpu(const at::Tensor& symmetric, const at::Tensor& view, bool channels_last) {
  // Each thread packs a copy of one item's S (C^2 elements): very wide S stay with bmm.
  constexpr int64_t kMaxProductChannels = 2048;
  const at::ScalarType dtype = view.scalar_type();
  const int64_t C = channels_last ? view.size(2) : view.size(1);
  const GramCpuKernels& kernels = gram_cpu_kernels();
  if (symmetric.scalar_type() != dtype || C > kMaxProductChannels) return {};
  if (dtype == at::kDouble && kernels.packed_f64 != nullptr && C % kGramPanelOf<double> == 0) {
    return symmetric_times_features_packed<double>(*kernels.packed_f64, symmetric, view, channels_last);
  }
  if (dtype == at::kFloat && kernels.packed_f32 != nullptr && C % kGramPanelOf<float> == 0) {
    return symmetric_times_features_packed<float>(*kernels.packed_f32, symmetric, view, channels_last);
  }
  return {};
}

namespace {

// The packed kernel's source type for a float32-accumulated dtype.
GramSource packed_source(at::ScalarType dtype) {
  switch (dtype) {
    case at::kBFloat16: return GramSource::BFloat16;
    case at::kHalf: return GramSource::Float16;
    default: return GramSource::Float32;
  }
}

at::Tensor gram_matrix_cpu(const at::Tensor& features, bool normalize) {
  const GramInput in = prepare_gram_input("gram_matrix", features, normalize);
  const GramParams& p = in.params;
  const at::ScalarType compute = gram_compute_dtype(features.scalar_type());
  at::Tensor gram = at::empty({p.batch, p.channels, p.channels}, features.options().dtype(compute));
  if (gram.numel() == 0) return gram.to(features.scalar_type());
  if (p.length == 0) return gram.zero_().to(features.scalar_type());
  // in.view is dense (N, C, L) or (N, L, C); half types are widened where they are read.
  const at::Tensor view = in.view.contiguous();
  const GramCpuKernels& kernels = gram_cpu_kernels();
  if (compute == at::kDouble && kernels.packed_f64 != nullptr) {
    gram_packed<double>(*kernels.packed_f64, p, GramSource::Float32, view.const_data_ptr(), view.element_size(),
                        gram.mutable_data_ptr<double>());
  } else if (compute == at::kFloat && kernels.packed_f32 != nullptr) {
    gram_packed<float>(*kernels.packed_f32, p, packed_source(features.scalar_type()), view.const_data_ptr(),
                       view.element_size(), gram.mutable_data_ptr<float>());
  } else {
    PVO_DISPATCH_FLOATING_TYPES(features.scalar_type(), "gram_matrix_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* data = view.const_data_ptr<scalar_t>();
      acc_t* out = gram.mutable_data_ptr<acc_t>();
      p.channels_last ? gram_channels_last<scalar_t, acc_t>(p, data, out) : gram_planar<scalar_t, acc_t>(p, data, out);
    });
  }
  return gram.to(features.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(pyvision_ops, CPU, m) { m.impl("gram_matrix", &gram_matrix_cpu); }

}  // namespace pyvision_ops
