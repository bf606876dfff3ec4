// Block-sparse attention executing a BlockMask (the FlexAttention / MInference block format).
// Each (batch, head, q-block) reads its row of the block map (the per-row kv-block list, CSR
// in FlexAttention's terms, built on the fly from the row) and merges runs of adjacent selected
// blocks into key spans. Spans at least one key tile long run in place; shorter ones are packed
// (K and V rows copied) into a per-thread tile so the tile GEMMs stay large: isolated small
// blocks otherwise leave the GEMMs dominated by per-call overhead. A mask shared by all heads
// (H = 1) stacks the query heads of a GQA group like the dense kernel.
#include "spattn/kernels.hpp"
#include "tile.hpp"

namespace spattn {

namespace {

// Per-thread packing buffer for short key spans.
struct SpanPacker {
  int d, dv, cap, n = 0;
  detail::AlignedFloats k, v;
  std::vector<int> pos;
  SpanPacker(int d_, int dv_, int cap_) : d(d_), dv(dv_), cap(cap_), k(size_t(cap_) * d_), v(size_t(cap_) * dv_), pos(cap_) {}

  void flush(detail::TileScratch& t, int rows, bool causal, int min_lim) {
    if (n == 0) return;
    const bool masked = causal && pos[n - 1] > min_lim;  // positions ascend
    detail::tile_update(t, rows, k.data(), d, dv > 0 ? v.data() : nullptr, dv, n, 0, pos.data(), masked);
    n = 0;
  }
  // Append keys [j0, j1) of one head, flushing whenever the tile fills.
  void add(detail::TileScratch& t, int rows, const float* kh, const float* vh, int j0, int j1,
           bool causal, int min_lim) {
    while (j0 < j1) {
      const int take = std::min(cap - n, j1 - j0);
      std::memcpy(k.data() + size_t(n) * d, kh + size_t(j0) * d, sizeof(float) * size_t(take) * d);
      if (dv > 0) std::memcpy(v.data() + size_t(n) * dv, vh + size_t(j0) * dv, sizeof(float) * size_t(take) * dv);
      for (int c = 0; c < take; ++c) pos[n + c] = j0 + c;
      n += take;
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

#pragma omp parallel
  {
    detail::TileScratch t(stack * mask.block_q, s.D, s.Dv, detail::kKeyTile);
    SpanPacker pack(s.D, s.Dv, detail::kKeyTile);
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
      const float* kh = a.k + s.k_index(b, hk, 0);
      const float* vh = s.Dv > 0 ? a.v + s.v_index(b, hk, 0) : nullptr;
      const uint8_t* sel = mask.row(b, shared ? 0 : u, qb);
      for (int c = 0; c < mask.nkb;) {
        if (!sel[c]) { ++c; continue; }
        int c1 = c + 1;
        while (c1 < mask.nkb && sel[c1]) ++c1;
        const int j0 = c * mask.block_k, j1 = std::min(kend, c1 * mask.block_k);
        if (j1 - j0 >= detail::kKeyTile)
          detail::run_key_span(t, rows, kh, vh, s.D, s.Dv, j0, j1, a.causal, i0 + off);
        else if (j0 < j1)
          pack.add(t, rows, kh, vh, j0, j1, a.causal, i0 + off);
        c = c1;
      }
      pack.flush(t, rows, a.causal, i0 + off);
      for (int g = 0; g < stack; ++g)
        for (int r = 0; r < n; ++r) detail::store_row(t, g * n + r, a, b, h0 + g, i0 + r);
    }
  }
}

}  // namespace spattn
