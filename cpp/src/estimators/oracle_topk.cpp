// Oracle top-k: the exact per-(head, q-block) smallest set of kv blocks whose true attention
// mass reaches gamma. Not a method from a paper but the upper bound every estimator is compared
// with: it reads the exact block-pooled attention map (two flash-style passes, no Nq x Nk).
#include <algorithm>
#include <cmath>

#include "spattn/estimators/oracle_topk.hpp"
#include "spattn/kernels.hpp"
#include "spattn/statistics.hpp"
#include "spattn/selection.hpp"

namespace spattn {

void OracleParams::validate() const {
  require_min("oracle_topk", "block_size", block_size, 1);
  require_unit_interval("oracle_topk", "gamma", gamma);
}

BlockMask estimate_oracle_topk(const AttnArgs& a, const OracleParams& p) {
  const AttnShape& s = a.shape;
  s.validate();
  p.validate();
  BlockMask m(s.B, s.Hq, s.Nq, s.Nk, p.block_size, p.block_size);
  std::vector<float> map(m.blocks.size());
  std::vector<float> lse(size_t(s.B) * s.Hq * s.Nq);
  AttnArgs qk = a;
  qk.lse = lse.data();
  block_attention_map(qk, p.block_size, p.block_size, BlockPool::Sum, map.data());
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.Hq; ++h)
      for (int qb = 0; qb < m.nqb; ++qb) {
        const int i0 = qb * p.block_size, i1 = std::min(s.Nq, i0 + p.block_size);
        int valid = 0;
        for (int i = i0; i < i1; ++i) valid += std::isfinite(lse[s.row_index(b, h, i)]) ? 1 : 0;
        if (valid == 0) continue;
        const float* mrow = map.data() + ((size_t(b) * s.Hq + h) * m.nqb + qb) * m.nkb;
        // Block sums over `valid` rows: the target mass is gamma * valid.
        for (int c : cumulative_select(mrow, m.nkb, double(p.gamma) * valid * (1.0 - 1e-6)))
          m.row(b, h, qb)[c] = 1;
      }
  return m;
}

}  // namespace spattn
