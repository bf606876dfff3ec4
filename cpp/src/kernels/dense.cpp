// Dense (exact) attention: tiled online softmax over every visible key, flash-attention style
// (Dao et al., "FlashAttention", 2022). Causal skips key tiles above the diagonal and masks only
// the tiles that cross it. GQA: the query heads sharing one kv head are stacked into one work
// item so each K/V tile is loaded once per group.
#include <omp.h>

#include "spattn/kernels.hpp"
#include "tile.hpp"

namespace spattn {

namespace {
// Query rows per head in one work item: the stacked tile (group * rows) stays near 128-256 rows.
int query_tile_rows(int group) { return std::max(16, detail::kRowsTarget / std::max(1, group)); }
}  // namespace

void dense_attention(const AttnArgs& a) {
  const AttnShape& s = a.shape;
  s.validate();
  if (s.Nq == 0) return;
  const int G = s.group();
  const int bq = query_tile_rows(G);
  const int nqt = ceil_div(s.Nq, bq);
  const long long items = (long long)s.B * s.Hkv * nqt;
  const int off = s.causal_offset();
  const float scale = a.effective_scale();

  const detail::TransposedK kt(a, detail::use_transposed_k(G * std::min(bq, s.Nq)));

#pragma omp parallel
  {
    detail::TileScratch t(G * bq, s.D, s.Dv, detail::kKeyTile);
#pragma omp for schedule(dynamic, 1)
    for (long long it = 0; it < items; ++it) {
      // Latest q tiles first: under a causal mask they carry the most work.
      const int qt = nqt - 1 - int(it % nqt);
      const int hk = int((it / nqt) % s.Hkv);
      const int b = int(it / ((long long)nqt * s.Hkv));
      const int i0 = qt * bq, i1 = std::min(s.Nq, i0 + bq), n = i1 - i0;
      const int rows = G * n;
      for (int g = 0; g < G; ++g) t.load_queries(a, b, hk * G + g, i0, i1, g * n, scale);
      t.reset(rows);
      const int kend = a.causal ? std::clamp(i1 - 1 + off + 1, 0, s.Nk) : s.Nk;
      const float* vh = s.Dv > 0 ? a.v + s.v_index(b, hk, 0) : nullptr;
      detail::run_key_span(t, rows, kt, b, hk, vh, s.Dv, 0, kend, a.causal, i0 + off);
      for (int g = 0; g < G; ++g)
        for (int r = 0; r < n; ++r) detail::store_row(t, g * n + r, a, b, hk * G + g, i0 + r);
    }
  }
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
