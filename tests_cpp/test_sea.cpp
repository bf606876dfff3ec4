// SEA training-free estimator: compressed rows are distributions over the columns that cover
// keys; selection keeps whole prefixes while L <= k and ascending keys everywhere.
#include <random>

#include "spattn/estimators/sea.hpp"
#include "spattn/statistics.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

TEST(Sea, EstimateRowsAreDistributionsAndSelectionAscends) {
  Problem p(1, 4, 2, 200, 200, 64, 0, true, 9);
  for (auto& x : p.q) x *= 0.5f;
  for (auto& x : p.k) x *= 0.5f;
  const int m = 64, W = 16;
  std::vector<float> feats(size_t(m) * 64);
  std::mt19937 gen(2);
  std::normal_distribution<float> nd;
  for (auto& x : feats) x = nd(gen);
  spattn::SeaParams prm;
  prm.compressed_width = W;
  prm.k = 8;
  std::vector<float> est(size_t(4) * 200 * W);
  spattn::sea_estimate(p.args(), feats.data(), m, prm, est.data());
  for (int r = 0; r < 4 * 200; ++r) {
    double sum = 0;
    for (int c = 0; c < W; ++c) {
      EXPECT_GE(est[size_t(r) * W + c], 0.f);
      sum += est[size_t(r) * W + c];
    }
    EXPECT_NEAR(sum, 1.0, 1e-4) << "row " << r;
  }
  int kmax = 0;
  const auto idx = spattn::sea_select(est.data(), p.s, true, prm, &kmax);
  for (int h = 0; h < 4; ++h)
    for (int i = 0; i < 200; ++i) {
      const int32_t* row = idx.data() + (size_t(h) * 200 + i) * kmax;
      int last = -1, n = 0;
      for (int c = 0; c < kmax; ++c) {
        if (row[c] < 0) continue;
        EXPECT_GT(row[c], last);
        EXPECT_LE(row[c], i);  // causal prefix
        last = row[c];
        ++n;
      }
      if (i + 1 <= prm.k) EXPECT_EQ(n, i + 1);  // dense while the prefix is short
    }
}
