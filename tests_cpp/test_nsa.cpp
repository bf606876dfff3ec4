// NSA's compressed branch and selection: the branch against the naive reference over the
// compressed keys with the visibility t >= j d + l - 1, the forced blocks (strict lower end) and
// the shape of the selection; the selection itself is checked against the official references in
// tests_py/test_nsa.py.
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>

#include "spattn/estimators/nsa.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {

// Problem p holds q (Nq rows) and C compressed keys / values as its k / v; runs NSA for kv_len keys.
std::vector<int32_t> run_nsa(Problem& p, int kv_len, const spattn::NSAParams& prm, int* K) {
  spattn::AttnArgs a = p.args();
  const int C = p.s.Nk;
  a.k = nullptr;
  a.v = nullptr;
  a.shape.Nk = kv_len;
  a.out = nullptr;
  a.lse = nullptr;
  a.causal = true;  // NSA is causal; the reference below applies the compressed visibility itself
  return spattn::nsa_compressed_attention(a, p.k.data(), p.v.data(), C, C, p.s.Dv, prm, p.out.data(), p.lse.data(),
                                          K);
}

}  // namespace

TEST(NSA, CompressedBranchIsAttentionOverTheVisibleCompressedKeys) {
  for (int Nq : {1, 77, 300}) {
    const int N = 300, l = 32, d = 16, C = spattn::nsa_compressed_count(N, l, d);
    ASSERT_EQ(C, 17);
    Problem p(2, 4, 2, Nq, C, 64, 48, false, 5);
    spattn::NSAParams prm;
    int K = 0;
    run_nsa(p, N, prm, &K);
    EXPECT_EQ(K, 5);
    p.expect_matches_reference([&](int, int, int i, int j) { return (long long)j * d + l - 1 <= i + N - Nq; });
  }
}

TEST(NSA, RowsHoldTheForcedBlocksAscending) {
  const int N = 211;
  spattn::NSAParams prm;
  prm.kernel_size = 8;
  prm.kernel_stride = 4;
  prm.block_size = 16;
  prm.topk = 3;  // = init + local: exactly the forced blocks
  Problem p(1, 4, 2, N, spattn::nsa_compressed_count(N, 8, 4), 32, 32, false, 7);
  int K = 0;
  const auto idx = run_nsa(p, N, prm, &K);
  ASSERT_EQ(K, 3);
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < N; ++i) {
      const int qb = i / 16;
      const int32_t* row = idx.data() + (size_t(h) * N + i) * K;
      if (qb >= 2) {
        EXPECT_EQ(row[0], 0);
        EXPECT_EQ(row[1], qb - 1);
        EXPECT_EQ(row[2], qb);
      } else {
        EXPECT_EQ(row[0], 0);
        EXPECT_EQ(row[qb], qb);
      }
    }
}

TEST(NSA, RefusesBadParametersAndCounts) {
  spattn::NSAParams prm;
  prm.kernel_size = 24;
  EXPECT_THROW(prm.validate(), std::invalid_argument);
  spattn::NSAParams ok;
  Problem p(1, 2, 1, 5, 3, 16, 16, false);
  int K = 0;
  EXPECT_THROW(run_nsa(p, 100, ok, &K), std::invalid_argument);  // 100 keys have 5 compressed tokens
  Problem empty(1, 2, 1, 5, 1, 16, 16, false);
  spattn::AttnArgs a = empty.args();
  a.shape.Nk = 20;
  a.k = a.v = nullptr;
  a.causal = true;
  std::vector<int32_t> idx;
  EXPECT_NO_THROW(idx = spattn::nsa_compressed_attention(a, empty.k.data(), empty.v.data(), 0, 1, 16, ok,
                                                         empty.out.data(), empty.lse.data(), &K));
  EXPECT_EQ(K, 1);
  for (float x : empty.out) EXPECT_EQ(x, 0.f);
  for (float x : empty.lse) EXPECT_TRUE(std::isinf(x) && x < 0);
  for (int32_t b : idx) EXPECT_EQ(b, 0);
}
