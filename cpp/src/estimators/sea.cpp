// SEA (Lee et al., ICLR 2024; gmlwns2000/sea-attention): the selection of keys from a compressed
// estimate, as the official PerlinAttention.forward does it, and the training-free estimate.
// Selection (official): per query, the heads' compressed rows are ranked together
// (k_flatten_dim 'causal_batch'), budget round(H k width / L_i) (torch.round: half to even)
// clamped to >= 1; each kept column expands to keys on the per-query grid (sea_grid.hpp): the
// accuracy path (resize_from_m_to_t, default) attends every key of the column, the speed path
// (scan_col / __scan_col_4_compute) at most k keys spread evenly, v_end - 1 - floor(i n / k').
// The training-free estimate is NOT the paper's estimator (which is a learned encoder and CNN
// decoder over a Performer pass, python/spattn/methods/sea.py): it is the FAVOR+ linear-attention
// estimate itself with the accuracy-grid column indicators as values. The exact distillation
// target is statistics/compressed_targets.cpp.
#include <algorithm>
#include <cmath>

#include <Eigen/Core>

#include "spattn/estimators/sea.hpp"
#include "spattn/estimators/sea_grid.hpp"
#include "spattn/kernels.hpp"

namespace spattn {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat>;

// Visible prefix length of query i.
inline int prefix_len(const AttnShape& s, bool causal, int i) {
  return causal ? std::clamp(i + s.causal_offset() + 1, 0, s.Nk) : s.Nk;
}

// FAVOR+ features phi(x) = exp(W x' - |x'|^2 / 2 - stab), x' = sqrt(scale) x, so that
// E[phi(q) . phi(k)] is proportional to exp(scale q . k). Rows of x (n x D) -> (n x m).
// stab: per row (queries) or one constant over all rows (keys); both cancel in the ratio.
RowMat favor_features(const float* x, int n, int D, const float* W, int m, float scale, bool per_row_stab) {
  RowMat xs = CMap(x, n, D) * std::sqrt(scale);
  RowMat u = xs * CMap(W, m, D).transpose();
  const Eigen::VectorXf half_norm = xs.rowwise().squaredNorm() * 0.5f;
  u.colwise() -= half_norm;
  if (per_row_stab) {
    const Eigen::VectorXf mx = u.rowwise().maxCoeff();
    u.colwise() -= mx;
  } else if (n > 0) {
    u.array() -= u.maxCoeff();
  }
  u.array() = u.array().exp();
  return u;
}

}  // namespace

void SeaParams::validate() const {
  require_min("sea", "k", k, 1);
  require_min("sea", "compressed_width", compressed_width, 1);
  require_min("sea", "nb_features", nb_features, 1);
  // Both size per-query (width) and per-key (features) buffers: cap them far above any paper's
  // value (width 128-256, features D ln D / 8) so a typo gives an error, not an out-of-memory kill.
  if (compressed_width > (1 << 16)) param_error("sea", "compressed_width", "be <= 65536", compressed_width);
  if (nb_features && *nb_features > (1 << 16)) param_error("sea", "nb_features", "be <= 65536", *nb_features);
}

void sea_estimate(const AttnArgs& a, const float* W, int m, const SeaParams& p, float* est) {
  const AttnShape& s = a.shape;
  s.validate();
  p.validate();
  if (m < 1) throw std::invalid_argument("sea: need at least one random feature");
  const float scale = a.effective_scale();
  const int W_ = p.compressed_width;
  std::fill(est, est + size_t(s.B) * s.Hq * s.Nq * W_, 0.f);

#pragma omp parallel for schedule(dynamic, 1)
  for (long long t = 0; t < (long long)s.B * s.Hq; ++t) {
    const int b = int(t / s.Hq), h = int(t % s.Hq), hk = h / s.group();
    // Prefix sums of the key features, Z[j] = sum_{j' < j} phi(k_j') ((Nk + 1) x m), accumulated
    // in double and stored in float. (Recomputed per query head of a GQA group: cheap next to
    // the estimate itself.)
    const RowMat pk = favor_features(a.k + s.k_index(b, hk, 0), s.Nk, s.D, W, m, scale, false);
    RowMat Z(s.Nk + 1, m);
    Eigen::VectorXd run = Eigen::VectorXd::Zero(m);
    Z.row(0).setZero();
    for (int j = 0; j < s.Nk; ++j) {
      run += pk.row(j).transpose().cast<double>();
      Z.row(j + 1) = run.transpose().cast<float>();
    }
    const RowMat pq = favor_features(a.q + s.q_index(b, h, 0), s.Nq, s.D, W, m, scale, true);
    std::vector<float> F(W_ + 1);
    // Queries in order: consecutive queries read nearly the same rows of Z (cache-friendly).
    for (int i = 0; i < s.Nq; ++i) {
      const int L = prefix_len(s, a.causal, i);
      if (L == 0) continue;
      // F[c] = phi(q_i) . Z[start(c)]: the estimated mass of the keys before column c (accuracy grid).
      for (int c = 0; c <= W_; ++c) F[c] = pq.row(i).dot(Z.row(sea_accuracy_start(c, L, W_)));
      if (!(F[W_] > 0.f)) continue;
      float* row = est + (size_t(t) * s.Nq + i) * W_;
      const float inv = 1.f / F[W_];
      for (int c = 0; c < W_; ++c) row[c] = std::max(0.f, F[c + 1] - F[c]) * inv;
    }
  }
}

