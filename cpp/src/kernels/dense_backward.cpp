// Backward of dense attention, flash-style recomputation by tiles (Dao, "FlashAttention-2", 2023,
// Algorithm 2): with the forward's row log-sum-exp, each (query tile, key tile) pair recomputes
// S = scale Q K^T + bias and P = exp(S - lse), then dP = dO V^T, dS = P (dP - rowsum(dO * O)),
// dV += P^T dO, dK += scale dS^T Q, dQ += scale dS K and d(bias) = dS. Every product runs through
// the SIMD layer (qk_rowmajor for Q K^T and dO V^T, pv for the three accumulations); no Nq x Nk
// buffer beyond the pair-bias gradient, which has the bias's own size.
// Two parallel passes avoid write races: key tiles (b, kv head, key tile) own dK and dV, query
// tiles own dQ and the rows of the pair-bias gradient (looping over batch and heads inside, as a
// shared bias row gathers every head's dS).
#include <cmath>
#include <vector>

#include "engine.hpp"
#include "spattn/kernels.hpp"

namespace spattn {

namespace {

constexpr int kBwdTile = 64;

struct BwdScratch {
  detail::AlignedFloats q, dout, s, dp, tr;
  std::vector<int> heads, qpos, pos;
  std::vector<double> d_rel;  // this thread's share of the relative-bias gradient
  BwdScratch(int d, int dv)
      : q(size_t(kBwdTile) * d), dout(size_t(kBwdTile) * dv), s(size_t(kBwdTile) * kBwdTile),
        dp(size_t(kBwdTile) * kBwdTile), tr(size_t(kBwdTile) * kBwdTile), heads(kBwdTile), qpos(kBwdTile),
        pos(kBwdTile) {}
};

struct Backward {
  const AttnArgs& a;
  const float* dout;
  const float* delta;  // (B, Hq, Nq): rowsum(dO * O)
  const AttnGrads& g;
  float scale;

  // P and dS (into t.s, t.dp) of query rows [i0, i1) of head h and keys [j0, j1) of batch b.
  // Returns false when no pair of the tile is visible.
  bool tile(BwdScratch& t, int b, int h, int i0, int i1, int j0, int j1) const {
    const AttnShape& s = a.shape;
    const int rows = i1 - i0, cols = j1 - j0, hk = h / s.group(), off = s.causal_offset();
    if (a.causal && j0 > i1 - 1 + off) return false;
    const auto& simd = simd::kernels();
    const float* qs = a.q + s.q_index(b, h, i0);
    for (size_t c = 0; c < size_t(rows) * s.D; ++c) t.q[c] = qs[c] * scale;
    simd.qk_rowmajor(t.q.data(), rows, s.D, a.k + s.k_index(b, hk, j0), s.D, cols, t.s.data(), cols);
    if (a.bias != nullptr) {
      for (int r = 0; r < rows; ++r) {
        t.heads[r] = h;
        t.qpos[r] = i0 + r;
      }
      for (int c = 0; c < cols; ++c) t.pos[c] = j0 + c;
      detail::bias_tile(*a.bias, s, b, t.heads.data(), t.qpos.data(), rows, t.pos.data(), cols, t.s.data(), cols);
    }
    std::copy_n(dout + s.out_index(b, h, i0), size_t(rows) * s.Dv, t.dout.data());
    if (s.Dv > 0)
      simd.qk_rowmajor(t.dout.data(), rows, s.Dv, a.v + s.v_index(b, hk, j0), s.Dv, cols, t.dp.data(), cols);
    else
      std::fill_n(t.dp.data(), size_t(rows) * cols, 0.f);
    for (int r = 0; r < rows; ++r) {
      const size_t row = s.row_index(b, h, i0 + r);
      const float l = a.lse[row], dl = delta[row];
      const int vis = a.causal ? std::clamp(i0 + r + off - j0 + 1, 0, cols) : cols;
      float* P = t.s.data() + size_t(r) * cols;
      float* dS = t.dp.data() + size_t(r) * cols;
      for (int c = 0; c < cols; ++c) {
        const float p = (c < vis && l != detail::kNegInf) ? std::exp(P[c] - l) : 0.f;
        P[c] = p;
        dS[c] = p * (dS[c] - dl);
      }
    }
    return true;
  }

