// CPU kernels of the attention family (attention.h has the rules, attention_cpu_simd.h the tile
// kernels). Forward: parallel over (batch, head, tile of 64 queries); each task walks the key
// tiles of 64 keys with an online softmax (score tile, mask, exp, rescale, P V), skipping the
// tiles a causal mask hides entirely, so memory is O(64 x (64 + Ev)) per thread beyond inputs and
// outputs. Backward: parallel over (batch, kv head), or (fewer such pairs than threads) over
// (batch, kv head, key tile) for dK, dV and then (batch, head, query tile) for dQ; the score tiles
// are recomputed key tile by key tile, dK and dV of a key tile accumulate in local buffers, dQ in
// key-tile order, in a fixed order either way (deterministic, independent of the thread count). Every
// product is a row-major tile product (the glue transposes K, V, Q and dO into 64-wide tiles
// once), so no tile is transposed inside the loops.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/attention.h"
#include "attention/attention_checks.h"
#include "attention/attention_cpu_simd.h"
#include "common/checks.h"

namespace pyvision_ops {
namespace {

constexpr int64_t kQueryTile = 64;
constexpr int64_t kKeyTile = 64;

template <typename T>
struct AttentionTileOps;

template <>
struct AttentionTileOps<float> {
  const AttentionCpuKernels& k = attention_cpu_kernels();
  void gemm(int64_t m, int64_t n, int64_t kk, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
            int64_t ldc, bool accumulate) const {
    k.gemm(m, n, kk, a, lda, b, ldb, c, ldc, accumulate);
  }
  float exp_sum(float* x, int64_t n, float scale, float shift) const { return k.exp_sum(x, n, scale, shift); }
  float row_max(const float* x, int64_t n) const { return k.row_max(x, n); }
  float scale_add_max(float* x, int64_t n, float scale, const float* add) const {
    return k.scale_add_max(x, n, scale, add);
  }
  void gemm_row_max(int64_t m, int64_t n, int64_t kk, const float* a, int64_t lda, const float* b, int64_t ldb,
                    float* c, int64_t ldc, float* row_max) const {
    k.gemm_row_max(m, n, kk, a, lda, b, ldb, c, ldc, row_max);
  }
  void softmax_tile(float* s, int64_t rows, int64_t cols, int64_t lds, float scale, const float* raw_max, float* m,
                    float* l, float* acc, int64_t ev) const {
    k.softmax_tile(s, rows, cols, lds, scale, raw_max, m, l, acc, ev);
  }
  bool gemm_exp(int64_t m, int64_t n, int64_t kk, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                int64_t ldc, float scale, const float* shift, float* row_sum) const {
    return k.gemm_exp(m, n, kk, a, lda, b, ldb, c, ldc, scale, shift, row_sum);
  }
  void exp_shifted(float* x, int64_t n, float scale, float m, float log_l) const {
    k.exp_shifted(x, n, scale, m, log_l);
  }
};

template <>
struct AttentionTileOps<double> {
  void gemm(int64_t m, int64_t n, int64_t kk, const double* a, int64_t lda, const double* b, int64_t ldb, double* c,
            int64_t ldc, bool accumulate) const {
    attention_gemm_portable<double>(m, n, kk, a, lda, b, ldb, c, ldc, accumulate);
  }
  double exp_sum(double* x, int64_t n, double scale, double shift) const {
    return attention_exp_sum_portable<double>(x, n, scale, shift);
  }
  double row_max(const double* x, int64_t n) const { return attention_row_max_portable<double>(x, n); }
  double scale_add_max(double* x, int64_t n, double scale, const double* add) const {
    return attention_scale_add_max_portable<double>(x, n, scale, add);
  }
  void gemm_row_max(int64_t m, int64_t n, int64_t kk, const double* a, int64_t lda, const double* b, int64_t ldb,
                    double* c, int64_t ldc, double* row_max) const {
    attention_gemm_row_max_portable<double>(m, n, kk, a, lda, b, ldb, c, ldc, row_max);
  }
  void softmax_tile(double* s, int64_t rows, int64_t cols, int64_t lds, double scale, const double* raw_max,
                    double* m, double* l, double* acc, int64_t ev) const {
    attention_softmax_tile_portable<double>(s, rows, cols, lds, scale, raw_max, m, l, acc, ev);
  }
  bool gemm_exp(int64_t m, int64_t n, int64_t kk, const double* a, int64_t lda, const double* b, int64_t ldb,
                double* c, int64_t ldc, double scale, const double* shift, double* row_sum) const {
    return attention_gemm_exp_portable<double>(m, n, kk, a, lda, b, ldb, c, ldc, scale, shift, row_sum);
  }
  void exp_shifted(double* x, int64_t n, double scale, double m, double log_l) const {
    attention_exp_shifted_portable<double>(x, n, scale, m, log_l);
  }
};

// Tasks [0, n) handed out one at a time to the threads from a shared counter (at::parallel_for
// splits a range into one contiguous chunk per thread, which leaves a thread idle when the tasks
// differ in cost: masked key tiles skipped, causal rows). run(next) is called once
// per worker and takes tasks with next() until it returns n. Each task writes its own outputs,
// so which thread runs it does not change any result.
template <typename Run>
void parallel_tasks(int64_t n, Run&& run) {
  std::atomic<int64_t> counter{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(n, at::get_num_threads()));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    run([&] { return std::min<int64_t>(n, counter.fetch_add(1, std::memory_order_relaxed)); });
  });
}

