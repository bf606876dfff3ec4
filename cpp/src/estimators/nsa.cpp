// NSA's compressed branch and block selection (see spattn/estimators/nsa.hpp for the rule and its
// sources): the passes of compressed_block_scores.hpp with the lse over the compressed keys
// themselves (coarse = 1) and the compressed values on that pass (its rows are the compressed
// branch's output), the overlap-weighted block sums and the strict local window of NSA's
// transform_score, then per row the top min(topk, nblocks) blocks, ties to the lower index, sorted,
// ids > qb -> -1. Memory: per thread (rows x C) scores; no Nq x Nk buffer.
#include "spattn/estimators/nsa.hpp"

#include <algorithm>
#include <string>

#include "compressed_block_scores.hpp"
#include "spattn/selection.hpp"

namespace spattn {

void NSAParams::validate() const {
  require_min("nsa", "kernel_size", kernel_size, 1);
  require_min("nsa", "kernel_stride", kernel_stride, 1);
  require_min("nsa", "block_size", block_size, 1);
  require_min("nsa", "topk", topk, 1);
  require_min("nsa", "init_blocks", init_blocks, 0);
  require_min("nsa", "local_blocks", local_blocks, 0);
  require_min("nsa", "window_size", window_size, 0);
  if (kernel_size > (1 << 28)) param_error("nsa", "kernel_size", "be <= 2^28", kernel_size);
  if (block_size > (1 << 28)) param_error("nsa", "block_size", "be <= 2^28", block_size);
  if (kernel_size % kernel_stride != 0 || block_size % kernel_stride != 0)
    throw std::invalid_argument(
        "nsa: kernel_size and block_size must be multiples of kernel_stride (the overlap weights count d-token "
        "pieces), got kernel_size=" +
        std::to_string(kernel_size) + ", kernel_stride=" + std::to_string(kernel_stride) +
        ", block_size=" + std::to_string(block_size));
}

int nsa_compressed_count(int n, int kernel, int stride) { return n >= kernel ? (n - kernel) / stride + 1 : 0; }

std::vector<int32_t> nsa_compressed_attention(const AttnArgs& qk, const float* kc, const float* vc, int C, int cap,
                                              int Dv, const NSAParams& p, float* out, float* lse, int* K_out) {
  p.validate();
  const AttnShape& s = qk.shape;
  s.validate();
  if (!qk.causal) throw std::invalid_argument("nsa: the method is defined for causal attention only");
  const int expected = nsa_compressed_count(s.Nk, p.kernel_size, p.kernel_stride);
  if (C != expected || C > cap)
    throw std::invalid_argument("nsa: kv_len=" + std::to_string(s.Nk) + " has " + std::to_string(expected) +
                                " compressed tokens (kernel_size " + std::to_string(p.kernel_size) + ", stride " +
                                std::to_string(p.kernel_stride) + "), got " + std::to_string(C) + " (of " +
                                std::to_string(cap) + " rows)");
  const int nblocks = ceil_div(s.Nk, p.block_size);
  const int K = std::min(p.topk, nblocks);
  *K_out = K;
  std::vector<int32_t> idx(size_t(s.B) * s.Hkv * s.Nq * K, -1);
  if (s.Nq == 0) return idx;
  AttnArgs ao = qk;  // where the compressed branch's rows go
  ao.out = out;
  ao.lse = lse;
  ao.shape.Dv = Dv;
  detail::CompressedScoreSpec spec;
  spec.kernel = p.kernel_size;
  spec.stride = p.kernel_stride;
  spec.block_size = p.block_size;
  spec.init_blocks = p.init_blocks;
  spec.local_blocks = p.local_blocks;
  spec.coarse = 1;
  spec.overlap_pooling = true;
  spec.local_strict = true;
  spec.first_head_only = p.first_head_only;
  int32_t* o = idx.data();
  const auto select = [&](int b, int hk, int i, long long qb, const float* S, int nb) {
    if (K == 0) return;
    std::vector<int> top = topk_select(S, nb, K);
    std::sort(top.begin(), top.end());
    int32_t* row = o + ((size_t(b) * s.Hkv + hk) * s.Nq + i) * size_t(K);
    for (int c = 0; c < K; ++c) row[c] = top[size_t(c)] > qb ? -1 : top[size_t(c)];
  };
  const detail::PooledKeys pk{kc, C, cap};
  detail::compressed_block_scores_pooled(qk, spec, pk, pk, select, vc, &ao);
  return idx;
}

}  // namespace spattn
