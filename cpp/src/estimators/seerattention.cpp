// SeerAttention prefill gate and its training target (Gao et al., "SeerAttention: Learning
// Intrinsic Sparse Attention in Your LLMs", 2024; microsoft/SeerAttention, prefill_sparse).
//  - gate: the forward lives in cpp/src/learned/seer_gate.cpp;
//  - selection: threshold (strict >) or nz_ratio (rows keep int((1 - sqrt(1 - r)) nb) blocks,
//    at least 1) or a fixed top-k; the last two query-block rows are kept whole when
//    last_block_dense; then the causal cut. Nothing else is forced, as in the official code.
//  - ground truth: block_attention_map with max pooling, rows normalised to 1.
// Deviations: float32 where the official code runs bf16; ties in top-k go to the lower index.
#include <algorithm>
#include <cmath>

#include <Eigen/Core>

#include "spattn/estimators/seerattention.hpp"
#include "spattn/kernels.hpp"
#include "spattn/statistics.hpp"
#include "spattn/selection.hpp"

namespace spattn {

void SeerParams::validate() const {
  if (nz_ratio && topk) throw std::invalid_argument("seerattention: give at most one of nz_ratio and topk");
  if (nz_ratio) require_unit_interval("seerattention", "nz_ratio", *nz_ratio);
  require_min("seerattention", "topk", topk, 1);
  if (!(threshold >= 0.f)) param_error("seerattention", "threshold", "be >= 0", threshold);
}

BlockMask seer_select(const float* scores, int B, int Hq, int n, int block_size, const SeerParams& p) {
  p.validate();
  require_min("seerattention", "block_size", block_size, 1);
  BlockMask m(B, Hq, n, n, block_size, block_size);
  const int nb = m.nqb;
  int k = 0;
  if (p.nz_ratio) k = std::max(1, int((1.0 - std::sqrt(1.0 - double(*p.nz_ratio))) * nb));
  else if (p.topk) k = std::min(*p.topk, nb);
  for (size_t t = 0; t < size_t(B) * Hq; ++t)
    for (int r = 0; r < nb; ++r) {
      const float* row = scores + (t * nb + r) * nb;
      uint8_t* out = m.blocks.data() + (t * nb + r) * nb;
      if (p.last_block_dense && r >= nb - 2) {
        std::fill(out, out + r + 1, 1);
        continue;
      }
      if (!p.nz_ratio && !p.topk) {
        for (int c = 0; c <= r; ++c) out[c] = row[c] > p.threshold ? 1 : 0;
      } else {
        for (int c : topk_select(row, nb, k))
          if (c <= r) out[c] = 1;
      }
    }
  return m;
}

void seer_ground_truth(const AttnArgs& a, int bs, float* target) {
  const AttnShape& s = a.shape;
  if (s.Nq != s.Nk) throw std::invalid_argument("seerattention: ground truth needs Nq == Nk");
  AttnArgs qk = a;
  qk.causal = true;
  qk.lse = nullptr;
  block_attention_map(qk, bs, bs, BlockPool::Max, target);
  const int nb = ceil_div(s.Nq, bs);
  for (size_t r = 0; r < size_t(s.B) * s.Hq * nb; ++r) {
    float* row = target + r * nb;
    double sum = 0.0;
    for (int c = 0; c < nb; ++c) sum += row[c];
    if (sum > 0.0)
      for (int c = 0; c < nb; ++c) row[c] = float(row[c] / sum);
  }
}

}  // namespace spattn
