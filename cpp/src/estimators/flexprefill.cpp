// FlexPrefill (Lai et al., ICLR 2025): per head, decide from the last block of queries whether
// block-pooled attention is a faithful proxy (sqrt Jensen-Shannon distance between the pooled
// estimate and the true block distribution, threshold tau); query-aware heads select blocks by
// cumulative pooled attention over the whole block matrix, every head gets vertical + slash
// blocks chosen from the last queries' attention. Follows the official `get_active_blocks`:
//  - budgets: count(cumsum(sorted) <= gamma) + 1, then // 128 + 1 (a literal 128, not the block
//    size), clamped to [min, max] blocks, min first; query-aware heads use the min budget;
//  - the JS estimate is unmasked: softmax over all key blocks of mean(last queries) . mean(K block);
//  - sqrt(JS) with natural log and no epsilon: an exact zero probability yields NaN, and NaN < tau
//    is false, so such a head stays vertical-slash (as in the official code);
//  - the query-aware selection keeps flattened entries while the running sum stays <= gamma * nb.
// Deviations (documented in the Python docstring): float32 throughout where the official code
// uses bf16 in places; ties in top-k / sorting go to the lower index (torch leaves them
// unspecified); batch > 1 is handled by looping (the official code asserts B == 1); the
// estimation scale is 1/sqrt(D) whatever the attention scale (as in the official code).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include <Eigen/Core>

#include "spattn/estimators/flexprefill.hpp"
#include "spattn/selection.hpp"
#include "spattn/statistics.hpp"

namespace spattn {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat>;

// count(cumsum(sort_desc(x)) <= gamma) + 1, the official score_cover_topk.
int score_cover_count(const std::vector<float>& x, float gamma) {
  std::vector<float> s(x);
  std::sort(s.begin(), s.end(), std::greater<float>());
  float run = 0.f;
  int count = 0;
  for (float v : s) {
    run += v;
    if (run <= gamma) ++count;
    else break;
  }
  return count + 1;
}

// sqrt(JS) as the official formula: natural log, no epsilon, so any exact zero probability
// gives 0 * log 0 = NaN there (and NaN < tau keeps the head vertical-slash).
float sqrt_js_official(const std::vector<float>& p, const std::vector<float>& q) {
  for (size_t i = 0; i < p.size(); ++i)
    if (p[i] == 0.f || q[i] == 0.f) return std::numeric_limits<float>::quiet_NaN();
  return float(std::sqrt(js_divergence(p.data(), q.data(), int(p.size()))));
}

}  // namespace

void FlexPrefillParams::validate() const {
  require_unit_interval("flexprefill", "gamma", gamma);
  if (!(tau >= 0.f)) param_error("flexprefill", "tau", "be a number >= 0", tau);
  require_min("flexprefill", "min_budget", min_budget, 1);
  require_min("flexprefill", "max_budget", max_budget, 1);
  require_min("flexprefill", "block_size", block_size, 1);
}

namespace {

// order[j] = original query head placed at position j so that position j reads kv head
// j // (Hq/Hkv) in spattn's layout exactly when the original head h reads h % Hkv.
std::vector<int> interleave_order(int Hq, int Hkv) {
  const int G = Hq / Hkv;
  std::vector<int> order(Hq);
  for (int j = 0; j < Hq; ++j) order[j] = (j % G) * Hkv + j / G;
  return order;
}

// The official interleaved GQA layout: estimate on a copy of q with its heads permuted, then
// put masks and readouts back in the caller's head order.
BlockMask estimate_interleaved(const AttnArgs& a, const FlexPrefillParams& p, FlexPrefillInfo* info) {
  const AttnShape& s = a.shape;
  const std::vector<int> order = interleave_order(s.Hq, s.Hkv);
  const size_t head = size_t(s.Nq) * s.D;
  std::vector<float> qp(size_t(s.B) * s.Hq * head);
  for (int b = 0; b < s.B; ++b)
    for (int j = 0; j < s.Hq; ++j)
      std::copy_n(a.q + s.q_index(b, order[j], 0), head, qp.data() + s.q_index(b, j, 0));
  AttnArgs ap = a;
  ap.q = qp.data();
  FlexPrefillParams pp = p;
  pp.gqa_interleave = false;
  FlexPrefillInfo ip;
  const BlockMask mp = estimate_flexprefill(ap, pp, info ? &ip : nullptr);
  BlockMask m = mp;
  const size_t hm = size_t(m.nqb) * m.nkb;
  for (int b = 0; b < s.B; ++b)
    for (int j = 0; j < s.Hq; ++j) {
      const size_t src = size_t(b) * s.Hq + j, dst = size_t(b) * s.Hq + order[j];
      std::copy_n(mp.blocks.data() + src * hm, hm, m.blocks.data() + dst * hm);
      if (info) {
        info->pattern[dst] = ip.pattern[src];
        info->js[dst] = ip.js[src];
        info->n_vertical[dst] = ip.n_vertical[src];
        info->n_slash[dst] = ip.n_slash[src];
      }
    }
  return m;
}

}  // namespace