// (rows, cols) row-major blocks of `count` matrices -> for each, ceil(rows / tile) transposed
// tiles (cols, tile), zero past the last row: tile t of block c starts at ((c * tiles + t) * cols)
// * tile. A product reading a transposed tile then steps through memory by `tile` elements per
// position instead of by `rows` (a stride of 4 KiB at rows = 1024 maps every position to the same
// L1 set).
template <typename T>
at::Tensor transpose_tiles(const at::Tensor& src, int64_t count, int64_t rows, int64_t cols, int64_t tile) {
  const int64_t tiles = (rows + tile - 1) / tile;
  at::Tensor dst = at::empty({count, tiles, cols, tile}, src.options());
  const T* s = src.data_ptr<T>();
  T* d = dst.data_ptr<T>();
  at::parallel_for(0, count * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ct = begin; ct < end; ++ct) {
      const int64_t c = ct / tiles, r0 = (ct % tiles) * tile;
      const int64_t n = std::min(tile, rows - r0);
      const T* sb = s + (c * rows + r0) * cols;
      T* db = d + ct * cols * tile;
      for (int64_t j = 0; j < cols; ++j) {
        T* out = db + j * tile;
        for (int64_t r = 0; r < n; ++r) out[r] = sb[r * cols + j];
        for (int64_t r = n; r < tile; ++r) out[r] = T(0);
      }
    }
  });
  return dst;
}

// Scaled scores of one tile row with the mask and causal rule applied, in place: row[c] holds
// q_i . k_(j0 + c) on entry.
template <typename T>
void mask_score_row(const AttentionParams& p, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t cols, T* row) {
  const T scale = static_cast<T>(p.scale);
  const int64_t base = b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2];
  const int64_t step = p.mask_stride[3];
  if (p.mask_kind == AttentionMask::Bool) {  // (the glue passes boolean masks as additive ones)
    for (int64_t c = 0; c < cols; ++c) row[c] *= scale;
    const uint8_t* m = static_cast<const uint8_t*>(p.mask) + base + j0 * step;
    for (int64_t c = 0; c < cols; ++c) {
      if (!m[c * step]) row[c] = -std::numeric_limits<T>::infinity();
    }
  } else if (p.mask_kind == AttentionMask::Additive) {
    const T* m = static_cast<const T*>(p.mask) + base + j0 * step;
    if (step == 1) {
      for (int64_t c = 0; c < cols; ++c) row[c] = row[c] * scale + m[c];
    } else {
      for (int64_t c = 0; c < cols; ++c) row[c] = row[c] * scale + m[c * step];
    }
  } else {
    for (int64_t c = 0; c < cols; ++c) row[c] *= scale;
  }
  if (p.causal) {
    for (int64_t c = std::max<int64_t>(0, i + 1 - j0); c < cols; ++c) row[c] = -std::numeric_limits<T>::infinity();
  }
}

