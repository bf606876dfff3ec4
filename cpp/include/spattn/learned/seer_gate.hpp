// SeerAttention's prefill AttnGate in inference form (microsoft/SeerAttention): pool q and k per
// block (q: the `q_pool` kinds, k: the `k_pool` kinds, channels concatenated in the order max,
// min, avg), project per head without bias (q: identity when wq is null), rotate-half RoPE at
// block-start positions, scores (Qg . Kg^T) / sqrt(hidden) with the causal block mask, softmax
// per query-block row (frequencies from rope_theta or given, e.g. llama3-scaled). The weights
// are trained in Python (spattn.methods.seerattention).
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
  // Optional RoPE inverse frequencies, n_freq <= hidden / 2 values (e.g. llama3-scaled ones from a
  // model config): when set they replace theta^(-2f/hidden) and RoPE rotates the first 2 * n_freq
  // channels (rotate-half within them; the rest pass unchanged, as the official partial rotary
  // when the model's head_dim is below the gate hidden size); rope_theta only switches RoPE on.
  const float* inv_freq = nullptr;
  int n_freq = 0;
};

// Gate scores (B, Hq, nb, nb): softmax per query-block row, 0 above the block diagonal.
// Needs Nq == Nk. `scores` has B*Hq*nb*nb floats.
void seer_gate_scores(const AttnArgs& qk, const SeerGate& gate, int block_size, float* scores);

}  // namespace spattn
