// Additive logit biases (spattn::LogitBias: per key, per (query, key) pair, relative position) in
// the dense, block-sparse and token-sparse kernels against the naive double reference.
#include <algorithm>
#include <random>

#include "spattn/kernels.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {

struct BiasCase { int B, Hq, Hkv, Nq, Nk, D; bool causal; int key_heads, pair_heads, rel_heads; };

struct Biases {
  std::vector<float> key, pair, rel;
  spattn::LogitBias lb;
  Biases(const BiasCase& c, unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    if (c.key_heads) {
      key.resize(size_t(c.B) * c.key_heads * c.Nk);
      for (auto& x : key) x = nd(gen);
      lb.key = key.data();
      lb.key_heads = c.key_heads;
    }
    if (c.pair_heads) {
      pair.resize(size_t(c.pair_heads) * c.Nq * c.Nk);
      for (auto& x : pair) x = nd(gen);
      lb.pair = pair.data();
      lb.pair_heads = c.pair_heads;
    }
    if (c.rel_heads) {
      lb.rel_radius = 13;
      rel.resize(size_t(c.rel_heads) * 27);
      for (auto& x : rel) x = nd(gen);
      lb.rel = rel.data();
      lb.rel_heads = c.rel_heads;
    }
  }
};

class BiasTest : public ::testing::TestWithParam<BiasCase> {};

}  // namespace

TEST_P(BiasTest, DenseMatchesDoubleReference) {
  const BiasCase c = GetParam();
  Problem p(c.B, c.Hq, c.Hkv, c.Nq, c.Nk, c.D, c.D, c.causal);
  Biases bs(c, 7);
  p.bias = &bs.lb;
  spattn::dense_attention(p.args());
  p.expect_matches_reference(nullptr);
}

TEST_P(BiasTest, BlockSparseMatchesDoubleReference) {
  const BiasCase c = GetParam();
  Problem p(c.B, c.Hq, c.Hkv, c.Nq, c.Nk, c.D, c.D, c.causal);
  Biases bs(c, 8);
  p.bias = &bs.lb;
  const int bq = 16, bk = 32, nqb = (c.Nq + bq - 1) / bq, nkb = (c.Nk + bk - 1) / bk;
  std::vector<uint8_t> blocks(size_t(c.B) * c.Hq * nqb * nkb);
  for (size_t t = 0; t < blocks.size(); ++t) blocks[t] = (t * 2654435761u) % 3 != 0;
  spattn::BlockMaskView mv{blocks.data(), c.B, c.Hq, nqb, nkb, bq, bk, c.Nq, c.Nk};
  spattn::block_sparse_attention(p.args(), mv);
  p.expect_matches_reference([&](int b, int h, int i, int j) {
    return blocks[((size_t(b) * c.Hq + h) * nqb + i / bq) * nkb + j / bk] != 0;
  });
}

TEST_P(BiasTest, TokenSparseMatchesDoubleReference) {
  const BiasCase c = GetParam();
  Problem p(c.B, c.Hq, c.Hkv, c.Nq, c.Nk, c.D, c.D, c.causal);
  Biases bs(c, 9);
  p.bias = &bs.lb;
  const int K = 24;
  std::vector<int32_t> idx(size_t(c.B) * c.Hq * c.Nq * K);
  for (size_t r = 0; r < idx.size() / K; ++r)
    for (int s = 0; s < K; ++s) idx[r * K + s] = s < c.Nk ? int32_t((s * c.Nk) / K + r % 3) % c.Nk : -1;
  for (size_t r = 0; r < idx.size() / K; ++r) std::sort(idx.begin() + r * K, idx.begin() + (r + 1) * K);
  for (size_t r = 0; r < idx.size() / K; ++r)  // unique, -1 last
    for (int s = 1; s < K; ++s)
      if (idx[r * K + s] == idx[r * K + s - 1]) idx[r * K + s - 1] = -1;
  for (size_t r = 0; r < idx.size() / K; ++r)
    std::stable_partition(idx.begin() + r * K, idx.begin() + (r + 1) * K, [](int32_t x) { return x >= 0; });
  spattn::TokenIndicesView iv{idx.data(), c.B, c.Hq, c.Nq, K, 1, c.Nk};
  spattn::token_sparse_attention(p.args(), iv);
  p.expect_matches_reference([&](int b, int h, int i, int j) {
    const int32_t* row = idx.data() + ((size_t(b) * c.Hq + h) * c.Nq + i) * K;
    for (int s = 0; s < K; ++s)
      if (row[s] == j) return true;
    return false;
  });
}

INSTANTIATE_TEST_SUITE_P(Shapes, BiasTest, ::testing::Values(
    BiasCase{1, 4, 2, 37, 77, 80, true, 4, 1, 1},
    BiasCase{2, 2, 2, 101, 101, 64, false, 2, 2, 2},
    BiasCase{1, 4, 2, 1, 130, 128, true, 2, 4, 0},
    BiasCase{1, 4, 2, 300, 300, 64, true, 0, 0, 4}));

TEST(Bias, RejectsHeadCountsThatDoNotFit) {
  Problem p(1, 4, 2, 8, 8, 64, 64, false);
  std::vector<float> key(3 * 8, 0.f);
  spattn::LogitBias lb;
  lb.key = key.data();
  lb.key_heads = 3;
  p.bias = &lb;
  EXPECT_THROW(spattn::dense_attention(p.args()), std::invalid_argument);
}