// Dropout of one tile row of weights, in place: kept weights scaled by 1 / (1 - p).
// One Philox call gives the numbers of four consecutive keys (attention.h).
template <typename T, typename F>
void for_dropout_factors(const AttentionParams& p, int64_t row_id, int64_t j0, int64_t cols, F&& use) {
  const T keep_scale = p.dropout >= 1.0 ? T(0) : static_cast<T>(1.0 / (1.0 - p.dropout));
  for (int64_t c = 0; c < cols;) {
    const int64_t j = j0 + c;
    float u[4];
    dropout_uniforms(p.seed, row_id, j / 4, u);
    for (int64_t lane = j % 4; lane < 4 && c < cols; ++lane, ++c) {
      use(c, static_cast<double>(u[lane]) >= p.dropout ? keep_scale : T(0));  // as dropout_keep
    }
  }
}

template <typename T>
void dropout_row(const AttentionParams& p, int64_t row_id, int64_t j0, int64_t cols, T* row) {
  if (p.dropout <= 0.0) return;
  for_dropout_factors<T>(p, row_id, j0, cols, [&](int64_t c, T factor) { row[c] *= factor; });
}

// Whether every key of [j0, j0 + cols) is masked for every query (a mask that does not depend
// on the query, e.g. key padding, whose entries there are all -inf): the tile can be skipped.
template <typename T>
bool key_tile_masked(const AttentionParams& p, int64_t b, int64_t h, int64_t j0, int64_t cols) {
  if (p.mask_kind != AttentionMask::Additive || p.mask_stride[2] != 0) return false;
  const T* m = static_cast<const T*>(p.mask) + b * p.mask_stride[0] + h * p.mask_stride[1] + j0 * p.mask_stride[3];
  for (int64_t c = 0; c < cols; ++c) {
    if (!(m[c * p.mask_stride[3]] == -std::numeric_limits<T>::infinity())) return false;
  }
  return true;
}

// Whether the mask adds nothing to [j0, j0 + cols) for every query (a query-independent additive
// mask that is 0 there, e.g. the unpadded keys of a key-padding mask): the tile is unmasked.
template <typename T>
bool key_tile_clear(const AttentionParams& p, int64_t b, int64_t h, int64_t j0, int64_t cols) {
  if (p.mask_kind == AttentionMask::None) return true;
  if (p.mask_kind != AttentionMask::Additive || p.mask_stride[2] != 0) return false;
  const T* m = static_cast<const T*>(p.mask) + b * p.mask_stride[0] + h * p.mask_stride[1] + j0 * p.mask_stride[3];
  for (int64_t c = 0; c < cols; ++c) {
    if (!(m[c * p.mask_stride[3]] == T(0))) return false;
  }
  return true;
}

// The key range a query tile [i0, i0 + rows) can see: all keys, or (causal) keys < i0 + rows.
inline int64_t visible_keys(const AttentionParams& p, int64_t i0, int64_t rows) {
  return p.causal ? std::min(p.kv_len, i0 + rows) : p.kv_len;
}

