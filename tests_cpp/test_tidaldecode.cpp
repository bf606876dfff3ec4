// TidalDecode selection against a naive double loop of the official rule (DerrickYLJ/TidalDecode,
// modify_llama.py llama_tidal_attention_forward: per query head, torch.topk of q . k over every
// cached key, K repeated over the GQA group), K read as the prefix of a larger buffer; plus the
// shared decode-score product and the statistical top-k helpers it can select with.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "spattn/estimators/tidaldecode.hpp"
#include "spattn/selection.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {
double dot(const float* a, const float* b, int d) {
  double s = 0.0;
  for (int i = 0; i < d; ++i) s += double(a[i]) * double(b[i]);
  return s;
}
}  // namespace

TEST(TidalDecode, MatchesNaiveOfficialRule) {
  const int B = 2, Hq = 4, Hkv = 2, N = 517, cap = 600, D = 80, top = 33;
  Problem p(B, Hq, Hkv, 1, cap, D, D, true, 5);
  spattn::AttnArgs a = p.args();
  a.shape.kv_capacity = cap;
  a.shape.Nk = N;
  spattn::TidalDecodeParams prm;
  prm.top_k = top;
  int K = 0;
  const auto idx = spattn::estimate_tidaldecode(a, prm, &K);
  ASSERT_EQ(K, top);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hq; ++h) {
      std::vector<double> s(N);
      const float* q = p.q.data() + (size_t(b) * Hq + h) * D;
      for (int t = 0; t < N; ++t) s[size_t(t)] = dot(q, p.k.data() + ((size_t(b) * Hkv + h / 2) * cap + t) * D, D);
      std::vector<int> order(N);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return s[size_t(x)] > s[size_t(y)]; });
      order.resize(top);
      std::sort(order.begin(), order.end());
      const int32_t* row = idx.data() + (size_t(b) * Hq + h) * K;
      EXPECT_EQ(std::vector<int>(row, row + K), order) << "b=" << b << " h=" << h;
    }
  prm.top_k = N + 3;  // budget min(N, top_k): every key
  const auto all = spattn::estimate_tidaldecode(a, prm, &K);
  ASSERT_EQ(K, N);
  EXPECT_EQ(all[size_t(N) - 1], N - 1);
}

TEST(Selection, DecodeScoresEqualNaiveProducts) {
  const int B = 1, Hq = 6, Hkv = 2, N = 4100, cap = 4200, D = 64;  // two key chunks
  Problem p(B, Hq, Hkv, 1, cap, D, D, true, 9);
  spattn::AttnShape s = p.args().shape;
  s.kv_capacity = cap;
  s.Nk = N;
  std::vector<float> S(size_t(Hq) * N);
  spattn::decode_scores(p.q.data(), p.k.data(), s, 0.5f, S.data());
  for (int h = 0; h < Hq; ++h)
    for (int t = 0; t < N; t += 97)
      EXPECT_NEAR(S[size_t(h) * N + t], 0.5 * dot(p.q.data() + size_t(h) * D, p.k.data() + (size_t(h / 3) * cap + t) * D, D),
                  1e-4);
}

TEST(Selection, StatisticalTopk) {
  EXPECT_NEAR(spattn::normal_quantile(0.95), 1.6448536269514722, 1e-12);
  EXPECT_NEAR(spattn::normal_quantile(1e-9), -5.997807015007686, 1e-10);
  EXPECT_EQ(spattn::normal_quantile(0.5), 0.0);
  const float x[] = {1.f, 5.f, 2.f, 4.f, -INFINITY, 3.f};
  // finite entries 1..5: mean 3, population std sqrt(2); k = 2 of 5 -> Phi^-1(0.6) = 0.2533471
  const double theta = spattn::statistical_threshold(x, 6, 2);
  EXPECT_NEAR(theta, 3.0 + 0.2533471031357997 * std::sqrt(2.0), 1e-9);
  EXPECT_EQ(spattn::statistical_select(x, 6, 2), (std::vector<int>{1, 3}));
  EXPECT_EQ(spattn::statistical_select(x, 6, 9), (std::vector<int>{0, 1, 2, 3, 5}));  // k >= candidates
  const float same[] = {2.f, 2.f, 2.f};
  EXPECT_EQ(spattn::statistical_select(same, 3, 1), (std::vector<int>{0}));  // never empty
  const float nan[] = {1.f, NAN, 0.f};
  EXPECT_EQ(spattn::select_top(nan, 3, 1, false), (std::vector<int>{1}));  // NaN first, as torch.topk
  EXPECT_EQ(spattn::select_top(x, 6, 3, false), (std::vector<int>{1, 3, 5}));
}
