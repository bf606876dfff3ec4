// Dense (exact) attention on the tile engine: tiled online softmax over every visible key,
// flash-attention style (Dao et al., "FlashAttention", 2022). Causal skips key tiles above the
// diagonal and masks only the tiles that cross it. GQA: the query heads sharing one kv head are
// stacked into one work item so each K/V tile is loaded once per group.
// Split-KV (decode and other few-row calls, flash-decoding style): when the (batch, kv head,
// q tile) items are too few to occupy every thread, each item's keys are cut into chunks run as
// separate work items whose unnormalised states (acc, running max, sum) are merged exactly.
#include <cmath>
#include <limits>

#include "engine.hpp"
#include "spattn/kernels.hpp"

namespace spattn {

namespace {

// Query rows per head in one work item: the stacked tile (group * rows) stays near 128-256 rows.
int query_tile_rows(int group) { return std::max(16, detail::kRowsTarget / std::max(1, group)); }

// Keys [j0, j1) of the item through the online softmax: float K/V read in place (K transposed
// or row-major), half-precision K/V widened tile by tile.
void item_keys(const AttnArgs& a, const detail::TransposedK& kt, detail::TileScratch& t, const detail::WorkItem& w,
               int j0, int j1, detail::HalfTile& half) {
  if (a.kv != KVStorage::F32)
    detail::run_key_span_half(t, w.rows(), a, w.b, w.hk, j0, j1, a.causal, w.i0 + a.shape.causal_offset(), half);
  else
    detail::run_key_span(t, w.rows(), kt, w.b, w.hk, detail::value_head(a, w), a.shape.Dv, j0, j1, a.causal,
                         w.i0 + a.shape.causal_offset());
}

struct DenseVariant {
  const AttnArgs& a;
  const detail::TransposedK& kt;
  int bq, nqt;
  using Local = detail::HalfTile;

  long long items() const { return (long long)a.shape.B * a.shape.Hkv * nqt; }
  detail::WorkItem item(long long it) const { return detail::grouped_item(a.shape, it, bq, nqt); }
  Local local() const { return {}; }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& half) const {
    item_keys(a, kt, t, w, 0, detail::key_end(a, w), half);
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& w, Local&) const { detail::store_item(t, a, w); }
};

// Split-KV: work item `it` is (base item, chunk `part`). Chunk c covers keys [c * chunk,
// (c + 1) * chunk) of the item's visible range; its unnormalised state goes to `st`.
struct SplitDenseVariant {
  const AttnArgs& a;
  const detail::TransposedK& kt;
  int bq, nqt, splits, chunk;
  detail::SplitStates* st;
  using Local = detail::HalfTile;

  long long items() const { return (long long)a.shape.B * a.shape.Hkv * nqt * splits; }
  detail::WorkItem item(long long it) const {
    detail::WorkItem w = detail::grouped_item(a.shape, it / splits, bq, nqt);
    w.part = int(it % splits);
    return w;
  }
  Local local() const { return {}; }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& half) const {
    const int kend = detail::key_end(a, w);
    const int j0 = std::min(kend, w.part * chunk), j1 = std::min(kend, j0 + chunk);
    item_keys(a, kt, t, w, j0, j1, half);
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& w, Local&) const { st->store(t, a.shape, w); }
};

}  // namespace

// Half-precision K/V for a call whose tiles read K transposed (many query rows: prefill): widen
// K and V once (exact), then the float path; the transposition copies K anyway.
static void dense_attention_widened(const AttnArgs& a) {
  const AttnShape& s = a.shape;
  if (s.kv_capacity != 0) throw std::invalid_argument("spattn: half-precision K/V must be packed (kv_capacity 0)");
  const bool bf16 = a.kv == KVStorage::BF16;
  const size_t nk = size_t(s.B) * s.Hkv * s.Nk;
  std::vector<float> k(nk * s.D), v(nk * s.Dv);
  const auto& kern = simd::kernels();
  const long long chunks = ceil_div(std::max<long long>(1, (long long)nk), 256);
#pragma omp parallel for schedule(static)
  for (long long c = 0; c < chunks; ++c) {
    const size_t r0 = size_t(c) * 256, r1 = std::min(nk, r0 + 256);
    if (r1 <= r0) continue;
    kern.half_to_float(a.k_half + r0 * s.D, long(r1 - r0) * s.D, k.data() + r0 * s.D, bf16);
    if (s.Dv > 0 && a.v_half != nullptr)
      kern.half_to_float(a.v_half + r0 * s.Dv, long(r1 - r0) * s.Dv, v.data() + r0 * s.Dv, bf16);
  }
  AttnArgs f = a;
  f.kv = KVStorage::F32;
  f.k = k.data();
  f.v = s.Dv > 0 ? v.data() : nullptr;
  f.k_half = f.v_half = nullptr;
  dense_attention(f);
}

void dense_attention(const AttnArgs& a) {
  const AttnShape& s = a.shape;
  s.validate();
  if (a.bias != nullptr) a.bias->check_against(s);
  if (s.Nq == 0) return;
  const int G = s.group();
  const int bq = query_tile_rows(G);
  const int nqt = ceil_div(s.Nq, bq);
  if (a.kv != KVStorage::F32 && detail::use_transposed_k(G * std::min(bq, s.Nq))) return dense_attention_widened(a);
  const detail::TransposedK kt(a, a.kv == KVStorage::F32 && detail::use_transposed_k(G * std::min(bq, s.Nq)));
  const long long items = (long long)s.B * s.Hkv * nqt;
  // Split only work items of a few rows (decode): prefill tiles already fill the threads.
  const int splits = detail::use_transposed_k(G * std::min(bq, s.Nq)) ? 1 : detail::kv_splits(items, s.Nk);
  if (splits == 1) {
    const DenseVariant var{a, kt, bq, nqt};
    detail::run_tiles(a, var, G * std::min(bq, s.Nq), s.Dv);
    return;
  }
  const int chunk = (ceil_div(s.Nk, splits) + 15) / 16 * 16;
  detail::SplitStates st(s, splits);
  const SplitDenseVariant var{a, kt, bq, nqt, splits, chunk, &st};
  detail::run_tiles(a, var, G * std::min(bq, s.Nq), s.Dv);
  detail::merge_split_states(a, st);
}

}  // namespace spattn
