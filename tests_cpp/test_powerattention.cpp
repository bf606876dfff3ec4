// PowerAttention's block pattern against the paper's Algorithm 1 evaluated per (query, key) pair:
// every kept block holds a key the rule keeps for every row of the query block, and every key the
// rule keeps lies in a kept block (prefill and chunked prefill with a misaligned offset).
#include "spattn/estimators/powerattention.hpp"
#include "test_helpers.hpp"

namespace {
bool rule(long long p, long long k, long long B, long long W) {
  const long long d = p / B - k / B;
  return k <= p && (k < B || d < W || (d & (d - 1)) == 0);
}
}  // namespace

TEST(PowerAttention, MatchesAlgorithm1) {
  for (const auto& [Nq, Nk] : {std::pair<int, int>{900, 900}, {130, 1201}, {1, 4097}}) {
    spattn::AttnArgs a;
    a.shape.B = 1; a.shape.Hq = 1; a.shape.Hkv = 1; a.shape.Nq = Nq; a.shape.Nk = Nk; a.shape.D = 8; a.shape.Dv = 8;
    a.causal = true;
    spattn::PowerAttentionParams p;
    p.block_size = 32;
    p.window_blocks = 3;
    const spattn::BlockMask m = spattn::estimate_powerattention(a, p);
    const long long off = Nk - Nq;
    for (int i = 0; i < Nq; ++i)
      for (int j = 0; j < Nk; ++j) {
        const bool kept = m.blocks[size_t(i / m.block_q) * m.nkb + j / m.block_k] != 0 && j <= i + off;
        ASSERT_EQ(kept, rule(i + off, j, 32, 3)) << "Nq=" << Nq << " i=" << i << " j=" << j;
      }
  }
  spattn::AttnArgs nc;
  nc.shape.B = 1; nc.shape.Hq = 1; nc.shape.Hkv = 1; nc.shape.Nq = 4; nc.shape.Nk = 4; nc.shape.D = 8; nc.shape.Dv = 8;
  EXPECT_THROW(spattn::estimate_powerattention(nc, spattn::PowerAttentionParams{}), std::invalid_argument);
}
