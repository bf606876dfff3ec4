// TokenSelect selection (see the header for the official behaviour it follows). The per-head
// criticality q_h . k_t over the candidates is the SIMD decode product (decode_scores, unscaled as
// official, K read once per GQA group), then a softmax per head; the votes add them over the heads.
#include "spattn/estimators/tokenselect.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "spattn/selection.hpp"
#include "../simd/simd.hpp"

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
  // Scores of the candidate rows [n_init, n_init + nc) of every kv head: one decode product per
  // GQA group (K read once), then a softmax per head, summed over the heads below.
  AttnShape cs = s;
  cs.Nk = nc;
  cs.kv_capacity = s.kv_rows();
  std::vector<float> vert(size_t(heads) * nc);
  decode_scores(c.q, a.k + size_t(c0) * s.D, cs, 1.f, vert.data());
  const simd::Kernels& kern = simd::kernels();
#pragma omp parallel for schedule(static)
  for (long long bh = 0; bh < heads; ++bh) {
    float* x = vert.data() + size_t(bh) * nc;
    const float mx = kern.max(x, nc);
    if (std::isnan(mx) || mx == std::numeric_limits<float>::infinity()) {  // as torch.softmax: NaN row
      std::fill(x, x + nc, std::numeric_limits<float>::quiet_NaN());
      continue;
    }
    const float inv = 1.f / kern.exp_shift_sum(x, nc, mx);
    for (int t = 0; t < nc; ++t) x[t] *= inv;
  }
  const int pad = p.kernel_size > 0 ? (p.kernel_size - 1) / 2 : 0;
  const int nscore = p.kernel_size > 0 ? nc + 2 * pad - p.kernel_size + 1 : nc;
  const int take = std::min(p.top_k, nscore);
  std::vector<std::vector<int32_t>> per_batch(static_cast<size_t>(s.B));
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
    std::vector<int> top = select_top(score.data(), nscore, take, p.statistical_topk);
    keys.clear();
    for (int j = 0; j < p.n_init; ++j) keys.push_back(j);
    for (int t : top) keys.push_back(c0 + t);
    for (int j = N - p.n_local; j < N; ++j) keys.push_back(j);
    per_batch[size_t(b)] = keys;
  }
  int width = 0;  // n_init + take + n_local, or the widest statistical selection
  for (const auto& kb : per_batch) width = std::max(width, int(kb.size()));
  *K = width;
  out.assign(size_t(heads) * width, -1);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.Hq; ++h)
      std::copy(per_batch[size_t(b)].begin(), per_batch[size_t(b)].end(), out.begin() + (size_t(b) * s.Hq + h) * width);
  return out;
}

}  // namespace spattn
