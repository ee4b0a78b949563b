// The tensor-core Gram kernels of csrc/gram/gram_kernel.cu (gram_mma_kernel and
// gram_split_reduce_kernel) replayed on the host, block by block and lane by lane, with the
// kernel's own geometry from csrc/gram/gram.h: GramMmaStager (which thread copies which features
// into which shared-memory slot, zeros past C and L), the ldmatrix lane addresses, the warp tiles,
// the diagonal skipping, the accumulator coordinates and the split-K workspace offsets. What the
// hardware does is emulated from the PTX ISA:
//   * ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane 8m + r names row r of matrix m (16
//     aligned bytes); lane l receives, in register m, elements (l / 4, 2 (l % 4)) and
//     (l / 4, 2 (l % 4) + 1) of matrix m, or with .trans (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4);
//     the lower-indexed element in the low half;
//   * mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: with g = lane / 4, t = lane % 4,
//     A registers (g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..); B registers
//     (k 2t..2t+1, n g), (k 2t+8..2t+9, n g); C/D (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1);
//   * cp.async with a source size of 0 writes 16 zero bytes.
// The copies, barriers and the 3-stage pipeline run in the kernel's order, each stage poisoned
// (16-bit NaNs) before it is refilled, so a slot the stagers leave unwritten, or a stage read
// before it is filled, turns the result into NaN. Every buffer has its exact size (the tests run
// this under AddressSanitizer), shared-memory reads are bounds- and alignment-checked, every
// shared slot has at most one writer per refill, and every element of G must be written by
// exactly one block (diagonal elements twice by the same thread without split-K, as the kernel's
// mirror does).
// Inputs are small multiples of 1/8, exact in both 16-bit types, so every sum is exact in float32
// whatever the order: the result must equal the float64 reference bit for bit.
// The CUDA-core gram_tile_kernel (float32, float64) is run too, thread by thread between its
// barriers, with gram.h's gram_tile_stage / gram_tile_accumulate / gram_tile_write.
// Usage: gram_mma_emulated [quick]. Prints "bad N" (N failures).
#include "gram/gram.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "expect.h"

using namespace pyvision_ops;

