// The shared selection helpers (cumulative and top-k selection, Jensen-Shannon divergence).
#include <numeric>

#include "spattn/selection.hpp"
#include "test_helpers.hpp"

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

