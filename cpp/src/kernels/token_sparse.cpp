// Token-sparse attention executing TokenIndices on the tile engine: for each (batch, query head,
// query group) the listed K/V rows are gathered into a contiguous per-thread tile (sorted
// indices keep the gather cache-friendly) and run through the online-softmax step, the causal
// rule applied per element from the gathered positions. Decode is the case Nq = 1,
// group_size = 1; when its items cannot occupy the threads, each index row is split into parts
// whose states are merged exactly (split-KV, engine.hpp).
#include "engine.hpp"
#include "spattn/kernels.hpp"

#include <algorithm>

namespace spattn {


namespace {

// Whether the query heads of every GQA group hold the same index rows (TokenSelect's one list per
// layer, or any selection shared by a group): their work items are then stacked like the dense
// kernel's, so each listed K/V row is gathered once per kv head instead of once per query head.
bool rows_shared_by_groups(const AttnShape& s, const TokenIndicesView& ix) {
  const int G = s.group();
  if (G == 1) return false;
  const size_t row = size_t(ix.G) * ix.K;
  for (int b = 0; b < s.B; ++b)
    for (int hk = 0; hk < s.Hkv; ++hk) {
      const int32_t* first = ix.row(b, hk * G, 0);
      for (int g = 1; g < G; ++g)
        if (!std::equal(first, first + row, ix.row(b, hk * G + g, 0))) return false;
    }
  return true;
}

// Whether the listed positions come in runs of consecutive keys averaging at least 8 (Quest's
// pages, sink and local windows): then reading them in place beats gathering them.
bool long_runs(const int32_t* row, int n) {
  int used = 0, runs = 0, prev = -2;
  for (int c = 0; c < n; ++c) {
    const int j = row[c];
    if (j < 0) continue;
    ++used;
    runs += j != prev + 1;
    prev = j;
  }
  return runs > 0 && used >= 8 * runs;
}

struct TokenVariant : detail::TokenItems {
  const AttnArgs& a;
  int splits = 1;
  int stack = 1;  // query heads per work item: the group size when the group shares its rows
  detail::SplitStates* st = nullptr;
  TokenVariant(const AttnArgs& a_, const TokenIndicesView& ix_) : TokenItems{a_.shape, ix_}, a(a_) {}
  using Local = detail::GatheredKeys;
  long long items() const { return TokenItems::items() / stack * splits; }
  detail::WorkItem item(long long it) const {
    const long long base = it / splits;
    detail::WorkItem w;
    if (stack == 1) {
      w = TokenItems::item(base);
    } else {  // (b, kv head, query group), the group's heads stacked
      const int g = int(base % ix.G);
      w.hk = int((base / ix.G) % s.Hkv);
      w.b = int(base / ((long long)ix.G * s.Hkv));
      w.stack = stack;
      w.h0 = w.hk * stack;
      w.i0 = g * ix.group_size;
      w.i1 = std::min(s.Nq, w.i0 + ix.group_size);
    }
    w.part = int(it % splits);
    return w;
  }
  int rows() const { return stack * std::min(ix.group_size, s.Nq); }
  detail::OnlineSoftmax step() const {
    detail::OnlineSoftmax st;
    st.relu2 = a.relu2;
    return st;
  }
  Local local() const { return Local(ix.K, s.D, s.Dv, rows()); }
  // The listed keys of the item's part, gathered and run a few key tiles at a time, so the gathered
  // K/V stay in cache between the copy and the products.
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& gk) const {
    const auto [lo, hi] = detail::split_range(0, ix.K, w.part, splits);
    const int32_t* row = ix.row(w.b, w.h0, w.i0 / ix.group_size);
    if (!gk.transposed && long_runs(row + lo, int(hi - lo))) {
      // few rows (decode) and positions in runs (pages, windows): the runs are read in place as
      // segments, no gather copy
      const float* kh = a.k + s.k_index(w.b, w.hk, 0);
      const float* vh = detail::value_head(a, w);
      int c = int(lo);
      while (c < int(hi)) {
        gk.segs.clear();
        int cols = 0;
        while (c < int(hi) && cols < t.bk) {
          const int j = row[c];
          if (j < 0) {  // unused entry
            ++c;
            continue;
          }
          int len = 1;
          while (c + len < int(hi) && row[c + len] == j + len && cols + len < t.bk) ++len;
          gk.segs.push_back(detail::KeySegment{nullptr, s.D, kh + size_t(j) * s.D,
                                               vh != nullptr ? vh + size_t(j) * s.Dv : nullptr, s.Dv, len, j, nullptr});
          cols += len;
          c += len;
        }
        if (cols > 0) step()(t, w.rows(), gk.segs.data(), int(gk.segs.size()), a.causal);
      }
      return;
    }
    const int chunk = 4 * t.bk;
    for (int c = int(lo); c < int(hi); c += chunk) {
      const int n = gather(gk, a, w, c, std::min(int(hi), c + chunk));
      if (n > 0) gk.run(t, w.rows(), n, s.Dv, a.causal, step());
    }
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
  if (a.bias != nullptr) a.bias->check_against(s);
  if (s.Nq == 0) return;
  TokenVariant var(a, ix);
  if (rows_shared_by_groups(s, ix)) var.stack = s.group();
  const int rows = var.rows();
  // ReLU^2 rows are sums, not softmax states: never split (merge_split_states normalises)
  const int splits = detail::use_transposed_k(rows) || a.relu2 ? 1 : detail::kv_splits(var.items(), ix.K);
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
