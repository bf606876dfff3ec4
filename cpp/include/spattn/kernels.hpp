// Attention kernels of spattn. Every kernel runs the shared online-softmax tile update
// (cpp/src/kernels/tile.hpp), parallelises with OpenMP over (batch, head, q-block) work items
// with a dynamic schedule, and never allocates an Nq x Nk buffer.
#pragma once

#include "spattn/masks.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

// Exact attention over every visible key. Writes args.out (and args.lse when non-null).
void dense_attention(const AttnArgs& args);

// Row log-sum-exp of exact attention only (no values, no output): lse (B, Hq, Nq), -inf for
// rows that see no key. The first pass of every two-pass statistic (block maps, masses).
void row_logsumexp(const AttnArgs& args, float* lse);

// Attention restricted to the blocks of `mask` (H = Hq or 1); when args.causal the causal rule
// is applied element-wise inside the selected blocks.
void block_sparse_attention(const AttnArgs& args, const BlockMaskView& mask);

// Attention restricted to the key positions listed per query group (decode when Nq = 1).
void token_sparse_attention(const AttnArgs& args, const TokenIndicesView& indices);

// Exact merge of two attention states over disjoint key sets:
// lse = logaddexp(lse_a, lse_b), out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b.
// Rows empty on both sides give out = 0, lse = -inf. `rows` rows of `dv` values each.
void merge_states(const float* out_a, const float* lse_a, const float* out_b,
                  const float* lse_b, long long rows, int dv, float* out, float* lse);

enum class BlockPool { Sum, Max };

// Block-pooled exact attention probabilities, computed tile by tile in two passes
// (row statistics, then the normalised probabilities), never holding Nq x Nk.
// map (B, Hq, ceil(Nq/block_q), ceil(Nk/block_k)): Sum -> sum of p_ij over the block,
// Max -> max of p_ij over the block. Invisible (causal) entries count as p = 0.
// Only args.q, args.k, shape, scale and causal are read; args.lse, when non-null, receives
// the row log-sum-exp of the first pass.
void block_attention_map(const AttnArgs& args, int block_q, int block_k, BlockPool pool,
                         float* map);

// Per-query share of exact softmax mass that falls on the listed keys:
// mass (B, Hq, Nq); rows that see no key get NaN (callers skip them).
void token_attention_mass(const AttnArgs& args, const TokenIndicesView& indices, float* mass);

}  // namespace spattn
