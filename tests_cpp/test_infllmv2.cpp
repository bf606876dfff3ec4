// InfLLM-V2 and NOSA estimators: pooled keys against a naive loop, the dense path, the forced
// (init + local, <= rule) blocks and the shape of the selection; the selection itself is checked
// against the official references in tests_py/test_infllmv2.py and tests_py/test_nosa.py.
#include <gtest/gtest.h>

#include <set>
#include <stdexcept>

#include "spattn/estimators/infllmv2.hpp"
#include "spattn/estimators/nosa.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

TEST(InfLLMv2, MeanPooledKeysAreWindowMeans) {
  Problem p(1, 2, 2, 5, 100, 16, 16, true);
  int C = 0;
  const std::vector<float> k1 = spattn::mean_pooled_keys(p.args(), 32, 16, &C);
  ASSERT_EQ(C, (100 - 32) / 16 + 1);
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < C; ++j)
      for (int d = 0; d < 16; ++d) {
        double m = 0;
        for (int r = 0; r < 32; ++r) m += p.k[(size_t(h) * 100 + 16 * j + r) * 16 + d];
        EXPECT_NEAR(k1[(size_t(h) * C + j) * 16 + d], m / 32, 1e-5);
      }
  spattn::mean_pooled_keys(p.args(), 101, 16, &C);
  EXPECT_EQ(C, 0);
}

TEST(InfLLMv2, DensePathListsEveryBlockUpToTheQuery) {
  Problem p(1, 4, 2, 50, 130, 64, 64, true);
  spattn::InfLLMv2Params prm;  // dense_len 8192 > 130
  int K = 0;
  const auto idx = spattn::estimate_infllmv2(p.args(), prm, &K);
  ASSERT_EQ(K, 3);
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 50; ++i) {
      const int qb = (i + 80) / 64;
      for (int c = 0; c < K; ++c) EXPECT_EQ(idx[(size_t(h) * 50 + i) * K + c], c <= qb ? c : -1);
    }
}

TEST(InfLLMv2, SparseRowsHoldTheForcedBlocksAscending) {
  Problem p(2, 4, 2, 211, 211, 64, 64, true, 3);
  spattn::InfLLMv2Params prm;
  prm.kernel_size = 8;
  prm.kernel_stride = 4;
  prm.block_size = 16;
  prm.window_size = 32;  // local_blocks 2
  prm.topk = 3;
  prm.dense_len = 0;
  int K = 0;
  const auto idx = spattn::estimate_infllmv2(p.args(), prm, &K);
  ASSERT_EQ(K, 5);
  for (size_t row = 0; row < size_t(2) * 2 * 211; ++row) {
    const int qb = int(row % 211) / 16;
    std::set<int> got;
    int last = -1;
    for (int c = 0; c < K; ++c) {
      const int b = idx[row * K + c];
      if (b < 0) continue;
      EXPECT_GT(b, last);
      EXPECT_LE(b, qb);
      last = b;
      got.insert(b);
    }
    for (int b = std::max(0, qb - 2); b <= qb; ++b) EXPECT_TRUE(got.count(b)) << "row " << row << " block " << b;
    EXPECT_TRUE(got.count(0));
    EXPECT_EQ(int(got.size()), std::min(K, qb + 1));
  }
}

TEST(InfLLMv2, RefusesNonCausalAndBadParameters) {
  Problem p(1, 2, 1, 10, 10, 64, 64, false);
  spattn::InfLLMv2Params prm;
  int K = 0;
  EXPECT_THROW(spattn::estimate_infllmv2(p.args(), prm, &K), std::invalid_argument);
  prm.block_size = 60;
  EXPECT_THROW(prm.validate(), std::invalid_argument);
  spattn::NOSAParams np;
  np.select_blocks = -1;
  EXPECT_THROW(np.validate(), std::invalid_argument);
}

TEST(NOSA, SelectsTopkBlocksWithTheQueryAwareOnesKept) {
  Problem p(1, 4, 2, 300, 300, 64, 64, true, 4);
  std::vector<float> cis(size_t(2) * 300);
  for (size_t c = 0; c < cis.size(); ++c) cis[c] = float((c * 37) % 11) * 0.1f;
  spattn::NOSAParams prm;
  prm.kernel_size = 8;
  prm.kernel_stride = 4;
  prm.block_size = 16;
  prm.window_size = 32;
  prm.topk = 7;
  prm.select_blocks = 2;
  int K = 0;
  const auto idx = spattn::estimate_nosa(p.args(), cis.data(), prm, &K);
  ASSERT_EQ(K, 7);
  for (size_t row = 0; row < size_t(2) * 300; ++row) {
    const int qb = int(row % 300) / 16;
    std::set<int> got;
    for (int c = 0; c < K; ++c)
      if (idx[row * K + c] >= 0) got.insert(idx[row * K + c]);
    EXPECT_EQ(int(got.size()), std::min(K, qb + 1));
    for (int b = std::max(0, qb - 2); b <= qb; ++b) EXPECT_TRUE(got.count(b));
  }
}
