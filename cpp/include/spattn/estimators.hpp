// Mask estimators: one pure function per method, `estimate_<method>(inputs, params) -> mask`,
// with a parameter struct carrying the paper's defaults. Shared building blocks (pooling,
// selection, divergences) are declared in spattn/selection.hpp.
#pragma once

#include <vector>

#include "spattn/masks.hpp"
#include "spattn/selection.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

// StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks", 2024)
// as the block "A-shape" of MInference: the first `sink_tokens` keys plus a local window of
// `local_tokens` keys ending at each query's causal limit. Non-causal calls use a window
// centred on the (bottom-right aligned) diagonal. Mask shared by all heads (H = 1).
struct StreamingParams {
  int block_size = 64;
  int sink_tokens = 128;
  int local_tokens = 1024;
};
BlockMask estimate_streaming(const AttnShape& shape, bool causal, const StreamingParams& p);

// Oracle: for each (batch, query head, q-block) the smallest set of kv blocks whose exact
// attention mass (block sums of softmax probabilities, averaged over the block's rows that see
// a key) reaches gamma. Ties broken towards the lower block index. Mask per query head.
struct OracleParams {
  int block_size = 64;
  float gamma = 0.9f;
};
BlockMask estimate_oracle_topk(const AttnArgs& qk, const OracleParams& p);

}  // namespace spattn

namespace spattn {

// FlexPrefill (Lai et al., "FlexPrefill: A Context-Aware Sparse Attention Mechanism for
// Efficient Long-Sequence Inference", ICLR 2025), following the official `get_active_blocks`.
// Defaults are the paper's experiment settings (gamma 0.9, tau 0.1, min_budget 1024 tokens,
// unlimited max_budget, block 128); the official function's own defaults are tau = 0 (query-aware
// switched off) and min_budget = 1 token.
struct FlexPrefillParams {
  float gamma = 0.9f;     // coverage of the cumulative attention
  float tau = 0.1f;       // sqrt-JS threshold: d < tau -> query-aware head
  int min_budget = 1024;  // tokens, converted to ceil(min_budget / block_size) blocks
  int max_budget = -1;    // tokens; <= 0 = unlimited
  int block_size = 128;
};

enum class FlexPattern : int8_t { VerticalSlash = 0, QueryAware = 1, Dense = 2 };

// Per (b, query head) readouts: the chosen pattern, the sqrt-JS distance (NaN when not computed
// or when the official formula gives NaN), the vertical / slash budgets in blocks.
struct FlexPrefillInfo {
  std::vector<int8_t> pattern;
  std::vector<float> js;
  std::vector<int> n_vertical, n_slash;
};

// Causal prefill (Nq == Nk) or decode (Nq == 1, dense). Mask per query head (H = Hq), square
// blocks of block_size. Throws std::invalid_argument for other shapes.
BlockMask estimate_flexprefill(const AttnArgs& qk, const FlexPrefillParams& p, FlexPrefillInfo* info);

}  // namespace spattn

