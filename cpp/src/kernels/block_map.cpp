// Block-pooled exact attention map (the quantity behind the oracle top-k mask, the recall of a
// BlockMask and SeerAttention's training target). Pass 1 runs the dense kernel for row
// statistics only (Dv = 0); pass 2 recomputes S one block_q x block_k tile at a time,
// normalises with the final log-sum-exp and pools each tile to one number. Memory: the map
// (B, Hq, nqb, nkb) plus O(N) row statistics; never Nq x Nk.
#include "spattn/kernels.hpp"
#include "tile.hpp"

namespace spattn {

void block_attention_map(const AttnArgs& a, int block_q, int block_k, BlockPool pool, float* map) {
  const AttnShape& s = a.shape;
  s.validate();
  if (block_q < 1 || block_k < 1) throw std::invalid_argument("spattn: block sizes must be >= 1");
  const int nqb = ceil_div(s.Nq, block_q), nkb = ceil_div(s.Nk, block_k);
  std::fill(map, map + size_t(s.B) * s.Hq * nqb * nkb, 0.f);
  if (s.Nq == 0 || s.Nk == 0) return;

  std::vector<float> lse_own;
  float* lse = a.lse;
  if (lse == nullptr) {
    lse_own.resize(size_t(s.B) * s.Hq * s.Nq);
    lse = lse_own.data();
  }
  row_logsumexp(a, lse);

  const long long items = (long long)s.B * s.Hq * nqb;
  const int off = s.causal_offset();
  const float scale = a.effective_scale();
  using namespace detail;

#pragma omp parallel
  {
    TileScratch t(block_q, s.D, 0, block_k);
#pragma omp for schedule(dynamic, 1)
    for (long long it = 0; it < items; ++it) {
      const int qb = nqb - 1 - int(it % nqb);
      const int h = int((it / nqb) % s.Hq);
      const int b = int(it / ((long long)nqb * s.Hq));
      const int hk = h / s.group();
      const int i0 = qb * block_q, i1 = std::min(s.Nq, i0 + block_q), n = i1 - i0;
      t.load_queries(a, b, h, i0, i1, 0, scale);
      const int kend = a.causal ? std::clamp(i1 - 1 + off + 1, 0, s.Nk) : s.Nk;
      const float* kh = a.k + s.k_index(b, hk, 0);
      float* mrow = map + ((size_t(b) * s.Hq + h) * nqb + qb) * size_t(nkb);
      for (int c = 0; c * block_k < kend; ++c) {
        const int j0 = c * block_k, cols = std::min(block_k, s.Nk - j0);
        MMap S(t.s.data(), n, cols, Stride(cols));
        S.noalias() = CMap(t.q.data(), n, s.D, Stride(s.D)) *
                      CMap(kh + size_t(j0) * s.D, cols, s.D, Stride(s.D)).transpose();
        float acc = 0.f;
        for (int r = 0; r < n; ++r) {
          const float l = lse[s.row_index(b, h, i0 + r)];
          if (l == kNegInf) continue;
          const int vis = a.causal ? std::clamp(t.qlim[r] - j0 + 1, 0, cols) : cols;
          if (vis == 0) continue;
          ArrMap row(t.s.data() + size_t(r) * cols, vis);
          row = (row - l).exp();
          acc = pool == BlockPool::Sum ? acc + row.sum() : std::max(acc, row.maxCoeff());
        }
        mrow[c] = acc;
      }
    }
  }
}

}  // namespace spattn
