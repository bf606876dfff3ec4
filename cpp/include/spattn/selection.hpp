// Shared estimator building blocks: block pooling, softmax over blocks, top-k and cumulative
// (coverage) selection, Jensen-Shannon divergence. Each estimator reuses these instead of
// rewriting them.
#pragma once

#include <vector>

#include "spattn/tensor.hpp"

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

// The standard normal quantile Phi^-1(p) (double precision; -inf at p <= 0, +inf at p >= 1, NaN
// for NaN): bisection on the lower tail of 0.5 erfc(-x / sqrt 2), then Newton steps, the upper
// tail by symmetry.
double normal_quantile(double p);

// Statistical top-k (Spark Transformer, You et al. 2025; the operator of Gemma 3n's
// `_gaussian_topk`): the threshold theta = mean + Phi^-1(1 - k / m) std of the m finite entries of
// x (population std), so that about k of them exceed it under a Gaussian assumption, without a
// sort. Returns theta (+inf when m == 0; -inf when k >= m, i.e. keep every entry).
double statistical_threshold(const float* x, int n, int k);

// Indices (ascending) of the entries of x above statistical_threshold(x, n, k), + inf entries
// included; when that leaves nothing (all entries equal, or a heavy tail) the largest entry (the
// lowest index among equals) is kept, so a selection is never empty when some entry is finite
// or +inf. -inf and NaN entries are never taken.
std::vector<int> statistical_select(const float* x, int n, int k);

// The selection a decode method makes among n candidate scores: the k largest (ties to the lower
// index) or, when `statistical`, statistical_select; returned ascending. NaN scores rank above
// every number in the exact selection (torch.topk's order) and are skipped by the statistical one.
std::vector<int> select_top(const float* scores, int n, int k, bool statistical);

// S (B, Hq, n) = scale q (B, Hq, 1, D) . K^T for every kv head's rows [0, n) (n = s.Nk, kv head
// stride s.kv_rows() rows of D floats; query head h reads kv head h / (Hq / Hkv)): the scores of
// one decode query per head, through the SIMD decode product (K read once per GQA group),
// parallel over (batch, kv head, key chunk).
void decode_scores(const float* q, const float* k, const AttnShape& s, float scale, float* S);

// Jensen-Shannon divergence (natural log) between two distributions of length n.
double js_divergence(const float* p, const float* q, int n);

}  // namespace spattn