namespace {

enum class Format { Float16, BFloat16 };

uint32_t float_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}
float bits_float(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// Exact conversions for the normal values the tests use (no rounding is ever needed).
uint16_t to_bits(float f, Format format) {
  const uint32_t x = float_bits(f);
  if (format == Format::BFloat16) return static_cast<uint16_t>(x >> 16);
  if (f == 0.0f) return static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const int32_t exponent = static_cast<int32_t>((x >> 23) & 0xffu) - 127 + 15;
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(exponent) << 10) | ((x & 0x7fffffu) >> 13));
}
float from_bits(uint16_t h, Format format) {
  if (format == Format::BFloat16) return bits_float(static_cast<uint32_t>(h) << 16);
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return mantissa ? std::numeric_limits<float>::quiet_NaN() : bits_float(sign | 0x7f800000u);
  if (exponent == 0) {
    // +-0 and subnormals (mantissa * 2^-24)
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  return bits_float(sign | ((exponent - 15 + 127) << 23) | (mantissa << 13));
}

constexpr uint16_t kPoison = 0xffffu;  // NaN in float16 and in bfloat16
constexpr int kLanes = 32;
constexpr int kWarps = kGramMmaThreads / kLanes;

// The block's dynamic shared memory, with one write counter per 16-bit slot for the current
// refill of each stage.
struct SharedMemory {
  std::vector<uint16_t> slots = std::vector<uint16_t>(kGramMmaSmemBytes / 2, kPoison);
  std::vector<int> writes = std::vector<int>(kGramMmaSmemBytes / 2, 0);

  void write(int64_t slot, uint16_t value) {
    EXPECT(slot >= 0 && slot < static_cast<int64_t>(slots.size()), "shared write at slot %lld outside",
           static_cast<long long>(slot));
    if (slot < 0 || slot >= static_cast<int64_t>(slots.size())) return;
    EXPECT(++writes[slot] == 1, "shared slot %lld written twice in one refill", static_cast<long long>(slot));
    slots[slot] = value;
  }
  // 8 elements at byte address `address` (one ldmatrix row).
  void read_row(unsigned address, uint16_t (&row)[8]) const {
    EXPECT(address % 16 == 0, "ldmatrix row address %u not 16-byte aligned", address);
    EXPECT(address + 16 <= static_cast<unsigned>(kGramMmaSmemBytes), "ldmatrix row at %u past shared memory",
           address);
    for (int e = 0; e < 8; ++e) {
      const unsigned slot = address / 2 + e;
      row[e] = slot < slots.size() ? slots[slot] : kPoison;
    }
  }
};

// ldmatrix.x4: addresses[lane] -> registers[lane][m] (two 16-bit halves, low = lower index).
void ldmatrix_x4(const SharedMemory& shared, bool transpose, const unsigned (&addresses)[kLanes],
                 uint32_t (&registers)[kLanes][4]) {
  uint16_t matrices[4][8][8];
  for (int m = 0; m < 4; ++m) {
    for (int r = 0; r < 8; ++r) shared.read_row(addresses[8 * m + r], matrices[m][r]);
  }
  for (int lane = 0; lane < kLanes; ++lane) {
    for (int m = 0; m < 4; ++m) {
      const int g = lane / 4, t = lane % 4;
      const uint16_t lo = transpose ? matrices[m][2 * t][g] : matrices[m][g][2 * t];
      const uint16_t hi = transpose ? matrices[m][2 * t + 1][g] : matrices[m][g][2 * t + 1];
      registers[lane][m] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
  }
}

float low_half(uint32_t r, Format format) { return from_bits(static_cast<uint16_t>(r & 0xffffu), format); }
float high_half(uint32_t r, Format format) { return from_bits(static_cast<uint16_t>(r >> 16), format); }

// mma.m16n8k16 .row.col, float32 accumulators: d[lane] += A B from the lanes' registers.
void mma_16816(Format format, float (&d)[kLanes][4], const uint32_t (&a)[kLanes][4], const uint32_t (&b0)[kLanes],
               const uint32_t (&b1)[kLanes]) {
  float A[16][16], B[16][8];
  int a_seen[16][16] = {}, b_seen[16][8] = {};
  for (int lane = 0; lane < kLanes; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const int a_rows[4] = {g, g + 8, g, g + 8}, a_cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
    for (int r = 0; r < 4; ++r) {
      A[a_rows[r]][a_cols[r]] = low_half(a[lane][r], format);
      A[a_rows[r]][a_cols[r] + 1] = high_half(a[lane][r], format);
      ++a_seen[a_rows[r]][a_cols[r]];
      ++a_seen[a_rows[r]][a_cols[r] + 1];
    }
    const uint32_t b_regs[2] = {b0[lane], b1[lane]};
    for (int r = 0; r < 2; ++r) {
      B[2 * t + 8 * r][g] = low_half(b_regs[r], format);
      B[2 * t + 8 * r + 1][g] = high_half(b_regs[r], format);
      ++b_seen[2 * t + 8 * r][g];
      ++b_seen[2 * t + 8 * r + 1][g];
    }
  }
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) EXPECT(a_seen[r][c] == 1, "A layout covers (%d, %d) %d times", r, c, a_seen[r][c]);
  }
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 8; ++c) EXPECT(b_seen[r][c] == 1, "B layout covers (%d, %d) %d times", r, c, b_seen[r][c]);
  }
  for (int lane = 0; lane < kLanes; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int e = 0; e < 4; ++e) {
      float sum = 0.0f;
      for (int k = 0; k < 16; ++k) sum += A[rows[e]][k] * B[k][cols[e]];
      d[lane][e] += sum;
    }
  }
}

struct Problem {
  GramParams p;
  Format format;
  std::vector<uint16_t> features;  // exactly N * C * L elements
};

struct Launch {
  int64_t tile_count = 0;
  int64_t splits = 1;
  int64_t chunks_per_split = 0;
  int64_t grid_z = 1;  // batch items are looped past it, as past 65535 on the GPU
};

