// Column (vertical) and diagonal (slash) sums of exact attention, on the tile engine: pass 1 the
// row log-sum-exp, pass 2 the exact probabilities of each key tile added to the key's column and
// to the query's diagonal. FlexPrefill's last-block statistics (official `get_active_blocks`:
// the last block of queries attends causally to every key, softmax per row, then column means
// and diagonal sums) call it with those queries only.
#include "../kernels/engine.hpp"
#include "spattn/kernels.hpp"
#include "spattn/statistics.hpp"

namespace spattn {

namespace {

struct VerticalSlashVariant {
  const AttnArgs& a;
  const detail::TransposedK& kt;
  float* lse;  // written by the first pass of each item (sweep_item_span)
  float *vertical, *slash;

  struct Reducer {
    const VerticalSlashVariant& v;
    int n = 0, i0 = 0;
    std::vector<float> vert, sl;  // stack x Nk each
    void operator()(int r, const float* p, const int* pos, int cnt) {
      const int Nk = v.a.shape.Nk, g = r / n;
      const int lim = i0 + r % n + v.a.shape.causal_offset();  // the query's causal limit
      float* vr = vert.data() + size_t(g) * Nk;
      float* sr = sl.data() + size_t(g) * Nk;
      for (int c = 0; c < cnt; ++c) {
        vr[pos[c]] += p[c];
        sr[Nk - 1 - (lim - pos[c])] += p[c];
      }
    }
  };
  struct Local {
    Reducer red;
    std::vector<float> row_lse;
  };

  long long items() const { return (long long)a.shape.B * a.shape.Hkv; }
  detail::WorkItem item(long long it) const {
    detail::WorkItem w;
    w.hk = int(it % a.shape.Hkv);
    w.b = int(it / a.shape.Hkv);
    w.stack = a.shape.group();
    w.h0 = w.hk * w.stack;
    w.i0 = 0;
    w.i1 = a.shape.Nq;
    return w;
  }
  Local local() const {
    const size_t n = size_t(a.shape.group()) * a.shape.Nk;
    return {Reducer{*this, 0, 0, std::vector<float>(n), std::vector<float>(n)},
            std::vector<float>(size_t(a.shape.group()) * a.shape.Nq)};
  }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& l) const {
    l.red.n = w.n();
    l.red.i0 = w.i0;
    std::fill(l.red.vert.begin(), l.red.vert.end(), 0.f);
    std::fill(l.red.sl.begin(), l.red.sl.end(), 0.f);
    detail::sweep_item_span(t, a, kt, w, lse, l.row_lse.data(), l.red);
  }
  void finish(const detail::TileScratch&, const detail::WorkItem& w, Local& l) const {
    const int Nk = a.shape.Nk;
    const float nq = float(a.shape.Nq);
    for (int g = 0; g < w.stack; ++g) {
      const size_t o = (size_t(w.b) * a.shape.Hq + w.h0 + g) * Nk;
      for (int j = 0; j < Nk; ++j) {
        vertical[o + j] = l.red.vert[size_t(g) * Nk + j] / nq;
        slash[o + j] = l.red.sl[size_t(g) * Nk + j] / nq;
      }
    }
  }
};

}  // namespace

void vertical_slash_sums(const AttnArgs& a, float* vertical, float* slash) {
  const AttnShape& s = a.shape;
  s.validate();
  if (!a.causal) throw std::invalid_argument("vertical_slash_sums: defined for causal attention");
  const size_t n = size_t(s.B) * s.Hq * s.Nk;
  std::fill(vertical, vertical + n, 0.f);
  std::fill(slash, slash + n, 0.f);
  if (s.Nq == 0 || s.Nk == 0) return;
  std::vector<float> lse(size_t(s.B) * s.Hq * s.Nq);
  const AttnArgs qk = detail::statistics_args(a);
  const int rows = s.group() * s.Nq;
  const detail::TransposedK kt(qk, detail::use_transposed_k(rows));
  const VerticalSlashVariant var{qk, kt, lse.data(), vertical, slash};
  detail::run_tiles(qk, var, rows, 0);
  check_logits_in_range(a, lse.data());
}

}  // namespace spattn
