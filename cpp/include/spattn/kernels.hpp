// Attention kernels of spattn. Every kernel runs the shared online-softmax tile update
// (cpp/src/kernels/tile.hpp), parallelises with OpenMP over (batch, head, q-block) work items
// with a dynamic schedule, and never allocates an Nq x Nk buffer.
#pragma once

#include "spattn/masks.hpp"
#include "spattn/plan.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

// Exact attention over every visible key. Writes args.out (and args.lse when non-null).
void dense_attention(const AttnArgs& args);

// Throws std::invalid_argument naming scale when a row's lse (B, Hq, Nq) is NaN or +inf while
// its q row and its kv head's k are finite: a logit scale * q.k beyond the float32 range, which
// the float32 softmax cannot represent. Run after every pass that produces an lse.
void check_logits_in_range(const AttnArgs& args, const float* lse);

// Attention restricted to the blocks of a compiled plan (spattn/plan.hpp); when args.causal the
// causal rule is applied element-wise inside the partial blocks. The plan must have been
// compiled for this shape and causality.
void block_sparse_attention(const AttnArgs& args, const BlockPlan& plan);

// Same, compiling `mask` (H = Hq or 1) into a plan for this one call.
void block_sparse_attention(const AttnArgs& args, const BlockMaskView& mask);

// Attention restricted to the key positions listed per query group (decode when Nq = 1).
// args.relu2: un-normalised ReLU^2 attention over the listed keys instead of softmax.
void token_sparse_attention(const AttnArgs& args, const TokenIndicesView& indices);

// Attention restricted, per query row, to the key blocks listed for it (RowBlockIndices: InfLLM-V2's
// and NSA's per-token top-k blocks); the causal rule applies per element inside the blocks. Query
// heads of a GQA group share the list of their kv head when indices.H = Hkv (or 1). `key_bias`
// (B, Hkv, Nk), optional: an additive logit bias per key, softmax(q.k scale + bias) (NOSA).
void row_block_sparse_attention(const AttnArgs& args, const RowBlockIndicesView& indices,
                                const float* key_bias = nullptr);

// Token-level window with sinks: query i (position p = i + Nk - Nq, bottom-right aligned as the
// causal rule) sees key j iff (j < sinks or (j >= p - left and j <= p + right)) and, when causal,
// j <= p. left / right = -1: unbounded on that side. MInference's A-shape (`streaming_forward`)
// is sinks = n_init, left = n_local - 1, causal.
struct WindowSpec {
  long long sinks = 0;
  long long left = -1;
  long long right = -1;
  void validate() const;  // std::invalid_argument naming the field
};
void window_attention(const AttnArgs& args, const WindowSpec& window);

// MInference vertical-slash attention, token-exact (the official Triton/CUDA kernel's mask):
// query i of block m sees key j <= i iff j lies in one of the block's slash ranges or is one of
// its vertical columns (vertical_slash_runs). Ranges are read in place, columns gathered; no
// per-block index list is stored (the runs are derived per work item). Causal, Nq == Nk.
void vertical_slash_attention(const AttnArgs& args, const VerticalSlashView& vs);

// Visible (query, key) pairs of the vertical-slash pattern per (b, h) (B x H values), and the
// same pattern as TokenIndices (group_size = block; the ascending keys of each query block's runs
// below min(len, block end), -1 padded to the longest row): `kmax` receives K.
std::vector<double> vertical_slash_pairs(const VerticalSlashView& vs);
std::vector<int32_t> vertical_slash_token_indices(const VerticalSlashView& vs, int* kmax);

// Block-sparse attention over permuted keys (PBS-Attn): query block qb attends to the keys of its
// selected permuted blocks, key j visible to query i iff its original position <= i (Nq == Nk,
// causal). Blocks whose keys all precede the block's first query run unmasked; the keys of the
// others are sorted by position and masked per element. K/V are gathered per tile, never
// permuted as a whole: memory is the permutation and the block map.
void permuted_block_attention(const AttnArgs& args, const PermutedBlocksView& pb);

// Visible (query, key) pairs per (b, h) (B x H values), and the pattern as TokenIndices
// (group_size = block: per query block the ascending original positions of its selected keys
// <= its last query, -1 padded); `kmax` receives K.
std::vector<double> permuted_block_pairs(const PermutedBlocksView& pb);
std::vector<int32_t> permuted_block_token_indices(const PermutedBlocksView& pb, int* kmax);

