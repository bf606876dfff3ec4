// MInference block-sparse estimator against a naive loop written from the official
// _build_block_index (zero padding by block - L % block, padded-mean pooling, unscaled pooled
// scores, top-k' = min(top_k, L_pad / block), rows m < top_k' keep 0..m).
#include <numeric>

#include "spattn/estimators/minference_block_sparse.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

TEST(MInferenceBlockSparse, MatchesNaiveOfficialSelection) {
  for (int L : {64 * 7, 64 * 7 + 13}) {  // a multiple of the block (full padding block) and not
    Problem p(1, 4, 2, L, L, 32, 0, true, 11);
    spattn::MInferenceBlockSparseParams prm;
    prm.top_k = 3;
    const auto m = spattn::estimate_minference_block_sparse(p.args(), prm);
    const int bs = 64, nb = (L + bs - 1) / bs, nb_pad = L / bs + 1, topk = std::min(3, nb_pad);
    for (int h = 0; h < 4; ++h) {
      const int hk = h / 2;
      auto pooled = [&](const std::vector<float>& x, int head, int blk) {
        std::vector<double> out(32, 0.0);
        for (int i = blk * bs; i < std::min(L, blk * bs + bs); ++i)
          for (int d = 0; d < 32; ++d) out[d] += x[(size_t(head) * L + i) * 32 + d];
        for (double& o : out) o /= bs;  // padding rows count in the mean
        return out;
      };
      for (int r = 0; r < nb; ++r) {
        std::vector<double> sc(r + 1);
        const auto qp = pooled(p.q, h, r);
        for (int c = 0; c <= r; ++c) {
          const auto kp = pooled(p.k, hk, c);
          sc[c] = std::inner_product(qp.begin(), qp.end(), kp.begin(), 0.0);
        }
        std::vector<int> want;
        if (r + 1 <= topk) {
          want.resize(r + 1);
          std::iota(want.begin(), want.end(), 0);
        } else {
          std::vector<int> idx(r + 1);
          std::iota(idx.begin(), idx.end(), 0);
          std::stable_sort(idx.begin(), idx.end(), [&](int x, int y) { return sc[x] > sc[y]; });
          want.assign(idx.begin(), idx.begin() + topk);
          std::sort(want.begin(), want.end());
        }
        std::vector<int> got;
        for (int c = 0; c < nb; ++c)
          if (m.blocks[(size_t(h) * nb + r) * nb + c]) got.push_back(c);
        EXPECT_EQ(got, want) << "L " << L << " head " << h << " row " << r;
      }
    }
  }
}

TEST(MInferenceBlockSparse, RejectsNonCausalAndChunkedPrefill) {
  Problem p(1, 2, 2, 100, 100, 32, 0, false, 1);
  EXPECT_THROW(spattn::estimate_minference_block_sparse(p.args(), {}), std::invalid_argument);
  Problem c(1, 2, 2, 50, 100, 32, 0, true, 1);
  EXPECT_THROW(spattn::estimate_minference_block_sparse(c.args(), {}), std::invalid_argument);
}
