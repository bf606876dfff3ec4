// Block-sparse and token-sparse kernels, merge of states and the block attention map against
// the naive double reference.
#include <algorithm>
#include <set>

#include "spattn/kernels.hpp"
#include "spattn/statistics.hpp"
#include "spattn/masks.hpp"
#include "test_helpers.hpp"

using spattn::testing::kTol;
using spattn::testing::Problem;

struct SparseCase { int B, Hq, Hkv, Nq, Nk, D, bq, bk; bool causal; bool shared; };

class BlockSparseTest : public ::testing::TestWithParam<SparseCase> {};

TEST_P(BlockSparseTest, MatchesReferenceOnRandomMask) {
  const SparseCase c = GetParam();
  Problem p(c.B, c.Hq, c.Hkv, c.Nq, c.Nk, c.D, c.D, c.causal, 7);
  spattn::BlockMask m(c.B, c.shared ? 1 : c.Hq, c.Nq, c.Nk, c.bq, c.bk);
  std::mt19937 gen(3);
  for (auto& x : m.blocks) x = (gen() % 3 == 0) ? 1 : 0;
  m.blocks[0] = 0;  // at least one fully empty q-block row somewhere
  spattn::block_sparse_attention(p.args(), m.view());
  p.expect_matches_reference([&](int b, int h, int i, int j) {
    return m.row(b, c.shared ? 0 : h, i / c.bq)[j / c.bk] != 0;
  });
}

INSTANTIATE_TEST_SUITE_P(Shapes, BlockSparseTest, ::testing::Values(
    SparseCase{1, 2, 1, 130, 130, 64, 64, 64, true, false},
    SparseCase{2, 4, 2, 100, 333, 80, 32, 64, true, true},     // Nq < Nk causal, GQA, shared
    SparseCase{1, 4, 1, 1, 700, 128, 64, 128, true, false},    // decode
    SparseCase{1, 2, 2, 257, 257, 128, 128, 16, false, false},
    SparseCase{1, 8, 2, 300, 300, 64, 64, 64, true, true},
    // split-KV: few rows, long kv-block lists (parts merged exactly)
    SparseCase{1, 2, 1, 1, 20000, 64, 64, 64, true, false},
    SparseCase{1, 4, 2, 3, 9000, 128, 16, 32, true, true},
    SparseCase{1, 1, 1, 2, 12345, 80, 64, 16, false, false}),
    [](const ::testing::TestParamInfo<SparseCase>& i) {
      const SparseCase& c = i.param;
      return "Hq" + std::to_string(c.Hq) + "Hkv" + std::to_string(c.Hkv) + "Nq" + std::to_string(c.Nq) + "Nk" +
             std::to_string(c.Nk) + "D" + std::to_string(c.D) + "bq" + std::to_string(c.bq) + "bk" +
             std::to_string(c.bk) + (c.causal ? "causal" : "full") + (c.shared ? "shared" : "perhead");
    });

TEST(BlockSparse, FullMaskEqualsDense) {
  Problem p(1, 4, 2, 201, 201, 64, 64, true);
  spattn::BlockMask m(1, 1, 201, 201, 64, 64);
  std::fill(m.blocks.begin(), m.blocks.end(), 1);
  spattn::block_sparse_attention(p.args(), m.view());
  p.expect_matches_reference(nullptr);
}

TEST(BlockSparse, RejectsMaskOfWrongShape) {
  Problem p(1, 4, 2, 100, 100, 64, 64, true);
  spattn::BlockMask m(1, 2, 100, 100, 64, 64);  // H must be 4 or 1
  EXPECT_THROW(spattn::block_sparse_attention(p.args(), m.view()), std::invalid_argument);
}

struct TokenCase { int B, Hq, Hkv, Nq, Nk, D, group, K; bool causal; };
class TokenSparseTest : public ::testing::TestWithParam<TokenCase> {};

