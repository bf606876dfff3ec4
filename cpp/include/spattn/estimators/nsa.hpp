// NSA (Yuan et al., "Native Sparse Attention: Hardware-Aligned and Natively Trainable Sparse
// Attention", arXiv 2502.11089) and FSA (Flash Sparse Attention, arXiv 2508.18224: the same
// math), following XunhaoLai/native-sparse-attention-triton (ops/triton/compressed_attention.py
// `compressed_attention`, `score_kernel`, `transform_score`; ops/torch/compressed_attention_decode.py)
// and the copy FSA vendors (Relaxed-System-Lab/Flash-Sparse-Attention nsa_ref/ops):
// the compressed branch and the selection it drives, from compressed keys / values the caller
// built (python/spattn/methods/nsa.py: linear compression + intra-block PE, optional RoPE).
// Compressed token j (kernel l, stride d) is visible to the query at position t iff
// t >= d j + l - 1. Per query row and query head: softmax over the visible compressed keys with
// the compressed values (the compressed branch; rows with none: out 0, lse -inf). Per kv head:
// those probabilities summed over the group's query heads (FSA's nsa_ref scores with the first
// query head of each group only: `first_head_only`), mapped to selection blocks of block_size
// tokens with the overlap weights w[o] = #{(i, k): i < l/d, k < block_size/d, i + k = o}
// (S[b] = sum_o w[o] P[b m - (l/d - 1) + o], m = block_size / d; [1, 2, 2, 2, 1] at the defaults),
// blocks b < init_blocks and qb - local_blocks < b <= qb forced (+inf), the top
// min(topk, ceil(Nk / block_size)) blocks (ties to the lower index), sorted, ids > qb -> -1.
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct NSAParams {
  int kernel_size = 32;
  int kernel_stride = 16;
  int block_size = 64;
  int topk = 16;
  int init_blocks = 1;
  int local_blocks = 2;
  int window_size = 512;
  bool window_inclusive = true;
  bool first_head_only = false;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("kernel_size", &NSAParams::kernel_size, "Keys per compressed token l (>= 1, multiple of kernel_stride; 32).");
    v("kernel_stride", &NSAParams::kernel_stride, "Stride d of the compressed tokens (>= 1; 16).");
    v("block_size", &NSAParams::block_size,
      "Tokens per selection block l' (>= 1, multiple of kernel_stride; 64).");
    v("topk", &NSAParams::topk, "Selected blocks per query row n, forced ones included (>= 1; 16).");
    v("init_blocks", &NSAParams::init_blocks, "Leading blocks always selected (>= 0; 1).");
    v("local_blocks", &NSAParams::local_blocks,
      "Blocks qb - local_blocks < b <= qb always selected (the query's own and the one before; >= 0; 2).");
    v("window_size", &NSAParams::window_size, "Sliding-window branch width w (>= 0; 512).");
    v("window_inclusive", &NSAParams::window_inclusive,
      "True: keys [t - w, t] (w + 1 keys, flash_attn window_size=(w, -1) as the official modules); "
      "False: [t - w + 1, t] (w keys, fla naive_nsa).");
    v("first_head_only", &NSAParams::first_head_only,
      "Score blocks with the first query head of each group only (FSA nsa_ref score_kernel) instead of the "
      "group sum (paper, XunhaoLai; default False).");
  }
};

// The compressed branch and the selection. qk: q (B, Hq, Nq, D), shape.Nk = the raw key count
// (query i at position i + Nk - Nq); kc (B, Hkv, cap, D) and vc (B, Hkv, cap, Dv) hold the
// C = floor((Nk - l) / d) + 1 (0 when Nk < l) compressed keys / values in their first rows.
// Writes out (B, Hq, Nq, Dv) and lse (B, Hq, Nq) of the compressed branch and returns the block
// ids (B, Hkv, Nq, K), K = min(topk, ceil(Nk / block_size)), in `K_out`. Causal only.
std::vector<int32_t> nsa_compressed_attention(const AttnArgs& qk, const float* kc, const float* vc, int C, int cap,
                                              int Dv, const NSAParams& p, float* out, float* lse, int* K_out);

// The number of compressed tokens of `n` keys: floor((n - kernel) / stride) + 1, 0 when n < kernel.
int nsa_compressed_count(int n, int kernel, int stride);

}  // namespace spattn
