// Hand-vectorised (AVX2) CPU row kernels for SegNet's 2x2/2 float32 windows, the hot case of the
// pooling family. Torch-free; chosen at run time when the CPU has AVX2 (others use the portable
// loops in unpool_cpu.cpp, which define the semantics these must reproduce exactly).
#pragma once

#include <cstdint>

namespace pyvision_ops {

// True when this build has the AVX2 kernels and the running CPU supports them.
bool cpu_has_avx2();

// One output row of 2x2/2 max pooling: r0, r1 are the two input rows, `count` windows. Writes
// values and either flat int64 indices (`flat`, base = flat position of r0[0], row_width = W) or
// compact uint8 indices (`compact`); exactly one of the two is non-null.
void max_pool2x2_row_avx2(const float* r0, const float* r1, float* values, int64_t* flat, uint8_t* compact,
                          int64_t count, int64_t base, int64_t row_width);

// Write-once 2x2/2 unpooling of one source row: `count` windows of `source`/`indices` to the two
// target rows t0, t1 (target row width `row_width`, t0 starting at flat position `row_start`).
// Returns the number of windows whose index named a position inside the window; the caller
// redoes the plane by scatter when that is not `count`.
int64_t max_unpool2x2_row_avx2(const float* source, const int64_t* flat, const uint8_t* compact, float* t0,
                               float* t1, int64_t count, int64_t row_start, int64_t row_width);

}  // namespace pyvision_ops
