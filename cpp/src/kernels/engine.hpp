// The tile engine: one work-item loop for every kernel and every exact statistics pass.
//
// A *variant* says which query rows a work item stacks, which keys each of them may see (the
// visibility rule: a dense span, the kv blocks of a compiled plan, gathered token positions)
// and what happens to each tile (the output step: OnlineSoftmax into out/lse, or a
// ProbabilitySweep reducing exact probabilities). `run_tiles` owns the OpenMP region, the
// per-thread tile scratch, the query loading and the schedule; variants never compute Q.K^T
// themselves (tile.hpp's `tile_scores` does, for every step).
//
// Variant interface (duck-typed, see the kernels and statistics for instances):
//   long long items() const;                       number of work items
//   WorkItem item(long long it) const;             rows and heads of work item `it`
//   Local local() const;                           per-thread scratch beyond the tile (Local is
//                                                  the variant's nested type)
//   void keys(TileScratch&, const WorkItem&, Local&) const;    feed the item's key tiles
//   void finish(const TileScratch&, const WorkItem&, Local&) const;  write the item's results
// Optional:
//   void queries(TileScratch&, const WorkItem&, Local&, float scale) const;  load the item's query
//                                                  rows itself (gathered rows: Routing clusters)
//                                                  instead of rows [i0, i1) of each stacked head
#pragma once

#include <omp.h>

#include <type_traits>
#include <utility>

#include "tile.hpp"