  // dK, dV of keys [j0, j1) of kv head (b, hk), over every query head of its group and every row.
  void key_pass(BwdScratch& t, int b, int hk, int j0, int j1) const {
    const AttnShape& s = a.shape;
    const int cols = j1 - j0;
    const auto& simd = simd::kernels();
    float* dk = g.dk + s.k_index(b, hk, j0);
    float* dv = s.Dv > 0 ? g.dv + s.v_index(b, hk, j0) : nullptr;
    std::fill_n(dk, size_t(cols) * s.D, 0.f);
    if (dv) std::fill_n(dv, size_t(cols) * s.Dv, 0.f);
    const LogitBias* lb = a.bias;
    const bool key = g.d_key != nullptr && lb != nullptr && lb->key != nullptr;
    if (key)
      for (int h = 0; h < lb->key_heads; ++h)
        if (lb->key_heads == s.Hq ? h / s.group() == hk : h == hk)
          std::fill_n(g.d_key + (size_t(b) * lb->key_heads + h) * s.Nk + j0, cols, 0.f);
    for (int h = hk * s.group(); h < (hk + 1) * s.group(); ++h)
      for (int i0 = 0; i0 < s.Nq; i0 += kBwdTile) {
        const int i1 = std::min(s.Nq, i0 + kBwdTile), rows = i1 - i0;
        if (!tile(t, b, h, i0, i1, j0, j1)) continue;
        if (dv) {  // dV += P^T dO
          transpose(t.s.data(), rows, cols, t.tr.data());
          simd.pv(t.tr.data(), cols, rows, t.dout.data(), s.Dv, rows, s.Dv, dv);
        }
        transpose(t.dp.data(), rows, cols, t.tr.data());  // dK += dS^T (scale Q)
        simd.pv(t.tr.data(), cols, rows, t.q.data(), s.D, rows, s.D, dk);
        if (key) {  // d key bias = column sums of dS
          float* dkb = g.d_key + (size_t(b) * lb->key_heads + (lb->key_heads == s.Hq ? h : hk)) * s.Nk + j0;
          for (int c = 0; c < cols; ++c) {
            const float* row = t.tr.data() + size_t(c) * rows;
            double acc = 0.0;
            for (int r = 0; r < rows; ++r) acc += row[r];
            dkb[c] += float(acc);
          }
        }
      }
  }

  // dQ of query rows [i0, i1) of every (batch, head), and those rows of the pair-bias gradient.
  void query_pass(BwdScratch& t, int i0, int i1) const {
    const AttnShape& s = a.shape;
    const int rows = i1 - i0;
    const auto& simd = simd::kernels();
    const LogitBias* lb = a.bias;
    const bool pair = g.d_pair != nullptr && lb != nullptr && lb->pair != nullptr;
    const bool rel = g.d_rel != nullptr && lb != nullptr && lb->rel != nullptr;
    if (pair)
      for (int ph = 0; ph < lb->pair_heads; ++ph)
        std::fill_n(g.d_pair + (size_t(ph) * s.Nq + i0) * s.Nk, size_t(rows) * s.Nk, 0.f);
    for (int b = 0; b < s.B; ++b)
      for (int h = 0; h < s.Hq; ++h) {
        float* dq = g.dq + s.q_index(b, h, i0);
        std::fill_n(dq, size_t(rows) * s.D, 0.f);
        const int hk = h / s.group();
        for (int j0 = 0; j0 < s.Nk; j0 += kBwdTile) {
          const int j1 = std::min(s.Nk, j0 + kBwdTile), cols = j1 - j0;
          if (!tile(t, b, h, i0, i1, j0, j1)) break;
          simd.pv(t.dp.data(), rows, cols, a.k + s.k_index(b, hk, j0), s.D, cols, s.D, dq);
          if (rel) {
            const int R = lb->rel_radius, off = s.causal_offset();
            double* dr = t.d_rel.data() + size_t(lb->rel_heads == 1 ? 0 : h) * (2 * R + 1) + R;
            for (int r = 0; r < rows; ++r)
              for (int c = 0; c < cols; ++c)
                dr[std::clamp(j0 + c - (i0 + r + off), -R, R)] += t.dp[size_t(r) * cols + c];
          }
          if (pair) {
            float* db = g.d_pair + ((size_t(lb->pair_heads == 1 ? 0 : h) * s.Nq + i0) * s.Nk) + j0;
            for (int r = 0; r < rows; ++r)
              for (int c = 0; c < cols; ++c) db[size_t(r) * s.Nk + c] += t.dp[size_t(r) * cols + c];
          }
        }
        for (size_t c = 0; c < size_t(rows) * s.D; ++c) dq[c] *= scale;
      }
  }

