// SeerAttention gate, selection and ground truth in C++ (the numpy twins are in
// tests_py/test_seerattention.py).
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
