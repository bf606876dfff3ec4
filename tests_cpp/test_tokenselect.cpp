// TokenSelect selection against a naive double loop of the official rule (pzs19/TokenSelect
// get_topk_tokens / retrieval_indices): unscaled per-head softmax over the candidates
// [n_init, N - n_local), summed over the heads, top_k, plus sinks and local keys; dense while
// n_init + top_k + n_local >= N. K/V read as the prefix of a larger buffer (kv_capacity).
#include <algorithm>
#include <numeric>

#include "spattn/estimators/tokenselect.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

TEST(TokenSelect, MatchesNaiveOfficialRule) {
  const int Hq = 4, Hkv = 2, N = 600, cap = 700, D = 64;
  Problem p(1, Hq, Hkv, 1, cap, D, D, true, 11);
  spattn::AttnArgs a = p.args();
  a.shape.kv_capacity = cap;
  a.shape.Nk = N;
  spattn::TokenSelectParams prm;
  prm.n_init = 5;
  prm.n_local = 20;
  prm.top_k = 50;
  int K = 0;
  const auto idx = spattn::estimate_tokenselect(a, prm, &K);
  ASSERT_EQ(K, 75);
  std::vector<double> vote(N - 25, 0.0);
  for (int h = 0; h < Hq; ++h) {
    std::vector<double> s(vote.size());
    double mx = -1e300, z = 0.0;
    for (size_t t = 0; t < s.size(); ++t) {
      double dot = 0.0;
      for (int d = 0; d < D; ++d) dot += double(p.q[size_t(h) * D + d]) * p.k[(size_t(h / 2) * cap + 5 + t) * D + d];
      s[t] = dot;
      mx = std::max(mx, dot);
    }
    for (double& x : s) z += (x = std::exp(x - mx));
    for (size_t t = 0; t < s.size(); ++t) vote[t] += s[t] / z;
  }
  std::vector<int> order(vote.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return vote[size_t(x)] > vote[size_t(y)]; });
  std::vector<int> want;
  for (int j = 0; j < 5; ++j) want.push_back(j);
  std::vector<int> top(order.begin(), order.begin() + 50);
  std::sort(top.begin(), top.end());
  for (int t : top) want.push_back(5 + t);
  for (int j = N - 20; j < N; ++j) want.push_back(j);
  for (int h = 0; h < Hq; ++h)
    for (int c = 0; c < K; ++c) EXPECT_EQ(idx[size_t(h) * K + c], want[size_t(c)]) << "head " << h << " slot " << c;
  prm.top_k = N - 25;  // n_init + top_k + n_local >= N: every key
  const auto all = spattn::estimate_tokenselect(a, prm, &K);
  ASSERT_EQ(K, N);
  for (int c = 0; c < N; ++c) EXPECT_EQ(all[size_t(c)], c);
}
