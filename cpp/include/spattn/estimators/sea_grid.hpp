// SEA's per-query compressed key grid (Lee et al., ICLR 2024; gmlwns2000/sea-attention): the
// `width` columns of a query tile its own visible prefix of L keys. Two boundary rules exist in
// the official code and both are kept, each where the official code uses it:
//  - accuracy grid (ops/kernels/resize_m_to_t.py, resize_from_m_to_t: the mask the paper's
//    perplexities use and the grid of its training loss): key j lies in column
//    floor((j + 0.5) / L * width - 1e-4), evaluated as the official code does, in float32 one
//    rounded operation at a time (torch runs each as its own kernel: no fused multiply-add), so
//    the rare keys whose column float32 and exact arithmetic disagree on follow the official one;
//  - speed grid (ops/kernels/causal_resize_m_to_t.py, scan_col): column c covers
//    [round(c L / width), round((c + 1) L / width)) with round half away from zero
//    (tl.math.round; half up here), of the float32 product c * (L / width) as official.
// Both grids are monotone, so a column is a contiguous key range; the accuracy grid can leave
// the last keys of very long prefixes (L >= 5000 width) outside every column, as the official
// gather does.
#pragma once

#include <algorithm>
#include <cmath>

namespace spattn {

// Accuracy grid: the column of key j in a prefix of L keys (may be >= width, see above).
// Each intermediate is stored through a volatile float so the compiler can neither keep extra
// precision nor contract the multiply and subtract into an FMA (e.g. under -march=native).
inline int sea_accuracy_column(long long j, int L, int width) {
  volatile float x = float(j) + 0.5f;
  x = x / float(L);
  x = x * float(width);
  x = x - 1e-4f;
  return int(std::floor(x));
}

// Accuracy grid: the first key of column c (0 <= c <= width); start(width) is the end of the
// last column (L unless the prefix is very long).
inline int sea_accuracy_start(int c, int L, int width) {
  if (c <= 0) return 0;
  // Exact-arithmetic guess, then the float32 column decides (it is monotone in j).
  long long j = (long long)std::ceil((c + 1e-4) * double(L) / double(width) - 0.5);
  j = std::clamp<long long>(j, 0, L);
  while (j > 0 && sea_accuracy_column(j - 1, L, width) >= c) --j;
  while (j < L && sea_accuracy_column(j, L, width) < c) ++j;
  return int(j);
}

// Speed grid: round(c * (L / width)) in float32 (scales = target_width / original_width, then
// b * scales), rounded half away from zero like tl.math.round.
inline int sea_speed_start(int c, int L, int width) {
  volatile float scale = float(L) / float(width);
  volatile float x = float(c) * scale;
  return int(std::round(x));
}

}  // namespace spattn
