// Block-pooled exact attention map (the quantity behind the oracle top-k mask, the recall of a
// BlockMask, XAttention's block sums and SeerAttention's training target), on the tile engine.
// One pass when the per-row block accumulators fit (the usual case): each tile runs the online
// softmax (running max m, sum l) and pools exp(s - m) into per-row, per-kv-block partial results
// kept relative to the max they were formed with (rescaled lazily when the row max has grown);
// at the end each becomes exp(. - lse). Otherwise two passes: the row log-sum-exp, then the exact
// probabilities pooled into the q-block's accumulator.
#include <cmath>
#include <limits>

#include "../kernels/engine.hpp"
#include "spattn/kernels.hpp"
#include "spattn/statistics.hpp"

namespace spattn {

namespace {

struct BlockMapVariant {
  const AttnArgs& a;
  const detail::TransposedK& kt;
  float* lse;  // written by the first pass of each item (sweep_item_span)
  int block_q, block_k, nqb, nkb;
  BlockPool pool;
  float* map;
  int per_item;  // q-blocks per work item: small blocks are stacked so the products run on tall tiles

  struct Reducer {
    const BlockMapVariant& v;
    int n = 0;                 // rows per head of the current item
    std::vector<float> acc;    // (stack, per_item) x nkb
    void operator()(int r, const float* p, const int* pos, int cnt) {
      float* row = acc.data() + (size_t(r / n) * v.per_item + size_t(r % n) / v.block_q) * v.nkb;
      for (int c = 0; c < cnt;) {
        const int blk = pos[c] / v.block_k;
        const int stop = (blk + 1) * v.block_k;
        float part = v.pool == BlockPool::Sum ? 0.f : row[blk];
        for (; c < cnt && pos[c] < stop; ++c) part = v.pool == BlockPool::Sum ? part + p[c] : std::max(part, p[c]);
        row[blk] = v.pool == BlockPool::Sum ? row[blk] + part : part;
      }
    }
  };
  struct Local {
    Reducer red;
    std::vector<float> row_lse;
  };

  int item_tiles() const { return ceil_div(nqb, per_item); }
  long long items() const { return (long long)a.shape.B * a.shape.Hkv * item_tiles(); }
  detail::WorkItem item(long long it) const {
    return detail::grouped_item(a.shape, it, block_q * per_item, item_tiles());
  }
  Local local() const {
    return {Reducer{*this, 0, std::vector<float>(size_t(a.shape.group()) * per_item * nkb)},
            std::vector<float>(size_t(a.shape.group()) * std::min(block_q * per_item, a.shape.Nq))};
  }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& l) const {
    l.red.n = w.n();
    std::fill(l.red.acc.begin(), l.red.acc.end(), 0.f);
    detail::sweep_item_span(t, a, kt, w, lse, l.row_lse.data(), l.red);
  }
  void finish(const detail::TileScratch&, const detail::WorkItem& w, Local& l) const {
    const int qb0 = w.i0 / block_q, nblocks = ceil_div(w.n(), block_q);
    for (int g = 0; g < w.stack; ++g)
      for (int lb = 0; lb < nblocks; ++lb)
        std::copy_n(l.red.acc.data() + (size_t(g) * per_item + lb) * nkb, nkb,
                    map + ((size_t(w.b) * a.shape.Hq + w.h0 + g) * nqb + qb0 + lb) * size_t(nkb));
  }
};

// One pass: per stacked row r and kv block kb, val[r][kb] (a sum or a max of exp(s - ref)) with
// its reference max ref[r][kb] (-inf: nothing yet).
struct OnePassVariant {
  const AttnArgs& a;
  const detail::TransposedK& kt;
  float* lse;
  int block_q, block_k, nqb, nkb;
  BlockPool pool;
  float* map;
  int per_item;

  struct Step {
    const OnePassVariant& v;
    std::vector<float>* val;
    std::vector<float>* ref;
    void operator()(detail::TileScratch& t, int rows, const detail::KeySegment* seg, int nseg, bool masked) const {
      const int cols = detail::tile_columns(seg, nseg);
      if (cols == 0) return;
      detail::tile_scores(t, rows, seg, nseg, cols);
      for (int g = 0, n0 = 0; g < nseg; n0 += seg[g].len, ++g)
        for (int c = 0; c < seg[g].len; ++c) t.pos[n0 + c] = seg[g].pos ? seg[g].pos[c] : seg[g].k0 + c;
      for (int r = 0; r < rows; ++r) t.ncols[r] = masked ? detail::visible_prefix(seg, nseg, t.qlim[r]) : cols;
      t.simd.online_softmax(t.s.data(), rows, cols, t.ncols.data(), t.m.data(), t.l.data(), nullptr, 0);
      const bool sum = v.pool == BlockPool::Sum;
      for (int r = 0; r < rows; ++r) {
        const int n = t.ncols[r];
        if (n == 0) continue;
        const float m = t.m[r];
        const float* p = t.s.data() + size_t(r) * cols;
        float* vr = val->data() + size_t(r) * v.nkb;
        float* rr = ref->data() + size_t(r) * v.nkb;
        for (int c = 0; c < n;) {
          const int blk = t.pos[c] / v.block_k;
          const int stop = (blk + 1) * v.block_k;
          float part = 0.f;
          for (; c < n && t.pos[c] < stop; ++c) part = sum ? part + p[c] : std::max(part, p[c]);
          if (rr[blk] != m) {  // bring the block's earlier value to the current max (0 when empty)
            vr[blk] = rr[blk] == detail::kNegInf ? 0.f : vr[blk] * std::exp(rr[blk] - m);
            rr[blk] = m;
          }
          vr[blk] = sum ? vr[blk] + part : std::max(vr[blk], part);
        }
      }
    }
  };
  struct Local {
    std::vector<float> val, ref;
  };

