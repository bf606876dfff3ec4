// TokenSelect (Wu et al., "TokenSelect: Efficient Long-Context Inference and Length Extrapolation
// for LLMs via Dynamic Token-Level KV Cache Selection", 2024), following pzs19/TokenSelect HEAD
// 8e1e97f, patcher/token_retrieval.py `TokenRetriever.retrieval_indices` / `get_topk_tokens`, with
// the release configs' defaults (config/*-token-retrieval.yaml):
//
// 1. N keys in the cache (the current one included); when n_init + top_k + n_local >= N every
//    key is attended;
// 2. candidates [n_init, N - n_local); per query head h the unscaled criticality q_h . k_t, a
//    softmax over the candidates, summed over the heads (soft voting);
// 3. optional max-pool smoothing (kernel_size > 0, stride 1, padding (k - 1) // 2; an even
//    kernel shortens the scores by one, as torch does);
// 4. the top_k candidates, ascending, plus the n_init sinks and the n_local newest keys: one list
//    shared by every head of the layer.
//
// Deviations (see the .cpp): the scores use the post-RoPE q and k the attention receives (the
// official SGLang path keeps keys without RoPE and rotates the query to position n_local,
// QUERY_ROTATE); query head h reads kv head h / (Hq / Hkv) (the official Triton kernel uses
// h % Hkv, `gqa_interleave`); float32 scores; ties to the lower position.
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct TokenSelectParams {
  int n_init = 128;
  int n_local = 512;
  int top_k = 2048;
  int kernel_size = 0;
  bool gqa_interleave = false;
  int dense_layers = 0;
  bool statistical_topk = false;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("n_init", &TokenSelectParams::n_init, "Initial keys always attended (attention sinks; release configs 128).");
    v("n_local", &TokenSelectParams::n_local, "Newest keys always attended (release configs 512).");
    v("top_k", &TokenSelectParams::top_k, "Candidate keys selected by the voted criticality (release configs 2048).");
    v("kernel_size", &TokenSelectParams::kernel_size,
      "Max-pool smoothing of the voted scores (stride 1, padding (k - 1) // 2); 0: off (the release default, "
      "-1 in the official config; its benchmarks pass per-task values).");
    v("gqa_interleave", &TokenSelectParams::gqa_interleave,
      "Score query head h against kv head h % Hkv, as the official Triton kernel does (default: h // (Hq/Hkv)).");
    v("dense_layers", &TokenSelectParams::dense_layers,
      "Layers 0 .. dense_layers - 1 run dense (official: 0, every layer selects); read by the decode call over "
      "a KV cache.");
    v("statistical_topk", &TokenSelectParams::statistical_topk,
      "Keep the candidates above the statistical top-k threshold (mean + std Phi^-1(1 - top_k / candidates) of "
      "the voted scores, Spark Transformer; a variable count) instead of the exact top_k. Not official.");
  }
};

// The selected keys of one decode step: q (B, Hq, 1, D) against k (the cache's first Nk rows,
// kv_capacity respected). Returns (B, Hq, 1, K) int32, ascending, the same list for every head
// (K = Nk when dense); `K` receives the width.
std::vector<int32_t> estimate_tokenselect(const AttnArgs& qk, const TokenSelectParams& p, int* K);

}  // namespace spattn
