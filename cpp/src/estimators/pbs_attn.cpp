// PBS-Attn estimator (see the header for the official behaviour it follows).
//
// The permutation's importance (mean over the last b queries of their softmax over the
// complete-segment keys) runs on the exact block-map statistics pass (block_attention_map,
// non-causal, one query block of b rows, key blocks of 1): row softmax on the tile engine, then
// sums over the rows. The pooled block scores are small (nb x nb) Eigen products of pooled
// vectors, as in minference_block_sparse.cpp.
//
// Numerics: the pooled softmax is computed in double and stored as float32 probabilities, the
// cumulative sum accumulates in double and is rounded to float32 before the comparison with
// float32(threshold), as torch does on CPU for a float32 tensor (cumsum's double accumulator, the
// Python scalar cast to the tensor's dtype). Ties: the descending sorts keep the lower index
// first (std::stable_sort); torch.argsort / torch.sort leave them unspecified (only exactly
// equal importances or probabilities tie).
#include "spattn/estimators/pbs_attn.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "spattn/statistics.hpp"

namespace spattn {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat>;

// NaN (rows of NaN inputs) sorts last, so the comparisons stay a strict weak order.
float sort_key(float x) { return std::isnan(x) ? -std::numeric_limits<float>::infinity() : x; }

// Per (b, query head): the importance of each complete-segment key, (B, Hq, nseg * S).
std::vector<float> key_importance(const AttnArgs& a, int bs, int complete) {
  const AttnShape& s = a.shape;
  const int L = s.Nq, D = s.D;
  // The last bs queries of every head and the complete-segment keys, as contiguous views.
  std::vector<float> qlast(size_t(s.B) * s.Hq * bs * D);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.Hq; ++h)
      std::copy_n(a.q + s.q_index(b, h, L - bs), size_t(bs) * D, qlast.data() + (size_t(b) * s.Hq + h) * bs * D);
  std::vector<float> kc;
  const float* kp = a.k;
  if (complete != s.Nk) {
    kc.resize(size_t(s.B) * s.Hkv * complete * D);
    for (int b = 0; b < s.B; ++b)
      for (int hk = 0; hk < s.Hkv; ++hk)
        std::copy_n(a.k + s.k_index(b, hk, 0), size_t(complete) * D,
                    kc.data() + (size_t(b) * s.Hkv + hk) * complete * D);
    kp = kc.data();
  }
  AttnArgs r;
  r.q = qlast.data();
  r.k = kp;
  r.shape = AttnShape{s.B, s.Hq, s.Hkv, bs, complete, D, 0};
  r.scale = a.effective_scale();
  r.causal = false;  // the official scores see every complete-segment key
  std::vector<float> imp(size_t(s.B) * s.Hq * complete);
  block_attention_map(r, bs, 1, BlockPool::Sum, imp.data());
  for (float& x : imp) x /= float(bs);
  return imp;
}

}  // namespace

void PbsAttnParams::validate() const {
  require_min("pbs_attn", "block_size", block_size, 1);
  require_min("pbs_attn", "segment_size", segment_size, 1);
  if (segment_size % block_size != 0)
    param_error("pbs_attn", "segment_size",
                ("be a multiple of block_size (" + std::to_string(block_size) + ")").c_str(), segment_size);
  if (threshold.empty()) param_error("pbs_attn", "threshold", "hold at least one value", "[]");
  for (float t : threshold) require_unit_interval("pbs_attn", "threshold", t);
}

