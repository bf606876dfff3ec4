// Block-sparse attention executing a compiled BlockPlan (the FlexAttention / MInference block
// format) on the tile engine. Each (batch, head, q-block) work item walks its ascending kv-block
// list, merges adjacent blocks into key spans and groups the spans into tiles of up to kKeyTile
// keys (segments read in place from the once-transposed K and from V), so the softmax and the
// online-softmax rescaling run on full tiles even when the selected blocks are small and
// scattered. Tiles made only of *full* blocks skip the causal element mask. A plan shared by
// all heads (H = 1) stacks the query heads of a GQA group like the dense kernel. Few-row calls
// (decode) whose items cannot occupy the threads split each item's kv-block list into parts whose
// states are merged exactly (split-KV, engine.hpp).
#include "engine.hpp"
#include "spattn/kernels.hpp"
#include "spattn/plan.hpp"

namespace spattn {

namespace {

struct PlanVariant {
  const AttnArgs& a;
  const BlockPlan& p;
  const detail::TransposedK& kt;
  bool shared;
  int stack, nunits;
  int splits = 1;
  detail::SplitStates* st = nullptr;
  struct Local {
    detail::SpanTiler<detail::OnlineSoftmax> tiler;
  };
  static inline const detail::OnlineSoftmax step{};

  long long items() const { return (long long)a.shape.B * nunits * p.nqb * splits; }
  detail::WorkItem item(long long it_split) const {
    detail::WorkItem w;
    w.part = int(it_split % splits);
    const long long it = it_split / splits;
    const int qb = p.nqb - 1 - int(it % p.nqb);
    const int u = int((it / p.nqb) % nunits);
    w.b = int(it / ((long long)p.nqb * nunits));
    w.stack = stack;
    w.h0 = shared ? u * stack : u;
    w.hk = w.h0 / a.shape.group();
    w.i0 = qb * p.block_q;
    w.i1 = std::min(a.shape.Nq, w.i0 + p.block_q);
    return w;
  }
  Local local() const { return {detail::SpanTiler<detail::OnlineSoftmax>(step)}; }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& l) const {
    const int qb = w.i0 / p.block_q;
    const size_t id = p.row_id(w.b, shared ? 0 : w.h0, qb);
    const int kend = detail::key_end(a, w), rows = w.rows();
    const float* vh = detail::value_head(a, w);
    const auto [first, end] = detail::split_range(p.row_ptr[id], p.row_ptr[id + 1], w.part, splits);
    for (int64_t e = first; e < end;) {
      // Run of adjacent kv blocks; partial when any block of it is partial.
      int64_t e1 = e + 1;
      bool partial = !p.full[size_t(e)];
      while (e1 < end && p.kv[size_t(e1)] == p.kv[size_t(e1 - 1)] + 1) partial |= !p.full[size_t(e1++)];
      const int j0 = p.kv[size_t(e)] * p.block_k, j1 = std::min(kend, (p.kv[size_t(e1 - 1)] + 1) * p.block_k);
      if (j0 < j1) l.tiler.add(t, rows, kt, w.b, w.hk, vh, a.shape.Dv, j0, j1, a.causal && partial);
      e = e1;
    }
    l.tiler.flush(t, rows);
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& w, Local&) const {
    if (st != nullptr) st->store(t, a.shape, w);
    else detail::store_item(t, a, w);
  }
};

}  // namespace

void block_sparse_attention(const AttnArgs& a, const BlockPlan& plan) {
  const AttnShape& s = a.shape;
  s.validate();
  plan.check_against(s, a.causal);
  if (a.bias != nullptr) a.bias->check_against(s);
  if (s.Nq == 0) return;
  const bool shared = plan.H == 1;
  const int stack = shared ? s.group() : 1;
  const bool few_rows = !detail::use_transposed_k(stack * std::min(plan.block_q, s.Nq));
  const detail::TransposedK kt(a, !few_rows);
  PlanVariant var{a, plan, kt, shared, stack, shared ? s.Hkv : s.Hq};
  const long long items = var.items();
  const long long rows = (long long)plan.B * plan.H * plan.nqb;
  const long long keys_per_item = rows > 0 ? (long long)plan.nnz() * plan.block_k / rows : 0;
  const int splits = few_rows ? detail::kv_splits(items, keys_per_item) : 1;
  if (splits == 1) {
    detail::run_tiles(a, var, stack * std::min(plan.block_q, s.Nq), s.Dv);
    return;
  }
  detail::SplitStates st(s, splits);
  var.splits = splits;
  var.st = &st;
  detail::run_tiles(a, var, stack * std::min(plan.block_q, s.Nq), s.Dv);
  detail::merge_split_states(a, st);
}

void block_sparse_attention(const AttnArgs& a, const BlockMaskView& mask) {
  a.shape.validate();
  block_sparse_attention(a, compile_block_plan(mask, a.shape.B, a.shape.Hq, a.shape.Nq, a.shape.Nk, a.causal));
}

}  // namespace spattn
