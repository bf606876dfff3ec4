"""Seeded synthetic workloads whose heads carry the attention structures that sparse-attention
papers exploit: attention sinks, local windows, vertical stripes, slash (diagonal) lines,
scattered retrieval and diffuse heads. Used by the demo, the notebooks and the tests; no data
is downloaded.

Construction (per kv head): the first half of the head dim is a rotary code (pairs
[cos w j, sin w j] with low frequencies for local windows and high ones for sharp diagonals),
the second half carries content directions planted on chosen key positions (the sink at key 0,
vertical stripe keys, retrieval needles). Each query head picks the structure it attends to by
which part of that code it aligns with; Gaussian noise is added everywhere. The planted logit
gain is `strength * (ln N + 4)` above the unit-variance noise logits, so a planted structure
keeps most of the mass (about 97% for one planted key) at every sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

HEAD_KINDS: Tuple[str, ...] = ("sink", "local", "vertical", "slash", "retrieval", "diffuse")


@dataclass
class Workload:
    """q, k, v arrays plus the kind of structure planted in each query head.

    Unpacks like a tuple: ``q, k, v = structured_qkv(...)``.
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    head_kinds: Tuple[str, ...]
    causal: bool = True
    info: dict = field(default_factory=dict)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.q, self.k, self.v))


