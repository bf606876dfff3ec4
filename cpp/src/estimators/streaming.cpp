// StreamingLLM attention sinks + local window (Xiao et al., ICLR 2024) in the block "A-shape"
// form of MInference (Jiang et al., NeurIPS 2024): a kv block is kept for a q block when it holds
// a sink token or intersects the local window of any row of the q block. Causal visibility inside
// the kept blocks is applied by the kernel.
#include <algorithm>

#include "spattn/estimators/streaming.hpp"

namespace spattn {

void StreamingParams::validate() const {
  require_min("streaming", "block_size", block_size, 1);
  require_min("streaming", "sink_tokens", sink_tokens, 0);
  require_min("streaming", "local_tokens", local_tokens, 0);
}

BlockMask estimate_streaming(const AttnArgs& qk, const StreamingParams& p) {
  p.validate();
  const AttnShape& s = qk.shape;
  const bool causal = qk.causal;
  BlockMask m(s.B, 1, s.Nq, s.Nk, p.block_size, p.block_size);
  // 64-bit positions: windows and sinks up to 2^31 - 1 tokens must not wrap.
  using i64 = long long;
  const i64 off = s.causal_offset(), bs = p.block_size;
  const int sink_blocks = int(std::min<i64>(m.nkb, (i64(p.sink_tokens) + bs - 1) / bs));
  for (int qb = 0; qb < m.nqb; ++qb) {
    const i64 i0 = qb * bs, i1 = std::min<i64>(s.Nq, i0 + bs) - 1;
    // Keys covered by the windows of rows i0..i1: [i0+off-local+1, i1+off] (causal) or that
    // range extended by local-1 to the right (non-causal, centred window).
    const i64 lo = i0 + off - p.local_tokens + 1;
    const i64 hi = causal ? i1 + off : i1 + off + p.local_tokens - 1;
    for (int b = 0; b < s.B; ++b) {
      uint8_t* row = m.row(b, 0, qb);
      for (int c = 0; c < sink_blocks; ++c) row[c] = 1;
      if (p.local_tokens > 0) {
        const i64 c0 = std::max<i64>(0, lo) / bs;
        const i64 c1 = std::min<i64>(s.Nk - 1, hi);
        for (i64 c = c0; c * bs <= c1 && c < m.nkb; ++c)
          if ((c + 1) * bs - 1 >= lo) row[c] = 1;
      }
    }
  }
  return m;
}

}  // namespace spattn
