"""Evaluation of methods inside a real pretrained model (``python -m spattn eval``).

For each sequence length and method, with the model on the spattn transformers backend
(:mod:`spattn.integrations.hf`):

- **perplexity** of the evaluation text (:func:`spattn.models.long_text`, its first n tokens),
  the whole sequence as one sparse prefill; next-token loss over all n - 1 positions;
- **passkey retrieval**: a sentence "The pass key is K. Remember it. K is the pass key." is put
  into the same text at several depths (share of the text before it), the prompt ends with
  "What is the pass key? The pass key is", the model generates 8 tokens greedily (prefill with
  the method, decode steps dense or ``decode_method``); a hit is K among them;
- **recall and density on the model's real attention**: (q, k) of every layer and head are
  captured from the exact (dense) run on the text, each layer's estimator is applied to them, and
  :func:`spattn.metrics.recall` / density are taken per layer and head;
- **prefill time** of the whole model (the decoder stack without the LM head) on the text, and
  the attention share of it, against the dense backend and against transformers' ``sdpa``.

Methods that need a trained state (``capabilities.needs_fit``) are fitted per layer on (q, k)
captured from a held-out text (:func:`spattn.models.long_text` with ``held_out=True``). Methods
whose capabilities exclude causal prefill are skipped with the reason in the record.
"""

from __future__ import annotations

import inspect

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import methods as _methods
from . import metrics
from . import models as _models

DEPTHS = (0.1, 0.5, 0.9)


