// Shape checks of the mask views against an attention call, with messages that name the argument
// (raised in Python as ValueError).
#include <string>

#include "spattn/masks.hpp"

namespace spattn {

namespace {
std::string dims(int a, int b, int c, int d) {
  return "(" + std::to_string(a) + ", " + std::to_string(b) + ", " + std::to_string(c) + ", " +
         std::to_string(d) + ")";
}
}  // namespace

void BlockMaskView::check_against(const AttnShape& s) const {
  if (block_q < 1 || block_k < 1)
    throw std::invalid_argument("mask block sizes must be >= 1, got block_q=" + std::to_string(block_q) +
                                ", block_k=" + std::to_string(block_k));
  if (q_len >= 0 && (q_len != s.Nq || kv_len != s.Nk))
    throw std::invalid_argument("mask was made for q_len=" + std::to_string(q_len) + ", kv_len=" +
                                std::to_string(kv_len) + ", but q/k have Nq=" + std::to_string(s.Nq) +
                                ", Nk=" + std::to_string(s.Nk));
  const int eq = ceil_div(s.Nq, block_q), ek = ceil_div(s.Nk, block_k);
  if (B != s.B || (H != 1 && H != s.Hq))
    throw std::invalid_argument("mask.blocks must have B=" + std::to_string(s.B) + " and H in (1, " +
                                std::to_string(s.Hq) + "), got shape " + dims(B, H, nqb, nkb));
  if (nqb != eq || nkb != ek)
    throw std::invalid_argument("mask.blocks must have shape " + dims(s.B, s.Hq, eq, ek) +
                                " (H may be 1) for block_q=" + std::to_string(block_q) + ", block_k=" +
                                std::to_string(block_k) + ", got " + dims(B, H, nqb, nkb));
}

void TokenIndicesView::check_against(const AttnShape& s) const {
  if (group_size < 1) throw std::invalid_argument("group_size must be >= 1, got " + std::to_string(group_size));
  if (kv_len >= 0 && kv_len != s.Nk)
    throw std::invalid_argument("indices were made for kv_len=" + std::to_string(kv_len) + ", but k has Nk=" +
                                std::to_string(s.Nk));
  const int eg = ceil_div(s.Nq, group_size);
  if (B != s.B || H != s.Hq || G != eg || K < 0)
    throw std::invalid_argument("indices must have shape (B, Hq, G, K) = (" + std::to_string(s.B) + ", " +
                                std::to_string(s.Hq) + ", " + std::to_string(eg) + ", K) for Nq=" +
                                std::to_string(s.Nq) + ", group_size=" + std::to_string(group_size) + "; got " +
                                dims(B, H, G, K));
  const size_t rows = size_t(B) * H * G;
  for (size_t r = 0; r < rows; ++r) {
    int last = -1;
    for (int c = 0; c < K; ++c) {
      const int j = indices[r * K + c];
      if (j < -1 || j >= s.Nk)
        throw std::invalid_argument("index " + std::to_string(j) + " out of range [-1, " +
                                    std::to_string(s.Nk) + ")");
      if (j < 0) continue;
      if (j <= last)  // the kernels rely on ascending positions (causal prefix, gathers)
        throw std::invalid_argument("indices of a row must be strictly increasing (-1 = unused)");
      last = j;
    }
  }
}


void RowBlockIndicesView::check_against(const AttnShape& s) const {
  if (block_k < 1) throw std::invalid_argument("block_k must be >= 1, got " + std::to_string(block_k));
  if (kv_len >= 0 && kv_len != s.Nk)
    throw std::invalid_argument("row-block indices were made for kv_len=" + std::to_string(kv_len) +
                                ", but k has Nk=" + std::to_string(s.Nk));
  if (B != s.B || (H != s.Hq && H != s.Hkv && H != 1) || Nq != s.Nq || K < 0)
    throw std::invalid_argument("row-block indices must have shape (B, H, Nq, K) = (" + std::to_string(s.B) +
                                ", Hq=" + std::to_string(s.Hq) + " or Hkv=" + std::to_string(s.Hkv) +
                                " or 1, " + std::to_string(s.Nq) + ", K); got " + dims(B, H, Nq, K));
  const int nkb = ceil_div(s.Nk, block_k);
  const size_t rows = size_t(B) * H * Nq;
  for (size_t r = 0; r < rows; ++r) {
    int last = -1;
    for (int c = 0; c < K; ++c) {
      const int j = blocks[r * K + c];
      if (j < -1 || j >= nkb)
        throw std::invalid_argument("block id " + std::to_string(j) + " out of range [-1, " + std::to_string(nkb) +
                                    ") for Nk=" + std::to_string(s.Nk) + ", block_k=" + std::to_string(block_k));
      if (j < 0) continue;
      if (j <= last) throw std::invalid_argument("block ids of a row must be strictly increasing (-1 = unused)");
      last = j;
    }
  }
}

}  // namespace spattn
