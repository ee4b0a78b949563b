// The one-thread-per-row CUDA attention kernels (attention_kernel.cu) run on the host: every
// thread's work is a function of csrc/attention/attention_rows.h (the forward of a query row, the
// dK / dV of a key row, the dQ of a query row), called here for every row in turn, as the
// kernels' grid-stride loops do, with delta = sum_e dO * O computed as the glue does. Results are
// compared with a float64 softmax reference written out here (scores, row softmax, dropout, the
// gradients of the definition), in float64 (1e-10) and float32 (1e-4, relative to the output's
// scale); lse and, for fully masked rows, zeros are checked too. Every output buffer has its exact
// size (AddressSanitizer) and starts as NaN, so a row left unwritten fails.
// Cases: grouped-query heads, L != S both ways, E != Ev, causal, boolean key-padding masks read
// through stride-0 dims (one batch item fully masked), full additive masks with -inf entries,
// dropout (the Philox rule of attention.h), large logits (|scale q.k| ~ 1e4), L = S = 1.
// Usage: attention_rows_replayed. Prints "bad N" (N failures).
#include "attention/attention_rows.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "expect.h"

using namespace pyvision_ops;

namespace {

struct Case {
  std::string name;
  int64_t batch, heads, kv_heads, q_len, kv_len, head_dim, value_dim;
  bool causal = false;
  AttentionMask mask_kind = AttentionMask::None;
  bool key_padding = false;  // boolean (B, 1, 1, S) mask, else a full (B, H, L, S) mask
  double dropout = 0.0;
  double value_scale = 1.0;  // q's magnitude (large logits)
};

struct Problem {
  AttentionParams p;
  std::vector<double> q, k, v, go;  // float64 originals
  std::vector<uint8_t> bool_mask;
  std::vector<double> additive_mask;
};

Problem make_problem(const Case& c, std::mt19937& rng) {
  Problem pr;
  AttentionParams& p = pr.p;
  p.batch = c.batch;
  p.heads = c.heads;
  p.kv_heads = c.kv_heads;
  p.q_len = c.q_len;
  p.kv_len = c.kv_len;
  p.head_dim = c.head_dim;
  p.value_dim = c.value_dim;
  p.scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  p.causal = c.causal;
  p.mask_kind = c.mask_kind;
  p.dropout = c.dropout;
  p.seed = 0x1234abcd5678ull;
  std::normal_distribution<double> normal(0.0, 1.0);
  auto fill = [&](std::vector<double>& x, int64_t n, double scale) {
    x.resize(static_cast<size_t>(n));
    for (auto& e : x) e = normal(rng) * scale;
  };
  fill(pr.q, c.batch * c.heads * c.q_len * c.head_dim, c.value_scale);
  fill(pr.k, c.batch * c.kv_heads * c.kv_len * c.head_dim, 1.0);
  fill(pr.v, c.batch * c.kv_heads * c.kv_len * c.value_dim, 1.0);
  fill(pr.go, c.batch * c.heads * c.q_len * c.value_dim, 1.0);
  if (c.mask_kind == AttentionMask::Bool && c.key_padding) {
    // (B, 1, 1, S): item 0 pads its last third, item 1 (if any) masks every key.
    pr.bool_mask.resize(static_cast<size_t>(c.batch * c.kv_len));
    for (int64_t b = 0; b < c.batch; ++b) {
      for (int64_t j = 0; j < c.kv_len; ++j) {
        pr.bool_mask[b * c.kv_len + j] = b == 1 ? 0 : (j < c.kv_len - c.kv_len / 3 ? 1 : 0);
      }
    }
    p.mask_stride[0] = c.kv_len;
    p.mask_stride[1] = 0;
    p.mask_stride[2] = 0;
    p.mask_stride[3] = 1;
  } else if (c.mask_kind != AttentionMask::None) {
    const int64_t n = c.batch * c.heads * c.q_len * c.kv_len;
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    if (c.mask_kind == AttentionMask::Bool) {
      pr.bool_mask.resize(static_cast<size_t>(n));
      for (auto& m : pr.bool_mask) m = uniform(rng) < 0.7 ? 1 : 0;
    } else {
      pr.additive_mask.resize(static_cast<size_t>(n));
      for (auto& m : pr.additive_mask) m = uniform(rng) < 0.2 ? -INFINITY : 3.0 * (uniform(rng) - 0.5);
    }
    p.mask_stride[0] = c.heads * c.q_len * c.kv_len;
    p.mask_stride[1] = c.q_len * c.kv_len;
    p.mask_stride[2] = c.kv_len;
    p.mask_stride[3] = 1;
  }
  return pr;
}

// The float64 reference: out, lse, dq, dk, dv from the definition.
struct Reference {
  std::vector<double> out, lse, dq, dk, dv;
};

Reference reference(const Problem& pr) {
  const AttentionParams& p = pr.p;
  Reference r;
  const int64_t rows = p.batch * p.heads * p.q_len;
  r.out.assign(static_cast<size_t>(rows * p.value_dim), 0.0);
  r.lse.assign(static_cast<size_t>(rows), -INFINITY);
  r.dq.assign(pr.q.size(), 0.0);
  r.dk.assign(pr.k.size(), 0.0);
  r.dv.assign(pr.v.size(), 0.0);
  const double keep_scale = p.dropout > 0.0 ? 1.0 / (1.0 - p.dropout) : 1.0;
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t kvh = h / (p.heads / p.kv_heads);
      for (int64_t i = 0; i < p.q_len; ++i) {
        const int64_t row = (b * p.heads + h) * p.q_len + i;
        std::vector<double> s(static_cast<size_t>(p.kv_len)), P(s.size(), 0.0), D(s.size(), 0.0);
        double m = -INFINITY;
        for (int64_t j = 0; j < p.kv_len; ++j) {
          double mask = 0.0;
          const int64_t at = b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2] + j * p.mask_stride[3];
          if (p.mask_kind == AttentionMask::Bool && !pr.bool_mask[at]) mask = -INFINITY;
          if (p.mask_kind == AttentionMask::Additive) mask = pr.additive_mask[at];
          if (p.causal && j > i) mask = -INFINITY;
          double dot = 0.0;
          for (int64_t e = 0; e < p.head_dim; ++e) {
            dot += pr.q[row * p.head_dim + e] * pr.k[((b * p.kv_heads + kvh) * p.kv_len + j) * p.head_dim + e];
          }
          s[j] = mask == -INFINITY ? -INFINITY : p.scale * dot + mask;
          m = std::max(m, s[j]);
          D[j] = p.dropout > 0.0 ? (dropout_keep(p.seed, p.dropout, row, j) ? keep_scale : 0.0) : 1.0;
        }
        if (m == -INFINITY) continue;  // fully masked: zeros, lse -inf, no gradients
        double sum = 0.0;
        for (int64_t j = 0; j < p.kv_len; ++j) sum += s[j] == -INFINITY ? 0.0 : std::exp(s[j] - m);
        for (int64_t j = 0; j < p.kv_len; ++j) P[j] = s[j] == -INFINITY ? 0.0 : std::exp(s[j] - m) / sum;
        r.lse[row] = m + std::log(sum);
        const double* gi = pr.go.data() + row * p.value_dim;
        double* oi = r.out.data() + row * p.value_dim;
        for (int64_t j = 0; j < p.kv_len; ++j) {
          const double* vj = pr.v.data() + ((b * p.kv_heads + kvh) * p.kv_len + j) * p.value_dim;
          for (int64_t e = 0; e < p.value_dim; ++e) oi[e] += P[j] * D[j] * vj[e];
        }
        double delta = 0.0;
        for (int64_t e = 0; e < p.value_dim; ++e) delta += gi[e] * oi[e];
        for (int64_t j = 0; j < p.kv_len; ++j) {
          if (P[j] == 0.0) continue;
          const int64_t key_row = (b * p.kv_heads + kvh) * p.kv_len + j;
          const double* vj = pr.v.data() + key_row * p.value_dim;
          double dp = 0.0;
          for (int64_t e = 0; e < p.value_dim; ++e) {
            r.dv[key_row * p.value_dim + e] += P[j] * D[j] * gi[e];
            dp += gi[e] * vj[e];
          }
          const double ds = P[j] * (dp * D[j] - delta) * p.scale;
          for (int64_t e = 0; e < p.head_dim; ++e) {
            r.dq[row * p.head_dim + e] += ds * pr.k[key_row * p.head_dim + e];
            r.dk[key_row * p.head_dim + e] += ds * pr.q[row * p.head_dim + e];
          }
        }
      }
    }
  }
  return r;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& x) {
  return std::vector<T>(x.begin(), x.end());
}