template <typename T>
void forward_impl(const AttentionParams& p, const at::Tensor& q, const at::Tensor& kt, const at::Tensor& v,
                  at::Tensor& out, at::Tensor& lse, at::Tensor& stats) {
  const AttentionTileOps<T> ops;
  const int64_t L = p.q_len, S = p.kv_len, E = p.head_dim, Ev = p.value_dim;
  const int64_t tiles = (L + kQueryTile - 1) / kQueryTile;
  const T* qp = q.data_ptr<T>();
  const T* ktp = kt.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  T* lp = lse.data_ptr<T>();
  T* sp = stats.data_ptr<T>();
  const T scale = static_cast<T>(p.scale);
  const int64_t tasks = p.batch * p.heads * tiles;
  parallel_tasks(tasks, [&](auto next) {
    std::vector<T> scores(kQueryTile * kKeyTile), acc(kQueryTile * std::max<int64_t>(Ev, 1));
    std::vector<T> m(kQueryTile), l(kQueryTile), raw_max(kQueryTile), tile_sum(kQueryTile);
    for (int64_t task = next(); task < tasks; task = next()) {
      const int64_t bh = task / tiles, i0 = (task % tiles) * kQueryTile;
      const int64_t b = bh / p.heads, h = bh % p.heads, kvh = h / p.group();
      const int64_t rows = std::min(kQueryTile, L - i0);
      const T* qb = qp + (bh * L + i0) * E;
      const int64_t key_tiles = (S + kKeyTile - 1) / kKeyTile;
      const T* ktb = ktp + (b * p.kv_heads + kvh) * key_tiles * E * kKeyTile;
      const T* vb = vp + (b * p.kv_heads + kvh) * S * Ev;
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
      std::fill(l.begin(), l.end(), T(0));
      const int64_t keys = visible_keys(p, i0, rows);
      const bool fused = scale > T(0) && (p.mask_kind == AttentionMask::None ||
                                          (p.mask_kind == AttentionMask::Additive && p.mask_stride[3] == 1));
      for (int64_t j0 = 0; j0 < keys; j0 += kKeyTile) {
        const int64_t cols = std::min(kKeyTile, keys - j0);
        if (key_tile_masked<T>(p, b, h, j0, cols)) continue;
        const T* kt_tile = ktb + (j0 / kKeyTile) * E * kKeyTile;
        if (fused && (!p.causal || j0 + cols <= i0 + 1) && key_tile_clear<T>(p, b, h, j0, cols)) {
          // Every row sees every key of the tile. Once every row has a finite running maximum, the
          // product writes the weights against those maxima (gemm_exp: lazy rescaling) unless a
          // score exceeds its row's maximum by more than kLazyRescaleLimit; otherwise (and then)
          // the product folds the raw row maxima and one call does the online-softmax step of
          // all rows (scale folded into the exp).
          const bool lazy = std::all_of(m.begin(), m.begin() + rows, [](T x) { return std::isfinite(x); });
          bool done = false;
          if (lazy) {
            std::fill(tile_sum.begin(), tile_sum.begin() + rows, T(0));
            done = ops.gemm_exp(rows, cols, E, qb, E, kt_tile, kKeyTile, scores.data(), kKeyTile, scale, m.data(),
                                tile_sum.data());
            if (done) {
              for (int64_t r = 0; r < rows; ++r) l[r] += tile_sum[r];
            }
          }
          if (!done) {
            std::fill(raw_max.begin(), raw_max.end(), -std::numeric_limits<T>::infinity());
            ops.gemm_row_max(rows, cols, E, qb, E, kt_tile, kKeyTile, scores.data(), kKeyTile, raw_max.data());
            ops.softmax_tile(scores.data(), rows, cols, kKeyTile, scale, raw_max.data(), m.data(), l.data(),
                             acc.data(), Ev);
          }
          if (p.dropout > 0.0) {
            for (int64_t r = 0; r < rows; ++r) dropout_row(p, bh * L + i0 + r, j0, cols, scores.data() + r * kKeyTile);
          }
          ops.gemm(rows, Ev, cols, scores.data(), kKeyTile, vb + j0 * Ev, Ev, acc.data(), Ev, true);
          continue;
        }
        ops.gemm(rows, cols, E, qb, E, kt_tile, kKeyTile, scores.data(), kKeyTile, false);
        for (int64_t r = 0; r < rows; ++r) {
          T* row = scores.data() + r * kKeyTile;
          const int64_t i = i0 + r;
          // Fused paths (scale > 0, so -inf * scale stays -inf and max(scale s) = scale max(s)):
          // the causal rule on the raw scores, then the scale folded into the exp (no mask) or
          // applied with a contiguous additive mask in the pass that takes the maximum.
          // Anything else goes through mask_score_row first.
          T block_max;
          T exp_scale = T(1);
          if (fused) {
            if (p.causal) {
              for (int64_t c = std::max<int64_t>(0, i + 1 - j0); c < cols; ++c) {
                row[c] = -std::numeric_limits<T>::infinity();
              }
            }
            if (p.mask_kind == AttentionMask::Additive) {
              const T* add = static_cast<const T*>(p.mask) + b * p.mask_stride[0] + h * p.mask_stride[1] +
                             i * p.mask_stride[2] + j0;
              block_max = ops.scale_add_max(row, cols, scale, add);
            } else {
              block_max = ops.row_max(row, cols) * scale;
              exp_scale = scale;
            }
          } else {
            mask_score_row(p, b, h, i, j0, cols, row);
            block_max = ops.row_max(row, cols);
          }
          const T factor = online_softmax_rescale(&m[r], block_max);
          if (m[r] == -std::numeric_limits<T>::infinity()) {
            std::fill(row, row + cols, T(0));
            continue;
          }
          l[r] = l[r] * factor + ops.exp_sum(row, cols, exp_scale, m[r]);
          if (factor != T(1)) {
            T* a = acc.data() + r * Ev;
            for (int64_t e = 0; e < Ev; ++e) a[e] *= factor;
          }
          dropout_row(p, bh * L + i, j0, cols, row);
        }
        ops.gemm(rows, Ev, cols, scores.data(), kKeyTile, vb + j0 * Ev, Ev, acc.data(), Ev, true);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        lp[bh * L + i] = attention_row_lse(m[r], l[r]);
        sp[2 * (bh * L + i)] = m[r];
        sp[2 * (bh * L + i) + 1] = l[r] > T(0) ? std::log(l[r]) : -std::numeric_limits<T>::infinity();
        const T inv = l[r] > T(0) ? T(1) / l[r] : T(0);
        T* o = op + (bh * L + i) * Ev;
        for (int64_t e = 0; e < Ev; ++e) o[e] = acc[r * Ev + e] * inv;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_forward_cpu(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v, const c10::optional<at::Tensor>& mask,
                                                         double dropout_p, bool is_causal, double scale,
                                                         int64_t seed) {
  constexpr const char* op = "scaled_dot_product_attention";
  const AttentionInputs in = prepare_attention_inputs(op, q, k, v, mask, dropout_p, is_causal, scale, seed);
  const AttentionParams& p = in.params;
  const at::ScalarType compute = in.q.scalar_type();
  at::Tensor out = at::empty({p.batch, p.heads, p.q_len, p.value_dim}, in.q.options());
  at::Tensor lse = at::empty({p.batch, p.heads, p.q_len}, in.q.options());
  at::Tensor stats = at::empty({p.batch, p.heads, p.q_len, 2}, in.q.options());
  if (out.numel() > 0 || lse.numel() > 0) {
    if (p.kv_len == 0) {
      out.zero_();
      lse.fill_(-std::numeric_limits<double>::infinity());
      stats.fill_(-std::numeric_limits<double>::infinity());
    } else {
      AT_DISPATCH_FLOATING_TYPES(compute, op, [&] {
        const at::Tensor kt = transpose_tiles<scalar_t>(in.k, p.batch * p.kv_heads, p.kv_len, p.head_dim, kKeyTile);
        forward_impl<scalar_t>(p, in.q, kt, in.v, out, lse, stats);
      });
    }
  }
  return {out.to(q.scalar_type()), lse, stats};
}

// Transposed tiles (see transpose_tiles): kt/vt per key tile (E or Ev x 64), qt/got per query
// tile. Per (key tile j, head, query tile i), all row-major products:
//   S = Q_i K_j^T (A = Q_i rows, B = kt tile), masked, P = exp((S - m) - log l) (the row's stats);
//   dV_j^T += dO_i^T P_dropped (A = got tile, B = P), dP = dO_i V_j^T (B = vt tile);
//   dS = P * (dP * dropout factor - delta) * scale;
//   dK_j^T += Q_i^T dS (A = qt tile), dQ_i += dS K_j (B = K_j rows).
// dK_j^T and dV_j^T live in local buffers and are transposed into dk, dv once per key tile.
//
// Two schedules with the same sums in the same order (so the same bits): with at least as many
// (batch, kv head) pairs as threads, one pass parallel over them (each walks its key tiles and
// adds to dQ in key-tile order); with fewer, two passes: dK, dV parallel over (batch, kv head,
// key tile), then dQ parallel over (batch, head, query tile), each recomputing P and dS of its
// tiles (two of the five products done twice).
template <typename T>
void backward_impl(const AttentionParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& qt,
                   const at::Tensor& kt, const at::Tensor& vt, const at::Tensor& go, const at::Tensor& got,
                   const at::Tensor& delta, const at::Tensor& stats, at::Tensor& dq, at::Tensor& dk,
                   at::Tensor& dv) {
  const AttentionTileOps<T> ops;
  const int64_t L = p.q_len, S = p.kv_len, E = p.head_dim, Ev = p.value_dim, group = p.group();
  const T scale = static_cast<T>(p.scale);
  const int64_t query_tiles = (L + kQueryTile - 1) / kQueryTile, key_tiles = (S + kKeyTile - 1) / kKeyTile;
  const T *qp = q.data_ptr<T>(), *kp = k.data_ptr<T>(), *qtp = qt.data_ptr<T>(), *ktp = kt.data_ptr<T>();
  const T *vtp = vt.data_ptr<T>(), *gop = go.data_ptr<T>(), *gotp = got.data_ptr<T>();
  const T *dp = delta.data_ptr<T>(), *sp = stats.data_ptr<T>();
  T *dqp = dq.data_ptr<T>(), *dkp = dk.data_ptr<T>(), *dvp = dv.data_ptr<T>();

  struct Buffers {
    std::vector<T> pm, dpm, dropped, dkt, dvt;
    Buffers(const AttentionParams& p, int64_t E, int64_t Ev)
        : pm(kQueryTile * kKeyTile), dpm(kQueryTile * kKeyTile),
          dropped(p.dropout > 0.0 ? kQueryTile * kKeyTile : 0), dkt(std::max<int64_t>(E, 1) * kKeyTile),
          dvt(std::max<int64_t>(Ev, 1) * kKeyTile) {}
  };
  // The first query tile that sees key tile jt (causal: the tiles ending before its first key see none).
  auto first_query_tile = [&](int64_t jt) { return p.causal ? jt * kKeyTile / kQueryTile : int64_t(0); };
  // P (or P with dropout: the returned pointer) and dS (in buf.dpm) of (head bh, query tile it,
  // key tile jt of kv pair kv).
  auto tile = [&](Buffers& buf, int64_t kv, int64_t bh, int64_t it, int64_t jt) -> const T* {
    const int64_t b = bh / p.heads, h = bh % p.heads;
    const int64_t i0 = it * kQueryTile, rows = std::min(kQueryTile, L - i0);
    const int64_t j0 = jt * kKeyTile, cols = std::min(kKeyTile, S - j0);
    const T* kt_tile = ktp + (kv * key_tiles + jt) * E * kKeyTile;
    const T* vt_tile = vtp + (kv * key_tiles + jt) * Ev * kKeyTile;
    ops.gemm(rows, cols, E, qp + (bh * L + i0) * E, E, kt_tile, kKeyTile, buf.pm.data(), kKeyTile, false);
    ops.gemm(rows, cols, Ev, gop + (bh * L + i0) * Ev, Ev, vt_tile, kKeyTile, buf.dpm.data(), kKeyTile, false);
    // The scores' shift s * scale (+ mask) - m rounded as the forward rounded it for this tile
    // (forward_impl): a weight that differs from the forward's by the rounding of a score of size
    // |s * scale| breaks sum_j dS_j = 0, an error that dQ = dS K multiplies by |k|.
    const bool fused = scale > T(0) && (p.mask_kind == AttentionMask::None ||
                                        (p.mask_kind == AttentionMask::Additive && p.mask_stride[3] == 1));
    const bool clear = fused && (!p.causal || j0 + cols <= i0 + 1) && key_tile_clear<T>(p, b, h, j0, cols);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r, row_id = bh * L + i;
      T* prow = buf.pm.data() + r * kKeyTile;
      T* dprow = buf.dpm.data() + r * kKeyTile;
      const T m = sp[2 * row_id], log_l = sp[2 * row_id + 1];
      if (m == -std::numeric_limits<T>::infinity()) {
        std::fill(prow, prow + cols, T(0));
      } else {
        // the causal rule on the raw scores (-inf * scale stays -inf), then the forward's rounding
        if (fused && p.causal) {
          for (int64_t c = std::max<int64_t>(0, i + 1 - j0); c < cols; ++c) {
            prow[c] = -std::numeric_limits<T>::infinity();
          }
        }
        T exp_scale = T(1);
        if (clear || (fused && p.mask_kind == AttentionMask::None)) {
          exp_scale = scale;  // one rounding of s * scale - m: the forward's fma
        } else if (fused) {
          const T* add = static_cast<const T*>(p.mask) + b * p.mask_stride[0] + h * p.mask_stride[1] +
                         i * p.mask_stride[2] + j0;
          ops.scale_add_max(prow, cols, scale, add);
        } else {
          mask_score_row(p, b, h, i, j0, cols, prow);
        }
        // exp((s - m) - log l): s - m is exact for scores near the maximum, whatever |m| is.
        ops.exp_shifted(prow, cols, exp_scale, m, log_l);
      }
      if (p.dropout > 0.0) {
        T* drow = buf.dropped.data() + r * kKeyTile;
        for_dropout_factors<T>(p, row_id, j0, cols, [&](int64_t c, T keep) {
          drow[c] = prow[c] * keep;
          dprow[c] *= keep;
        });
      }
      const T d = dp[row_id];
      // dprow becomes dS.
      for (int64_t c = 0; c < cols; ++c) dprow[c] = prow[c] * (dprow[c] - d) * scale;
    }
    return p.dropout > 0.0 ? buf.dropped.data() : buf.pm.data();
  };
  auto add_dq = [&](Buffers& buf, int64_t kv, int64_t bh, int64_t it, int64_t jt) {
    const int64_t i0 = it * kQueryTile, rows = std::min(kQueryTile, L - i0);
    const int64_t j0 = jt * kKeyTile, cols = std::min(kKeyTile, S - j0);
    ops.gemm(rows, E, cols, buf.dpm.data(), kKeyTile, kp + (kv * S + j0) * E, E, dqp + (bh * L + i0) * E, E, true);
  };
  // dK, dV of key tile jt of kv pair kv (and, with with_dq, the dQ contributions of its tiles).
  auto key_tile = [&](Buffers& buf, int64_t kv, int64_t jt, bool with_dq) {
    const int64_t b = kv / p.kv_heads, kvh = kv % p.kv_heads;
    const int64_t j0 = jt * kKeyTile, cols = std::min(kKeyTile, S - j0);
    std::fill(buf.dkt.begin(), buf.dkt.end(), T(0));
    std::fill(buf.dvt.begin(), buf.dvt.end(), T(0));
    for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
      const int64_t bh = b * p.heads + h;
      if (key_tile_masked<T>(p, b, h, j0, cols)) continue;
      for (int64_t it = first_query_tile(jt); it < query_tiles; ++it) {
        const int64_t rows = std::min(kQueryTile, L - it * kQueryTile);
        const T* weights = tile(buf, kv, bh, it, jt);
        const T* qt_tile = qtp + (bh * query_tiles + it) * E * kQueryTile;
        const T* got_tile = gotp + (bh * query_tiles + it) * Ev * kQueryTile;
        ops.gemm(Ev, cols, rows, got_tile, kQueryTile, weights, kKeyTile, buf.dvt.data(), kKeyTile, true);
        ops.gemm(E, cols, rows, qt_tile, kQueryTile, buf.dpm.data(), kKeyTile, buf.dkt.data(), kKeyTile, true);
        if (with_dq) add_dq(buf, kv, bh, it, jt);
      }
    }
    for (int64_t c = 0; c < cols; ++c) {
      T* dk_row = dkp + (kv * S + j0 + c) * E;
      T* dv_row = dvp + (kv * S + j0 + c) * Ev;
      for (int64_t e = 0; e < E; ++e) dk_row[e] = buf.dkt[e * kKeyTile + c];
      for (int64_t e = 0; e < Ev; ++e) dv_row[e] = buf.dvt[e * kKeyTile + c];
    }
  };

  const int64_t pairs = p.batch * p.kv_heads;
  if (pairs >= at::get_num_threads()) {
    parallel_tasks(pairs, [&](auto next) {
      Buffers buf(p, E, Ev);
      for (int64_t kv = next(); kv < pairs; kv = next()) {
        for (int64_t jt = 0; jt < key_tiles; ++jt) key_tile(buf, kv, jt, true);
      }
    });
    return;
  }
  parallel_tasks(pairs * key_tiles, [&](auto next) {
    Buffers buf(p, E, Ev);
    for (int64_t task = next(); task < pairs * key_tiles; task = next()) {
      key_tile(buf, task / key_tiles, task % key_tiles, false);
    }
  });
  const int64_t query_tasks = p.batch * p.heads * query_tiles;
  parallel_tasks(query_tasks, [&](auto next) {
    Buffers buf(p, E, Ev);
    for (int64_t task = next(); task < query_tasks; task = next()) {
      const int64_t bh = task / query_tiles, it = task % query_tiles;
      const int64_t b = bh / p.heads, h = bh % p.heads, kv = b * p.kv_heads + h / group;
      for (int64_t jt = 0; jt < key_tiles; ++jt) {
        if (it < first_query_tile(jt)) break;  // (first_query_tile grows with jt)
        if (key_tile_masked<T>(p, b, h, jt * kKeyTile, std::min(kKeyTile, S - jt * kKeyTile))) continue;
        tile(buf, kv, bh, it, jt);
        add_dq(buf, kv, bh, it, jt);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& mask, const at::Tensor& out, const at::Tensor& stats, double dropout_p,
    bool is_causal, double scale, int64_t seed, std::array<bool, 3> output_mask) {
  constexpr const char* op = "scaled_dot_product_attention_backward";
  const AttentionInputs in = prepare_attention_inputs(op, q, k, v, mask, dropout_p, is_causal, scale, seed);
  const AttentionParams& p = in.params;
  AttentionBackwardTensors t = prepare_attention_backward(op, in, grad_out, out, stats);
  if (p.batch * p.heads * p.q_len > 0 && p.kv_len > 0) {
    AT_DISPATCH_FLOATING_TYPES(in.q.scalar_type(), op, [&] {
      const int64_t heads = p.batch * p.heads;
      const int64_t kv_heads = p.batch * p.kv_heads;
      const at::Tensor qt = transpose_tiles<scalar_t>(in.q, heads, p.q_len, p.head_dim, kQueryTile);
      const at::Tensor got = transpose_tiles<scalar_t>(t.grad_out, heads, p.q_len, p.value_dim, kQueryTile);
      const at::Tensor kt = transpose_tiles<scalar_t>(in.k, kv_heads, p.kv_len, p.head_dim, kKeyTile);
      const at::Tensor vt = transpose_tiles<scalar_t>(in.v, kv_heads, p.kv_len, p.value_dim, kKeyTile);
      backward_impl<scalar_t>(p, in.q, in.k, qt, kt, vt, t.grad_out, got, t.delta, t.stats, t.dq, t.dk, t.dv);
    });
  }
  return attention_backward_result(t, q, k, v, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyvision_ops, CPU, m) {
  m.impl("_attention_forward", &attention_forward_cpu);
  m.impl("_attention_backward", &attention_backward_cpu);
}

}  // namespace pyvision_ops
