// Compilation of a BlockMask into a BlockPlan (see spattn/plan.hpp): one scan of the boolean map.
#include "spattn/plan.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace spattn {

BlockPlan compile_block_plan(const BlockMaskView& m, int B, int Hq, int Nq, int Nk, bool causal) {
  AttnShape s;  // the lengths and heads a mask is checked against (no head dim involved)
  s.B = B; s.Hq = Hq; s.Nq = Nq; s.Nk = Nk;
  m.check_against(s);
  BlockPlan p;
  p.B = m.B; p.H = m.H; p.nqb = m.nqb; p.nkb = m.nkb; p.block_q = m.block_q; p.block_k = m.block_k;
  p.q_len = s.Nq; p.kv_len = s.Nk; p.causal = causal;
  const size_t rows = size_t(m.B) * m.H * m.nqb;
  p.row_ptr.assign(rows + 1, 0);
  const long long off = s.causal_offset();
  // Pass 1 counts, pass 2 fills: no over-allocation.
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) {
      for (size_t r = 0; r < rows; ++r) p.row_ptr[r + 1] += p.row_ptr[r];
      p.kv.resize(size_t(p.nnz()));
      p.full.resize(size_t(p.nnz()));
    }
    for (int b = 0; b < m.B; ++b)
      for (int h = 0; h < m.H; ++h)
        for (int qb = 0; qb < m.nqb; ++qb) {
          const size_t id = p.row_id(b, h, qb);
          const uint8_t* sel = m.row(b, h, qb);
          const long long i0 = (long long)qb * m.block_q, i1 = std::min<long long>(s.Nq, i0 + m.block_q) - 1;
          // Keys < lo_lim are visible to every row, keys > hi_lim to none (causal).
          const long long lo_lim = causal ? i0 + off : (long long)s.Nk, hi_lim = causal ? i1 + off : (long long)s.Nk;
          int64_t n = pass == 1 ? p.row_ptr[id] : 0;
          for (int c = 0; c < m.nkb; ++c) {
            if (!sel[c]) continue;
            const long long j0 = (long long)c * m.block_k, j1 = std::min<long long>(s.Nk, j0 + m.block_k) - 1;
            if (j0 > hi_lim) continue;  // no visible key
            if (pass == 1) {
              p.kv[size_t(n)] = c;
              p.full[size_t(n)] = j1 <= lo_lim ? 1 : 0;
            }
            ++n;
          }
          if (pass == 0) p.row_ptr[id + 1] = n;
        }
  }
  return p;
}

void BlockPlan::check_against(const AttnShape& s, bool causal_call) const {
  if (q_len != s.Nq || kv_len != s.Nk)
    throw std::invalid_argument("plan was compiled for q_len=" + std::to_string(q_len) + ", kv_len=" +
                                std::to_string(kv_len) + ", but q/k have Nq=" + std::to_string(s.Nq) +
                                ", Nk=" + std::to_string(s.Nk));
  if (B != s.B || (H != 1 && H != s.Hq))
    throw std::invalid_argument("plan was compiled for B=" + std::to_string(B) + ", H=" + std::to_string(H) +
                                ", but q has B=" + std::to_string(s.B) + ", Hq=" + std::to_string(s.Hq));
  if (causal != causal_call)
    throw std::invalid_argument(std::string("plan was compiled for causal=") + (causal ? "True" : "False") +
                                " but the call has causal=" + (causal_call ? "True" : "False"));
}

}  // namespace spattn
