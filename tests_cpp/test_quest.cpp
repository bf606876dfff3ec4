// Quest estimator against naive double loops written from the official behaviour
// (mit-han-lab/Quest HEAD 01c1623): page min/max of the keys, U[p] = sum_d max(q_d Kmax, q_d Kmin);
// kernel path: page budget token_budget / P capped at the page count, dense when it covers every
// page, else the last page + top (budget - 1) of the others; eval path: top
// min(max(3, min(N, budget) / P), pages) of all pages. Ties to the lower page. Also: the kernels
// read K/V as the prefix of larger buffers (AttnShape::kv_capacity) bit-identically to packed K/V.
#include <algorithm>
#include <numeric>

#include "spattn/estimators/quest.hpp"
#include "spattn/kernels.hpp"
#include "spattn/masks.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {

struct Pages {
  int cap;
  std::vector<float> kmin, kmax;
};

// Page metadata by a plain loop, with spare page capacity (as a growing cache holds it).
Pages naive_pages(const Problem& p, int P, int spare) {
  const auto& s = p.s;
  const int np = (s.Nk + P - 1) / P;
  Pages pg{np + spare, {}, {}};
  pg.kmin.assign(size_t(s.B) * s.Hkv * pg.cap * s.D, 7.f);
  pg.kmax = pg.kmin;
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.Hkv; ++h)
      for (int pi = 0; pi < np; ++pi)
        for (int d = 0; d < s.D; ++d) {
          float lo = INFINITY, hi = -INFINITY;
          for (int j = pi * P; j < std::min(s.Nk, (pi + 1) * P); ++j) {
            const float x = p.k[s.k_index(b, h, j) + d];
            lo = std::min(lo, x);
            hi = std::max(hi, x);
          }
          const size_t o = ((size_t(b) * s.Hkv + h) * pg.cap + pi) * s.D + d;
          pg.kmin[o] = lo;
          pg.kmax[o] = hi;
        }
  return pg;
}

// Selected tokens of (b, h) by the official rule, as a sorted list.
std::vector<int> naive_select(const Problem& p, int b, int h, int P, int T, bool eval) {
  const auto& s = p.s;
  const int N = s.Nk, np = (N + P - 1) / P, hk = h / s.group();
  std::vector<double> U(np);
  for (int pi = 0; pi < np; ++pi) {
    double u = 0;
    for (int d = 0; d < s.D; ++d) {
      double lo = INFINITY, hi = -INFINITY;
      for (int j = pi * P; j < std::min(N, (pi + 1) * P); ++j) {
        lo = std::min(lo, double(p.k[s.k_index(b, hk, j) + d]));
        hi = std::max(hi, double(p.k[s.k_index(b, hk, j) + d]));
      }
      const double qd = p.q[s.q_index(b, h, 0) + d];
      u += std::max(qd * hi, qd * lo);
    }
    U[pi] = u;
  }
  std::vector<char> keep(np, 0);
  int candidates = np, take;
  if (eval) {
    take = std::min(std::max(3, std::min(N, T) / P), np);
  } else {
    const int budget = std::min(T / P, np);
    if (np <= budget) {
      std::vector<int> all(N);
      std::iota(all.begin(), all.end(), 0);
      return all;
    }
    keep[np - 1] = 1;
    candidates = np - 1;
    take = budget - 1;
  }
  for (int t = 0; t < take; ++t) {  // repeated argmax, first index on ties
    int best = -1;
    for (int pi = 0; pi < candidates; ++pi)
      if (!keep[pi] && (best < 0 || U[pi] > U[best])) best = pi;
    keep[best] = 1;
  }
  std::vector<int> out;
  for (int pi = 0; pi < np; ++pi)
    if (keep[pi])
      for (int j = pi * P; j < std::min(N, (pi + 1) * P); ++j) out.push_back(j);
  return out;
}

struct Case {
  int B, Hq, Hkv, N, D, T;
  bool eval;
};

class QuestSelection : public ::testing::TestWithParam<Case> {};

TEST_P(QuestSelection, MatchesTheOfficialRuleAndAttendsTheSelectedTokens) {
  const Case c = GetParam();
  const int P = 16;
  Problem p(c.B, c.Hq, c.Hkv, 1, c.N, c.D, c.D, false, 11);
  const Pages pg = naive_pages(p, P, 5);
  spattn::QuestParams prm;
  prm.token_budget = c.T;
  prm.eval_selection = c.eval;
  int K = -1;
  const auto idx = spattn::estimate_quest(p.q.data(), p.s, {pg.kmin.data(), pg.kmax.data(), pg.cap}, prm, &K);
  ASSERT_EQ(idx.size(), size_t(c.B) * c.Hq * K);
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.Hq; ++h) {
      const int32_t* row = idx.data() + (size_t(b) * c.Hq + h) * K;
      std::vector<int> got;
      for (int t = 0; t < K; ++t)
        if (row[t] >= 0) got.push_back(row[t]);
      ASSERT_EQ(got, naive_select(p, b, h, P, c.T, c.eval)) << "b=" << b << " h=" << h;
    }
  const spattn::TokenIndicesView iv{idx.data(), c.B, c.Hq, 1, K, 1, c.N};
  spattn::token_sparse_attention(p.args(), iv);
  p.expect_matches_reference([&](int b, int h, int, int j) {
    const int32_t* row = idx.data() + (size_t(b) * c.Hq + h) * K;
    return std::find(row, row + K, j) != row + K;
  });
}

