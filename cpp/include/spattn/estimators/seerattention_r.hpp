// SeerAttention-R decode selection (Gao et al., "SeerAttention-R: Sparse Attention Adaptation for
// Long Reasoning", 2025), following microsoft/SeerAttention (HEAD aba03e3),
// seer_attn/decode_sparse/attn_gate_inf.py: `get_sparse_attn_mask_from_budget`,
// `get_sparse_attn_mask_from_threshold` and the forced last block of `AttnGate.forward`.
//
// Input: the gate's block probabilities of one decode step, probs (B, Hkv, nb) float32 (softmax
// over the nb = ceil(kv_len / block_size) cache blocks, one distribution per KV head; the gate
// itself -- q pooled over the GQA group, pooled block keys, projections, RoPE -- is computed in
// python/spattn/methods/seerattention_r.py). Selection per KV head:
//   token budget (default): block_budget = token_budget / block_size (floor); nb <= block_budget:
//     every block; otherwise the top block_budget blocks among all nb (the partial last block
//     included, as the official top-k runs over every column);
//   threshold: blocks with prob > threshold (strict);
// then the last block (the one holding the newest token, possibly partial) is always added.
// Blocks become token positions [b * block_size, min((b + 1) * block_size, kv_len)), ascending;
// every query head of a GQA group (query head h reads kv head h / (Hq / Hkv)) gets its kv head's
// list. Deviations: ties go to the lower block (torch.topk leaves them unspecified); a NaN
// probability ranks above every number in top-k (as torch.topk) and is not kept by the
// threshold (NaN > t is false, as in torch).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "spattn/params.hpp"

namespace spattn {

struct SeerAttentionRParams {
  int token_budget = 4096;
  std::optional<float> threshold;
  int dense_layers = 0;
  int seed = 0;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("token_budget", &SeerAttentionRParams::token_budget,
      "Tokens attended per KV head in token-budget mode (>= 1): the top token_budget // block_size blocks by "
      "gate score, plus the last block (official seerattn_token_budget default and README example: 4096).");
    v("threshold", &SeerAttentionRParams::threshold,
      "None: token-budget selection (seerattn_sparsity_method='token_budget'); a number: keep blocks whose "
      "gate probability is strictly above it (sparsity_method='threshold'; the README's typical range "
      "5e-4 .. 5e-3), plus the last block.");
    v("dense_layers", &SeerAttentionRParams::dense_layers,
      "Layers 0 .. dense_layers - 1 run dense (official seerattn_start_layer: 0); read by the decode call "
      "over a KV cache.");
    v("seed", &SeerAttentionRParams::seed, "Seed of the untrained default gate (used when no gate is given).");
  }
};

// Selected key positions (B, Hq, 1, K), ascending, -1 padded; K (the widest row) written to *K.
std::vector<int32_t> seer_r_select(const float* probs, int B, int Hkv, int Hq, int nb, int block_size, int kv_len,
                                   const SeerAttentionRParams& p, int* K);

}  // namespace spattn
