// Mask formats shared by estimators and kernels (see DESIGN.md, "Mask formats").
//
// BlockMask: boolean map (B, H, nqb, nkb) of block_q x block_k tiles, H = Hq or 1.
// TokenIndices: int32 (B, Hq, G, K) key positions per group of `group_size` consecutive
// queries, strictly increasing within a row, -1 marks an unused slot.
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/tensor.hpp"

namespace spattn {

// 64-bit intermediate: block sizes up to 2^31 - 1 must not overflow.
inline int ceil_div(int a, int b) { return int((static_cast<long long>(a) + b - 1) / b); }

// Non-owning view, used by the kernels.
struct BlockMaskView {
  const uint8_t* blocks = nullptr;
  int B = 1, H = 1, nqb = 0, nkb = 0, block_q = 64, block_k = 64;
  int q_len = -1, kv_len = -1;  // lengths the mask was made for; -1 = not recorded

  const uint8_t* row(int b, int h, int qb) const {
    return blocks + ((size_t(b) * H + h) * nqb + qb) * size_t(nkb);
  }
  // Throws std::invalid_argument when the mask does not fit the attention shape.
  void check_against(const AttnShape& s) const;
};

// Owning block mask, produced by estimators.
struct BlockMask {
  std::vector<uint8_t> blocks;
  int B = 1, H = 1, nqb = 0, nkb = 0, block_q = 64, block_k = 64;

  BlockMask() = default;
  BlockMask(int B_, int H_, int q_len, int kv_len, int block_q_, int block_k_)
      : B(B_), H(H_), nqb(ceil_div(q_len, block_q_)), nkb(ceil_div(kv_len, block_k_)),
        block_q(block_q_), block_k(block_k_) {
    blocks.assign(size_t(B) * H * nqb * nkb, 0);
  }
  uint8_t* row(int b, int h, int qb) {
    return blocks.data() + ((size_t(b) * H + h) * nqb + qb) * size_t(nkb);
  }
  BlockMaskView view() const { return {blocks.data(), B, H, nqb, nkb, block_q, block_k, -1, -1}; }
};

struct TokenIndicesView {
  const int32_t* indices = nullptr;
  int B = 1, H = 1, G = 0, K = 0, group_size = 1;
  int kv_len = -1;  // length the indices were made for; -1 = not recorded

  const int32_t* row(int b, int h, int g) const {
    return indices + ((size_t(b) * H + h) * G + g) * size_t(K);
  }
  void check_against(const AttnShape& s) const;
};

}  // namespace spattn
