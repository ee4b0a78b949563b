// The one CPU-feature query and CPU-kernel dispatch of the library (ATen's DispatchStub is the
// model). Torch-free, so the sanitized C++ checks in tests/cpp can use it.
//
// A family with vectorised CPU kernels declares a table of function pointers (its "kernels")
// in <family>_cpu_simd.h, defines the portable table next to it and the AVX2 table in
// <family>_cpu_simd.cpp, and fetches the table to use with select_cpu_kernels(). The AVX2 table
// exists only where the build targets x86: elsewhere <family>_cpu_simd.cpp compiles to a
// function returning nullptr and the portable kernels run.
#pragma once

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#define PVO_X86 1
// Functions (and the inline helpers they call) compiled for AVX2 + FMA + F16C, whatever the
// target of the rest of the file; called only when cpu_capability() says the CPU has them.
#define PVO_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define PVO_X86 0
#define PVO_TARGET_AVX2
#endif

namespace pyvision_ops {

// Instruction-set levels the CPU kernels are written for, in increasing order.
enum class CpuCapability : int {
  Portable = 0,  // plain C++ (auto-vectorised by the compiler for the build's target)
  Avx2 = 1,      // x86 AVX2 + FMA + F16C
};

// The best level this build has kernels for and the running CPU supports.
CpuCapability cpu_hardware_capability();

// The level the kernels use: cpu_hardware_capability(), lowered by the environment variable
// PYVISION_OPS_CPU_CAPABILITY=portable (read once, like ATen's ATEN_CPU_CAPABILITY) and by
// set_cpu_simd(false).
CpuCapability cpu_capability();

// Testing switch behind pyvision_ops._C._set_cpu_simd: false forces the portable kernels of
// every family, true allows the best the CPU supports. Returns the previous setting.
bool set_cpu_simd(bool enabled);

const char* cpu_capability_name(CpuCapability capability);

// The table a kernel call should use: `avx2` when it exists and the capability allows it.
template <typename Kernels>
const Kernels& select_cpu_kernels(const Kernels& portable, const Kernels* avx2) {
  return avx2 != nullptr && cpu_capability() >= CpuCapability::Avx2 ? *avx2 : portable;
}

}  // namespace pyvision_ops
