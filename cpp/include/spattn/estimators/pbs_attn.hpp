// PBS-Attn (Wang et al., "Sparser Block-Sparse Attention via Token Permutation", arXiv 2510.21270,
// 2025), following xinghaow99/pbs-attn HEAD 8ce8e02: `last_block_attn_sorting`
// (pbs_attn/src/permute_states.py), `permuted_block_selection` and `first_token_mask`
// (pbs_attn/src/pbs.py), `block_pooled_attn` and `select_blocks` (pbs_attn/src/utils.py), the
// naive torch attention `_permuted_block_sparse_attn_fwd_torch_naive` and the HF patch's GQA
// (`repeat_kv`: one permutation and mask per query head):
//
// 0. L <= segment_size: dense causal attention (the official SDPA fallback).
// 1. segment-wise key permutation: P = softmax(Q[L-b:L] K[0:nseg S]^T * scale) over the keys of
//    the nseg = floor(L/S) complete segments (no causal mask), importance = mean of P over the b
//    rows; inside each segment the keys are sorted by importance, descending; the tail of
//    L mod S keys keeps its order. perm[p] = original position of the key at permuted position p.
// 2. block selection on (Q, K[perm]), both zero-padded to a multiple of b: candidates
//    kb <= qb in another segment than qb; pooled means (pad rows count) q.k * scale, softmax over
//    the candidates (float32 in the official code), the smallest descending prefix whose
//    cumulative sum reaches threshold (nothing when none does); OR the permuted block holding
//    token 0 (force_select_first_block), OR every block of the query block's own segment.
// 3. attention over the keys of the selected permuted blocks, causal on original positions.
//
// Deviations and choices (see the .cpp): ties in the sorts go to the lower index (torch.argsort
// and torch.sort are not stable); threshold == 1 takes every candidate block (the official code
// does so for the int 1; its float 1.0 path depends on the float32 rounding of the cumulative
// sum); a user-given scale replaces 1/sqrt(D) in both estimation steps.
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/masks.hpp"
#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct PbsAttnParams {
  int block_size = 128;
  int segment_size = 256;
  std::vector<float> threshold{0.9f};
  bool force_select_first_block = true;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("block_size", &PbsAttnParams::block_size,
      "Block size b of the permuted block mask and of the query groups (>= 1; official 128).");
    v("segment_size", &PbsAttnParams::segment_size,
      "Permutation segment S, a multiple of block_size (official 256); lengths <= S run dense.");
    v("threshold", &PbsAttnParams::threshold,
      "Cumulative pooled-softmax threshold tau in (0, 1]: one value for every head (official 0.9) or one "
      "per query head; 1 takes every candidate block.");
    v("force_select_first_block", &PbsAttnParams::force_select_first_block,
      "Also select, for every query block, the permuted key block that holds token 0 (official True).");
  }
};

// The estimate: the permutation and the permuted block mask, run by
// spattn::permuted_block_attention (masks.hpp PermutedBlocksView).
struct PbsAttnEstimate {
  // (B, Hq, L) int32: perm[p] = original position of the key at permuted position p.
  std::vector<int32_t> perm;
  // (B, Hq, G, G) permuted block mask (selected | first-token block | own segment); in the dense
  // fallback every block at or left of the diagonal (identity permutation).
  BlockMask blocks;
  bool dense = false;  // L <= segment_size: dense causal, identity permutation
  PermutedBlocksView view(int L) const {
    return {perm.data(), blocks.blocks.data(), blocks.B, blocks.H, L, blocks.nqb, blocks.block_q};
  }
};

// Causal prefill (Nq == Nk) only: throws std::invalid_argument otherwise, and when threshold
// has neither 1 nor Hq values. Query head h reads kv head h / (Hq / Hkv).
PbsAttnEstimate estimate_pbs_attn(const AttnArgs& qk, const PbsAttnParams& p);

}  // namespace spattn
