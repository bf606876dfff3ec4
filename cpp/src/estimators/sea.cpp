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
#include "spattn/kernels.hpp"

namespace spattn {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat>;

// Visible prefix length of query i.
inline int prefix_len(const AttnShape& s, bool causal, int i) {
  return causal ? std::clamp(i + s.causal_offset() + 1, 0, s.Nk) : s.Nk;
}

// Column boundary round(c L / width), half to even like torch.round.
inline int boundary(int c, int L, int width) {
  return int(std::nearbyint(double(c) * L / width));
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
      // F[c] = phi(q_i) . Z[round(c L / W)]: the estimated mass of the keys before boundary c.
      for (int c = 0; c <= W_; ++c) F[c] = pq.row(i).dot(Z.row(boundary(c, L, W_)));
      if (!(F[W_] > 0.f)) continue;
      float* row = est + (size_t(t) * s.Nq + i) * W_;
      const float inv = 1.f / F[W_];
      for (int c = 0; c < W_; ++c) row[c] = std::max(0.f, F[c + 1] - F[c]) * inv;
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

namespace spattn {

namespace {

// out[o][t][c] += sum_i sum_taps w[o][i][dt][dw] * in[i][t - dil*(2-dt)][c + dil*(dw-1)] over the
// rows [r0, r1) of the chunk; rows before the chunk start read the halo, beyond it zero.
void causal_conv3x3(const float* in, int cin, const float* w, const float* bias, int cout, int rows, int W, int dil,
                    float* out) {
  for (int o = 0; o < cout; ++o) {
    float* po = out + size_t(o) * rows * W;
    std::fill(po, po + size_t(rows) * W, bias[o]);
    for (int i = 0; i < cin; ++i) {
      const float* pi = in + size_t(i) * rows * W;
      for (int dt = 0; dt < 3; ++dt) {
        const int st = dil * (2 - dt);
        for (int dw = 0; dw < 3; ++dw) {
          const int sw = dil * (dw - 1);
          const float wv = w[((size_t(o) * cin + i) * 3 + dt) * 3 + dw];
          const int c0 = std::max(0, -sw), c1 = std::min(W, W - sw);
          for (int t = st; t < rows; ++t) {
            const float* src = pi + size_t(t - st) * W + sw;
            float* dst = po + size_t(t) * W;
            for (int c = c0; c < c1; ++c) dst[c] += wv * src[c];
          }
        }
      }
    }
  }
}

}  // namespace

void sea_decoder_refine(const float* est, int B, int T, const int32_t* counts, const SeaDecoderWeights& w,
                        float* out) {
  if (w.C < 1 || w.H < 1 || w.W < 1 || w.dil < 1) throw std::invalid_argument("sea: invalid decoder shape");
  constexpr int kChunk = 256;
  const int halo = 4 * w.dil, H = w.H, C = w.C, W = w.W;
  const int nchunks = ceil_div(std::max(T, 1), kChunk);
#pragma omp parallel
  {
    std::vector<float> x, h1, h2;
#pragma omp for schedule(dynamic, 1)
    for (long long it = 0; it < (long long)B * nchunks; ++it) {
      const int b = int(it / nchunks), t0 = int(it % nchunks) * kChunk;
      const int lo = std::max(0, t0 - halo), t1 = std::min(T, t0 + kChunk), rows = t1 - lo;
      if (rows <= 0) continue;
      x.assign(size_t(H) * rows * W, 0.f);
      h1.resize(size_t(C) * rows * W);
      h2.resize(size_t(C) * rows * W);
      for (int h = 0; h < H; ++h)
        for (int t = lo; t < t1; ++t) {
          const float* src = est + ((size_t(b) * H + h) * T + t) * W;
          float* dst = x.data() + (size_t(h) * rows + (t - lo)) * W;
          for (int c = 0; c < W; ++c) dst[c] = std::log(src[c] + 1e-6f);
        }
      causal_conv3x3(x.data(), H, w.w1, w.b1, C, rows, W, w.dil, h1.data());
      for (float& v : h1) v = std::max(v, 0.f);
      causal_conv3x3(h1.data(), C, w.w2, w.b2, C, rows, W, w.dil, h2.data());
      for (float& v : h2) v = std::max(v, 0.f);
      for (int h = 0; h < H; ++h)
        for (int t = t0; t < t1; ++t) {
          const int r = t - lo;
          const float* xr = x.data() + (size_t(h) * rows + r) * W;
          const int32_t* cnt = counts + size_t(t) * W;
          float* z = out + ((size_t(b) * H + h) * T + t) * W;
          for (int c = 0; c < W; ++c) z[c] = xr[c] + w.b3[h] + w.bias[size_t(h) * W + c];
          for (int ch = 0; ch < C; ++ch) {
            const float wv = w.w3[size_t(h) * C + ch];
            const float* hr = h2.data() + (size_t(ch) * rows + r) * W;
            for (int c = 0; c < W; ++c) z[c] += wv * hr[c];
          }
          float mx = -std::numeric_limits<float>::infinity();
          for (int c = 0; c < W; ++c)
            if (cnt[c] > 0) mx = std::max(mx, z[c]);
          if (mx == -std::numeric_limits<float>::infinity()) {
            std::fill(z, z + W, 0.f);
            continue;
          }
          double sum = 0.0;
          for (int c = 0; c < W; ++c) {
            z[c] = cnt[c] > 0 ? std::exp(z[c] - mx) : 0.f;
            sum += z[c];
          }
          const float inv = float(1.0 / sum);
          for (int c = 0; c < W; ++c) z[c] *= inv;
        }
    }
  }
}

}  // namespace spattn
