// AnchorAttention (Zhang et al., "AnchorAttention: Difference-Aware Sparse Attention with
// Stripe Granularity", EMNLP 2025, arXiv 2505.23520), following the authors' code `anchorattn`
// (anchorattn_step_1 / get_mask_fused_anchor_triton, anchorattn_step_2 / get_q_mask_triton, the torch
// reference get_mask_block, _triton_stripe_sparse_attn_fwd_kernel_step3). With b = block_size,
// s = step and the big block G = b * s (2048 by default), for query i in big block g = i / G:
//
//  1. anchor a_i = max of the logits scale q_i . k_j over R(i) = the first G keys and the query's
//     own big block [g G, i] (causal);
//  2. per big block, pooled queries qbar_r and pooled anchors abar_r = means over each sub-block r
//     of b queries; candidate key j is a stripe of the big block iff for some r
//     scale qbar_r . k_j + theta >= abar_r. Candidates are [b, g G - b) (official_candidates, the
//     official get_q_mask* / get_mask_block range: for g >= 1 stripes below G are counted twice in
//     step 3, and keys [g G - b, g G) are never attended for g >= 2) or [G, g G) (the older fused
//     kernel's range: every key once, no gap);
//  3. attention of each query over R(i) plus the stripes of its big block (in the official code a
//     continuation of step 1's online softmax).
//
// Deviations: everything in float32 and natural-log units (the official kernels compare in log2
// units after bf16/fp16 casts of the pooled logits and anchors); lengths that are not multiples
// of G (the official code asserts N % G == 0) pool the last, partial sub-block over its real rows
// only, as get_mask_block does for a partial last big block; any block_size, step >= 1 (the
// official Triton kernels take block_size in {16..256}, step in {16, 32}). GQA: query head h reads
// kv head h / (Hq / Hkv) (the official code runs after repeat_kv); anchors and stripes per query head.
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct AnchorAttentionParams {
  int block_size = 128;
  int step = 16;
  float theta = 12.f;
  bool official_candidates = true;

  void validate() const;
  // The big block G = block_size * step (validated to fit an int).
  int big_block() const { return block_size * step; }
  template <class V>
  static void fields(V&& v) {
    v("block_size", &AnchorAttentionParams::block_size,
      "b: queries per pooled sub-block and candidate key block (>= 1; the official block_size 128).");
    v("step", &AnchorAttentionParams::step,
      "s: sub-blocks per big block G = b * s, the query group sharing one stripe list (>= 1; the official 16).");
    v("theta", &AnchorAttentionParams::theta,
      "Difference threshold in natural-log logits: a stripe's pooled logit must reach the pooled anchor minus "
      "theta (finite; the official difference 12, larger = denser).");
    v("official_candidates", &AnchorAttentionParams::official_candidates,
      "True: candidates [b, g G - b) as the official get_q_mask / get_mask_block (stripes below G counted twice, "
      "keys [g G - b, g G) never attended); False: candidates [G, g G) (the older fused kernel).");
  }
};

// The estimate: per (batch, query head, big block) the stripes (the official true_coords / counts)
// and the set of attended keys as TokenIndices rows (init keys, stripes, own big block; ascending,
// duplicates dropped, -1 padded), group_size = min(G, Nq). Anchors (B, Hq, N) in natural-log units.
struct AnchorAttentionEstimate {
  int groups = 0, group_size = 1;
  int K = 0;                      // entries per index row
  std::vector<int32_t> indices;   // (B, Hq, groups, K)
  int S = 0;                      // entries per stripe row
  std::vector<int32_t> stripes;   // (B, Hq, groups, S), ascending, -1 padded
  std::vector<int32_t> counts;    // (B, Hq, groups)
  std::vector<float> anchors;     // (B, Hq, N)
};

// Causal prefill (Nq == Nk) only.
AnchorAttentionEstimate estimate_anchor_attention(const AttnArgs& qk, const AnchorAttentionParams& p);

}  // namespace spattn
