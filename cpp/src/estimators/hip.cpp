// HiP's estimator (see the header for the tree search and the official functions it follows): per
// (batch, query head, query block) the hierarchical search over key-block nodes, the children's
// representative key blocks scored against the block's scoring rows through the SIMD row-major product
// (gathered rows and keys, 512 keys a product: O(K log T) keys per block, never all of them), then
// the safe_indices expansion and the union with the sink and the sliding window.
#include "spattn/estimators/hip.hpp"

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "../simd/simd.hpp"
#include "spattn/masks.hpp"

namespace spattn {

void HipParams::validate() const {
  require_min("hip", "mask_k", mask_k, 1);
  require_min("hip", "block_size_q", block_size_q, 1);
  require_min("hip", "block_size_k", block_size_k, 1);
  require_min("hip", "scale_up", scale_up, 2);
  require_min("hip", "reduce_stride", reduce_stride, 1);
  require_min("hip", "sliding_window_size", sliding_window_size, 0);
  require_min("hip", "num_sink", num_sink, 0);
  require_min("hip", "dense_queries_exp", dense_queries_exp, 0);
  require_min("hip", "estimator_lower_resolution", estimator_lower_resolution, 1);
}

namespace {

long long next_pow2(long long n) {
  long long p = 1;
  while (p < n) p <<= 1;
  return p;
}

long long cdiv(long long a, long long b) { return (a + b - 1) / b; }

// The search constants of one call (hip_attention / hip_attention_mask after their adjustments).
struct HipSetup {
  int bq = 1, bk = 1, lr = 1, s = 2;
  long long w0 = 0;          // initial width (tokens)
  long long mask_blocks = 0;  // MASK_K = ceil(mask_k / r / bk)
  long long patch_blocks = 0; // N_PATCHES = ceil(n_patches / r / bk)
  int rows = 0;               // scoring row slots (BLOCK_SIZE_Q_PADDED)
  int stride = 1;
  bool rows_bounded = true;   // scoring rows limited to the block (official mask_block_q)
  long long shift = 0;        // causal scoring shift max(0, window - bq - bk)
  long long sink = 0;         // sink tokens
  int dense = 0;              // dense prefix queries (a multiple of bq, or Nq)
};

HipSetup hip_setup(const AttnShape& s, bool causal, const HipParams& p) {
  HipSetup h;
  const int Nq = s.Nq, Nk = s.Nk;
  // hip_attention: dense prefix of causal prompts, then block sizes of the sparse call.
  long long dq = 0;
  if (causal && Nq > 32) {
    long long exp_q;
    if (p.dense_queries_exp) {
      exp_q = *p.dense_queries_exp;
    } else {
      const double K = double(p.mask_k);
      exp_q = (long long)((std::log2(double(Nk) / K / 2.0) * K + K) * 3.0);
    }
    const long long dense = std::max<long long>(0, exp_q - Nk + Nq);
    if (dense > 0 && exp_q > 0) dq = std::min<long long>(dense, Nq);
  }
  // The sparse call's T_DST; when every query is dense (no sparse call) the groups keep min(bq, next_pow2(Nq)).
  const long long t_dst = dq < Nq ? Nq - dq : Nq;
  h.bq = int(std::min<long long>(p.block_size_q, next_pow2(std::max<long long>(1, t_dst))));
  h.bk = int(std::min<long long>(p.block_size_k, next_pow2(std::max(1, Nk))));
  h.dense = int(std::min<long long>(Nq, cdiv(dq, h.bq) * h.bq));
  h.s = p.scale_up;
  // hip_attention_mask: lower resolution, initial width.
  long long mask_k = p.mask_k;
  long long w_start = mask_k * h.s;                 // ceil(mask_k * scale_up)
  long long n_patches = cdiv(mask_k, h.s);          // ceil(mask_k / scale_up)
  h.lr = cdiv(mask_k, h.bk) <= 64 ? 1 : p.estimator_lower_resolution;
  if (h.lr > 1) {
    mask_k /= h.lr;
    w_start /= h.lr;
    n_patches /= h.lr;
  }
  // Python round(): half to even (the default floating-point rounding mode).
  h.w0 = (long long)std::nearbyint(double(w_start) / double(h.s));
  if (h.w0 > mask_k || mask_k < 1)
    throw std::invalid_argument("hip: mask_k=" + std::to_string(p.mask_k) + " gives an initial width round(w_start / " +
                                "scale_up)=" + std::to_string(h.w0) + " above mask_k / r=" + std::to_string(mask_k) +
                                " (the official code asserts w <= mask_k)");
  h.mask_blocks = cdiv(mask_k, h.bk);
  h.patch_blocks = cdiv(n_patches, h.bk);
  h.stride = p.reduce_stride;
  h.rows = int(next_pow2(std::max<long long>(cdiv(h.bq, h.stride), 16)));
  h.rows_bounded = h.rows != h.bq;
  const bool window = p.sliding_window_size > 0;
  h.shift = window ? std::max<long long>(0, (long long)p.sliding_window_size - h.bq - h.bk) : 0;
  h.sink = window ? (long long)(p.num_sink ? *p.num_sink : cdiv(32, h.bk)) * h.bk : 0;
  return h;
}

// A child's rank: children with an unignored scoring pair first, then by score; NaN as -inf.
struct Rank {
  bool live;
  float score;
  bool operator>(const Rank& o) const { return live != o.live ? live : score > o.score; }
};

// The official selection of k among n ranked children (k < n): the k-th largest rank as threshold; the
// first k - 1 children (in position order) at or above it keep their order (the official cumsum slots);
// the last slot, written by every other child at or above it in an unspecified order, goes to the best
// of them (the lowest position among equals).
std::vector<int> official_topk(const std::vector<Rank>& r, int k) {
  const int n = int(r.size());
  std::vector<int> ord(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) ord[size_t(i)] = i;
  std::nth_element(ord.begin(), ord.begin() + (k - 1), ord.end(),
                   [&](int a, int b) { return r[size_t(a)] > r[size_t(b)]; });
  const Rank thr = r[size_t(ord[size_t(k - 1)])];
  std::vector<int> out;
  out.reserve(size_t(k));
  int last = -1;
  for (int i = 0; i < n; ++i) {
    if (thr > r[size_t(i)]) continue;
    if (int(out.size()) < k - 1) {
      out.push_back(i);
    } else if (last < 0 || r[size_t(i)] > r[size_t(last)]) {
      last = i;
    }
  }
  out.push_back(last);
  return out;
}

struct Scratch {
  std::vector<float> qs, ks, S;
  std::vector<int> row_abs, key_abs, child_of;
  std::vector<Rank> rank;
};

constexpr int kKeyChunk = 512;  // representative keys per product (bounds the scratch)

// Ranks of the children (representative key blocks t[c]) of one query block.
void score_children(const AttnArgs& a, const HipSetup& h, int b, int hq, int b0, const std::vector<long long>& t,
                    Scratch& w) {
  const AttnShape& s = a.shape;
  const int D = s.D, Nq = s.Nq, Nk = s.Nk, hk = hq / s.group();
  const long long off = s.causal_offset();
  // Scoring rows: b0 + r * stride (official idx_block_q), inside the block when rows_bounded, below Nq.
  w.row_abs.clear();
  for (int r = 0; r < h.rows; ++r) {
    const long long rr = (long long)r * h.stride;
    if (h.rows_bounded && rr >= h.bq) break;
    if (b0 + rr >= Nq) break;
    w.row_abs.push_back(int(b0 + rr));
  }
  const int nr = int(w.row_abs.size());
  w.qs.resize(size_t(nr) * D);
  for (int r = 0; r < nr; ++r)
    std::copy_n(a.q + s.q_index(b, hq, w.row_abs[size_t(r)]), D, w.qs.data() + size_t(r) * D);
  const int n = int(t.size());
  w.rank.assign(size_t(n), Rank{false, -std::numeric_limits<float>::infinity()});
  std::vector<float> all_max(static_cast<size_t>(n), -std::numeric_limits<float>::infinity());
  w.key_abs.clear();
  w.child_of.clear();
  for (int c = 0; c < n; ++c)
    for (int j = 0; j < h.bk; ++j)
      if (t[size_t(c)] + j < Nk) {
        w.key_abs.push_back(int(t[size_t(c)] + j));
        w.child_of.push_back(c);
      }
  const int nkeys = int(w.key_abs.size());
  const simd::Kernels& kern = simd::kernels();
  for (int j0 = 0; j0 < nkeys; j0 += kKeyChunk) {
    const int nc = std::min(kKeyChunk, nkeys - j0);
    w.ks.resize(size_t(nc) * D);
    for (int j = 0; j < nc; ++j)
      std::copy_n(a.k + s.k_index(b, hk, w.key_abs[size_t(j0 + j)]), D, w.ks.data() + size_t(j) * D);
    w.S.resize(size_t(nr) * nc);
    if (nr > 0) kern.qk_rowmajor(w.qs.data(), nr, D, w.ks.data(), D, nc, w.S.data(), nc);
    for (int r = 0; r < nr; ++r) {
      const float* Sr = w.S.data() + size_t(r) * nc;
      const long long vis = w.row_abs[size_t(r)] + off;  // pairs with vis < key + shift are ignored
      for (int j = 0; j < nc; ++j) {
        float x = Sr[j];
        if (std::isnan(x)) x = -std::numeric_limits<float>::infinity();
        const int c = w.child_of[size_t(j0 + j)];
        all_max[size_t(c)] = std::max(all_max[size_t(c)], x);
        if (a.causal && vis < w.key_abs[size_t(j0 + j)] + h.shift) continue;
        Rank& rk = w.rank[size_t(c)];
        if (!rk.live) rk = Rank{true, x};
        else rk.score = std::max(rk.score, x);
      }
    }
  }
  for (int c = 0; c < n; ++c)
    if (!w.rank[size_t(c)].live) w.rank[size_t(c)].score = all_max[size_t(c)];
}

// The search of one query block: final nodes at resolution ceil(tsrc / bk) (w = tsrc).
std::vector<long long> search_block(const AttnArgs& a, const HipSetup& h, int b, int hq, int b0, long long tsrc,
                                    Scratch& w) {
  long long wc = std::min(tsrc, h.w0);
  std::vector<long long> nodes(static_cast<size_t>(cdiv(wc, h.bk)));
  for (size_t j = 0; j < nodes.size(); ++j) nodes[j] = (long long)j;
  const long long bt = cdiv(tsrc, h.bk);
  std::vector<long long> child, rep;
  while (true) {
    const long long wn = std::min(wc * h.s, tsrc);
    if (wn == wc) break;
    const long long bo = cdiv(wc, h.bk), bn = cdiv(wn, h.bk);
    child.clear();
    for (long long j : nodes)
      for (long long c = j * bn / bo; c < (j + 1) * bn / bo; ++c) child.push_back(c);
    long long kn = h.mask_blocks >= bt ? bn : h.mask_blocks * bn / bt;
    kn = std::min(bt, std::max(h.patch_blocks, kn));
    const long long np = (long long)child.size();
    if (kn < np) {
      rep.resize(child.size());
      for (size_t c = 0; c < child.size(); ++c) {
        long long t = child[c] * tsrc / bn;
        t = std::max(0LL, std::min(tsrc - 1, t));
        rep[c] = t / h.bk * h.bk;
      }
      score_children(a, h, b, hq, b0, rep, w);
      const std::vector<int> keep = official_topk(w.rank, int(kn));
      nodes.clear();
      for (int i : keep) nodes.push_back(child[size_t(i)]);
    } else {
      nodes.swap(child);
    }
    wc = wn;
  }
  return nodes;
}

}  // namespace

HipEstimate estimate_hip(const AttnArgs& qk, const HipParams& p, bool prefix_rows) {
  p.validate();
  const AttnShape& s = qk.shape;
  s.validate();
  if (s.Nq > s.Nk)
    throw std::invalid_argument("hip: needs Nq <= Nk (the official code asserts T_DST <= T_SRC), got Nq=" +
                                std::to_string(s.Nq) + ", Nk=" + std::to_string(s.Nk));
  HipEstimate e;
  if (s.Nq == 0) return e;
  const HipSetup h = hip_setup(s, qk.causal, p);
  const int Nq = s.Nq, Nk = s.Nk;
  const long long off = s.causal_offset();
  e.group_size = h.bq;
  e.groups = ceil_div(Nq, h.bq);
  e.dense_queries = h.dense;
  const size_t rows_out = size_t(s.B) * s.Hq * e.groups;
  e.ks.assign(rows_out, -1);
  std::vector<std::vector<int32_t>> lists(rows_out);
  const long long items = (long long)rows_out;
#pragma omp parallel
  {
    Scratch w;
#pragma omp for schedule(dynamic, 1)
    for (long long it = 0; it < items; ++it) {
      const int g = int(it % e.groups);
      const int hq = int((it / e.groups) % s.Hq);
      const int b = int(it / ((long long)e.groups * s.Hq));
      const int b0 = g * h.bq;
      const long long end = (long long)b0 + h.bq + off;  // the block's key end (official tsrc, unclamped)
      std::vector<int32_t>& out = lists[size_t(it)];
      if (b0 < h.dense) {  // the dense prefix: its whole causal key range, or nothing (run densely by the caller)
        if (prefix_rows)
          for (long long j = 0; j < std::min<long long>(end, Nk); ++j) out.push_back(int32_t(j));
        continue;
      }
      // The search's visible keys (official tsrcs: the block start + max(bq, bk) + Nk - Nq, clamped).
      const long long tsrc = qk.causal ? std::min<long long>((long long)b0 + std::max(h.bq, h.bk) + off, Nk) : Nk;
      const std::vector<long long> nodes = search_block(qk, h, b, hq, b0, tsrc, w);
      e.ks[size_t(it)] = int32_t(nodes.size() * size_t(h.lr));
      // safe_indices ("biased"): col = ceil(j tsrc / (bk ceil(tsrc / bk))), strictly increasing.
      const long long bt = cdiv(tsrc, h.bk);
      long long last = -1;
      for (long long j : nodes)
        for (int rep = 0; rep < h.lr; ++rep) {
          const long long col = std::max(last + 1, cdiv(j * tsrc, h.bk * bt));
          last = col;
          for (long long t = col * h.bk; t < (col + 1) * h.bk; ++t)
            if (t >= h.sink && t < Nk) out.push_back(int32_t(t));
        }
      for (long long t = 0; t < std::min<long long>(h.sink, Nk); ++t) out.push_back(int32_t(t));
      if (p.sliding_window_size > 0)
        for (long long t = std::max(0LL, end - p.sliding_window_size); t < std::min<long long>(end, Nk); ++t)
          out.push_back(int32_t(t));
      std::sort(out.begin(), out.end());
      out.erase(std::unique(out.begin(), out.end()), out.end());
    }
  }
  size_t K = 1;
  for (const auto& l : lists) K = std::max(K, l.size());
  e.K = int(K);
  e.indices.assign(rows_out * K, -1);
  for (size_t r = 0; r < rows_out; ++r) std::copy(lists[r].begin(), lists[r].end(), e.indices.begin() + r * K);
  return e;
}

}  // namespace spattn
