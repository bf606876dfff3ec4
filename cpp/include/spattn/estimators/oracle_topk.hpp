// Oracle top-k: for each (batch, query head, q-block) the smallest set of kv blocks whose exact
// attention mass (block sums of softmax probabilities, averaged over the block's rows that see a
// key) reaches gamma. Ties broken towards the lower block index. Mask per query head. Not a
// method from a paper: the upper bound every estimator is compared with (evaluation only).
#pragma once

#include "spattn/masks.hpp"
#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct OracleParams {
  int block_size = 64;
  float gamma = 0.9f;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("block_size", &OracleParams::block_size, "Block size of the mask (>= 1).");
    v("gamma", &OracleParams::gamma, "Share of the exact attention mass each q-block keeps, in (0, 1].");
  }
};

BlockMask estimate_oracle_topk(const AttnArgs& qk, const OracleParams& p);

}  // namespace spattn
