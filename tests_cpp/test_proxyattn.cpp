// ProxyAttn-like estimator (provisional rule from paper summaries; official code not read) against
// naive double loops of the written rule: proxy q = mean of each GQA group's q heads, proxy block
// sums of exact softmax probabilities, one ranking per group and row, per-head budget from the
// head's own last-query-block mass over the proxy ranking (cumulative gamma), block 0 and the
// diagonal kept; the output is attention restricted to the mask.
#include <algorithm>
#include <numeric>

#include "spattn/estimators/proxyattn.hpp"
#include "spattn/kernels.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {

// Softmax probabilities (double) of query row `qr` (length D) against keys k (L x D).
std::vector<double> probs(const double* qr, const float* k, int L, int D, int limit) {
  std::vector<double> s(L, 0.0);
  double mx = -1e300;
  for (int j = 0; j <= limit; ++j) {
    double acc = 0.0;
    for (int d = 0; d < D; ++d) acc += qr[d] * k[size_t(j) * D + d];
    s[j] = acc / std::sqrt(double(D));
    mx = std::max(mx, s[j]);
  }
  double z = 0.0;
  for (int j = 0; j <= limit; ++j) z += std::exp(s[j] - mx);
  for (int j = 0; j < L; ++j) s[j] = j <= limit ? std::exp(s[j] - mx) / z : 0.0;
  return s;
}

void naive(const Problem& p, int bs, double gamma, bool causal, std::vector<uint8_t>& mask, std::vector<int>& budgets) {
  const int L = p.s.Nq, D = p.s.D, H = p.s.Hq, Hkv = p.s.Hkv, G = p.s.group(), nb = (L + bs - 1) / bs;
  std::vector<double> W(size_t(Hkv) * nb * nb, 0.0), qr(D);
  for (int g = 0; g < Hkv; ++g) {
    const float* k = p.k.data() + size_t(g) * L * D;
    for (int i = 0; i < L; ++i) {
      std::fill(qr.begin(), qr.end(), 0.0);
      for (int m = 0; m < G; ++m)
        for (int d = 0; d < D; ++d) qr[d] += double(p.q[(size_t(g * G + m) * L + i) * D + d]) / G;
      const auto pr = probs(qr.data(), k, L, D, causal ? i : L - 1);
      for (int j = 0; j < L; ++j) W[(size_t(g) * nb + i / bs) * nb + j / bs] += pr[j];
    }
  }
  mask.assign(size_t(H) * nb * nb, 0);
  budgets.assign(H, 0);
  const int r0 = (nb - 1) * bs;
  for (int h = 0; h < H; ++h) {
    const float* k = p.k.data() + size_t(h / G) * L * D;
    std::vector<double> M(nb, 0.0);
    for (int i = r0; i < L; ++i) {
      for (int d = 0; d < D; ++d) qr[d] = p.q[(size_t(h) * L + i) * D + d];
      const auto pr = probs(qr.data(), k, L, D, causal ? i : L - 1);
      for (int j = 0; j < L; ++j) M[j / bs] += pr[j] / (L - r0);
    }
    const double* w = W.data() + size_t(h / G) * nb * nb;
    auto ranked = [&](int r, int vis) {
      std::vector<int> o(vis);
      std::iota(o.begin(), o.end(), 0);
      std::stable_sort(o.begin(), o.end(), [&](int x, int y) { return w[size_t(r) * nb + x] > w[size_t(r) * nb + y]; });
      return o;
    };
    const auto last = ranked(nb - 1, nb);
    int kh = nb;
    double cum = 0.0;
    for (int i = 0; i < nb; ++i)
      if ((cum += M[last[i]]) >= gamma) {
        kh = i + 1;
        break;
      }
    budgets[h] = kh;
    for (int r = 0; r < nb; ++r) {
      uint8_t* row = mask.data() + (size_t(h) * nb + r) * nb;
      const int vis = causal ? r + 1 : nb;
      const auto o = ranked(r, vis);
      for (int i = 0; i < std::min(kh, vis); ++i) row[o[i]] = 1;
      row[0] = row[r] = 1;
    }
  }
}

}  // namespace

TEST(ProxyAttn, MatchesNaiveWrittenRule) {
  struct Case { int Hq, Hkv, L, D, bs; float gamma; };
  for (const Case c : {Case{4, 2, 700, 32, 128, 0.9f}, Case{4, 1, 517, 48, 64, 0.5f}, Case{3, 3, 300, 32, 32, 0.95f},
                       Case{2, 1, 45, 32, 128, 0.9f}})
    for (bool causal : {true, false}) {
      Problem p(1, c.Hq, c.Hkv, c.L, c.L, c.D, 0, causal, unsigned(c.L));
      spattn::ProxyAttnParams prm;
      prm.block_size = c.bs;
      prm.gamma = c.gamma;
      std::vector<int32_t> budgets;
      const auto m = spattn::estimate_proxyattn(p.args(), prm, &budgets);
      std::vector<uint8_t> want;
      std::vector<int> want_budgets;
      naive(p, c.bs, double(c.gamma), causal, want, want_budgets);
      for (int h = 0; h < c.Hq; ++h) ASSERT_EQ(budgets[h], want_budgets[h]) << "L " << c.L << " head " << h;
      ASSERT_EQ(m.blocks.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_EQ(m.blocks[i], want[i]) << "L " << c.L << " causal " << causal << " flat block " << i;
    }
}

TEST(ProxyAttn, OutputIsAttentionRestrictedToTheMask) {
  for (bool causal : {true, false}) {
    Problem p(1, 4, 2, 333, 333, 64, 64, causal, 7);
    spattn::ProxyAttnParams prm;
    prm.block_size = 64;
    prm.gamma = 0.6f;
    const auto m = spattn::estimate_proxyattn(p.args(), prm);
    spattn::block_sparse_attention(p.args(), m.view());
    p.expect_matches_reference([&](int b, int h, int i, int j) {
      return m.blocks[((size_t(b) * m.H + h) * m.nqb + i / 64) * m.nkb + j / 64] != 0;
    });
  }
}

TEST(ProxyAttn, RejectsBadCallsAndParameters) {
  Problem chunk(1, 2, 1, 100, 300, 32, 0, true, 1);
  EXPECT_THROW(spattn::estimate_proxyattn(chunk.args(), {}), std::invalid_argument);
  spattn::ProxyAttnParams p;
  p.gamma = 0.f;
  EXPECT_THROW(p.validate(), std::invalid_argument);
  p.gamma = 1.5f;
  EXPECT_THROW(p.validate(), std::invalid_argument);
  p = {};
  p.block_size = 0;
  EXPECT_THROW(p.validate(), std::invalid_argument);
}
