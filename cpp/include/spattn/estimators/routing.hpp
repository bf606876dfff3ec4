// Routing Transformer (Roy, Saffar, Vaswani, Grangier, "Efficient Content-Based Sparse Attention
// with Routing Transformers", TACL 2021), at inference, following the PyTorch port
// lucidrains/routing-transformer 3f6c461, routing_transformer/routing_transformer.py
// (`Kmeans`, `kmeans_iter`, `dists_and_buckets`, `distribution`, `KmeansAttention.forward`):
//
// 1. routing: x = F.normalize(q) and F.normalize(k) (L2, eps 1e-12); similarity to the centroids
//    mu (H, C, D) of the query head, x . mu_c (mu used as given, not renormalised);
// 2. balanced assignment (`distribution`): every cluster c takes the wq = min(W, Nq) queries and
//    the wk = min(W, Nk) keys of largest similarity (torch.topk over the sequence axis), so a token
//    may be taken by several clusters or by none. Ties go to the lower position (torch.topk on CPU
//    gives no documented order for ties); NaN ranks above every number, as in torch.topk. With
//    shared_qk only the queries are routed and the keys of a cluster are its queries' positions.
// 3. the attention inside each cluster is run by spattn::routing_attention (kernels.hpp).
//
// Online k-means (`kmeans_iter`): buckets = argmax_c x . mu_c (first index on ties), new mu_c =
// normalize(sum of the members), clusters without members keep their old mu. The reference's
// initialisation (`Kmeans.init`) runs this step 10 times on the *raw* (unnormalised) tokens from
// randomly chosen tokens; its training update runs it once on normalised tokens, then an EMA.
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

// Sanity bounds of the parameters (a runaway value would allocate or loop without end).
constexpr int kMaxClusters = 65536;
constexpr int kMaxInitIters = 1000;

struct RoutingParams {
  int window_size = 128;
  int num_clusters = 0;
  int kmeans_init_iters = 10;
  bool shared_qk = false;
  int seed = 0;
  float ema_decay = 0.999f;
  float commitment = 1e-4f;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("window_size", &RoutingParams::window_size,
      "W: queries and keys taken by each cluster (min(W, N)); >= 1 (the reference README's 128).");
    v("num_clusters", &RoutingParams::num_clusters,
      "C: clusters per head when no centroids are given; 0 = max(1, Nk // window_size) per call (the reference's "
      "max_seq_len // window_size with max_seq_len = Nk); in [0, 65536].");
    v("kmeans_init_iters", &RoutingParams::kmeans_init_iters,
      "Lloyd iterations of the centroid initialisation (the reference's KMEAN_INIT_ITERS = 10); in [0, 1000].");
    v("shared_qk", &RoutingParams::shared_qk,
      "Shared query-key attention (reference shared_qk): only queries are routed, keys are the normalised k at "
      "the cluster's query positions, the self match gets logit -5e4; needs Nq == Nk.");
    v("seed", &RoutingParams::seed, "Seed of the random tokens that initialise the centroids.");
    v("ema_decay", &RoutingParams::ema_decay,
      "Decay of the centroid EMA update (reference 0.999), used by routing.ema_update; in [0, 1].");
    v("commitment", &RoutingParams::commitment,
      "Weight of the commitment loss reported by fit (reference 1e-4); >= 0.");
  }
};

// Per (b, query head h, cluster c) the wq query positions and the wk key positions the cluster
// took, in descending similarity (ties: lower position first).
struct RoutingAssignment {
  int B = 0, H = 0, C = 0, wq = 0, wk = 0;
  std::vector<int32_t> q_idx;  // (B, H, C, wq)
  std::vector<int32_t> k_idx;  // (B, H, C, wk)
};

// Route q (B, Hq, Nq, D) and k (B, Hkv, Nk, D) of `qk` to the centroids (Hq, C, D) of every query
// head (query head h routes the keys of kv head h / (Hq / Hkv)), top min(window_size, N) per
// cluster. Memory O(C * W) per thread: similarities are formed in chunks of rows (SIMD product)
// and kept in one bounded heap per cluster.
RoutingAssignment route_routing(const AttnArgs& qk, const float* centroids, int C, const RoutingParams& p);

// One `kmeans_iter` step per head on tokens x (H, n, D) (normalised first when `normalize`):
// returns the new centroids (H, C, D) and writes each token's bucket to buckets (H, n) when
// non-null. Sums are accumulated in double.
std::vector<float> routing_kmeans_step(const float* x, int H, long long n, int D, const float* means, int C,
                                       bool normalize, int32_t* buckets);

// The union of the keys of the clusters that took each query (ascending, -1 padded, causal rule
// bottom-right aligned when `causal`): TokenIndices (B, H, Nq, K) with group_size 1; `kmax`
// receives K. The support of the routing output (its value is not one softmax over these keys).
std::vector<int32_t> routing_token_indices(const RoutingAssignment& r, int Nq, int Nk, bool causal, int* kmax);

}  // namespace spattn