  static void transpose(const float* x, int rows, int cols, float* y) {
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) y[size_t(c) * rows + r] = x[size_t(r) * cols + c];
  }
};

}  // namespace

void dense_attention_backward(const AttnArgs& a, const float* dout, const AttnGrads& g) {
  const AttnShape& s = a.shape;
  s.validate();
  if (a.kv != KVStorage::F32 || s.kv_capacity != 0)
    throw std::invalid_argument("spattn: dense_attention_backward needs packed float32 K/V");
  if (a.out == nullptr || a.lse == nullptr || dout == nullptr || g.dq == nullptr || g.dk == nullptr ||
      (s.Dv > 0 && g.dv == nullptr))
    throw std::invalid_argument("spattn: dense_attention_backward needs out, lse, dout, dq, dk and dv");
  if (a.bias != nullptr) a.bias->check_against(s);
  const float scale = a.effective_scale();
  const size_t nrows = size_t(s.B) * s.Hq * s.Nq;
  std::vector<float> delta(nrows);
#pragma omp parallel for schedule(static)
  for (long long row = 0; row < (long long)nrows; ++row) {
    double acc = 0.0;
    for (int c = 0; c < s.Dv; ++c) acc += double(dout[size_t(row) * s.Dv + c]) * a.out[size_t(row) * s.Dv + c];
    delta[size_t(row)] = float(acc);
  }
  const Backward bw{a, dout, delta.data(), g, scale};
  const int nkt = ceil_div(s.Nk, kBwdTile), nqt = ceil_div(s.Nq, kBwdTile);
  std::vector<double> rel_sum(a.bias != nullptr && a.bias->rel != nullptr
                                  ? size_t(a.bias->rel_heads) * (2 * a.bias->rel_radius + 1) : 0, 0.0);
#pragma omp parallel
  {
    BwdScratch t(s.D, s.Dv);
#pragma omp for schedule(dynamic, 1)
    for (long long it = 0; it < (long long)s.B * s.Hkv * nkt; ++it) {
      const int kt = int(it % nkt), hk = int((it / nkt) % s.Hkv), b = int(it / ((long long)nkt * s.Hkv));
      bw.key_pass(t, b, hk, kt * kBwdTile, std::min(s.Nk, (kt + 1) * kBwdTile));
    }
    const bool rel = g.d_rel != nullptr && a.bias != nullptr && a.bias->rel != nullptr;
    if (rel) t.d_rel.assign(size_t(a.bias->rel_heads) * (2 * a.bias->rel_radius + 1), 0.0);
#pragma omp for schedule(dynamic, 1)
    for (int qt = 0; qt < nqt; ++qt) bw.query_pass(t, qt * kBwdTile, std::min(s.Nq, (qt + 1) * kBwdTile));
    if (rel) {
#pragma omp critical(spattn_backward_rel)
      for (size_t c = 0; c < t.d_rel.size(); ++c) rel_sum[c] += t.d_rel[c];
    }
  }
  if (g.d_rel != nullptr && a.bias != nullptr && a.bias->rel != nullptr)
    for (size_t c = 0; c < rel_sum.size(); ++c) g.d_rel[c] = float(rel_sum[c]);
}

}  // namespace spattn
