// MInference vertical-slash attention (Jiang et al., "MInference 1.0", NeurIPS 2024), executed
// token-exactly on the tile engine. The official path (microsoft/MInference,
// minference/ops/pit_sparse_flash_attention_v2.py `vertical_slash_sparse_attention`) converts the
// sorted vertical keys and descending slash offsets into, per 64-query block, a list of 64-key
// tiles and single columns (csrc/vertical_slash_index.cu `convert_vertical_slash_indexes_kernel`),
// then runs a causal flash kernel over them. Here each work item (batch, query head, query block)
// derives its runs with the same conversion (vertical_slash_runs: O(NV + NS), no stored index
// lists), reads the slash ranges in place from the transposed K and gathers the columns, all
// through one online softmax (SpanTiler); the causal rule is applied per element.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine.hpp"
#include "spattn/kernels.hpp"

namespace spattn {

namespace {

int row_count(const int32_t* row, int n) {
  int c = 0;
  while (c < n && row[c] >= 0) ++c;
  return c;
}

}  // namespace

void VerticalSlashView::check_against(const AttnShape& s) const {
  const auto fail = [](const std::string& m) { throw std::invalid_argument(m); };
  if (block < 1) fail("vertical-slash block must be >= 1, got " + std::to_string(block));
  if (B != s.B) fail("vertical-slash indices have batch " + std::to_string(B) + ", q has " + std::to_string(s.B));
  if (H != s.Hq && H != 1)
    fail("vertical-slash indices have " + std::to_string(H) + " heads, q has " + std::to_string(s.Hq) + " (need Hq or 1)");
  if (s.Nq != s.Nk) fail("vertical-slash attention needs Nq == Nk, got " + std::to_string(s.Nq) + " and " + std::to_string(s.Nk));
  if (len != s.Nk)
    fail("vertical-slash indices were made for length " + std::to_string(len) + ", the call has " + std::to_string(s.Nk));
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int32_t* v = vertical_row(b, h);
      const int nv = row_count(v, NV);
      for (int c = nv; c < NV; ++c)
        if (v[c] != -1) fail("vertical: -1 padding must end a row (b=" + std::to_string(b) + ", h=" + std::to_string(h) + ")");
      for (int c = 0; c < nv; ++c)
        if (v[c] >= len || (c > 0 && v[c] <= v[c - 1]))
          fail("vertical: each row must hold strictly increasing key positions in [0, " + std::to_string(len) +
               ") (b=" + std::to_string(b) + ", h=" + std::to_string(h) + ")");
      const int32_t* o = slash_row(b, h);
      const int ns = row_count(o, NS);
      for (int c = ns; c < NS; ++c)
        if (o[c] != -1) fail("slash: -1 padding must end a row (b=" + std::to_string(b) + ", h=" + std::to_string(h) + ")");
      for (int c = 0; c < ns; ++c)
        if (o[c] >= len || (c > 0 && o[c] >= o[c - 1]))
          fail("slash: each row must hold strictly decreasing offsets in [0, " + std::to_string(len) + ") (b=" +
               std::to_string(b) + ", h=" + std::to_string(h) + ")");
    }
}

void vertical_slash_runs(const int32_t* v, int nv, const int32_t* s, int ns, int start, int block,
                         std::vector<KeyRun>& runs) {
  runs.clear();
  const int end = start + block;
  int vi = 0;
  const auto next_vertical = [&]() { return vi < nv ? v[vi++] : end + block; };  // official sentinel
  int si = 0;
  while (si < ns && s[si] >= end) ++si;  // diagonals that start right of the block
  if (si == ns) {
    for (int c = 0; c < nv && v[c] < start; ++c) runs.push_back({v[c], v[c] + 1, true});
    return;
  }
  int cur = next_vertical();
  int e = std::max(end - s[si++], block);
  int rs = e - block, re = e;
  for (;;) {
    if (cur < re) {
      if (cur < rs) runs.push_back({cur, cur + 1, true});
      cur = next_vertical();
      continue;
    }
    if (si == ns) {
      runs.push_back({rs, re, false});
      return;
    }
    e = std::max(end - s[si++], block);
    if (e > re + block) {
      runs.push_back({rs, re, false});
      rs = e - block;
      re = e;
    } else if (e > re) {
      re += block;
    }
  }
}

namespace {

struct VerticalSlashVariant {
  const AttnArgs& a;
  const detail::TransposedK& kt;
  const VerticalSlashView& vs;
  int G;  // query blocks

  struct Local {
    detail::GatheredKeys gk;
    std::vector<KeyRun> runs;
    std::vector<int32_t> cols;
  };

