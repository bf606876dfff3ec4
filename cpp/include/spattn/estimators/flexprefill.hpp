// FlexPrefill (Lai et al., "FlexPrefill: A Context-Aware Sparse Attention Mechanism for Efficient
// Long-Sequence Inference", ICLR 2025), following the official `get_active_blocks`.
// Defaults are the paper's experiment settings (gamma 0.9, tau 0.1, min_budget 1024 tokens,
// unlimited max_budget, block 128); the official function's own defaults are tau = 0 (query-aware
// switched off) and min_budget = 1 token.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "spattn/masks.hpp"
#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct FlexPrefillParams {
  float gamma = 0.9f;
  float tau = 0.1f;
  int min_budget = 1024;
  std::optional<int> max_budget;
  int block_size = 128;
  bool gqa_interleave = false;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("gamma", &FlexPrefillParams::gamma,
      "Coverage of the cumulative attention, in (0, 1] (paper: 0.9 for Yi/Qwen2, 0.95 for LLaMA-3.1/GLM-4).");
    v("tau", &FlexPrefillParams::tau,
      "sqrt-JS threshold, >= 0: heads below it are query-aware (paper: 0.1; the official default 0 disables them).");
    v("min_budget", &FlexPrefillParams::min_budget,
      "Minimum budget in tokens (>= 1), rounded up to blocks (paper: 1024; official default: 1).");
    v("max_budget", &FlexPrefillParams::max_budget, "Maximum budget in tokens (>= 1), or None for unlimited.");
    v("block_size", &FlexPrefillParams::block_size, "Square block size of the mask (>= 1).");
    v("gqa_interleave", &FlexPrefillParams::gqa_interleave,
      "Official option: query head h reads kv head h % Hkv (instead of h // (Hq/Hkv)) in the estimate.");
  }
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
// blocks of block_size, in the caller's head order (also with gqa_interleave). Throws
// std::invalid_argument for other shapes.
BlockMask estimate_flexprefill(const AttnArgs& qk, const FlexPrefillParams& p, FlexPrefillInfo* info);

}  // namespace spattn
