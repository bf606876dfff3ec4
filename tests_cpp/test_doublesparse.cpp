// Double Sparsity ranking against a naive double loop written from the official behaviour
// (andy-yang-1/DoubleSparse LongBench/modify_llama.py: scores q_label . k_label per query head,
// descending sort, the first heavy_const kept, every token when kv_len <= heavy_const), on label
// buffers with spare capacity (as the decode cache holds them), GQA label heads, ties to the lower
// token.
#include <algorithm>
#include <numeric>
#include <random>

#include "spattn/estimators/doublesparse.hpp"
#include "test_helpers.hpp"

namespace {

struct Case {
  int B, Hq, Hl, N, cap, r, heavy;
};

class DoubleSparseSelection : public ::testing::TestWithParam<Case> {};

TEST_P(DoubleSparseSelection, MatchesTheOfficialSortAndCut) {
  const Case c = GetParam();
  std::mt19937 gen(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> ql(size_t(c.B) * c.Hq * c.r), lab(size_t(c.B) * c.Hl * c.cap * c.r, NAN);
  for (auto& x : ql) x = nd(gen);
  for (int bh = 0; bh < c.B * c.Hl; ++bh)
    for (int t = 0; t < c.N * c.r; ++t) lab[size_t(bh) * c.cap * c.r + t] = std::round(nd(gen) * 4.f) / 4.f;  // ties
  spattn::AttnShape s;
  s.B = c.B; s.Hq = c.Hq; s.Hkv = c.Hl; s.Nq = 1; s.Nk = c.N; s.D = c.r; s.Dv = 0; s.kv_capacity = c.cap;
  spattn::DoubleSparseParams p;
  p.heavy_const = c.heavy;
  int K = -1;
  const auto idx = spattn::estimate_doublesparse(ql.data(), lab.data(), s, p, &K);
  ASSERT_EQ(K, std::min(c.N, c.heavy));
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.Hq; ++h) {
      const int hl = h / (c.Hq / c.Hl);
      std::vector<double> sc(c.N);
      for (int t = 0; t < c.N; ++t) {
        double a = 0;
        for (int d = 0; d < c.r; ++d)
          a += double(ql[(size_t(b) * c.Hq + h) * c.r + d]) * lab[((size_t(b) * c.Hl + hl) * c.cap + t) * c.r + d];
        sc[t] = a;
      }
      std::vector<int> order(c.N);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return sc[x] > sc[y]; });
      order.resize(std::min(c.N, c.heavy));
      std::sort(order.begin(), order.end());
      const int32_t* row = idx.data() + (size_t(b) * c.Hq + h) * K;
      ASSERT_EQ(std::vector<int>(row, row + K), order) << "b=" << b << " h=" << h;
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DoubleSparseSelection,
                         ::testing::Values(Case{1, 4, 2, 300, 512, 32, 40}, Case{2, 4, 4, 517, 600, 16, 100},
                                           Case{1, 2, 1, 100, 100, 40, 256}, Case{1, 8, 2, 1000, 1024, 8, 1},
                                           Case{1, 1, 1, 1, 16, 64, 1}));

TEST(DoubleSparseParams, ValidateNamesTheField) {
  spattn::DoubleSparseParams p;
  p.label_bits = 17;
  try {
    p.validate();
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("doublesparse: label_bits"), std::string::npos);
  }
}

}  // namespace