// One block (tile, split, z) of gram_mma_kernel<kChannelsLast, kVector>.
template <bool kChannelsLast, bool kVector>
void mma_block(const Problem& problem, const Launch& launch, int64_t tile, int64_t split, int64_t z,
               std::vector<float>& gram, std::vector<int>& gram_writes, std::vector<float>& workspace,
               std::vector<int>& workspace_writes) {
  const GramParams& p = problem.p;
  const int64_t C = p.channels, L = p.length;
  const int64_t tiles = (C + kGramMmaTile - 1) / kGramMmaTile;
  int64_t tile_row, tile_col;
  triangle_tile(tile, tiles, tile_row, tile_col);
  const bool diagonal = tile_row == tile_col;
  const int64_t row0 = tile_row * kGramMmaTile, col0 = tile_col * kGramMmaTile;
  const int64_t chunks = (L + kGramMmaChunk - 1) / kGramMmaChunk;
  const int64_t chunk_begin = split * launch.chunks_per_split;
  const int64_t chunk_end = std::min(chunk_begin + launch.chunks_per_split, chunks);
  const int64_t my_chunks = chunk_end > chunk_begin ? chunk_end - chunk_begin : 0;
  const bool is_split = launch.splits > 1;
  const float scale = static_cast<float>(p.scale);
  const unsigned rows16 = 2u * gram_mma_stage_index(kChannelsLast, 16, 0);
  const unsigned k16 = 2u * gram_mma_stage_index(kChannelsLast, 0, 16);

  SharedMemory shared;
  for (int64_t n = z; n < p.batch; n += launch.grid_z) {
    static float acc[kWarps][kGramMmaM16][kGramMmaN8][kLanes][4];
    std::memset(acc, 0, sizeof(acc));
    const int64_t first_position = chunk_begin * kGramMmaChunk;
    std::vector<GramMmaStager<kChannelsLast, kVector>> row_stagers, col_stagers;
    for (int thread = 0; thread < kGramMmaThreads; ++thread) {
      row_stagers.emplace_back(p, n, row0, first_position, thread);
      col_stagers.emplace_back(p, n, col0, first_position, thread);
    }
    auto stage_operand = [&](const GramMmaStager<kChannelsLast, kVector>& stager, int64_t operand, int64_t local) {
      stager.stage(local, [&](int index, int64_t offset, bool valid) {
        const int width = gram_mma_copy_width(kVector);
        EXPECT(index >= 0 && index + width <= kGramMmaStageElements, "slot %d outside a staged operand", index);
        if (kVector) EXPECT(index % 8 == 0, "16-byte copy to slot %d not 16-byte aligned", index);
        if (valid) {
          EXPECT(offset >= 0 && offset + width <= static_cast<int64_t>(problem.features.size()),
                 "copy reads features [%lld, %lld) of %zu", static_cast<long long>(offset),
                 static_cast<long long>(offset + width), problem.features.size());
          if (kVector) EXPECT(offset % 8 == 0, "16-byte copy from element %lld", static_cast<long long>(offset));
        }
        for (int e = 0; e < width; ++e) {
          const bool inside = valid && offset + e >= 0 && offset + e < static_cast<int64_t>(problem.features.size());
          shared.write(operand + index + e, inside ? problem.features[offset + e] : uint16_t{0});
        }
      });
    };
    auto stage_chunk = [&](int64_t local) {
      const int64_t rows = (local % kGramMmaStages) * 2 * kGramMmaStageElements;
      // The stage's previous contents are stale: poison them, and start its writer counts.
      for (int64_t s = rows; s < rows + 2 * kGramMmaStageElements; ++s) {
        shared.slots[s] = kPoison;
        shared.writes[s] = 0;
      }
      for (int thread = 0; thread < kGramMmaThreads; ++thread) stage_operand(row_stagers[thread], rows, local);
      if (!diagonal) {
        for (int thread = 0; thread < kGramMmaThreads; ++thread) {
          stage_operand(col_stagers[thread], rows + kGramMmaStageElements, local);
        }
      }
    };

    for (int s = 0; s < kGramMmaStages - 1; ++s) {
      if (s < my_chunks) stage_chunk(s);
    }
    for (int64_t local = 0; local < my_chunks; ++local) {
      // __syncthreads(): chunk `local` has landed, everyone is done with chunk local - 1.
      if (local + kGramMmaStages - 1 < my_chunks) stage_chunk(local + kGramMmaStages - 1);
      const unsigned a_stage = static_cast<unsigned>(local % kGramMmaStages) * 2u * kGramMmaStageBytes;
      const unsigned b_stage = diagonal ? a_stage : a_stage + kGramMmaStageBytes;
      // The kernel's ldmatrix addresses: lane offset of block (0, 0) plus block steps.
      struct LaneAddresses {
        unsigned addresses[kLanes];
      };
      auto lane_addresses = [&](unsigned stage, bool b_operand, int origin, int block, int kk) {
        LaneAddresses out;
        for (int lane = 0; lane < kLanes; ++lane) {
          const unsigned first = gram_mma_ldmatrix_byte(kChannelsLast, b_operand, lane, origin, 0);
          out.addresses[lane] = stage + first + block * rows16 + kk * k16;
          EXPECT(out.addresses[lane] - stage ==
                     gram_mma_ldmatrix_byte(kChannelsLast, b_operand, lane, origin + 16 * block, 16 * kk),
                 "ldmatrix lane address steps are not linear");
        }
        return out;
      };
      for (int warp = 0; warp < kWarps; ++warp) {
        int warp_row, warp_col;
        gram_mma_warp_origin(warp, warp_row, warp_col);
        if (gram_mma_warp_idle(diagonal, warp_row, warp_col)) continue;
        for (int kk = 0; kk < kGramMmaChunk / 16; ++kk) {
          uint32_t b[kGramMmaN8 / 2][kLanes][4];
          for (int j = 0; j < kGramMmaN8 / 2; ++j) {
            ldmatrix_x4(shared, kChannelsLast, lane_addresses(b_stage, true, warp_col, j, kk).addresses, b[j]);
          }
          for (int i = 0; i < kGramMmaM16; ++i) {
            uint32_t a[kLanes][4];
            ldmatrix_x4(shared, kChannelsLast, lane_addresses(a_stage, false, warp_row, i, kk).addresses, a);
            for (int j = 0; j < kGramMmaN8; ++j) {
              if (gram_mma_block_skipped(diagonal, warp_row, warp_col, i, j)) continue;
              uint32_t b0[kLanes], b1[kLanes];
              for (int lane = 0; lane < kLanes; ++lane) {
                b0[lane] = b[j / 2][lane][2 * (j % 2)];
                b1[lane] = b[j / 2][lane][2 * (j % 2) + 1];
              }
              mma_16816(problem.format, acc[warp][i][j], a, b0, b1);
            }
          }
        }
      }
    }

    // Write-out, as the kernel's two branches.
    for (int warp = 0; warp < kWarps; ++warp) {
      int warp_row, warp_col;
      gram_mma_warp_origin(warp, warp_row, warp_col);
      for (int lane = 0; lane < kLanes; ++lane) {
        for (int i = 0; i < kGramMmaM16; ++i) {
          for (int j = 0; j < kGramMmaN8; ++j) {
            for (int e = 0; e < 4; ++e) {
              int r, c;
              gram_mma_accumulator_coords(lane, e, r, c);
              const float value = acc[warp][i][j][lane][e];
              if (is_split) {
                r += warp_row + 16 * i;
                c += warp_col + 8 * j;
                const int64_t at =
                    gram_mma_partial_offset(n, launch.splits, split, launch.tile_count, tile) + r * kGramMmaTile + c;
                EXPECT(at >= 0 && at < static_cast<int64_t>(workspace.size()), "workspace index %lld outside",
                       static_cast<long long>(at));
                if (at < 0 || at >= static_cast<int64_t>(workspace.size())) continue;
                EXPECT(++workspace_writes[at] == 1, "workspace element %lld written twice", static_cast<long long>(at));
                workspace[at] = value;
              } else {
                const int64_t gr = row0 + warp_row + 16 * i + r, gc = col0 + warp_col + 8 * j + c;
                if (gr < C && gc < C && gc >= gr) {
                  const float v = value * scale;
                  const int64_t upper = n * C * C + gr * C + gc, lower = n * C * C + gc * C + gr;
                  gram[upper] = v;
                  gram[lower] = v;
                  ++gram_writes[upper];
                  ++gram_writes[lower];
                }
              }
            }
          }
        }
      }
    }
  }
}

