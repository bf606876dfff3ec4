// MInference A-shape (Jiang et al., "MInference 1.0", NeurIPS 2024; StreamingLLM's sinks + local
// window, Xiao et al., ICLR 2024), following microsoft/MInference HEAD fb56c91
// minference/ops/streaming_kernel.py `streaming_forward(q, k, v, n_init, n_local)`: query at
// position p (bottom-right aligned) sees key j iff j <= p and (p - j < n_local or j < n_init).
// Token-level: there is nothing to estimate; the pattern runs on spattn::window_attention.
// Defaults are the official `a_shape` attention type's (minference/models_patch.py: n_local 3968,
// n_init 128).
#pragma once

#include "spattn/kernels.hpp"
#include "spattn/params.hpp"

namespace spattn {

struct MInferenceAShapeParams {
  int n_init = 128;
  int n_local = 3968;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("n_init", &MInferenceAShapeParams::n_init, "Initial keys (attention sinks) every query sees (official 128).");
    v("n_local", &MInferenceAShapeParams::n_local,
      "Local window: keys with p - j < n_local, the query's own key included (official 3968).");
  }
  // The window kernel's spec: sinks n_init, left n_local - 1, causal.
  WindowSpec window() const { return {n_init, (long long)n_local - 1, 0}; }
};

}  // namespace spattn
