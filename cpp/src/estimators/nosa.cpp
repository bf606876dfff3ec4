// NOSA's block selection (see spattn/estimators/nosa.hpp for the rule and its sources): the
// query-aware block scores of compressed_block_scores.hpp (lse over k1 itself), the query-agnostic
// block scores from the mean-pooled eviction scores (pooled once per kv head), and the two top-k
// passes of the locality constraint.
#include "spattn/estimators/nosa.hpp"

#include <algorithm>
#include <limits>
#include <string>

#include "compressed_block_scores.hpp"
#include "spattn/selection.hpp"

namespace spattn {

void NOSAParams::validate() const {
  require_min("nosa", "kernel_size", kernel_size, 1);
  require_min("nosa", "kernel_stride", kernel_stride, 1);
  require_min("nosa", "block_size", block_size, 1);
  require_min("nosa", "init_blocks", init_blocks, 0);
  require_min("nosa", "window_size", window_size, 0);
  require_min("nosa", "topk", topk, 0);
  require_min("nosa", "select_blocks", select_blocks, 0);
  require_min("nosa", "dense_len", dense_len, 0);
  if (block_size % kernel_stride != 0)
    throw std::invalid_argument("nosa: block_size must be a multiple of kernel_stride (max pooling over "
                                "block_size / kernel_stride compressed tokens), got block_size=" +
                                std::to_string(block_size) + ", kernel_stride=" + std::to_string(kernel_stride));
}

namespace {

int pooled_count(int n, int kernel, int stride) { return n >= kernel ? (n - kernel) / stride + 1 : 0; }

// The selection of every row: block scores from `scores(spec, select)`, the eviction scores cis
// (B, Hkv, cis_cap; the first s.Nk of each row are read) mean-pooled over the complete windows
// (nosa_mean_pooling), once per (batch, kv head).
template <class Scores>
std::vector<int32_t> nosa_select(const AttnShape& s, const float* cis, size_t cis_cap, const NOSAParams& p,
                                 int* K_out, const Scores& scores) {
  const int nblocks = ceil_div(s.Nk, p.block_size);
  if (s.Nk < p.dense_len) {  // dense: every block up to the query's own
    *K_out = nblocks;
    std::vector<int32_t> out(size_t(s.B) * s.Hkv * s.Nq * nblocks, -1);
    for (size_t row = 0; row < size_t(s.B) * s.Hkv * s.Nq; ++row) {
      const long long qb = detail::floor_div((long long)(row % size_t(s.Nq)) + s.Nk - s.Nq, p.block_size);
      for (int b = 0; b < nblocks && b <= qb; ++b) out[row * nblocks + b] = b;
    }
    return out;
  }
  const int K = std::min(p.topk, nblocks);
  *K_out = K;
  std::vector<int32_t> out(size_t(s.B) * s.Hkv * s.Nq * K, -1);
  if (s.Nq == 0 || K == 0) return out;
  const detail::CompressedScoreSpec spec{p.kernel_size, p.kernel_stride, p.block_size, p.init_blocks,
                                         p.local_blocks(), 1};
  const int C1 = pooled_count(s.Nk, p.kernel_size, p.kernel_stride);
  std::vector<float> cpool(size_t(s.B) * s.Hkv * C1);
  for (size_t bh = 0; bh < size_t(s.B) * s.Hkv; ++bh)
    for (int j = 0; j < C1; ++j) {
      const float* c = cis + bh * cis_cap + size_t(j) * p.kernel_stride;
      double acc = 0.0;
      for (int r = 0; r < p.kernel_size; ++r) acc += c[r];
      cpool[bh * C1 + j] = float(acc / p.kernel_size);
    }
  const int n_aware = std::min((long long)p.init_blocks + p.local_blocks() + p.select_blocks, (long long)nblocks);
  const float inf = std::numeric_limits<float>::infinity();
  int32_t* o = out.data();
  const auto select = [&](int b, int hk, int i, long long qb, const float* S, int nb) {
    const std::vector<int> aware = topk_select(S, nb, n_aware);
    std::vector<float> Sa(static_cast<size_t>(nb));
    detail::pool_block_scores(cpool.data() + (size_t(b) * s.Hkv + hk) * C1, C1, spec, qb, nb, Sa.data());
    for (int blk = 0; blk < nb; ++blk)
      if (blk > qb) Sa[size_t(blk)] = detail::kNegInf;
    for (int blk : aware) Sa[size_t(blk)] = inf;
    std::vector<int> top = topk_select(Sa.data(), nb, K);
    std::sort(top.begin(), top.end());
    int32_t* row = o + ((size_t(b) * s.Hkv + hk) * s.Nq + i) * size_t(K);
    for (int c = 0; c < K; ++c) row[c] = top[size_t(c)] > qb ? -1 : top[size_t(c)];
  };
  scores(spec, select);
  return out;
}

}  // namespace

std::vector<int32_t> estimate_nosa(const AttnArgs& qk, const float* cis, const NOSAParams& p, int* K_out) {
  p.validate();
  const AttnShape& s = qk.shape;
  s.validate();
  if (!qk.causal) throw std::invalid_argument("nosa: the method is defined for causal attention only");
  return nosa_select(s, cis, size_t(s.Nk), p, K_out, [&](const detail::CompressedScoreSpec& spec, const auto& select) {
    detail::compressed_block_scores(qk, spec, select);
  });
}

std::vector<int32_t> estimate_nosa_pooled(const AttnArgs& q, const float* k1, int C1, int cap1, const float* cis,
                                          int cis_cap, const NOSAParams& p, int* K_out) {
  p.validate();
  const AttnShape& s = q.shape;
  s.validate();
  const int e1 = pooled_count(s.Nk, p.kernel_size, p.kernel_stride);
  if (C1 != e1 || C1 > cap1 || cis_cap < s.Nk)
    throw std::invalid_argument("nosa: the pooled keys of kv_len=" + std::to_string(s.Nk) + " are " +
                                std::to_string(e1) + " tokens, got " + std::to_string(C1) + " (of " +
                                std::to_string(cap1) + " rows), with " + std::to_string(cis_cap) +
                                " eviction-score rows");
  return nosa_select(s, cis, size_t(cis_cap), p, K_out,
                     [&](const detail::CompressedScoreSpec& spec, const auto& select) {
                       const detail::PooledKeys pk{k1, C1, cap1};
                       detail::compressed_block_scores_pooled(q, spec, pk, pk, select);
                     });
}

}  // namespace spattn
