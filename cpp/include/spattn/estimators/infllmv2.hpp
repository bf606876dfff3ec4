// InfLLM-V2 (Zhao et al., "InfLLM-V2: Dense-Sparse Switchable Attention for Seamless Short-to-Long
// Adaptation", arXiv 2509.24663; MiniCPM4 / 4.1), following OpenBMB/infllmv2_cuda_impl and the
// MiniCPM model code: below `dense_len` keys, dense causal attention; otherwise, per query token
// and kv head, parameter-free mean-pooled keys at two granularities (k1: kernel_size / stride,
// k2: 4x both), stage-1 scores exp(q.k1 / sqrt(D) - lse over k2) (the "compressed LSE",
// tests/stage1/complse_online_softmax.py) summed over the query heads of the group, NaN -> 0,
// max-pooled to blocks (csrc/max_pooling_1d.cuh: kernel block/stride + 1, stride block/stride,
// padding 1), the init blocks and the local blocks qb - local_blocks <= b <= qb forced (+inf), the
// top min(topk + local_blocks, nblocks) blocks (ties to the lower index), sorted, ids > qb -> -1.
// Query t is at position t + Nk - Nq (decode: Nk - 1), so the decode call (all stored compressed
// keys visible) is the same rule.
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct InfLLMv2Params {
  int kernel_size = 32;
  int kernel_stride = 16;
  int block_size = 64;
  int init_blocks = 1;
  int window_size = 2048;
  int topk = 64;
  int dense_len = 8192;

  void validate() const;
  int local_blocks() const { return window_size / block_size; }
  template <class V>
  static void fields(V&& v) {
    v("kernel_size", &InfLLMv2Params::kernel_size,
      "Keys per fine compressed token k1 (>= 1; sparse_config default 32); k2 uses 4 x kernel_size.");
    v("kernel_stride", &InfLLMv2Params::kernel_stride,
      "Stride of the fine compressed tokens (>= 1, divides block_size; default 16); k2 uses 4 x kernel_stride.");
    v("block_size", &InfLLMv2Params::block_size, "Tokens per selected block (>= 1; default 64).");
    v("init_blocks", &InfLLMv2Params::init_blocks, "Leading blocks always selected (>= 0; default 1).");
    v("window_size", &InfLLMv2Params::window_size,
      "Local window in tokens (>= 0; default 2048): local_blocks = window_size // block_size blocks before the "
      "query's own are always selected.");
    v("topk", &InfLLMv2Params::topk,
      "Selected blocks beyond the local ones (>= 0; default 64): each row keeps topk + local_blocks blocks.");
    v("dense_len", &InfLLMv2Params::dense_len,
      "Below this many keys attention is dense (>= 0; default 8192, the model's switch length).");
  }
};

// Block ids (B, Hkv, Nq, K) int32, K = min(topk + local_blocks, ceil(Nk / block_size)) on the sparse
// path, ceil(Nk / block_size) on the dense one (every block up to the query's own), rows ascending
// and -1 padded; `K_out` receives K. Reads q, k, shape and scale; causal only.
std::vector<int32_t> estimate_infllmv2(const AttnArgs& qk, const InfLLMv2Params& p, int* K_out);

// The same selection from mean-pooled keys kept beside a decode cache: k1 (B, Hkv, cap1, D) with
// C1 compressed tokens and k2 (B, Hkv, cap2, D) with C2, for the first q.shape.Nk keys (C1 and C2
// must be the counts of that length); q.k is not read. Causal positions as estimate_infllmv2.
std::vector<int32_t> estimate_infllmv2_pooled(const AttnArgs& q, const float* k1, int C1, int cap1, const float* k2,
                                              int C2, int cap2, const InfLLMv2Params& p, int* K_out);

// The mean-pooled keys k_j = mean(k[stride j, stride j + kernel)) of every kv head for j while
// stride j + kernel <= Nk: (B, Hkv, C, D) with C returned in `C_out` (0 when Nk < kernel).
std::vector<float> mean_pooled_keys(const AttnArgs& qk, int kernel, int stride, int* C_out);

}  // namespace spattn
