// Shape checks of the mask views against an attention call; the Python layer checks first and
// names the argument, these guard direct C++ callers.
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
    throw std::invalid_argument("spattn: mask block sizes must be >= 1");
  const int eq = ceil_div(s.Nq, block_q), ek = ceil_div(s.Nk, block_k);
  if (B != s.B || (H != 1 && H != s.Hq) || nqb != eq || nkb != ek)
    throw std::invalid_argument("spattn: mask blocks must have shape " +
                                dims(s.B, s.Hq, eq, ek) + " (H may be 1), got " +
                                dims(B, H, nqb, nkb));
}

void TokenIndicesView::check_against(const AttnShape& s) const {
  if (group_size < 1) throw std::invalid_argument("spattn: group_size must be >= 1");
  const int eg = ceil_div(s.Nq, group_size);
  if (B != s.B || H != s.Hq || G != eg || K < 0)
    throw std::invalid_argument("spattn: indices must have shape " + dims(s.B, s.Hq, eg, K) +
                                ", got " + dims(B, H, G, K));
  const size_t rows = size_t(B) * H * G;
  for (size_t r = 0; r < rows; ++r) {
    int last = -1;
    for (int c = 0; c < K; ++c) {
      const int j = indices[r * K + c];
      if (j < -1 || j >= s.Nk)
        throw std::invalid_argument("spattn: index " + std::to_string(j) + " out of range [-1, " +
                                    std::to_string(s.Nk) + ")");
      if (j < 0) continue;
      if (j <= last)  // the kernels rely on ascending positions (causal prefix, gathers)
        throw std::invalid_argument("spattn: indices of a row must be strictly increasing (-1 = unused)");
      last = j;
    }
  }
}

}  // namespace spattn
