// SEA (Lee et al., "SEA: Sparse Linear Attention with Estimated Attention Mask", ICLR 2024):
// the official key selection from a compressed estimate, and a training-free estimate (not the
// paper's: the paper learns an encoder and CNN decoder, python/spattn/methods/sea.py). The
// training-free estimate is kernel-based linear attention (FAVOR+ positive random features,
// Choromanski et al. 2021) with the accuracy-grid column indicators (sea_grid.hpp) as values:
// est[i, c] = phi(q_i) . (Z[b_c] - Z[a_c]) / phi(q_i) . Z[L_i] with Z the prefix sums of phi(k):
// O(N (m D + width m)) per head and O(N m) memory. The exact distillation target is
// compressed_attention_targets (spattn/statistics.hpp).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct SeaParams {
  int k = 64;
  int compressed_width = 128;
  std::optional<int> nb_features;
  int seed = 0;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("k", &SeaParams::k, "Average keys per query per head (the official k; OPT experiments: 64), >= 1.");
    v("compressed_width", &SeaParams::compressed_width,
      "Width W of the compressed key space (official config default 128; OPT runs 256), >= 1.");
    v("nb_features", &SeaParams::nb_features,
      "Random features m of the training-free estimate (>= 1); None: int(D ln D / 8), the official value of "
      "the causal (OPT) experiments (the learned estimator uses its weights' projection).");
    v("seed", &SeaParams::seed, "Seed of the training-free estimate's random features.");
  }
};

// Random-feature estimate (B, Hq, Nq, width), rows sum to 1 over the columns that cover keys.
// `features` is the (m x D) projection (orthogonal random features, drawn by the caller).
void sea_estimate(const AttnArgs& qk, const float* features, int m, const SeaParams& p, float* est);

// Official key selection from a compressed estimate (PerlinAttention.forward, k_flatten_dim
// 'causal_batch'): for each (b, query) rank the Hq rows of `est` together (descending, ties to
// the lower flat index, NaN last) and keep the top n_i = max(1, round(Hq k width / L_i)) entries
// (round half to even like torch.round; all when n_i >= Hq width); expand each kept column on the
// per-query grid (sea_grid.hpp): accuracy path (speed_path false, the paper's perplexities)
// every key of the column, speed path at most k keys spread evenly (v_end - 1 - floor(t size / m),
// m = min(size, k)). Keys per (b, head, query) come out ascending; K_max slots per row, -1 padded.
std::vector<int32_t> sea_select(const float* est, const AttnShape& s, bool causal, const SeaParams& p, bool speed_path,
                                int* k_max);

}  // namespace spattn
