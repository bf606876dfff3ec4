// TokenSelect selection (see the header for the official behaviour it follows). The per-head
// softmax over the candidates is the exact vertical-sums statistics pass (one query row per head,
// causal limit past every candidate) on a view of the candidate rows of K, with scale 1 (the
// official criticality is unscaled); the votes are its column sums added over the heads.
#include "spattn/estimators/tokenselect.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "spattn/selection.hpp"
#include "spattn/statistics.hpp"

namespace spattn {

void TokenSelectParams::validate() const {
  require_min("tokenselect", "n_init", n_init, 0);
  require_min("tokenselect", "n_local", n_local, 0);
  require_min("tokenselect", "top_k", top_k, 1);
  require_min("tokenselect", "kernel_size", kernel_size, 0);
  require_min("tokenselect", "dense_layers", dense_layers, 0);
}

std::vector<int32_t> estimate_tokenselect(const AttnArgs& a, const TokenSelectParams& p, int* K) {
  const AttnShape& s = a.shape;
  s.validate();
  p.validate();
  if (s.Nq != 1)
    throw std::invalid_argument("tokenselect: decode selection needs Nq == 1, got Nq=" + std::to_string(s.Nq));
  const int N = s.Nk;
  const long long heads = (long long)s.B * s.Hq;
  std::vector<int32_t> keys;  // per batch, shared by the heads
  std::vector<int32_t> out;
  if ((long long)p.n_init + p.top_k + p.n_local >= N) {  // official: attend to everything
    *K = N;
    out.resize(size_t(heads) * N);
    for (long long bh = 0; bh < heads; ++bh) std::iota(out.begin() + bh * N, out.begin() + (bh + 1) * N, 0);
    return out;
  }
  const int c0 = p.n_init, nc = N - p.n_local - p.n_init;  // candidates [n_init, N - n_local), nc > top_k
  // Query heads reordered so that the grouped mapping pairs each with its kv head (interleaved option).
  std::vector<float> qperm;
  AttnArgs c = a;
  if (p.gqa_interleave && s.group() > 1) {
    qperm.resize(size_t(heads) * s.D);
    const int G = s.group();
    for (int b = 0; b < s.B; ++b)
      for (int h = 0; h < s.Hq; ++h) {
        const int slot = (h % s.Hkv) * G + h / s.Hkv;  // a slot of kv head h % Hkv
        std::copy_n(a.q + s.q_index(b, h, 0), s.D, qperm.data() + (size_t(b) * s.Hq + slot) * s.D);
      }
    c.q = qperm.data();
  }
  c.k = a.k + size_t(c0) * s.D;  // rows [n_init, n_init + nc) of every kv head
  c.shape.Nk = nc;
  c.shape.kv_capacity = s.kv_rows();
  c.scale = 1.f;
  c.causal = true;  // one query row: its causal limit lies past every candidate
  c.lse = nullptr;
  std::vector<float> vert(size_t(heads) * nc), slash(vert.size());
  vertical_slash_sums(c, vert.data(), slash.data());
  const int pad = p.kernel_size > 0 ? (p.kernel_size - 1) / 2 : 0;
  const int nscore = p.kernel_size > 0 ? nc + 2 * pad - p.kernel_size + 1 : nc;
  const int take = std::min(p.top_k, nscore);
  *K = p.n_init + take + p.n_local;
  out.assign(size_t(heads) * *K, -1);
  std::vector<float> vote(static_cast<size_t>(nc)), score(static_cast<size_t>(std::max(nscore, 0)));
  for (int b = 0; b < s.B; ++b) {
    std::fill(vote.begin(), vote.end(), 0.f);
    for (int h = 0; h < s.Hq; ++h) {
      const float* v = vert.data() + (size_t(b) * s.Hq + h) * nc;
      for (int t = 0; t < nc; ++t) vote[size_t(t)] += v[t];
    }
    if (p.kernel_size > 0) {  // torch max_pool1d(k, stride 1, padding pad): window [i - pad, i - pad + k)
      for (int i = 0; i < nscore; ++i) {
        float m = -std::numeric_limits<float>::infinity();
        for (int t = std::max(0, i - pad); t < std::min(nc, i - pad + p.kernel_size); ++t) m = std::max(m, vote[size_t(t)]);
        score[size_t(i)] = m;
      }
    } else {
      score = vote;
    }
    for (float& x : score)
      if (std::isnan(x)) x = -std::numeric_limits<float>::infinity();
    std::vector<int> top = topk_select(score.data(), nscore, take);
    std::sort(top.begin(), top.end());
    keys.clear();
    for (int j = 0; j < p.n_init; ++j) keys.push_back(j);
    for (int t : top) keys.push_back(c0 + t);
    for (int j = N - p.n_local; j < N; ++j) keys.push_back(j);
    for (int h = 0; h < s.Hq; ++h) std::copy(keys.begin(), keys.end(), out.begin() + (size_t(b) * s.Hq + h) * *K);
  }
  return out;
}

}  // namespace spattn