template <typename T>
int64_t compare(const char* label, const char* what, const std::vector<T>& got, const std::vector<double>& want,
                double tol) {
  double scale = 0.0;
  for (double w : want) {
    if (std::isfinite(w)) scale = std::max(scale, std::fabs(w));
  }
  int64_t wrong = 0;
  for (size_t e = 0; e < want.size(); ++e) {
    const double g = static_cast<double>(got[e]), w = want[e];
    const bool ok = std::isinf(w) ? g == w : std::fabs(g - w) <= tol * (scale + std::fabs(w)) + 1e-300;
    if (!ok && ++wrong <= 3) {
      EXPECT(false, "%s: %s[%zu] = %.12g, expected %.12g", label, what, e, g, w);
    }
  }
  if (wrong > 3) EXPECT(false, "%s: %s: %lld wrong in all", label, what, static_cast<long long>(wrong));
  return wrong;
}

template <typename T>
void run_case(const Case& c, const Problem& pr, const Reference& ref) {
  AttentionParams p = pr.p;
  const std::vector<T> q = cast<T>(pr.q), k = cast<T>(pr.k), v = cast<T>(pr.v), go = cast<T>(pr.go);
  const std::vector<T> additive = cast<T>(pr.additive_mask);  // the glue converts the mask to the compute dtype
  if (p.mask_kind == AttentionMask::Bool) p.mask = pr.bool_mask.data();
  if (p.mask_kind == AttentionMask::Additive) p.mask = additive.data();
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const int64_t rows = p.batch * p.heads * p.q_len, kv_rows = p.batch * p.kv_heads * p.kv_len;
  std::vector<T> out(static_cast<size_t>(rows * p.value_dim), nan), lse(static_cast<size_t>(rows), nan);
  std::vector<T> stats(static_cast<size_t>(2 * rows), nan);
  for (int64_t row = 0; row < rows; ++row) {
    attention_forward_row<T>(p, q.data(), k.data(), v.data(), out.data(), lse.data(), stats.data(), row);
  }
  // delta = sum_e dO * O, from the contiguous rows (attention_checks.cpp).
  std::vector<T> delta(static_cast<size_t>(rows), T(0));
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t e = 0; e < p.value_dim; ++e) delta[row] += go[row * p.value_dim + e] * out[row * p.value_dim + e];
  }
  std::vector<T> dq(q.size(), nan), dk(k.size(), nan), dv(v.size(), nan);
  for (int64_t key_row = 0; key_row < kv_rows; ++key_row) {
    attention_backward_kv_row<T>(p, q.data(), k.data(), v.data(), go.data(), stats.data(), delta.data(), dk.data(),
                                 dv.data(), key_row);
  }
  for (int64_t row = 0; row < rows; ++row) {
    attention_backward_q_row<T>(p, q.data(), k.data(), v.data(), go.data(), stats.data(), delta.data(), dq.data(), row);
  }
  const double tol = sizeof(T) == 8 ? 1e-10 : 1e-4;
  std::string label = c.name + (sizeof(T) == 8 ? " f64" : " f32");
  int64_t wrong = 0;
  wrong += compare(label.c_str(), "out", out, ref.out, tol);
  wrong += compare(label.c_str(), "lse", lse, ref.lse, tol);
  wrong += compare(label.c_str(), "dq", dq, ref.dq, tol);
  wrong += compare(label.c_str(), "dk", dk, ref.dk, tol);
  wrong += compare(label.c_str(), "dv", dv, ref.dv, tol);
  for (int64_t row = 0; row < rows; ++row) {
    // stats: (m, log l) with lse = m + log l; a fully masked row has m = -inf.
    const bool masked = ref.lse[row] == -INFINITY;
    const bool ok = masked ? stats[2 * row] == -INFINITY
                           : std::fabs(static_cast<double>(stats[2 * row] + stats[2 * row + 1]) - ref.lse[row]) <=
                                 tol * (1.0 + std::fabs(ref.lse[row]));
    if (!ok && ++wrong <= 3) EXPECT(false, "%s: stats of row %lld", label.c_str(), static_cast<long long>(row));
  }
  int64_t masked_rows = 0;
  for (double l : ref.lse) masked_rows += l == -INFINITY;
  std::printf("%-64s fully masked rows %3lld: %s\n", label.c_str(), static_cast<long long>(masked_rows),
              wrong == 0 ? "ok" : "WRONG");
}

}  // namespace

