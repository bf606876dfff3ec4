// SeerAttention (Gao et al., "SeerAttention: Learning Intrinsic Sparse Attention in Your LLMs",
// 2024; microsoft/SeerAttention): block selection from the learned gate's scores (the gate
// forward is in spattn/learned/seer_gate.hpp) and the gate's training target.
#pragma once

#include <optional>

#include "spattn/masks.hpp"
#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct SeerParams {
  float threshold = 5e-4f;
  std::optional<float> nz_ratio;
  std::optional<int> topk;
  bool last_block_dense = true;
  int seed = 0;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("threshold", &SeerParams::threshold,
      "Keep blocks whose gate score is strictly above it (>= 0; used when neither nz_ratio nor topk is set; "
      "the README example's value, the official code default is 0.0).");
    v("nz_ratio", &SeerParams::nz_ratio,
      "Official top-k mode: every row keeps int((1 - sqrt(1 - nz_ratio)) * nb) blocks (>= 1), nz_ratio in (0, 1].");
    v("topk", &SeerParams::topk, "Every row keeps this many blocks (>= 1).");
    v("last_block_dense", &SeerParams::last_block_dense, "Keep the last two query-block rows whole (official default).");
    v("seed", &SeerParams::seed, "Seed of the untrained default gate (used when no gate is given).");
  }
};

// Block selection from gate scores (B, Hq, nb, nb) for n = Nq = Nk tokens in blocks of
// block_size: threshold / nz_ratio / topk, last rows dense, causal cut.
BlockMask seer_select(const float* scores, int B, int Hq, int n, int block_size, const SeerParams& p);

// Training target: exact attention max-pooled per (q block, kv block) with the final row
// statistics, each query-block row normalised to sum to 1 (rows with no mass stay 0).
void seer_ground_truth(const AttnArgs& qk, int block_size, float* target);

}  // namespace spattn
