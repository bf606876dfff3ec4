// SeerAttention-R decode block selection (see the header for the official behaviour it follows).
// The gate scores are a few hundred dot products per KV head over pooled block keys (computed in
// Python); this file turns them into token positions.
#include "spattn/estimators/seerattention_r.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

namespace spattn {

void SeerAttentionRParams::validate() const {
  require_min("seerattention_r", "token_budget", token_budget, 1);
  require_min("seerattention_r", "dense_layers", dense_layers, 0);
  if (threshold && !std::isfinite(*threshold)) param_error("seerattention_r", "threshold", "be finite or None", *threshold);
}

namespace {

double rank_value(float u) { return std::isnan(u) ? std::numeric_limits<double>::infinity() : double(u); }

}  // namespace

std::vector<int32_t> seer_r_select(const float* probs, int B, int Hkv, int Hq, int nb, int block_size, int kv_len,
                                   const SeerAttentionRParams& p, int* K) {
  p.validate();
  if (B < 1 || Hkv < 1 || Hq < 1 || Hq % Hkv != 0)
    throw std::invalid_argument("seerattention_r: need B >= 1 and Hq a multiple of Hkv >= 1, got B=" +
                                std::to_string(B) + " Hkv=" + std::to_string(Hkv) + " Hq=" + std::to_string(Hq));
  if (block_size < 1) throw std::invalid_argument("seerattention_r: block_size must be >= 1, got " + std::to_string(block_size));
  if (kv_len < 0) throw std::invalid_argument("seerattention_r: kv_len must be >= 0, got " + std::to_string(kv_len));
  const int need = kv_len == 0 ? 0 : (kv_len - 1) / block_size + 1;
  if (nb != need)
    throw std::invalid_argument("seerattention_r: probs must hold ceil(kv_len / block_size) = " + std::to_string(need) +
                                " blocks, got " + std::to_string(nb));
  const int G = Hq / Hkv;
  const long long kv_heads = (long long)B * Hkv;
  std::vector<std::vector<int32_t>> lists(static_cast<size_t>(kv_heads));
  const int block_budget = p.token_budget / block_size;
#pragma omp parallel
  {
    std::vector<int> order;
    std::vector<char> keep(static_cast<size_t>(nb));
#pragma omp for schedule(static)
    for (long long bk = 0; bk < kv_heads; ++bk) {
      const float* u = probs + size_t(bk) * nb;
      std::fill(keep.begin(), keep.end(), 0);
      if (p.threshold) {
        for (int j = 0; j < nb; ++j) keep[size_t(j)] = u[j] > *p.threshold;
      } else if (nb <= block_budget) {
        std::fill(keep.begin(), keep.end(), 1);
      } else {
        order.resize(static_cast<size_t>(nb));
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + block_budget, order.end(), [u](int x, int y) {
          const double a = rank_value(u[x]), b = rank_value(u[y]);
          return a > b || (a == b && x < y);  // descending, ties to the lower block
        });
        for (int t = 0; t < block_budget; ++t) keep[size_t(order[size_t(t)])] = 1;
      }
      if (nb > 0) keep[size_t(nb - 1)] = 1;
      std::vector<int32_t>& row = lists[size_t(bk)];
      for (int j = 0; j < nb; ++j) {
        if (!keep[size_t(j)]) continue;
        for (int t = j * block_size; t < std::min(kv_len, (j + 1) * block_size); ++t) row.push_back(t);
      }
    }
  }
  size_t width = 0;
  for (const auto& r : lists) width = std::max(width, r.size());
  *K = int(width);
  std::vector<int32_t> out(size_t(B) * Hq * width, -1);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hq; ++h) {
      const auto& r = lists[size_t(b) * Hkv + h / G];
      std::copy(r.begin(), r.end(), out.begin() + (size_t(b) * Hq + h) * width);
    }
  return out;
}

}  // namespace spattn