// gram_split_reduce_kernel: grid (tile_count * 16, z), 32 x 8 threads.
void split_reduce(const Problem& problem, const Launch& launch, const std::vector<float>& workspace,
                  const std::vector<int>& workspace_writes, std::vector<float>& gram, std::vector<int>& gram_writes) {
  constexpr int kSide = 32, kRows = 8, kPerSide = kGramMmaTile / kSide;
  const GramParams& p = problem.p;
  const int64_t C = p.channels;
  const int64_t tiles = (C + kGramMmaTile - 1) / kGramMmaTile;
  const float scale = static_cast<float>(p.scale);
  for (int64_t z = 0; z < launch.grid_z; ++z) {
    for (int64_t block = 0; block < launch.tile_count * kPerSide * kPerSide; ++block) {
      const int64_t tile = block / (kPerSide * kPerSide);
      const int sub = static_cast<int>(block % (kPerSide * kPerSide));
      const int sub_row = sub / kPerSide, sub_col = sub % kPerSide;
      int64_t tile_row, tile_col;
      triangle_tile(tile, tiles, tile_row, tile_col);
      if (tile_row == tile_col && sub_row > sub_col) continue;
      const int64_t r0 = tile_row * kGramMmaTile + sub_row * kSide, c0 = tile_col * kGramMmaTile + sub_col * kSide;
      if (r0 >= C || c0 >= C) continue;
      for (int64_t n = z; n < p.batch; n += launch.grid_z) {
        float block_values[kSide][kSide + 1];
        for (int ty = 0; ty < kRows; ++ty) {
          for (int tx = 0; tx < kSide; ++tx) {
            for (int q = 0; q < kSide / kRows; ++q) {
              const int r = ty + q * kRows;
              const int64_t e = static_cast<int64_t>(sub_row * kSide + r) * kGramMmaTile + sub_col * kSide + tx;
              float sum = 0.0f;
              for (int64_t s = 0; s < launch.splits; ++s) {
                const int64_t at = gram_mma_partial_offset(n, launch.splits, s, launch.tile_count, tile) + e;
                EXPECT(workspace_writes[at] == 1, "the reduction reads workspace element %lld, never written",
                       static_cast<long long>(at));
                sum += workspace[at];
              }
              const float v = sum * scale;
              block_values[r][tx] = v;
              const int64_t gr = r0 + r, gc = c0 + tx;
              if (gr < C && gc < C && gc >= gr) {
                gram[n * C * C + gr * C + gc] = v;
                ++gram_writes[n * C * C + gr * C + gc];
              }
            }
          }
        }
        // __syncthreads()
        for (int ty = 0; ty < kRows; ++ty) {
          for (int tx = 0; tx < kSide; ++tx) {
            for (int q = 0; q < kSide / kRows; ++q) {
              const int cl = ty + q * kRows;
              const int64_t gr = r0 + tx, gc = c0 + cl;
              if (gr < C && gc < C && gc > gr) {
                gram[n * C * C + gc * C + gr] = block_values[tx][cl];
                ++gram_writes[n * C * C + gc * C + gr];
              }
            }
          }
        }
      }
    }
  }
}

