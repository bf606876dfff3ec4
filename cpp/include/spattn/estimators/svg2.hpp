// Sparse VideoGen2 (Yang et al., "Sparse VideoGen2: Accelerate Video Generation with Sparse
// Attention via Semantic-Aware Permutation", arXiv 2505.18875, 2025), following
// svg-project/Sparse-VideoGen 5ce7b01: `batch_kmeans_Euclid` / `_euclid_iter`,
// `identify_dynamic_map`, `weighted_softmax`, `permute_tensor_by_labels` (svg/kmeans_utils.py) and
// `WanAttn_SAPAttn_Processor` (svg/models/wan/attention.py: kmeans_init / kmeans_step, centroids
// cached per layer):
//
// 1. k-means (Euclidean) of the queries of every (b, query head) into Cq clusters and of the keys
//    of every (b, kv head) into Ck clusters. Per iteration: assign each point to the centroid of
//    least ||x||^2 + ||c||^2 - 2 x.c (clamped at 0; the lowest index on ties), then
//    c' = mean of the members (an empty cluster keeps c); stop when max ||c' - c|| < 1e-4 over
//    every head of the tensor (the official batch is B x heads and converges as one: the labels
//    and c are returned, not c') or after max_iters (labels, c'). The labels are always the
//    assignment the returned sizes count. Initial centroids: tokens picked uniformly with
//    replacement (kmeans_iter_init iterations), or given centroids (a warm start from the previous
//    call: kmeans_iter_step iterations; or an explicit init: kmeans_iter_init iterations).
// 2. dynamic map per (b, query head): s = C_q C_k^T * scale (Cq x Ck, scale 1/sqrt(D)), the
//    size-weighted softmax p_ij = |K_j| e^{s_ij - max_j s} / sum_j |K_j| e^{s_ij - max_j s}
//    (float32), sorted descending; key cluster at sorted rank r is kept iff r == 0, or the
//    cumulative sum of ranks < r is <= top_p (the element crossing top_p is kept), or
//    r < int(min_kc_ratio * Ck).
// 3. attention of each query over the keys of its cluster's selected key clusters
//    (spattn::cluster_block_attention).
//
// Deviations and choices: the initial tokens come from a splitmix64 stream seeded by (seed,
// tensor, b, head), not torch's RNG (give init centroids to replay an official run). Cluster
// counts are clamped to the token counts (Cq = min(num_q_centroids, Nq), Ck = min(num_k_centroids,
// Nk)); the official code needs N >= clusters only implicitly (it picks with replacement). GQA
// (the official models have Hq == Hkv): keys are clustered once per kv head, queries per query
// head. A user-given scale replaces 1/sqrt(D) in the centroid scores (the official code always
// uses D^-0.5). Numerics: distances in float32 as the official Triton kernel (Eigen GEMM), centroid
// sums and the shift in double, the weighted softmax's sum and the cumulative sum in double rounded
// to float32 (torch's CPU cumsum accumulator) before the float32 comparison with top_p; ties in
// the descending sort keep the lower cluster index first (torch.sort leaves them unspecified).
// int(min_kc_ratio * Ck) is taken on the shortest decimal of the float32 ratio, as Python sees it.
// The dense fallbacks of the official pipeline (first layers / denoising steps) belong to the
// caller.
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/masks.hpp"
#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct Svg2Params {
  int num_q_centroids = 300;
  int num_k_centroids = 1000;
  float top_p_kmeans = 0.9f;
  float min_kc_ratio = 0.10f;
  int kmeans_iter_init = 50;
  int kmeans_iter_step = 2;
  int seed = 0;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("num_q_centroids", &Svg2Params::num_q_centroids,
      "Query clusters Cq per head (>= 1; official Wan 720p 300); clamped to Nq.");
    v("num_k_centroids", &Svg2Params::num_k_centroids,
      "Key clusters Ck per kv head (>= 1; official 1000); clamped to Nk.");
    v("top_p_kmeans", &Svg2Params::top_p_kmeans,
      "Cumulative size-weighted centroid probability p in (0, 1] kept per query cluster (official 0.9).");
    v("min_kc_ratio", &Svg2Params::min_kc_ratio,
      "Share of key clusters always kept (the first int(min_kc_ratio * Ck) by probability), in [0, 1] "
      "(official 0.10).");
    v("kmeans_iter_init", &Svg2Params::kmeans_iter_init,
      "k-means iterations from a random or given init (>= 1; official 50).");
    v("kmeans_iter_step", &Svg2Params::kmeans_iter_step,
      "k-means iterations of a warm start from the previous call's centroids (>= 1; official 2).");
    v("seed", &Svg2Params::seed, "Seed of the random initial centroids (tokens picked with replacement).");
  }
};

