// InfLLM-V2's block selection (see spattn/estimators/infllmv2.hpp for the rule and its sources):
// the block scores of compressed_block_scores.hpp (k2 = keys pooled with 4 x kernel and stride for
// the lse), then per row the top min(topk + local_blocks, nblocks) blocks, ties to the lower index,
// sorted, ids > qb -> -1. Memory: per thread (rows x C1) scores; no Nq x Nk buffer.
#include "spattn/estimators/infllmv2.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "compressed_block_scores.hpp"
#include "spattn/selection.hpp"

namespace spattn {

void InfLLMv2Params::validate() const {
  require_min("infllmv2", "kernel_size", kernel_size, 1);
  require_min("infllmv2", "kernel_stride", kernel_stride, 1);
  require_min("infllmv2", "block_size", block_size, 1);
  require_min("infllmv2", "init_blocks", init_blocks, 0);
  require_min("infllmv2", "window_size", window_size, 0);
  require_min("infllmv2", "topk", topk, 0);
  require_min("infllmv2", "dense_len", dense_len, 0);
  if (block_size % kernel_stride != 0)
    throw std::invalid_argument("infllmv2: block_size must be a multiple of kernel_stride (max pooling over " +
                                std::string("block_size / kernel_stride compressed tokens), got block_size=") +
                                std::to_string(block_size) + ", kernel_stride=" + std::to_string(kernel_stride));
  if ((long long)kernel_size * 4 > std::numeric_limits<int>::max() / 2 ||
      (long long)kernel_stride * 4 > std::numeric_limits<int>::max() / 2)
    throw std::invalid_argument("infllmv2: kernel_size and kernel_stride must be below 2^28");
}

std::vector<float> mean_pooled_keys(const AttnArgs& qk, int kernel, int stride, int* C_out) {
  const AttnShape& s = qk.shape;
  const int C = s.Nk >= kernel ? (s.Nk - kernel) / stride + 1 : 0;
  *C_out = C;
  std::vector<float> out(size_t(s.B) * s.Hkv * C * s.D);
  const float inv = 1.f / float(kernel);
#pragma omp parallel for schedule(static)
  for (long long u = 0; u < (long long)s.B * s.Hkv * C; ++u) {
    const int j = int(u % C), bh = int(u / C);
    const float* k = qk.k + s.k_index(bh / s.Hkv, bh % s.Hkv, j * stride);
    float* o = out.data() + size_t(u) * s.D;
    std::vector<double> acc(static_cast<size_t>(s.D), 0.0);
    for (int r = 0; r < kernel; ++r)
      for (int d = 0; d < s.D; ++d) acc[d] += k[size_t(r) * s.D + d];
    for (int d = 0; d < s.D; ++d) o[d] = float(acc[d]) * inv;
  }
  return out;
}

namespace {

// The selection of every row, the block scores coming from `scores(spec, select)`.
template <class Scores>
std::vector<int32_t> infllmv2_select(const AttnShape& s, const InfLLMv2Params& p, int* K_out, const Scores& scores) {
  const int nblocks = ceil_div(s.Nk, p.block_size);
  if (s.Nk < p.dense_len) {  // dense: every block up to the query's own
    *K_out = nblocks;
    std::vector<int32_t> out(size_t(s.B) * s.Hkv * s.Nq * nblocks, -1);
    for (size_t row = 0; row < size_t(s.B) * s.Hkv * s.Nq; ++row) {
      const long long t = (long long)(row % size_t(s.Nq)) + s.Nk - s.Nq;
      const long long qb = detail::floor_div(t, p.block_size);
      for (int b = 0; b < nblocks && b <= qb; ++b) out[row * nblocks + b] = b;
    }
    return out;
  }
  const int K = int(std::min<long long>((long long)p.topk + p.local_blocks(), nblocks));
  *K_out = K;
  std::vector<int32_t> out(size_t(s.B) * s.Hkv * s.Nq * K, -1);
  if (s.Nq == 0 || K == 0) return out;
  const detail::CompressedScoreSpec spec{p.kernel_size, p.kernel_stride, p.block_size, p.init_blocks,
                                         p.local_blocks(), 4};
  int32_t* o = out.data();
  const auto select = [&](int b, int hk, int i, long long qb, const float* S, int nb) {
    std::vector<int> top = topk_select(S, nb, K);
    std::sort(top.begin(), top.end());
    int32_t* row = o + ((size_t(b) * s.Hkv + hk) * s.Nq + i) * size_t(K);
    for (int c = 0; c < K; ++c) row[c] = top[size_t(c)] > qb ? -1 : top[size_t(c)];
  };
  scores(spec, select);
  return out;
}

int pooled_count(int n, int kernel, int stride) { return n >= kernel ? (n - kernel) / stride + 1 : 0; }

}  // namespace

std::vector<int32_t> estimate_infllmv2(const AttnArgs& qk, const InfLLMv2Params& p, int* K_out) {
  p.validate();
  qk.shape.validate();
  if (!qk.causal) throw std::invalid_argument("infllmv2: the method is defined for causal attention only");
  return infllmv2_select(qk.shape, p, K_out, [&](const detail::CompressedScoreSpec& spec, const auto& select) {
    detail::compressed_block_scores(qk, spec, select);
  });
}

std::vector<int32_t> estimate_infllmv2_pooled(const AttnArgs& q, const float* k1, int C1, int cap1, const float* k2,
                                              int C2, int cap2, const InfLLMv2Params& p, int* K_out) {
  p.validate();
  const AttnShape& s = q.shape;
  s.validate();
  const int e1 = pooled_count(s.Nk, p.kernel_size, p.kernel_stride);
  const int e2 = pooled_count(s.Nk, 4 * p.kernel_size, 4 * p.kernel_stride);
  if (C1 != e1 || C2 != e2 || C1 > cap1 || C2 > cap2)
    throw std::invalid_argument("infllmv2: the pooled keys of kv_len=" + std::to_string(s.Nk) + " are " +
                                std::to_string(e1) + " k1 and " + std::to_string(e2) + " k2 tokens, got " +
                                std::to_string(C1) + " (of " + std::to_string(cap1) + " rows) and " +
                                std::to_string(C2) + " (of " + std::to_string(cap2) + " rows)");
  return infllmv2_select(s, p, K_out, [&](const detail::CompressedScoreSpec& spec, const auto& select) {
    detail::compressed_block_scores_pooled(q, spec, {k1, C1, cap1}, {k2, C2, cap2}, select);
  });
}

}  // namespace spattn
