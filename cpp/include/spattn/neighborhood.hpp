// Neighbourhood attention in 1D, 2D and 3D with NATTEN's semantics (Hassani et al., "Neighborhood
// Attention Transformer", 2022; "Generalized Neighborhood Attention", 2025): per axis a kernel
// size, a dilation, a stride and a causal flag; a key is a neighbour of a query when it is one
// along every axis. The rule per axis, read from NATTEN's reference mask
// (csrc/include/natten/cuda/reference/mask.hpp: get_win_start / get_win_end / qkv_fix_dilation)
// and its FlexAttention mask (src/natten/backends/flex.py: get_na_flex_mask):
//  - dilation d: query and key must share the group x % d; in the group, u = x / d, and the
//    group holds n / d (+1 when x % d < n % d) positions;
//  - non-causal: the stride group leader L = min((u / s) s + s / 2, n_g - 1); the window is
//    [start, start + K) with start = clamp(L - K / 2, 0, n_g - K): shifted, never cut, at the
//    borders, so every query sees exactly K keys along the axis (even K: K/2 left, K/2 - 1 right);
//  - causal: L = min((u / s) s + s - 1, n_g - 1); the window is [max(L - K + 1, 0), u] (cut).
// Tokens are flattened row-major over (X, Y, Z).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "spattn/tensor.hpp"

namespace spattn {

// The pattern: the first `rank` entries of each array are the axes (X[, Y[, Z]]).
struct NeighborhoodSpec {
  int rank = 1;
  std::array<int, 3> extent{1, 1, 1};
  std::array<int, 3> kernel{1, 1, 1};
  std::array<int, 3> dilation{1, 1, 1};
  std::array<int, 3> stride{1, 1, 1};
  std::array<bool, 3> causal{false, false, false};

  // std::invalid_argument naming the argument (kernel_size, dilation, stride), the axis, the
  // expected bound and the value: kernel_size >= 1, dilation >= 1, 1 <= stride <= kernel_size,
  // kernel_size * dilation <= extent.
  void validate() const;
  long long tokens() const;  // product of the extents
};

// Positions along one axis in dilation group g (0 <= g < d) of an axis of n positions.
int na_group_length(int n, int dilation, int group);

// Window [start, end) of in-group index u along one axis of n_group positions.
struct NaRange {
  int start, end;
};
NaRange na_window(int u, int n_group, int kernel, int stride, bool causal);

// Attention of every token over its neighbourhood. args: q (B, Hq, N, D), k/v (B, Hkv, N, D/Dv)
// with N = spec.tokens() (Nq = Nk = N), args.causal false (causality is per axis in `spec`).
// A work item is a box of queries of one dilation group; its keys are, per row of the union of its
// queries' windows, one contiguous run along the last axis read in place, each query hiding the
// keys outside its own window per element. q / out are read and written in box order and, with
// dilation > 1 on any axis, k / v copied so that each dilation group is contiguous (O(N) copies;
// NATTEN's token permutation does the same).
void neighborhood_attention(const AttnArgs& args, const NeighborhoodSpec& spec);

// The pattern as token indices: (N, K) ascending key positions per query, -1 padded; `kmax`
// receives K (the largest neighbourhood, kernel product for a non-causal pattern).
std::vector<int32_t> neighborhood_token_indices(const NeighborhoodSpec& spec, int* kmax);

// The work neighborhood_attention does for one (batch, kv head) with `group` query heads per kv
// head (GNA's tile model applied to this kernel's own tiling): its query boxes, and the (query,
// key) score slots it computes (each box's rows times the keys of its runs) against the visible
// pairs of the pattern. Per query head; the kernel's cost is about proportional to
// computed_pairs.
struct NeighborhoodWork {
  long long boxes = 0;
  long long computed_pairs = 0;
  long long visible_pairs = 0;
  int max_box = 0;
  std::vector<int> box_shape;  // of the first dilation group, one entry per axis
};
NeighborhoodWork neighborhood_work(const NeighborhoodSpec& spec, int group);

}  // namespace spattn
