// Compiled block plans: a BlockMask turned into what the block-sparse kernel reads, built once and
// reused across calls (layers, repeats) as FlashInfer's plan()/run() and FlexAttention's
// BlockMask data (kv_num_blocks / kv_indices, full_kv_*). Per (b, h, q-block): the ascending list
// of kv blocks holding at least one visible key, each marked *full* (every element visible: no
// element mask needed) or *partial* (crosses the causal diagonal). Memory: O(selected blocks).
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/masks.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct BlockPlan {
  int B = 1, H = 1, nqb = 0, nkb = 0, block_q = 64, block_k = 64, q_len = 0, kv_len = 0;
  bool causal = false;
  std::vector<int64_t> row_ptr;  // (B * H * nqb + 1) offsets into kv / full
  std::vector<int32_t> kv;       // ascending kv block indices of each row
  std::vector<uint8_t> full;     // 1: every element of the block is visible to every row of the q block

  size_t row_id(int b, int h, int qb) const { return (size_t(b) * H + h) * nqb + qb; }
  int64_t nnz() const { return row_ptr.empty() ? 0 : row_ptr.back(); }
  // Throws std::invalid_argument naming what differs when the plan does not fit the call.
  void check_against(const AttnShape& s, bool causal_call) const;
};

// Compile `mask` for attention of B batches, Hq query heads, Nq queries and Nk keys with the
// given causality. Blocks that hold no visible key (above the causal diagonal) are dropped.
BlockPlan compile_block_plan(const BlockMaskView& mask, int B, int Hq, int Nq, int Nk, bool causal);

}  // namespace spattn
