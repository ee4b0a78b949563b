// Transparent huge pages for large, freshly allocated outputs. A 32 MB tensor that a kernel
// writes for the first time takes 8192 page faults with 4 KB pages (about 20 ms on the
// development VM, more than the arithmetic of some kernels); asking the kernel for 2 MB pages
// on the allocation's aligned interior before the first write cuts that to a few faults. Only a
// hint: where THP is disabled (or not Linux) nothing changes. Torch-free.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace pyvision_ops {

constexpr size_t kHugePageBytes = size_t{1} << 21;

// Advises huge pages for the 2 MB-aligned part of [data, data + bytes) when it is at least
// `min_bytes` long; the memory must not have been written yet for the advice to matter.
inline void advise_huge_pages(void* data, size_t bytes, size_t min_bytes = size_t{4} << 20) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (data == nullptr || bytes < min_bytes) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHugePageBytes - 1) & ~(uintptr_t{kHugePageBytes} - 1);
  const uintptr_t last = (begin + bytes) & ~(uintptr_t{kHugePageBytes} - 1);
  if (last > first) (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
  (void)min_bytes;
#endif
}

}  // namespace pyvision_ops
