// SEA (Lee et al., ICLR 2024; gmlwns2000/sea-attention), training-free estimator.
// What follows the official code: the per-query compressed grid (column c of query i covers
// [round(c L_i / width), round((c+1) L_i / width)) of its visible prefix), the grouped top-k
// over heads with budget round(H k width / L_i) clamped to [1, H width], the expansion capped at
// k keys per column (the last k of the range), dense rows while L_i <= k.
// Deviation (documented in the Python docstring): the compressed row is the linear-attention
// estimate itself, with FAVOR+ softmax-kernel features and the column indicator as values,
// instead of the learned encoder/decoder (CNN) the paper trains on top of Performer outputs;
// the official causal model uses ReLU features, which only make sense with that decoder.
#include <algorithm>
#include <cmath>

#include <Eigen/Core>

#include "spattn/estimators.hpp"

namespace spattn {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using DRowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat>;

// Visible prefix length of query i.
inline int prefix_len(const AttnShape& s, bool causal, int i) {
  return causal ? std::clamp(i + s.causal_offset() + 1, 0, s.Nk) : s.Nk;
}

// Column boundary round(c L / width), half to even like torch.round.
inline int boundary(int c, int L, int width) {
  return int(std::nearbyint(double(c) * L / width));
}

// FAVOR+ features phi(x) = exp(W x' - |x'|^2 / 2 - stab) with x' = x * D^-1/4 * sqrt(scale*sqrt(D))
// so that E[phi(q) . phi(k)] is proportional to exp(scale q . k). Rows of x (n x D) -> (n x m).
DRowMat favor_features(const float* x, int n, int D, const float* W, int m, float scale, bool per_row_stab) {
  const float c = std::sqrt(scale);  // x' = sqrt(scale) x: exp(q'.k') = exp(scale q.k)
  RowMat xs = CMap(x, n, D) * c;
  RowMat u = xs * CMap(W, m, D).transpose();
  DRowMat out(n, m);
  Eigen::VectorXf half_norm = xs.rowwise().squaredNorm() * 0.5f;
  double stab_all = -1e300;
  if (!per_row_stab)
    for (int r = 0; r < n; ++r) stab_all = std::max(stab_all, double(u.row(r).maxCoeff() - half_norm[r]));
  for (int r = 0; r < n; ++r) {
    const double stab = per_row_stab ? double(u.row(r).maxCoeff() - half_norm[r]) : stab_all;
    for (int f = 0; f < m; ++f) out(r, f) = std::exp(double(u(r, f)) - half_norm[r] - stab);
  }
  return out;
}

}  // namespace

void sea_estimate(const AttnArgs& a, const float* W, int m, const SeaParams& p, float* est) {
  const AttnShape& s = a.shape;
  s.validate();
  if (p.width < 1 || p.k < 1) throw std::invalid_argument("sea: width and k must be >= 1");
  if (m < 1) throw std::invalid_argument("sea: need at least one random feature");
  const float scale = a.effective_scale();
  const int W_ = p.width;
  std::fill(est, est + size_t(s.B) * s.Hq * s.Nq * W_, 0.f);

#pragma omp parallel for schedule(dynamic, 1)
  for (long long t = 0; t < (long long)s.B * s.Hq; ++t) {
    const int b = int(t / s.Hq), h = int(t % s.Hq), hk = h / s.group();
    // Key features and their prefix sums Z[j] = sum_{j' < j} phi(k_j'), (Nk + 1) x m.
    // (Recomputed per query head of a GQA group: cheap next to the estimate itself.)
    DRowMat pk = favor_features(a.k + s.k_index(b, hk, 0), s.Nk, s.D, W, m, scale, false);
    DRowMat Z = DRowMat::Zero(s.Nk + 1, m);
    for (int j = 0; j < s.Nk; ++j) Z.row(j + 1) = Z.row(j) + pk.row(j);
    DRowMat pq = favor_features(a.q + s.q_index(b, h, 0), s.Nq, s.D, W, m, scale, true);
    for (int i = 0; i < s.Nq; ++i) {
      const int L = prefix_len(s, a.causal, i);
      if (L == 0) continue;
      float* row = est + (size_t(t) * s.Nq + i) * W_;
      const double total = pq.row(i).dot(Z.row(L));
      if (!(total > 0.0)) continue;
      for (int c = 0; c < W_; ++c) {
        const int a0 = boundary(c, L, W_), a1 = boundary(c + 1, L, W_);
        if (a1 <= a0) continue;
        row[c] = float(std::max(0.0, pq.row(i).dot(Z.row(a1) - Z.row(a0))) / total);
      }
    }
  }
}

std::vector<int32_t> sea_select(const float* est, const AttnShape& s, bool causal, const SeaParams& p, int* k_max) {
  const int W_ = p.width, H = s.Hq;
  // Pass 1: keys per (b, h, i) to size the index array; pass 2: fill it.
  std::vector<int> counts(size_t(s.B) * H * s.Nq, 0);
  std::vector<int32_t> out;
  int K = 0;
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) {
      K = 0;
      for (int c : counts) K = std::max(K, c);
      out.assign(size_t(s.B) * H * s.Nq * std::max(K, 1), -1);
    }
#pragma omp parallel
    {
      std::vector<float> cat(size_t(H) * W_);
      std::vector<int> idx(size_t(H) * W_);
#pragma omp for schedule(dynamic, 16)
      for (long long bi = 0; bi < (long long)s.B * s.Nq; ++bi) {
        const int b = int(bi / s.Nq), i = int(bi % s.Nq);
        const int L = prefix_len(s, causal, i);
        if (L == 0) continue;
        auto emit = [&](int h, int key, int slot) {
          if (pass == 1) out[((size_t(b) * H + h) * s.Nq + i) * K + slot] = key;
        };
        if (L <= p.k) {  // dense while the prefix is short
          for (int h = 0; h < H; ++h) {
            for (int j = 0; j < L; ++j) emit(h, j, j);
            counts[(size_t(b) * H + h) * s.Nq + i] = L;
          }
          continue;
        }
        for (int h = 0; h < H; ++h)
          std::copy_n(est + ((size_t(b) * H + h) * s.Nq + i) * W_, W_, cat.data() + size_t(h) * W_);
        const long long want = std::llround(std::nearbyint(double(H) * p.k * W_ / L));
        const int n = int(std::clamp<long long>(want, 1, (long long)H * W_));
        for (int f = 0; f < H * W_; ++f) idx[f] = f;
        std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int x, int y) {
          return cat[x] > cat[y] || (cat[x] == cat[y] && x < y);
        });
        std::sort(idx.begin(), idx.begin() + n);  // head-major, then column: keys come out sorted
        std::vector<int> used(H, 0);
        for (int r = 0; r < n; ++r) {
          const int h = idx[r] / W_, c = idx[r] % W_;
          const int a0 = boundary(c, L, W_), a1 = boundary(c + 1, L, W_);
          for (int j = std::max(a0, a1 - p.k); j < a1; ++j) emit(h, j, used[h]++);
        }
        for (int h = 0; h < H; ++h) counts[(size_t(b) * H + h) * s.Nq + i] = used[h];
      }
    }
  }
  *k_max = std::max(K, 1);
  return out;
}

}  // namespace spattn
