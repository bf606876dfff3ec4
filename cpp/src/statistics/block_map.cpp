// Block-pooled exact attention map (the quantity behind the oracle top-k mask, the recall of a
// BlockMask and SeerAttention's training target), on the tile engine: pass 1 the row
// log-sum-exp, pass 2 the exact probabilities of each key tile pooled into its kv blocks.
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
  const BlockMapVariant var{qk, kt, lse, block_q, block_k, nqb, nkb, pool, map, per_item};
  detail::run_tiles(qk, var, rows, 0);
  check_logits_in_range(a, lse);
}

}  // namespace spattn