// Initial centroids of one call: q (B, Hq, Cq, D) and k (B, Hkv, Ck, D) float32 with the clamped
// cluster counts, or null for random init. `warm`: they are the previous call's centroids
// (kmeans_iter_step iterations), else an explicit init (kmeans_iter_init iterations).
struct Svg2Init {
  const float* q = nullptr;
  const float* k = nullptr;
  bool warm = false;
};

struct Svg2Estimate {
  int Cq = 0, Ck = 0;
  std::vector<int32_t> q_labels, k_labels;   // (B, Hq, Nq), (B, Hkv, Nk)
  std::vector<float> q_centroids, k_centroids;  // (B, Hq, Cq, D), (B, Hkv, Ck, D)
  std::vector<int32_t> q_sizes, k_sizes;     // (B, Hq, Cq), (B, Hkv, Ck)
  std::vector<uint8_t> map;                  // (B, Hq, Cq, Ck)
  std::vector<int32_t> q_iters, k_iters;     // iterations run per (b, head) (one batch: all equal)
  ClusteredView view(const AttnShape& s) const {
    return {q_labels.data(), k_labels.data(), map.data(), s.B, s.Hq, s.Hkv, s.Nq, s.Nk, Cq, Ck};
  }
};

// Clamped cluster counts for these lengths.
inline int svg2_clusters(int wanted, int n) { return n < wanted ? n : wanted; }

// One Lloyd iteration of one head over the rows of x (n x d, row-major; xsq their squared norms)
// from `cent` (c x d): labels (n) and sizes (c) of the assignment, `next` (c x d) the means (an
// empty cluster keeps its centroid); returns the largest centroid shift ||next - cent||.
double svg2_kmeans_iteration(const float* x, const float* xsq, int n, int d, const float* cent, int c, int32_t* labels,
                             int32_t* sizes, float* next);

// The official batch_kmeans_Euclid over `heads` point sets (head h at x + h * head_stride, n x d)
// with centroids cent (heads, c, d), updated in place to the returned ones: at most max_iters >= 1
// iterations; the batch stops together when the largest shift over every head is below tol
// (keeping the centroids the last labels were assigned to). Writes labels (heads, n) and sizes
// (heads, c); returns the iterations run.
int svg2_kmeans(const float* x, long long heads, long long head_stride, int n, int d, float* cent, int c,
                int max_iters, double tol, int32_t* labels, int32_t* sizes);

// The official identify_dynamic_map of one head: scores (cq x ck) of the centroids divided by
// score_div (sqrt(D) as the official code; 1 / scale for a user scale), weighted by the key-cluster
// sizes; writes map (cq x ck) 0/1.
void svg2_dynamic_map(const float* qc, int cq, const float* kc, int ck, int d, float score_div, const int32_t* k_sizes,
                      float top_p, float min_kc_ratio, uint8_t* map);

// Any causality and lengths (Nq, Nk >= 0). Throws std::invalid_argument for bad parameters.
Svg2Estimate estimate_svg2(const AttnArgs& qk, const Svg2Params& p, const Svg2Init& init = {});

}  // namespace spattn
