// Mask formats shared by estimators and kernels (see DESIGN.md, "Mask formats").
//
// BlockMask: boolean map (B, H, nqb, nkb) of block_q x block_k tiles, H = Hq or 1.
// TokenIndices: int32 (B, Hq, G, K) key positions per group of `group_size` consecutive
// queries, strictly increasing within a row, -1 marks an unused slot.
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/tensor.hpp"

namespace spattn {

// 64-bit intermediate: block sizes up to 2^31 - 1 must not overflow.
inline int ceil_div(int a, int b) { return int((static_cast<long long>(a) + b - 1) / b); }

// Non-owning view, used by the kernels.
struct BlockMaskView {
  const uint8_t* blocks = nullptr;
  int B = 1, H = 1, nqb = 0, nkb = 0, block_q = 64, block_k = 64;
  int q_len = -1, kv_len = -1;  // lengths the mask was made for; -1 = not recorded

  const uint8_t* row(int b, int h, int qb) const {
    return blocks + ((size_t(b) * H + h) * nqb + qb) * size_t(nkb);
  }
  // Throws std::invalid_argument when the mask does not fit the attention shape.
  void check_against(const AttnShape& s) const;
};

// Owning block mask, produced by estimators.
struct BlockMask {
  std::vector<uint8_t> blocks;
  int B = 1, H = 1, nqb = 0, nkb = 0, block_q = 64, block_k = 64;

  BlockMask() = default;
  BlockMask(int B_, int H_, int q_len, int kv_len, int block_q_, int block_k_)
      : B(B_), H(H_), nqb(ceil_div(q_len, block_q_)), nkb(ceil_div(kv_len, block_k_)),
        block_q(block_q_), block_k(block_k_) {
    blocks.assign(size_t(B) * H * nqb * nkb, 0);
  }
  uint8_t* row(int b, int h, int qb) {
    return blocks.data() + ((size_t(b) * H + h) * nqb + qb) * size_t(nkb);
  }
  BlockMaskView view() const { return {blocks.data(), B, H, nqb, nkb, block_q, block_k, -1, -1}; }
};

struct TokenIndicesView {
  const int32_t* indices = nullptr;
  int B = 1, H = 1, G = 0, K = 0, group_size = 1;
  int kv_len = -1;  // length the indices were made for; -1 = not recorded

  const int32_t* row(int b, int h, int g) const {
    return indices + ((size_t(b) * H + h) * G + g) * size_t(K);
  }
  void check_against(const AttnShape& s) const;
};

// Row-block indices: int32 (B, H, Nq, K) ids of the key blocks (block_k keys each) that every
// query row attends to, per (batch, row head); H = Hq (one list per query head), Hkv (one list per
// kv head, shared by its GQA group: InfLLM-V2's topk_idx [H_kv, T, topk], NSA's selection) or 1.
// Valid ids strictly increasing within a row, -1 marks an unused slot (anywhere). Per-row
// selections of a few blocks each: O(Nq K) memory where TokenIndices would need O(Nq K block_k).
struct RowBlockIndicesView {
  const int32_t* blocks = nullptr;
  int B = 1, H = 1, Nq = 0, K = 0, block_k = 64;
  int kv_len = -1;  // length the indices were made for; -1 = not recorded

  const int32_t* row(int b, int h, int i) const { return blocks + ((size_t(b) * H + h) * Nq + i) * size_t(K); }
  // Row head of query head h: h (H = Hq), its kv head (H = Hkv) or 0 (H = 1).
  int row_head(const AttnShape& s, int h) const { return H == s.Hq ? h : (H == 1 ? 0 : h / s.group()); }
  // Throws std::invalid_argument unless B and Nq match, H is Hq, Hkv or 1, block_k >= 1, and every
  // row holds ids in [0, ceil(Nk / block_k)) strictly increasing (-1 = unused).
  void check_against(const AttnShape& s) const;
};

// Vertical-slash indices (MInference's `vertical_slash_sparse_attention` inputs), per (b, query
// head): key positions of the vertical lines, ascending, and diagonal offsets o = i - j of the
// slash lines, descending, each row -1 padded at its end. Executed token-exactly per query block of
// `block` rows through the official index conversion (vertical_slash_runs); causal, Nq == Nk.
struct VerticalSlashView {
  const int32_t* vertical = nullptr;
  const int32_t* slash = nullptr;
  int B = 1, H = 1, NV = 0, NS = 0, block = 64;
  int len = 0;  // q_len == kv_len the indices were made for

