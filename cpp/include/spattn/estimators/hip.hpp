// HiP attention (Lee et al., "A Training-Free Sub-quadratic Cost Transformer Model Serving Framework
// With Hierarchically Pruned Attention", ICLR 2025), following the authors' v1.0 code
// (DeepAuto-AI/hip-attention, src/hip_attn/v1_0: hip_attention, hip_attention_mask, masking_iteration /
// _masking_iteration_topk, safe_indices, calc_prob_return_context). Per query head and query block of
// block_size_q queries starting at b0, with tsrc = min(b0 + max(bq, bk) + Nk - Nq, Nk) keys searched (Nk when
// not causal):
//
//  1. the key range is cut into nodes of block_size_k keys at the resolution w = round(w_start / scale_up)
//     (w_start = ceil(mask_k * scale_up)): nodes 0 .. ceil(min(tsrc, w) / bk) - 1;
//  2. while w < tsrc: w' = min(round(w * scale_up), tsrc), b = ceil(w / bk), b' = ceil(w' / bk); node j
//     becomes the children floor(j b' / b) .. floor((j + 1) b' / b) - 1 at resolution b'; a child c is
//     scored by its representative key block t = floor(c tsrc / b') clamped to [0, tsrc) and rounded down
//     to a multiple of bk ("first" sampling): the max of q_i . k_t' over the scoring rows i (every
//     reduce_stride-th query of the block, the official row layout) and t' in [t, t + bk), pairs with
//     i + Nk - Nq < t' + max(0, window - bq - bk) ignored when causal; the k' = max(n_patches/bk,
//     floor(min(1, (mask_k/bk) / ceil(tsrc/bk)) b')) best children (at most ceil(tsrc/bk)) are kept;
//  3. the final nodes j at resolution ceil(tsrc/bk) become key blocks col = ceil(j tsrc / (bk ceil(tsrc/bk))),
//     each pushed to at least the previous col + 1 (safe_indices "biased"), keys [col bk, col bk + bk);
//  4. attended keys: the sink [0, num_sink bk), the selected blocks and the window [e - window, e) with
//     e = block start + bq + Nk - Nq, each once (the kernel applies the causal rule).
// With estimator_lower_resolution r > 1 (official 2, used when mask_k / bk > 64) the search runs with
// mask_k, w_start, n_patches divided by r and each final node is repeated r times before step 3.
// Causal prompts (Nq > 32): the first dense_queries_exp - Nk + Nq queries attend densely.
//
// Deviations (each also in the Python docstring): exact integer location arithmetic (the official
// float32/float64 locations can move a node or column by one); ties in the top-k go to the lower child
// positions (the official kth-value threshold fills its last slot in an unspecified order); children
// whose every scoring pair is ignored rank after all others, by their largest dot (the official scores
// them 32000 - dot in float32 beside padding slots scored 32000, and with reduce_stride > 1 runs its
// top-k even when every child is kept, so such a child with a negative dot loses its slot to a padding
// entry of location 0; here it is kept); float32 dot products (the official fp16 tensor-core products of scaled q and k); the
// dense prefix is rounded up to a whole query block so the groups stay aligned; scale_up is an integer
// (the official float, default 2); a block whose search never iterates (tsrc <= w) keeps all its
// nodes (the official leaves ws/ks uninitialised there);
// SparQ (enable_sparq), "random" sampling and the grid-strided search of the official short-query path
// (Nq <= 32, decode included: grid_src_stride = grid_k_stride = 16) are not ported: such calls run the
// prompt search above.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct HipParams {
  int mask_k = 512;
  int block_size_q = 32;
  int block_size_k = 2;
  int scale_up = 2;
  int reduce_stride = 2;
  int sliding_window_size = 128;
  std::optional<int> num_sink;
  std::optional<int> dense_queries_exp;
  int estimator_lower_resolution = 2;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("mask_k", &HipParams::mask_k, "K: selected key tokens per query block (>= 1; official 512).");
    v("block_size_q", &HipParams::block_size_q,
      "bq: queries sharing one key list (>= 1; official 32; min(bq, next_pow2(Nq)) is used, as the official).");
    v("block_size_k", &HipParams::block_size_k,
      "bk: keys per tree leaf (>= 1; official 2; min(bk, next_pow2(Nk)) is used, as the official).");
    v("scale_up", &HipParams::scale_up, "Branching factor of the tree: children per node (>= 2; official 2).");
    v("reduce_stride", &HipParams::reduce_stride,
      "Query row stride of the representative scoring (>= 1; official 2: rows 0, 2, 4, ... of the block).");
    v("sliding_window_size", &HipParams::sliding_window_size,
      "Window of keys before each query block's end, always attended (>= 0; official 128; 0 turns off "
      "the window and the sink, as using_sliding_window=False).");
    v("num_sink", &HipParams::num_sink,
      "Sink key blocks of bk tokens always attended (>= 0; None: the official ceil(32 / bk)).");
    v("dense_queries_exp", &HipParams::dense_queries_exp,
      "Causal prompts (Nq > 32): the first dense_queries_exp - Nk + Nq queries attend densely (None: the "
      "official int((log2(Nk / K / 2) K + K) 3); 0: no dense prefix).");
    v("estimator_lower_resolution", &HipParams::estimator_lower_resolution,
      "r: search with K, w_start, n_patches divided by r and repeat each result r times (>= 1; official 2, "
      "used only when ceil(K / bk) > 64).");
  }
};

// One query-block list of key positions per group of `group_size` queries (TokenIndices rows,
// ascending, -1 padded) and, per group, the selected leaf count after the search (ks; -1 for the dense
// prefix groups) and the number of dense prefix queries (rounded up to a whole group).
struct HipEstimate {
  int groups = 0, group_size = 1, K = 0;
  int dense_queries = 0;
  std::vector<int32_t> indices;  // (B, Hq, groups, K)
  std::vector<int32_t> ks;       // (B, Hq, groups)
};

// Causal or not; Nq <= Nk (decode Nq == 1 runs the prompt search, see above). prefix_rows false:
// the groups of the dense prefix get empty lists (the caller runs those queries with the dense
// kernel), so K stays the sparse rows' width instead of the prefix's key count.
HipEstimate estimate_hip(const AttnArgs& qk, const HipParams& p, bool prefix_rows = true);

}  // namespace spattn