template <bool kChannelsLast, bool kVector>
void check_case(const Problem& problem, int64_t slots, const char* label) {
  const GramParams& p = problem.p;
  const int64_t C = p.channels, L = p.length;
  Launch launch;
  launch.tile_count = triangle_tile_count((C + kGramMmaTile - 1) / kGramMmaTile);
  const int64_t chunks = (L + kGramMmaChunk - 1) / kGramMmaChunk;
  launch.splits = gram_mma_split_count(launch.tile_count * p.batch, chunks, slots);
  launch.chunks_per_split = gram_mma_chunks_per_split(chunks, launch.splits);
  launch.grid_z = p.batch < 2 ? p.batch : 2;

  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> gram(static_cast<size_t>(p.batch * C * C), nan);
  std::vector<int> gram_writes(gram.size(), 0);
  const size_t workspace_size = launch.splits > 1 ? static_cast<size_t>(launch.splits * p.batch * launch.tile_count *
                                                                        kGramMmaTileElements)
                                                  : 0;
  std::vector<float> workspace(workspace_size, nan);
  std::vector<int> workspace_writes(workspace_size, 0);

  for (int64_t z = 0; z < launch.grid_z; ++z) {
    for (int64_t split = 0; split < launch.splits; ++split) {
      for (int64_t tile = 0; tile < launch.tile_count; ++tile) {
        mma_block<kChannelsLast, kVector>(problem, launch, tile, split, z, gram, gram_writes, workspace,
                                          workspace_writes);
      }
    }
  }
  if (launch.splits > 1) {
    for (size_t e = 0; e < workspace_writes.size(); ++e) {
      EXPECT(workspace_writes[e] == 1, "%s: workspace element %zu written %d times", label, e, workspace_writes[e]);
    }
    split_reduce(problem, launch, workspace, workspace_writes, gram, gram_writes);
  }

  const float scale = static_cast<float>(p.scale);
  int64_t wrong = 0;
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t r = 0; r < C; ++r) {
      for (int64_t c = 0; c < C; ++c) {
        double exact = 0.0;
        for (int64_t l = 0; l < L; ++l) {
          exact += static_cast<double>(from_bits(problem.features[p.feature_offset(n, r, l)], problem.format)) *
                   from_bits(problem.features[p.feature_offset(n, c, l)], problem.format);
        }
        const float expected = static_cast<float>(exact) * scale;
        const int64_t at = n * C * C + r * C + c;
        const float got = gram[at];
        // The diagonal: twice by the same thread (upper and mirror) without split-K, once by the
        // reduction's upper write with it.
        const int writes_expected = r == c && launch.splits == 1 ? 2 : 1;
        if (float_bits(got) != float_bits(expected) || gram_writes[at] != writes_expected) {
          if (++wrong <= 3) {
            EXPECT(false, "%s: G[%lld][%lld][%lld] = %.9g (written %d times), expected %.9g (written %d times)", label,
                   static_cast<long long>(n), static_cast<long long>(r), static_cast<long long>(c), got,
                   gram_writes[at], expected, writes_expected);
          }
        }
      }
    }
  }
  if (wrong > 3) EXPECT(false, "%s: %lld wrong elements in all", label, static_cast<long long>(wrong));
  std::printf("%-60s splits %lld, chunks/split %lld, tiles %lld: %s\n", label, static_cast<long long>(launch.splits),
              static_cast<long long>(launch.chunks_per_split), static_cast<long long>(launch.tile_count),
              wrong == 0 ? "ok" : "WRONG");
}