namespace spattn::detail {

// Query rows [i0, i1) of the `stack` query heads h0 .. h0 + stack - 1, which all read kv head hk
// of batch b. Stacked row g * (i1 - i0) + r is row i0 + r of head h0 + g.
struct WorkItem {
  int b = 0, h0 = 0, stack = 1, hk = 0, i0 = 0, i1 = 0;
  int part = 0;  // which part of the keys, for variants that split them (split-KV)
  int n() const { return i1 - i0; }
  int rows() const { return stack * (i1 - i0); }
};

template <class V, class = void>
struct loads_own_queries : std::false_type {};
template <class V>
struct loads_own_queries<V, std::void_t<decltype(&V::queries)>> : std::true_type {};

template <class Variant>
void run_tiles(const AttnArgs& a, const Variant& var, int max_rows, int dv) {
  const float scale = a.effective_scale();
  const long long n_items = var.items();
#pragma omp parallel
  {
    TileScratch t(max_rows, a.shape.D, dv, kKeyTile);
    if (a.bias != nullptr && a.bias->any()) {
      t.bias = a.bias;
      t.shape = &a.shape;
    }
    auto local = var.local();
#pragma omp for schedule(dynamic, 1)
    for (long long it = 0; it < n_items; ++it) {
      const WorkItem w = var.item(it);
      if (w.n() <= 0) continue;
      if constexpr (loads_own_queries<Variant>::value) {
        var.queries(t, w, local, scale);
      } else {
        for (int g = 0; g < w.stack; ++g) t.load_queries(a, w.b, w.h0 + g, w.i0, w.i1, g * w.n(), scale);
      }
      t.reset(w.rows());
      var.keys(t, w, local);
      var.finish(t, w, local);
    }
  }
}

// Work item `it` of the grid (batch, kv head, q tile of `rows` queries) that stacks the query heads
// of each GQA group, latest q tiles first (under a causal mask they carry the most work).
inline WorkItem grouped_item(const AttnShape& s, long long it, int rows, int ntiles) {
  WorkItem w;
  const int qt = ntiles - 1 - int(it % ntiles);
  w.hk = int((it / ntiles) % s.Hkv);
  w.b = int(it / ((long long)ntiles * s.Hkv));
  w.stack = s.group();
  w.h0 = w.hk * w.stack;
  w.i0 = qt * rows;
  w.i1 = std::min(s.Nq, w.i0 + rows);
  return w;
}

// Last key position (exclusive) that any row of the item sees.
inline int key_end(const AttnArgs& a, const WorkItem& w) {
  return a.causal ? std::clamp(w.i1 - 1 + a.shape.causal_offset() + 1, 0, a.shape.Nk) : a.shape.Nk;
}

// Value rows of the item's kv head, or null for statistics passes (Dv = 0).
inline const float* value_head(const AttnArgs& a, const WorkItem& w) {
  return a.shape.Dv > 0 ? a.v + a.shape.v_index(w.b, w.hk, 0) : nullptr;
}

// Store every stacked row of the item as output rows (out / lse).
inline void store_item(const TileScratch& t, const AttnArgs& a, const WorkItem& w) {
  for (int g = 0; g < w.stack; ++g)
    for (int r = 0; r < w.n(); ++r) store_row(t, g * w.n() + r, a, w.b, w.h0 + g, w.i0 + r);
}

// First pass of a statistics variant, inside its work item: the log-sum-exp of the item's stacked
// rows over keys [0, key_end), on the same key tiles and product path (`kt`) as the second pass,
// so that both passes see bit-identical logits. (A separate dense pass formed them along another
// path; at logits near 1e31 one ulp is 1e24, and exp(s - lse) was then inf or 0 instead of the
// exact probability.) Written to row_lse (stacked rows) and to the global lse (B, Hq, Nq).
inline void item_logsumexp(TileScratch& t, const AttnArgs& a, const TransposedK& kt, const WorkItem& w, float* lse,
                           float* row_lse) {
  run_key_span(t, w.rows(), kt, w.b, w.hk, nullptr, 0, 0, key_end(a, w), a.causal, w.i0 + a.shape.causal_offset());
  for (int g = 0; g < w.stack; ++g)
    for (int r = 0; r < w.n(); ++r) {
      const int sr = g * w.n() + r;
      const float v = t.l[sr] == 0.f ? kNegInf : t.m[sr] + std::log(t.l[sr]);  // as store_row
      row_lse[sr] = v;
      lse[a.shape.row_index(w.b, w.h0 + g, w.i0 + r)] = v;
    }
}

// The arguments of a statistics pass: q, k, shape, scale and causality only (no values, no outputs).
inline AttnArgs statistics_args(const AttnArgs& a) {
  AttnArgs s = a;
  s.v = nullptr;
  s.out = nullptr;
  s.lse = nullptr;
  s.shape.Dv = 0;
  s.bias = nullptr;  // statistics passes see plain logits
  return s;
}

// The row log-sum-exp buffer of a statistics pass: the caller's a.lse, or `own` sized to the rows.
inline float* lse_buffer(const AttnArgs& a, std::vector<float>& own) {
  if (a.lse != nullptr) return a.lse;
  own.resize(size_t(a.shape.B) * a.shape.Hq * a.shape.Nq);
  return own.data();
}

// Both passes of a statistics variant over a dense key span: the rows' log-sum-exp (written to
// `lse` and `row_lse`, see item_logsumexp), then the exact probabilities of every key the item's
// rows see, handed to `reduce` tile by tile.
template <class Reducer>
void sweep_item_span(TileScratch& t, const AttnArgs& a, const TransposedK& kt, const WorkItem& w, float* lse,
                     float* row_lse, Reducer& reduce) {
  item_logsumexp(t, a, kt, w, lse, row_lse);
  const ProbabilitySweep<Reducer> step{row_lse, reduce};
  run_key_span(t, w.rows(), kt, w.b, w.hk, nullptr, 0, 0, key_end(a, w), a.causal, w.i0 + a.shape.causal_offset(),
               step);
}

// Collects key spans of one work item as segments of one tile (no copies: the segments point
// into the transposed K and into V) and runs the step when the tile is full. A tile is masked
// (causal element rule) when any span added to it was.
template <class Step>
struct SpanTiler {
  const Step& step;
  int n = 0;
  bool masked = false;
  std::vector<KeySegment> segs;
  explicit SpanTiler(const Step& s) : step(s) { segs.reserve(64); }