INSTANTIATE_TEST_SUITE_P(Shapes, QuestSelection,
                         ::testing::Values(Case{1, 1, 1, 17, 64, 16, false}, Case{1, 4, 2, 300, 80, 64, false},
                                           Case{2, 4, 1, 517, 128, 128, false}, Case{1, 2, 2, 100, 64, 1024, false},
                                           Case{1, 4, 4, 333, 128, 48, false}, Case{1, 4, 2, 300, 80, 64, true},
                                           Case{2, 4, 1, 517, 128, 128, true}, Case{1, 2, 2, 100, 64, 1024, true},
                                           Case{1, 2, 2, 5, 64, 512, true}, Case{1, 2, 1, 40, 64, 8, true}));

TEST(QuestBudget, KernelAndEvalPaths) {
  spattn::QuestParams k;  // kernel path, 512 tokens, pages of 16: 32 pages
  auto b = spattn::quest_budget(512, k);
  EXPECT_TRUE(b.dense);
  b = spattn::quest_budget(513, k);
  EXPECT_FALSE(b.dense);
  EXPECT_TRUE(b.force_last);
  EXPECT_EQ(b.pages, 31);
  spattn::QuestParams e;
  e.eval_selection = true;
  b = spattn::quest_budget(100, e);  // min(100, 512) / 16 = 6 of 7 pages, nothing forced
  EXPECT_FALSE(b.dense);
  EXPECT_FALSE(b.force_last);
  EXPECT_EQ(b.pages, 6);
  e.token_budget = 16;
  EXPECT_EQ(spattn::quest_budget(1000, e).pages, 3);  // at least three pages
  EXPECT_EQ(spattn::quest_budget(20, e).pages, 2);    // capped at the page count
}

TEST(QuestParams, ValidateNamesTheField) {
  spattn::QuestParams p;
  p.token_budget = 8;
  EXPECT_THROW(p.validate(), std::invalid_argument);
  p.eval_selection = true;
  EXPECT_NO_THROW(p.validate());
  p.page_size = 0;
  try {
    p.validate();
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("quest: page_size"), std::string::npos);
  }
}

// K/V rows [0, Nk) of buffers holding `cap` rows per kv head, the rest NaN.
void to_capacity(const std::vector<float>& x, const spattn::AttnShape& s, int cap, int d, std::vector<float>& out) {
  out.assign(size_t(s.B) * s.Hkv * cap * d, NAN);
  for (int bh = 0; bh < s.B * s.Hkv; ++bh)
    std::copy_n(x.data() + size_t(bh) * s.Nk * d, size_t(s.Nk) * d, out.data() + size_t(bh) * cap * d);
}

class KvCapacity : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(KvCapacity, PrefixOfLargerBuffersIsBitIdenticalToPackedKv) {
  const auto [Nq, causal] = GetParam();
  Problem p(2, 4, 2, Nq, 301, 64, 48, causal, 5);
  std::vector<float> kc, vc;
  to_capacity(p.k, p.s, 420, 64, kc);
  to_capacity(p.v, p.s, 420, 48, vc);
  std::vector<int32_t> idx(size_t(2) * 4 * Nq * 70);
  std::mt19937 gen(3);
  for (auto& x : idx) x = int(gen() % 302) - 1;
  for (size_t r = 0; r < idx.size() / 70; ++r) {  // rows sorted, unique, -1 last
    auto* row = idx.data() + r * 70;
    std::sort(row, row + 70);
    auto end = std::unique(row, row + 70);
    std::fill(end, row + 70, -1);
    auto first = std::find_if(row, end, [](int x) { return x >= 0; });
    std::rotate(row, first, end);
  }
  const spattn::TokenIndicesView iv{idx.data(), 2, 4, Nq, 70, 1, 301};
  for (int kernel = 0; kernel < 2; ++kernel) {
    std::vector<float> out_packed(p.out.size()), lse_packed(p.lse.size());
    spattn::AttnArgs a = p.args();
    a.out = out_packed.data();
    a.lse = lse_packed.data();
    if (kernel == 0) spattn::dense_attention(a);
    else spattn::token_sparse_attention(a, iv);
    a.k = kc.data();
    a.v = vc.data();
    a.shape.kv_capacity = 420;
    a.out = p.out.data();
    a.lse = p.lse.data();
    if (kernel == 0) spattn::dense_attention(a);
    else spattn::token_sparse_attention(a, iv);
    for (size_t i = 0; i < p.out.size(); ++i) ASSERT_EQ(p.out[i], out_packed[i]) << "kernel " << kernel << " i " << i;
    for (size_t i = 0; i < p.lse.size(); ++i) ASSERT_EQ(p.lse[i], lse_packed[i]) << "kernel " << kernel << " i " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, KvCapacity,
                         ::testing::Values(std::make_tuple(1, false), std::make_tuple(1, true),
                                           std::make_tuple(150, true), std::make_tuple(150, false)));

TEST(KvCapacity, SmallerThanNkIsRejected) {
  spattn::AttnShape s;
  s.Nq = 1; s.Nk = 10; s.D = 4; s.Dv = 4;
  s.kv_capacity = 9;
  EXPECT_THROW(s.validate(), std::invalid_argument);
  s.kv_capacity = 10;
  EXPECT_NO_THROW(s.validate());
  EXPECT_EQ(s.k_index(0, 0, 3), 12u);
}

}  // namespace
