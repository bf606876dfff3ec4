// SeerAttention's prefill AttnGate in inference form (microsoft/SeerAttention): pool q and k per
// block (q: the `q_pool` kinds, k: the `k_pool` kinds, channels concatenated in the order max,
// min, avg), project per head without bias (q: identity when wq is null), rotate-half RoPE at
// block-start positions, scores (Qg . Kg^T) / sqrt(hidden) with the causal block mask, softmax
// per query-block row. The weights are trained in Python (spattn.methods.seerattention).
#pragma once

#include <vector>

#include "spattn/selection.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct SeerGate {
  int hidden = 0;               // gate hidden size
  std::vector<PoolKind> q_pool; // e.g. {Avg}
  std::vector<PoolKind> k_pool; // e.g. {Max, Min, Avg}
  const float* wq = nullptr;    // (Hq, |q_pool| * D, hidden) or null = identity (|q_pool| == 1, hidden == D)
  const float* wk = nullptr;    // (Hw, |k_pool| * D, hidden), Hw = Hq (per query head) or Hkv
  int wk_heads = 0;
  float rope_theta = 10000.f;   // <= 0 disables the gate RoPE
};

// Gate scores (B, Hq, nb, nb): softmax per query-block row, 0 above the block diagonal.
// Needs Nq == Nk. `scores` has B*Hq*nb*nb floats.
void seer_gate_scores(const AttnArgs& qk, const SeerGate& gate, int block_size, float* scores);

}  // namespace spattn