  void flush(TileScratch& t, int rows) {
    if (n == 0) return;
    step(t, rows, segs.data(), int(segs.size()), masked);
    segs.clear();
    n = 0;
    masked = false;
  }
  // Append keys [j0, j1) of kv head (b, hk), splitting at K^T tile ends and flushing when full.
  void add(TileScratch& t, int rows, const TransposedK& ktr, int b, int hk, const float* vh, int dv, int j0, int j1,
           bool masked_span) {
    while (j0 < j1) {
      const int take = std::min({t.bk - n, j1 - j0, TransposedK::T - j0 % TransposedK::T});
      segs.push_back(key_segment(ktr, b, hk, j0, take, vh, dv));
      n += take;
      masked |= masked_span;
      j0 += take;
      if (n == t.bk) flush(t, rows);
    }
  }
  // Append a segment that is not a span of the transposed K (gathered keys), splitting it where
  // the tile fills.
  void add_segment(TileScratch& t, int rows, KeySegment sg, bool masked_seg) {
    while (sg.len > 0) {
      const int take = std::min(t.bk - n, sg.len);
      KeySegment part = sg;
      part.len = take;
      segs.push_back(part);
      n += take;
      masked |= masked_seg;
      advance(sg, take);
      if (n == t.bk) flush(t, rows);
    }
  }
  static void advance(KeySegment& sg, int c) {
    if (sg.kt != nullptr) sg.kt += c;
    else sg.k += size_t(c) * sg.ldkt;
    if (sg.v != nullptr) sg.v += size_t(c) * sg.ldv;
    if (sg.pos != nullptr) sg.pos += c;
    else sg.k0 += c;
    sg.len -= c;
  }
};

// Gathers the valid (>= 0) keys of one index row into a contiguous per-thread tile: K transposed
// (d x ld) for the micro-kernel when the work item stacks enough query rows, K rows otherwise
// (a transposing gather costs more than a product of few rows), V rows, and the key positions.
struct GatheredKeys {
  bool transposed;
  int ld;
  AlignedFloats k, v;
  std::vector<int> pos;
  std::vector<KeySegment> segs;  // in-place runs of a tile (few-row items: no gather)
  static bool transposed_for(int rows) { return use_transposed_k(rows); }
  GatheredKeys(int K, int d, int dv, int rows)
      : transposed(transposed_for(rows)), ld(transposed ? transposed_stride(K) : d),
        k(transposed ? size_t(d) * ld : size_t(K) * d, 0.f), v(size_t(K) * dv), pos(K) {}

  int gather(const int32_t* idx, int K, const float* kh, const float* vh, int d, int dv) {
    int n = 0;
    for (int c = 0; c < K; ++c) {
      const int j = idx[c];
      if (j < 0) continue;
      if (transposed) {
        for (int p = 0; p < d; ++p) k[size_t(p) * ld + n] = kh[size_t(j) * d + p];
      } else {
        std::memcpy(k.data() + size_t(n) * d, kh + size_t(j) * d, sizeof(float) * d);
      }
      if (dv > 0) std::memcpy(v.data() + size_t(n) * dv, vh + size_t(j) * dv, sizeof(float) * dv);
      pos[n++] = j;
    }
    return n;
  }
  // Gathered keys [c, c + n) as one segment (positions from pos).
  KeySegment segment(int c, int n, int dv) const {
    const float* vc = dv > 0 ? v.data() + size_t(c) * dv : nullptr;
    return transposed ? KeySegment{k.data() + c, ld, nullptr, vc, dv, n, 0, pos.data() + c}
                      : KeySegment{nullptr, ld, k.data() + size_t(c) * ld, vc, dv, n, 0, pos.data() + c};
  }
  // Feed the `cnt` gathered keys through `step`, one tile of at most t.bk keys at a time.
  template <class Step>
  void run(TileScratch& t, int rows, int cnt, int dv, bool causal, const Step& step) const {
    for (int c = 0; c < cnt; c += t.bk) {
      const int cols = std::min(t.bk, cnt - c);
      const float* vc = dv > 0 ? v.data() + size_t(c) * dv : nullptr;
      const KeySegment seg = transposed
          ? KeySegment{k.data() + c, ld, nullptr, vc, dv, cols, 0, pos.data() + c}
          : KeySegment{nullptr, ld, k.data() + size_t(c) * ld, vc, dv, cols, 0, pos.data() + c};
      step(t, rows, &seg, 1, causal);
    }
  }
};

// Split-KV (flash-decoding style): when the work items are too few to occupy every thread (decode
// and other few-row calls), each item's keys are cut into `splits` parts run as separate items
// (WorkItem::part); each part leaves its unnormalised state (acc, running max m, sum l) here, and
// merge_split_states combines them exactly. Shared by the dense, block-sparse and token-sparse kernels.
struct SplitStates {
  int splits;
  size_t rows;  // B * Hq * Nq
  int dv;
  std::vector<float> acc, m, l;  // (splits, rows[, dv])
  SplitStates(const AttnShape& s, int splits_)
      : splits(splits_), rows(size_t(s.B) * s.Hq * s.Nq), dv(s.Dv), acc(size_t(splits_) * rows * s.Dv),
        m(size_t(splits_) * rows), l(m.size()) {}

