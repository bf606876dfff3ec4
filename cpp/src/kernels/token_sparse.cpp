// Token-sparse attention executing TokenIndices: for each (batch, query head, query group) the
// listed K/V rows are gathered into a contiguous per-thread scratch tile (sorted indices keep the
// gather cache-friendly) and run through the shared tile update, the causal rule applied per
// element from the gathered positions. Decode is the case Nq = 1, group_size = 1.
// Also hosts token_attention_mass, the recall statistic for TokenIndices.
#include "spattn/kernels.hpp"
#include "tile.hpp"

namespace spattn {

namespace {

// Gathers the valid (>= 0) keys of one index row; returns how many. K rows are stored
// row-major (`k`, for the mass statistic) or transposed (`kt`, d x ld, for the tile update).
struct Gathered {
  bool transposed;
  int ld;
  detail::AlignedFloats k, v;
  std::vector<int> pos;
  Gathered(int K, int d, int dv, bool transposed_)
      : transposed(transposed_), ld(detail::transposed_stride(K)),
        k(transposed_ ? size_t(d) * ld : size_t(K) * d, 0.f), v(size_t(K) * dv), pos(K) {}

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
};

}  // namespace

void token_sparse_attention(const AttnArgs& a, const TokenIndicesView& ix) {
  const AttnShape& s = a.shape;
  s.validate();
  ix.check_against(s);
  if (s.Nq == 0) return;
  const long long items = (long long)s.B * s.Hq * ix.G;
  const float scale = a.effective_scale();

#pragma omp parallel
  {
    const int max_rows = std::min(ix.group_size, s.Nq);
    detail::TileScratch t(max_rows, s.D, s.Dv, detail::kKeyTile);
    Gathered gk(ix.K, s.D, s.Dv, true);
#pragma omp for schedule(dynamic, 1)
    for (long long it = 0; it < items; ++it) {
      const int g = int(it % ix.G);
      const int h = int((it / ix.G) % s.Hq);
      const int b = int(it / ((long long)ix.G * s.Hq));
      const int hk = h / s.group();
      const int i0 = g * ix.group_size, i1 = std::min(s.Nq, i0 + ix.group_size), n = i1 - i0;
      if (n <= 0) continue;
      t.load_queries(a, b, h, i0, i1, 0, scale);
      t.reset(n);
      const int cnt = gk.gather(ix.row(b, h, g), ix.K, a.k + s.k_index(b, hk, 0),
                                s.Dv > 0 ? a.v + s.v_index(b, hk, 0) : nullptr, s.D, s.Dv);
      for (int c = 0; c < cnt; c += t.bk) {
        const int cols = std::min(t.bk, cnt - c);
        const detail::KeySegment seg{gk.k.data() + c, gk.ld, nullptr, s.Dv > 0 ? gk.v.data() + size_t(c) * s.Dv : nullptr,
                                     s.Dv, cols, 0, gk.pos.data() + c};
        tile_update(t, n, &seg, 1, a.causal);
      }
      for (int r = 0; r < n; ++r) detail::store_row(t, r, a, b, h, i0 + r);
    }
  }
}

void token_attention_mass(const AttnArgs& a, const TokenIndicesView& ix, float* mass) {
  const AttnShape& s = a.shape;
  s.validate();
  ix.check_against(s);
  if (s.Nq == 0) return;
  // Pass 1: exact row log-sum-exp (statistics only, no values).
  std::vector<float> lse(size_t(s.B) * s.Hq * s.Nq);
  row_logsumexp(a, lse.data());
  const long long items = (long long)s.B * s.Hq * ix.G;
  const float scale = a.effective_scale();
  const int off = s.causal_offset();
  using namespace detail;

#pragma omp parallel
  {
    Gathered gk(ix.K, s.D, 0, false);
    std::vector<float> qrow(s.D);
#pragma omp for schedule(dynamic, 1)
    for (long long it = 0; it < items; ++it) {
      const int g = int(it % ix.G);
      const int h = int((it / ix.G) % s.Hq);
      const int b = int(it / ((long long)ix.G * s.Hq));
      const int hk = h / s.group();
      const int i0 = g * ix.group_size, i1 = std::min(s.Nq, i0 + ix.group_size);
      const int cnt = gk.gather(ix.row(b, h, g), ix.K, a.k + s.k_index(b, hk, 0), nullptr, s.D, 0);
      for (int i = i0; i < i1; ++i) {
        const size_t row = s.row_index(b, h, i);
        if (lse[row] == kNegInf) {
          mass[row] = std::numeric_limits<float>::quiet_NaN();
          continue;
        }
        Eigen::Map<const Eigen::VectorXf> q(a.q + s.q_index(b, h, i), s.D);
        double total = 0.0;
        for (int c = 0; c < cnt; ++c) {
          if (a.causal && gk.pos[c] > i + off) continue;
          Eigen::Map<const Eigen::VectorXf> kc(gk.k.data() + size_t(c) * s.D, s.D);
          total += std::exp(double(scale) * q.dot(kc) - double(lse[row]));
        }
        mass[row] = float(total);
      }
    }
  }
}

}  // namespace spattn
