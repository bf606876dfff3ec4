// FlexPrefill estimator: fallbacks, forced blocks, pattern switching, budget clamps, errors.
// (The block-exact comparison with a slow re-implementation is in tests_py/test_flexprefill.py.)
#include "spattn/estimators/flexprefill.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {
spattn::FlexPrefillParams small_params() {
  spattn::FlexPrefillParams p;
  p.block_size = 64;
  p.min_budget = 64;
  return p;
}
}  // namespace

TEST(FlexPrefill, ShortInputsAndDecodeFallBackToDense) {
  Problem p(1, 2, 1, 128, 128, 64, 0, true);  // N <= 2 * block
  spattn::FlexPrefillInfo info;
  auto m = spattn::estimate_flexprefill(p.args(), small_params(), &info);
  for (auto x : m.blocks) EXPECT_EQ(x, 1);
  EXPECT_EQ(info.pattern[0], int8_t(spattn::FlexPattern::Dense));
  Problem d(1, 2, 1, 1, 1000, 64, 0, true);
  m = spattn::estimate_flexprefill(d.args(), small_params(), &info);
  for (auto x : m.blocks) EXPECT_EQ(x, 1);
}

TEST(FlexPrefill, DiffuseHeadIsQueryAwareStructuredHeadIsVerticalSlash) {
  // Head 0: tiny queries -> near-uniform attention, pooled estimate is faithful.
  // Head 1: every query aligned with a few planted keys -> vertical stripes the pooled
  // estimate cannot see.
  Problem p(1, 2, 1, 1000, 1000, 64, 0, true, 3);
  std::vector<float> u(64, 0.f);
  u[0] = 12.f;
  for (int j : {100, 333, 777}) for (int c = 0; c < 64; ++c) p.k[j * 64 + c] = u[c];
  for (int i = 0; i < 1000; ++i)
    for (int c = 0; c < 64; ++c) {
      p.q[i * 64 + c] *= 0.05f;
      p.q[(1000 + i) * 64 + c] = u[c] + 0.1f * p.q[(1000 + i) * 64 + c];
    }
  spattn::FlexPrefillInfo info;
  auto prm = small_params();
  // Budgets are count // 128 + 1 blocks (official), so three planted tokens get 1 block, which the
  // forced block 0 takes: a min budget of 4 blocks leaves room for the three planted blocks.
  prm.min_budget = 4 * 64;
  auto m = spattn::estimate_flexprefill(p.args(), prm, &info);
  EXPECT_EQ(info.pattern[0], int8_t(spattn::FlexPattern::QueryAware));
  EXPECT_LT(info.js[0], 0.1f);
  EXPECT_EQ(info.pattern[1], int8_t(spattn::FlexPattern::VerticalSlash));
  EXPECT_GT(info.js[1], 0.1f);
  // The structured head keeps the key blocks holding the planted keys for every later row.
  const int nb = m.nqb;
  for (int c : {100 / 64, 333 / 64, 777 / 64})
    for (int r = c; r < nb; ++r) EXPECT_EQ(m.blocks[(size_t(nb) + r) * nb + c], 1) << r << "," << c;
}

TEST(FlexPrefill, KeepsFirstColumnDiagonalAndNothingAboveIt) {
  Problem p(2, 4, 2, 700, 700, 64, 0, true, 5);
  spattn::FlexPrefillInfo info;
  auto m = spattn::estimate_flexprefill(p.args(), small_params(), &info);
  const int nb = m.nqb;
  for (int h = 0; h < 8; ++h)
    for (int r = 0; r < nb; ++r) {
      const uint8_t* row = m.blocks.data() + (size_t(h) * nb + r) * nb;
      EXPECT_EQ(row[0], 1);
      EXPECT_EQ(row[r], 1);
      for (int c = r + 1; c < nb; ++c) EXPECT_EQ(row[c], 0);
    }
}

TEST(FlexPrefill, BudgetsClampedToMinAndMax) {
  Problem p(1, 2, 1, 2000, 2000, 64, 0, true, 7);
  auto prm = small_params();
  prm.gamma = 1.0f;
  prm.tau = 0.f;
  prm.min_budget = 3 * 64;
  prm.max_budget = 5 * 64;
  spattn::FlexPrefillInfo info;
  spattn::estimate_flexprefill(p.args(), prm, &info);
  for (int h = 0; h < 2; ++h) {
    EXPECT_GE(info.n_vertical[h], 3);
    EXPECT_LE(info.n_vertical[h], 5);
    EXPECT_GE(info.n_slash[h], 3);
    EXPECT_LE(info.n_slash[h], 5);
  }
}

TEST(FlexPrefill, RejectsNonCausalAndMismatchedLengths) {
  Problem p(1, 2, 1, 500, 500, 64, 0, false);
  EXPECT_THROW(spattn::estimate_flexprefill(p.args(), small_params(), nullptr), std::invalid_argument);
  Problem r(1, 2, 1, 100, 500, 64, 0, true);
  EXPECT_THROW(spattn::estimate_flexprefill(r.args(), small_params(), nullptr), std::invalid_argument);
}
