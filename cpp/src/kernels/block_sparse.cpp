// Block-sparse attention executing a BlockMask (the FlexAttention / MInference block format).
// Each (batch, head, q-block) reads its row of the block map (the per-row kv-block list, CSR
// in FlexAttention's terms, built on the fly from the row) and merges runs of adjacent selected
// blocks into key spans, and groups the spans into tiles of up to kKeyTile keys (segments read
// in place from the once-transposed K and from V), so the softmax and the online-softmax
// rescaling run on full tiles even when the selected blocks are small and scattered. A mask shared by all heads
// (H = 1) stacks the query heads of a GQA group like the dense kernel.
#include "spattn/kernels.hpp"
#include "tile.hpp"

namespace spattn {

namespace {

// Collects the selected key spans of one work item as segments of one tile (no copies: the
// segments point into the transposed K and into V) and runs the tile update when full.
struct SpanTiler {
  int cap, n = 0;
  int max_pos = -1;
  std::vector<detail::KeySegment> segs;
  explicit SpanTiler(int cap_) : cap(cap_) { segs.reserve(64); }

  void flush(detail::TileScratch& t, int rows, bool causal, int min_lim) {
    if (n == 0) return;
    detail::tile_update(t, rows, segs.data(), int(segs.size()), causal && max_pos > min_lim);
    segs.clear();
    n = 0;
  }
  // Append keys [j0, j1) of kv head (b, hk), splitting at K^T tile ends and flushing when full.
  void add(detail::TileScratch& t, int rows, const detail::TransposedK& ktr, int b, int hk, const float* vh,
           int dv, int j0, int j1, bool causal, int min_lim) {
    while (j0 < j1) {
      const int take = std::min({cap - n, j1 - j0, detail::TransposedK::T - j0 % detail::TransposedK::T});
      segs.push_back(detail::key_segment(ktr, b, hk, j0, take, vh, dv));
      n += take;
      max_pos = j0 + take - 1;
      j0 += take;
      if (n == cap) flush(t, rows, causal, min_lim);
    }
  }
};

}  // namespace

void block_sparse_attention(const AttnArgs& a, const BlockMaskView& mask) {
  const AttnShape& s = a.shape;
  s.validate();
  mask.check_against(s);
  if (s.Nq == 0) return;
  const bool shared = mask.H == 1;
  const int stack = shared ? s.group() : 1;      // query heads per work item
  const int nunits = shared ? s.Hkv : s.Hq;      // work units per batch per q block
  const long long items = (long long)s.B * nunits * mask.nqb;
  const int off = s.causal_offset();
  const float scale = a.effective_scale();
  const detail::TransposedK ktr(a, detail::use_transposed_k(stack * std::min(mask.block_q, s.Nq)));

#pragma omp parallel
  {
    detail::TileScratch t(stack * mask.block_q, s.D, s.Dv, detail::kKeyTile);
    SpanTiler tiler(detail::kKeyTile);
#pragma omp for schedule(dynamic, 1)
    for (long long it = 0; it < items; ++it) {
      const int qb = mask.nqb - 1 - int(it % mask.nqb);
      const int u = int((it / mask.nqb) % nunits);
      const int b = int(it / ((long long)mask.nqb * nunits));
      const int h0 = shared ? u * stack : u;  // first query head of the unit
      const int hk = h0 / s.group();
      const int i0 = qb * mask.block_q, i1 = std::min(s.Nq, i0 + mask.block_q), n = i1 - i0;
      const int rows = stack * n;
      for (int g = 0; g < stack; ++g) t.load_queries(a, b, h0 + g, i0, i1, g * n, scale);
      t.reset(rows);
      const int kend = a.causal ? std::clamp(i1 - 1 + off + 1, 0, s.Nk) : s.Nk;
      const float* vh = s.Dv > 0 ? a.v + s.v_index(b, hk, 0) : nullptr;
      const uint8_t* sel = mask.row(b, shared ? 0 : u, qb);
      for (int c = 0; c < mask.nkb;) {
        if (!sel[c]) { ++c; continue; }
        int c1 = c + 1;
        while (c1 < mask.nkb && sel[c1]) ++c1;
        const int j0 = c * mask.block_k, j1 = std::min(kend, c1 * mask.block_k);
        if (j0 < j1) tiler.add(t, rows, ktr, b, hk, vh, s.Dv, j0, j1, a.causal, i0 + off);
        c = c1;
      }
      tiler.flush(t, rows, a.causal, i0 + off);
      for (int g = 0; g < stack; ++g)
        for (int r = 0; r < n; ++r) detail::store_row(t, g * n + r, a, b, h0 + g, i0 + r);
    }
  }
}

}  // namespace spattn