def _unit(rng, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def structured_qkv(B: int = 1, Hq: int = 8, Hkv: int = 2, N: int = 4096, D: int = 128,
                   Dv: Optional[int] = None, *, Nq: Optional[int] = None,
                   head_kinds: Optional[Sequence[str]] = None, seed: int = 0,
                   strength: float = 1.0, local_window: int = 128, n_vertical: int = 8,
                   slash_offsets: Sequence[int] = (0, 256, 1000), n_needles: int = 32, model_seed: int = 0,
                   dtype=np.float32) -> Workload:
    """Build a seeded structured workload.

    Parameters
    ----------
    B, Hq, Hkv, N, D, Dv : int
        Batch, query heads, kv heads (Hq % Hkv == 0), key length, head dim, value dim (default D).
    Nq : int, optional
        Number of queries (default N); queries are the last Nq positions (bottom-right aligned).
    head_kinds : sequence of str, optional
        Kind per query head from HEAD_KINDS; default cycles through them.
    seed : int
        Positions of the planted keys and all noise come from ``numpy.random.default_rng(seed)``.
    model_seed : int
        The "model": rotary frequencies and content directions of each kv head come from
        ``default_rng((model_seed, b, kv head))``, fixed across ``seed`` the way a real model's
        projections are fixed across inputs (learned estimators can then generalise).
    strength : float
        Scales the planted logit gain (ln N + 4 at 1.0: sharp, realistic heads; 0: pure noise).
    local_window, n_vertical, slash_offsets, n_needles
        Width of the local heads' window, number of vertical stripes, diagonal offsets of the
        slash heads, number of retrieval needles.
    """
    if Hkv < 1 or Hq % Hkv != 0:
        raise ValueError(f"Hq={Hq} must be a multiple of Hkv={Hkv}")
    if D < 8 or D % 4 != 0:
        raise ValueError(f"D must be a multiple of 4 and >= 8, got {D}")
    Nq = N if Nq is None else Nq
    if not 1 <= Nq <= N:
        raise ValueError(f"Nq must be in [1, N={N}], got {Nq}")
    Dv = D if Dv is None else Dv
    kinds = tuple(head_kinds) if head_kinds is not None else tuple(HEAD_KINDS[h % len(HEAD_KINDS)] for h in range(Hq))
    if len(kinds) != Hq or any(kd not in HEAD_KINDS for kd in kinds):
        raise ValueError(f"head_kinds must list {Hq} kinds from {HEAD_KINDS}, got {kinds}")
    rng = np.random.default_rng(seed)
    R = D // 2                       # rotary dims
    F = R // 2                       # frequency pairs
    C = D - R                        # content dims
    F_low = F // 2                   # low frequencies (local), the rest high (slash)
    gain = strength * (np.log(N) + 4.0) * np.sqrt(D)  # q.k of a planted match; logit = gain / sqrt(D)
    pos_k = np.arange(N)
    pos_q = np.arange(N - Nq, N)
    off = N - Nq

    q = rng.standard_normal((B, Hq, Nq, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, N, D)).astype(dtype)
    v = rng.standard_normal((B, Hkv, N, Dv)).astype(dtype)
    G = Hq // Hkv
    info = {"vertical": [], "needles": []}
    for b in range(B):
        for hk in range(Hkv):
            mrng = np.random.default_rng((model_seed, b, hk))
            omega = np.concatenate([mrng.uniform(0, np.pi / local_window, F_low),
                                    mrng.uniform(0.3, np.pi, F - F_low)])
            ang_k = pos_k[:, None] * omega[None, :]
            rot_k = np.empty((N, R))
            rot_k[:, 0::2], rot_k[:, 1::2] = np.cos(ang_k), np.sin(ang_k)
            dirs = _unit(mrng, 2 + n_needles, C)  # sink, vertical, needles
            u_sink, u_vert, needles = dirs[0], dirs[1], dirs[2:]
            vert_pos = np.sort(rng.choice(np.arange(1, N), size=min(n_vertical, N - 1), replace=False))
            needle_pos = np.sort(rng.choice(np.arange(1, max(2, N // 2)), size=min(n_needles, max(1, N // 2 - 1)), replace=False))
            needles = needles[: needle_pos.size]
            info["vertical"].append(vert_pos)
            info["needles"].append(needle_pos)
            kk = k[b, hk].astype(np.float64)
            a = np.sqrt(gain)
            kk[:, :R] = rot_k * np.sqrt(gain / F_low) + 0.3 * kk[:, :R]
            kk[0, R:] += a * u_sink
            kk[vert_pos, R:] += a * u_vert
            kk[needle_pos, R:] += a * needles
            k[b, hk] = kk.astype(dtype)
            for g in range(G):
                h = hk * G + g
                kind = kinds[h]
                qq = q[b, h].astype(np.float64) * (0.5 if kind == "diffuse" else 1.0)
                if kind in ("sink", "vertical", "retrieval", "diffuse"):
                    qq[:, :R] *= 0.3
                if kind == "sink":
                    qq[:, R:] += a * u_sink
                elif kind == "vertical":
                    qq[:, R:] += a * u_vert + 0.5 * a * u_sink
                elif kind == "local":
                    ang = pos_q[:, None] * omega[None, :F_low]
                    qq[:, : 2 * F_low : 2] = np.cos(ang) * np.sqrt(gain / F_low)
                    qq[:, 1 : 2 * F_low : 2] = np.sin(ang) * np.sqrt(gain / F_low)
                    qq[:, 2 * F_low : R] = 0.0
                    qq[:, R:] += 0.6 * a * u_sink
                elif kind == "slash":
                    qr = np.zeros((Nq, R - 2 * F_low))
                    for t in slash_offsets:
                        ang = (pos_q[:, None] - t) * omega[None, F_low:]
                        qr[:, 0::2] += np.cos(ang)
                        qr[:, 1::2] += np.sin(ang)
                    qq[:, : 2 * F_low] = 0.0
                    qq[:, 2 * F_low : R] = qr * np.sqrt(gain / F_low) * 1.5
                    qq[:, R:] += 0.5 * a * u_sink
                elif kind == "retrieval":
                    # Each query looks for one needle it can see (causal), else the sink.
                    pick = rng.integers(0, needle_pos.size, size=Nq)
                    ok = needle_pos[pick] <= pos_q
                    qq[:, R:] += np.where(ok[:, None], a * needles[pick], a * u_sink[None, :])
                q[b, h] = qq.astype(dtype)
    model = {"Hq": Hq, "Hkv": Hkv, "D": D, "Dv": Dv, "head_kinds": kinds, "strength": strength,
             "local_window": local_window, "n_vertical": n_vertical, "slash_offsets": tuple(slash_offsets),
             "n_needles": n_needles, "model_seed": model_seed}
    return Workload(q, k, v, kinds, True, {"vertical": info["vertical"], "needles": info["needles"], "off": off,
                                           "seed": seed, "model": model})


def held_out_inputs(workload, *, seeds: Sequence[int] = (1, 2, 3), max_len: int = 4096
                    ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Other inputs of the synthetic model behind `workload`, as (q, k) pairs for fitting.

    Parameters
    ----------
    workload : Workload or (q, k, v)
        A Workload from :func:`structured_qkv` reuses its model (head kinds, strength, model
        seed, ...); plain arrays use the default synthetic model with their head counts and dims.
    seeds : sequence of int
        Input seeds; they must differ from the workload's own seed (held out).
    max_len : int
        Length of each input: min(Nk of the workload, max_len) tokens, B=1, Nq == Nk.

    Returns
    -------
    list of (q, k)
    """
    if isinstance(workload, Workload):
        k = workload.k
        model = dict(workload.info.get("model") or {"Hq": workload.q.shape[1], "Hkv": k.shape[1], "D": k.shape[3]})
        if workload.info.get("seed") in tuple(seeds):
            raise ValueError(f"seeds {tuple(seeds)} must not include the workload's seed {workload.info['seed']}")
    else:
        q, k, _ = workload
        model = {"Hq": q.shape[1], "Hkv": k.shape[1], "D": k.shape[3]}
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
    N = min(int(k.shape[2]), int(max_len))
    return [tuple(structured_qkv(B=1, N=N, seed=s, **model))[:2] for s in seeds]


def denoising_steps(workload, steps: int, *, drift: float = 0.02, seed: int = 0
                    ) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Slowly varying attention inputs, one (q, k, v) per denoising step, for stateful methods.

    A diffusion model calls each attention layer once per step on inputs that change a little
    from step to step. Step 0 is `workload` itself; each next step adds a Gaussian random walk
    increment of ``drift`` times each tensor's RMS, so step t lies about ``drift * sqrt(t)``
    (relative) from step 0.

    Parameters
    ----------
    workload : Workload or (q, k, v)
    steps : int
        Number of steps (>= 1).
    drift : float
        Relative size of each step's change (>= 0).
    seed : int
        Seed of the increments.

    Returns
    -------
    list of (q, k, v), float32
    """
    q, k, v = (np.asarray(x, dtype=np.float32) for x in tuple(workload)[:3])
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(drift, bool) or not isinstance(drift, (int, float, np.integer, np.floating)) \
            or not np.isfinite(drift) or drift < 0:
        raise ValueError(f"drift must be a finite number >= 0, got {drift!r}")
    rng = np.random.default_rng(seed)
    cur = [x.copy() for x in (q, k, v)]
    out = [tuple(x.copy() for x in cur)]
    rms = [float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0 for x in cur]
    for _ in range(int(steps) - 1):
        for x, r in zip(cur, rms):
            x += (float(drift) * r * rng.standard_normal(x.shape)).astype(np.float32)
        out.append(tuple(x.copy() for x in cur))
    return out
