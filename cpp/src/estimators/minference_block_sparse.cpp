// MInference block-sparse estimator (see the header for the official behaviour it follows).
// Deviations: float32 where the official code runs fp16/bf16; ties among equal pooled scores go
// to the lower block index (torch.topk leaves them unspecified).
#include "spattn/estimators/minference_block_sparse.hpp"

#include <Eigen/Core>

#include "spattn/selection.hpp"

namespace spattn {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat>;

// Block sums of x (n x d) divided by the full block size: the official mean over zero-padded rows.
RowMat padded_block_means(const float* x, int n, int d, int bs, int nb) {
  RowMat out = RowMat::Zero(nb, d);
  for (int i = 0; i < n; ++i) out.row(i / bs) += CMap(x + size_t(i) * d, 1, d);
  out /= float(bs);
  return out;
}

}  // namespace

void MInferenceBlockSparseParams::validate() const {
  require_min("minference_block_sparse", "top_k", top_k, 1);
  require_min("minference_block_sparse", "block_size", block_size, 1);
}

BlockMask estimate_minference_block_sparse(const AttnArgs& a, const MInferenceBlockSparseParams& p) {
  const AttnShape& s = a.shape;
  s.validate();
  p.validate();
  if (!a.causal || s.Nq != s.Nk)
    throw std::invalid_argument("minference_block_sparse: defined for causal prefill (causal=True, Nq == Nk), got " +
                                std::string(a.causal ? "causal" : "non-causal") + " Nq=" + std::to_string(s.Nq) +
                                ", Nk=" + std::to_string(s.Nk));
  const int bs = p.block_size, L = s.Nq;
  BlockMask mask(s.B, s.Hq, L, L, bs, bs);
  const int nb = mask.nqb;
  const int nb_pad = int((static_cast<long long>(L) + bs) / bs);  // L + (bs - L % bs) rows, in blocks
  const int top_k = std::min(p.top_k, nb_pad);
#pragma omp parallel for schedule(dynamic, 1)
  for (long long t = 0; t < (long long)s.B * s.Hq; ++t) {
    const int b = int(t / s.Hq), h = int(t % s.Hq), hk = h / s.group();
    const RowMat qp = padded_block_means(a.q + s.q_index(b, h, 0), L, s.D, bs, nb);
    const RowMat kp = padded_block_means(a.k + s.k_index(b, hk, 0), L, s.D, bs, nb);
    const RowMat score = qp * kp.transpose();  // pooled (nb x nb), no scale, as official
    for (int m = 0; m < nb; ++m) {
      uint8_t* row = mask.row(b, h, m);
      if (m + 1 <= top_k) {  // the kernel reads min(m + 1, top_k) sorted indices: all of 0..m
        std::fill(row, row + m + 1, 1);
        continue;
      }
      for (int c : topk_select(score.data() + size_t(m) * nb, m + 1, top_k)) row[c] = 1;
    }
  }
  return mask;
}

}  // namespace spattn
