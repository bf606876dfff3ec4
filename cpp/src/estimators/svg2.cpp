// SVG2 estimator (see the header for the official behaviour it follows): per-head Euclidean
// k-means of the queries and of the keys, then the dynamic map of the centroids. The distances of
// the k-means are a GEMM of points x centroids (Eigen, float32 as the official Triton kernel), in
// chunks of 256 points so that no N x C buffer exists; the centroid scores are a Cq x Ck Eigen
// product. Neither is an attention logit: the attention itself runs on the tile engine
// (cluster_block_attention).
#include "spattn/estimators/svg2.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <string>

namespace spattn {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat>;

constexpr int kChunk = 256;           // points per distance GEMM
constexpr double kTol = 1e-4;         // official batch_kmeans_Euclid tol
constexpr float kFar = 3.4e38f;       // the official kernel's initial best distance

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Centroids = rows of x picked uniformly with replacement (the official torch.randint init).
void random_init(const float* x, int n, int d, float* cent, int c, int seed, int tensor, long long head) {
  uint64_t state = (uint64_t(uint32_t(seed)) << 32) ^ (uint64_t(tensor) << 62) ^ uint64_t(head) * 0x2545F4914F6CDD1DULL;
  for (int i = 0; i < c; ++i) {
    const uint64_t r = splitmix64(state);
    const int j = int((unsigned __int128)r * uint64_t(n) >> 64);
    std::copy_n(x + size_t(j) * d, d, cent + size_t(i) * d);
  }
}

// The double Python sees for a float32 parameter (its shortest decimal: 0.1f -> 0.1).
double as_python_float(float x) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof(buf), x);
  *r.ptr = '\0';
  return std::strtod(buf, nullptr);
}

float sort_key(float x) { return std::isnan(x) ? -std::numeric_limits<float>::infinity() : x; }

}  // namespace

void Svg2Params::validate() const {
  require_min("svg2", "num_q_centroids", num_q_centroids, 1);
  require_min("svg2", "num_k_centroids", num_k_centroids, 1);
  require_unit_interval("svg2", "top_p_kmeans", top_p_kmeans);
  if (!(min_kc_ratio >= 0.f && min_kc_ratio <= 1.f)) param_error("svg2", "min_kc_ratio", "be in [0, 1]", min_kc_ratio);
  require_min("svg2", "kmeans_iter_init", kmeans_iter_init, 1);
  require_min("svg2", "kmeans_iter_step", kmeans_iter_step, 1);
}

double svg2_kmeans_iteration(const float* x, const float* xsq, int n, int d, const float* cent, int c, int32_t* labels,
                             int32_t* sizes, float* next) {
  if (n <= 0 || c <= 0) return 0.0;
  std::vector<float> csq(static_cast<size_t>(c));
  for (int j = 0; j < c; ++j) {
    float acc = 0.f;
    for (int p = 0; p < d; ++p) acc += cent[size_t(j) * d + p] * cent[size_t(j) * d + p];
    csq[size_t(j)] = acc;
  }
  const CMap C(cent, c, d);
  RowMat cross(std::min(n, kChunk), c);
  // assignment: least ||x||^2 + ||c||^2 - 2 x.c (clamped at 0), lowest index on ties
  for (int r0 = 0; r0 < n; r0 += kChunk) {
    const int m = std::min(kChunk, n - r0);
    cross.topRows(m).noalias() = CMap(x + size_t(r0) * d, m, d) * C.transpose();
    for (int r = 0; r < m; ++r) {
      float best = kFar;
      int arg = 0;
      const float* row = cross.data() + size_t(r) * c;
      for (int j = 0; j < c; ++j) {
        const float dist = std::max(xsq[r0 + r] + csq[size_t(j)] - 2.f * row[j], 0.f);
        if (dist < best) {
          best = dist;
          arg = j;
        }
      }
      labels[r0 + r] = arg;
    }
  }
  // update: mean of the members, an empty cluster keeps its centroid
  std::vector<double> sums(size_t(c) * d, 0.0);
  std::fill(sizes, sizes + c, 0);
  for (int i = 0; i < n; ++i) {
    const int j = labels[i];
    ++sizes[j];
    for (int p = 0; p < d; ++p) sums[size_t(j) * d + p] += x[size_t(i) * d + p];
  }
  double shift = 0.0;
  for (int j = 0; j < c; ++j) {
    double sq = 0.0;
    for (int p = 0; p < d; ++p) {
      const size_t e = size_t(j) * d + p;
      next[e] = sizes[j] > 0 ? float(sums[e] / sizes[j]) : cent[e];
      const double diff = double(next[e]) - cent[e];
      sq += diff * diff;
    }
    if (std::isnan(sq) || std::isnan(shift)) shift = std::numeric_limits<double>::quiet_NaN();
    else shift = std::max(shift, std::sqrt(sq));
  }
  return shift;
}

