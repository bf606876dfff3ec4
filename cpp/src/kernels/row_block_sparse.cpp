// Row-block sparse attention executing RowBlockIndices (a list of key blocks per query row:
// InfLLM-V2's and NSA's per-token top-k blocks) on the tile engine. A work item stacks a tile of
// consecutive query rows (and the query heads of a GQA group when the group shares its lists), takes
// the sorted union of its rows' blocks and feeds those blocks' keys, read in place from the
// (once-transposed) K and from V, through the online-softmax step a tile at a time; each row hides
// the blocks it did not select (OnlineSoftmax::hide) and the causal rule applies per element.
// Memory: the indices, O(Nq K), plus per-thread scratch of the union and its row membership.
// Few-row calls (decode) whose items cannot occupy the threads split the union into parts merged
// exactly (split-KV, engine.hpp). An optional per-key logit bias (NOSA) is added to every row's
// logits of that key.
#include <algorithm>

#include "engine.hpp"
#include "spattn/kernels.hpp"

namespace spattn {

namespace {

// Most query rows per work item (all stacked heads together). How many consecutive query
// positions an item takes is chosen per call (rows_per_item): an item computes every row against
// the union of its rows' blocks, so tall items pay off only when neighbouring tokens select alike.
constexpr int kRowBlockRows = 64;

// The sorted union of the block ids of query rows [i0, i1) of row head rh in `uni` (cleared first).
void row_union(const RowBlockIndicesView& ix, int b, int rh, int i0, int i1, std::vector<int>& uni) {
  uni.clear();
  for (int i = i0; i < i1; ++i) {
    const int32_t* row = ix.row(b, rh, i);
    for (int c = 0; c < ix.K; ++c)
      if (row[c] >= 0) uni.push_back(row[c]);
  }
  std::sort(uni.begin(), uni.end());
  uni.erase(std::unique(uni.begin(), uni.end()), uni.end());
}

// Consecutive query positions per work item, from 1 to kRowBlockRows / stack (powers of two):
// the one with the least estimated work per query position, union size U(n) of n consecutive
// rows' blocks (mean over up to 64 sampled items) over the tile products' row efficiency (the
// micro-kernels take 6 rows at a time: r rows run at r / (6 ceil(r / 6)) of their rate, at least
// 2/3). A smaller n must win by 5%. NSA's per-token selections on the synthetic workload: 15
// blocks per row, 53 in the union of 16 consecutive rows, so n = 1 there (2.8x faster than 16).
int rows_per_item(const AttnShape& s, const RowBlockIndicesView& ix, int stack) {
  const int nmax = std::max(1, std::min(s.Nq, kRowBlockRows / stack));
  if (nmax == 1) return 1;
  const int units = s.Hq / stack;
  std::vector<int> uni;
  int best = nmax;
  double best_cost = 0.0;
  std::vector<int> candidates{nmax};  // nmax, then the powers of two below it
  for (int p = 1; p < nmax; p *= 2) candidates.insert(candidates.begin() + 1, p);
  for (const int n : candidates) {
    const int ntiles = ceil_div(s.Nq, n);
    const long long items = (long long)ntiles * units * s.B;
    const int samples = int(std::min<long long>(64, items));
    double total = 0.0;
    for (int t = 0; t < samples; ++t) {
      const long long it = t * items / samples;
      const int qt = int(it % ntiles), u = int((it / ntiles) % units), b = int(it / ((long long)ntiles * units));
      const int rh = ix.row_head(s, u * stack), i0 = qt * n, i1 = std::min(s.Nq, i0 + n);
      row_union(ix, b, rh, i0, i1, uni);
      total += double(uni.size());
    }
    const int r = stack * n;
    const double eff = std::max(2.0 / 3.0, double(r) / (6.0 * ceil_div(r, 6)));
    const double cost = total / std::max(samples, 1) / eff;
    if (n == nmax || cost < 0.95 * best_cost) {
      best = n;
      best_cost = cost;
    }
  }
  return best;
}

struct RowBlockVariant {
  const AttnArgs& a;
  const RowBlockIndicesView& ix;
  const detail::TransposedK& kt;
  int stack = 1;   // query heads per item: the group when it shares its lists, else 1
  int nq_tile = 1; // consecutive query rows per item
  int ntiles = 1, nunits = 1;
  int splits = 1;
  detail::SplitStates* st = nullptr;

  struct Local {
    std::vector<int> uni;        // union of the item's block ids, ascending
    std::vector<uint8_t> member; // (item rows, |uni|): 1 when the row selected the block
    std::vector<detail::KeySegment> segs;
    std::vector<int> seg_unit;   // union entry of each segment of the current tile
    std::vector<uint8_t> hide;   // (stacked rows, segments) for the step
  };

