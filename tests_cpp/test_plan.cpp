// Compiled block plans: full / partial classification against a brute-force element check, and
// block-sparse attention on a plan equal to the same mask run directly and to the reference.
#include <random>

#include "spattn/kernels.hpp"
#include "spattn/plan.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

TEST(Plan, FullAndPartialBlocksMatchBruteForce) {
  for (bool causal : {false, true}) {
    spattn::AttnShape s;
    s.B = 1; s.Hq = 2; s.Hkv = 1; s.Nq = 37; s.Nk = 90; s.D = 8;
    spattn::BlockMask m(1, 2, s.Nq, s.Nk, 8, 16);
    std::mt19937 gen(3);
    for (auto& x : m.blocks) x = gen() % 2;
    const spattn::BlockPlan p = spattn::compile_block_plan(m.view(), s.B, s.Hq, s.Nq, s.Nk, causal);
    const int off = s.Nk - s.Nq;
    for (int h = 0; h < 2; ++h)
      for (int qb = 0; qb < m.nqb; ++qb) {
        std::vector<int> want_kv, want_full;
        for (int c = 0; c < m.nkb; ++c) {
          if (!m.row(0, h, qb)[c]) continue;
          int visible = 0, total = 0;
          for (int i = qb * 8; i < std::min(s.Nq, qb * 8 + 8); ++i)
            for (int j = c * 16; j < std::min(s.Nk, c * 16 + 16); ++j) {
              ++total;
              visible += (!causal || j <= i + off) ? 1 : 0;
            }
          if (visible == 0) continue;
          want_kv.push_back(c);
          want_full.push_back(visible == total ? 1 : 0);
        }
        const size_t id = p.row_id(0, h, qb);
        std::vector<int> got_kv, got_full;
        for (int64_t e = p.row_ptr[id]; e < p.row_ptr[id + 1]; ++e) {
          got_kv.push_back(p.kv[size_t(e)]);
          got_full.push_back(p.full[size_t(e)]);
        }
        EXPECT_EQ(got_kv, want_kv) << "causal " << causal << " h " << h << " qb " << qb;
        EXPECT_EQ(got_full, want_full) << "causal " << causal << " h " << h << " qb " << qb;
      }
  }
}

TEST(Plan, AttentionOnPlanEqualsMaskAndRejectsOtherCalls) {
  Problem p(1, 4, 2, 130, 200, 64, 64, true, 9);
  spattn::BlockMask m(1, 4, 130, 200, 32, 32);
  std::mt19937 gen(5);
  for (auto& x : m.blocks) x = gen() % 3 == 0;
  auto a = p.args();
  spattn::block_sparse_attention(a, m.view());
  const std::vector<float> out_mask = p.out;
  const spattn::BlockPlan plan = spattn::compile_block_plan(m.view(), 1, 4, 130, 200, true);
  std::fill(p.out.begin(), p.out.end(), 0.f);
  spattn::block_sparse_attention(a, plan);
  EXPECT_EQ(p.out, out_mask);
  a.causal = false;
  EXPECT_THROW(spattn::block_sparse_attention(a, plan), std::invalid_argument);
}
