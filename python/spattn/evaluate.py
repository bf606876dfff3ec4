"""One evaluation harness: run methods on a workload and return records.

:func:`evaluate` measures, per method, the density and recall of its mask, the relative error
of its output against exact attention, and the time of its estimate and of the whole call
against spattn dense (and optionally torch SDPA). ``python -m spattn demo``, ``compare`` and
``bench --methods`` render its records with :func:`format_table`; the README method table is
rendered from them by :func:`format_markdown` (``bench --methods ... --markdown``). The harness
reads only the methods' capabilities and generic hooks (``prepare``, ``describe_params``,
``readouts``), never a method's name; the demo's settings (``DEMO_WORKLOAD``, ``DEMO_PARAMS``)
are data.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from . import methods as _methods
from ._validation import check_positive_int, check_qkv
from .kernels import attention
from .metrics import recall, relative_error
from .synthetic import Workload, denoising_steps, structured_qkv


@dataclass
class Record:
    """One method measured on one workload.

    density and recall are averaged over (batch, head) (recall ignores NaN rows); times are the
    best of ``repeats`` runs in seconds; ``total_s`` includes the estimate; speedups are
    ``dense_s / total_s`` and ``torch_s / total_s``; ``readouts`` is the method's summary of its
    last estimate (e.g. FlexPrefill's heads per pattern).
    """

    method: str
    params: Dict[str, Any]
    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    causal: bool
    density: float
    recall: float
    rel_error: float
    estimate_s: float
    total_s: float
    dense_s: float
    speedup_vs_dense: float
    torch_s: Optional[float] = None
    speedup_vs_torch: Optional[float] = None
    readouts: Dict[str, Any] = field(default_factory=dict)

    @property
    def estimate_share_of_dense(self) -> float:
        """Estimate time as a share of dense attention."""
        return self.estimate_s / self.dense_s


def best_time(fn: Callable[[], Any], repeats: int = 1) -> Tuple[float, Any]:
    """(best wall time in seconds over `repeats` calls of `fn`, result of the last call)."""
    best, result = float("inf"), None
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def torch_sdpa_call(torch, q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> Callable[[], Any]:
    """A zero-argument call of ``torch.nn.functional.scaled_dot_product_attention`` on (q, k, v)
    (no copies: the tensors share the numpy buffers), for timing."""
    qt, kt, vt = (torch.from_numpy(np.ascontiguousarray(x)) for x in (q, k, v))

    def run():
        with torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(
                qt, kt, vt, is_causal=causal, enable_gqa=qt.shape[1] != kt.shape[1])
    return run


def parse_method_params(items: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """Method parameters from ``METHOD.PARAM=VALUE`` strings (VALUE parsed as JSON when it can be).

    Raises ValueError naming an item that is not of that form.
    """
    out: Dict[str, Dict[str, Any]] = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set expects method.param=value, got {item!r}")
        key, val = item.split("=", 1)
        method, param = key.split(".", 1)
        try:
            parsed = json.loads(val)
        except json.JSONDecodeError:
            parsed = val
        out.setdefault(method, {})[param] = parsed
    return out


MethodSpec = Union[str, "_methods.Method"]


def _instances(methods: Optional[Iterable[MethodSpec]], params: Dict[str, Dict[str, Any]], causal: bool,
               q_len: int, kv_len: int) -> List["_methods.Method"]:
    if methods is None:  # every registered method that defines this call
        names = [n for n in _methods.available()
                 if _methods.capabilities(n).supports(causal=causal, q_len=q_len, kv_len=kv_len)]
        methods = names
    methods = list(methods)
    named = {m for m in methods if isinstance(m, str)}
    stray = sorted(set(params) - named)
    if stray:
        raise ValueError(f"params name method(s) {stray} that are not evaluated by name; methods: {sorted(named)}")
    out = []
    for m in methods:
        if isinstance(m, str):
            out.append(_methods.get(m, **params.get(m, {})))
        elif isinstance(m, _methods.Method):
            out.append(m)
        else:
            raise TypeError(f"methods must hold method names or spattn.methods.Method instances, got {type(m).__name__}")
    return out


def evaluate(methods: Optional[Iterable[MethodSpec]], workload: Union[Workload, Tuple[np.ndarray, ...]], *, causal: bool = True,
             params: Optional[Dict[str, Dict[str, Any]]] = None, repeats: int = 1, progress: bool = True,
             torch_sdpa: bool = False) -> List[Record]:
    """Run methods on one workload and measure them against exact attention.

    Parameters
    ----------
    methods : iterable of str or Method, or None
        Method names (built with ``params``) or instances; None: every registered method whose
        capabilities define this call (causality, Nq, Nk).
    workload : spattn.synthetic.Workload or (q, k, v)
        Inputs (B, Hq, Nq, D), (B, Hkv, Nk, D), (B, Hkv, Nk, Dv).
    causal : bool
        Bottom-right aligned causal attention.
    params : dict, optional
        ``{method name: {parameter: value}}`` for the methods given by name.
    repeats : int
        Every time is the best of this many runs.
    progress : bool
        Show progress bars (methods, and the fit of methods that ``prepare`` trains).
    torch_sdpa : bool
        Also time ``torch.nn.functional.scaled_dot_product_attention`` at the same shapes
        (torch must be installed) and report ``torch_s`` / ``speedup_vs_torch``.

    Returns
    -------
    list of Record, one per method, in order.

    Notes
    -----
    Each method is first ``prepare``-d: a method that needs a fitted state and has none is
    fitted on held-out inputs of the workload's synthetic model. A method whose capabilities
    say ``exact`` is its own reference: its output is the dense output and its total time the
    dense time. A ``stateful`` method (diffusion methods whose calls are denoising steps) is reset,
    run through its schedule on the workload up to its first reuse (sparse) step (``warm_up``) and
    measured on that step; its mask is that step's.
    """
    from tqdm.auto import tqdm

    arrays = tuple(workload)
    if len(arrays) != 3:
        raise TypeError(f"workload must be a spattn.synthetic.Workload or (q, k, v), got {len(arrays)} items")
    q, k, v = check_qkv(*arrays)
    repeats = check_positive_int(repeats, "repeats")
    params = dict(params or {})
    causal = bool(causal)
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    todo = _instances(methods, params, causal, Nq, Nk)
    dense_s, ref = best_time(lambda: attention(q, k, v, causal=causal), repeats)
    torch_s = None
    if torch_sdpa:
        import torch

        torch_s, _ = best_time(torch_sdpa_call(torch, q, k, v, causal), repeats)
    records: List[Record] = []
    for m in tqdm(todo, desc="methods", disable=not progress):
        m.prepare(workload, progress=progress)
        vkw = {"v": v} if m.capabilities.value_inputs else {}
        est_s, mask = best_time(lambda: m.estimate(q, k, causal=causal, **vkw), repeats)
        readouts = m.readouts()
        if m.capabilities.exact:
            tot_s, out = dense_s, ref
        elif m.capabilities.stateful:  # measured at its first reuse (sparse) step, state built on this input
            m.reset()
            m.warm_up(q, k, v, causal=causal)
            snapshot = m.state.copy()

            def reuse_step(m=m, snapshot=snapshot):
                m.state.restore(snapshot)
                return m(q, k, v, causal=causal)
            tot_s, out = best_time(reuse_step, repeats)
            mask = m.last_info.get("mask", mask)
            readouts = m.readouts()
        else:
            tot_s, out = best_time(lambda: m(q, k, v, causal=causal), repeats)
        records.append(Record(
            method=m.name, params=m.describe_params(), batch=B, q_heads=Hq, kv_heads=Hkv, q_len=Nq, kv_len=Nk,
            head_dim=D, causal=causal, density=float(np.mean(mask.density(causal=causal))),
            recall=float(np.nanmean(recall(q, k, mask, causal=causal))), rel_error=relative_error(out, ref),
            estimate_s=est_s, total_s=tot_s, dense_s=dense_s, speedup_vs_dense=dense_s / tot_s,
            torch_s=torch_s, speedup_vs_torch=None if torch_s is None else torch_s / tot_s, readouts=readouts))
    return records


def format_table(records: List[Record]) -> str:
    """A plain-text table of records (one line each; an N column when lengths differ, a torch
    column when measured)."""
    show_n = len({(r.q_len, r.kv_len) for r in records}) > 1
    show_torch = any(r.speedup_vs_torch is not None for r in records)
    w = max([14] + [len(r.method) + 2 for r in records])
    head = (f"{'method':<{w}}" + (f"{'N':>7}" if show_n else "") + f"{'density':>9}{'recall':>9}{'rel.err':>10}"
            f"{'estimate s':>12}{'est/dense':>10}{'total s':>10}{'speedup':>9}" + (f"{'vs torch':>10}" if show_torch else ""))
    lines = [head, "-" * len(head)]
    for r in records:
        line = (f"{r.method:<{w}}" + (f"{r.kv_len:>7}" if show_n else "") + f"{r.density:>9.3f}{r.recall:>9.3f}"
                f"{r.rel_error:>10.2e}{r.estimate_s:>12.4f}{r.estimate_share_of_dense:>10.1%}{r.total_s:>10.4f}"
                f"{r.speedup_vs_dense:>8.2f}x")
        if show_torch:
            line += f"{r.speedup_vs_torch:>9.2f}x" if r.speedup_vs_torch is not None else f"{'':>10}"
        extra = ", ".join(f"{key}={val}" for key, val in r.readouts.items())
        lines.append(line + (f"  {extra}" if extra else ""))
    return "\n".join(lines)


def _status(caps) -> str:
    notes = []
    if caps.exact_reference_only:
        notes.append("needs exact attention: evaluation only")
    if caps.needs_fit:
        notes.append("needs a fitted state")
    if not caps.noncausal:
        notes.append("causal only")
    return "works" + (f" ({'; '.join(notes)})" if notes else "")


def format_markdown(records: List[Record]) -> str:
    """The README method table from records: one row per method (paper, pattern and a status
    read from its capabilities), one "density / recall / speedup" column per sequence length."""
    lengths = sorted({r.kv_len for r in records})
    cells: Dict[str, Dict[int, Record]] = {}
    for r in records:
        cells.setdefault(r.method, {})[r.kv_len] = r
    head = "| method | paper | pattern | status | " + " | ".join(
        f"N={n}: density / recall / speedup" for n in lengths) + " |"
    lines = [head, "| " + " | ".join(["---"] * (4 + len(lengths))) + " |"]
    for name, by_len in cells.items():
        cls = _methods.base.lookup(name)
        figures = [f"{by_len[n].density:.3f} / {by_len[n].recall:.3f} / {by_len[n].speedup_vs_dense:.2f}x"
                   if n in by_len else "—" for n in lengths]
        text = [cell.replace("|", "\\|") for cell in (cls.paper, cls.pattern, _status(cls.capabilities))]
        lines.append(f"| `{name}` | " + " | ".join(text + figures) + " |")
    return "\n".join(lines)


def records_as_dicts(records: List[Record]) -> List[Dict[str, Any]]:
    """Records as JSON-ready dicts (with ``estimate_share_of_dense``)."""
    return [{**asdict(r), "estimate_share_of_dense": r.estimate_share_of_dense} for r in records]


@dataclass
class RunRecord:
    """One method over a denoising run (:func:`denoising_run`).

    ``steps`` holds one dict per step: ``step``, ``phase`` (the method's ``last_info["phase"]``,
    or ``"sparse"`` for a method without a schedule), ``rel_error`` against dense attention at
    that step, ``density`` of the step's mask, ``time_s`` and ``dense_s`` (wall times of the
    method's call and of dense attention on the same input). ``total_s`` / ``dense_total_s`` sum
    them; ``time_saved`` is ``1 - total_s / dense_total_s`` and ``speedup_vs_dense`` their ratio.
    """

    method: str
    params: Dict[str, Any]
    batch: int
    q_heads: int
    kv_heads: int
    length: int
    head_dim: int
    drift: float
    steps: List[Dict[str, Any]]
    total_s: float
    dense_total_s: float

    @property
    def time_saved(self) -> float:
        return 1.0 - self.total_s / self.dense_total_s

    @property
    def speedup_vs_dense(self) -> float:
        return self.dense_total_s / self.total_s

    @property
    def mean_rel_error(self) -> float:
        return float(np.mean([s["rel_error"] for s in self.steps]))

    @property
    def mean_density(self) -> float:
        return float(np.mean([s["density"] for s in self.steps]))

    def as_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "time_saved": self.time_saved, "speedup_vs_dense": self.speedup_vs_dense,
                "mean_rel_error": self.mean_rel_error, "mean_density": self.mean_density}


def denoising_run(method: MethodSpec, workload: Union[Workload, Tuple[np.ndarray, ...], None] = None, *,
                  steps: int = 50, drift: float = 0.02, seed: int = 0, params: Optional[Dict[str, Any]] = None,
                  inputs: Optional[List[Tuple[np.ndarray, np.ndarray, np.ndarray]]] = None,
                  progress: bool = False) -> RunRecord:
    """Run one method over a whole denoising run and compare every step with dense attention.

    The inputs are ``spattn.synthetic.denoising_steps(workload, steps, drift=drift, seed=seed)``
    (slowly varying q, k, v, one per step) unless `inputs` gives them. A stateful method is reset
    first and then called once per step, so it follows its own schedule (dense warm-up, search
    and reuse steps) with its state; any other method runs each step on its own. Non-causal (the
    attention of video / image diffusion transformers).

    Parameters
    ----------
    method : str or Method
        A registry name (built with `params`) or an instance.
    workload : Workload or (q, k, v), optional
        Step 0's input (default: ``structured_qkv(B=1, Hq=8, Hkv=8, N=4096, D=128)``).
    steps, drift, seed
        Of :func:`spattn.synthetic.denoising_steps`.
    params : dict, optional
        Parameters of a method given by name.
    inputs : list of (q, k, v), optional
        The steps' inputs instead of the synthetic ones.

    Returns
    -------
    RunRecord
        Per-step relative error, density, phase and times, and the totals (time saved over the run).
    """
    from tqdm.auto import tqdm

    if isinstance(method, str):
        m = _methods.get(method, **dict(params or {}))
    elif isinstance(method, _methods.Method):
        if params:
            raise ValueError("params apply to a method given by name; set them on the instance instead")
        m = method
    else:
        raise TypeError(f"method must be a method name or a spattn.methods.Method, got {type(method).__name__}")
    if inputs is None:
        if workload is None:
            workload = structured_qkv(B=1, Hq=8, Hkv=8, N=4096, D=128, seed=seed)
        inputs = denoising_steps(workload, check_positive_int(steps, "steps"), drift=drift, seed=seed)
    if not inputs:
        raise ValueError("inputs must hold at least one (q, k, v) step")
    q0 = check_qkv(*inputs[0])[0]
    k0 = inputs[0][1]
    if not m.capabilities.supports(causal=False, q_len=q0.shape[2], kv_len=k0.shape[2]):
        raise ValueError(f"{m.name} does not run non-causal attention with Nq={q0.shape[2]}, Nk={k0.shape[2]}")
    stateful = m.capabilities.stateful
    if stateful:
        m.reset()
    rows: List[Dict[str, Any]] = []
    for t, step_in in enumerate(tqdm(inputs, desc=m.name, disable=not progress)):
        q, k, v = check_qkv(*step_in)
        dense_s, ref = best_time(lambda: attention(q, k, v, causal=False))
        t_s, out = best_time(lambda: m(q, k, v, causal=False))
        mask = m.last_info.get("mask") if m.capabilities.own_output else None
        if mask is None:
            mask = m.estimate(q, k, causal=False)
        rows.append({"step": t, "phase": m.last_info.get("phase", "sparse") if stateful else "sparse",
                     "rel_error": relative_error(out, ref), "density": float(np.mean(mask.density(causal=False))),
                     "time_s": t_s, "dense_s": dense_s})
    B, Hq, N, D = q0.shape
    return RunRecord(method=m.name, params=m.describe_params(), batch=B, q_heads=Hq, kv_heads=int(k0.shape[1]),
                     length=N, head_dim=D, drift=float(drift), steps=rows,
                     total_s=float(sum(r["time_s"] for r in rows)),
                     dense_total_s=float(sum(r["dense_s"] for r in rows)))


def format_run(records: List[RunRecord], per_step: bool = False) -> str:
    """A plain-text summary of denoising runs: one line per method (mean relative error and
    density over the steps, total time vs dense at every step, time saved), optionally every step."""
    w = max([14] + [len(r.method) + 2 for r in records])
    head = (f"{'method':<{w}}{'steps':>6}{'mean rel.err':>14}{'max rel.err':>13}{'mean density':>14}"
            f"{'total s':>10}{'dense s':>10}{'saved':>8}{'speedup':>9}")
    lines = [head, "-" * len(head)]
    for r in records:
        lines.append(f"{r.method:<{w}}{len(r.steps):>6}{r.mean_rel_error:>14.2e}"
                     f"{max(s['rel_error'] for s in r.steps):>13.2e}{r.mean_density:>14.3f}{r.total_s:>10.3f}"
                     f"{r.dense_total_s:>10.3f}{r.time_saved:>8.1%}{r.speedup_vs_dense:>8.2f}x")
    if per_step:
        for r in records:
            lines.append(f"\n{r.method}: step  phase   rel.err  density   time s  dense s")
            for s in r.steps:
                lines.append(f"{'':>{len(r.method) + 2}}{s['step']:>4}  {s['phase']:<6}{s['rel_error']:>10.2e}"
                             f"{s['density']:>9.3f}{s['time_s']:>9.4f}{s['dense_s']:>9.4f}")
    return "\n".join(lines)


DEMO_WORKLOAD = dict(B=1, Hq=8, Hkv=2, N=4096, D=128, seed=0)
DEMO_PARAMS = {"seerattention": {"nz_ratio": 0.1}}


def demo(progress: bool = True) -> List[Record]:
    """The main job: every registered method on the embedded default workload (causal).

    Methods that need a fitted state are fitted by ``prepare`` on three other inputs of the same
    synthetic model (seeds 1-3, 200 steps, a few seconds), so they are measured on an input they
    never saw; SeerAttention runs at nz_ratio=0.1 (about 90% block sparsity, the paper's
    headline regime).
    """
    w = structured_qkv(**DEMO_WORKLOAD)
    return evaluate(None, w, causal=True, params=DEMO_PARAMS, progress=progress)
