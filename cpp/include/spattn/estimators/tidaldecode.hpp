// TidalDecode (Yang et al., "TidalDecode: Fast and Accurate LLM Decoding with Position Persistent
// Sparse Attention", ICLR 2025), following DerrickYLJ/TidalDecode HEAD d67a1bd, the reference
// (HF) path src/tidal_build/modify_llama.py `llama_tidal_attention_forward`:
//
// at a token-selection layer, per batch and query head h (K repeated over the GQA group, so the
// heads of a group choose independently; nothing shared), the exact logits q_h . k_t over every
// cached token and the top min(N, top_k) of them; the layer itself attends every token, and the
// later layers reuse head h's positions (the layer plan: python/spattn/layer_plan.py). Nothing is
// forced (no sink, no recent window).
//
// Deviations: float32 logits (official: model dtype) and unscaled (the 1/sqrt(D) factor does not
// change the order); ties go to the lower position (torch.topk leaves them unspecified); a NaN logit
// ranks above every number (as torch.topk).
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct TidalDecodeParams {
  int top_k = 256;
  int sparse_layer_start = 2;
  int correction_layer = 13;
  bool statistical_topk = false;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("top_k", &TidalDecodeParams::top_k,
      "Tokens kept per query head (>= 1): 256, the enable_tidal default (the demo script passes 128, the "
      "LongBench scripts 4096).");
    v("sparse_layer_start", &TidalDecodeParams::sparse_layer_start,
      "The first token-selection layer (official 2): layers below it run dense, it attends every token and "
      "selects; read by the decode call over a KV cache through the layer plan.");
    v("correction_layer", &TidalDecodeParams::correction_layer,
      "The re-selection layer (official scripts 13; the function default is 9): dense attention and a new "
      "selection for the layers above it; a value <= sparse_layer_start means none.");
    v("statistical_topk", &TidalDecodeParams::statistical_topk,
      "Keep the tokens above the statistical top-k threshold (mean + std Phi^-1(1 - top_k / N) of the head's "
      "logits, Spark Transformer; a variable count per head) instead of the exact top_k. Not official.");
  }
};

// Per query head, the positions of the top_k largest logits of q (B, Hq, 1, D) over the first Nk rows
// of k (kv_capacity respected): (B, Hq, 1, K) int32, ascending, -1 padded (K = min(Nk, top_k) for the
// exact selection); `K` receives the width.
std::vector<int32_t> estimate_tidaldecode(const AttnArgs& qk, const TidalDecodeParams& p, int* K);

}  // namespace spattn
