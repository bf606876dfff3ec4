// MInference vertical-slash estimator (see the header for the official behaviour it follows).
// The last-query statistics are the exact vertical/slash sums pass (statistics/vertical_slash.cpp)
// on the last min(last_q, L) queries. Deviations: float32 where the official code runs fp16/bf16
// inputs (its softmax is float32 too); ties among equal scores (the forced +inf entries, exact
// zeros) go to the lower key index and the smaller offset (torch.topk leaves them unspecified:
// this only matters when slash_size < forced_slash, never with the published configs).
#include "spattn/estimators/minference_vertical_slash.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "spattn/selection.hpp"
#include "spattn/statistics.hpp"

namespace spattn {

void MInferenceVerticalSlashParams::validate() const {
  const char* m = "minference_vertical_slash";
  if (vertical_size.empty()) param_error(m, "vertical_size", "hold at least one value", "[]");
  if (slash_size.empty()) param_error(m, "slash_size", "hold at least one value", "[]");
  for (int v : vertical_size) require_min(m, "vertical_size", v, 1);
  for (int v : slash_size) require_min(m, "slash_size", v, 1);
  require_min(m, "last_q", last_q, 1);
  require_min(m, "forced_vertical", forced_vertical, 0);
  require_min(m, "forced_slash", forced_slash, 0);
}

namespace {

int per_head(const std::vector<int>& v, int h, int H, const char* name) {
  if (v.size() != 1 && int(v.size()) != H)
    throw std::invalid_argument(std::string("minference_vertical_slash: ") + name + " must hold 1 or Hq=" +
                                std::to_string(H) + " values, got " + std::to_string(v.size()));
  return v.size() == 1 ? v[0] : v[size_t(h)];
}

// Top-k indices of x (NaN ranked below everything), ties to the lower index.
std::vector<int> top_indices(std::vector<float>& x, int k) {
  for (float& f : x)
    if (std::isnan(f)) f = -std::numeric_limits<float>::infinity();
  return topk_select(x.data(), int(x.size()), k);
}

}  // namespace

VerticalSlashIndices estimate_minference_vertical_slash(const AttnArgs& a, const MInferenceVerticalSlashParams& p) {
  const AttnShape& s = a.shape;
  s.validate();
  p.validate();
  if (!a.causal || s.Nq != s.Nk)
    throw std::invalid_argument("minference_vertical_slash: defined for causal prefill (causal=True, Nq == Nk), got " +
                                std::string(a.causal ? "causal" : "non-causal") + " Nq=" + std::to_string(s.Nq) +
                                ", Nk=" + std::to_string(s.Nk));
  const int L = s.Nq, H = s.Hq;
  for (int h = 0; h < H; ++h) {
    per_head(p.vertical_size, h, H, "vertical_size");
    per_head(p.slash_size, h, H, "slash_size");
  }
  VerticalSlashIndices out;
  out.B = s.B;
  out.H = H;
  out.len = L;
  if (L == 0) return out;
  const int n = std::min(p.last_q, L);
  // The last n queries of every head, then their exact vertical and slash sums over all keys.
  std::vector<float> qlast(size_t(s.B) * H * n * s.D);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < H; ++h)
      std::copy_n(a.q + s.q_index(b, h, L - n), size_t(n) * s.D, qlast.data() + (size_t(b) * H + h) * n * s.D);
  AttnArgs last = a;
  last.q = qlast.data();
  last.shape.Nq = n;
  last.lse = nullptr;
  std::vector<float> vert(size_t(s.B) * H * L), slash(size_t(s.B) * H * L);
  vertical_slash_sums(last, vert.data(), slash.data());  // sums / n: the same order as the official sums

  std::vector<int> nv(size_t(s.B) * H), ns(nv.size());
  for (int h = 0; h < H; ++h)
    for (int b = 0; b < s.B; ++b) {
      nv[size_t(b) * H + h] = std::min(L, std::max(per_head(p.vertical_size, h, H, "vertical_size"), 30));
      ns[size_t(b) * H + h] = std::min(L, std::max(per_head(p.slash_size, h, H, "slash_size"), 50));
    }
  out.NV = *std::max_element(nv.begin(), nv.end());
  out.NS = *std::max_element(ns.begin(), ns.end());
  out.vertical.assign(size_t(s.B) * H * out.NV, -1);
  out.slash.assign(size_t(s.B) * H * out.NS, -1);
  constexpr float inf = std::numeric_limits<float>::infinity();
#pragma omp parallel for schedule(dynamic, 1)
  for (long long bh = 0; bh < (long long)s.B * H; ++bh) {
    std::vector<float> v(vert.begin() + bh * L, vert.begin() + (bh + 1) * L);
    std::fill(v.begin(), v.begin() + std::min(p.forced_vertical, L), inf);
    std::vector<int> vi = top_indices(v, nv[size_t(bh)]);
    std::sort(vi.begin(), vi.end());
    std::copy(vi.begin(), vi.end(), out.vertical.begin() + bh * out.NV);
    // slash[L - 1 - o] holds offset o; rank by offset so that ties go to the smaller offset.
    std::vector<float> o(static_cast<size_t>(L));
    for (int k = 0; k < L; ++k) o[size_t(k)] = slash[size_t(bh) * L + (L - 1 - k)];
    std::fill(o.begin(), o.begin() + std::min(p.forced_slash, L), inf);
    std::vector<int> si = top_indices(o, ns[size_t(bh)]);
    std::sort(si.begin(), si.end(), std::greater<int>());
    std::copy(si.begin(), si.end(), out.slash.begin() + bh * out.NS);
  }
  return out;
}

}  // namespace spattn
