// Token attention mass (the recall of TokenIndices), on the tile engine: pass 1 the exact row
// log-sum-exp over every visible key, pass 2 the exact probabilities of each group's gathered
// keys, summed per query.
//
// Pass 1 is the dense kernel (tiles of many rows), which forms the logits along another product
// path than the gathered keys of pass 2: they may differ by a few ulps. While every |lse| <=
// kSharedLseLimit that is below 1e-4 in p; beyond it (scales such as 1e30, where one ulp of a
// logit is 1e24) the lse is recomputed per query group on the gathered keys' own product path
// (K transposed or row-major alike), so both passes agree to the bit (item_logsumexp). That path
// streams K once per group, so it is kept for the logits that need it.
#include <algorithm>
#include <cmath>
#include <limits>

#include "../kernels/engine.hpp"
#include "spattn/kernels.hpp"
#include "spattn/statistics.hpp"

namespace spattn {

namespace {

struct TokenMassVariant : detail::TokenItems {
  const AttnArgs& a;
  const detail::TransposedK& kt;  // transposed exactly when the gathered keys are (used when recompute)
  bool recompute;                  // recompute the lse per group on the gathered keys' product path
  float* lse;
  float* mass;
  TokenMassVariant(const AttnArgs& a_, const TokenIndicesView& ix_, const detail::TransposedK& kt_, bool recompute_,
                   float* lse_, float* mass_)
      : TokenItems{a_.shape, ix_}, a(a_), kt(kt_), recompute(recompute_), lse(lse_), mass(mass_) {}

  struct Reducer {
    std::vector<double> sum;
    void operator()(int r, const float* p, const int*, int cnt) {
      double t = 0.0;
      for (int c = 0; c < cnt; ++c) t += p[c];
      sum[r] += t;
    }
  };
  struct Local {
    detail::GatheredKeys gk;
    Reducer red;
    std::vector<float> row_lse;
  };
  Local local() const {
    const int rows = std::min(ix.group_size, s.Nq);
    return {detail::GatheredKeys(ix.K, s.D, 0, rows), Reducer{std::vector<double>(rows)}, std::vector<float>(rows)};
  }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& l) const {
    std::fill(l.red.sum.begin(), l.red.sum.end(), 0.0);
    if (recompute) {
      detail::item_logsumexp(t, a, kt, w, lse, l.row_lse.data());
    } else {
      for (int r = 0; r < w.n(); ++r) l.row_lse[r] = lse[s.row_index(w.b, w.h0, w.i0 + r)];
    }
    const detail::ProbabilitySweep<Reducer> step{l.row_lse.data(), l.red};
    l.gk.run(t, w.rows(), gather(l.gk, a, w), 0, a.causal, step);
  }
  void finish(const detail::TileScratch&, const detail::WorkItem& w, Local& l) const {
    for (int r = 0; r < w.n(); ++r) {
      const size_t row = s.row_index(w.b, w.h0, w.i0 + r);
      mass[row] = lse[row] == detail::kNegInf ? std::numeric_limits<float>::quiet_NaN() : float(l.red.sum[r]);
    }
  }
};

constexpr float kSharedLseLimit = 256.f;

}  // namespace

void token_attention_mass(const AttnArgs& a, const TokenIndicesView& ix, float* mass) {
  const AttnShape& s = a.shape;
  s.validate();
  ix.check_against(s);
  if (s.Nq == 0) return;
  std::vector<float> lse_own;
  float* lse = detail::lse_buffer(a, lse_own);
  const AttnArgs qk = detail::statistics_args(a);
  AttnArgs dense = qk;
  dense.lse = lse;
  dense_attention(dense);
  float largest = 0.f;
  for (size_t r = 0; r < size_t(s.B) * s.Hq * s.Nq; ++r)
    if (std::isfinite(lse[r])) largest = std::max(largest, std::abs(lse[r]));
  const bool recompute = largest > kSharedLseLimit;
  const int rows = std::min(ix.group_size, s.Nq);
  const detail::TransposedK kt(qk, recompute && detail::GatheredKeys::transposed_for(rows));
  detail::run_tiles(qk, TokenMassVariant(qk, ix, kt, recompute, lse, mass), rows, 0);
  check_logits_in_range(a, lse);
}

}  // namespace spattn
