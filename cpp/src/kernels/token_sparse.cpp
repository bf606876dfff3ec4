// Token-sparse attention executing TokenIndices on the tile engine: for each (batch, query head,
// query group) the listed K/V rows are gathered into a contiguous per-thread tile (sorted
// indices keep the gather cache-friendly) and run through the online-softmax step, the causal
// rule applied per element from the gathered positions. Decode is the case Nq = 1,
// group_size = 1.
#include "engine.hpp"
#include "spattn/kernels.hpp"

namespace spattn {


namespace {

struct TokenVariant : detail::TokenItems {
  const AttnArgs& a;
  TokenVariant(const AttnArgs& a_, const TokenIndicesView& ix_) : TokenItems{a_.shape, ix_}, a(a_) {}
  using Local = detail::GatheredKeys;
  Local local() const { return Local(ix.K, s.D, s.Dv, std::min(ix.group_size, s.Nq)); }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& gk) const {
    gk.run(t, w.rows(), gather(gk, a, w), s.Dv, a.causal, detail::OnlineSoftmax{});
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& w, Local&) const { detail::store_item(t, a, w); }
};

}  // namespace

void token_sparse_attention(const AttnArgs& a, const TokenIndicesView& ix) {
  const AttnShape& s = a.shape;
  s.validate();
  ix.check_against(s);
  if (s.Nq == 0) return;
  detail::run_tiles(a, TokenVariant(a, ix), std::min(ix.group_size, s.Nq), s.Dv);
}

}  // namespace spattn
