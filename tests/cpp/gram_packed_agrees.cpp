// The packed AVX2 Gram kernel (gram_cpu_simd.cpp) against a float64 loop on random shapes:
// channel counts with and without a partial 16-channel panel, lengths spanning several chunks
// with a ragged tail, planar and channels-last sources in float32, float16 and bfloat16, and
// L-slices that start mid-tensor; float64 sources (8-row panels); and the backward product S F
// (planar and channels-last, float32 and float64) over ranges of strips.
// Every buffer is allocated to its exact size so that
// AddressSanitizer (tests/test_gram_cpp.py) catches a read or write past it. Prints "bad N".
#include "gram/gram_cpu_simd.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

using namespace pyvision_ops;

namespace {

// Round-to-nearest-even float -> float16 / bfloat16 bits, and back (for the reference).
uint16_t to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  int32_t exponent = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
  uint32_t mantissa = x & 0x7fffffu;
  if (exponent <= 0) return static_cast<uint16_t>(sign);  // tiny values flush to zero here
  if (exponent >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  uint32_t half = sign | (static_cast<uint32_t>(exponent) << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;
  return static_cast<uint16_t>(half);
}
float from_half(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  uint32_t x;
  if (exponent == 0) {
    x = sign;  // zero (no subnormals are produced above)
  } else {
    x = sign | ((exponent - 15 + 127) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
uint16_t to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}
float from_bf16(uint16_t b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// The backward product out = S f (S symmetric, C a multiple of P) over a range of strips (or,
// channels-last, of P-position blocks): positions outside the range must stay untouched.
template <typename T>
int check_products(std::mt19937_64& rng, int cases) {
  constexpr int64_t P = kGramPanelOf<T>;
  std::uniform_real_distribution<T> value(-1, 1);
  int bad = 0;
  for (int t = 0; t < cases / 3; ++t) {
    const int64_t C = P * (1 + static_cast<int64_t>(rng() % 20));
    const int64_t L = 1 + static_cast<int64_t>(rng() % 700);
    const bool channels_last = rng() % 2;  // f and out L x C, blocks of 16 positions
    const int64_t strips = (L + P - 1) / P;
    const int64_t strip_begin = static_cast<int64_t>(rng() % strips);
    const int64_t strip_end = strip_begin + 1 + static_cast<int64_t>(rng() % (strips - strip_begin));
    std::vector<T> sym(C * C), f(C * L), out(C * L, std::numeric_limits<T>::quiet_NaN());
    for (int64_t r = 0; r < C; ++r) {
      for (int64_t c = r; c < C; ++c) sym[r * C + c] = sym[c * C + r] = value(rng);
    }
    for (auto& v : f) v = value(rng);
    const size_t packed_bytes = static_cast<size_t>(C * C) * sizeof(T);
    const size_t strip_bytes = static_cast<size_t>(kGramStripsPerPass * C * P) * sizeof(T);
    T* packed = static_cast<T*>(std::aligned_alloc(64, (packed_bytes + 63) / 64 * 64));
    T* strip_buffer = static_cast<T*>(std::aligned_alloc(64, (strip_bytes + 63) / 64 * 64));
    std::vector<T> edge(C * P);
    gram_pack_symmetric_avx2(sym.data(), C, packed);
    if (channels_last) {
      // Exactly one panel of scratch (C x 16) for the channels-last kernel.
      T* panel = static_cast<T*>(std::aligned_alloc(64, static_cast<size_t>(C * P) * sizeof(T)));
      gram_symmetric_product_channels_last_avx2(packed, f.data(), C, L, strip_begin, strip_end, panel, edge.data(),
                                                out.data());
      std::free(panel);
    } else {
      gram_symmetric_product_avx2(packed, f.data(), C, L, strip_begin, strip_end, strip_buffer, edge.data(), out.data());
    }
    std::free(packed);
    std::free(strip_buffer);
    const int64_t l_begin = strip_begin * P, l_end = std::min(L, strip_end * P);
    double worst = 0.0;
    for (int64_t r = 0; r < C; ++r) {
      for (int64_t l = 0; l < L; ++l) {
        const T got = channels_last ? out[l * C + r] : out[r * L + l];
        if (l < l_begin || l >= l_end) {
          if (!std::isnan(got)) worst = 1.0;  // written outside its strips
          continue;
        }
        double expected = 0.0, magnitude = 0.0;
        for (int64_t k = 0; k < C; ++k) {
          const T fk = channels_last ? f[l * C + k] : f[k * L + l];
          expected += static_cast<double>(sym[r * C + k]) * fk;
          magnitude += std::fabs(static_cast<double>(sym[r * C + k]) * fk);
        }
        const double error = std::fabs(got - expected) / (magnitude + 1e-30);
        if (!(error <= worst)) worst = error;
      }
    }
    if (!(worst < (sizeof(T) == 8 ? 1e-12 : 1e-5))) {
      ++bad;
      std::printf("product case (%zu-byte) %d: C=%ld L=%ld strips [%ld, %ld) channels_last=%d: relative error %g\n", sizeof(T), t,
                  static_cast<long>(C), static_cast<long>(L), static_cast<long>(strip_begin), static_cast<long>(strip_end),
                  channels_last ? 1 : 0, worst);
    }
  }
  return bad;
}

// float64 sources: the 8-row panels and 4x8 micro-kernel, both layouts, slices.
int check_double_forward(std::mt19937_64& rng, int cases) {
  std::uniform_real_distribution<double> value(-1.0, 1.0);
  int bad = 0;
  for (int t = 0; t < cases; ++t) {
    const int64_t C = 1 + static_cast<int64_t>(rng() % 40);
    const int64_t L = 1 + static_cast<int64_t>(rng() % 900);
    const int64_t kc = 8 * (1 + static_cast<int64_t>(rng() % 30));
    const bool channels_last = rng() % 2;
    const int64_t l_begin = static_cast<int64_t>(rng() % L);
    const int64_t l_end = l_begin + 1 + static_cast<int64_t>(rng() % (L - l_begin));
    std::vector<double> values(C * L), src(C * L);
    for (auto& v : values) v = value(rng);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t l = 0; l < L; ++l) src[channels_last ? l * C + c : c * L + l] = values[c * L + l];
    constexpr int64_t P = kGramPanelOf<double>;
    const int64_t panels = (C + P - 1) / P;
    const size_t bytes = static_cast<size_t>(panels * P * kc) * sizeof(double);
    double* packed = static_cast<double*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    std::vector<double> edge(panels * P * P, 0.0), g(C * C, 0.0);
    gram_packed_item_avx2(channels_last, src.data(), C, L, l_begin, l_end, kc, packed, edge.data(), g.data());
    gram_finish_upper(g.data(), nullptr, 0, C, 1.0);
    std::free(packed);
    double worst = 0.0;
    for (int64_t r = 0; r < C; ++r) {
      for (int64_t c = 0; c < C; ++c) {
        double expected = 0.0, magnitude = 0.0;
        for (int64_t l = l_begin; l < l_end; ++l) {
          expected += values[r * L + l] * values[c * L + l];
          magnitude += std::fabs(values[r * L + l] * values[c * L + l]);
        }
        const double error = std::fabs(g[r * C + c] - expected) / (magnitude + 1e-300);
        if (!(error <= worst)) worst = error;
        if (g[r * C + c] != g[c * C + r]) worst = 1.0;
      }
    }
    if (!(worst < 1e-12)) {
      ++bad;
      std::printf("double case %d: C=%ld L=%ld kc=%ld slice [%ld, %ld) channels_last=%d: relative error %g\n", t,
                  static_cast<long>(C), static_cast<long>(L), static_cast<long>(kc), static_cast<long>(l_begin),
                  static_cast<long>(l_end), channels_last ? 1 : 0, worst);
    }
  }
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  if (cpu_hardware_capability() < CpuCapability::Avx2) {
    std::printf("no AVX2/FMA/F16C: skipped\nbad 0\n");
    return 0;
  }
  const int cases = argc > 1 ? std::atoi(argv[1]) : 300;
  std::mt19937_64 rng(12345);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  int bad = 0;
  for (int t = 0; t < cases; ++t) {
    const int64_t C = 1 + static_cast<int64_t>(rng() % 70);
    const int64_t L = 1 + static_cast<int64_t>(rng() % 1200);
    const int64_t kc = 8 * (1 + static_cast<int64_t>(rng() % 40));
    const bool channels_last = rng() % 2;
    const int kind = static_cast<int>(rng() % 3);
    const GramSource source = kind == 0 ? GramSource::Float32 : kind == 1 ? GramSource::Float16 : GramSource::BFloat16;
    // A slice [l_begin, l_end) of L, sometimes the whole of it.
    int64_t l_begin = 0, l_end = L;
    if (rng() % 2) {
      l_begin = static_cast<int64_t>(rng() % L);
      l_end = l_begin + 1 + static_cast<int64_t>(rng() % (L - l_begin));
    }
    // Values as the kernel will see them (rounded to the source type), element (c, l).
    std::vector<float> values(C * L);
    for (auto& v : values) v = value(rng);
    std::vector<float> f32;
    std::vector<uint16_t> f16;
    const void* src;
    auto offset = [&](int64_t c, int64_t l) { return channels_last ? l * C + c : c * L + l; };
    if (source == GramSource::Float32) {
      f32.resize(C * L);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t l = 0; l < L; ++l) f32[offset(c, l)] = values[c * L + l];
      src = f32.data();
    } else {
      f16.resize(C * L);
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t l = 0; l < L; ++l) {
          const float v = values[c * L + l];
          const uint16_t bits = source == GramSource::Float16 ? to_half(v) : to_bf16(v);
          f16[offset(c, l)] = bits;
          values[c * L + l] = source == GramSource::Float16 ? from_half(bits) : from_bf16(bits);
        }
      }
      src = f16.data();
    }
    const int64_t panels = (C + kGramPanel - 1) / kGramPanel;
    const size_t packed_bytes = static_cast<size_t>(panels * kGramPanel * kc) * sizeof(float);
    float* packed = static_cast<float*>(std::aligned_alloc(64, (packed_bytes + 63) / 64 * 64));
    std::vector<float> edge(panels * kGramPanel * kGramPanel, 0.0f);
    std::vector<float> g(C * C, 0.0f), partial(C * C, 0.0f);
    // Two slices: [l_begin, mid) into g and [mid, l_end) into partial, then the finish.
    const int64_t mid = l_begin + (l_end - l_begin) / 2;
    gram_packed_item_avx2(source, channels_last, src, C, L, l_begin, mid, kc, packed, edge.data(), g.data());
    std::fill(edge.begin(), edge.end(), 0.0f);
    gram_packed_item_avx2(source, channels_last, src, C, L, mid, l_end, kc, packed, edge.data(), partial.data());
    const float* partials[1] = {partial.data()};
    const float scale = 0.5f;
    gram_finish_upper(g.data(), partials, 1, C, scale);
    std::free(packed);
    double worst = 0.0;
    for (int64_t r = 0; r < C; ++r) {
      for (int64_t c = 0; c < C; ++c) {
        double expected = 0.0, magnitude = 0.0;
        for (int64_t l = l_begin; l < l_end; ++l) {
          expected += static_cast<double>(values[r * L + l]) * values[c * L + l];
          magnitude += std::fabs(static_cast<double>(values[r * L + l]) * values[c * L + l]);
        }
        const double error = std::fabs(g[r * C + c] - scale * expected) / (scale * magnitude + 1e-30);
        if (error > worst) worst = error;
        if (g[r * C + c] != g[c * C + r]) worst = 1.0;  // not exactly symmetric
      }
    }
    if (!(worst < 1e-5)) {
      ++bad;
      std::printf("case %d: C=%ld L=%ld kc=%ld slice [%ld, %ld) channels_last=%d source=%d: relative error %g\n", t,
                  static_cast<long>(C), static_cast<long>(L), static_cast<long>(kc), static_cast<long>(l_begin),
                  static_cast<long>(l_end), channels_last ? 1 : 0, kind, worst);
    }
  }
  bad += check_products<float>(rng, cases / 3);
  bad += check_products<double>(rng, cases / 3);
  bad += check_double_forward(rng, cases / 2);
  std::printf("bad %d\n", bad);
  return bad == 0 ? 0 : 1;
}
