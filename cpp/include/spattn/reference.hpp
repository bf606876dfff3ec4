// Naive double-precision reference attention for the tests: a direct loop over every
// (query, key) pair with an arbitrary visibility predicate. Obviously right, O(Nq * Nk * D),
// only for small shapes.
#pragma once

#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "spattn/tensor.hpp"

namespace spattn::reference {

// allowed(b, h, i, j): extra restriction on top of causal visibility (nullptr = all keys).
using Allowed = std::function<bool(int, int, int, int)>;

// The additive logit bias of a.bias (spattn::LogitBias) for query (b, h, i) and key j, 0 without.
inline double bias_value(const AttnArgs& a, int b, int h, int i, int j) {
  if (a.bias == nullptr) return 0.0;
  const LogitBias& lb = *a.bias;
  const AttnShape& s = a.shape;
  double x = 0.0;
  if (lb.key != nullptr)
    x += lb.key[(size_t(b) * lb.key_heads + (lb.key_heads == s.Hq ? h : h / s.group())) * s.Nk + j];
  if (lb.pair != nullptr) x += lb.pair[(size_t(lb.pair_heads == 1 ? 0 : h) * s.Nq + i) * s.Nk + j];
  if (lb.rel != nullptr) {
    const int R = lb.rel_radius, d = j - (i + s.causal_offset());
    x += lb.rel[size_t(lb.rel_heads == 1 ? 0 : h) * (2 * R + 1) + (d < -R ? -R : d > R ? R : d) + R];
  }
  return x;
}

inline void attention(const AttnArgs& a, const Allowed& allowed, std::vector<double>& out,
                      std::vector<double>& lse) {
  const AttnShape& s = a.shape;
  const double scale = a.effective_scale();
  out.assign(size_t(s.B) * s.Hq * s.Nq * s.Dv, 0.0);
  lse.assign(size_t(s.B) * s.Hq * s.Nq, -std::numeric_limits<double>::infinity());
  std::vector<double> sc(s.Nk);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.Hq; ++h) {
      const int hk = h / s.group();
      for (int i = 0; i < s.Nq; ++i) {
        double mx = -std::numeric_limits<double>::infinity();
        for (int j = 0; j < s.Nk; ++j) {
          const bool vis = (!a.causal || j <= i + s.causal_offset()) && (!allowed || allowed(b, h, i, j));
          sc[j] = -std::numeric_limits<double>::infinity();
          if (!vis) continue;
          double dot = 0.0;
          for (int c = 0; c < s.D; ++c)
            dot += double(a.q[s.q_index(b, h, i) + c]) * double(a.k[s.k_index(b, hk, j) + c]);
          sc[j] = dot * scale + bias_value(a, b, h, i, j);
          mx = std::max(mx, sc[j]);
        }
        if (mx == -std::numeric_limits<double>::infinity()) continue;
        double sum = 0.0;
        for (int j = 0; j < s.Nk; ++j) sum += std::exp(sc[j] - mx);
        for (int j = 0; j < s.Nk; ++j) {
          const double p = std::exp(sc[j] - mx) / sum;
          if (p == 0.0) continue;
          for (int c = 0; c < s.Dv; ++c)
            out[s.out_index(b, h, i) + c] += p * double(a.v[s.v_index(b, hk, j) + c]);
        }
        lse[s.row_index(b, h, i)] = mx + std::log(sum);
      }
    }
}

// Exact probabilities of one row (b, h, i) under causal visibility, length Nk.
inline std::vector<double> probabilities(const AttnArgs& a, int b, int h, int i) {
  const AttnShape& s = a.shape;
  const int hk = h / s.group();
  std::vector<double> p(s.Nk, 0.0);
  double mx = -std::numeric_limits<double>::infinity();
  for (int j = 0; j < s.Nk; ++j) {
    if (a.causal && j > i + s.causal_offset()) { p[j] = -std::numeric_limits<double>::infinity(); continue; }
    double dot = 0.0;
    for (int c = 0; c < s.D; ++c)
      dot += double(a.q[s.q_index(b, h, i) + c]) * double(a.k[s.k_index(b, hk, j) + c]);
    p[j] = dot * a.effective_scale();
    mx = std::max(mx, p[j]);
  }
  if (mx == -std::numeric_limits<double>::infinity()) return std::vector<double>(s.Nk, 0.0);
  double sum = 0.0;
  for (double& x : p) { x = std::exp(x - mx); sum += x; }
  for (double& x : p) x /= sum;
  return p;
}

}  // namespace spattn::reference
