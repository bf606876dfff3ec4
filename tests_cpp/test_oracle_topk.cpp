// Oracle top-k estimator against the double reference.
#include "spattn/estimators/oracle_topk.hpp"
#include "spattn/reference.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

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