namespace spattn {

// SeerAttention prefill AttnGate (Gao et al., "SeerAttention: Learning Intrinsic Sparse
// Attention in Your LLMs", 2024), following microsoft/SeerAttention's prefill gate:
// pool q and k per block (q: the `q_pool` kinds, k: the `k_pool` kinds, channels concatenated
// in the order max, min, avg), project per head without bias (q: identity when wq is null),
// rotate-half RoPE at block-start positions, scores (Qg . Kg^T) / sqrt(hidden) with the causal
// block mask, softmax per query-block row.
struct SeerGate {
  int hidden = 0;               // gate hidden size
  std::vector<PoolKind> q_pool; // e.g. {Avg}
  std::vector<PoolKind> k_pool; // e.g. {Max, Min, Avg}
  const float* wq = nullptr;    // (Hq, |q_pool| * D, hidden) or null = identity (|q_pool| == 1, hidden == D)
  const float* wk = nullptr;    // (Hw, |k_pool| * D, hidden), Hw = Hq (per query head) or Hkv
  int wk_heads = 0;
  float rope_theta = 10000.f;   // <= 0 disables the gate RoPE
};

enum class SeerSelect { Threshold, NzRatio, TopK };

struct SeerParams {
  int block_size = 64;
  SeerSelect mode = SeerSelect::Threshold;
  float threshold = 5e-4f;      // keep blocks with gate score > threshold (strict)
  float nz_ratio = 0.1f;        // rows keep int((1 - sqrt(1 - r)) * nb) blocks (>= 1)
  int topk = 8;                 // rows keep this many blocks
  bool last_block_dense = true; // last two query-block rows fully kept (official default)
};

// Gate scores (B, Hq, nb, nb): softmax per query-block row, 0 above the block diagonal.
// Needs Nq == Nk. `scores` has B*Hq*nb*nb floats.
void seer_gate_scores(const AttnArgs& qk, const SeerGate& gate, int block_size, float* scores);

// Block selection from gate scores (threshold / nz_ratio / topk, last rows dense, causal cut).
BlockMask seer_select(const float* scores, int B, int Hq, int n, const SeerParams& p);

// Training target: exact attention max-pooled per (q block, kv block) with the final row
// statistics, each query-block row normalised to sum to 1 (rows with no mass stay 0).
void seer_ground_truth(const AttnArgs& qk, int block_size, float* target);

}  // namespace spattn

namespace spattn {

// SEA (Lee et al., "SEA: Sparse Linear Attention with Estimated Attention Mask", ICLR 2024),
// training-free estimator: each query's attention row is estimated in a compressed key space of
// `width` columns with kernel-based linear attention (FAVOR+ positive random features,
// Choromanski et al. 2021). Column c of query i covers keys [round(c L_i / width),
// round((c+1) L_i / width)) of its own visible prefix L_i (the official per-query grid), so
// est[i, c] = phi(q_i) . (Z[b_c] - Z[a_c]) / phi(q_i) . Z[L_i] with Z the prefix sums of phi(k):
// O(N (m D + width m)) per head and O(N m) memory.
struct SeaParams {
  int width = 128;      // compressed key space (attention_predictor_length)
  int k = 64;           // average keys per query per head (official meaning)
};

// Random-feature estimate (B, Hq, Nq, width), rows sum to 1 over the columns that cover keys.
// `features` is the (m x D) projection (orthogonal random features, drawn by the caller).
void sea_estimate(const AttnArgs& qk, const float* features, int m, const SeaParams& p, float* est);

// Grouped top-k over heads (official causal_batch): for each (b, query) keep the top
// n_i = clamp(round(Hq k width / L_i), 1, Hq width) entries of the Hq rows of `est`
// concatenated (ties to the lower flat index), expand each kept column to its key range capped
// at k keys (the last k of the range), and list the keys per (b, head, query), sorted.
// Queries with L_i <= k keep their whole prefix. Returns K_max slots per row (-1 padded).
std::vector<int32_t> sea_select(const float* est, const AttnShape& s, bool causal, const SeaParams& p, int* k_max);

}  // namespace spattn

namespace spattn {

// SEA decoder inference (see python/spattn/sea.py): x = log(est + 1e-6); two 3x3 convolutions
// causal in time (dilation `dil`, zero padding) with ReLU; z = x + w3 h2 + b3 + bias[h, col];
// softmax over the columns with keys (counts > 0). Weights: w1 (C, H, 3, 3), b1 (C),
// w2 (C, C, 3, 3), b2 (C), w3 (H, C), b3 (H), bias (H, W). est/out: (B, H, T, W); counts (T, W).
struct SeaDecoderWeights {
  int C = 0, H = 0, W = 0, dil = 2;
  const float *w1, *b1, *w2, *b2, *w3, *b3, *bias;
};
void sea_decoder_refine(const float* est, int B, int T, const int32_t* counts, const SeaDecoderWeights& w, float* out);

}  // namespace spattn