int svg2_kmeans(const float* x, long long heads, long long head_stride, int n, int d, float* cent, int c,
                int max_iters, double tol, int32_t* labels, int32_t* sizes) {
  if (heads <= 0 || n <= 0 || c <= 0) return 0;
  std::vector<float> xsq(size_t(heads) * n), next(size_t(heads) * c * d);
  std::vector<double> shift(static_cast<size_t>(heads));
#pragma omp parallel for schedule(static)
  for (long long h = 0; h < heads; ++h)
    for (int i = 0; i < n; ++i) {
      const float* row = x + size_t(h) * head_stride + size_t(i) * d;
      float acc = 0.f;
      for (int p = 0; p < d; ++p) acc += row[p] * row[p];
      xsq[size_t(h) * n + i] = acc;
    }
  int it = 0;
  while (it < max_iters) {
    ++it;
#pragma omp parallel for schedule(dynamic, 1)
    for (long long h = 0; h < heads; ++h)
      shift[size_t(h)] = svg2_kmeans_iteration(x + size_t(h) * head_stride, xsq.data() + size_t(h) * n, n, d,
                                               cent + size_t(h) * c * d, c, labels + size_t(h) * n,
                                               sizes + size_t(h) * c, next.data() + size_t(h) * c * d);
    double worst = 0.0;  // the official shift: max over every head and centroid of the batch
    for (double v : shift) worst = std::isnan(v) || std::isnan(worst) ? v + worst : std::max(worst, v);
    if (worst < tol) break;  // converged: the centroids the labels were assigned to are returned
    std::copy(next.begin(), next.end(), cent);
  }
  return it;
}

void svg2_dynamic_map(const float* qc, int cq, const float* kc, int ck, int d, float score_div,
                      const int32_t* k_sizes, float top_p, float min_kc_ratio, uint8_t* map) {
  std::fill(map, map + size_t(cq) * ck, uint8_t(0));
  if (cq <= 0 || ck <= 0) return;
  RowMat s = CMap(qc, cq, d) * CMap(kc, ck, d).transpose();
  const double ratio = as_python_float(min_kc_ratio);
  const int preserve = ratio > 0 ? int(ratio * ck) : 0;
  std::vector<float> prob(static_cast<size_t>(ck));
  std::vector<int> order(static_cast<size_t>(ck));
  for (int i = 0; i < cq; ++i) {
    float* row = s.data() + size_t(i) * ck;
    float mx = -std::numeric_limits<float>::infinity();
    bool nan = false;
    for (int j = 0; j < ck; ++j) {
      row[j] /= score_div;
      nan |= std::isnan(row[j]);
      mx = std::max(mx, row[j]);
    }
    if (nan) mx = std::numeric_limits<float>::quiet_NaN();  // torch.max propagates NaN
    double total = 0.0;
    for (int j = 0; j < ck; ++j) {
      prob[size_t(j)] = float(k_sizes[j]) * std::exp(row[j] - mx);
      total += prob[size_t(j)];
    }
    const float denom = std::max(float(total), 1e-12f);
    for (int j = 0; j < ck; ++j) prob[size_t(j)] /= denom;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int x, int y) { return sort_key(prob[size_t(x)]) > sort_key(prob[size_t(y)]); });
    uint8_t* out = map + size_t(i) * ck;
    double cum = 0.0;
    float before = 0.f;  // cumulative sum of the ranks before r, rounded to float32
    for (int r = 0; r < ck; ++r) {
      const bool keep = r == 0 || !(before > top_p) || r < preserve;
      out[order[size_t(r)]] = keep;
      cum += prob[size_t(order[size_t(r)])];
      before = float(cum);
    }
  }
}

