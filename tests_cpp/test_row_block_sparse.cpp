// Row-block sparse kernel (per-row key-block lists, InfLLM-V2 / NSA selection) against the naive
// double reference: odd lengths, causal with Nq < Nk, decode (Nq = 1, split-KV), GQA lists shared
// by the group (H = Hkv), per query head (H = Hq) and for all heads (H = 1).
#include <algorithm>
#include <cmath>
#include <limits>

#include "spattn/kernels.hpp"
#include "spattn/masks.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {

struct RowBlockCase { int B, Hq, Hkv, H, Nq, Nk, D, bk, K; bool causal; };

// Random lists: each row takes about K blocks at random, ascending, -1 padded (and one -1 moved
// into the middle of some rows); a few rows take nothing.
std::vector<int32_t> random_lists(const RowBlockCase& c, unsigned seed) {
  const int nkb = spattn::ceil_div(c.Nk, c.bk);
  std::mt19937 gen(seed);
  std::vector<int32_t> ix(size_t(c.B) * c.H * c.Nq * c.K, -1);
  for (size_t r = 0; r < size_t(c.B) * c.H * c.Nq; ++r) {
    if (gen() % 11 == 0) continue;  // empty row
    std::vector<int> pick;
    for (int j = 0; j < nkb; ++j)
      if (int(gen() % nkb) < c.K) pick.push_back(j);
    if (pick.size() > size_t(c.K)) pick.resize(size_t(c.K));
    int32_t* row = ix.data() + r * c.K;
    std::copy(pick.begin(), pick.end(), row);
    if (gen() % 4 == 0 && int(pick.size()) < c.K && !pick.empty()) {  // a hole: -1 before the last id
      row[pick.size()] = row[pick.size() - 1];
      row[pick.size() - 1] = -1;
    }
  }
  return ix;
}

bool listed(const int32_t* row, int K, int kb) {
  for (int c = 0; c < K; ++c)
    if (row[c] == kb) return true;
  return false;
}

}  // namespace

class RowBlockSparseTest : public ::testing::TestWithParam<RowBlockCase> {};

TEST_P(RowBlockSparseTest, MatchesReferenceOnRandomLists) {
  const RowBlockCase c = GetParam();
  Problem p(c.B, c.Hq, c.Hkv, c.Nq, c.Nk, c.D, c.D, c.causal, 5);
  const std::vector<int32_t> ix = random_lists(c, 9);
  const spattn::RowBlockIndicesView view{ix.data(), c.B, c.H, c.Nq, c.K, c.bk, c.Nk};
  spattn::row_block_sparse_attention(p.args(), view);
  p.expect_matches_reference([&](int b, int h, int i, int j) {
    return listed(view.row(b, view.row_head(p.s, h), i), c.K, j / c.bk);
  });
}

INSTANTIATE_TEST_SUITE_P(Shapes, RowBlockSparseTest, ::testing::Values(
    RowBlockCase{1, 2, 2, 2, 131, 131, 64, 16, 4, true},       // odd N, per head
    RowBlockCase{2, 4, 2, 2, 77, 333, 80, 32, 5, true},        // causal Nq < Nk, GQA lists per kv head
    RowBlockCase{1, 4, 2, 4, 150, 150, 64, 64, 2, true},       // GQA, lists per query head
    RowBlockCase{1, 4, 1, 1, 1, 700, 128, 64, 6, true},        // decode, one list
    RowBlockCase{1, 8, 2, 2, 1, 20000, 64, 64, 200, true},     // decode, split-KV parts
    RowBlockCase{1, 2, 1, 1, 3, 9001, 64, 16, 300, false},     // few rows, non-causal, split-KV
    RowBlockCase{1, 16, 1, 1, 70, 500, 64, 100, 3, true},      // group 16 stacked, block not dividing the tile
    RowBlockCase{1, 2, 2, 1, 257, 257, 128, 7, 20, false}),
    [](const ::testing::TestParamInfo<RowBlockCase>& i) {
      const RowBlockCase& c = i.param;
      return "Hq" + std::to_string(c.Hq) + "Hkv" + std::to_string(c.Hkv) + "H" + std::to_string(c.H) + "Nq" +
             std::to_string(c.Nq) + "Nk" + std::to_string(c.Nk) + "D" + std::to_string(c.D) + "bk" +
             std::to_string(c.bk) + "K" + std::to_string(c.K) + (c.causal ? "causal" : "full");
    });

TEST(RowBlockSparse, AllBlocksEqualsDense) {
  Problem p(1, 4, 2, 201, 201, 64, 64, true);
  const int nkb = spattn::ceil_div(201, 64);
  std::vector<int32_t> ix;
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 201; ++i)
      for (int j = 0; j < nkb; ++j) ix.push_back(j);
  spattn::row_block_sparse_attention(p.args(), {ix.data(), 1, 2, 201, nkb, 64, -1});
  p.expect_matches_reference(nullptr);
}

TEST(RowBlockSparse, NonFiniteValuesOfUnselectedBlocksStayOut) {
  Problem p(1, 2, 1, 40, 256, 64, 64, false);
  for (int c = 0; c < 64; ++c) p.v[size_t(70) * 64 + c] = std::numeric_limits<float>::quiet_NaN();  // block 1
  std::vector<int32_t> ix(size_t(40) * 2, -1);
  for (int i = 0; i < 40; ++i) {
    ix[size_t(i) * 2] = 0;
    ix[size_t(i) * 2 + 1] = i % 2 ? 1 : 3;  // odd rows read the NaN block
  }
  spattn::row_block_sparse_attention(p.args(), {ix.data(), 1, 1, 40, 2, 64, -1});
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 40; ++i) {
      const float o = p.out[(size_t(h) * 40 + i) * 64];
      EXPECT_EQ(std::isnan(o), i % 2 == 1) << "head " << h << " row " << i;
    }
}

TEST(RowBlockSparse, RejectsBadIndices) {
  Problem p(1, 4, 2, 10, 100, 64, 64, true);
  std::vector<int32_t> ix(size_t(3) * 10 * 2, 0);
  EXPECT_THROW(spattn::row_block_sparse_attention(p.args(), {ix.data(), 1, 3, 10, 2, 64, -1}),
               std::invalid_argument);  // H must be 4, 2 or 1
  std::vector<int32_t> dup(size_t(2) * 10 * 2, 1);
  EXPECT_THROW(spattn::row_block_sparse_attention(p.args(), {dup.data(), 1, 2, 10, 2, 64, -1}),
               std::invalid_argument);  // not strictly increasing
  std::vector<int32_t> far(size_t(2) * 10 * 2, -1);
  far[0] = 2;  // ceil(100 / 64) = 2 blocks
  EXPECT_THROW(spattn::row_block_sparse_attention(p.args(), {far.data(), 1, 2, 10, 2, 64, -1}),
               std::invalid_argument);
}
