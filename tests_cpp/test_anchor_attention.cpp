// AnchorAttention estimator against naive double loops of the official steps (AnchorAttn code:
// get_mask_fused_anchor_triton, get_q_mask_triton / get_mask_block): anchors = max scaled logit
// over the first G keys and the own big block (causal); a candidate key j of big block g is a
// stripe iff max_r (scale qbar_r . k_j - abar_r) + theta >= 0, candidates [b, gG - b) or [G, gG);
// index rows = init keys, stripes, own block. Decisions within 1e-4 of the threshold are skipped.
#include <algorithm>
#include <cmath>
#include <set>

#include "spattn/estimators/anchor_attention.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {

void check(int Hq, int Hkv, int N, int D, int b, int step, float theta, bool official) {
  Problem p(1, Hq, Hkv, N, N, D, D, true, unsigned(N + D));
  spattn::AnchorAttentionParams prm;
  prm.block_size = b;
  prm.step = step;
  prm.theta = theta;
  prm.official_candidates = official;
  const auto e = spattn::estimate_anchor_attention(p.args(), prm);
  const int G = b * step, ng = (N + G - 1) / G, grp = Hq / Hkv;
  const double scale = 1.0 / std::sqrt(double(D));
  ASSERT_EQ(e.groups, ng);
  ASSERT_EQ(e.group_size, std::min(G, N));
  for (int h = 0; h < Hq; ++h) {
    const float* q = p.q.data() + size_t(h) * N * D;
    const float* k = p.k.data() + size_t(h / grp) * N * D;
    auto logit = [&](const double* qr, int j) {
      double acc = 0.0;
      for (int d = 0; d < D; ++d) acc += qr[d] * k[size_t(j) * D + d];
      return acc * scale;
    };
    std::vector<double> anchor(N), row(D);
    for (int i = 0; i < N; ++i) {
      for (int d = 0; d < D; ++d) row[d] = q[size_t(i) * D + d];
      double mx = -1e300;
      for (int j = 0; j <= i; ++j)
        if (j < G || j >= (i / G) * G) mx = std::max(mx, logit(row.data(), j));
      anchor[i] = mx;
      ASSERT_NEAR(e.anchors[size_t(h) * N + i], mx, 1e-5 * (1 + std::abs(mx))) << "h " << h << " i " << i;
    }
    for (int g = 0; g < ng; ++g) {
      const int q0 = g * G, q1 = std::min(N, q0 + G);
      std::vector<std::vector<double>> qbar;
      std::vector<double> abar;
      for (int i0 = q0; i0 < q1; i0 += b) {
        const int i1 = std::min(q1, i0 + b);
        std::vector<double> m(D, 0.0);
        double a = 0.0;
        for (int i = i0; i < i1; ++i) {
          for (int d = 0; d < D; ++d) m[d] += q[size_t(i) * D + d] / double(i1 - i0);
          a += anchor[i] / (i1 - i0);
        }
        qbar.push_back(m);
        abar.push_back(a);
      }
      const size_t r = size_t(h) * ng + g;
      const int32_t* st = e.stripes.data() + r * e.S;
      const std::set<int> got(st, st + e.counts[r]);
      const int c0 = official ? b : G, c1 = std::min(N, official ? g * G - b : g * G);
      for (int j = c0; j < c1; ++j) {
        double margin = -1e300;
        for (size_t s = 0; s < qbar.size(); ++s) margin = std::max(margin, logit(qbar[s].data(), j) - abar[s]);
        margin += theta;
        if (std::abs(margin) < 1e-4) continue;
        EXPECT_EQ(got.count(j) == 1, margin >= 0) << "h " << h << " g " << g << " j " << j;
      }
      for (int j : got) EXPECT_TRUE(j >= c0 && j < c1);
      std::set<int> want(got);
      for (int j = 0; j < std::min(G, N); ++j) want.insert(j);
      for (int j = q0; j < q1; ++j) want.insert(j);
      const int32_t* ix = e.indices.data() + r * e.K;
      std::vector<int> listed;
      for (int c = 0; c < e.K; ++c)
        if (ix[c] >= 0) listed.push_back(ix[c]);
      EXPECT_EQ(listed, std::vector<int>(want.begin(), want.end())) << "h " << h << " g " << g;
    }
  }
}

}  // namespace

TEST(AnchorAttention, OfficialCandidatesGqaOddLength) { check(4, 2, 301, 64, 8, 4, 2.0f, true); }
TEST(AnchorAttention, OlderCandidateRangeD80) { check(2, 1, 259, 80, 8, 4, 2.0f, false); }
TEST(AnchorAttention, D128ShortAndDefaults) {
  check(2, 2, 150, 128, 16, 2, 2.0f, true);
  check(1, 1, 100, 64, 128, 16, 12.0f, true);
}

TEST(AnchorAttention, RejectsNonCausalChunkedAndBadParams) {
  Problem p(1, 2, 1, 16, 16, 64, 64, false);
  spattn::AnchorAttentionParams prm;
  EXPECT_THROW(spattn::estimate_anchor_attention(p.args(), prm), std::invalid_argument);
  Problem c(1, 2, 1, 8, 16, 64, 64, true);
  EXPECT_THROW(spattn::estimate_anchor_attention(c.args(), prm), std::invalid_argument);
  prm.step = 0;
  EXPECT_THROW(prm.validate(), std::invalid_argument);
  prm.step = 1 << 12;
  prm.block_size = 1 << 20;
  EXPECT_THROW(prm.validate(), std::invalid_argument);
}
