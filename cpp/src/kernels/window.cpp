// Token-level window attention on the tile engine: every query sees the keys of a window around
// its position plus the first `sinks` keys (StreamingLLM sinks; MInference's A-shape
// `streaming_forward`, whose rule is j <= p and (p - j < n_local or j < n_init)). A work item's
// keys are two contiguous runs read in place, the sinks and the union of its rows' windows; tiles
// where a row's window starts or ends inside the tile hide the keys outside it per element
// (OnlineSoftmax with lower limits), the other tiles run unmasked. Work items stack the query
// heads of a GQA group as the dense kernel does. No split-KV: a window bounds the keys per row.
#include <algorithm>
#include <climits>

#include "engine.hpp"
#include "spattn/kernels.hpp"

namespace spattn {

void WindowSpec::validate() const {
  if (sinks < 0) throw std::invalid_argument("sinks must be >= 0, got " + std::to_string(sinks));
  if (left < -1) throw std::invalid_argument("left must be >= 0 (or -1: unbounded), got " + std::to_string(left));
  if (right < -1) throw std::invalid_argument("right must be >= 0 (or -1: unbounded), got " + std::to_string(right));
}

namespace {

int clamp_int(long long x) { return int(std::clamp<long long>(x, INT_MIN / 2, INT_MAX / 2)); }

struct WindowVariant {
  const AttnArgs& a;
  const detail::TransposedK& kt;
  const WindowSpec& w;
  int bq, nqt;
  struct Local {};

  long long items() const { return (long long)a.shape.B * a.shape.Hkv * nqt; }
  detail::WorkItem item(long long it) const { return detail::grouped_item(a.shape, it, bq, nqt); }
  Local local() const { return {}; }

  // Highest and lowest visible key of a query at position p (the window part, before sinks).
  int upper(long long p) const {
    const int Nk = a.shape.Nk;
    long long hi = w.right < 0 ? Nk - 1 : p + w.right;
    if (a.causal) hi = std::min(hi, p);
    return clamp_int(std::min<long long>(hi, Nk - 1));
  }
  int lower(long long p) const { return clamp_int(w.left < 0 ? 0 : std::max<long long>(0, p - w.left)); }

  // Keys [j0, j1) through the online softmax, tile by tile; a tile is masked above when some row's
  // upper limit (t.qlim) falls inside it, below when some row's lower limit (t.qlo) does.
  void span(detail::TileScratch& t, const detail::WorkItem& wi, int j0, int j1, int min_hi, int max_lo) const {
    const float* vh = detail::value_head(a, wi);
    for (int j = j0; j < j1;) {
      const int cols = std::min({detail::TransposedK::T - j % detail::TransposedK::T, j1 - j, t.bk});
      const detail::KeySegment seg = detail::key_segment(kt, wi.b, wi.hk, j, cols, vh, a.shape.Dv);
      detail::OnlineSoftmax step{j < max_lo};
      step(t, wi.rows(), &seg, 1, j + cols - 1 > min_hi);
      j += cols;
    }
  }

  void keys(detail::TileScratch& t, const detail::WorkItem& wi, Local&) const {
    const AttnShape& s = a.shape;
    const long long off = s.causal_offset();
    const long long p0 = wi.i0 + off, p1 = wi.i1 - 1 + off;  // positions of the item's first and last rows
    const int sinks = int(std::min<long long>(w.sinks, s.Nk));
    // Sinks: every row sees keys j < sinks, up to its causal limit.
    if (sinks > 0) {
      const int end = a.causal ? int(std::clamp<long long>(p1 + 1, 0, sinks)) : sinks;
      for (int r = 0; r < wi.rows(); ++r) t.qlim[r] = a.causal ? t.qlim[r] : INT_MAX;
      span(t, wi, 0, end, a.causal ? clamp_int(p0) : INT_MAX, INT_MIN);
    }
    // Window: keys [max(sinks, lowest lower limit), highest upper limit], each row its own range.
    for (int g = 0; g < wi.stack; ++g)
      for (int r = 0; r < wi.n(); ++r) {
        const long long p = wi.i0 + r + off;
        t.qlim[g * wi.n() + r] = upper(p);
        t.qlo[g * wi.n() + r] = lower(p);
      }
    const int j0 = std::max(sinks, lower(p0)), j1 = upper(p1) + 1;
    if (j1 > j0) span(t, wi, j0, j1, upper(p0), lower(p1));
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& wi, Local&) const { detail::store_item(t, a, wi); }
};

}  // namespace

void window_attention(const AttnArgs& a, const WindowSpec& w) {
  const AttnShape& s = a.shape;
  s.validate();
  w.validate();
  if (a.kv != KVStorage::F32) throw std::invalid_argument("window_attention: K/V must be float32");
  if (s.Nq == 0) return;
  const int G = s.group();
  const int bq = std::max(16, detail::kRowsTarget / std::max(1, G));
  const int nqt = ceil_div(s.Nq, bq);
  const int rows = G * std::min(bq, s.Nq);
  const detail::TransposedK kt(a, detail::use_transposed_k(rows));
  const WindowVariant var{a, kt, w, bq, nqt};
  detail::run_tiles(a, var, rows, s.Dv);
}

}  // namespace spattn
