// MInference vertical-slash estimator (Jiang et al., "MInference 1.0: Accelerating Pre-filling
// for Long-Context LLMs via Dynamic Sparse Attention", NeurIPS 2024), following
// microsoft/MInference HEAD fb56c91, minference/modules/minference_forward.py
// `minference_prefill_kernel` -> `vertical_and_slash_kernel`:
//
// 1. v' = min(L, max(vertical_size, 30)), s' = min(L, max(slash_size, 50)), n = min(64, L);
// 2. the last n queries attend causally to every key, row softmax in float32;
// 3. vertical score of key j = sum over those rows of p_ij; the first 30 keys forced (+inf);
//    top v' keys;
// 4. slash score of offset o = sum over rows of p at key (query position - o); offsets 0..99
//    forced (+inf); top s' offsets;
// 5. verticals sorted ascending, offsets descending: the inputs of the official
//    `vertical_slash_sparse_attention`, executed token-exactly by spattn::vertical_slash_attention.
// Causal prefill (Nq == Nk) only, as the official code. GQA as its callers (repeat_kv): one index
// set per query head, query head h reading kv head h / (Hq / Hkv).
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/masks.hpp"
#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct MInferenceVerticalSlashParams {
  std::vector<int> vertical_size{1000};
  std::vector<int> slash_size{6096};
  int last_q = 64;
  int forced_vertical = 30;
  int forced_slash = 100;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("vertical_size", &MInferenceVerticalSlashParams::vertical_size,
      "Vertical lines kept (>= 1): one value for every head or one per query head; the official default "
      "1000 (the per-head value of a searched config). Raised to at least 30 and capped at L, as official.");
    v("slash_size", &MInferenceVerticalSlashParams::slash_size,
      "Slash (diagonal) lines kept (>= 1): one value or one per query head; official default 6096. Raised "
      "to at least 50 and capped at L, as official.");
    v("last_q", &MInferenceVerticalSlashParams::last_q,
      "Queries (the last ones) whose attention scores the lines (official 64; min(64, L) rows).");
    v("forced_vertical", &MInferenceVerticalSlashParams::forced_vertical,
      "First keys always kept as vertical lines (official 30).");
    v("forced_slash", &MInferenceVerticalSlashParams::forced_slash,
      "Nearest diagonals (offsets 0 .. forced_slash - 1) always kept (official 100 in the prefill kernel; "
      "30 in its static variant).");
  }
};

// The estimate: per (b, query head) ascending verticals (B, H, NV) and descending offsets
// (B, H, NS), -1 padded at the row ends (per-head sizes differ), for length `len`.
struct VerticalSlashIndices {
  std::vector<int32_t> vertical, slash;
  int B = 0, H = 0, NV = 0, NS = 0, len = 0;
  VerticalSlashView view(int block = 64) const {
    return {vertical.data(), slash.data(), B, H, NV, NS, block, len};
  }
};

// Throws std::invalid_argument unless causal and Nq == Nk, and when a per-head size list has
// neither 1 nor Hq values.
VerticalSlashIndices estimate_minference_vertical_slash(const AttnArgs& qk, const MInferenceVerticalSlashParams& p);

}  // namespace spattn
