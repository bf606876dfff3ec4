// Double Sparsity (Yang et al., "Post-Training Sparse Attention with Double Sparsity", 2024),
// following andy-yang-1/DoubleSparse (HEAD b0575e6), LongBench/modify_llama.py
// `LlamaAttention_heavy_hitter.forward` (the accuracy path behind the LongBench tables):
//
// per query head h (after repeat_kv: no sharing inside a GQA group), a label of r channels of q and
// of every cached key, either the r = D / group_factor outlier channels of a calibrated ranking
// (`sorted_channel[h][:r]`, optionally pseudo-quantized per vector to label_bits) or, without a
// ranking, the means of group_factor consecutive channels; approximate scores s_t = q_label .
// k_label_t; the top heavy_const tokens by s (every token when kv_len <= heavy_const), nothing
// forced (no sink, no recent window); exact attention over them.
//
// The labels are built by the decode cache's state (python/spattn/methods/doublesparse.py); this
// estimator ranks them. Deviations: the 1 / sqrt(r) factor is left out (it does not change the
// order); scores are float32 SIMD products (official: fp16 matmul); ties go to the lower token index
// (torch.sort leaves them unspecified); a NaN score ranks first (as torch.sort descending).
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct DoubleSparseParams {
  int heavy_const = 256;
  int group_factor = 2;
  int label_bits = 4;
  int dense_layers = 2;
  bool statistical_topk = false;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("heavy_const", &DoubleSparseParams::heavy_const,
      "Tokens kept per query head (>= 1): 256, the LongBench pred.py default (perplexity_eval.py: 128).");
    v("group_factor", &DoubleSparseParams::group_factor,
      "Label width r = D / group_factor channels (>= 1, divides D): 2, the pred.py / perplexity_eval.py default.");
    v("label_bits", &DoubleSparseParams::label_bits,
      "Bits of the per-vector min/max pseudo-quantization of calibrated labels, 1..16 (16: none): 4, what the "
      "official LongBench path runs (convert_kvcache_llama_heavy_recent drops --q_bits when it recurses).");
    v("dense_layers", &DoubleSparseParams::dense_layers,
      "Layers 0 .. dense_layers - 1 run dense (official: 2); read by the decode call over a KV cache.");
    v("statistical_topk", &DoubleSparseParams::statistical_topk,
      "Keep the tokens above the statistical top-k threshold (mean + std Phi^-1(1 - heavy_const / N) of the "
      "label scores, Spark Transformer; a variable count per head) instead of the exact top heavy_const. "
      "Not official.");
  }
};

// Selected key positions (B, Hq, 1, K), ascending, -1 padded, K written to *K: the top heavy_const
// of s_t = q_label[b, h] . labels[b, h / (Hq / Hl), t] for t < kv_len, with q_label (B, Hq, 1, r)
// and labels (B, Hl, capacity, r) (shape: Hq, Hkv = Hl, Nq = 1, Nk = kv_len, D = r,
// kv_capacity = capacity).
std::vector<int32_t> estimate_doublesparse(const float* q_label, const float* labels, const AttnShape& s,
                                           const DoubleSparseParams& p, int* K);

}  // namespace spattn
