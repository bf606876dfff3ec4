// DHSA (Xiong et al., "Long-Context Modeling with Dynamic Hierarchical Sparse Attention for
// On-Device LLMs", 2025, arXiv 2510.24606), following the official legacy code (xiongsiheng/DHSA,
// legacy/utils/helper.py: _obtain_dhsa_mask as dhsa_sdpa calls it, dhsa_sdpa's global-token splice
// and instruction split). One key list per query block of `block_size` queries, shared by all heads:
//
//  - the last `instruction_tokens` queries are left out (dhsa_sdpa runs them dense); the others form
//    query blocks [qb B, (qb + 1) B) (the last one padded);
//  - head-averaged q and k (mean over query heads; over kv heads for k, which equals the official
//    mean after repeat_kv); block representation r_q = (sum of the block's rows) / B * sqrt(real rows)
//    (avgpool_norm: the mean over the padded block, times the root of its real length) or the mean
//    alone (avgpool); chunk representation r_c = (sum over [b_c, b_{c+1})) / len_c * sqrt(len_c) (or
//    the mean alone), from the chunk boundaries 0 = b_0 <= ... <= b_C = N (fixed chunks of
//    `chunk_size` when none are given);
//  - score of token j for block qb = r_q . r_{chunk(j)} (no scale), chunk(j) = the last c with b_c <= j;
//  - allowed keys j < min(N, (qb + 1) B); T = min(token_budget, N) slots: the last
//    min(local_tokens, T, allowed) allowed keys, then the top-scoring remaining allowed keys
//    (ties to the lower position: the official torch.topk breaks ties inside a chunk arbitrarily),
//    then padding with N - 1; sorted; the first `global_tokens` slots replaced by the keys
//    min(t, q_upper - 1), t < global_tokens (q_upper = min((qb + 1) B, N)).
//
// Deviations: each listed key counts once (the official gather counts repeated entries: the
// N - 1 padding, visible only to query N - 1 when instruction_tokens = 0, and the capped global
// keys, visible only to query q_upper - 1 of block 0 when B < global_tokens); instruction_tokens = 0
// means no instruction part (the official `[:-0]` slicing would make every query dense); sums in
// double. No sliding window (Gemma-2's local layers) and no max pooling.
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct DhsaParams {
  int block_size = 128;
  int chunk_size = 32;
  int token_budget = 2048;
  int local_tokens = 128;
  int global_tokens = 128;
  int instruction_tokens = 64;
  bool length_norm = true;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("block_size", &DhsaParams::block_size,
      "B: queries per block sharing one key list (>= 1; the official LongBench/NIAH scripts' 128).");
    v("chunk_size", &DhsaParams::chunk_size,
      "Key chunk length when no boundaries are given (>= 1; the current official code's fixed key blocks of 32).");
    v("token_budget", &DhsaParams::token_budget,
      "T: key slots per query block, local and global ones included (>= 1; the official budget_prefill 2048).");
    v("local_tokens", &DhsaParams::local_tokens,
      "Most recent allowed keys always kept (>= 0; dhsa_sdpa's default 128).");
    v("global_tokens", &DhsaParams::global_tokens,
      "First keys spliced into the front slots of every list (>= 0; dhsa_sdpa's default 128).");
    v("instruction_tokens", &DhsaParams::instruction_tokens,
      "Last queries run dense (the prompt's trailing instruction; >= 0; the official default 64).");
    v("length_norm", &DhsaParams::length_norm,
      "True: avgpool_norm (means times sqrt of the real length; the paper's and the official default); "
      "False: avgpool.");
  }
};

// Per batch and sparse query block (the first max(0, N - instruction_tokens) queries in blocks of
// block_size), the ascending distinct key positions, -1 padded: (B, blocks, K).
struct DhsaEstimate {
  int q_len = 0;  // sparse queries
  int blocks = 0, K = 0;
  std::vector<int32_t> indices;
};

// Causal prefill (Nq == Nk) only. `boundaries`: (B, C + 1) ascending from 0 to N, or null for fixed
// chunks of p.chunk_size.
DhsaEstimate estimate_dhsa(const AttnArgs& qk, const DhsaParams& p, const int32_t* boundaries, int num_chunks);

// Throws std::invalid_argument naming `boundaries` unless each of its B rows of C + 1 entries starts
// at 0, ends at N and never decreases (C >= 1).
void check_dhsa_boundaries(const int32_t* boundaries, int B, int num_chunks, int N);

}  // namespace spattn