  long long items() const { return (long long)a.shape.B * a.shape.Hq * G; }
  detail::WorkItem item(long long it) const {
    detail::WorkItem w;
    const int g = G - 1 - int(it % G);  // latest blocks (most keys) first
    w.h0 = int((it / G) % a.shape.Hq);
    w.b = int(it / ((long long)G * a.shape.Hq));
    w.hk = w.h0 / a.shape.group();
    w.i0 = g * vs.block;
    w.i1 = std::min(a.shape.Nq, w.i0 + vs.block);
    return w;
  }
  Local local() const {
    return {detail::GatheredKeys(std::max(1, vs.NV), a.shape.D, a.shape.Dv, std::min(vs.block, a.shape.Nq)), {}, {}};
  }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& l) const {
    const AttnShape& s = a.shape;
    const int h = vs.H == 1 ? 0 : w.h0;
    const int32_t* vrow = vs.vertical_row(w.b, h);
    const int32_t* srow = vs.slash_row(w.b, h);
    vertical_slash_runs(vrow, row_count(vrow, vs.NV), srow, row_count(srow, vs.NS), w.i0, vs.block, l.runs);
    const int kend = detail::key_end(a, w);
    const int min_lim = w.i0 + s.causal_offset();
    l.cols.clear();
    for (const KeyRun& r : l.runs)
      if (r.column && r.start < kend) l.cols.push_back(r.start);
    const float* vh = detail::value_head(a, w);
    const int ncol = l.gk.gather(l.cols.data(), int(l.cols.size()), a.k + s.k_index(w.b, w.hk, 0), vh, s.D, s.Dv);
    const detail::OnlineSoftmax step{};
    detail::SpanTiler<detail::OnlineSoftmax> tiler(step);
    int c = 0;
    for (size_t r = 0; r < l.runs.size(); ++r) {
      const KeyRun& run = l.runs[r];
      if (run.column) {
        if (run.start >= kend) continue;
        int n = 1;  // consecutive gathered columns go in as one segment
        while (r + 1 < l.runs.size() && l.runs[r + 1].column && l.runs[r + 1].start < kend) ++n, ++r;
        tiler.add_segment(t, w.rows(), l.gk.segment(c, n, s.Dv), l.gk.pos[c + n - 1] > min_lim);
        c += n;
        continue;
      }
      const int e = std::min(run.end, kend);
      if (run.start < e) tiler.add(t, w.rows(), kt, w.b, w.hk, vh, s.Dv, run.start, e, e - 1 > min_lim);
    }
    (void)ncol;
    tiler.flush(t, w.rows());
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& w, Local&) const { detail::store_item(t, a, w); }
};

}  // namespace

void vertical_slash_attention(const AttnArgs& a, const VerticalSlashView& vs) {
  const AttnShape& s = a.shape;
  s.validate();
  if (!a.causal) throw std::invalid_argument("vertical_slash_attention: defined for causal attention (as MInference)");
  if (a.kv != KVStorage::F32) throw std::invalid_argument("vertical_slash_attention: K/V must be float32");
  vs.check_against(s);
  if (s.Nq == 0) return;
  const int rows = std::min(vs.block, s.Nq);
  const detail::TransposedK kt(a, detail::use_transposed_k(rows));
  const VerticalSlashVariant var{a, kt, vs, ceil_div(s.Nq, vs.block)};
  detail::run_tiles(a, var, rows, s.Dv);
}

std::vector<double> vertical_slash_pairs(const VerticalSlashView& vs) {
  std::vector<double> pairs(size_t(vs.B) * vs.H, 0.0);
  const int G = ceil_div(vs.len, vs.block);
#pragma omp parallel for schedule(dynamic, 1)
  for (long long bh = 0; bh < (long long)vs.B * vs.H; ++bh) {
    const int b = int(bh / vs.H), h = int(bh % vs.H);
    const int32_t* vrow = vs.vertical_row(b, h);
    const int32_t* srow = vs.slash_row(b, h);
    std::vector<KeyRun> runs;
    double total = 0.0;
    for (int g = 0; g < G; ++g) {
      const int i0 = g * vs.block, i1 = std::min(vs.len, i0 + vs.block);
      vertical_slash_runs(vrow, row_count(vrow, vs.NV), srow, row_count(srow, vs.NS), i0, vs.block, runs);
      for (const KeyRun& r : runs) {
        const int e = std::min(r.end, vs.len);
        for (int i = i0; i < i1; ++i) total += std::max(0, std::min(e, i + 1) - r.start);
      }
    }
    pairs[size_t(bh)] = total;
  }
  return pairs;
}

std::vector<int32_t> vertical_slash_token_indices(const VerticalSlashView& vs, int* kmax) {
  const int G = ceil_div(vs.len, vs.block);
  const long long rows = (long long)vs.B * vs.H * G;
  std::vector<int> count(size_t(rows), 0);
  const auto each_row = [&](auto&& fn) {
#pragma omp parallel
    {
      std::vector<KeyRun> runs;
#pragma omp for schedule(dynamic, 16)
      for (long long r = 0; r < rows; ++r) {
        const int g = int(r % G), h = int((r / G) % vs.H), b = int(r / ((long long)G * vs.H));
        const int32_t* vrow = vs.vertical_row(b, h);
        const int32_t* srow = vs.slash_row(b, h);
        const int i0 = g * vs.block, lim = std::min(vs.len, i0 + vs.block);  // keys >= lim are never visible
        vertical_slash_runs(vrow, row_count(vrow, vs.NV), srow, row_count(srow, vs.NS), i0, vs.block, runs);
        fn(r, runs, lim);
      }
    }
  };
  each_row([&](long long r, const std::vector<KeyRun>& runs, int lim) {
    int n = 0;
    for (const KeyRun& k : runs) n += std::max(0, std::min(k.end, lim) - k.start);
    count[size_t(r)] = n;
  });
  const int K = rows > 0 ? *std::max_element(count.begin(), count.end()) : 0;
  *kmax = K;
  std::vector<int32_t> idx(size_t(rows) * K, -1);
  each_row([&](long long r, const std::vector<KeyRun>& runs, int lim) {
    int32_t* out = idx.data() + size_t(r) * K;
    int n = 0;
    for (const KeyRun& k : runs)
      for (int j = k.start; j < std::min(k.end, lim); ++j) out[n++] = j;
  });
  return idx;
}

}  // namespace spattn
