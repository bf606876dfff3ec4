// SeerAttention-R decode block selection against naive loops written from the official behaviour
// (microsoft/SeerAttention HEAD aba03e3, attn_gate_inf.py): token budget -> top
// token_budget / block_size blocks of every kv head (every block when nb <= that), threshold ->
// prob > threshold; the last block always added; blocks expanded to tokens < kv_len; every query
// head of a group gets its kv head's list. Ties to the lower block.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <set>

#include "spattn/estimators/seerattention_r.hpp"

namespace {

using spattn::SeerAttentionRParams;

std::set<int> naive_blocks(const float* u, int nb, int block_size, const SeerAttentionRParams& p) {
  std::set<int> keep;
  if (p.threshold) {
    for (int j = 0; j < nb; ++j)
      if (u[j] > *p.threshold) keep.insert(j);
  } else {
    const int budget = p.token_budget / block_size;
    if (nb <= budget) {
      for (int j = 0; j < nb; ++j) keep.insert(j);
    } else {
      std::vector<int> order(static_cast<size_t>(nb));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [u](int a, int b) { return u[a] > u[b]; });
      for (int t = 0; t < budget; ++t) keep.insert(order[size_t(t)]);
    }
  }
  if (nb > 0) keep.insert(nb - 1);
  return keep;
}

void check(int B, int Hkv, int G, int kv_len, int block_size, const SeerAttentionRParams& p, unsigned seed) {
  const int nb = kv_len == 0 ? 0 : (kv_len - 1) / block_size + 1, Hq = Hkv * G;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> U(0.f, 1.f);
  std::vector<float> probs(size_t(B) * Hkv * nb);
  for (auto& x : probs) x = U(rng);
  if (nb > 3) probs[1] = probs[2];  // a tie: the lower block wins
  int K = -1;
  const auto idx = spattn::seer_r_select(probs.data(), B, Hkv, Hq, nb, block_size, kv_len, p, &K);
  ASSERT_EQ(idx.size(), size_t(B) * Hq * K);
  int widest = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hq; ++h) {
      const auto blocks = naive_blocks(probs.data() + (size_t(b) * Hkv + h / G) * nb, nb, block_size, p);
      std::vector<int> want;
      for (int j : blocks)
        for (int t = j * block_size; t < std::min(kv_len, (j + 1) * block_size); ++t) want.push_back(t);
      widest = std::max(widest, int(want.size()));
      const int32_t* row = idx.data() + (size_t(b) * Hq + h) * K;
      std::vector<int> got;
      for (int c = 0; c < K; ++c)
        if (row[c] >= 0) got.push_back(row[c]);
      EXPECT_EQ(got, want) << "b=" << b << " h=" << h;
    }
  EXPECT_EQ(K, widest);
}

TEST(SeerAttentionR, TokenBudgetSelectionMatchesTheOfficialTopkPlusLastBlock) {
  SeerAttentionRParams p;
  p.token_budget = 256;
  for (int kv_len : {1, 63, 64, 65, 300, 1000, 1025}) check(2, 2, 4, kv_len, 64, p, unsigned(kv_len));
  check(1, 4, 1, 517, 16, p, 7u);
  p.token_budget = 10;  // fewer tokens than a block: only the last block
  check(1, 2, 2, 700, 64, p, 8u);
}

TEST(SeerAttentionR, ThresholdSelectionKeepsBlocksAboveItPlusTheLastBlock) {
  SeerAttentionRParams p;
  p.threshold = 0.7f;
  for (int kv_len : {1, 100, 999}) check(1, 2, 2, kv_len, 64, p, unsigned(kv_len) + 11u);
}

TEST(SeerAttentionR, RejectsBadParametersAndShapes) {
  SeerAttentionRParams p;
  p.token_budget = 0;
  EXPECT_THROW(p.validate(), std::invalid_argument);
  p = SeerAttentionRParams{};
  std::vector<float> probs(3, 0.f);
  int K = 0;
  EXPECT_THROW(spattn::seer_r_select(probs.data(), 1, 1, 1, 3, 64, 1000, p, &K), std::invalid_argument);
  EXPECT_THROW(spattn::seer_r_select(probs.data(), 1, 2, 3, 3, 64, 150, p, &K), std::invalid_argument);
}

}  // namespace