int main() {
  std::vector<Case> cases;
  auto add = [&](Case c) { cases.push_back(c); };
  add({"gqa L5 S7 E8 Ev6", 2, 4, 2, 5, 7, 8, 6});
  {
    Case c{"causal L6 S4 (L > S)", 1, 2, 2, 6, 4, 5, 5};
    c.causal = true;
    add(c);
  }
  {
    Case c{"causal gqa L3 S6 (L < S)", 2, 4, 1, 3, 6, 4, 7};
    c.causal = true;
    add(c);
  }
  {
    Case c{"bool key padding (B,1,1,S), item 1 fully masked", 2, 2, 2, 4, 9, 8, 8};
    c.mask_kind = AttentionMask::Bool;
    c.key_padding = true;
    add(c);
  }
  {
    Case c{"bool full mask causal gqa", 2, 4, 2, 7, 7, 6, 3};
    c.mask_kind = AttentionMask::Bool;
    c.causal = true;
    add(c);
  }
  {
    Case c{"additive mask with -inf", 2, 3, 3, 5, 6, 4, 4};
    c.mask_kind = AttentionMask::Additive;
    add(c);
  }
  {
    Case c{"dropout 0.3 gqa", 2, 4, 2, 6, 8, 8, 5};
    c.dropout = 0.3;
    add(c);
  }
  {
    Case c{"dropout 0.5 causal + key padding", 2, 2, 1, 5, 5, 4, 4};
    c.dropout = 0.5;
    c.causal = true;
    c.mask_kind = AttentionMask::Bool;
    c.key_padding = true;
    add(c);
  }
  {
    Case c{"large logits (|scale q.k| ~ 1e4)", 1, 2, 2, 4, 6, 16, 8};
    c.value_scale = 2500.0;
    add(c);
  }
  add({"L1 S1 E1 Ev1", 1, 1, 1, 1, 1, 1, 1});
  std::mt19937 rng(7);
  for (const Case& c : cases) {
    const Problem pr = make_problem(c, rng);
    const Reference ref = reference(pr);
    run_case<double>(c, pr, ref);
    if (c.value_scale > 1.0) continue;  // float32 rounding of q . k ~ 1e4 moves the weights by far more than 1e-4
    run_case<float>(c, pr, ref);
  }
  std::printf("bad %d\n", failures);
  return 0;
}