TEST_P(TokenSparseTest, MatchesReferenceOnRandomIndices) {
  const TokenCase c = GetParam();
  Problem p(c.B, c.Hq, c.Hkv, c.Nq, c.Nk, c.D, c.D, c.causal, 11);
  const int G = spattn::ceil_div(c.Nq, c.group);
  std::vector<int32_t> idx(size_t(c.B) * c.Hq * G * c.K, -1);
  std::mt19937 gen(5);
  std::vector<std::set<int>> chosen(size_t(c.B) * c.Hq * G);
  for (size_t r = 0; r < chosen.size(); ++r) {
    const int want = int(gen() % (c.K + 1));
    while ((int)chosen[r].size() < std::min(want, c.Nk)) chosen[r].insert(int(gen() % c.Nk));
    int t = 0;
    for (int j : chosen[r]) idx[r * c.K + t++] = j;
  }
  spattn::TokenIndicesView iv{idx.data(), c.B, c.Hq, G, c.K, c.group};
  spattn::token_sparse_attention(p.args(), iv);
  p.expect_matches_reference([&](int b, int h, int i, int j) {
    return chosen[(size_t(b) * c.Hq + h) * G + i / c.group].count(j) > 0;
  });
}

INSTANTIATE_TEST_SUITE_P(Shapes, TokenSparseTest, ::testing::Values(
    TokenCase{1, 2, 1, 1, 1000, 128, 1, 300, true},     // decode
    TokenCase{2, 4, 2, 37, 100, 64, 1, 17, true},
    TokenCase{1, 4, 4, 130, 130, 80, 64, 40, true},     // per q-block groups
    TokenCase{1, 2, 1, 50, 600, 64, 7, 600, false},     // more than one key tile
    // split-KV: decode over long index rows
    TokenCase{1, 1, 1, 1, 30000, 64, 1, 6000, true},
    TokenCase{1, 2, 1, 2, 8000, 80, 2, 4000, true},
    TokenCase{2, 1, 1, 1, 5000, 128, 1, 5000, false}),
    [](const ::testing::TestParamInfo<TokenCase>& i) {
      const TokenCase& c = i.param;
      return "Hq" + std::to_string(c.Hq) + "Hkv" + std::to_string(c.Hkv) + "Nq" + std::to_string(c.Nq) + "Nk" +
             std::to_string(c.Nk) + "D" + std::to_string(c.D) + "group" + std::to_string(c.group) + "K" +
             std::to_string(c.K) + (c.causal ? "causal" : "full");
    });

TEST(TokenSparse, RejectsOutOfRangeIndex) {
  Problem p(1, 1, 1, 4, 10, 64, 64, false);
  std::vector<int32_t> idx = {0, 10, 1, 2, 3, 4, 5, 6};
  spattn::TokenIndicesView iv{idx.data(), 1, 1, 4, 2, 1};
  EXPECT_THROW(spattn::token_sparse_attention(p.args(), iv), std::invalid_argument);
}

TEST(Merge, SplitKvMergesToDense) {
  // Keys [0, 90) and [90, 200) as two block masks of block 10, merged, equal dense.
  Problem p(1, 2, 1, 50, 200, 64, 64, true);
  std::vector<float> oa(p.out.size()), la(p.lse.size()), ob(p.out.size()), lb(p.lse.size());
  spattn::BlockMask ma(1, 1, 50, 200, 10, 10), mb(1, 1, 50, 200, 10, 10);
  for (int qb = 0; qb < ma.nqb; ++qb)
    for (int c = 0; c < ma.nkb; ++c) (c < 9 ? ma : mb).row(0, 0, qb)[c] = 1;
  auto a = p.args();
  a.out = oa.data(); a.lse = la.data();
  spattn::block_sparse_attention(a, ma.view());
  a.out = ob.data(); a.lse = lb.data();
  spattn::block_sparse_attention(a, mb.view());
  spattn::merge_states(oa.data(), la.data(), ob.data(), lb.data(), (long long)la.size(), 64,
                       p.out.data(), p.lse.data());
  p.expect_matches_reference(nullptr);
}

TEST(Merge, EmptyRowsStayEmpty) {
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> oa = {0, 0}, ob = {0, 0}, la = {ninf}, lb = {ninf}, o(2, 9.f), l(1, 9.f);
  spattn::merge_states(oa.data(), la.data(), ob.data(), lb.data(), 1, 2, o.data(), l.data());
  EXPECT_EQ(o[0], 0.f);
  EXPECT_EQ(o[1], 0.f);
  EXPECT_TRUE(std::isinf(l[0]) && l[0] < 0);
}

