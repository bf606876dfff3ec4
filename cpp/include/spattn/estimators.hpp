// Mask estimators: one pure function per method, `estimate_<method>(inputs, params) -> mask`,
// with a parameter struct carrying the paper's defaults. Shared building blocks (pooling,
// selection, divergences) are declared in spattn/selection.hpp.
#pragma once

#include <vector>

#include "spattn/masks.hpp"
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
