// SEA (Lee et al., "SEA: Sparse Linear Attention with Estimated Attention Mask", ICLR 2024),
// training-free estimator: each query's attention row is estimated in a compressed key space of
// `compressed_width` columns with kernel-based linear attention (FAVOR+ positive random
// features, Choromanski et al. 2021). Column c of query i covers keys [round(c L_i / width),
// round((c+1) L_i / width)) of its own visible prefix L_i (the official per-query grid), so
// est[i, c] = phi(q_i) . (Z[b_c] - Z[a_c]) / phi(q_i) . Z[L_i] with Z the prefix sums of phi(k):
// O(N (m D + width m)) per head and O(N m) memory. The exact distillation target is
// compressed_attention_targets (spattn/statistics.hpp); the learned decoder is
// spattn/learned/sea_decoder.hpp.
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
      "Random features m (>= 1); None: int(D ln D / 8), the official value of the causal (OPT) experiments.");
    v("seed", &SeaParams::seed, "Seed of the random features.");
  }
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
