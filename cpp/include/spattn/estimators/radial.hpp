// Radial Attention (Li et al., "Radial Attention: O(n log n) Sparse Attention with Energy Decay for
// Long Video Generation", arXiv 2506.19852), following mit-han-lab/radial-attention (HEAD 72788d4),
// radial_attn/attn_mask.py `gen_log_mask_shrinked`, `get_window_width`, `get_diagonal_split_mask`,
// `shrinkMaskStrict`:
//
// video tokens frame-major, T = video_tokens / frames per frame; for the frame pair (i, j), dist =
// |i - j|, g = bit_length(dist), P = 2^bit_length(T):
//   * model "wan" and j == 0: the whole pair (attention sink);
//   * window w = T when dist <= 1, else max(P / 2^g * decay_factor, block_size);
//   * frame subsampling: with d0 = P / 2^g, the pair is dropped unless d0 >= 128 or
//     dist % int(128 / d0) == 0 (the official 128 is hard-coded);
//   * token (r, c) of the pair kept iff |c - r| <= w;
// each pair's T x T mask is placed at offset ((i T) mod bs, (j T) mod bs) of a canvas of
// ceil(T / bs) x ceil(T / bs) tiles (the canvas rows / columns past that are cut, as official), a
// tile is kept iff more than 60% of its non-empty columns have more than 1/3 of their rows set, and
// the tiles are OR-ed into the block mask at block ((i T) / bs, (j T) / bs). Block rows and columns
// from video_tokens / bs on (text tokens, and a last partial video block) are dense.
// Non-causal, Nq == Nk, one mask for every head.
#pragma once

#include "spattn/masks.hpp"
#include "spattn/params.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct RadialParams {
  int frames = 1;
  int video_tokens = 0;
  double decay_factor = 1.0;
  bool wan = true;
  int block_size = 128;

  void validate() const;
  template <class V>
  static void fields(V&& v) {
    v("frames", &RadialParams::frames, "Latent frames F of the video tokens (>= 1); T = video_tokens / F.");
    v("video_tokens", &RadialParams::video_tokens,
      "Video tokens at the start of the sequence (F * T; 0: the whole sequence); the rest (text) attends and is "
      "attended densely.");
    v("decay_factor", &RadialParams::decay_factor,
      "Window decay factor (> 0): 1 the RadialAttention default; the Wan script passes 0.2, HunyuanVideo 0.95.");
    v("wan", &RadialParams::wan,
      "Wan's rule (the first frame is an attention sink; model_type 'wan'); False: HunyuanVideo's (no sink).");
    v("block_size", &RadialParams::block_size, "Block size of the mask (>= 1; official 128).");
  }
};

// Reads only qk.shape (B, Nq == Nk); non-causal only.
BlockMask estimate_radial(const AttnArgs& qk, const RadialParams& p);

}  // namespace spattn
