// Dense (exact) attention on the tile engine: tiled online softmax over every visible key,
// flash-attention style (Dao et al., "FlashAttention", 2022). Causal skips key tiles above the
// diagonal and masks only the tiles that cross it. GQA: the query heads sharing one kv head are
// stacked into one work item so each K/V tile is loaded once per group.
#include "engine.hpp"
#include "spattn/kernels.hpp"

namespace spattn {

namespace {

// Query rows per head in one work item: the stacked tile (group * rows) stays near 128-256 rows.
int query_tile_rows(int group) { return std::max(16, detail::kRowsTarget / std::max(1, group)); }

struct DenseVariant {
  const AttnArgs& a;
  const detail::TransposedK& kt;
  int bq, nqt;
  struct Local {};

  long long items() const { return (long long)a.shape.B * a.shape.Hkv * nqt; }
  detail::WorkItem item(long long it) const { return detail::grouped_item(a.shape, it, bq, nqt); }
  Local local() const { return {}; }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local&) const {
    detail::run_key_span(t, w.rows(), kt, w.b, w.hk, detail::value_head(a, w), a.shape.Dv, 0, detail::key_end(a, w),
                         a.causal, w.i0 + a.shape.causal_offset());
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& w, Local&) const { detail::store_item(t, a, w); }
};

}  // namespace

void dense_attention(const AttnArgs& a) {
  const AttnShape& s = a.shape;
  s.validate();
  if (s.Nq == 0) return;
  const int G = s.group();
  const int bq = query_tile_rows(G);
  const detail::TransposedK kt(a, detail::use_transposed_k(G * std::min(bq, s.Nq)));
  const DenseVariant var{a, kt, bq, ceil_div(s.Nq, bq)};
  detail::run_tiles(a, var, G * bq, s.Dv);
}

void row_logsumexp(const AttnArgs& a, float* lse) {
  AttnArgs stats = a;
  stats.v = nullptr;
  stats.out = nullptr;
  stats.lse = lse;
  stats.shape.Dv = 0;
  dense_attention(stats);
}

}  // namespace spattn
