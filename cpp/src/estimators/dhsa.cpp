// DHSA's estimator (see the header for the rule and the official functions it follows): block and
// chunk representations of the head-averaged q and k, chunk scores through the SIMD row-major
// product (blocks x chunks, never blocks x tokens), and the per-block selection done chunk by chunk
// (all tokens of a chunk share its score, so the top-scoring tokens are whole chunks in score order
// and the lowest positions of the chunk at the cut).
#include "spattn/estimators/dhsa.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

#include "../simd/simd.hpp"
#include "spattn/masks.hpp"

namespace spattn {

void DhsaParams::validate() const {
  require_min("dhsa", "block_size", block_size, 1);
  require_min("dhsa", "chunk_size", chunk_size, 1);
  require_min("dhsa", "token_budget", token_budget, 1);
  require_min("dhsa", "local_tokens", local_tokens, 0);
  require_min("dhsa", "global_tokens", global_tokens, 0);
  require_min("dhsa", "instruction_tokens", instruction_tokens, 0);
}

void check_dhsa_boundaries(const int32_t* bnd, int B, int C, int N) {
  if (C < 1) throw std::invalid_argument("boundaries must hold at least 2 entries (0 and N) per row, got " +
                                         std::to_string(C + 1));
  for (int b = 0; b < B; ++b) {
    const int32_t* r = bnd + size_t(b) * (C + 1);
    if (r[0] != 0 || r[C] != N)
      throw std::invalid_argument("boundaries must start at 0 and end at N=" + std::to_string(N) + " in every row, got " +
                                  std::to_string(r[0]) + " .. " + std::to_string(r[C]) + " in row " + std::to_string(b));
    for (int c = 0; c < C; ++c)
      if (r[c + 1] < r[c])
        throw std::invalid_argument("boundaries must not decrease, got " + std::to_string(r[c]) + " then " +
                                    std::to_string(r[c + 1]) + " in row " + std::to_string(b));
  }
}

namespace {

// The official slot list of one query block (before the global splice), ascending, as a set of
// runs: chunk heads taken by score, then the recent keys, then `pads` copies of N - 1.
std::vector<int32_t> block_list(const float* score, const int32_t* bnd, int C, int n_allowed, int recent, int T,
                                int N, std::vector<int>& order, std::vector<int>& take) {
  const int cand_end = n_allowed - recent;  // candidates [0, cand_end)
  const int remaining = T - recent;
  const int k_sel = std::max(0, std::min(remaining, cand_end));
  take.assign(static_cast<size_t>(C), 0);
  if (k_sel > 0) {
    order.clear();
    for (int c = 0; c < C && bnd[c] < cand_end; ++c)
      if (bnd[c + 1] > bnd[c]) order.push_back(c);
    const float inf = std::numeric_limits<float>::infinity();
    const auto rank = [&](int c) { return std::isnan(score[c]) ? inf : score[c]; };  // torch.topk: NaN largest
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return rank(x) > rank(y); });
    int left = k_sel;
    for (int c : order) {
      if (left == 0) break;
      const int len = std::min(bnd[c + 1], cand_end) - bnd[c];
      take[size_t(c)] = std::min(len, left);
      left -= take[size_t(c)];
    }
  }
  std::vector<int32_t> list;
  list.reserve(static_cast<size_t>(std::max(T, 0)));
  for (int c = 0; c < C; ++c)
    for (int t = 0; t < take[size_t(c)]; ++t) list.push_back(bnd[c] + t);
  for (int j = cand_end; j < n_allowed; ++j) list.push_back(j);
  for (int t = k_sel; t < remaining; ++t) list.push_back(N - 1);
  return list;
}

}  // namespace

