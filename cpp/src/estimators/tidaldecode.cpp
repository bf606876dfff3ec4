// TidalDecode token selection (see the header for the official behaviour it follows): the exact
// logits of one decode query per head are the SIMD decode product (decode_scores, K read once per
// GQA group), then a top-k per query head.
#include "spattn/estimators/tidaldecode.hpp"

#include <algorithm>
#include <numeric>
#include <string>

#include "spattn/selection.hpp"

namespace spattn {

void TidalDecodeParams::validate() const {
  require_min("tidaldecode", "top_k", top_k, 1);
  require_min("tidaldecode", "sparse_layer_start", sparse_layer_start, 0);
  require_min("tidaldecode", "correction_layer", correction_layer, 0);
}

std::vector<int32_t> estimate_tidaldecode(const AttnArgs& a, const TidalDecodeParams& p, int* K) {
  const AttnShape& s = a.shape;
  s.validate();
  p.validate();
  if (s.Nq != 1)
    throw std::invalid_argument("tidaldecode: decode selection needs Nq == 1, got Nq=" + std::to_string(s.Nq));
  const int N = s.Nk;
  const long long heads = (long long)s.B * s.Hq;
  if (N <= p.top_k) {  // budget min(N, top_k): every token
    *K = N;
    std::vector<int32_t> out(size_t(heads) * N);
    for (long long bh = 0; bh < heads; ++bh) std::iota(out.begin() + bh * N, out.begin() + (bh + 1) * N, 0);
    return out;
  }
  std::vector<float> logits(size_t(heads) * N);
  decode_scores(a.q, a.k, s, 1.f, logits.data());
  std::vector<std::vector<int>> chosen(static_cast<size_t>(heads));
#pragma omp parallel for schedule(dynamic, 1)
  for (long long bh = 0; bh < heads; ++bh)
    chosen[size_t(bh)] = select_top(logits.data() + size_t(bh) * N, N, p.top_k, p.statistical_topk);
  int width = 0;
  for (const auto& c : chosen) width = std::max(width, int(c.size()));
  *K = width;
  std::vector<int32_t> out(size_t(heads) * width, -1);
  for (long long bh = 0; bh < heads; ++bh)
    std::copy(chosen[size_t(bh)].begin(), chosen[size_t(bh)].end(), out.begin() + size_t(bh) * width);
  return out;
}

}  // namespace spattn
