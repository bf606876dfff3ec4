// PowerAttention's static block pattern (see the header for the rule it follows).
#include "spattn/estimators/powerattention.hpp"

#include <numeric>
#include <stdexcept>

namespace spattn {

void PowerAttentionParams::validate() const {
  require_min("powerattention", "block_size", block_size, 1);
  require_min("powerattention", "window_blocks", window_blocks, 1);
}

BlockMask estimate_powerattention(const AttnArgs& qk, const PowerAttentionParams& p) {
  p.validate();
  const AttnShape& s = qk.shape;
  if (!qk.causal) throw std::invalid_argument("powerattention: the pattern is defined for causal attention only");
  const long long B = p.block_size, off = s.causal_offset();
  const int bq = off % B == 0 ? int(B) : std::gcd(int(B), int(off % B));
  BlockMask m(s.B, 1, s.Nq, s.Nk, bq, int(B));
  for (int qb = 0; qb < m.nqb; ++qb) {
    const long long pos = (long long)qb * bq + off;  // every row of the block lies in position block pos / B
    const long long pb = pos / B;
    for (int b = 0; b < s.B; ++b) {
      uint8_t* row = m.row(b, 0, qb);
      for (long long kb = 0; kb <= pb && kb < m.nkb; ++kb) {
        const long long d = pb - kb;
        row[kb] = kb == 0 || d < p.window_blocks || (d & (d - 1)) == 0;
      }
    }
  }
  return m;
}

}  // namespace spattn
