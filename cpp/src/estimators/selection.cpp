// Shared estimator building blocks (see spattn/selection.hpp).
#include "spattn/selection.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

#include "../simd/simd.hpp"

namespace spattn {

std::vector<int> order_descending(const float* scores, int n) {
  std::vector<int> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int x, int y) { return scores[x] > scores[y]; });
  return idx;
}

std::vector<int> cumulative_select(const float* scores, int n, double target) {
  std::vector<int> out;
  const std::vector<int> order = order_descending(scores, n);
  double run = 0.0;
  for (int c : order) {
    if (!(scores[c] > 0.f)) break;
    out.push_back(c);
    run += scores[c];
    if (run >= target) break;
  }
  return out;
}

std::vector<int> topk_select(const float* scores, int n, int k) {
  k = std::clamp(k, 0, n);
  std::vector<int> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  auto better = [&](int x, int y) { return scores[x] > scores[y] || (scores[x] == scores[y] && x < y); };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), better);
  idx.resize(k);
  return idx;
}

void softmax_inplace(float* x, int n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  if (mx == -std::numeric_limits<float>::infinity()) {
    std::fill(x, x + n, 0.f);
    return;
  }
  double sum = 0.0;
  for (int i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = float(1.0 / sum);
  for (int i = 0; i < n; ++i) x[i] *= inv;
}

void pool_rows(const float* x, int n, int d, int block, PoolKind kind, float* out, int ld_out) {
  const int nb = (n + block - 1) / block;
  for (int b = 0; b < nb; ++b) {
    const int r0 = b * block, r1 = std::min(n, r0 + block);
    float* o = out + size_t(b) * ld_out;
    std::copy(x + size_t(r0) * d, x + size_t(r0) * d + d, o);
    for (int r = r0 + 1; r < r1; ++r) {
      const float* row = x + size_t(r) * d;
      for (int c = 0; c < d; ++c) {
        if (kind == PoolKind::Max) o[c] = std::max(o[c], row[c]);
        else if (kind == PoolKind::Min) o[c] = std::min(o[c], row[c]);
        else o[c] += row[c];
      }
    }
    if (kind == PoolKind::Avg) {
      const float inv = 1.f / float(r1 - r0);
      for (int c = 0; c < d; ++c) o[c] *= inv;
    }
  }
}

std::vector<float> mean_pool_rows(const float* x, int n, int d, int block) {
  std::vector<float> out(size_t((n + block - 1) / block) * d);
  pool_rows(x, n, d, block, PoolKind::Avg, out.data(), d);
  return out;
}

double normal_quantile(double p) {
  if (std::isnan(p)) return p;
  if (p <= 0.0) return -std::numeric_limits<double>::infinity();
  if (p >= 1.0) return std::numeric_limits<double>::infinity();
  if (p == 0.5) return 0.0;
  if (p > 0.5) return -normal_quantile(1.0 - p);
  const auto cdf = [](double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); };
  double lo = -40.0, hi = 0.0;  // cdf(-40) underflows below every double p > 0 that matters
  for (int i = 0; i < 200 && hi - lo > 1e-13; ++i) {
    const double mid = 0.5 * (lo + hi);
    (cdf(mid) < p ? lo : hi) = mid;
  }
  double x = 0.5 * (lo + hi);
  for (int i = 0; i < 3; ++i) {  // Newton on cdf(x) = p
    const double pdf = std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
    if (!(pdf > 0.0)) break;
    const double nx = x - (cdf(x) - p) / pdf;
    if (!std::isfinite(nx)) break;
    x = nx;
  }
  return x;
}

