// PowerAttention (Chen et al., "PowerAttention: Exponentially Scaling of Receptive Fields for
// Effective Sparse Attention", arXiv 2503.03588), following the paper's Algorithm 1 (no official
// code was found): for a query at position p and a key at position k, with block size B and the
// block distance d = p // B - k // B,
//
//   kept iff k <= p and (k < B  (the first block: sink)  or  d < W  (the W newest blocks, the
//            query's own included)  or  d is 0 or a power of two),
//
// the same for every head and layer, in prefill and decode (bottom-right causal alignment for
// Nq < Nk). Block-level except the causal rule inside the diagonal block, which the kernel applies.
// The BlockMask's query blocks follow the position blocks: block_q = B when the causal offset
// Nk - Nq is a multiple of B, else gcd(B, offset mod B), so that every row of a query block has the
// same key blocks (exact for any chunk alignment). Mask shared by all heads (H = 1).
#pragma once

#include "spattn/masks.hpp"
#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct PowerAttentionParams {
  int block_size = 256;
  int window_blocks = 5;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("block_size", &PowerAttentionParams::block_size, "Block size B in tokens (>= 1; the paper's 256).");
    v("window_blocks", &PowerAttentionParams::window_blocks,
      "W: the newest blocks kept, the query's own included (d < W; >= 1; the paper's Qwen2-7B setting 5).");
  }
};

// Reads only qk.shape (B, Nq, Nk); causal only.
BlockMask estimate_powerattention(const AttnArgs& qk, const PowerAttentionParams& p);

}  // namespace spattn
