// ProxyAttn-like estimator (see the header: provisional rule from paper summaries, official code
// not read). Both exact passes run on the block-map statistics pass (block_attention_map): the
// proxy heads' block sums over every query row (Hkv heads instead of Hq), and each head's last
// query block pooled to key blocks (one query block of the last rows, causal limit of their
// original positions). Ties in the rankings go to the lower block index; NaN scores rank last.
#include "spattn/estimators/proxyattn.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "spattn/statistics.hpp"

namespace spattn {

namespace {

float sort_key(float x) { return std::isnan(x) ? -std::numeric_limits<float>::infinity() : x; }

// Visible key blocks of query-block row r, ranked by w descending (ties to the lower block).
std::vector<int> ranked_blocks(const float* w, int visible) {
  std::vector<int> order(visible);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return sort_key(w[x]) > sort_key(w[y]); });
  return order;
}

}  // namespace

void ProxyAttnParams::validate() const {
  require_min("proxyattn", "block_size", block_size, 1);
  require_unit_interval("proxyattn", "gamma", gamma);
}

BlockMask estimate_proxyattn(const AttnArgs& a, const ProxyAttnParams& p, std::vector<int32_t>* budgets) {
  const AttnShape& s = a.shape;
  s.validate();
  p.validate();
  if (s.Nq != s.Nk)
    throw std::invalid_argument("proxyattn: defined for prefill (Nq == Nk), got Nq=" + std::to_string(s.Nq) +
                                ", Nk=" + std::to_string(s.Nk));
  const int L = s.Nq, bs = p.block_size, D = s.D, G = s.group();
  BlockMask mask(s.B, s.Hq, L, L, bs, bs);
  if (budgets) budgets->assign(size_t(s.B) * s.Hq, 0);
  if (L == 0) return mask;
  const int nb = mask.nqb;

  // 1-2. Proxy queries (mean of each group's heads) and their block sums W (B, Hkv, nb, nb).
  std::vector<float> W(size_t(s.B) * s.Hkv * nb * nb);
  {
    std::vector<float> proxy(size_t(s.B) * s.Hkv * L * D, 0.f);
#pragma omp parallel for schedule(static)
    for (long long bg = 0; bg < (long long)s.B * s.Hkv; ++bg) {
      const int b = int(bg / s.Hkv), g = int(bg % s.Hkv);
      float* dst = proxy.data() + size_t(bg) * L * D;
      for (int m = 0; m < G; ++m) {
        const float* src = a.q + s.q_index(b, g * G + m, 0);
        for (size_t i = 0; i < size_t(L) * D; ++i) dst[i] += src[i];
      }
      for (size_t i = 0; i < size_t(L) * D; ++i) dst[i] /= float(G);
    }
    AttnArgs r;
    r.q = proxy.data();
    r.k = a.k;
    r.shape = AttnShape{s.B, s.Hkv, s.Hkv, L, L, D, 0};
    r.scale = a.effective_scale();
    r.causal = a.causal;
    block_attention_map(r, bs, bs, BlockPool::Sum, W.data());
  }

  // 4. Each head's own attention mass of its last query block on every key block (B, Hq, nb).
  const int r0 = (nb - 1) * bs, n_last = L - r0;
  std::vector<float> M(size_t(s.B) * s.Hq * nb);
  {
    std::vector<float> qlast(size_t(s.B) * s.Hq * n_last * D);
    for (int b = 0; b < s.B; ++b)
      for (int h = 0; h < s.Hq; ++h)
        std::copy_n(a.q + s.q_index(b, h, r0), size_t(n_last) * D, qlast.data() + (size_t(b) * s.Hq + h) * n_last * D);
    AttnArgs r;
    r.q = qlast.data();
    r.k = a.k;
    r.shape = AttnShape{s.B, s.Hq, s.Hkv, n_last, L, D, 0};  // bottom-right causal: their original positions
    r.scale = a.effective_scale();
    r.causal = a.causal;
    block_attention_map(r, n_last, bs, BlockPool::Sum, M.data());
    for (float& x : M) x /= float(n_last);
  }

#pragma omp parallel for schedule(dynamic, 1)
  for (long long bh = 0; bh < (long long)s.B * s.Hq; ++bh) {
    const int b = int(bh / s.Hq), h = int(bh % s.Hq), g = h / G;
    const float* w = W.data() + (size_t(b) * s.Hkv + g) * nb * nb;
    const float* m = M.data() + size_t(bh) * nb;
    // Budget: the smallest prefix of the proxy's last-row ranking holding gamma of the head's mass.
    const std::vector<int> last = ranked_blocks(w + size_t(nb - 1) * nb, nb);
    int k = nb;
    double cum = 0.0;
    for (int i = 0; i < nb; ++i) {
      cum += m[last[i]];
      if (cum >= double(p.gamma)) {
        k = i + 1;
        break;
      }
    }
    if (budgets) (*budgets)[size_t(bh)] = k;
    for (int r = 0; r < nb; ++r) {
      uint8_t* row = mask.row(b, h, r);
      const int visible = a.causal ? r + 1 : nb;
      const std::vector<int> order = ranked_blocks(w + size_t(r) * nb, visible);
      for (int i = 0; i < std::min(k, visible); ++i) row[order[i]] = 1;
      row[0] = 1;
      row[r] = 1;  // the diagonal block
    }
  }
  return mask;
}

}  // namespace spattn
