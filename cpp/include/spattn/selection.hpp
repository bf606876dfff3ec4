// Shared estimator building blocks: block pooling, softmax over blocks, top-k and cumulative
// (coverage) selection, Jensen-Shannon divergence. Each estimator reuses these instead of
// rewriting them.
#pragma once

#include <vector>

namespace spattn {

// Order of `n` scores, descending, ties towards the lower index (a stable sort).
std::vector<int> order_descending(const float* scores, int n);

// Indices of the smallest prefix of the descending order whose running sum reaches `target`
// (at least one entry when n > 0 and some score > 0). Entries with score <= 0 are never taken.
std::vector<int> cumulative_select(const float* scores, int n, double target);

// Indices of the k largest scores (ties towards the lower index).
std::vector<int> topk_select(const float* scores, int n, int k);

// In-place numerically stable softmax of n values; -inf entries get 0; all -inf -> all 0.
void softmax_inplace(float* x, int n);

// Mean of each block of `block` consecutive rows of x (n x d, row-major) -> (ceil(n/block) x d);
// the last, partial block is averaged over its real length.
std::vector<float> mean_pool_rows(const float* x, int n, int d, int block);

enum class PoolKind { Max, Min, Avg };

// Max / min / mean of each block of `block` consecutive rows of x (n x d, row-major) ->
// (ceil(n/block) x d), written with row stride `ld_out` starting at `out`; the last partial
// block is pooled over its real rows only.
void pool_rows(const float* x, int n, int d, int block, PoolKind kind, float* out, int ld_out);

// Jensen-Shannon divergence (natural log) between two distributions of length n.
double js_divergence(const float* p, const float* q, int n);

}  // namespace spattn
