// Double Sparsity token selection (see the header for the official behaviour it follows).
//
// The score reads r-channel labels (r = D / group_factor), one dot product per cached token and
// query head: a matrix-vector product on the label cache, ranked and cut here.
#include "spattn/estimators/doublesparse.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

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
  const int N = s.Nk, r = s.D;
  const int width = std::min(N, p.heavy_const);
  *K = width;
  const long long heads = (long long)s.B * s.Hq;
  std::vector<int32_t> out(size_t(heads) * width, -1);
  if (width == 0) return out;
  const bool all = N <= p.heavy_const;
#pragma omp parallel
  {
    std::vector<double> score(static_cast<size_t>(all ? 0 : N));
    std::vector<int> order(static_cast<size_t>(all ? 0 : N));
#pragma omp for schedule(dynamic, 1)
    for (long long bh = 0; bh < heads; ++bh) {
      int32_t* row = out.data() + size_t(bh) * width;
      if (all) {
        std::iota(row, row + N, 0);
        continue;
      }
      const int b = int(bh / s.Hq), h = int(bh % s.Hq);
      const float* ql = q_label + s.q_index(b, h, 0);
      const float* lab = labels + s.k_index(b, h / s.group(), 0);
      for (int t = 0; t < N; ++t) {
        double acc = 0.0;
        for (int c = 0; c < r; ++c) acc += double(ql[c]) * double(lab[size_t(t) * r + c]);
        score[size_t(t)] = std::isnan(acc) ? std::numeric_limits<double>::infinity() : acc;  // NaN first
      }
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + width, order.end(), [&](int x, int y) {
        return score[size_t(x)] > score[size_t(y)] || (score[size_t(x)] == score[size_t(y)] && x < y);
      });
      std::sort(order.begin(), order.begin() + width);
      std::copy_n(order.begin(), width, row);
    }
  }
  return out;
}

}  // namespace spattn