  int item_tiles() const { return ceil_div(nqb, per_item); }
  long long items() const { return (long long)a.shape.B * a.shape.Hkv * item_tiles(); }
  detail::WorkItem item(long long it) const { return detail::grouped_item(a.shape, it, block_q * per_item, item_tiles()); }
  Local local() const {
    const size_t n = size_t(a.shape.group()) * std::min(block_q * per_item, a.shape.Nq) * nkb;
    return {std::vector<float>(n), std::vector<float>(n)};
  }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& l) const {
    std::fill_n(l.ref.begin(), size_t(w.rows()) * nkb, detail::kNegInf);
    const Step step{*this, &l.val, &l.ref};
    detail::run_key_span(t, w.rows(), kt, w.b, w.hk, nullptr, 0, 0, detail::key_end(a, w), a.causal,
                         w.i0 + a.shape.causal_offset(), step);
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& w, Local& l) const {
    const bool sum = pool == BlockPool::Sum;
    for (int g = 0; g < w.stack; ++g)
      for (int r = 0; r < w.n(); ++r) {
        const int sr = g * w.n() + r;
        const float row_lse = t.l[sr] == 0.f ? detail::kNegInf : t.m[sr] + std::log(t.l[sr]);  // as store_row
        lse[a.shape.row_index(w.b, w.h0 + g, w.i0 + r)] = row_lse;
        if (row_lse == detail::kNegInf) continue;
        const float* vr = l.val.data() + size_t(sr) * nkb;
        const float* rr = l.ref.data() + size_t(sr) * nkb;
        float* out = map + ((size_t(w.b) * a.shape.Hq + w.h0 + g) * nqb + (w.i0 + r) / block_q) * size_t(nkb);
        if (std::isnan(row_lse)) {  // NaN inputs: NaN in every block the row sees, as the two-pass form
          const int seen = a.causal ? std::clamp(w.i0 + r + a.shape.causal_offset() + 1, 0, a.shape.Nk) : a.shape.Nk;
          std::fill(out, out + ceil_div(seen, block_k), std::numeric_limits<float>::quiet_NaN());
          continue;
        }
        for (int kb = 0; kb < nkb; ++kb) {
          if (rr[kb] == detail::kNegInf) continue;
          const float x = vr[kb] * std::exp(rr[kb] - row_lse);
          out[kb] = sum ? out[kb] + x : std::max(out[kb], x);
        }
      }
  }
};

}  // namespace

void block_attention_map(const AttnArgs& a, int block_q, int block_k, BlockPool pool, float* map) {
  const AttnShape& s = a.shape;
  s.validate();
  if (block_q < 1 || block_k < 1) throw std::invalid_argument("block sizes must be >= 1");
  const int nqb = ceil_div(s.Nq, block_q), nkb = ceil_div(s.Nk, block_k);
  std::fill(map, map + size_t(s.B) * s.Hq * nqb * nkb, 0.f);
  if (s.Nq == 0) return;
  if (s.Nk == 0) {  // every row sees no key
    if (a.lse != nullptr) std::fill(a.lse, a.lse + size_t(s.B) * s.Hq * s.Nq, detail::kNegInf);
    return;
  }
  std::vector<float> lse_own;
  float* lse = detail::lse_buffer(a, lse_own);
  const AttnArgs qk = detail::statistics_args(a);
  // Small query blocks (e.g. XAttention's 16 reshaped rows) are stacked several per work item, up to
  // about kRowsTarget rows, so the products run on tall tiles against the transposed K.
  // The per-thread accumulator (group x per_item x nkb floats) stays within 4 MB.
  const long long acc_cap = std::max<long long>(1, (1LL << 20) / ((long long)s.group() * nkb));
  const int per_item = int(std::max<long long>(
      1, std::min<long long>({(long long)nqb, detail::kRowsTarget / std::max(1, s.group() * block_q), acc_cap})));
  const int rows = s.group() * std::min(block_q * per_item, s.Nq);
  const detail::TransposedK kt(qk, detail::use_transposed_k(rows));
  // One pass when its per-row accumulators (2 floats per row and kv block) stay within 8 MB per
  // thread; two otherwise (e.g. per-key maps of long sequences: block_k = 1).
  if ((long long)rows * nkb <= (1LL << 20)) {
    const OnePassVariant var{qk, kt, lse, block_q, block_k, nqb, nkb, pool, map, per_item};
    detail::run_tiles(qk, var, rows, 0);
  } else {
    const BlockMapVariant var{qk, kt, lse, block_q, block_k, nqb, nkb, pool, map, per_item};
    detail::run_tiles(qk, var, rows, 0);
  }
  check_logits_in_range(a, lse);
}

}  // namespace spattn
