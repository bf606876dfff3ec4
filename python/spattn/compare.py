"""Honest side-by-side comparison of registered methods on one workload: density, recall,
relative error against exact attention, time and speedup against spattn dense. Backs
``python -m spattn demo`` and ``python -m spattn compare``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

from . import methods as _methods
from .kernels import attention
from .metrics import recall, relative_error
from .synthetic import structured_qkv


@dataclass
class Row:
    method: str
    params: Dict[str, Any]
    density: float
    recall: float
    rel_error: float
    estimate_s: float
    total_s: float
    speedup: float


def _time(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def compare_methods(q, k, v, *, causal: bool = True, names: Optional[Iterable[str]] = None,
                    params: Optional[Dict[str, Dict[str, Any]]] = None, repeats: int = 1,
                    progress: bool = True) -> List[Row]:
    """Run every method in `names` (default: all registered) on (q, k, v).

    density and recall are averaged over (batch, head); times are the best of `repeats` runs;
    `total_s` includes the estimate; speedup = dense time / total time.
    """
    from tqdm.auto import tqdm

    names = list(names) if names is not None else _methods.available()
    params = params or {}
    dense_s, ref = _time(lambda: attention(q, k, v, causal=causal), repeats)
    rows: List[Row] = []
    for name in tqdm(names, desc="methods", disable=not progress):
        m = _methods.get(name, **params.get(name, {}))
        est_s, mask = _time(lambda: m.estimate(q, k, causal=causal), repeats)
        if name == "dense":
            tot_s, out = dense_s, ref
        else:
            tot_s, out = _time(lambda: m(q, k, v, causal=causal), repeats)
        shown = {k: ("<trained gate>" if k == "gate" and v is not None else v) for k, v in m.params.items()}
        rows.append(Row(name, shown, float(np.mean(mask.density(causal=causal))),
                        float(np.nanmean(recall(q, k, mask, causal=causal))),
                        relative_error(out, ref), est_s, tot_s, dense_s / tot_s))
    return rows


def format_table(rows: List[Row]) -> str:
    head = f"{'method':<14}{'density':>9}{'recall':>9}{'rel.err':>10}{'estimate s':>12}{'total s':>10}{'speedup':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.method:<14}{r.density:>9.3f}{r.recall:>9.3f}{r.rel_error:>10.2e}"
                     f"{r.estimate_s:>12.4f}{r.total_s:>10.4f}{r.speedup:>8.2f}x")
    return "\n".join(lines)


DEMO_WORKLOAD = dict(B=1, Hq=8, Hkv=2, N=4096, D=128, seed=0)


def demo(progress: bool = True) -> List[Row]:
    """The main job: every registered method on the embedded default workload.

    SeerAttention gets a gate trained on three other inputs of the same synthetic model
    (seeds 1-3, 200 steps, a few seconds), so its row is measured on an input the gate never saw,
    and runs at nz_ratio=0.1 (about 90% block sparsity, the paper's headline regime).
    """
    from .seer import train_synthetic_gate

    w = structured_qkv(**DEMO_WORKLOAD)
    gate = train_synthetic_gate(w.q.shape[1], w.k.shape[1], w.q.shape[3], N=w.q.shape[2]).gate
    return compare_methods(w.q, w.k, w.v, causal=True, progress=progress,
                           params={"seerattention": {"gate": gate, "nz_ratio": 0.1}})


def rows_as_dicts(rows: List[Row]) -> List[Dict[str, Any]]:
    return [asdict(r) for r in rows]
