// Double Sparsity token selection (see the header for the official behaviour it follows).
//
// The score reads r-channel labels (r = D / group_factor), one dot product per cached token and
// query head: the SIMD decode product on the label cache (decode_scores), ranked and cut here.
#include "spattn/estimators/doublesparse.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "spattn/selection.hpp"

namespace spattn {

void DoubleSparseParams::validate() const {
  require_min("doublesparse", "heavy_const", heavy_const, 1);
  require_min("doublesparse", "group_factor", group_factor, 1);
  require_min("doublesparse", "label_bits", label_bits, 1);
  if (label_bits > 16) param_error("doublesparse", "label_bits", "be <= 16 (16: no quantization)", label_bits);
  require_min("doublesparse", "dense_layers", dense_layers, 0);
}

std::vector<int32_t> estimate_doublesparse(const float* q_label, const float* labels, const AttnShape& s,
                                           const DoubleSparseParams& p, int* K) {
  s.validate();
  p.validate();
  if (s.Nq != 1)
    throw std::invalid_argument("doublesparse: decode selection needs Nq == 1, got Nq=" + std::to_string(s.Nq));
  const int N = s.Nk;
  const long long heads = (long long)s.B * s.Hq;
  if (N <= p.heavy_const) {  // every token
    *K = N;
    std::vector<int32_t> out(size_t(heads) * N);
    for (long long bh = 0; bh < heads; ++bh) std::iota(out.begin() + bh * N, out.begin() + (bh + 1) * N, 0);
    return out;
  }
  std::vector<float> score(size_t(heads) * N);
  decode_scores(q_label, labels, s, 1.f, score.data());  // (B, Hq, N): the label products, unscaled
  std::vector<std::vector<int>> chosen(static_cast<size_t>(heads));
#pragma omp parallel for schedule(dynamic, 1)
  for (long long bh = 0; bh < heads; ++bh)
    chosen[size_t(bh)] = select_top(score.data() + size_t(bh) * N, N, p.heavy_const, p.statistical_topk);
  int width = 0;
  for (const auto& c : chosen) width = std::max(width, int(c.size()));
  *K = width;
  std::vector<int32_t> out(size_t(heads) * width, -1);
  for (long long bh = 0; bh < heads; ++bh) std::copy(chosen[size_t(bh)].begin(), chosen[size_t(bh)].end(), out.begin() + size_t(bh) * width);
  return out;
}

}  // namespace spattn
