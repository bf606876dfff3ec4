// SEA: the training-free estimate's rows are distributions over the columns that cover keys;
// the official selection keeps whole prefixes while L <= k (budget >= H W), ascending keys
// everywhere, and at a long prefix budget x column-size keys (accuracy path) or at most k spread
// keys per kept column (speed path); the grids follow the official formulas at exact ties.
#include <cmath>
#include <random>

#include "spattn/estimators/sea.hpp"
#include "spattn/estimators/sea_grid.hpp"
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
  for (bool speed : {false, true}) {
    int kmax = 0;
    const auto idx = spattn::sea_select(est.data(), p.s, true, prm, speed, &kmax);
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
}

TEST(Sea, GridsFollowTheOfficialFormulasAtTies) {
  // Speed grid (scan_col): round half up; L = 10, W = 4 has ties at 2.5 and 7.5.
  EXPECT_EQ(spattn::sea_speed_start(1, 10, 4), 3);
  EXPECT_EQ(spattn::sea_speed_start(3, 10, 4), 8);
  EXPECT_EQ(spattn::sea_speed_start(4, 10, 4), 10);
  // Accuracy grid (resize_from_m_to_t): key j in column floor((j + 0.5) / L W - 1e-4), float32
  // one operation at a time as torch runs it; L = 10001 has keys exactly at the 1e-4 offset.
  for (int L : {1, 5, 10, 127, 1000, 10001, 10003, 16384})
    for (int W : {4, 8, 128}) {
      int c = 0;
      for (int j = 0; j < L; ++j) {
        volatile float x = float(j) + 0.5f;
        x = x / float(L);
        x = x * float(W);
        x = x - 1e-4f;
        const int col = int(std::floor(x));
        while (c < W && spattn::sea_accuracy_start(c + 1, L, W) <= j) ++c;
        ASSERT_EQ(col, c) << "L " << L << " W " << W << " j " << j;
      }
    }
}

TEST(Sea, LongPrefixBudgetAndExpansion) {
  // N 16384, W 128, k 64, H 4: the last query keeps round(4 * 64 * 128 / 16384) = 2 columns.
  spattn::AttnShape s;
  s.B = 1; s.Hq = 4; s.Hkv = 4; s.Nq = 1; s.Nk = 16384; s.D = 1;
  spattn::SeaParams prm;
  prm.k = 64;
  prm.compressed_width = 128;
  std::vector<float> est(size_t(4) * 128, 0.f);
  est[size_t(1) * 128 + 5] = 0.9f;   // head 1, column 5
  est[size_t(3) * 128 + 70] = 0.8f;  // head 3, column 70
  for (bool speed : {false, true}) {
    int kmax = 0;
    const auto idx = spattn::sea_select(est.data(), s, true, prm, speed, &kmax);
    ASSERT_EQ(kmax, speed ? 64 : 128);
    const int32_t* r1 = idx.data() + size_t(1) * kmax;
    const int32_t* r3 = idx.data() + size_t(3) * kmax;
    EXPECT_LT(idx[0], 0);
    EXPECT_LT(idx[size_t(2) * kmax], 0);
    for (int t = 0; t < kmax; ++t) {
      EXPECT_EQ(r1[t], speed ? 5 * 128 + 1 + 2 * t : 5 * 128 + t);  // speed: v_end - 1 - 2 i, ascending
      EXPECT_EQ(r3[t], speed ? 70 * 128 + 1 + 2 * t : 70 * 128 + t);
    }
  }
}
