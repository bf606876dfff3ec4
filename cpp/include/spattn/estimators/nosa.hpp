// NOSA (Huang et al., "NOSA: Native and Offloadable Sparse Attention", arXiv 2510.13602), following
// thunlp/NOSA benchmarks/Efficiency/proxy_modeling_nosa.py (`compressed_attention`) and
// cis_pooling.py (`nosa_mean_pooling`): InfLLM-V2's query-aware block scores (stage 1 called with
// k = v = the kernel_size / kernel_stride mean-pooled keys, so the lse is taken over those keys),
// max-pooled with the init and local blocks forced; a query-agnostic score per block from the
// per-token eviction scores cis (B, Hkv, Nk): means over the same windows, the same max pooling
// and forcing, blocks past the query's own -inf; locality constraint: the top
// min(init_blocks + local_blocks + select_blocks, nblocks) query-aware blocks are set to +inf in
// the query-agnostic score, whose top min(topk, nblocks) blocks (ties to the lower index), sorted,
// ids > qb -> -1, are the selection (per kv head, shared by its query heads).
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct NOSAParams {
  int kernel_size = 32;
  int kernel_stride = 16;
  int block_size = 64;
  int init_blocks = 1;
  int window_size = 1024;
  int topk = 64;
  int select_blocks = 16;
  int dense_len = 0;

  void validate() const;
  int local_blocks() const { return window_size / block_size; }
  template <class V>
  static void fields(V&& v) {
    v("kernel_size", &NOSAParams::kernel_size, "Keys per compressed token (>= 1; proxy model 32).");
    v("kernel_stride", &NOSAParams::kernel_stride,
      "Stride of the compressed tokens (>= 1, divides block_size; proxy model 16).");
    v("block_size", &NOSAParams::block_size, "Tokens per selected block (>= 1; 64).");
    v("init_blocks", &NOSAParams::init_blocks, "Leading blocks forced in both scores (>= 0; 1).");
    v("window_size", &NOSAParams::window_size,
      "Local window in tokens (>= 0; 1024): local_blocks = window_size // block_size blocks before the query's own "
      "are forced.");
    v("topk", &NOSAParams::topk, "Selected blocks in all (>= 0; 64, not + local as InfLLM-V2).");
    v("select_blocks", &NOSAParams::select_blocks,
      "Query-aware blocks beyond init + local that are always kept (>= 0; 16): the locality constraint.");
    v("dense_len", &NOSAParams::dense_len, "Below this many keys attention is dense (>= 0; 0: always sparse).");
  }
};

// Block ids (B, Hkv, Nq, K) int32 from q, k and cis (B, Hkv, Nk) float32; K = min(topk, nblocks)
// (dense path below dense_len: every block up to the query's own, K = nblocks). Causal only.
std::vector<int32_t> estimate_nosa(const AttnArgs& qk, const float* cis, const NOSAParams& p, int* K_out);

// The same selection for the last q.shape.Nq of kv_len = q.shape.Nk keys from the mean-pooled keys
// kept beside a decode cache: k1 (B, Hkv, cap1, D) with its first C1 rows the kernel_size /
// kernel_stride means, and the per-token eviction scores cis (B, Hkv, cis_cap), first Nk read
// (q.k is not read).
std::vector<int32_t> estimate_nosa_pooled(const AttnArgs& q, const float* k1, int C1, int cap1, const float* cis,
                                          int cis_cap, const NOSAParams& p, int* K_out);

}  // namespace spattn
