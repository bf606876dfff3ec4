// Token-sparse attention executing TokenIndices on the tile engine: for each (batch, query head,
// query group) the listed K/V rows are gathered into a contiguous per-thread tile (sorted
// indices keep the gather cache-friendly) and run through the online-softmax step, the causal
// rule applied per element from the gathered positions. Decode is the case Nq = 1,
// group_size = 1; when its items cannot occupy the threads, each index row is split into parts
// whose states are merged exactly (split-KV, engine.hpp).
#include "engine.hpp"
#include "spattn/kernels.hpp"

namespace spattn {


namespace {

struct TokenVariant : detail::TokenItems {
  const AttnArgs& a;
  int splits = 1;
  detail::SplitStates* st = nullptr;
  TokenVariant(const AttnArgs& a_, const TokenIndicesView& ix_) : TokenItems{a_.shape, ix_}, a(a_) {}
  using Local = detail::GatheredKeys;
  long long items() const { return TokenItems::items() * splits; }
  detail::WorkItem item(long long it) const {
    detail::WorkItem w = TokenItems::item(it / splits);
    w.part = int(it % splits);
    return w;
  }
  Local local() const { return Local(ix.K, s.D, s.Dv, std::min(ix.group_size, s.Nq)); }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& gk) const {
    const auto [lo, hi] = detail::split_range(0, ix.K, w.part, splits);
    gk.run(t, w.rows(), gather(gk, a, w, int(lo), int(hi)), s.Dv, a.causal, detail::OnlineSoftmax{});
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& w, Local&) const {
    if (st != nullptr) st->store(t, a.shape, w);
    else detail::store_item(t, a, w);
  }
};

}  // namespace

void token_sparse_attention(const AttnArgs& a, const TokenIndicesView& ix) {
  const AttnShape& s = a.shape;
  s.validate();
  ix.check_against(s);
  if (s.Nq == 0) return;
  TokenVariant var(a, ix);
  const int rows = std::min(ix.group_size, s.Nq);
  const int splits = detail::use_transposed_k(rows) ? 1 : detail::kv_splits(var.items(), ix.K);
  if (splits == 1) {
    detail::run_tiles(a, var, rows, s.Dv);
    return;
  }
  detail::SplitStates st(s, splits);
  var.splits = splits;
  var.st = &st;
  detail::run_tiles(a, var, rows, s.Dv);
  detail::merge_split_states(a, st);
}

}  // namespace spattn