  long long items() const { return (long long)a.shape.B * nunits * ntiles * splits; }
  detail::WorkItem item(long long it_split) const {
    detail::WorkItem w;
    w.part = int(it_split % splits);
    const long long it = it_split / splits;
    const int qt = ntiles - 1 - int(it % ntiles);  // latest rows first: most work under causality
    const int u = int((it / ntiles) % nunits);
    w.b = int(it / ((long long)ntiles * nunits));
    w.stack = stack;
    w.h0 = u * stack;
    w.hk = w.h0 / a.shape.group();
    w.i0 = qt * nq_tile;
    w.i1 = std::min(a.shape.Nq, w.i0 + nq_tile);
    return w;
  }
  int max_rows() const { return stack * nq_tile; }
  Local local() const { return {}; }

  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& l) const {
    const AttnShape& s = a.shape;
    const int rh = ix.row_head(s, w.h0), n = w.n();
    row_union(ix, w.b, rh, w.i0, w.i1, l.uni);
    const int kend = detail::key_end(a, w);
    while (!l.uni.empty() && l.uni.back() * ix.block_k >= kend) l.uni.pop_back();  // past every row's limit
    const int U = int(l.uni.size());
    l.member.assign(size_t(n) * U, 0);
    for (int i = w.i0; i < w.i1; ++i) {
      const int32_t* row = ix.row(w.b, rh, i);
      for (int c = 0; c < ix.K; ++c) {
        if (row[c] < 0) continue;
        const auto p = std::lower_bound(l.uni.begin(), l.uni.end(), row[c]);
        if (p != l.uni.end() && *p == row[c]) l.member[size_t(i - w.i0) * U + size_t(p - l.uni.begin())] = 1;
      }
    }
    const float* vh = detail::value_head(a, w);
    const int min_lim = w.i0 + s.causal_offset();
    const auto [lo, hi] = detail::split_range(0, U, w.part, splits);
    int cols = 0;
    bool masked = false;
    const auto flush = [&]() {
      if (cols == 0) return;
      const int nseg = int(l.segs.size()), rows = w.rows();
      l.hide.assign(size_t(rows) * nseg, 0);
      for (int r = 0; r < n; ++r)
        for (int g = 0; g < nseg; ++g) l.hide[size_t(r) * nseg + g] = !l.member[size_t(r) * U + l.seg_unit[g]];
      for (int h = 1; h < w.stack; ++h)  // stacked heads share the rows' lists
        std::copy_n(l.hide.begin(), size_t(n) * nseg, l.hide.begin() + size_t(h) * n * nseg);
      detail::OnlineSoftmax step;
      step.hide = l.hide.data();
      step(t, rows, l.segs.data(), nseg, masked);
      l.segs.clear();
      l.seg_unit.clear();
      cols = 0;
      masked = false;
    };
    for (int u = int(lo); u < int(hi); ++u) {
      int j0 = l.uni[size_t(u)] * ix.block_k;
      const int j1 = int(std::min<long long>((long long)j0 + ix.block_k, kend));
      const bool masked_block = a.causal && j1 - 1 > min_lim;
      while (j0 < j1) {
        const int take = std::min({t.bk - cols, j1 - j0, detail::TransposedK::T - j0 % detail::TransposedK::T});
        l.segs.push_back(detail::key_segment(kt, w.b, w.hk, j0, take, vh, s.Dv));
        l.seg_unit.push_back(u);
        cols += take;
        masked |= masked_block;
        j0 += take;
        if (cols == t.bk) flush();
      }
    }
    flush();
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& w, Local&) const {
    if (st != nullptr) st->store(t, a.shape, w);
    else detail::store_item(t, a, w);
  }
};

}  // namespace

void row_block_sparse_attention(const AttnArgs& args, const RowBlockIndicesView& ix, const float* key_bias) {
  // The per-key bias is a LogitBias of the call (kv-head rows), added in the tile step.
  LogitBias lb = args.bias != nullptr ? *args.bias : LogitBias{};
  AttnArgs a = args;
  if (key_bias != nullptr) {
    lb.key = key_bias;
    lb.key_heads = a.shape.Hkv;
    a.bias = &lb;
  }
  const AttnShape& s = a.shape;
  s.validate();
  ix.check_against(s);
  if (s.Nq == 0) return;
  // Stack the group when its heads read one list (H = Hkv or 1 with Hq > H).
  const int stack = ix.H == s.Hq ? 1 : s.group();
  const int nq_tile = rows_per_item(s, ix, stack);
  const int rows = stack * nq_tile;
  // K^T once per call pays off whenever the call has many query rows, even in short items
  const bool few_rows = !detail::use_transposed_k(std::max(rows, s.Nq * stack));
  const detail::TransposedK kt(a, !few_rows);
  RowBlockVariant var{a, ix, kt, stack, nq_tile};
  var.ntiles = ceil_div(s.Nq, nq_tile);
  var.nunits = s.Hq / stack;
  const long long keys_per_item = (long long)ix.K * ix.block_k;
  const int splits = few_rows ? detail::kv_splits(var.items(), keys_per_item) : 1;
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
