// The online-softmax row update of one tile, shared by the ISA files: included inside each file's
// anonymous namespace after its max_of / exp_shift_sum / scale_row, so every instruction set gets
// its own copy (internal linkage: no inline function crosses files with different flags).
//
// For each of `rows` rows of S (row stride cols), only the first ncols[r] entries are visible; the
// rest are set to 0. The row's running max m[r] and sum l[r] are updated, its accumulator row
// (acc + r * dv) rescaled by exp(m_old - m_new), and the visible entries replaced by
// exp(s - m_new), ready for O += P V.
void online_softmax(float* S, int rows, int cols, const int* ncols, float* m, float* l, float* acc, int dv) {
  for (int r = 0; r < rows; ++r) {
    float* srow = S + long(r) * cols;
    const int n = ncols[r];
    for (int c = n; c < cols; ++c) srow[c] = 0.f;
    if (n == 0) continue;
    const float m_old = m[r];
    const float row_max = max_of(srow, n);
    const float m_new = row_max > m_old ? row_max : m_old;  // NaN max keeps m_old: NaN flows through exp and sum
    const float row_sum = exp_shift_sum(srow, n, m_new);
    const float alpha = __builtin_expf(m_old - m_new);  // 0 when m_old = -inf
    l[r] = l[r] * alpha + row_sum;
    m[r] = m_new;
    if (alpha != 1.f && dv > 0) scale_row(acc + long(r) * dv, dv, alpha);
  }
}
