// XAttention (Xu et al., "XAttention: Block Sparse Attention with Antidiagonal Scoring", 2025),
// following mit-han-lab/x-attention `xattn_estimate` / `Xattention_prefill`
// (xattn/src/Xattention.py), `find_blocks_chunked` (xattn/src/utils.py) and the Triton kernels
// `flat_group_gemm_fuse_reshape` / `softmax_fuse_block_sum` (xattn/src/kernels.py), HEAD e379887:
//
// 1. chunk size C = max(min(max(2048, P), 2^28 / P), 2048), P = next power of two >= Nk (the
//    `Xattention_prefill` default); keys are zero-padded to a multiple of C.
// 2. antidiagonal strided score of reshaped rows (stride S): query row i against key row j is
//    scale / S * sum_t q[i S + S-1-t] . k[j S + t] (zero rows past the end), causal on reshaped
//    rows (j <= i, the whole diagonal S x S tile included), row softmax in float32; non-causal
//    rows also see the zero-padded keys up to the chunk multiple, as the official code does.
// 3. W = sums of those probabilities over (block_size / S)^2 reshaped tiles.
// 4. per block row, a cumulative-mass greedy reaching threshold * (row total), with the forced
//    blocks of the official causal mode: block column 0 and the diagonal; in the first query
//    chunk (block rows < C / block_size) only the diagonal is credited and the top other block is
//    always taken (see the .cpp). Non-causal: no forced block. Block column 0 is always set (the
//    official code writes unselected slots onto column 0).
// 5. causal: blocks right of the diagonal cleared; keep_sink sets the whole first block row,
//    keep_recent the diagonal blocks.
#pragma once

#include <vector>

#include "spattn/masks.hpp"
#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct XAttentionParams {
  int stride = 8;
  std::vector<float> threshold{0.9f};
  int block_size = 128;
  bool keep_sink = false;
  bool keep_recent = false;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("stride", &XAttentionParams::stride,
      "Antidiagonal stride S (>= 1, divides block_size); the official code has no default (8 or 16 in "
      "the paper, 8 in its LongBench runs).");
    v("threshold", &XAttentionParams::threshold,
      "Cumulative block-mass threshold tau in (0, 1]: one value for every head (0.9, the xattn_estimate "
      "default) or one per query head.");
    v("block_size", &XAttentionParams::block_size,
      "Square block size of the mask (official 128); must divide 2048 (the smallest chunk) and be a "
      "multiple of stride.");
    v("keep_sink", &XAttentionParams::keep_sink, "Set the whole first query-block row (official keep_sink).");
    v("keep_recent", &XAttentionParams::keep_recent, "Set every diagonal block (official keep_recent).");
  }
};

// The official chunk size for a key length (the Xattention_prefill default): it decides which
// query-block rows use the first-chunk selection rule and, non-causal, how many zero keys pad the
// softmax.
int xattention_chunk_size(int kv_len);

// Mask per query head (H = Hq; GQA as the official callers' repeat_kv: query head h reads kv head
// h / (Hq / Hkv)), blocks block_size x block_size. Nq == Nk is the official case. Nq < Nk is
// accepted when Nk - Nq is a multiple of block_size: the rows are those of the Nk-token prefill
// mask for the last Nq queries (chunked prefill), which is what the official code returns when
// Nk - Nq is a multiple of the chunk size; keep_sink still sets the first row of the returned
// mask, as the official code does. Throws std::invalid_argument otherwise, and when threshold has
// neither 1 nor Hq values.
BlockMask estimate_xattention(const AttnArgs& qk, const XAttentionParams& p);

}  // namespace spattn
