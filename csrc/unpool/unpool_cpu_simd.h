// The pooling family's CPU row kernels for SegNet's 2x2/2 float32 windows (the hot case),
// selected through one table: portable versions here (they define the semantics), AVX2 versions
// in unpool_cpu_simd.cpp. Torch-free. Other shapes and dtypes use the loops in unpool_cpu.cpp.
#pragma once

#include <cstdint>

#include "common/cpu_features.h"

namespace pyvision_ops {

struct UnpoolCpuKernels {
  // One output row of 2x2/2 max pooling: r0, r1 are the two input rows, `count` windows. Writes
  // values and either flat int64 indices (`flat`, base = flat position of r0[0], row_width = W)
  // or compact uint8 indices (`compact`); exactly one of the two is non-null. PyTorch's rules:
  // the first maximum wins ties, a NaN replaces the running max.
  void (*max_pool2x2_row)(const float* r0, const float* r1, float* values, int64_t* flat, uint8_t* compact,
                          int64_t count, int64_t base, int64_t row_width);
  // Write-once 2x2/2 unpooling of one source row: `count` windows of `source`/indices (flat,
  // or compact; one non-null) to the two target rows t0, t1 (target row width `row_width`, t0
  // starting at flat position `row_start`). Returns the number of windows whose index named a
  // position inside the window; the caller redoes the plane by scatter when that is not `count`.
  int64_t (*max_unpool2x2_row)(const float* source, const int64_t* flat, const uint8_t* compact, float* t0, float* t1,
                               int64_t count, int64_t row_start, int64_t row_width);
  // The unpooling backward of one source row when the upstream gradient is constant over the
  // plane (the gradient of out.sum()): out[pw] = value where window pw's index lies inside the
  // window, 0 elsewhere (bit patterns, so NaN and -0 pass unchanged). Returns the number of
  // windows whose index was inside; the caller redoes the row otherwise.
  int64_t (*max_unpool2x2_fill_row)(uint32_t value_bits, const int64_t* flat, const uint8_t* compact, uint32_t* out,
                                    int64_t count, int64_t row_start, int64_t row_width);
};

// The 2x2 code (0..3: (kh, kw) = (0,0), (0,1), (1,0), (1,1)) of window pw's index, -1 when it
// is not inside the window.
inline int max_unpool2x2_code(const int64_t* flat, const uint8_t* compact, int64_t pw, int64_t row_start,
                              int64_t row_width) {
  if (compact) return compact[pw] < 4 ? compact[pw] : -1;
  const int64_t d = flat[pw] - (row_start + 2 * pw);
  return d == 0 ? 0 : d == 1 ? 1 : d == row_width ? 2 : d == row_width + 1 ? 3 : -1;
}

// Whether window pw's index lies inside the window, without branches (the codes are random: a
// branch per window mispredicts; this form vectorises).
inline uint32_t max_unpool2x2_inside(const int64_t* flat, const uint8_t* compact, int64_t pw, int64_t row_start,
                                     int64_t row_width) {
  if (compact) return compact[pw] < 4;
  // Offsets 0, 1 (top row) or W, W + 1 (bottom row) from the window's first element.
  const uint64_t d = static_cast<uint64_t>(flat[pw]) - static_cast<uint64_t>(row_start + 2 * pw);
  return static_cast<uint32_t>(d < 2) | static_cast<uint32_t>(d - static_cast<uint64_t>(row_width) < 2);
}

// Window `ow` of max_pool2x2_row, portable.
inline void max_pool2x2_window(const float* r0, const float* r1, float* values, int64_t* flat, uint8_t* compact,
                               int64_t ow, int64_t base, int64_t row_width) {
  const float a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
  float best = a;
  int code = 0;
  if (b > best || b != b) { best = b; code = 1; }
  if (c > best || c != c) { best = c; code = 2; }
  if (d > best || d != d) { best = d; code = 3; }
  values[ow] = best;
  if (compact) {
    compact[ow] = static_cast<uint8_t>(code);
  } else {
    flat[ow] = base + (code >> 1) * row_width + 2 * ow + (code & 1);
  }
}

// Window `pw` of max_unpool2x2_row, portable; returns 1 when its index lies inside the window.
inline int64_t max_unpool2x2_window(const float* source, const int64_t* flat, const uint8_t* compact, float* t0,
                                    float* t1, int64_t pw, int64_t row_start, int64_t row_width) {
  const int code = max_unpool2x2_code(flat, compact, pw, row_start, row_width);
  const float v = source[pw];
  t0[2 * pw] = code == 0 ? v : 0.0f;
  t0[2 * pw + 1] = code == 1 ? v : 0.0f;
  t1[2 * pw] = code == 2 ? v : 0.0f;
  t1[2 * pw + 1] = code == 3 ? v : 0.0f;
  return code >= 0;
}

inline void max_pool2x2_row_portable(const float* r0, const float* r1, float* values, int64_t* flat,
                                     uint8_t* compact, int64_t count, int64_t base, int64_t row_width) {
  for (int64_t ow = 0; ow < count; ++ow) max_pool2x2_window(r0, r1, values, flat, compact, ow, base, row_width);
}

inline int64_t max_unpool2x2_row_portable(const float* source, const int64_t* flat, const uint8_t* compact, float* t0,
                                          float* t1, int64_t count, int64_t row_start, int64_t row_width) {
  int64_t matches = 0;
  for (int64_t pw = 0; pw < count; ++pw) {
    matches += max_unpool2x2_window(source, flat, compact, t0, t1, pw, row_start, row_width);
  }
  return matches;
}

inline int64_t max_unpool2x2_fill_row_portable(uint32_t value_bits, const int64_t* flat, const uint8_t* compact,
                                               uint32_t* out, int64_t count, int64_t row_start, int64_t row_width) {
  int64_t matches = 0;
  for (int64_t pw = 0; pw < count; ++pw) {
    const uint32_t inside = max_unpool2x2_inside(flat, compact, pw, row_start, row_width);
    out[pw] = value_bits & (0u - inside);
    matches += inside;
  }
  return matches;
}

// The AVX2 table (unpool_cpu_simd.cpp), nullptr where the build has none.
const UnpoolCpuKernels* unpool_avx2_kernels();

inline const UnpoolCpuKernels& unpool_portable_kernels() {
  static constexpr UnpoolCpuKernels portable{&max_pool2x2_row_portable, &max_unpool2x2_row_portable,
                                              &max_unpool2x2_fill_row_portable};
  return portable;
}

// The table to use now (see common/cpu_features.h).
inline const UnpoolCpuKernels& unpool_cpu_kernels() {
  return select_cpu_kernels(unpool_portable_kernels(), unpool_avx2_kernels());
}

}  // namespace pyvision_ops