PbsAttnEstimate estimate_pbs_attn(const AttnArgs& a, const PbsAttnParams& p) {
  const AttnShape& s = a.shape;
  s.validate();
  p.validate();
  if (!a.causal || s.Nq != s.Nk)
    throw std::invalid_argument("pbs_attn: defined for causal prefill (causal=True, Nq == Nk), got " +
                                std::string(a.causal ? "causal" : "non-causal") + " Nq=" + std::to_string(s.Nq) +
                                ", Nk=" + std::to_string(s.Nk));
  if (p.threshold.size() != 1 && p.threshold.size() != size_t(s.Hq))
    throw std::invalid_argument("pbs_attn: threshold must hold 1 value or one per query head (" +
                                std::to_string(s.Hq) + "), got " + std::to_string(p.threshold.size()));
  const int L = s.Nq, bs = p.block_size, S = p.segment_size, D = s.D;
  const int nb = ceil_div(L, bs);
  const size_t heads = size_t(s.B) * s.Hq;

  PbsAttnEstimate est;
  est.blocks = BlockMask(s.B, s.Hq, L, L, bs, bs);
  est.perm.resize(heads * size_t(L));
  if (L == 0) return est;

  if (L <= S) {  // the official SDPA fallback: dense causal, identity permutation
    est.dense = true;
    for (size_t bh = 0; bh < heads; ++bh) {
      std::iota(est.perm.begin() + bh * L, est.perm.begin() + (bh + 1) * L, 0);
      for (int g = 0; g < nb; ++g) {
        uint8_t* brow = est.blocks.blocks.data() + (bh * nb + g) * nb;
        std::fill(brow, brow + g + 1, 1);  // every block at or left of the diagonal
      }
    }
    return est;
  }

  // 1. Segment-wise permutation. L > S, so there is at least one complete segment and either a
  // second one or a tail: never the official identity case.
  const int nseg = L / S, complete = nseg * S;
  const std::vector<float> imp = key_importance(a, bs, complete);
#pragma omp parallel for schedule(static)
  for (long long bh = 0; bh < (long long)heads; ++bh) {
    int32_t* perm = est.perm.data() + size_t(bh) * L;
    const float* w = imp.data() + size_t(bh) * complete;
    for (int sg = 0; sg < nseg; ++sg) {
      int32_t* seg = perm + size_t(sg) * S;
      std::iota(seg, seg + S, sg * S);
      std::stable_sort(seg, seg + S, [&](int32_t x, int32_t y) { return sort_key(w[x]) > sort_key(w[y]); });
    }
    std::iota(perm + complete, perm + L, complete);
  }

  // 2. Block selection on (Q, K[perm]); step 3 is spattn::permuted_block_attention.
  const int spb = S / bs;  // blocks per segment
  const float scale = a.effective_scale();
#pragma omp parallel for schedule(dynamic, 1)
  for (long long bh = 0; bh < (long long)heads; ++bh) {
    const int b = int(bh / s.Hq), h = int(bh % s.Hq), hk = h / s.group();
    const int32_t* perm = est.perm.data() + size_t(bh) * L;
    // Zero-padded block means: pad rows count in the mean, as the official reshape(...).mean().
    RowMat qp = RowMat::Zero(nb, D), kp = RowMat::Zero(nb, D);
    const float* q = a.q + s.q_index(b, h, 0);
    const float* k = a.k + s.k_index(b, hk, 0);
    for (int i = 0; i < L; ++i) {
      qp.row(i / bs) += CMap(q + size_t(i) * D, 1, D);
      kp.row(i / bs) += CMap(k + size_t(perm[i]) * D, 1, D);
    }
    qp /= float(bs);
    kp /= float(bs);
    const RowMat score = (qp * kp.transpose()) * scale;
    const int first_block = int(std::find(perm, perm + L, 0) - perm) / bs;  // where token 0 went
    const float t = p.threshold[p.threshold.size() == 1 ? 0 : h];  // float32(tau), as torch compares
    const bool take_all = t >= 1.f;  // the official int-1 path: every candidate
    std::vector<double> e(nb);
    std::vector<float> prob(nb);
    std::vector<int> order(nb);
    for (int qb = 0; qb < nb; ++qb) {
      uint8_t* row = est.blocks.row(b, h, qb);
      const int own = qb / spb;
      const int ncand = own * spb;  // candidates: kb <= qb in another segment = the blocks before the own segment
      if (ncand > 0) {
        if (take_all) {
          std::fill(row, row + ncand, 1);
        } else {
          const float* sc = score.data() + size_t(qb) * nb;
          double mx = -std::numeric_limits<double>::infinity();
          for (int c = 0; c < ncand; ++c) mx = std::max(mx, double(sc[c]));
          double z = 0.0;
          for (int c = 0; c < ncand; ++c) z += (e[c] = std::exp(double(sc[c]) - mx));
          for (int c = 0; c < ncand; ++c) prob[c] = float(e[c] / z);
          std::iota(order.begin(), order.begin() + ncand, 0);
          std::stable_sort(order.begin(), order.begin() + ncand,
                           [&](int x, int y) { return sort_key(prob[x]) > sort_key(prob[y]); });
          // select_blocks: the smallest descending prefix whose float32 cumsum reaches tau; none
          // when it never does. Non-candidates hold 0 and sort last, so they are never reached first.
          double cum = 0.0;
          int stop = -1;
          for (int m = 0; m < ncand; ++m) {
            cum += prob[order[m]];
            if (float(cum) >= t) {
              stop = m;
              break;
            }
          }
          for (int m = 0; m <= stop; ++m) row[order[m]] = 1;
        }
      }
      if (p.force_select_first_block) row[first_block] = 1;
      for (int kb = own * spb; kb < std::min(nb, (own + 1) * spb); ++kb) row[kb] = 1;  // own segment
    }
  }
  return est;
}

}  // namespace spattn
