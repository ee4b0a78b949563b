// Micro-kernels of the planar Gram (float32): AVX-512 4x4 and AVX2 2x4. Torch-free; chosen at
// run time from what the CPU reports (the development VM has reported AVX-512 on some days and
// only AVX2 on others).
#pragma once

#include <cstdint>

namespace pyvision_ops {

// True when this build has the AVX-512 kernel and the running CPU supports it.
bool cpu_has_avx512();

// acc[i * ld + j] += sum_{l < length} a[i][l] * b[j][l] for the 4x4 block of rows a[0..3],
// b[0..3]: 16 dot products sharing their loads (8 row loads feed 16 FMAs per 16 floats).
void gram_block4x4_avx512(const float* const a[4], const float* const b[4], int64_t length, float* acc, int64_t ld);

bool cpu_has_avx2_fma();

// acc[i * ld + j] += sum_{l < length} a[i][l] * b[j][l] for rows a[0..1], b[0..3]: 8
// accumulators and 2 row registers, the 4 b rows read as memory operands (16 ymm registers).
void gram_block2x4_avx2(const float* const a[2], const float* const b[4], int64_t length, float* acc, int64_t ld);

}  // namespace pyvision_ops
