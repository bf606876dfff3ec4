// The block scores InfLLM-V2 (and NOSA, built on it) select from, per query token and kv head:
// stage-1 scores exp(q.k1 scale - lse) over mean-pooled keys k1 (OpenBMB/infllmv2_cuda_impl
// `infllmv2_attn_stage1`; reference tests/stage1/complse_online_softmax.py), the lse taken over
// coarser pooled keys k2 (InfLLM-V2: kernel and stride x 4) or over k1 itself (NOSA passes k = v =
// k1), summed over the group's query heads, NaN -> 0, max-pooled to blocks with the init and
// local blocks forced to +inf (csrc/max_pooling_1d.cuh). Runs on the tile engine: per work item
// (batch, kv head, tile of query rows, the group's heads stacked) an OnlineSoftmax pass over the
// lse keys and a ProbabilitySweep over k1; each row's block scores are handed to a selector.
// Compressed token j (kernel w, stride s) is visible to a query at position t iff t >= s j + w - 1.
// NSA (estimators/nsa.cpp) runs the same passes with the lse over k1 itself, values on the lse pass
// (its output is NSA's compressed branch), overlap-weighted block sums instead of the max pooling
// and the strict lower end of the local blocks.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../kernels/engine.hpp"
#include "spattn/estimators/infllmv2.hpp"

