// SEA decoder inference (see python/spattn/methods/sea.py): x = log(est + 1e-6); two 3x3
// convolutions causal in time (dilation `dil`, zero padding) with ReLU; z = x + w3 h2 + b3 +
// bias[h, col]; softmax over the columns with keys (counts > 0). Weights: w1 (C, H, 3, 3), b1 (C),
// w2 (C, C, 3, 3), b2 (C), w3 (H, C), b3 (H), bias (H, W). est/out: (B, H, T, W); counts (T, W).
#pragma once

#include <cstdint>

namespace spattn {

struct SeaDecoderWeights {
  int C = 0, H = 0, W = 0, dil = 2;
  const float *w1, *b1, *w2, *b2, *w3, *b3, *bias;
};
void sea_decoder_refine(const float* est, int B, int T, const int32_t* counts, const SeaDecoderWeights& w, float* out);

}  // namespace spattn
