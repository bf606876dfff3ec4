// StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR
// 2024) as the block "A-shape" of MInference: the first `sink_tokens` keys plus a local window of
// `local_tokens` keys ending at each query's causal limit. Non-causal calls use a window centred
// on the (bottom-right aligned) diagonal. Mask shared by all heads (H = 1).
#pragma once

#include "spattn/masks.hpp"
#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct StreamingParams {
  int block_size = 64;
  int sink_tokens = 128;
  int local_tokens = 1024;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("block_size", &StreamingParams::block_size, "Block size of the mask (>= 1).");
    v("sink_tokens", &StreamingParams::sink_tokens, "Initial keys every query keeps, rounded up to whole blocks (>= 0).");
    v("local_tokens", &StreamingParams::local_tokens,
      "Width of the window ending at each query's causal limit (centred when not causal); every block it touches is kept (>= 0).");
  }
};

// Reads only qk.shape (B, Nq, Nk) and qk.causal.
BlockMask estimate_streaming(const AttnArgs& qk, const StreamingParams& p);

}  // namespace spattn
