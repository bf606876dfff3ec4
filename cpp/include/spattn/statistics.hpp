// Exact statistics passes for estimators and metrics, on the tile engine (DESIGN.md,
// "src/statistics/"). Each is two passes over the keys of every work item, on the same tiles (so
// both see the same float32 logits): the row log-sum-exp (attention without values), then the
// exact probabilities p = exp(s - lse), tile by tile, reduced to what the caller needs. Logits
// beyond float32 raise std::invalid_argument (check_logits_in_range, spattn/kernels.hpp).
// Memory: the outputs plus O(N) row statistics; never an Nq x Nk buffer.
#pragma once

#include "spattn/masks.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

enum class BlockPool { Sum, Max };

// Block-pooled exact attention probabilities, map (B, Hq, ceil(Nq/block_q), ceil(Nk/block_k)):
// Sum -> sum of p_ij over the block, Max -> max of p_ij over the block. Invisible (causal)
// entries count as p = 0. Only args.q, args.k, shape, scale and causal are read; args.lse, when
// non-null, receives the row log-sum-exp of the first pass.
void block_attention_map(const AttnArgs& args, int block_q, int block_k, BlockPool pool, float* map);

// Per-query share of exact softmax mass that falls on the listed keys:
// mass (B, Hq, Nq); rows that see no key get NaN (callers skip them: args.lse, when non-null,
// receives the row log-sum-exp, -inf for those rows and NaN for rows with NaN inputs).
void token_attention_mass(const AttnArgs& args, const TokenIndicesView& indices, float* mass);

// Exact attention mass of each query on each column of its compressed grid (SEA's per-query
// accuracy grid, estimators/sea_grid.hpp: key j of a prefix of L_i keys lies in column
// floor((j + 0.5) / L_i * width - 1e-4), the grid of the official training loss), mass
// (B, Hq, Nq, width), and per row the sums of p^2 and p log p, psq and plogp (B, Hq, Nq).
void compressed_attention_targets(const AttnArgs& args, int width, float* mass, float* psq, float* plogp);

// Column (vertical) and diagonal (slash) sums of the exact attention of every query of `args`,
// divided by Nq: vertical[j] = sum_i p_ij / Nq, slash[Nk - 1 - (i + Nk - Nq - j)] += p_ij / Nq
// (entry Nk - 1 - o holds the diagonal at distance o from each query's causal limit). Outputs
// (B, Hq, Nk) each; causal only. Meant for a few queries (scratch grows with Hq/Hkv * Nq tile rows):
// FlexPrefill calls it with the last block of queries.
void vertical_slash_sums(const AttnArgs& args, float* vertical, float* slash);

}  // namespace spattn