BlockMask estimate_flexprefill(const AttnArgs& a, const FlexPrefillParams& p, FlexPrefillInfo* info) {
  const AttnShape& s = a.shape;
  s.validate();
  p.validate();
  if (!a.causal) throw std::invalid_argument("flexprefill: defined for causal prefill only (causal=True)");
  if (s.Nq != s.Nk && s.Nq != 1)
    throw std::invalid_argument("flexprefill: needs Nq == Nk (prefill) or Nq == 1 (decode), got Nq=" +
                                std::to_string(s.Nq) + ", Nk=" + std::to_string(s.Nk));
  if (info != nullptr) {
    const size_t heads = size_t(s.B) * s.Hq;
    info->pattern.assign(heads, int8_t(FlexPattern::Dense));
    info->js.assign(heads, std::numeric_limits<float>::quiet_NaN());
    info->n_vertical.assign(heads, 0);
    info->n_slash.assign(heads, 0);
  }
  if (p.gqa_interleave && s.Hkv > 1 && s.Hkv < s.Hq) return estimate_interleaved(a, p, info);

  const int bs = p.block_size, N = s.Nk, D = s.D;
  BlockMask mask(s.B, s.Hq, s.Nq, s.Nk, bs, bs);
  const size_t heads = size_t(s.B) * s.Hq;
  const long long min_blocks_ll = ((long long)p.min_budget + bs - 1) / bs;  // 64-bit: budgets near 2^31
  // Dense fallback of the official code (and decode).
  if (s.Nq == 1 || (long long)N <= std::max(2LL * bs, min_blocks_ll * bs)) {
    std::fill(mask.blocks.begin(), mask.blocks.end(), 1);
    return mask;
  }
  const int nb = mask.nqb;
  const int min_blocks = int(min_blocks_ll);  // < nb here
  const int max_blocks = int(std::min<long long>(nb, p.max_budget ? ((long long)*p.max_budget + bs - 1) / bs : nb));
  const float est_scale = 1.f / std::sqrt(float(D));
  const float ninf = -std::numeric_limits<float>::infinity();

  // Block means of K per kv head (last partial block over its real length).
  std::vector<std::vector<float>> avg_k(size_t(s.B) * s.Hkv);
#pragma omp parallel for schedule(dynamic, 1)
  for (long long t = 0; t < (long long)avg_k.size(); ++t) {
    const int b = int(t / s.Hkv), hk = int(t % s.Hkv);
    avg_k[t] = mean_pool_rows(a.k + s.k_index(b, hk, 0), N, D, bs);
  }

  // 1-2. Last-query attention: the last bs queries against every key, causal only in the final
  //      bs x bs corner, softmax per row; vertical = column means, slash = diagonal sums / bs
  //      (entry N-1-o holds offset o). Exact statistics pass of the tile engine.
  std::vector<float> q_last(heads * size_t(bs) * D), vert_all(heads * size_t(N)), slash_all(heads * size_t(N));
  for (size_t t = 0; t < heads; ++t)
    std::copy_n(a.q + (t * s.Nq + size_t(N - bs)) * D, size_t(bs) * D, q_last.data() + t * bs * D);
  {
    AttnArgs last = a;
    last.q = q_last.data();
    last.shape.Nq = bs;
    last.scale = est_scale;
    vertical_slash_sums(last, vert_all.data(), slash_all.data());
  }

#pragma omp parallel
  {
    std::vector<float> vertical(N), slash(N), vb(nb), sb(nb), est(nb);
#pragma omp for schedule(dynamic, 1)
    for (long long t = 0; t < (long long)heads; ++t) {
      const int b = int(t / s.Hq), h = int(t % s.Hq), hk = h / s.group();
      const float* qh = a.q + s.q_index(b, h, 0);
      const RowMat Ql = CMap(q_last.data() + size_t(t) * bs * D, bs, D) * est_scale;
      std::copy_n(vert_all.data() + size_t(t) * N, N, vertical.begin());
      std::copy_n(slash_all.data() + size_t(t) * N, N, slash.begin());
      // 3. Budgets in blocks.
      auto budget = [&](const std::vector<float>& x) {
        int n = score_cover_count(x, p.gamma) / 128 + 1;
        if (n < min_blocks) n = min_blocks;
        if (n > max_blocks) n = max_blocks;
        return n;
      };
      int nv = budget(vertical), ns = budget(slash);
      // 4. Sum-pool into blocks (groups of bs starting at index 0, zero padded at the end).
      std::fill(vb.begin(), vb.end(), 0.f);
      std::fill(sb.begin(), sb.end(), 0.f);
      for (int j = 0; j < N; ++j) {
        vb[j / bs] += vertical[j];
        sb[j / bs] += slash[j];
      }
      // 5. Pattern decision: softmax(mean(Ql) . avg_k^T) over all blocks vs pooled vertical.
      const Eigen::RowVectorXf qmean = Ql.colwise().mean();
      const std::vector<float>& ak = avg_k[size_t(b) * s.Hkv + hk];
      Eigen::Map<Eigen::RowVectorXf>(est.data(), nb) = qmean * CMap(ak.data(), nb, D).transpose();
      softmax_inplace(est.data(), nb);
      const float d = sqrt_js_official(est, vb);
      const bool query_aware = d < p.tau;
      if (query_aware) nv = ns = min_blocks;
      // 6. Vertical-slash blocks: key block 0 and the main-diagonal slash group forced.
      vb[0] = std::numeric_limits<float>::infinity();
      sb[nb - 1] = std::numeric_limits<float>::infinity();
      uint8_t* m = mask.blocks.data() + size_t(t) * nb * nb;
      for (int c : topk_select(vb.data(), nb, std::min(nv, nb)))
        for (int r = c; r < nb; ++r) m[size_t(r) * nb + c] = 1;
      for (int j : topk_select(sb.data(), nb, std::min(ns, nb))) {
        const int off = nb - 1 - j;
        for (int r = 0; r + off < nb; ++r) m[size_t(r + off) * nb + r] = 1;
      }
      // 7. Query-aware blocks over the whole flattened block matrix.
      if (query_aware) {
        std::vector<float> qp = mean_pool_rows(qh, N, D, bs);
        RowMat Sb = CMap(qp.data(), nb, D) * est_scale * CMap(ak.data(), nb, D).transpose();
        for (int r = 0; r < nb; ++r) {
          float* row = Sb.data() + size_t(r) * nb;
          for (int c = r + 1; c < nb; ++c) row[c] = ninf;
          softmax_inplace(row, nb);
        }
        const std::vector<int> order = order_descending(Sb.data(), nb * nb);
        double run = 0.0;
        const double limit = double(p.gamma) * nb;
        for (int f : order) {
          run += Sb.data()[f];
          if (run > limit) break;
          m[f] = 1;
        }
      }
      if (info != nullptr) {
        info->pattern[t] = int8_t(query_aware ? FlexPattern::QueryAware : FlexPattern::VerticalSlash);
        info->js[t] = d;
        info->n_vertical[t] = nv;
        info->n_slash[t] = ns;
      }
    }
  }
  return mask;
}

}  // namespace spattn