Problem make_problem(int64_t batch, int64_t channels, int64_t length, bool channels_last, bool normalise,
                     Format format, std::mt19937& rng) {
  Problem problem;
  problem.p.batch = batch;
  problem.p.channels = channels;
  problem.p.length = length;
  problem.p.channels_last = channels_last;
  problem.p.scale = normalise ? 1.0 / static_cast<double>(channels * length) : 1.0;
  problem.format = format;
  problem.features.resize(static_cast<size_t>(batch * channels * length));
  // Nonzero multiples of 1/8 in [-8, 8]: exact in both formats, and a missing term always shows.
  std::uniform_int_distribution<int> pick(1, 64);
  std::bernoulli_distribution negative(0.5);
  for (auto& element : problem.features) {
    const float value = static_cast<float>(pick(rng)) / 8.0f * (negative(rng) ? -1.0f : 1.0f);
    element = to_bits(value, format);
  }
  return problem;
}

// ---- gram_tile_kernel (the CUDA-core path) -------------------------------------------------

// One launch of gram_tile_kernel<T> (grid: triangle tiles x a batch grid of 2), every thread's
// stage / accumulate / write of gram.h between the kernel's two barriers; shared tiles poisoned
// (NaN) before each chunk, each slot written once per chunk.
template <typename T>
void check_tile_case(int64_t batch, int64_t channels, int64_t length, bool channels_last, bool normalise,
                     std::mt19937& rng) {
  GramParams p;
  p.batch = batch;
  p.channels = channels;
  p.length = length;
  p.channels_last = channels_last;
  p.scale = normalise ? 1.0 / static_cast<double>(channels * length) : 1.0;
  std::vector<T> features(static_cast<size_t>(batch * channels * length));
  std::uniform_int_distribution<int> pick(1, 64);
  std::bernoulli_distribution negative(0.5);
  for (auto& f : features) f = static_cast<T>(pick(rng)) / T(8) * (negative(rng) ? T(-1) : T(1));
  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> gram(static_cast<size_t>(batch * channels * channels), nan);
  const int64_t tiles = (channels + kGramTile - 1) / kGramTile;
  const int64_t grid_y = batch < 2 ? batch : 2;
  const auto load = [&](int64_t offset) {
    EXPECT(offset >= 0 && offset < static_cast<int64_t>(features.size()), "tile kernel reads feature %lld of %zu",
           static_cast<long long>(offset), features.size());
    return offset >= 0 && offset < static_cast<int64_t>(features.size()) ? features[offset] : nan;
  };
  static T a_tile[kGramTileChunk][kGramTile + 1], b_tile[kGramTileChunk][kGramTile + 1];
  std::vector<std::array<std::array<T, kGramTilePer>, kGramTilePer>> acc(kGramTileThreads);
  for (int64_t block = 0; block < triangle_tile_count(tiles); ++block) {
    int64_t tile_row, tile_col;
    triangle_tile(block, tiles, tile_row, tile_col);
    const int64_t row0 = tile_row * kGramTile, col0 = tile_col * kGramTile;
    for (int64_t by = 0; by < grid_y; ++by) {
      for (int64_t n = by; n < batch; n += grid_y) {
        for (auto& a : acc) {
          for (auto& row : a) row.fill(T(0));
        }
        for (int64_t l0 = 0; l0 < length; l0 += kGramTileChunk) {
          for (auto& row : a_tile) std::fill(std::begin(row), std::end(row), nan);
          for (auto& row : b_tile) std::fill(std::begin(row), std::end(row), nan);
          for (int thread = 0; thread < kGramTileThreads; ++thread) {
            gram_tile_stage<T>(p, n, l0, row0, col0, thread, load, a_tile, b_tile);
          }
          // __syncthreads()
          for (int thread = 0; thread < kGramTileThreads; ++thread) {
            T thread_acc[kGramTilePer][kGramTilePer];
            for (int r = 0; r < kGramTilePer; ++r) {
              for (int c = 0; c < kGramTilePer; ++c) thread_acc[r][c] = acc[thread][r][c];
            }
            gram_tile_accumulate<T>(a_tile, b_tile, thread % kGramTileSide, thread / kGramTileSide, thread_acc);
            for (int r = 0; r < kGramTilePer; ++r) {
              for (int c = 0; c < kGramTilePer; ++c) acc[thread][r][c] = thread_acc[r][c];
            }
          }
          // __syncthreads()
        }
        for (int thread = 0; thread < kGramTileThreads; ++thread) {
          T thread_acc[kGramTilePer][kGramTilePer];
          for (int r = 0; r < kGramTilePer; ++r) {
            for (int c = 0; c < kGramTilePer; ++c) thread_acc[r][c] = acc[thread][r][c];
          }
          gram_tile_write<T>(p, gram.data() + n * channels * channels, row0, col0, thread % kGramTileSide,
                             thread / kGramTileSide, thread_acc);
        }
      }
    }
  }
  const T scale = static_cast<T>(p.scale);
  int64_t wrong = 0;
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t r = 0; r < channels; ++r) {
      for (int64_t c = 0; c < channels; ++c) {
        double exact = 0.0;
        for (int64_t l = 0; l < length; ++l) {
          exact += static_cast<double>(features[p.feature_offset(n, r, l)]) * features[p.feature_offset(n, c, l)];
        }
        const T expected = static_cast<T>(exact) * scale;
        const T got = gram[n * channels * channels + r * channels + c];
        if (std::memcmp(&got, &expected, sizeof(T)) != 0 && ++wrong <= 3) {
          EXPECT(false, "tile kernel %s: G[%lld][%lld][%lld] = %.17g, expected %.17g", sizeof(T) == 4 ? "f32" : "f64",
                 static_cast<long long>(n), static_cast<long long>(r), static_cast<long long>(c),
                 static_cast<double>(got), static_cast<double>(expected));
        }
      }
    }
  }
  if (wrong > 3) EXPECT(false, "tile kernel: %lld wrong elements in all", static_cast<long long>(wrong));
  std::printf("tile kernel %s N=%lld C=%lld L=%lld %s: %s\n", sizeof(T) == 4 ? "f32" : "f64",
              static_cast<long long>(batch), static_cast<long long>(channels), static_cast<long long>(length),
              channels_last ? "channels-last" : "planar", wrong == 0 ? "ok" : "WRONG");
}

}  // namespace


