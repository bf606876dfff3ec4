// SeerAttention gate, selection and ground truth in C++ (the numpy twins are in
// tests_py/test_seerattention.py).
#include <cmath>
#include <random>

#include "spattn/estimators/seerattention.hpp"
#include "spattn/learned/seer_gate.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

TEST(Seer, GroundTruthIsRowNormalisedMaxPoolOfExactAttention) {
  Problem p(1, 2, 1, 100, 100, 64, 0, true, 3);
  const int bs = 32, nb = 4;
  std::vector<float> gt(2 * nb * nb);
  spattn::seer_ground_truth(p.args(), bs, gt.data());
  for (int h = 0; h < 2; ++h) {
    std::vector<double> raw(nb * nb, 0.0);
    for (int i = 0; i < 100; ++i) {
      const auto pr = spattn::reference::probabilities(p.args(), 0, h, i);
      for (int j = 0; j < 100; ++j) raw[(i / bs) * nb + j / bs] = std::max(raw[(i / bs) * nb + j / bs], pr[j]);
    }
    for (int r = 0; r < nb; ++r) {
      double sum = 0;
      for (int c = 0; c < nb; ++c) sum += raw[r * nb + c];
      for (int c = 0; c < nb; ++c) EXPECT_NEAR(gt[(h * nb + r) * nb + c], raw[r * nb + c] / sum, 1e-6);
    }
  }
}

TEST(Seer, GateScoresAreCausalRowDistributions) {
  Problem p(1, 4, 2, 300, 300, 64, 0, true, 5);
  std::mt19937 gen(1);
  std::normal_distribution<float> nd(0.f, 0.2f);
  std::vector<float> wk(size_t(4) * 3 * 64 * 64);
  for (auto& x : wk) x = nd(gen);
  spattn::SeerGate g;
  g.hidden = 64;
  g.q_pool = {spattn::PoolKind::Avg};
  g.k_pool = {spattn::PoolKind::Max, spattn::PoolKind::Min, spattn::PoolKind::Avg};
  g.wk = wk.data();
  g.wk_heads = 4;
  const int nb = 5;
  std::vector<float> sc(size_t(4) * nb * nb);
  spattn::seer_gate_scores(p.args(), g, 64, sc.data());
  for (int h = 0; h < 4; ++h)
    for (int r = 0; r < nb; ++r) {
      double sum = 0;
      for (int c = 0; c < nb; ++c) {
        const float x = sc[(h * nb + r) * nb + c];
        if (c > r) EXPECT_EQ(x, 0.f);
        sum += x;
      }
      EXPECT_NEAR(sum, 1.0, 1e-5);
    }
  // Threshold selection: strict >, last two rows dense, causal cut.
  spattn::SeerParams prm;
  prm.threshold = 0.3f;
  auto m = spattn::seer_select(sc.data(), 1, 4, 300, 64, prm);
  for (int h = 0; h < 4; ++h)
    for (int r = 0; r < nb; ++r)
      for (int c = 0; c < nb; ++c) {
        const bool want = c <= r && (r >= nb - 2 || sc[(h * nb + r) * nb + c] > 0.3f);
        EXPECT_EQ(m.blocks[(h * nb + r) * nb + c], want ? 1 : 0);
      }
  // Identity q needs hidden == D.
  g.hidden = 32;
  EXPECT_THROW(spattn::seer_gate_scores(p.args(), g, 64, sc.data()), std::invalid_argument);
}

TEST(Seer, GivenInverseFrequenciesReplaceTheta) {
  // inv_freq equal to theta^(-2f/hidden) gives the theta scores; other frequencies change them.
  Problem p(1, 2, 2, 200, 200, 16, 0, true, 7);
  std::mt19937 gen(2);
  std::normal_distribution<float> nd(0.f, 0.3f);
  std::vector<float> wk(size_t(2) * 3 * 16 * 16);
  for (auto& x : wk) x = nd(gen);
  spattn::SeerGate g;
  g.hidden = 16;
  g.q_pool = {spattn::PoolKind::Avg};
  g.k_pool = {spattn::PoolKind::Max, spattn::PoolKind::Min, spattn::PoolKind::Avg};
  g.wk = wk.data();
  g.wk_heads = 2;
  g.rope_theta = 500.f;
  const int nb = 7;
  std::vector<float> base(size_t(2) * nb * nb), given(base.size()), scaled(base.size());
  spattn::seer_gate_scores(p.args(), g, 32, base.data());
  std::vector<float> inv(8);
  for (int f = 0; f < 8; ++f) inv[f] = float(std::pow(500.0, -2.0 * f / 16));
  g.inv_freq = inv.data();
  g.n_freq = 8;
  spattn::seer_gate_scores(p.args(), g, 32, given.data());
  for (size_t i = 0; i < base.size(); ++i) EXPECT_NEAR(given[i], base[i], 1e-5);
  for (auto& x : inv) x *= 0.25f;
  spattn::seer_gate_scores(p.args(), g, 32, scaled.data());
  double diff = 0;
  for (size_t i = 0; i < base.size(); ++i) diff += std::abs(scaled[i] - base[i]);
  EXPECT_GT(diff, 1e-3);
}

TEST(Seer, PartialRotaryLeavesTheLastChannelsUnrotated) {
  // n_freq < hidden / 2: with every frequency 0 the rotation is the identity, so scores equal
  // the scores without RoPE whatever n_freq is.
  Problem p(1, 2, 2, 150, 150, 8, 0, true, 9);
  std::vector<float> wk(size_t(2) * 3 * 8 * 16, 0.f), wq(size_t(2) * 8 * 16, 0.f);
  std::mt19937 gen(3);
  std::normal_distribution<float> nd(0.f, 0.3f);
  for (auto& x : wk) x = nd(gen);
  for (auto& x : wq) x = nd(gen);
  spattn::SeerGate g;
  g.hidden = 16;
  g.q_pool = {spattn::PoolKind::Avg};
  g.k_pool = {spattn::PoolKind::Max, spattn::PoolKind::Min, spattn::PoolKind::Avg};
  g.wk = wk.data();
  g.wq = wq.data();
  g.wk_heads = 2;
  const int nb = 5;
  std::vector<float> none(size_t(2) * nb * nb), zero(none.size());
  g.rope_theta = 0.f;
  spattn::seer_gate_scores(p.args(), g, 32, none.data());
  std::vector<float> inv(4, 0.f);
  g.rope_theta = 1.f;
  g.inv_freq = inv.data();
  g.n_freq = 4;
  spattn::seer_gate_scores(p.args(), g, 32, zero.data());
  for (size_t i = 0; i < none.size(); ++i) EXPECT_NEAR(zero[i], none[i], 1e-6);
  g.n_freq = 9;  // more than hidden / 2
  EXPECT_THROW(spattn::seer_gate_scores(p.args(), g, 32, zero.data()), std::invalid_argument);
}
