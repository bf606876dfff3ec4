"""Video-BLADE ASA: block-sparse attention over a 3D Gilbert-curve token order, blocks chosen by
cumulative energy of sampled max-pooled scores, plus a dense branch over mean-pooled keys merged
by LSE.

Gu et al., "Video-BLADE: Block-Sparse Attention Meets Step Distillation for Efficient Video
Generation", arXiv 2508.10774 (ICLR 2026). Follows the official ``ziplab/VIDEO-BLADE``
``wanx/train/special_attentions_local/TrainRelated/wanx_blocksparseattn.py``
(``adaptive_block_sparse_attn``, ``efficient_attn_with_pooling``, ``random_sample_tokens``,
``transfer_attn_to_mask`` mode "energy", ``simple_pooling``, ``GilbertRearranger``), its
CogVideoX variant ``cogvideo_blocksparseattn.py`` (text moved last, the last 2 block rows and
columns forced), ``attn_pooling_kernel.py`` and ``utils/gilbert3d.py``; see
/shared/methods/stateful/blade_asa.md. No state across calls.

Per call (q, k, v (B, H, N, D), non-causal, N = W*H*T video tokens + ``text_len`` text tokens
first):

1. order: the video tokens along the 3D Gilbert curve over the (x, y, t) grid (index
   ``x + W (y + H t)``), then the text (``grid=None``: the video keeps its order, the
   official ``use_rearrange=False``);
2. block scores: q and k (in that order) replicate-padded to a multiple of ``block_size``; in
   every block the same ``sample_num`` positions, one draw per (batch, head), q and k drawn
   apart; on the sampled tokens ``A[I, J] = max_{i in I} exp(max_{j in J} s_ij - max_j s_ij)``
   (the official kernel's max-pool of max-normalised scores, not a softmax; the official
   ``attn_with_pooling`` then divides each row by its sum, which step 3 does not see);
3. per row of A, sorted descending: keep the first ``t`` blocks, ``t`` the 0-based index where
   the cumulative sum first reaches ``energy_threshold`` of the total (the crossing block itself
   is dropped, as in the official code), clamped to ``[max(1, int(nb*min_retain_ratio)),
   max(1, int(nb*max_retain_ratio))]``; the last ``force_last_blocks`` rows and columns forced;
4. ``out1, lse1``: block-sparse attention over those (query block, key block) pairs of the
   ordered sequence (run in place as a :class:`spattn.ClusteredMask`, clusters = blocks);
5. ``out2, lse2``: dense attention over k, v of the ordered sequence, replicate-padded to a
   multiple of ``sample_gap`` and mean-pooled per ``sample_gap`` tokens;
6. ``out = merge(out1, lse1; out2, lse2 + ln sample_gap)``: each pooled key counts for
   ``sample_gap`` keys; keys in the selected blocks count twice (exactly and in the pool), as
   in the official code.

Defaults are the Wan2.1-1.3B module globals; CogVideoX-5B: ``grid=(45, 30, 13)``,
``text_len=226``, ``max_retain_ratio=0.1``, ``sample_gap=15``, ``force_last_blocks=2``.
ASA is trained jointly with step distillation; training-free quality is unverified.

Deviations: the sampled positions come from numpy's generator seeded by ``seed`` (the same draw
every call; official: ``torch.rand`` + ``topk`` from the global torch RNG, a fresh draw per
call); the official pooled map, block LSE and merge run in bf16, here float32; sort ties keep
the lower block. GQA runs (k, v heads shared); the official code is MHA.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .._validation import as_causal, as_scale, check_int, check_positive_int, check_qkv
from .. import _core
from ..kernels import attention, cluster_block_attention, merge_states
from ..masks import ClusteredMask
from .base import Capabilities, Method, register
from .rettention import _check_real


def gilbert3d_order(width: int, height: int, depth: int) -> np.ndarray:
    """The generalised Hilbert ("Gilbert") curve over a width x height x depth grid, as the linear
    indices ``x + width * (y + height * z)`` of its points in curve order (int64, length
    width*height*depth); the order of the official ``gilbert3d`` (J. Cervený's construction)."""
    for name, val in (("width", width), ("height", height), ("depth", depth)):
        check_positive_int(val, name)
    order: List[int] = []

    def sgn(x: int) -> int:
        return (x > 0) - (x < 0)

    def emit_line(p, d, n):
        x, y, z = p
        for _ in range(n):
            order.append(x + width * (y + height * z))
            x, y, z = x + d[0], y + d[1], z + d[2]

    # a cuboid: origin p and the axes a (major), b, c as integer vectors; children pushed reversed
    if width >= height and width >= depth:
        todo = [((0, 0, 0), (width, 0, 0), (0, height, 0), (0, 0, depth))]
    elif height >= width and height >= depth:
        todo = [((0, 0, 0), (0, height, 0), (width, 0, 0), (0, 0, depth))]
    else:
        todo = [((0, 0, 0), (0, 0, depth), (width, 0, 0), (0, height, 0))]
    add = lambda u, v: (u[0] + v[0], u[1] + v[1], u[2] + v[2])  # noqa: E731
    sub = lambda u, v: (u[0] - v[0], u[1] - v[1], u[2] - v[2])  # noqa: E731
    neg = lambda u: (-u[0], -u[1], -u[2])  # noqa: E731
    while todo:
        p, a, b, c = todo.pop()
        w, h, d = abs(sum(a)), abs(sum(b)), abs(sum(c))
        da, db, dc = tuple(map(sgn, a)), tuple(map(sgn, b)), tuple(map(sgn, c))
        if h == 1 and d == 1:
            emit_line(p, da, w)
            continue
        if w == 1 and d == 1:
            emit_line(p, db, h)
            continue
        if w == 1 and h == 1:
            emit_line(p, dc, d)
            continue
        a2, b2, c2 = tuple(v // 2 for v in a), tuple(v // 2 for v in b), tuple(v // 2 for v in c)
        if abs(sum(a2)) % 2 and w > 2:  # halves of even length where possible
            a2 = add(a2, da)
        if abs(sum(b2)) % 2 and h > 2:
            b2 = add(b2, db)
        if abs(sum(c2)) % 2 and d > 2:
            c2 = add(c2, dc)
        if 2 * w > 3 * h and 2 * w > 3 * d:  # long in a: two halves along a
            kids = [(p, a2, b, c), (add(p, a2), sub(a, a2), b, c)]
        elif 3 * h > 4 * d:  # no split along c
            kids = [(p, b2, c, a2),
                    (add(p, b2), a, sub(b, b2), c),
                    (add(add(p, sub(a, da)), sub(b2, db)), neg(b2), c, neg(sub(a, a2)))]
        elif 3 * d > 4 * h:  # no split along b
            kids = [(p, c2, a2, b),
                    (add(p, c2), a, b, sub(c, c2)),
                    (add(add(p, sub(a, da)), sub(c2, dc)), neg(c2), neg(sub(a, a2)), b)]
        else:  # split along all three
            kids = [(p, b2, c2, a2),
                    (add(p, b2), c, a2, sub(b, b2)),
                    (add(add(p, sub(b2, db)), sub(c, dc)), a, neg(b2), neg(sub(c, c2))),
                    (add(add(add(p, sub(a, da)), b2), sub(c, dc)), neg(c), neg(sub(a, a2)), sub(b, b2)),
                    (add(add(p, sub(a, da)), sub(b2, db)), neg(b2), c2, neg(sub(a, a2)))]
        todo.extend(reversed(kids))
    return np.asarray(order, dtype=np.int64)


def token_order(n: int, grid: Optional[Tuple[int, int, int]] = None, text_len: int = 0) -> np.ndarray:
    """The official token order: position p of the ordered sequence holds original token
    ``order[p]``: the video tokens (after the first `text_len`) along the Gilbert curve of `grid`
    (W, H, T) (its own order when None), then the text tokens."""
    video = n - text_len
    if video < 1:
        raise ValueError(f"text_len must leave video tokens: text_len={text_len}, N={n}")
    if grid is None:
        vid = np.arange(video, dtype=np.int64)
    else:
        W, H, T = grid
        if W * H * T != video:
            raise ValueError(f"grid {tuple(grid)} has {W * H * T} tokens, expected N - text_len = {video}")
        vid = gilbert3d_order(W, H, T)
    return np.concatenate([vid + text_len, np.arange(text_len, dtype=np.int64)])


def sample_positions(B: int, H: int, block_size: int, sample_num: int, rng: np.random.Generator) -> np.ndarray:
    """``random_sample_tokens``' draw: per (batch, head) the `sample_num` in-block positions with the
    largest of `block_size` uniform numbers (shared by all blocks); (B, H, sample_num), sorted."""
    r = rng.random((B, H, block_size))
    return np.sort(np.argsort(-r, axis=-1, kind="stable")[..., :sample_num], axis=-1)


def _gather_sampled(x: np.ndarray, order: np.ndarray, pos: np.ndarray, block_size: int) -> np.ndarray:
    """x's tokens at the sampled positions of every block of the ordered, replicate-padded sequence."""
    n = order.shape[0]
    nb = -(-n // block_size)
    padded = np.concatenate([order, np.full(nb * block_size - n, order[-1], dtype=order.dtype)])
    B, H = x.shape[:2]
    out = np.empty((B, H, nb * pos.shape[-1], x.shape[3]), dtype=np.float32)
    base = (np.arange(nb) * block_size)[:, None]
    for b in range(B):
        for h in range(H):
            out[b, h] = x[b, h, padded[(base + pos[b, h][None, :]).ravel()]]
    return out


def pooled_block_scores(qs: np.ndarray, ks: np.ndarray, sample_num: int, scale: Optional[float]) -> np.ndarray:
    """``attn_with_pooling`` on the sampled tokens: ``A[I, J] = max_{i in I} exp(r_iJ - m_i)`` with
    ``r_iJ`` the max score of row i over key block J and ``m_i`` its max over all keys; (B, Hq, nb, nb)."""
    rows, _ = _core.block_attention_map(qs, ks, 1, sample_num, False, scale, "max")  # exp(r_iJ - lse_i)
    rows /= rows.max(axis=-1, keepdims=True)  # exp(r_iJ - m_i)
    B, H, n, nb = rows.shape
    return rows.reshape(B, H, n // sample_num, sample_num, nb).max(axis=3)


def energy_mask(A: np.ndarray, *, energy_threshold: float = 0.95, min_retain_ratio: float = 0.05,
                max_retain_ratio: float = 0.17) -> np.ndarray:
    """``transfer_attn_to_mask(mode="energy")`` on (..., nb, nb) scores: bool mask."""
    nb = A.shape[-1]
    lo, hi = max(1, int(nb * min_retain_ratio)), max(1, int(nb * max_retain_ratio))
    idx = np.argsort(-A, axis=-1, kind="stable")
    s = np.take_along_axis(A, idx, axis=-1)
    cum = np.cumsum(s, axis=-1)
    total = cum[..., -1:]
    hit = cum >= energy_threshold * total
    t = np.where(hit.any(axis=-1), np.argmax(hit, axis=-1), nb)
    t = np.minimum(np.maximum(t, lo), hi)  # torch.clamp(min, max): max wins when min > max
    keep = np.arange(nb) < t[..., None]
    out = np.zeros(A.shape, dtype=bool)
    np.put_along_axis(out, idx, keep, axis=-1)
    return out


def mean_pool(x: np.ndarray, order: np.ndarray, gap: int) -> np.ndarray:
    """``simple_pooling`` of the ordered sequence: replicate-pad to a multiple of `gap`, mean per gap."""
    n = order.shape[0]
    m = -(-n // gap)
    padded = np.concatenate([order, np.full(m * gap - n, order[-1], dtype=order.dtype)])
    xs = x[:, :, padded].astype(np.float64)
    return xs.reshape(x.shape[0], x.shape[1], m, gap, x.shape[3]).mean(axis=3).astype(np.float32)


@register
class Blade(Method):
    """Video-BLADE ASA: Gilbert-ordered block-sparse attention with blocks by cumulative energy of
    sampled max-pooled scores, merged by LSE with dense attention over mean-pooled keys.

    Parameters
    ----------
    grid : tuple (W, H, T) or None, default None
        Latent video grid (Wan2.1-1.3B: (52, 30, 21)); None keeps the token order.
    text_len : int, default 0
        Text tokens at the start of the sequence, moved last (CogVideoX: 226).
    block_size : int, default 128
    sample_num : int, default 32
        Sampled tokens per block for the block scores (at most ``block_size``: a larger value
        takes the whole block, where the official ``topk`` fails).
    energy_threshold : float, default 0.95
    min_retain_ratio, max_retain_ratio : float, default 0.05, 0.17
        Clamps of the kept blocks per row (shares of nb; CogVideoX max 0.1).
    sample_gap : int, default 30
        Tokens per mean-pooled key of the dense branch (CogVideoX 15).
    force_last_blocks : int, default 0
        Last block rows and columns forced on (CogVideoX 2).
    seed : int, default 0
        Seed of the sampled positions.
    """

    name = "blade"
    aliases = ("blade_asa", "video-blade")
    paper = "Video-BLADE: Block-Sparse Attention Meets Step Distillation for Efficient Video Generation (Gu et al., 2025)"
    pattern = ("3D Gilbert order, per-row energy top-k of sampled max-pooled block scores, "
               "plus a dense branch over mean-pooled keys merged by LSE")
    extra_defaults = {"grid": None, "text_len": 0, "block_size": 128, "sample_num": 32, "energy_threshold": 0.95,
                      "min_retain_ratio": 0.05, "max_retain_ratio": 0.17, "sample_gap": 30, "force_last_blocks": 0,
                      "seed": 0}
    capabilities = Capabilities(causal=False, chunked=False, decode=False, mask_format="clustered",
                                own_output=True)
    reads_outside_mask = True  # the pooled branch reads every value

    def _check_params(self) -> None:
        p = self.params
        g = p["grid"]
        if g is not None:
            if not isinstance(g, (tuple, list)) or len(g) != 3:
                raise TypeError(f"grid must be None or a tuple (W, H, T), got {g!r}")
            for name, val in zip(("grid W", "grid H", "grid T"), g):
                check_positive_int(val, name)
        check_int(p["text_len"], "text_len")
        check_positive_int(p["block_size"], "block_size")
        check_positive_int(p["sample_num"], "sample_num")
        _check_real(p["energy_threshold"], "energy_threshold", 0.0, 1.0)
        _check_real(p["min_retain_ratio"], "min_retain_ratio", 0.0, 1.0)
        _check_real(p["max_retain_ratio"], "max_retain_ratio", 0.0, 1.0)
        check_positive_int(p["sample_gap"], "sample_gap")
        check_int(p["force_last_blocks"], "force_last_blocks")
        check_int(p["seed"], "seed")

    def order(self, n: int) -> np.ndarray:
        """Original token at each position of the ordered sequence (see :func:`token_order`)."""
        g = self.params["grid"]
        return token_order(n, None if g is None else tuple(int(x) for x in g), self.params["text_len"])

    def _blocks(self, q, k, scale, order: np.ndarray) -> np.ndarray:
        p = self.params
        bs = p["block_size"]
        sn = min(p["sample_num"], bs)
        rng = np.random.default_rng(p["seed"])
        pos_q = sample_positions(q.shape[0], q.shape[1], bs, sn, rng)
        pos_k = sample_positions(k.shape[0], k.shape[1], bs, sn, rng)
        A = pooled_block_scores(_gather_sampled(q, order, pos_q, bs), _gather_sampled(k, order, pos_k, bs), sn, scale)
        mask = energy_mask(A, energy_threshold=p["energy_threshold"], min_retain_ratio=p["min_retain_ratio"],
                           max_retain_ratio=p["max_retain_ratio"])
        f = p["force_last_blocks"]
        if f > 0:
            mask[..., -f:, :] = True
            mask[..., :, -f:] = True
        return mask

    def _mask(self, q, k, scale) -> ClusteredMask:
        N = q.shape[2]
        order = self.order(N)
        labels = np.empty(N, dtype=np.int32)
        labels[order] = np.arange(N) // self.params["block_size"]
        B, Hq, Hkv = q.shape[0], q.shape[1], k.shape[1]
        return ClusteredMask(np.broadcast_to(labels, (B, Hq, N)), np.broadcast_to(labels, (B, Hkv, N)),
                             self._blocks(q, k, scale, order))

    def _estimate(self, q, k, causal, scale) -> ClusteredMask:
        return self._mask(q, k, scale)

    def __call__(self, q, k, v, *, causal=False, scale=None, return_lse=False):
        """Sparse branch over the mask plus the mean-pooled dense branch, merged by LSE."""
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        mask = self._mask(q, k, scale)
        out1, lse1 = cluster_block_attention(q, k, v, mask, scale=scale, return_lse=True)
        g = self.params["sample_gap"]
        order = self.order(q.shape[2])
        out2, lse2 = attention(q, mean_pool(k, order, g), mean_pool(v, order, g), scale=scale, return_lse=True)
        out, lse = merge_states(out1, lse1, out2, (lse2 + np.float32(math.log(g))).astype(np.float32))
        self.last_info = {"mask": mask, "block_density": float(mask.map.mean()),
                          "official_sparsity": float(1.0 - mask.map.mean() - 1.0 / g)}
        return (out, lse) if return_lse else out

    def readouts(self) -> Dict[str, Any]:
        return {k: self.last_info[k] for k in ("block_density", "official_sparsity") if k in self.last_info}


__all__ = ["Blade", "gilbert3d_order", "token_order", "sample_positions", "pooled_block_scores", "energy_mask",
           "mean_pool"]