int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";
  // The stage-index geometry the kernel relies on.
  EXPECT(kGramMmaStageBytes % 128 == 0, "staged operands not 128-byte aligned");
  for (int thread = 0; thread < kGramMmaThreads; ++thread) {
    for (int q = 1; q < gram_mma_copies(false, true); ++q) {
      int row0, k0, row, k;
      gram_mma_copy_start(false, true, thread, 0, row0, k0);
      gram_mma_copy_start(false, true, thread, q, row, k);
      EXPECT(gram_mma_stage_index(false, row, k) - gram_mma_stage_index(false, row0, k0) ==
                 q * (GramMmaStager<false, true>::kIndexStep),
             "planar copy slots not evenly stepped");
    }
  }

  struct Shape {
    int64_t batch, channels, length;
  };
  const std::vector<Shape> shapes = quick ? std::vector<Shape>{{1, 1, 1}, {2, 5, 33}, {3, 130, 72}, {1, 8, 300}, {2, 16, 600}, {1, 264, 24}}
                                          : std::vector<Shape>{{1, 1, 1},    {2, 5, 33},    {1, 60, 100}, {2, 128, 64},
                                                               {1, 129, 40}, {3, 8, 200},   {1, 200, 31}, {1, 256, 96},
                                                               {2, 16, 1000}, {1, 300, 70}, {1, 136, 264},
                                                               {1, 200, 1100}, {3, 130, 600}};
  // Resident-block counts: 1 (never split), an H200's 132 SMs x 2, and more than there is work.
  const int64_t slot_counts[] = {1, 264, 4096};
  std::mt19937 rng(12345);
  int index = 0;
  for (const Shape& shape : shapes) {
    for (Format format : {Format::Float16, Format::BFloat16}) {
      for (bool channels_last : {false, true}) {
        const bool normalise = (index++ % 2) == 0;
        const Problem problem =
            make_problem(shape.batch, shape.channels, shape.length, channels_last, normalise, format, rng);
        const int64_t contiguous = channels_last ? shape.channels : shape.length;
        for (int64_t slots : slot_counts) {
          char label[160];
          for (bool vector : {false, true}) {
            if (vector && contiguous % 8 != 0) continue;  // select_mma_kernel's rule
            std::snprintf(label, sizeof(label), "N=%lld C=%lld L=%lld %s %s %s slots=%lld",
                          static_cast<long long>(shape.batch), static_cast<long long>(shape.channels),
                          static_cast<long long>(shape.length), format == Format::Float16 ? "f16" : "bf16",
                          channels_last ? "channels-last" : "planar", vector ? "16-byte" : "2-byte",
                          static_cast<long long>(slots));
            if (channels_last) {
              if (vector) check_case<true, true>(problem, slots, label);
              else check_case<true, false>(problem, slots, label);
            } else {
              if (vector) check_case<false, true>(problem, slots, label);
              else check_case<false, false>(problem, slots, label);
            }
          }
        }
      }
    }
  }
  // The CUDA-core tile kernel, float32 and float64.
  struct TileShape {
    int64_t batch, channels, length;
  };
  const std::vector<TileShape> tile_shapes = quick ? std::vector<TileShape>{{3, 70, 33}, {1, 130, 16}}
                                                   : std::vector<TileShape>{{1, 1, 1},   {3, 70, 33}, {1, 130, 16},
                                                                            {2, 64, 100}, {1, 200, 47}};
  bool channels_last = false;
  for (const TileShape& shape : tile_shapes) {
    channels_last = !channels_last;
    check_tile_case<float>(shape.batch, shape.channels, shape.length, channels_last, true, rng);
    check_tile_case<double>(shape.batch, shape.channels, shape.length, !channels_last, false, rng);
  }
  std::printf("bad %d\n", failures);
  return 0;
}
