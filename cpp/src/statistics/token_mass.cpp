// Token attention mass (the recall of TokenIndices), on the tile engine: pass 1 the exact row
// log-sum-exp, pass 2 the exact probabilities of each group's gathered keys, summed per query.
#include <limits>

#include "../kernels/engine.hpp"
#include "spattn/kernels.hpp"
#include "spattn/statistics.hpp"

namespace spattn {

namespace {

struct TokenMassVariant : detail::TokenItems {
  const AttnArgs& a;
  const float* lse;
  float* mass;
  TokenMassVariant(const AttnArgs& a_, const TokenIndicesView& ix_, const float* lse_, float* mass_)
      : TokenItems{a_.shape, ix_}, a(a_), lse(lse_), mass(mass_) {}

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
    detail::load_item_lse(a, w, lse, l.row_lse.data());
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

}  // namespace

void token_attention_mass(const AttnArgs& a, const TokenIndicesView& ix, float* mass) {
  const AttnShape& s = a.shape;
  s.validate();
  ix.check_against(s);
  if (s.Nq == 0) return;
  std::vector<float> lse(size_t(s.B) * s.Hq * s.Nq);
  row_logsumexp(a, lse.data());
  if (a.lse != nullptr) std::copy(lse.begin(), lse.end(), a.lse);
  const AttnArgs qk = detail::statistics_args(a);
  detail::run_tiles(qk, TokenMassVariant(qk, ix, lse.data(), mass), std::min(ix.group_size, s.Nq), 0);
}

}  // namespace spattn
