// Exact attention mass on a per-query compressed key grid (SEA's distillation target), on the
// tile engine: pass 1 the row log-sum-exp, pass 2 the exact probabilities of each key tile
// added to the grid column that holds each key, with the sums of p^2 and p log p per row.
#include <cmath>

#include "../kernels/engine.hpp"
#include "spattn/estimators/sea_grid.hpp"
#include "spattn/kernels.hpp"
#include "spattn/statistics.hpp"

namespace spattn {

namespace {

// Column boundaries: SEA's accuracy grid (estimators/sea_grid.hpp), the grid of the official
// training loss (resize_from_m_to_t).
inline int boundary(int c, int L, int width) { return sea_accuracy_start(c, L, width); }

constexpr int kRowsPerItem = 64;

struct TargetsVariant {
  const AttnArgs& a;
  const detail::TransposedK& kt;
  float* lse;  // written by the first pass of each item (sweep_item_span)
  int width, nqt;
  float *mass, *psq, *plogp;

  struct Reducer {
    const TargetsVariant& v;
    int i0 = 0, n = 0;
    std::vector<double> acc, sq, ent;  // rows x width, rows, rows
    void operator()(int r, const float* p, const int* pos, int cnt) {
      const int i = i0 + r % n;
      const int L = v.a.causal ? std::clamp(i + v.a.shape.causal_offset() + 1, 0, v.a.shape.Nk) : v.a.shape.Nk;
      double* row = acc.data() + size_t(r) * v.width;
      // Column of the first key: the largest c with boundary(c) <= pos[0].
      int c = std::min(v.width - 1, int((long long)pos[0] * v.width / std::max(L, 1)));
      while (c > 0 && boundary(c, L, v.width) > pos[0]) --c;
      while (c + 1 < v.width && boundary(c + 1, L, v.width) <= pos[0]) ++c;
      int next = boundary(c + 1, L, v.width);
      for (int j = 0; j < cnt; ++j) {
        while (c < v.width && pos[j] >= next) {
          ++c;
          next = c + 1 <= v.width ? boundary(c + 1, L, v.width) : L;
        }
        const double pr = p[j];
        if (c < v.width) row[c] += pr;  // keys past the last column (L >= 5000 width) count in no column
        sq[r] += pr * pr;
        if (pr > 0.0) ent[r] += pr * std::log(pr);  // p = 0 (underflow) adds nothing
      }
    }
  };
  struct Local {
    Reducer red;
    std::vector<float> row_lse;
  };

  long long items() const { return (long long)a.shape.B * a.shape.Hkv * nqt; }
  detail::WorkItem item(long long it) const { return detail::grouped_item(a.shape, it, kRowsPerItem, nqt); }
  Local local() const {
    const size_t rows = size_t(a.shape.group()) * kRowsPerItem;
    return {Reducer{*this, 0, 0, std::vector<double>(rows * width), std::vector<double>(rows), std::vector<double>(rows)},
            std::vector<float>(rows)};
  }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& l) const {
    l.red.i0 = w.i0;
    l.red.n = w.n();
    std::fill(l.red.acc.begin(), l.red.acc.end(), 0.0);
    std::fill(l.red.sq.begin(), l.red.sq.end(), 0.0);
    std::fill(l.red.ent.begin(), l.red.ent.end(), 0.0);
    detail::sweep_item_span(t, a, kt, w, lse, l.row_lse.data(), l.red);
  }
  void finish(const detail::TileScratch&, const detail::WorkItem& w, Local& l) const {
    for (int g = 0; g < w.stack; ++g)
      for (int r = 0; r < w.n(); ++r) {
        const size_t row = a.shape.row_index(w.b, w.h0 + g, w.i0 + r), sr = size_t(g) * w.n() + r;
        for (int c = 0; c < width; ++c) mass[row * width + c] = float(l.red.acc[sr * width + c]);
        psq[row] = float(l.red.sq[sr]);
        plogp[row] = float(l.red.ent[sr]);
      }
  }
};

}  // namespace

void compressed_attention_targets(const AttnArgs& a, int width, float* mass, float* psq, float* plogp) {
  const AttnShape& s = a.shape;
  s.validate();
  if (width < 1) throw std::invalid_argument("width must be >= 1");
  const size_t rows_total = size_t(s.B) * s.Hq * s.Nq;
  std::fill(mass, mass + rows_total * width, 0.f);
  std::fill(psq, psq + rows_total, 0.f);
  std::fill(plogp, plogp + rows_total, 0.f);
  if (s.Nq == 0 || s.Nk == 0) return;
  std::vector<float> lse(rows_total);
  const AttnArgs qk = detail::statistics_args(a);
  const int rows = s.group() * std::min(kRowsPerItem, s.Nq);
  const detail::TransposedK kt(qk, detail::use_transposed_k(rows));
  const TargetsVariant var{qk, kt, lse.data(), width, ceil_div(s.Nq, kRowsPerItem), mass, psq, plogp};
  detail::run_tiles(qk, var, rows, 0);
  check_logits_in_range(a, lse.data());
}

}  // namespace spattn