TEST(BlockMap, SumAndMaxPoolMatchReference) {
  for (bool causal : {false, true}) {
    Problem p(1, 4, 2, 70, 90, 64, 0, causal, 13);
    const int bq = 16, bk = 32, nqb = 5, nkb = 3;
    std::vector<float> sum(size_t(4) * nqb * nkb), mx(sum.size());
    auto a = p.args();
    a.v = nullptr;
    spattn::block_attention_map(a, bq, bk, spattn::BlockPool::Sum, sum.data());
    spattn::block_attention_map(a, bq, bk, spattn::BlockPool::Max, mx.data());
    for (int h = 0; h < 4; ++h) {
      std::vector<double> rs(nqb * nkb, 0.0), rm(nqb * nkb, 0.0);
      for (int i = 0; i < 70; ++i) {
        const auto pr = spattn::reference::probabilities(a, 0, h, i);
        for (int j = 0; j < 90; ++j) {
          rs[(i / bq) * nkb + j / bk] += pr[j];
          rm[(i / bq) * nkb + j / bk] = std::max(rm[(i / bq) * nkb + j / bk], pr[j]);
        }
      }
      for (int t = 0; t < nqb * nkb; ++t) {
        EXPECT_NEAR(sum[h * nqb * nkb + t], rs[t], 1e-4) << "causal " << causal;
        EXPECT_NEAR(mx[h * nqb * nkb + t], rm[t], kTol) << "causal " << causal;
      }
    }
  }
}

TEST(TokenMass, MatchesReference) {
  Problem p(1, 2, 1, 20, 40, 64, 0, true, 17);
  std::vector<int32_t> idx(2 * 20 * 3);
  for (size_t r = 0; r < 40; ++r) { idx[r * 3] = 0; idx[r * 3 + 1] = int(r % 20) + 5; idx[r * 3 + 2] = -1; }
  spattn::TokenIndicesView iv{idx.data(), 1, 2, 20, 3, 1};
  std::vector<float> mass(40);
  auto a = p.args();
  a.v = nullptr;
  spattn::token_attention_mass(a, iv, mass.data());
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 20; ++i) {
      const auto pr = spattn::reference::probabilities(a, 0, h, i);
      const int j = i + 5;  // row index r = h*20+i, r % 20 == i
      EXPECT_NEAR(mass[h * 20 + i], pr[0] + (j < 40 ? pr[j] : 0.0), 1e-5);
    }
}

// Decode rows made of runs (pages, windows: read in place) with unused entries between them, the
// heads of a GQA group sharing their rows (stacked work items) or not, against the reference.
TEST(TokenSparse, RunsInPlaceAndSharedGroups) {
  for (int shared = 0; shared < 2; ++shared)
    for (int Nq : {1, 2}) {
      const int B = 2, Hq = 8, Hkv = 2, Nk = 3000, D = 64, K = 900;
      Problem p(B, Hq, Hkv, Nq, Nk, D, D, true, 3 + shared);
      std::mt19937 gen(7 + shared);
      std::vector<int32_t> idx(size_t(B) * Hq * K, -1);
      std::vector<std::set<int>> chosen(size_t(B) * Hq);
      for (int b = 0; b < B; ++b)
        for (int h = 0; h < Hq; ++h) {
          const size_t r = size_t(b) * Hq + h;
          if (shared && h % (Hq / Hkv) != 0) {  // copy the first head of the group
            const size_t src = size_t(b) * Hq + h - h % (Hq / Hkv);
            std::copy_n(idx.begin() + src * K, K, idx.begin() + r * K);
            chosen[r] = chosen[src];
            continue;
          }
          int c = 0, j = int(gen() % 50);
          while (c < K - 20 && j < Nk) {
            const int len = 1 + int(gen() % 40);
            for (int t = 0; t < len && j < Nk && c < K; ++t, ++j) {
              idx[r * K + c++] = j;
              chosen[r].insert(j);
            }
            if (gen() % 3 == 0 && c < K) idx[r * K + c++] = -1;  // an unused entry between runs
            j += 1 + int(gen() % 60);
          }
        }
      spattn::TokenIndicesView iv{idx.data(), B, Hq, 1, K, Nq};
      spattn::token_sparse_attention(p.args(), iv);
      p.expect_matches_reference([&](int b, int h, int, int j) { return chosen[size_t(b) * Hq + h].count(j) > 0; });
    }
}