@dataclass
class ModelRecord:
    """One (method, length) row of a model evaluation; times in seconds."""

    method: str
    n: int
    params: Dict[str, Any] = field(default_factory=dict)
    skipped: Optional[str] = None
    fitted: bool = False
    perplexity: Optional[float] = None
    perplexity_dense: Optional[float] = None
    perplexity_sdpa: Optional[float] = None
    passkey_hits: int = 0
    passkey_trials: int = 0
    passkey_outputs: List[str] = field(default_factory=list)
    recall: Optional[float] = None
    density: Optional[float] = None
    recall_per_layer: List[float] = field(default_factory=list)
    density_per_layer: List[float] = field(default_factory=list)
    backend_density: Optional[float] = None
    prefill_s: Optional[float] = None
    prefill_dense_s: Optional[float] = None
    prefill_sdpa_s: Optional[float] = None
    attention_s: Optional[float] = None
    attention_dense_s: Optional[float] = None
    calls: Dict[str, int] = field(default_factory=dict)

    @property
    def passkey_accuracy(self) -> Optional[float]:
        return self.passkey_hits / self.passkey_trials if self.passkey_trials else None

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelRecord":
        """The record of :meth:`as_dict` (derived keys ignored)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    def as_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["passkey_accuracy"] = self.passkey_accuracy
        return d


def _perplexity_and_time(model, ids, torch, chunk: int = 1024):
    """Perplexity of `ids` (one prefill) and the seconds of the decoder stack; the LM head and the
    loss run in chunks afterwards (never an n x vocab logits tensor)."""
    with torch.no_grad():
        t0 = time.perf_counter()
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        seconds = time.perf_counter() - t0
        head = model.get_output_embeddings()
        nll, count = 0.0, 0
        for s in range(0, ids.shape[1] - 1, chunk):
            e = min(ids.shape[1] - 1, s + chunk)
            logits = head(hidden[:, s:e]).float()
            nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                           ids[:, s + 1:e + 1].reshape(-1), reduction="sum"))
            count += (e - s) * ids.shape[0]
    return float(np.exp(nll / count)), seconds


def passkey_prompt(tokenizer, text_ids, n: int, depth: float, key: int):
    """A prompt of exactly `n` tokens: the text with the passkey sentence inserted after
    ``depth`` of it, then the question."""
    import torch

    needle = tokenizer(f"\nThe pass key is {key}. Remember it. {key} is the pass key.\n",
                       add_special_tokens=False).input_ids
    question = tokenizer("\nWhat is the pass key? The pass key is", add_special_tokens=False).input_ids
    n_fill = n - len(needle) - len(question)
    if n_fill <= 0 or n_fill > text_ids.shape[-1]:
        raise ValueError(f"n: {n} tokens cannot hold the passkey prompt with this text")
    pos = int(round(depth * n_fill))
    flat = text_ids.reshape(-1).tolist()
    return torch.tensor([flat[:pos] + needle + flat[pos:n_fill] + question])


def _passkey(model, tokenizer, text_ids, n, depths, seed, torch):
    rng = np.random.default_rng(seed)
    hits, outs = 0, []
    for depth in depths:
        key = int(rng.integers(10000, 100000))
        ids = passkey_prompt(tokenizer, text_ids, n, depth, key)
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
        hit = str(key) in text
        hits += int(hit)
        outs.append(f"depth {depth}: key {key} -> {text.strip()!r}{'' if hit else ' (miss)'}")
    return hits, outs


def _real_recall(method_layers, captured, causal=True, gate_inputs=None, values=None):
    """Per layer recall and density of the layer's estimator on the captured (q, k); methods
    with gate inputs get the captured pre-RoPE q, k as ``q_gate``, ``k_gate`` when present,
    methods whose estimator reads V (SEA) the captured v."""
    recalls, densities = [], []
    for st in method_layers:
        q, k = captured[st.layer_idx]
        if st.dense or st.method.capabilities.exact:
            recalls.append(1.0)
            densities.append(1.0)
            continue
        kw = {}
        if st.method.capabilities.gate_inputs and gate_inputs and st.layer_idx in gate_inputs:
            kw = dict(zip(("q_gate", "k_gate"), gate_inputs[st.layer_idx]))
        if st.method.capabilities.value_inputs and values and st.layer_idx in values:
            kw = {"v": values[st.layer_idx]}
        mask = st.method.estimate(q, k, causal=causal, **kw)
        recalls.append(float(np.nanmean(metrics.recall(q, k, mask, causal=causal))))
        densities.append(float(np.mean(metrics.density(mask, causal=causal, q_len=q.shape[2]))))
    return recalls, densities


def evaluate_model(model, tokenizer, method_names: Sequence[str], lengths: Sequence[int], *,
                   params: Optional[Dict[str, Dict[str, Any]]] = None, depths: Sequence[float] = DEPTHS,
                   decode_method: Optional[str] = None, min_prefill_tokens: int = 1024, fit_tokens: int = 2048,
                   fit_steps: int = 100, seed: int = 0, progress: bool = True,
                   skip: Sequence[str] = (), fit: Sequence[str] = (),
                   keep_captured: Optional[Dict[int, Any]] = None,
                   keep_methods: Optional[Dict[str, Any]] = None,
                   keep_gate_inputs: Optional[Dict[int, Any]] = None,
                   keep_values: Optional[Dict[int, Any]] = None) -> List[ModelRecord]:
    """Evaluate `method_names` on `model` at each of `lengths` (see the module docstring).

    Parameters
    ----------
    model, tokenizer
        A causal LM and its tokenizer (e.g. from :func:`spattn.models.load`).
    method_names : names from the registry; "dense" is the exact reference and always runs.
    lengths : sequence lengths in tokens.
    params : {method: {param: value}} overrides.
    depths : passkey depths (share of the text before the passkey).
    decode_method : run on decode steps of the passkey generation (default exact).
    min_prefill_tokens : passed to :func:`spattn.integrations.hf.use`.
    fit_tokens, fit_steps : held-out tokens and steps for methods that need fitting.
    fit : methods that can be fitted (``capabilities.fittable``) but run without, fitted too (e.g.
        ``["sea"]``: its learned estimator trained per layer on the model's captured q / k / v);
        their records have ``fitted`` True.
    skip : parts left out: "passkey", "recall" (e.g. both for a timing-only run; perplexity and
        prefill time come from the same forward and always run).
    keep_captured : if a dict, receives {n: {layer: (q, k)}} of the dense runs (for plots).
    keep_methods : if a dict, receives {method: [its Method instance per layer]} (fitted ones included).
    keep_gate_inputs : if a dict, receives {n: {layer: (q_gate, k_gate)}}, the pre-RoPE q, k of the
        dense runs, captured when a method takes gate inputs (SeerAttention); recall uses them.
    keep_values : if a dict, receives {n: {layer: v}} of the dense runs, captured when a method's
        estimator reads V (SEA); recall uses them.

    Returns
    -------
    list of ModelRecord, by length then method.
    """
    import torch

    from .integrations import hf

    params = params or {}
    bad = set(skip) - {"passkey", "recall"}
    if bad:
        raise ValueError(f"skip: unknown part(s) {sorted(bad)}; known: passkey, recall")
    names = list(dict.fromkeys(["dense", *method_names]))
    for n in names:
        _methods.lookup(n)  # unknown names fail before any model work
    for n in fit:
        if n not in names:
            raise ValueError(f"fit: {n!r} is not among the evaluated methods {names}")
        if not _methods.capabilities(n).fittable:
            raise ValueError(f"fit: {n!r} cannot be fitted (capabilities.fittable is False)")
    text = _models.text_ids(tokenizer, max(lengths))
    records: List[ModelRecord] = []
    fitted: Dict[str, Any] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(lengths) * (len(names) + 1), desc="eval", unit="run")
    try:
        for n in lengths:
            ids = text[:, :n]
            # transformers' own sdpa: the reference for perplexity and time
            if getattr(model, "_spattn_state", None) is not None:
                hf.restore(model)
            ppl_sdpa, t_sdpa = _perplexity_and_time(model, ids, torch)
            if bar is not None:
                bar.update(1)
            dense_rec = None
            captured = None
            gate_in: Dict[int, Any] = {}
            values_in: Dict[int, Any] = {}
            for name in names:
                if bar is not None:
                    bar.set_postfix_str(f"n={n} {name}")
                rec = ModelRecord(method=name, n=n, perplexity_sdpa=ppl_sdpa, prefill_sdpa_s=t_sdpa)
                caps = _methods.capabilities(name)
                if not caps.causal or not caps.prefill:
                    rec.skipped = f"{name} cannot run causal prefill (capabilities)"
                    records.append(rec)
                    if bar is not None:
                        bar.update(1)
                    continue
                method_arg: Any = name
                if name in fitted:
                    method_arg = fitted[name]
                hf.use(model, method=method_arg, decode_method=decode_method,
                       min_prefill_tokens=min_prefill_tokens, **(params.get(name, {}) if name not in fitted else {}))
                states = hf.layers(model)
                if keep_methods is not None:
                    keep_methods[name] = [st.method for st in states]
                rec.params = states[0].method.describe_params()
                rec.fitted = name in fitted or caps.needs_fit or name in fit
                if (caps.needs_fit or name in fit) and name not in fitted:
                    fit_ids = _models.text_ids(tokenizer, fit_tokens, held_out=True)
                    fit_kw: Dict[str, Any] = {"steps": fit_steps}
                    if "max_positions" in inspect.signature(states[0].method.fit).parameters:
                        # a learned positional table (SEA) must cover the longest evaluated length,
                        # not only the held-out fit text
                        fit_kw["max_positions"] = max(max(lengths), fit_tokens)
                    hf.fit(model, fit_ids, **fit_kw)
                    fitted[name] = [st.method for st in states]
                    rec.params = states[0].method.describe_params()
                if name == "dense" and "recall" not in skip:
                    want_gate = any(_methods.capabilities(m).gate_inputs for m in names)
                    want_values = any(_methods.capabilities(m).value_inputs for m in names)
                    with hf.capture(model, gate_inputs=want_gate, values=want_values) as store:
                        ppl, t = _perplexity_and_time(model, ids, torch)
                    captured = {i: v[:2] for i, v in store.items()}
                    gate_in = {i: v[2:4] for i, v in store.items() if len(v) >= 4}
                    values_in = {i: v[-1] for i, v in store.items()} if want_values else {}
                    if keep_captured is not None:
                        keep_captured[n] = captured
                    if keep_gate_inputs is not None and gate_in:
                        keep_gate_inputs[n] = gate_in
                    if keep_values is not None and values_in:
                        keep_values[n] = values_in
                else:
                    hf.stats(model, reset=True)
                    ppl, t = _perplexity_and_time(model, ids, torch)
                st = hf.stats(model, reset=True)
                rec.perplexity, rec.prefill_s = ppl, t
                rec.attention_s = float(sum(s["seconds"] for s in st))
                dens = [s["density"] for s in st if s["density"] is not None]
                rec.backend_density = float(np.mean(dens)) if dens else (1.0 if name == "dense" else None)
                calls: Dict[str, int] = {}
                for s in st:
                    for key, c in s["calls"].items():
                        calls[key] = calls.get(key, 0) + c
                rec.calls = calls
                if "recall" not in skip:
                    rec.recall_per_layer, rec.density_per_layer = _real_recall(states, captured,
                                                                               gate_inputs=gate_in,
                                                                               values=values_in)
                    rec.recall = float(np.mean(rec.recall_per_layer))
                    rec.density = float(np.mean(rec.density_per_layer))
                if "passkey" not in skip:
                    rec.passkey_hits, rec.passkey_outputs = _passkey(model, tokenizer, text, n, depths, seed, torch)
                    rec.passkey_trials = len(depths)
                hf.stats(model, reset=True)
                if name == "dense":
                    dense_rec = rec
                if dense_rec is not None:
                    rec.perplexity_dense = dense_rec.perplexity
                    rec.prefill_dense_s = dense_rec.prefill_s
                    rec.attention_dense_s = dense_rec.attention_s
                records.append(rec)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if getattr(model, "_spattn_state", None) is not None:
            hf.restore(model)
    return records


def format_table(records: Sequence[ModelRecord]) -> str:
    """A markdown table of the records (one row per method and length)."""
    head = ("| method | n | perplexity (dense) | passkey | real recall | density | prefill s | "
            "vs dense | vs sdpa | attention s (dense) |")
    lines = [head, "|" + " --- |" * 10]
    for r in records:
        if r.skipped:
            lines.append(f"| {r.method} | {r.n} | skipped: {r.skipped} |" + " |" * 7)
            continue
        def f(x, spec=".3f"):
            return "—" if x is None else format(x, spec)
        pk = f"{r.passkey_hits}/{r.passkey_trials}" if r.passkey_trials else "—"
        lines.append(
            f"| {r.method} | {r.n} | {f(r.perplexity)} ({f(r.perplexity_dense)}) | {pk} | {f(r.recall)} | "
            f"{f(r.density)} | {f(r.prefill_s, '.2f')} | {f(r.prefill_dense_s / r.prefill_s, '.2f')}x | "
            f"{f(r.prefill_sdpa_s / r.prefill_s, '.2f')}x | {f(r.attention_s, '.2f')} ({f(r.attention_dense_s, '.2f')}) |")
    return "\n".join(lines)


def method_columns(records: Sequence[ModelRecord], timing: Optional[Sequence[ModelRecord]] = None) -> str:
    """A markdown table with one row per method and, per length, "perplexity / passkey / real
    recall / density / prefill speedup vs dense" (the README's real-model columns). `timing`
    (records of a quiet timing-only run) supplies the speedups when given."""
    lengths = sorted({r.n for r in records})
    times = {(r.method, r.n): r for r in (timing if timing is not None else records)}
    names = list(dict.fromkeys(r.method for r in records))
    head = "| method | " + " | ".join(f"n={n}: ppl / passkey / recall / density / speedup" for n in lengths) + " |"
    lines = [head, "|" + " --- |" * (1 + len(lengths))]
    for name in names:
        cells = []
        for n in lengths:
            r = next((x for x in records if x.method == name and x.n == n), None)
            if r is None or r.skipped:
                cells.append("skipped" if r is None else f"skipped: {r.skipped}")
                continue
            t = times.get((name, n))
            sp = (f"{t.prefill_dense_s / t.prefill_s:.2f}x" if t is not None and t.prefill_s and t.prefill_dense_s
                  else "—")
            cells.append(f"{r.perplexity:.2f} / {r.passkey_hits}/{r.passkey_trials} / {r.recall:.3f} / "
                         f"{r.density:.3f} / {sp}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_perplexity_density(records: Sequence[ModelRecord], path: str) -> None:
    """PNG: perplexity against real density, one marker per method and length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [r for r in records if not r.skipped]
    lengths = sorted({r.n for r in rows})
    markers = "osD^v<>"
    names = list(dict.fromkeys(r.method for r in rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for li, n in enumerate(lengths):
        for mi, name in enumerate(names):
            for r in rows:
                if r.n == n and r.method == name:
                    ax.scatter(r.density, r.perplexity, marker=markers[li % len(markers)],
                               color=colors[mi % len(colors)], s=50,
                               label=name if li == 0 else None)
        dense = [r for r in rows if r.n == n and r.method == "dense"]
        if dense:
            ax.axhline(dense[0].perplexity, color="gray", lw=0.8, ls=":")
            ax.annotate(f"dense, n={n}", (0.01 + 0.22 * li, dense[0].perplexity), xycoords=ax.get_yaxis_transform(),
                        fontsize=8, color="gray", xytext=(0, 2), textcoords="offset points")
    ax.set_xlabel("density (share of causal pairs computed, real q/k, mean over layers and heads)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_yscale("log")
    ax.set_title("SmolLM2-135M: perplexity against density (markers: " +
                 ", ".join(f"{markers[i % len(markers)]} n={n}" for i, n in enumerate(lengths)) + ")", fontsize=9)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_masks(model_layers_by_method: Dict[str, Any], q, k, path: str, *, layer: int, head: int,
               block: int = 64, q_gate=None, k_gate=None, v=None) -> None:
    """PNG: the exact attention map of one real head (block-summed, log scale) next to each
    method's mask on the same head (``q_gate``, ``k_gate``: pre-RoPE q, k for methods with gate
    inputs; ``v``: the values, for methods whose estimator reads them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import _core
    from .masks import BlockMask

    bmap, _ = _core.block_attention_map(q, k, block, block, True, None, "sum")
    exact = bmap[0, head]
    names = list(model_layers_by_method)
    cols = 1 + len(names)
    fig, axes = plt.subplots(1, cols, figsize=(2.6 * cols, 2.9))
    with np.errstate(divide="ignore"):
        axes[0].imshow(np.log10(np.maximum(exact, 1e-6)), cmap="viridis", interpolation="nearest")
    axes[0].set_title(f"exact (layer {layer}, head {head})", fontsize=8)
    nq = q.shape[2]
    for ax, name in zip(axes[1:], names):
        m = model_layers_by_method[name]
        kw = {"q_gate": q_gate, "k_gate": k_gate} if m.capabilities.gate_inputs else {}
        if m.capabilities.value_inputs and v is not None:
            kw = {"v": v}
        mask = m.estimate(q, k, causal=True, **kw)
        if isinstance(mask, BlockMask):
            img = mask.blocks[0, head].astype(float)
            d = float(mask.density(causal=True)[0, head])
        else:
            dense = mask.to_dense(q_len=nq, causal=True)
            dense = dense[0, min(head, dense.shape[1] - 1)]  # a WindowMask is shared by the heads
            nb = (nq + block - 1) // block
            pad = np.zeros((nb * block, nb * block), bool)
            pad[:dense.shape[0], :dense.shape[1]] = dense
            img = pad.reshape(nb, block, nb, block).mean(axis=(1, 3))
            dens = mask.density(q_len=nq, causal=True)
            d = float(dens[0, min(head, dens.shape[1] - 1)])
        axes_img = ax.imshow(img, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        del axes_img
        ax.set_title(f"{name} (density {d:.2f})", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"SmolLM2-135M, n={nq}: exact attention (log10 block mass) and each method's mask", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["evaluate_model", "ModelRecord", "format_table", "method_columns", "plot_perplexity_density", "plot_masks",
           "passkey_prompt", "DEPTHS"]