  // The state of every stacked row of item `w` (part w.part).
  void store(const TileScratch& t, const AttnShape& s, const WorkItem& w) {
    for (int g = 0; g < w.stack; ++g)
      for (int r = 0; r < w.n(); ++r) {
        const int sr = g * w.n() + r;
        const size_t o = size_t(w.part) * rows + s.row_index(w.b, w.h0 + g, w.i0 + r);
        m[o] = t.m[sr];
        l[o] = t.l[sr];
        if (dv > 0) std::copy_n(t.acc.data() + size_t(sr) * t.dv, dv, acc.data() + o * dv);
      }
  }
};

// Exact merge of the split states of every row: M = max m_c, L = sum l_c e^(m_c - M),
// out = sum acc_c e^(m_c - M) / L, lse = M + log L; rows empty in every part give out = 0, lse = -inf.
inline void merge_split_states(const AttnArgs& a, const SplitStates& st) {
  const AttnShape& s = a.shape;
  const long long rows = (long long)st.rows;
#pragma omp parallel for schedule(static)
  for (long long row = 0; row < rows; ++row) {
    float M = kNegInf;
    for (int c = 0; c < st.splits; ++c) M = std::max(M, st.m[size_t(c) * rows + row]);
    float L = 0.f;
    float* out = a.out != nullptr && s.Dv > 0 ? a.out + size_t(row) * s.Dv : nullptr;
    if (out) std::fill(out, out + s.Dv, 0.f);
    if (M != kNegInf) {
      for (int c = 0; c < st.splits; ++c) {
        const size_t o = size_t(c) * rows + row;
        if (st.l[o] == 0.f) continue;  // empty part (m = -inf)
        const float w = std::exp(st.m[o] - M);
        L += st.l[o] * w;
        if (out)
          for (int d = 0; d < s.Dv; ++d) out[d] += w * st.acc[o * s.Dv + d];
      }
    }
    const bool empty = L == 0.f;
    if (out && !empty)
      for (int d = 0; d < s.Dv; ++d) out[d] /= L;
    if (a.lse != nullptr) a.lse[row] = empty ? kNegInf : M + std::log(L);
  }
}

// Parts per item so that about 4 work items per thread exist, each part at least kMinSplitKeys keys
// (`keys` = keys per item); 1 when the items already fill the threads.
constexpr int kMinSplitKeys = 1024;
inline int kv_splits(long long items, long long keys) {
#ifdef SPATTN_NO_SPLIT_KV  // benchmarks only (cpp/bench/dense_threads.cpp): time decode without splitting
  return 1;
#endif
  const long long want = 4LL * omp_get_max_threads();
  if (items >= want || keys < 2 * kMinSplitKeys) return 1;
  const long long by_threads = (want + items - 1) / items;
  return int(std::max<long long>(1, std::min<long long>(by_threads, keys / kMinSplitKeys)));
}

// Entries [lo, hi) of part `part` of `splits` equal parts of [begin, end).
inline std::pair<int64_t, int64_t> split_range(int64_t begin, int64_t end, int part, int splits) {
  const int64_t n = end - begin;
  return {begin + n * part / splits, begin + n * (part + 1) / splits};
}

// Work items of TokenIndices: one (batch, query head, query group) each; shared by the kernel
// and the token-mass statistic.
struct TokenItems {
  const AttnShape& s;
  const TokenIndicesView& ix;
  long long items() const { return (long long)s.B * s.Hq * ix.G; }
  WorkItem item(long long it) const {
    WorkItem w;
    const int g = int(it % ix.G);
    w.h0 = int((it / ix.G) % s.Hq);
    w.b = int(it / ((long long)ix.G * s.Hq));
    w.hk = w.h0 / s.group();
    w.i0 = g * ix.group_size;
    w.i1 = std::min(s.Nq, w.i0 + ix.group_size);
    return w;
  }
  int gather(GatheredKeys& gk, const AttnArgs& a, const WorkItem& w, int lo = 0, int hi = -1) const {
    if (hi < 0) hi = ix.K;
    return gk.gather(ix.row(w.b, w.h0, w.i0 / ix.group_size) + lo, hi - lo, a.k + s.k_index(w.b, w.hk, 0),
                     value_head(a, w), s.D, s.Dv);
  }
};

}  // namespace spattn::detail