// Variable-size block attention over clusters (SVG2's dynamic_block_sparse_fwd): for each (batch,
// query head, query cluster) the cluster's query rows are gathered into tiles of at most 128 rows,
// the keys of its selected key clusters gathered tile by tile (K/V read through the key
// clusters, never permuted as a whole), run on the online-softmax tile engine, and the output rows
// scattered back to their original positions. When args.causal, key j is visible to query i iff
// j <= i + Nk - Nq (keys every row sees run unmasked, the others sorted and masked per element).
// Memory: O(Nq D + Nk) for the cluster order and a cluster-ordered copy of Q, never Nq x Nk.
void cluster_block_attention(const AttnArgs& args, const ClusteredView& cv);

// Visible (query, key) pairs of the clustered pattern per (b, query head) (B x Hq values), and the
// pattern as TokenIndices with group_size = 1: per query the ascending keys of its selected
// clusters (when causal, only those <= its causal limit), -1 padded; `kmax` receives K.
std::vector<double> cluster_block_pairs(const ClusteredView& cv, bool causal);
std::vector<int32_t> cluster_block_token_indices(const ClusteredView& cv, bool causal, int* kmax);

// Routing Transformer clusters (Roy et al. 2021; lucidrains/routing-transformer
// `KmeansAttention.forward`): per (b, query head h, cluster c) the positions of its wq queries
// and its wk keys (kv head h / (Hq / Hkv)), plus optional memory keys/values per (h, c) that every
// query of the cluster sees (the reference's learned num_mem_kv).
struct RoutingClustersView {
  const int32_t* q_idx = nullptr;  // (B, H, C, wq) query positions, distinct per cluster
  const int32_t* k_idx = nullptr;  // (B, H, C, wk) key positions, distinct per cluster
  int B = 0, H = 0, C = 0, wq = 0, wk = 0;
  const float* mem_k = nullptr;  // (H, C, M, D), or null when M = 0
  const float* mem_v = nullptr;  // (H, C, M, Dv)
  int M = 0;
  bool shared_qk = false;      // the key at the query's own position gets logit self_value
  float self_value = -5e4f;    // the reference's TOKEN_SELF_ATTN_VALUE (set after scaling)
  float eps = 1e-5f;           // scatter_mean's eps
  // Throws std::invalid_argument unless the view fits the shape (B, H = Hq, positions in range and
  // distinct per cluster, wq <= Nq, wk <= Nk; shared_qk needs Nq == Nk).
  void check_against(const AttnShape& s) const;
};

// Routing attention: each cluster is a work item of the tile engine (its wq gathered query rows,
// its memory keys then its wk keys sorted by position, causal rule element-wise on original
// positions, bottom-right aligned); softmax inside the cluster; then every query's output is the
// sum of the outputs of the clusters that took it divided by (their count + eps) (scatter_mean),
// 0 for queries no cluster took. A cluster row with no visible key (causal, no memory keys)
// contributes 0 but still counts. Writes args.out only (the output is a mean of softmaxes: there
// is no row log-sum-exp). Memory: the cluster outputs (B, H, C, wq, Dv), the size of out when C * W = N.
void routing_attention(const AttnArgs& args, const RoutingClustersView& rc);

// Gradients of dense attention (exact, flash-style recomputation by tiles): outputs of the call.
// dq like q, dk like k, dv like v (packed); optional bias gradients shaped as the biases of
// args.bias: d_pair (summed over the batch and, for a shared pair bias, over heads), d_key (summed
// over the query rows and, for kv-head rows, over the group's heads), d_rel (summed over every
// (query, key) pair whose clamped offset selects the entry, over the batch and shared heads).
struct AttnGrads {
  float* dq = nullptr;
  float* dk = nullptr;
  float* dv = nullptr;
  float* d_pair = nullptr;
  float* d_key = nullptr;
  float* d_rel = nullptr;
};

// Backward of dense_attention with the same args (q, k, v, causality, scale, bias), its outputs
// args.out and args.lse, and the output gradient `dout` (like out). Float32 packed K/V only.
void dense_attention_backward(const AttnArgs& args, const float* dout, const AttnGrads& grads);

// Exact merge of two attention states over disjoint key sets:
// lse = logaddexp(lse_a, lse_b), out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b.
// Rows empty on both sides give out = 0, lse = -inf. `rows` rows of `dv` values each.
void merge_states(const float* out_a, const float* lse_a, const float* out_b,
                  const float* lse_b, long long rows, int dv, float* out, float* lse);

}  // namespace spattn
