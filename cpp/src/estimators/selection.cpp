// Shared estimator building blocks (see spattn/selection.hpp).
#include "spattn/selection.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

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
