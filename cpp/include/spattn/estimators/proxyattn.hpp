// ProxyAttn-like estimator, FROM PAPER SUMMARIES ONLY: the official code (wyxstriker/ProxyAttn)
// could not be read here, so this is the provisional rule of ../shared/methods/prefill/proxyattn.md
// after "ProxyAttn: Guided Sparse Attention via Representative Heads", arXiv
// 2509.24745 (ICLR 2026). Defaults, formulas and tie rules are NOT verified against the authors'
// code.
//
// Per batch and GQA group (the query heads reading one kv head):
// 1. proxy query = mean of the group's query heads, row by row; the proxy key is the kv head.
// 2. proxy block scores W = the proxy's exact softmax probabilities summed over
//    block_size x block_size tiles (the block-map statistics pass; causal or not).
// 3. every head of the group ranks the visible key blocks of a query-block row by W, descending
//    (ties to the lower block): one shared ranking per group and row.
// 4. per head h, budget k_h = the smallest k such that head h's own mean attention mass (exact,
//    its last query block's rows) over the proxy's top-k blocks of that last row reaches gamma
//    (every visible block when the sum never does).
// 5. head h keeps, in every row, the first min(k_h, visible) blocks of the row's proxy ranking,
//    plus block column 0 and the diagonal block (not counted in the budget).
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/masks.hpp"
#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct ProxyAttnParams {
  int block_size = 128;
  float gamma = 0.9f;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("block_size", &ProxyAttnParams::block_size,
      "Square block size of the proxy scores and of the mask (>= 1; provisional 128, not verified).");
    v("gamma", &ProxyAttnParams::gamma,
      "Cumulative attention mass in (0, 1] a head's budget must cover on its last query block over the "
      "proxy ranking (provisional 0.9, not verified).");
  }
};

// Mask per query head (B, Hq, nb, nb). Prefill Nq == Nk, causal or not; throws
// std::invalid_argument otherwise. budgets (B, Hq), when non-null, receives each head's k_h.
BlockMask estimate_proxyattn(const AttnArgs& qk, const ProxyAttnParams& p, std::vector<int32_t>* budgets = nullptr);

}  // namespace spattn
