// Gated linear attention (GLA) and Sparse State Expansion (SSE): recurrent, softmax-free
// attention with a dk x dv state per head (Pan et al., "Scaling Linear Attention with Sparse
// State Expansion", arXiv 2507.16577; official layer BICLab/SpikingBrain2.0
// flash-linear-attention_dev/fla/layers/sse.py, SSEGLA).
#pragma once

#include <vector>

namespace spattn {

// One GLA recurrence over T tokens (rows of q, k, g: dk values; of v: dv values):
//   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = scale * q_t^T S_t,
// as fla's naive_recurrent_gla, computed chunk by chunk: within a chunk the decays are
// cumulative sums b_t and o_t = scale (q_t . exp(b_t))^T S_prev + scale sum_{s <= t}
// (sum_d q_td k_sd exp(b_td - b_sd)) v_s, the state carried as diag(exp(b_last)) S_prev +
// sum_s diag(exp(b_last - b_s)) k_s v_s^T (double precision inside the chunk; a chunk whose
// decays span more than the exponent range is split). g <= 0 is required (log-decays).
// state: dk x dv row-major, read as the initial state and overwritten with the final one.
// The q, k, g, v rows are read with the given row strides (in floats).
void gla_recurrence(const float* q, const float* k, const float* g, const float* v, long long T, int dk, int dv,
                    long long ldq, long long ldk, long long ldg, long long ldv, float scale, double* state,
                    float* out, long long ldo, int chunk = 64);

struct SSEArgs {
  int B = 0, H = 0, L = 0, dk = 0, dv = 0, N = 0, top_k = 1;
  float scale = 1.0f;
  bool emulq = true, emulk = true;
  // (B, H, L, dk): q1, k1, g1 (shared state), q2, k2, g2 (partitions); (B, H, L, dv): v;
  // router logits (B, L, N); state (B, 1 + N, H, dk, dv) in / out (nullptr: zero start, not kept).
  const float *q1 = nullptr, *k1 = nullptr, *g1 = nullptr, *q2 = nullptr, *k2 = nullptr, *g2 = nullptr;
  const float *v = nullptr, *router = nullptr;
  float* out = nullptr;  // (B, H, L, dv)
  double* state = nullptr;
  void validate() const;  // std::invalid_argument naming the field
};

// SSE (SSEGLA's varlen path): o = GLA(q1, k1, v, g1) over the whole sequence (the shared state)
// plus, for each partition n, GLA over the subsequence of tokens whose router top-k holds n
// (softmax over the N logits, top_k largest, lower index first on ties), with q2 and k2
// multiplied by the token's probability of n (emulq / emulk), scattered back and added.
void sse_attention(const SSEArgs& a);

// The router of sse_attention: per token the softmax probabilities (B, L, N) and the top_k
// partitions (B, L, top_k), sorted by probability (descending, lower index first on ties).
void sse_route(const float* router, int B, int L, int N, int top_k, float* prob, int* topk);

}  // namespace spattn