DhsaEstimate estimate_dhsa(const AttnArgs& qk, const DhsaParams& p, const int32_t* boundaries, int num_chunks) {
  p.validate();
  const AttnShape& s = qk.shape;
  s.validate();
  if (!qk.causal) throw std::invalid_argument("dhsa: defined for causal attention only");
  if (s.Nq != s.Nk)
    throw std::invalid_argument("dhsa: prefill only (Nq == Nk), got Nq=" + std::to_string(s.Nq) + ", Nk=" +
                                std::to_string(s.Nk));
  const int N = s.Nq, D = s.D, bs = p.block_size;
  DhsaEstimate e;
  e.q_len = std::max(0, N - p.instruction_tokens);
  e.blocks = ceil_div(e.q_len, bs);
  if (boundaries != nullptr) check_dhsa_boundaries(boundaries, s.B, num_chunks, N);
  if (e.blocks == 0) return e;

  // Chunk boundaries per batch: given, or fixed chunks of chunk_size.
  int C = num_chunks;
  std::vector<int32_t> fixed;
  if (boundaries == nullptr) {
    C = ceil_div(N, p.chunk_size);
    fixed.resize(size_t(s.B) * (C + 1));
    for (int b = 0; b < s.B; ++b)
      for (int c = 0; c <= C; ++c) fixed[size_t(b) * (C + 1) + c] = int32_t(std::min<long long>(N, (long long)c * p.chunk_size));
    boundaries = fixed.data();
  }

  // Representations (head means in double): r_q (blocks x D), r_c (C x D), then S = r_q r_c^T.
  const int nb = e.blocks;
  std::vector<float> rq(size_t(s.B) * nb * D), rc(size_t(s.B) * C * D), S(size_t(s.B) * nb * C);
#pragma omp parallel for schedule(dynamic, 1)
  for (long long it = 0; it < (long long)s.B * (nb + C); ++it) {
    const int b = int(it / (nb + C)), u = int(it % (nb + C));
    std::vector<double> acc(static_cast<size_t>(D), 0.0);
    if (u < nb) {  // query block u: rows [u bs, min(q_len, (u + 1) bs)), mean over the padded block
      const int i0 = u * bs, i1 = std::min(e.q_len, i0 + bs);
      for (int h = 0; h < s.Hq; ++h)
        for (int i = i0; i < i1; ++i) {
          const float* row = qk.q + s.q_index(b, h, i);
          for (int d = 0; d < D; ++d) acc[size_t(d)] += row[d];
        }
      const double f = (p.length_norm ? std::sqrt(double(i1 - i0)) : 1.0) / (double(s.Hq) * bs);
      float* out = rq.data() + (size_t(b) * nb + u) * D;
      for (int d = 0; d < D; ++d) out[d] = float(acc[size_t(d)] * f);
    } else {  // chunk c: keys [b_c, b_{c+1}), mean (length clamped to 1), times sqrt(length)
      const int c = u - nb;
      const int32_t* bnd = boundaries + size_t(b) * (C + 1);
      const int j0 = bnd[c], j1 = bnd[c + 1];
      for (int h = 0; h < s.Hkv; ++h)
        for (int j = j0; j < j1; ++j) {
          const float* row = qk.k + s.k_index(b, h, j);
          for (int d = 0; d < D; ++d) acc[size_t(d)] += row[d];
        }
      const double len = std::max(1, j1 - j0);
      const double f = (p.length_norm ? std::sqrt(len) : 1.0) / (double(s.Hkv) * len);
      float* out = rc.data() + (size_t(b) * C + c) * D;
      for (int d = 0; d < D; ++d) out[d] = float(acc[size_t(d)] * f);
    }
  }
  const simd::Kernels& kern = simd::kernels();
  for (int b = 0; b < s.B; ++b)
    kern.qk_rowmajor(rq.data() + size_t(b) * nb * D, nb, D, rc.data() + size_t(b) * C * D, D, C,
                     S.data() + size_t(b) * nb * C, C);

  // Per (batch, block): the official slot list, the global splice, then the distinct keys.
  const int T = std::min(p.token_budget, N);
  std::vector<std::vector<int32_t>> sets(size_t(s.B) * nb);
#pragma omp parallel
  {
    std::vector<int> order, take;
#pragma omp for schedule(dynamic, 1)
    for (long long it = 0; it < (long long)s.B * nb; ++it) {
      const int b = int(it / nb), qb = int(it % nb);
      const int q_upper = int(std::min<long long>(N, (long long)(qb + 1) * bs));
      const int recent = std::min({p.local_tokens, T, q_upper});
      const std::vector<int32_t> list = block_list(S.data() + size_t(it) * C, boundaries + size_t(b) * (C + 1), C,
                                                   q_upper, recent, T, N, order, take);
      std::vector<int32_t>& out = sets[size_t(it)];
      const int g = p.global_tokens;
      if (g > 0) {
        for (int t = 0; t < std::min({g, q_upper, T}); ++t) out.push_back(t);  // min(t, q_upper - 1), t < g, distinct
        if (g < T) out.insert(out.end(), list.begin() + std::min<size_t>(list.size(), size_t(g)), list.end());
      } else {
        out = list;
      }
      std::sort(out.begin(), out.end());
      out.erase(std::unique(out.begin(), out.end()), out.end());
    }
  }
  for (const auto& st : sets) e.K = std::max(e.K, int(st.size()));
  e.indices.assign(sets.size() * size_t(e.K), -1);
  for (size_t r = 0; r < sets.size(); ++r) std::copy(sets[r].begin(), sets[r].end(), e.indices.begin() + r * e.K);
  return e;
}

}  // namespace spattn