  const int32_t* vertical_row(int b, int h) const { return vertical + (size_t(b) * H + h) * NV; }
  const int32_t* slash_row(int b, int h) const { return slash + (size_t(b) * H + h) * NS; }
  // Throws std::invalid_argument unless the shape is causal Nq == Nk == len with Hq == H (or H == 1)
  // and B matching, and the rows are sorted, in range and -1 padded only at their ends.
  void check_against(const AttnShape& s) const;
};

// A block mask over permuted keys (PBS-Attn; DESIGN.md "Permutations"), per (b, query head):
// perm (B, H, len) int32, perm[p] = original position of the key at permuted position p (a
// permutation of 0 .. len-1), and blocks (B, H, nb, nb) bool: query block qb (rows
// [qb*block, ...), original order) attends to the keys at permuted positions [kb*block, ...) of
// every selected kb, causal on original positions. Causal, Nq == Nk == len.
struct PermutedBlocksView {
  const int32_t* perm = nullptr;
  const uint8_t* blocks = nullptr;
  int B = 1, H = 1, len = 0, nb = 0, block = 128;
  const int32_t* perm_row(int b, int h) const { return perm + (size_t(b) * H + h) * len; }
  const uint8_t* block_row(int b, int h, int qb) const { return blocks + ((size_t(b) * H + h) * nb + qb) * size_t(nb); }
  // Throws std::invalid_argument unless the shape is Nq == Nk == len, H == Hq, B matching,
  // nb == ceil(len / block) and each perm row a permutation of 0 .. len-1.
  void check_against(const AttnShape& s) const;
};

// A clustered pattern (SVG2, DESIGN.md "Permutations"): per (b, query head) the cluster of every
// query, q_labels (B, Hq, Nq) in [0, Cq); per (b, kv head) the cluster of every key, k_labels
// (B, Hkv, Nk) in [0, Ck); and map (B, Hq, Cq, Ck) bool: query cluster i of head h attends to
// every key of key cluster j of kv head h / (Hq / Hkv) when map[i, j]. Clusters are variable-size
// blocks; no permuted copy is stored (the kernel derives the cluster order by a stable counting
// sort, positions ascending inside a cluster). Causal: the rule applies per element on original
// positions (a spattn extension; SVG2 is bidirectional).
struct ClusteredView {
  const int32_t* q_labels = nullptr;
  const int32_t* k_labels = nullptr;
  const uint8_t* map = nullptr;
  int B = 1, Hq = 1, Hkv = 1, Nq = 0, Nk = 0, Cq = 0, Ck = 0;
  const int32_t* q_row(int b, int h) const { return q_labels + (size_t(b) * Hq + h) * size_t(Nq); }
  const int32_t* k_row(int b, int hk) const { return k_labels + (size_t(b) * Hkv + hk) * size_t(Nk); }
  const uint8_t* map_row(int b, int h, int i) const { return map + ((size_t(b) * Hq + h) * Cq + i) * size_t(Ck); }
  // Throws std::invalid_argument unless (B, Hq, Hkv, Nq, Nk) match the shape and every label lies
  // in its cluster range.
  void check_against(const AttnShape& s) const;
  void check_labels() const;
};

// One contiguous run of keys [start, end) of a query block; `column` for single vertical keys.
struct KeyRun {
  int start, end;
  bool column;
};

// The key runs of query block [start, start + block) (rows of one head) that the official
// `convert_vertical_slash_indexes` kernel gives for sorted verticals v (nv) and descending
// offsets s (ns): slash ranges of whole `block`-key tiles (not aligned) and vertical columns left
// of each range, ascending and disjoint; keys past the block's last row are kept (the attention
// kernel masks them). Verticals beyond the last range are dropped, as in the official code; when
// no offset is below the block's end (the official code then reads past its list) there is no
// range and the verticals before the block start are the columns.
void vertical_slash_runs(const int32_t* v, int nv, const int32_t* s, int ns, int start, int block,
                         std::vector<KeyRun>& runs);

}  // namespace spattn
