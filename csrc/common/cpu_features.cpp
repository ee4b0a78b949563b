#include "common/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace pyvision_ops {
namespace {

std::atomic<bool> simd_enabled{true};

CpuCapability detect() {
#if PVO_X86
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return CpuCapability::Avx2;
  }
#endif
  return CpuCapability::Portable;
}

CpuCapability from_environment(CpuCapability hardware) {
  const char* requested = std::getenv("PYVISION_OPS_CPU_CAPABILITY");
  if (requested != nullptr && (std::strcmp(requested, "portable") == 0 || std::strcmp(requested, "default") == 0)) {
    return CpuCapability::Portable;
  }
  return hardware;
}

}  // namespace

CpuCapability cpu_hardware_capability() {
  static const CpuCapability hardware = detect();
  return hardware;
}

CpuCapability cpu_capability() {
  static const CpuCapability allowed = from_environment(cpu_hardware_capability());
  return simd_enabled.load(std::memory_order_relaxed) ? allowed : CpuCapability::Portable;
}

bool set_cpu_simd(bool enabled) { return simd_enabled.exchange(enabled); }

const char* cpu_capability_name(CpuCapability capability) {
  switch (capability) {
    case CpuCapability::Avx2: return "avx2";
    case CpuCapability::Portable: return "portable";
  }
  return "unknown";
}

}  // namespace pyvision_ops
