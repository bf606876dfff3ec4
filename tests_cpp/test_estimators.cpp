// Streaming and oracle top-k estimators and the shared selection helpers.
#include <numeric>

#include "spattn/estimators.hpp"
#include "spattn/kernels.hpp"
#include "spattn/selection.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

TEST(Selection, CumulativeSelectTakesSmallestPrefixReachingTarget) {
  const float s[] = {0.1f, 0.5f, 0.2f, 0.2f, 0.0f};
  EXPECT_EQ(spattn::cumulative_select(s, 5, 0.6), (std::vector<int>{1, 2}));
  EXPECT_EQ(spattn::cumulative_select(s, 5, 0.75), (std::vector<int>{1, 2, 3}));  // tie: lower index first
  EXPECT_EQ(spattn::cumulative_select(s, 5, 5.0), (std::vector<int>{1, 2, 3, 0}));  // zeros never taken
}

TEST(Selection, TopkAndJs) {
  const float s[] = {3, 1, 3, 2};
  EXPECT_EQ(spattn::topk_select(s, 4, 3), (std::vector<int>{0, 2, 3}));
  const float p[] = {0.5f, 0.5f, 0.f}, q[] = {0.f, 0.5f, 0.5f};
  EXPECT_NEAR(spattn::js_divergence(p, q, 3), 0.5 * std::log(2.0), 1e-7);
  EXPECT_NEAR(spattn::js_divergence(p, p, 3), 0.0, 1e-12);
}

TEST(Streaming, KeepsSinkAndLocalBlocks) {
  spattn::AttnShape s;
  s.Nq = 1000; s.Nk = 1000; s.D = 1;
  spattn::StreamingParams prm;
  prm.block_size = 100; prm.sink_tokens = 50; prm.local_tokens = 150;
  const auto m = spattn::estimate_streaming(s, true, prm);
  // Row block 5 (rows 500..599) sees keys [351, 599]: blocks 3, 4, 5, plus sink block 0.
  std::vector<int> got;
  for (int c = 0; c < m.nkb; ++c) if (m.blocks[5 * m.nkb + c]) got.push_back(c);
  EXPECT_EQ(got, (std::vector<int>{0, 3, 4, 5}));
}

TEST(Oracle, SelectsSmallestSetReachingGamma) {
  Problem p(1, 2, 1, 150, 150, 64, 0, true, 23);
  auto a = p.args();
  a.v = nullptr;
  spattn::OracleParams prm;
  prm.block_size = 32; prm.gamma = 0.8f;
  const auto m = spattn::estimate_oracle_topk(a, prm);
  const int nb = m.nqb;
  for (int h = 0; h < 2; ++h)
    for (int qb = 0; qb < nb; ++qb) {
      // Reference block masses of this q block, averaged over its rows.
      std::vector<double> mass(nb, 0.0);
      const int i0 = qb * 32, i1 = std::min(150, i0 + 32);
      for (int i = i0; i < i1; ++i) {
        const auto pr = spattn::reference::probabilities(a, 0, h, i);
        for (int j = 0; j < 150; ++j) mass[j / 32] += pr[j] / (i1 - i0);
      }
      double kept = 0.0;
      int count = 0;
      for (int c = 0; c < nb; ++c) {
        if (m.blocks[(size_t(h) * nb + qb) * nb + c]) { kept += mass[c]; ++count; }
      }
      EXPECT_GE(kept, 0.8 - 1e-5);
      // Minimality: dropping the smallest kept block falls below gamma.
      double smallest = 1.0;
      for (int c = 0; c < nb; ++c)
        if (m.blocks[(size_t(h) * nb + qb) * nb + c]) smallest = std::min(smallest, mass[c]);
      if (count > 1) EXPECT_LT(kept - smallest, 0.8 + 1e-5);
    }
}
