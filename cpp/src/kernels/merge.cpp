// Exact merge of attention states computed over disjoint key sets (split-KV, ring attention,
// sink + window decompositions): the log-sum-exp weights make the merge lossless.
#include <omp.h>

#include "spattn/kernels.hpp"
#include "tile.hpp"

namespace spattn {

void merge_states(const float* out_a, const float* lse_a, const float* out_b,
                  const float* lse_b, long long rows, int dv, float* out, float* lse) {
#pragma omp parallel for schedule(static)
  for (long long r = 0; r < rows; ++r) {
    const float la = lse_a[r], lb = lse_b[r];
    const float mx = std::max(la, lb);
    float* o = out + r * dv;
    // A NaN or +inf lse (no finite mass) makes the merged row NaN: never substitute a value.
    if (std::isnan(la) || std::isnan(lb) || mx == std::numeric_limits<float>::infinity()) {
      std::fill(o, o + dv, std::numeric_limits<float>::quiet_NaN());
      lse[r] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    if (mx == detail::kNegInf) {  // empty on both sides
      std::fill(o, o + dv, 0.f);
      lse[r] = detail::kNegInf;
      continue;
    }
    const float wa = std::exp(la - mx), wb = std::exp(lb - mx);  // exp(-inf) = 0
    const float sum = wa + wb;
    const float ca = wa / sum, cb = wb / sum;
    const float* oa = out_a + r * dv;
    const float* ob = out_b + r * dv;
    for (int c = 0; c < dv; ++c) o[c] = (ca > 0.f ? ca * oa[c] : 0.f) + (cb > 0.f ? cb * ob[c] : 0.f);
    lse[r] = mx + std::log(sum);
  }
}

}  // namespace spattn
