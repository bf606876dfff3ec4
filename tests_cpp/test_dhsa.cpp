// DHSA estimator against naive double loops of the official legacy steps (xiongsiheng/DHSA,
// legacy/utils/helper.py: _obtain_dhsa_mask as dhsa_sdpa calls it, then its global-token splice):
// head-mean block / chunk representations (avgpool_norm), token scores by chunk, recent keys, the
// top-scoring other allowed keys (ties to the lower position), N - 1 padding, sorted, the first
// global_tokens slots replaced by min(t, q_upper - 1); compared as sets.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "spattn/estimators/dhsa.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {

std::set<int> naive_block(const Problem& p, const std::vector<int>& bnd, const spattn::DhsaParams& prm, int qb) {
  const int N = p.s.Nq, D = p.s.D, bs = prm.block_size, C = int(bnd.size()) - 1;
  const int q_len = std::max(0, N - prm.instruction_tokens), T = std::min(prm.token_budget, N);
  std::vector<double> rq(D, 0.0);
  const int i0 = qb * bs, i1 = std::min(q_len, i0 + bs);
  for (int h = 0; h < p.s.Hq; ++h)
    for (int i = i0; i < i1; ++i)
      for (int d = 0; d < D; ++d) rq[d] += p.q[(size_t(h) * N + i) * D + d] / p.s.Hq;
  for (double& x : rq) x = x / bs * (prm.length_norm ? std::sqrt(double(i1 - i0)) : 1.0);
  std::vector<double> score(N);
  for (int c = 0; c < C; ++c) {
    std::vector<double> rc(D, 0.0);
    for (int h = 0; h < p.s.Hkv; ++h)
      for (int j = bnd[c]; j < bnd[c + 1]; ++j)
        for (int d = 0; d < D; ++d) rc[d] += p.k[(size_t(h) * N + j) * D + d] / p.s.Hkv;
    const double len = std::max(1, bnd[c + 1] - bnd[c]);
    double s = 0.0;
    for (int d = 0; d < D; ++d) s += rq[d] * rc[d] / len * (prm.length_norm ? std::sqrt(len) : 1.0);
    for (int j = bnd[c]; j < bnd[c + 1]; ++j) score[j] = s;
  }
  const int n_allowed = std::min(N, (qb + 1) * bs), recent = std::min({prm.local_tokens, T, n_allowed});
  std::vector<int> cand(n_allowed - recent);
  std::iota(cand.begin(), cand.end(), 0);
  std::stable_sort(cand.begin(), cand.end(), [&](int x, int y) { return score[x] > score[y]; });
  const int k_sel = std::min(T - recent, int(cand.size()));
  std::vector<int> list(cand.begin(), cand.begin() + std::max(0, k_sel));
  for (int j = n_allowed - recent; j < n_allowed; ++j) list.push_back(j);
  for (int t = std::max(0, k_sel); t < T - recent; ++t) list.push_back(N - 1);
  std::sort(list.begin(), list.end());
  if (prm.global_tokens > 0) {
    const int q_upper = std::min(qb * bs + bs, N);
    std::vector<int> out;
    for (int t = 0; t < std::min(prm.global_tokens, T); ++t) out.push_back(std::min(t, std::max(q_upper - 1, 0)));
    for (int t = prm.global_tokens; t < int(list.size()); ++t) out.push_back(list[t]);
    list = out;
  }
  return std::set<int>(list.begin(), list.end());
}

void check(int Hq, int Hkv, int N, int D, spattn::DhsaParams prm, const std::vector<int>* given) {
  Problem p(1, Hq, Hkv, N, N, D, D, true, unsigned(N));
  std::vector<int> bnd;
  if (given) {
    bnd = *given;
  } else {
    for (int c = 0; c < N; c += prm.chunk_size) bnd.push_back(c);
    bnd.push_back(N);
  }
  std::vector<int32_t> b32(bnd.begin(), bnd.end());
  const auto e = spattn::estimate_dhsa(p.args(), prm, given ? b32.data() : nullptr, int(bnd.size()) - 1);
  ASSERT_EQ(e.q_len, std::max(0, N - prm.instruction_tokens));
  ASSERT_EQ(e.blocks, (e.q_len + prm.block_size - 1) / prm.block_size);
  for (int qb = 0; qb < e.blocks; ++qb) {
    const int32_t* row = e.indices.data() + size_t(qb) * e.K;
    std::vector<int> got;
    for (int c = 0; c < e.K; ++c)
      if (row[c] >= 0) got.push_back(row[c]);
    const std::set<int> want = naive_block(p, bnd, prm, qb);
    EXPECT_EQ(got, std::vector<int>(want.begin(), want.end())) << "block " << qb;
  }
}

}  // namespace

TEST(Dhsa, FixedChunksGqaOddLength) {
  spattn::DhsaParams prm;
  prm.block_size = 32; prm.chunk_size = 8; prm.token_budget = 96; prm.local_tokens = 16; prm.global_tokens = 16;
  prm.instruction_tokens = 20;
  check(4, 2, 301, 64, prm, nullptr);
}

TEST(Dhsa, GivenBoundariesAvgpoolD80) {
  spattn::DhsaParams prm;
  prm.block_size = 16; prm.token_budget = 40; prm.local_tokens = 8; prm.global_tokens = 0;
  prm.instruction_tokens = 0; prm.length_norm = false;
  const std::vector<int> bnd{0, 3, 17, 17, 40, 41, 90, 120, 150};
  check(2, 1, 150, 80, prm, &bnd);
}

TEST(Dhsa, DefaultsD128) { check(2, 2, 200, 128, spattn::DhsaParams{}, nullptr); }

TEST(Dhsa, RejectsBadBoundariesAndShapes) {
  Problem p(1, 2, 1, 16, 16, 64, 64, true);
  spattn::DhsaParams prm;
  const std::vector<int32_t> bad{0, 9, 8, 16};
  EXPECT_THROW(spattn::estimate_dhsa(p.args(), prm, bad.data(), 3), std::invalid_argument);
  const std::vector<int32_t> short_end{0, 8, 15};
  EXPECT_THROW(spattn::estimate_dhsa(p.args(), prm, short_end.data(), 2), std::invalid_argument);
  Problem nc(1, 2, 1, 16, 16, 64, 64, false);
  EXPECT_THROW(spattn::estimate_dhsa(nc.args(), prm, nullptr, 0), std::invalid_argument);
  prm.token_budget = 0;
  EXPECT_THROW(prm.validate(), std::invalid_argument);
}
