// SeerAttention's prefill AttnGate forward (Gao et al., "SeerAttention: Learning Intrinsic
// Sparse Attention in Your LLMs", 2024; microsoft/SeerAttention, prefill_sparse): block pooling
// (ceil mode, partial block over its real rows), per-head projection without bias, rotate-half
// RoPE at block starts, scores / sqrt(hidden), causal block mask, softmax per row.
// The RoPE frequencies come from rope_theta or, when given, from SeerGate::inv_freq (the Python
// side computes llama3-scaled ones from a model config, as the official block rotary embedding).
// Deviations: float32 where the official code runs bf16.
#include "spattn/learned/seer_gate.hpp"

#include <cmath>
#include <limits>

#include <Eigen/Core>

#include "spattn/masks.hpp"

namespace spattn {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat>;

// Pool rows of one head with each kind, channels concatenated -> (nb x kinds*d).
RowMat pool_concat(const float* x, int n, int d, int bs, const std::vector<PoolKind>& kinds) {
  const int nb = ceil_div(n, bs);
  RowMat out(nb, int(kinds.size()) * d);
  for (size_t t = 0; t < kinds.size(); ++t) pool_rows(x, n, d, bs, kinds[t], out.data() + t * d, out.cols());
  return out;
}

// Rotate-half RoPE in place on rows of x (nb x hd), row i at position i * bs. Without inv_freq
// all hd channels rotate with theta^(-2f/hd); with it, the first 2 * n_freq channels rotate with
// inv_freq[f] (pairs f, f + n_freq) and the others pass unchanged.
void rope_blocks(RowMat& x, int bs, float theta, const float* inv_freq, int n_freq) {
  const int hd = int(x.cols()), half = inv_freq ? n_freq : hd / 2;
  for (int i = 0; i < x.rows(); ++i) {
    float* row = x.data() + size_t(i) * hd;
    for (int f = 0; f < half; ++f) {
      const double inv = inv_freq ? double(inv_freq[f]) : std::pow(double(theta), -2.0 * f / hd);
      const double ang = double(i) * bs * inv;
      const float c = float(std::cos(ang)), s = float(std::sin(ang));
      const float a = row[f], b = row[f + half];
      row[f] = a * c - b * s;
      row[f + half] = b * c + a * s;
    }
  }
}

}  // namespace

void seer_gate_scores(const AttnArgs& a, const SeerGate& g, int bs, float* scores) {
  const AttnShape& s = a.shape;
  s.validate();
  if (s.Nq != s.Nk) throw std::invalid_argument("seerattention: the prefill gate needs Nq == Nk");
  if (bs < 1) throw std::invalid_argument("seerattention: block_size must be >= 1");
  if (g.q_pool.empty() || g.k_pool.empty()) throw std::invalid_argument("seerattention: empty pooling list");
  if (g.wk == nullptr || (g.wk_heads != s.Hq && g.wk_heads != s.Hkv))
    throw std::invalid_argument("seerattention: wk must have Hq or Hkv heads");
  if (g.wq == nullptr && (g.q_pool.size() != 1 || g.hidden != s.D))
    throw std::invalid_argument("seerattention: identity q projection needs one q pooling and hidden == D");
  if (g.inv_freq && (g.n_freq < 1 || 2 * g.n_freq > g.hidden))
    throw std::invalid_argument("seerattention: inv_freq must hold 1 .. hidden / 2 frequencies");
  if (g.rope_theta > 0.f && !g.inv_freq && g.hidden % 2 != 0)
    throw std::invalid_argument("seerattention: RoPE needs an even gate hidden size");
  const int nb = ceil_div(s.Nq, bs), D = s.D, H = g.hidden;
  const int cq = int(g.q_pool.size()) * D, ck = int(g.k_pool.size()) * D;
  const float inv_sqrt = 1.f / std::sqrt(float(H));
  const float ninf = -std::numeric_limits<float>::infinity();

#pragma omp parallel for schedule(dynamic, 1)
  for (long long t = 0; t < (long long)s.B * s.Hq; ++t) {
    const int b = int(t / s.Hq), h = int(t % s.Hq), hk = h / s.group();
    RowMat qp = pool_concat(a.q + s.q_index(b, h, 0), s.Nq, D, bs, g.q_pool);
    RowMat kp = pool_concat(a.k + s.k_index(b, hk, 0), s.Nk, D, bs, g.k_pool);
    RowMat qg = g.wq ? RowMat(qp * CMap(g.wq + size_t(h) * cq * H, cq, H)) : qp;
    const int wh = g.wk_heads == s.Hq ? h : hk;
    RowMat kg = kp * CMap(g.wk + size_t(wh) * ck * H, ck, H);
    if (g.rope_theta > 0.f) {
      rope_blocks(qg, bs, g.rope_theta, g.inv_freq, g.n_freq);
      rope_blocks(kg, bs, g.rope_theta, g.inv_freq, g.n_freq);
    }
    Eigen::Map<RowMat> S(scores + size_t(t) * nb * nb, nb, nb);
    S.noalias() = qg * kg.transpose() * inv_sqrt;
    for (int r = 0; r < nb; ++r) {
      float* row = S.data() + size_t(r) * nb;
      for (int c = r + 1; c < nb; ++c) row[c] = ninf;
      softmax_inplace(row, nb);
    }
  }
}

}  // namespace spattn
