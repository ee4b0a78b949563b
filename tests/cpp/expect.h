// EXPECT(condition, printf-format, ...) for the host replays of tests/cpp: counts a failure in
// `failures` and prints the first 20. The program ends with printf("bad %d\n", failures).
#pragma once

#include <cstdio>

inline int failures = 0;

#define EXPECT(condition, ...)                   \
  do {                                           \
    if (!(condition)) {                          \
      if (++failures <= 20) {                    \
        std::printf("FAIL line %d: ", __LINE__); \
        std::printf(__VA_ARGS__);                \
        std::printf("\n");                       \
      }                                          \
    }                                            \
  } while (0)