std::vector<int32_t> sea_select(const float* est, const AttnShape& s, bool causal, const SeaParams& p, bool speed_path,
                                int* k_max) {
  p.validate();
  const int W_ = p.compressed_width, H = s.Hq;
  // Pass 1: keys per (b, h, i) to size the index array; pass 2: fill it.
  std::vector<int> counts(static_cast<size_t>(s.B) * H * s.Nq, 0);
  std::vector<int32_t> out;
  int K = 0;
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) {
      K = 0;
      for (int c : counts) K = std::max(K, c);
      out.assign(static_cast<size_t>(s.B) * H * s.Nq * std::max(K, 1), -1);
    }
#pragma omp parallel
    {
      std::vector<float> cat(static_cast<size_t>(H) * W_);
      std::vector<int> idx(static_cast<size_t>(H) * W_);
      std::vector<int> used(H);
#pragma omp for schedule(dynamic, 16)
      for (long long bi = 0; bi < (long long)s.B * s.Nq; ++bi) {
        const int b = int(bi / s.Nq), i = int(bi % s.Nq);
        const int L = prefix_len(s, causal, i);
        if (L == 0) continue;
        for (int h = 0; h < H; ++h)
          std::copy_n(est + ((size_t(b) * H + h) * s.Nq + i) * W_, W_, cat.data() + size_t(h) * W_);
        // Official: per_item_top_k = round(H * (k * width / L)) (torch.round, half to even), >= 1.
        const double want = std::nearbyint(double(H) * (double(p.k) * W_ / L));
        const long long n = std::clamp<long long>((long long)std::max(want, 1.0), 1, (long long)H * W_);
        for (int f = 0; f < H * W_; ++f) idx[f] = f;
        if (n < (long long)H * W_) {
          // NaN estimates rank last; ties go to the lower flat index (head-major, then column).
          std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int x, int y) {
            const float a = std::isnan(cat[x]) ? -INFINITY : cat[x], c = std::isnan(cat[y]) ? -INFINITY : cat[y];
            return a > c || (a == c && x < y);
          });
          std::sort(idx.begin(), idx.begin() + n);  // head-major, then column: keys come out sorted
        }
        std::fill(used.begin(), used.end(), 0);
        auto emit = [&](int h, int key) {
          if (pass == 1) out[((size_t(b) * H + h) * s.Nq + i) * K + used[h]] = key;
          ++used[h];
        };
        for (long long r = 0; r < n; ++r) {
          const int h = idx[r] / W_, c = idx[r] % W_;
          if (!speed_path) {  // every key of the column
            const int a0 = sea_accuracy_start(c, L, W_), a1 = sea_accuracy_start(c + 1, L, W_);
            for (int j = a0; j < a1; ++j) emit(h, j);
          } else {  // at most k keys, spread evenly from the end: v_end - 1 - floor(t size / n)
            const int v0 = sea_speed_start(c, L, W_), v1 = sea_speed_start(c + 1, L, W_);
            const long long size = v1 - v0, m = std::min<long long>(size, p.k);
            for (long long t = m - 1; t >= 0; --t) emit(h, int(v1 - 1 - (t * size) / m));
          }
        }
        for (int h = 0; h < H; ++h) counts[(size_t(b) * H + h) * s.Nq + i] = used[h];
      }
    }
  }
  *k_max = std::max(K, 1);
  return out;
}

}  // namespace spattn