namespace spattn::detail {

inline long long floor_div(long long a, long long b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Largest compressed index visible at position t (-1: none).
inline int last_visible(long long t, int kernel, int stride) {
  return int(std::max<long long>(-1, floor_div(t - kernel + 1, stride)));
}

struct CompressedScoreSpec {
  int kernel = 32, stride = 16, block_size = 64, init_blocks = 1, local_blocks = 32;
  int coarse = 4;  // lse keys: pooled with coarse x kernel and coarse x stride (1: k1 itself)
  bool overlap_pooling = false;  // NSA transform_score: S[b] = sum_o w[o] sc[b m - pad + o]; else max pooling
  bool local_strict = false;     // NSA: qb - local_blocks < b <= qb; InfLLM-V2: qb - local_blocks <= b <= qb
  bool first_head_only = false;  // FSA nsa_ref score_kernel: only the group's first query head is summed
};

// NSA's overlap weight of offset o (0 <= o <= r + m - 2): #{(i, k): i < r, k < m, i + k = o}, the
// number of d-token pieces a compressed token starting o - (r - 1) pieces before a block shares with it.
inline int overlap_weight(int o, int r, int m) { return std::min({o, r - 1, m - 1, r + m - 2 - o}) + 1; }

// Max pooling of one row's k1 scores sc (C1) into block scores S (nblocks): +inf for the forced
// blocks (b < init_blocks or qb - local_blocks <= b <= qb), else the max over
// j in [r b - 1, r b + r) (r = block_size / stride, clipped), -inf when empty. With
// overlap_pooling / local_strict: NSA's weighted sums and strict lower end instead.
inline void pool_block_scores(const float* sc, int C1, const CompressedScoreSpec& p, long long qb, int nblocks,
                              float* S) {
  const float inf = std::numeric_limits<float>::infinity();
  const int r = p.block_size / p.stride;
  for (int b = 0; b < nblocks; ++b) {
    if (b < p.init_blocks || (qb >= b && (p.local_strict ? qb < (long long)b + p.local_blocks
                                                         : qb <= (long long)b + p.local_blocks))) {
      S[b] = inf;
      continue;
    }
    if (p.overlap_pooling) {
      const int rk = p.kernel / p.stride, m = p.block_size / p.stride;
      float acc = 0.f;
      for (int o = 0; o <= rk + m - 2; ++o) {
        const int j = b * m - (rk - 1) + o;
        if (j >= 0 && j < C1) acc += float(overlap_weight(o, rk, m)) * sc[j];
      }
      S[b] = acc;
      continue;
    }
    const int j0 = std::max(0, b * r - 1), j1 = std::min(C1, b * r + r);
    float mx = kNegInf;
    if (j1 > j0) {
      mx = sc[j0];
      for (int j = j0 + 1; j < j1; ++j) mx = std::max(mx, sc[j]);
    }
    S[b] = mx;
  }
}

// Select(b, hk, i, qb, S, nblocks) is called once per (batch, kv head, query row) with the row's
// block scores S (nblocks floats, writable), from several threads at once.
template <class Select>
struct CompressedScoreVariant {
  const AttnArgs& a1;  // q against k1 (Nk = C1)
  const TransposedK& kt1;
  const TransposedK& ktl;  // the lse keys
  const CompressedScoreSpec& p;
  const Select& select;
  int C1 = 0, CL = 0, Nk = 0, nq_tile = 1, ntiles = 1, nblocks = 0;
  // optional: values of the lse keys (B, Hkv, cap, dv) and where the lse pass's attention rows go
  // (out (B, Hq, Nq, dv), lse (B, Hq, Nq); NSA's compressed branch)
  const float* vl = nullptr;
  int vl_cap = 0, dv = 0;
  const AttnArgs* out = nullptr;

  struct Local {
    std::vector<float> score, row_lse, block;
  };
  long long items() const { return (long long)a1.shape.B * a1.shape.Hkv * ntiles; }
  WorkItem item(long long it) const { return grouped_item(a1.shape, it, nq_tile, ntiles); }
  Local local() const { return {}; }
  long long position(int i) const { return (long long)i + Nk - a1.shape.Nq; }

  void keys(TileScratch& t, const WorkItem& w, Local& l) const {
    const int n = w.n(), rows = w.rows();
    l.score.assign(size_t(n) * C1, 0.f);
    l.row_lse.assign(size_t(rows), kNegInf);
    // pass 1: lse over the visible lse keys
    int min_lim = std::numeric_limits<int>::max();
    for (int r = 0; r < rows; ++r) {
      t.qlim[r] = last_visible(position(w.i0 + r % n), p.coarse * p.kernel, p.coarse * p.stride);
      min_lim = std::min(min_lim, t.qlim[r]);
    }
    const float* v_head = vl != nullptr ? vl + (size_t(w.b) * a1.shape.Hkv + w.hk) * vl_cap * dv : nullptr;
    run_key_span(t, rows, ktl, w.b, w.hk, v_head, v_head ? dv : 0, 0, CL, true, min_lim);
    for (int r = 0; r < rows; ++r) l.row_lse[r] = t.l[r] == 0.f ? kNegInf : t.m[r] + std::log(t.l[r]);
    if (out != nullptr)
      for (int r = 0; r < rows; ++r) store_row(t, r, *out, w.b, w.h0 + r / n, w.i0 + r % n);
    // pass 2: exp(s - lse) over the visible k1 tokens, summed over the group's heads
    min_lim = std::numeric_limits<int>::max();
    for (int r = 0; r < rows; ++r) {
      t.qlim[r] = last_visible(position(w.i0 + r % n), p.kernel, p.stride);
      min_lim = std::min(min_lim, t.qlim[r]);
    }
    struct GroupSum {
      float* score;
      int n, C1;
      bool first_only;
      void operator()(int r, const float* pr, const int* pos, int cnt) {
        if (first_only && r >= n) return;
        float* row = score + size_t(r % n) * C1;
        for (int c = 0; c < cnt; ++c) row[pos[c]] += pr[c];
      }
    } reduce{l.score.data(), n, C1, p.first_head_only};
    const ProbabilitySweep<GroupSum> step{l.row_lse.data(), reduce};
    run_key_span(t, rows, kt1, w.b, w.hk, nullptr, 0, 0, C1, true, min_lim, step);
    // rows without a visible lse key: lse = -inf and exp(s + inf) = +inf on their visible k1
    // tokens, as the reference computes (the sweep skips such rows)
    for (int r = 0; r < rows; ++r) {
      if (l.row_lse[r] != kNegInf) continue;
      const int lim = std::min(t.qlim[r], C1 - 1);
      float* row = l.score.data() + size_t(r % n) * C1;
      for (int j = 0; j <= lim; ++j) row[j] += std::numeric_limits<float>::infinity();
    }
  }

  void finish(const TileScratch&, const WorkItem& w, Local& l) const {
    l.block.resize(size_t(nblocks));
    for (int i = w.i0; i < w.i1; ++i) {
      float* sc = l.score.data() + size_t(i - w.i0) * C1;
      for (int j = 0; j < C1; ++j)
        if (std::isnan(sc[j])) sc[j] = 0.f;
      const long long qb = floor_div(position(i), p.block_size);
      pool_block_scores(sc, C1, p, qb, nblocks, l.block.data());
      select(w.b, w.hk, i, qb, l.block.data(), nblocks);
    }
  }
};

// Mean-pooled keys (B, Hkv, cap, D) of which the first C rows per head are the compressed tokens.
struct PooledKeys {
  const float* k = nullptr;
  int C = 0, cap = 0;
};

// Runs the passes over every (batch, kv head, query row) of qk (causal positions t = i + Nk - Nq)
// with the pooled keys given (k1, and the lse keys kl; kl.k == k1.k when coarse == 1); qk.k is not read.
// `out` (optional): the attention of every row over the lse keys with the values `vl` (B, Hkv,
// kl.cap, out->shape.Dv), written to out->out / out->lse.
template <class Select>
void compressed_block_scores_pooled(const AttnArgs& qk, const CompressedScoreSpec& p, PooledKeys k1, PooledKeys kl,
                                    const Select& select, const float* vl = nullptr, const AttnArgs* out = nullptr) {
  const AttnShape& s = qk.shape;
  if (s.Nq == 0) return;
  AttnArgs a1 = statistics_args(qk), al = statistics_args(qk);
  a1.k = k1.k;
  a1.shape.Nk = k1.C;
  a1.shape.kv_capacity = k1.cap;
  al.k = kl.k;
  al.shape.Nk = kl.C;
  al.shape.kv_capacity = kl.cap;
  const int G = s.group();
  const int nq_tile = std::max(1, std::min(s.Nq, kRowsTarget / 4 / G));
  const bool transposed = use_transposed_k(G * nq_tile);
  const bool own_lse = kl.k != k1.k;
  const TransposedK kt1(a1, transposed);
  const TransposedK ktl_own(al, transposed && own_lse);
  const TransposedK& ktl = own_lse ? ktl_own : kt1;
  CompressedScoreVariant<Select> var{a1, kt1, ktl, p, select};
  var.C1 = k1.C;
  var.CL = kl.C;
  var.Nk = s.Nk;
  var.nq_tile = nq_tile;
  var.ntiles = ceil_div(s.Nq, nq_tile);
  var.nblocks = ceil_div(s.Nk, p.block_size);
  if (out != nullptr && vl != nullptr && out->shape.Dv > 0) {
    var.vl = vl;
    var.vl_cap = kl.cap;
    var.dv = out->shape.Dv;
    var.out = out;
  }
  run_tiles(a1, var, G * nq_tile, var.dv);
}

// Same, pooling k1 (and the lse keys) from qk.k.
template <class Select>
void compressed_block_scores(const AttnArgs& qk, const CompressedScoreSpec& p, const Select& select) {
  if (qk.shape.Nq == 0) return;
  int C1 = 0, CL = 0;
  const std::vector<float> k1 = mean_pooled_keys(qk, p.kernel, p.stride, &C1);
  std::vector<float> kl;
  if (p.coarse != 1) kl = mean_pooled_keys(qk, p.coarse * p.kernel, p.coarse * p.stride, &CL);
  const PooledKeys pk1{k1.data(), C1, C1};
  const PooledKeys pkl = p.coarse != 1 ? PooledKeys{kl.data(), CL, CL} : pk1;
  compressed_block_scores_pooled(qk, p, pk1, pkl, select);
}

}  // namespace spattn::detail
