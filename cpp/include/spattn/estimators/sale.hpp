// SALE (Ji et al., "SALE: Low-bit Estimation for Efficient Sparse Attention in Long-context LLM
// Prefilling", arXiv 2505.24179), following BirdChristopher/SALE (HEAD 39d380c):
// `int4_quant_sub_k_mean_perwarp_SmoothQ_fullsize_allInOne` / `..._pertoken_SmoothQ_allInOne`
// (int4_flash_attn/quant_triton.py), `flash_attn_func_int4_skip` (flash_attn_int4_skip.py) and
// `compute_attn_1rowblock_skipping_v2` (csrc/flash_attn/src/flash_fwd_int4_sparse_kernel_v2.h) with
// impl_version=2 (two-pass: the threshold is computed once, after the local and sink blocks).
//
// Per query head, with 64-query blocks and block_k_size-key blocks, causal, Nq == Nk:
// 1. smoothing: q - mean_t(q) and k - mean_t(k) (per head, over all tokens); the exact pass also
//    uses q against the smoothed k (softmax-invariant per row).
// 2. int4 quantisation (round to nearest even, symmetric, scale = max|x| / 7) with the official
//    scale groups: quant_mode 3 (per warp): a query scale per (position // 16, position % 8) group,
//    a key scale per ((position % block_k_size) // 2) % 4 group inside each key block; quant_mode 2:
//    one scale per token. The q-mean term is added back as qmk = mean(q) . k_smooth, in mode 3
//    rounded to the int grid: rint(qmk / (sq sk)).
// 3. block partition: n_max key blocks up to the diagonal, block 0 the sink, blocks 1.. in
//    segments of block_seg_size / block_k_size, the last n_local blocks (>= local_window tokens)
//    exact; tau < 1e-5 or Nq <= dense_len: dense.
// 4. exact pass over local + sink blocks: row max m_i and sum l_i; T_i = m_i + ln(l_i tau) / scale,
//    fixed for the scan in quant_mode 3 (threshold_temp, set once in two-pass mode); in quant_mode 2
//    (is_big_block reads the live row_max / row_sum) updated after each segment with the segment's
//    selected blocks, computed exactly.
// 5. a segment block is kept iff some query row i of the block has an estimated logit
//    (int dot + qmk) * sq_i * sk_j > T_i for some key j of the block (the Relative Attention Score
//    exp(scale (s~ - m_i)) / l_i > tau).
// The int4 products run on integer SIMD (simd::Kernels::qk_i4); the exact pass on the float tile
// product. Deviations: float32 where the official kernel keeps the threshold, the q-mean term and
// the dequantised maximum in fp16; only the valid query rows of the last (partial) query block vote
// (what the official padding rows, with sq = 0, contribute was not established); int4 values are
// held one per byte (the official packs two); any head dim (the official quantiser needs 2^k).
#pragma once

#include <vector>

#include "spattn/masks.hpp"
#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct SaleParams {
  std::vector<float> thresholds{0.004f};
  int block_k_size = 32;
  int local_window = 128;
  int block_seg_size = 128;
  int quant_mode = 3;
  int dense_len = 1024;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("thresholds", &SaleParams::thresholds,
      "Per-head tau in [0, 1] of the Relative Attention Score: one value for every head or one per query head "
      "(the README example 0.004; calibrated per head officially); tau < 1e-5 makes the head dense.");
    v("block_k_size", &SaleParams::block_k_size,
      "Key block of the selection (official 32; a multiple of 16, at most 64). Query blocks are 64.");
    v("local_window", &SaleParams::local_window, "Exact local window in tokens (official: asserted 128).");
    v("block_seg_size", &SaleParams::block_seg_size,
      "Segment of the left-to-right scan in tokens (README 128; a multiple of 128 and of block_k_size).");
    v("quant_mode", &SaleParams::quant_mode,
      "3: per-warp scale groups (README); 2: per-token scales (the function default).");
    v("dense_len", &SaleParams::dense_len,
      "Sequences of at most this many tokens run dense (official 1024: SDPA); 0 selects at any length.");
  }
};

// Block mask (B, Hq, ceil(Nq/64), ceil(Nk/block_k_size)), block_q = 64; causal only, Nq == Nk;
// GQA grouped (query head h reads kv head h / (Hq/Hkv)). Throws std::invalid_argument otherwise.
BlockMask estimate_sale(const AttnArgs& qk, const SaleParams& p);

// Cost of the estimate alone, for benchmarks: milliseconds of `repeats` passes of the int4 tile
// products (int4 = true) or of float32 products of the same tiles (q against the smoothed keys,
// unquantised) through the float tile product (int4 = false), the products alone, over every candidate
// (segment) tile of every query block and head. Quantisation and the exact pass are not timed.
double sale_estimate_ms(const AttnArgs& qk, const SaleParams& p, bool int4, int repeats);

}  // namespace spattn