Svg2Estimate estimate_svg2(const AttnArgs& a, const Svg2Params& p, const Svg2Init& init) {
  const AttnShape& s = a.shape;
  s.validate();
  p.validate();
  const int D = s.D, G = s.group();
  Svg2Estimate e;
  e.Cq = svg2_clusters(p.num_q_centroids, s.Nq);
  e.Ck = svg2_clusters(p.num_k_centroids, s.Nk);
  const long long hq = (long long)s.B * s.Hq, hk = (long long)s.B * s.Hkv;
  e.q_labels.assign(size_t(hq) * s.Nq, 0);
  e.k_labels.assign(size_t(hk) * s.Nk, 0);
  e.q_centroids.assign(size_t(hq) * e.Cq * D, 0.f);
  e.k_centroids.assign(size_t(hk) * e.Ck * D, 0.f);
  e.q_sizes.assign(size_t(hq) * e.Cq, 0);
  e.k_sizes.assign(size_t(hk) * e.Ck, 0);
  e.q_iters.assign(size_t(hq), 0);
  e.k_iters.assign(size_t(hk), 0);
  e.map.assign(size_t(hq) * e.Cq * e.Ck, 0);
  if (init.q != nullptr) std::copy_n(init.q, e.q_centroids.size(), e.q_centroids.data());
  if (init.k != nullptr) std::copy_n(init.k, e.k_centroids.size(), e.k_centroids.data());
  const int iters = init.warm ? p.kmeans_iter_step : p.kmeans_iter_init;
  // random init per head, then one batched k-means per tensor (the official batch = B x heads)
#pragma omp parallel for schedule(static)
  for (long long t = 0; t < hq + hk; ++t) {
    const bool is_q = t < hq;
    if ((is_q ? init.q : init.k) != nullptr) continue;
    const long long bh = is_q ? t : t - hq;
    const int n = is_q ? s.Nq : s.Nk, c = is_q ? e.Cq : e.Ck;
    const float* x = is_q ? a.q + size_t(bh) * s.Nq * D : a.k + size_t(bh) * s.kv_rows() * D;
    float* cent = (is_q ? e.q_centroids.data() : e.k_centroids.data()) + size_t(bh) * c * D;
    random_init(x, n, D, cent, c, p.seed, is_q ? 0 : 1, bh);
  }
  const int qit = svg2_kmeans(a.q, hq, (long long)s.Nq * D, s.Nq, D, e.q_centroids.data(), e.Cq, iters, kTol,
                              e.q_labels.data(), e.q_sizes.data());
  const int kit = svg2_kmeans(a.k, hk, (long long)s.kv_rows() * D, s.Nk, D, e.k_centroids.data(), e.Ck, iters, kTol,
                              e.k_labels.data(), e.k_sizes.data());
  std::fill(e.q_iters.begin(), e.q_iters.end(), qit);
  std::fill(e.k_iters.begin(), e.k_iters.end(), kit);
  const float div = a.scale > 0.f ? 1.f / a.scale : float(std::sqrt(double(D)));
#pragma omp parallel for schedule(dynamic, 1)
  for (long long bh = 0; bh < hq; ++bh) {
    const long long kr = bh / s.Hq * s.Hkv + (bh % s.Hq) / G;
    svg2_dynamic_map(e.q_centroids.data() + size_t(bh) * e.Cq * D, e.Cq, e.k_centroids.data() + size_t(kr) * e.Ck * D,
                     e.Ck, D, div, e.k_sizes.data() + size_t(kr) * e.Ck, p.top_p_kmeans, p.min_kc_ratio,
                     e.map.data() + size_t(bh) * e.Cq * e.Ck);
  }
  return e;
}

}  // namespace spattn
