// SEA decoder inference (Lee et al., ICLR 2024; the learned refinement of the compressed
// estimate, reduced from the paper's: see python/spattn/methods/sea.py): two causal-in-time 3x3
// convolutions with ReLU and a 1x1 output over log(estimate), softmax over the columns with keys.
// Chunked in time with the causal halo so memory stays O(chunk x width x channels) per thread.
#include "spattn/learned/sea_decoder.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "spattn/masks.hpp"

namespace spattn {

namespace {

// out[o][t][c] += sum_i sum_taps w[o][i][dt][dw] * in[i][t - dil*(2-dt)][c + dil*(dw-1)] over the
// rows [r0, r1) of the chunk; rows before the chunk start read the halo, beyond it zero.
void causal_conv3x3(const float* in, int cin, const float* w, const float* bias, int cout, int rows, int W, int dil,
                    float* out) {
  for (int o = 0; o < cout; ++o) {
    float* po = out + size_t(o) * rows * W;
    std::fill(po, po + size_t(rows) * W, bias[o]);
    for (int i = 0; i < cin; ++i) {
      const float* pi = in + size_t(i) * rows * W;
      for (int dt = 0; dt < 3; ++dt) {
        const int st = dil * (2 - dt);
        for (int dw = 0; dw < 3; ++dw) {
          const int sw = dil * (dw - 1);
          const float wv = w[((size_t(o) * cin + i) * 3 + dt) * 3 + dw];
          const int c0 = std::max(0, -sw), c1 = std::min(W, W - sw);
          for (int t = st; t < rows; ++t) {
            const float* src = pi + size_t(t - st) * W + sw;
            float* dst = po + size_t(t) * W;
            for (int c = c0; c < c1; ++c) dst[c] += wv * src[c];
          }
        }
      }
    }
  }
}

}  // namespace

void sea_decoder_refine(const float* est, int B, int T, const int32_t* counts, const SeaDecoderWeights& w,
                        float* out) {
  if (w.C < 1 || w.H < 1 || w.W < 1 || w.dil < 1) throw std::invalid_argument("sea: invalid decoder shape");
  constexpr int kChunk = 256;
  const int halo = 4 * w.dil, H = w.H, C = w.C, W = w.W;
  const int nchunks = ceil_div(std::max(T, 1), kChunk);
#pragma omp parallel
  {
    std::vector<float> x, h1, h2;
#pragma omp for schedule(dynamic, 1)
    for (long long it = 0; it < (long long)B * nchunks; ++it) {
      const int b = int(it / nchunks), t0 = int(it % nchunks) * kChunk;
      const int lo = std::max(0, t0 - halo), t1 = std::min(T, t0 + kChunk), rows = t1 - lo;
      if (rows <= 0) continue;
      x.assign(size_t(H) * rows * W, 0.f);
      h1.resize(size_t(C) * rows * W);
      h2.resize(size_t(C) * rows * W);
      for (int h = 0; h < H; ++h)
        for (int t = lo; t < t1; ++t) {
          const float* src = est + ((size_t(b) * H + h) * T + t) * W;
          float* dst = x.data() + (size_t(h) * rows + (t - lo)) * W;
          for (int c = 0; c < W; ++c) dst[c] = std::log(src[c] + 1e-6f);
        }
      causal_conv3x3(x.data(), H, w.w1, w.b1, C, rows, W, w.dil, h1.data());
      for (float& v : h1) v = std::max(v, 0.f);
      causal_conv3x3(h1.data(), C, w.w2, w.b2, C, rows, W, w.dil, h2.data());
      for (float& v : h2) v = std::max(v, 0.f);
      for (int h = 0; h < H; ++h)
        for (int t = t0; t < t1; ++t) {
          const int r = t - lo;
          const float* xr = x.data() + (size_t(h) * rows + r) * W;
          const int32_t* cnt = counts + size_t(t) * W;
          float* z = out + ((size_t(b) * H + h) * T + t) * W;
          for (int c = 0; c < W; ++c) z[c] = xr[c] + w.b3[h] + w.bias[size_t(h) * W + c];
          for (int ch = 0; ch < C; ++ch) {
            const float wv = w.w3[size_t(h) * C + ch];
            const float* hr = h2.data() + (size_t(ch) * rows + r) * W;
            for (int c = 0; c < W; ++c) z[c] += wv * hr[c];
          }
          float mx = -std::numeric_limits<float>::infinity();
          for (int c = 0; c < W; ++c)
            if (cnt[c] > 0) mx = std::max(mx, z[c]);
          if (mx == -std::numeric_limits<float>::infinity()) {
            std::fill(z, z + W, 0.f);
            continue;
          }
          double sum = 0.0;
          for (int c = 0; c < W; ++c) {
            z[c] = cnt[c] > 0 ? std::exp(z[c] - mx) : 0.f;
            sum += z[c];
          }
          const float inv = float(1.0 / sum);
          for (int c = 0; c < W; ++c) z[c] *= inv;
        }
    }
  }
}

}  // namespace spattn
