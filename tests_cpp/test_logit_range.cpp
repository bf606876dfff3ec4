// Logits near the float32 limit: the statistics passes stay exact (both passes form the same
// logits) and a logit beyond float32 throws std::invalid_argument instead of giving NaN.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "spattn/kernels.hpp"
#include "spattn/statistics.hpp"
#include "test_helpers.hpp"

using namespace spattn;
using spattn::testing::Problem;

// scale 1e30 on unit-size q, k: logits near 1e31, one ulp is 1e24. Every row's probabilities must
// still sum to 1 (they came out inf or 0 when the lse pass formed the logits along another path).
TEST(LogitRange, BlockMapRowsSumToOneAtScale1e30) {
  for (int block_q : {1, 8, 64}) {
    Problem p(1, 4, 2, 70, 90, 16, 0, /*causal=*/true, 7);
    AttnArgs a = p.args();
    a.v = nullptr; a.out = nullptr; a.shape.Dv = 0;
    a.scale = 1e30f;
    const int nqb = ceil_div(70, block_q), nkb = ceil_div(90, 16);
    std::vector<float> map(size_t(4) * nqb * nkb);
    block_attention_map(a, block_q, 16, BlockPool::Sum, map.data());
    for (int h = 0; h < 4; ++h)
      for (int qb = 0; qb < nqb; ++qb) {
        double total = 0.0;
        for (int c = 0; c < nkb; ++c) total += map[(size_t(h) * nqb + qb) * nkb + c];
        const int rows = std::min(70, (qb + 1) * block_q) - qb * block_q;
        EXPECT_NEAR(total, rows, 1e-4 * rows) << "block_q " << block_q << " head " << h << " q block " << qb;
      }
  }
}

TEST(LogitRange, TokenMassOfAllKeysIsOneAtScale1e30) {
  for (int group : {1, 5, 40}) {
    Problem p(1, 2, 1, 40, 40, 16, 0, /*causal=*/false, 3);
    AttnArgs a = p.args();
    a.v = nullptr; a.out = nullptr; a.shape.Dv = 0;
    a.scale = 1e30f;
    const int G = ceil_div(40, group);
    std::vector<int32_t> idx(size_t(2) * G * 40);
    for (size_t t = 0; t < idx.size(); ++t) idx[t] = int32_t(t % 40);
    const TokenIndicesView iv{idx.data(), 1, 2, G, 40, group, 40};
    std::vector<float> mass(2 * 40);
    token_attention_mass(a, iv, mass.data());
    for (float m : mass) EXPECT_NEAR(m, 1.0, 1e-5) << "group " << group;
  }
}

TEST(LogitRange, LogitsBeyondFloat32Throw) {
  Problem p(1, 1, 1, 3, 5, 8, 8, false);
  for (float sign : {1.f, -1.f}) {  // logits +8e38 (NaN sums) and -8e38 (all -inf: NaN sums too)
    std::fill(p.q.begin(), p.q.end(), 1.f);
    std::fill(p.k.begin(), p.k.end(), sign);
    AttnArgs a = p.args();
    a.scale = 1e38f;
    dense_attention(a);
    EXPECT_THROW(check_logits_in_range(a, p.lse.data()), std::invalid_argument);
    a.v = nullptr; a.out = nullptr; a.shape.Dv = 0;
    std::vector<float> map(2 * 3);
    EXPECT_THROW(block_attention_map(a, 2, 2, BlockPool::Sum, map.data()), std::invalid_argument);
  }
  // NaN inputs keep the NaN contract: no error
  std::fill(p.k.begin(), p.k.end(), 1.f);
  p.q[0] = std::nanf("");
  AttnArgs a = p.args();
  dense_attention(a);
  EXPECT_TRUE(std::isnan(p.lse[0]));
  EXPECT_NO_THROW(check_logits_in_range(a, p.lse.data()));
}