double statistical_threshold(const float* x, int n, int k) {
  double sum = 0.0;
  int m = 0;
  for (int i = 0; i < n; ++i)
    if (std::isfinite(x[i])) {
      sum += x[i];
      ++m;
    }
  if (m == 0) return std::numeric_limits<double>::infinity();
  if (k >= m) return -std::numeric_limits<double>::infinity();
  const double mean = sum / m;
  double ss = 0.0;
  for (int i = 0; i < n; ++i)
    if (std::isfinite(x[i])) ss += (x[i] - mean) * (x[i] - mean);
  const double sd = std::sqrt(ss / m);  // population std (unbiased=False), as the official operator
  return mean + normal_quantile(1.0 - double(std::max(k, 0)) / m) * sd;
}

std::vector<int> statistical_select(const float* x, int n, int k) {
  const double theta = statistical_threshold(x, n, k);
  std::vector<int> out;
  int best = -1;
  for (int i = 0; i < n; ++i) {
    if (std::isnan(x[i]) || x[i] == -std::numeric_limits<float>::infinity()) continue;
    if (double(x[i]) > theta) out.push_back(i);
    if (best < 0 || x[i] > x[best]) best = i;
  }
  if (out.empty() && best >= 0 && k > 0) out.push_back(best);
  return out;
}

std::vector<int> select_top(const float* scores, int n, int k, bool statistical) {
  if (statistical) return statistical_select(scores, n, k);
  k = std::clamp(k, 0, n);
  std::vector<int> out;
  if (k == 0) return out;
  const float inf = std::numeric_limits<float>::infinity();
  const auto rank = [&](int i) { return std::isnan(scores[i]) ? inf : scores[i]; };
  out.reserve(static_cast<size_t>(k));
  if (k == n) {
    for (int i = 0; i < n; ++i) out.push_back(i);
    return out;
  }
  // The k-th largest value by nth_element on a copy of the values (contiguous floats), then one
  // ascending pass: every entry above it, and entries equal to it from the lowest index on.
  std::vector<float> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[size_t(i)] = rank(i);
  std::nth_element(v.begin(), v.begin() + (k - 1), v.end(), std::greater<float>());
  const float thr = v[size_t(k - 1)];
  int above = 0;
  for (int i = 0; i < n; ++i) above += rank(i) > thr;
  int ties = k - above;
  for (int i = 0; i < n; ++i) {
    const float x = rank(i);
    if (x > thr || (x == thr && ties-- > 0)) out.push_back(i);
  }
  return out;
}

void decode_scores(const float* q, const float* k, const AttnShape& s, float scale, float* S) {
  const int n = s.Nk, D = s.D, G = s.group();
  if (n <= 0) return;
  constexpr int kChunk = 2048;
  const int chunks = (n + kChunk - 1) / kChunk;
  const long long items = (long long)s.B * s.Hkv * chunks;
  const simd::Kernels& kern = simd::kernels();
#pragma omp parallel for schedule(static)
  for (long long it = 0; it < items; ++it) {
    const int c = int(it % chunks);
    const long long bk = it / chunks;
    const int b = int(bk / s.Hkv), hk = int(bk % s.Hkv);
    const int c0 = c * kChunk, len = std::min(kChunk, n - c0);
    float* out = S + (size_t(b) * s.Hq + size_t(hk) * G) * n + c0;  // rows of the group's heads, stride n
    kern.qk_rowmajor(q + s.q_index(b, hk * G, 0), G, D, k + s.k_index(b, hk, c0), D, len, out, n);
    if (scale != 1.f)
      for (int r = 0; r < G; ++r)
        for (int j = 0; j < len; ++j) out[size_t(r) * n + j] *= scale;
  }
}

double js_divergence(const float* p, const float* q, int n) {
  double kl_pm = 0.0, kl_qm = 0.0;
  for (int i = 0; i < n; ++i) {
    const double m = 0.5 * (double(p[i]) + double(q[i]));
    if (p[i] > 0.f) kl_pm += p[i] * std::log(p[i] / m);
    if (q[i] > 0.f) kl_qm += q[i] * std::log(q[i] / m);
  }
  return 0.5 * kl_pm + 0.5 * kl_qm;
}

}  // namespace spattn
