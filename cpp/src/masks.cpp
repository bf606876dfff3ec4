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
  const size_t n = size_t(B) * H * G * K;
  for (size_t t = 0; t < n; ++t)
    if (indices[t] < -1 || indices[t] >= s.Nk)
      throw std::invalid_argument("spattn: index " + std::to_string(indices[t]) +
                                  " out of range [-1, " + std::to_string(s.Nk) + ")");
}

}  // namespace spattn
