// Radial Attention's static block mask (see the header for the official rule it follows). The
// tile test of shrinkMaskStrict needs, per canvas column, the number of set rows of the tile: the
// pair's mask is a band (or all / nothing), so that count is an interval length, and a frame pair
// costs O(tiles x block) instead of O(T^2).
#include "spattn/estimators/radial.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace spattn {

void RadialParams::validate() const {
  require_min("radial", "frames", frames, 1);
  require_min("radial", "video_tokens", video_tokens, 0);
  require_min("radial", "block_size", block_size, 1);
  if (!(decay_factor > 0.0)) param_error("radial", "decay_factor", "be > 0", decay_factor);
}

namespace {

int bit_length(long long x) {
  int n = 0;
  while (x > 0) {
    ++n;
    x >>= 1;
  }
  return n;
}

}  // namespace

BlockMask estimate_radial(const AttnArgs& qk, const RadialParams& p) {
  p.validate();
  const AttnShape& s = qk.shape;
  if (qk.causal) throw std::invalid_argument("radial: the pattern is defined for non-causal (bidirectional) attention");
  if (s.Nq != s.Nk)
    throw std::invalid_argument("radial: needs Nq == Nk (self-attention over the video), got Nq=" + std::to_string(s.Nq) +
                                ", Nk=" + std::to_string(s.Nk));
  const long long N = s.Nq, video = p.video_tokens == 0 ? N : p.video_tokens, F = p.frames, bs = p.block_size;
  if (video > N)
    throw std::invalid_argument("radial: video_tokens (" + std::to_string(video) + ") exceeds the sequence length " +
                                std::to_string(N));
  if (video % F != 0)
    throw std::invalid_argument("radial: video_tokens (" + std::to_string(video) + ") must be a multiple of frames (" +
                                std::to_string(F) + ")");
  const long long T = video / F;
  BlockMask m(s.B, 1, int(N), int(N), int(bs), int(bs));
  const long long nb = m.nkb;
  // Canvas of block rows / columns the pairs may touch (the official final mask is sized by the caller).
  const long long ntile = (T + bs - 1) / bs;
  const long long ncanvas = std::max(nb, (F - 1) * T / bs + ntile);
  std::vector<uint8_t> canvas(size_t(ncanvas * ncanvas), 0);
  const long long P = 1LL << bit_length(T);
  std::vector<long long> count(static_cast<size_t>(bs));
  for (long long i = 0; i < F; ++i)
    for (long long j = 0; j < F; ++j) {
      const long long dist = std::llabs(i - j);
      const int g = bit_length(dist);
      bool all = false, none = false;
      double w = double(T);
      if (p.wan && j == 0) {
        all = true;
      } else {
        if (dist > 1) {
          const double decay = double(P) / std::ldexp(1.0, g) * p.decay_factor;
          w = decay >= double(bs) ? decay : double(bs);
        }
        const double d0 = double(P) / std::ldexp(1.0, g);
        if (d0 < 128.0) {  // the official threshold is a hard-coded 128
          const long long split = (long long)(128.0 / d0);
          if (dist % split != 0) none = true;
        }
      }
      if (none) continue;
      const long long wi = (long long)std::floor(w);
      const long long rr = (i * T) % bs, rc = (j * T) % bs;  // offsets of the pair in its canvas
      const long long br = (i * T) / bs, bc = (j * T) / bs;
      for (long long tr = 0; tr < ntile; ++tr)
        for (long long tc = 0; tc < ntile; ++tc) {
          const long long a = std::max(tr * bs, rr), b = std::min((tr + 1) * bs, rr + T);  // valid canvas rows
          int nz = 0, high = 0;
          for (long long c = tc * bs; c < (tc + 1) * bs; ++c) {
            const long long cl = c - rc;  // the column's position in frame j
            long long n = 0;
            if (cl >= 0 && cl < T && b > a) {
              if (all || wi >= T) {
                n = b - a;
              } else {  // rows R with |cl - (R - rr)| <= wi
                const long long lo = std::max(a, cl - wi + rr), hi = std::min(b, cl + wi + rr + 1);
                n = std::max(0LL, hi - lo);
              }
            }
            nz += n > 0;
            high += float(n) / float(bs) > 1.0f / 3.0f;
          }
          if (nz > 0 && float(high) / float(nz) > 0.6f) canvas[size_t((br + tr) * ncanvas + bc + tc)] = 1;
        }
    }
  const long long border = video / bs;  // text (and a partial last video block): dense rows and columns
  for (long long r = 0; r < nb; ++r)
    for (int b = 0; b < s.B; ++b) {
      uint8_t* row = m.row(b, 0, int(r));
      for (long long c = 0; c < nb; ++c) row[c] = r >= border || c >= border || canvas[size_t(r * ncanvas + c)];
    }
  return m;
}

}  // namespace spattn
