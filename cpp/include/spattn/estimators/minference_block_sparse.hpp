// MInference's block-sparse pattern (Jiang et al., "MInference 1.0: Accelerating Pre-filling for
// Long-Context LLMs via Dynamic Sparse Attention", NeurIPS 2024), following microsoft/MInference
// `block_sparse_attention` / `_build_block_index` (minference/ops/block_sparse_flash_attention.py,
// HEAD fb56c91): Q and K zero-padded by block_size - (L mod block_size) rows (a whole extra block
// when L is a multiple), mean-pooled per block (padding rows count in the mean), pooled scores
// qp . kp^T without scale, future blocks excluded; each query-block row m keeps
// top_k' = min(top_k, L_pad / block_size) blocks: the kernel reads the first min(m + 1, top_k')
// of the top-k' indices sorted ascending, so rows m < top_k' keep every block 0..m and later rows
// their top_k' best. Nothing is forced. Causal prefill (Nq == Nk) only, as in the official code.
#pragma once

#include "spattn/masks.hpp"
#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct MInferenceBlockSparseParams {
  int top_k = 100;
  int block_size = 64;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("top_k", &MInferenceBlockSparseParams::top_k,
      "Blocks kept per query-block row (>= 1; the official kernel hard-codes 100).");
    v("block_size", &MInferenceBlockSparseParams::block_size,
      "Square block size of the pooling and of the mask (>= 1; official 64).");
  }
};

// Mask per query head (H = Hq; GQA as the official repeat_kv: query head h reads kv head
// h / (Hq / Hkv)). Throws std::invalid_argument unless causal with Nq == Nk.
BlockMask estimate_minference_block_sparse(const AttnArgs& qk, const MInferenceBlockSparseParams& p);

}  // namespace spattn
