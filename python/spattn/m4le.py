"""M4LE-style long-context tasks at the attention level.

M4LE (Kwan et al., ACL 2024, arXiv 2310.19240; KwanWaiChung/M4LE ``data/create_classification_data.py``)
builds long contexts by packing many short items, each prefixed by a random id, puts the gold
item(s) at the item positions {0, 4, 9, 14, ...} to spread them over depths, and asks about one
item named by its id (explicit single-span), one item found by meaning (semantic single-span),
all items matching an id-level or a semantic condition (multiple-span), or the whole context
(global). Here the same construction is made on q / k / v: a context of ``n`` tokens cut into
items of ``item_tokens`` tokens over the structured workload (:func:`spattn.synthetic.structured_qkv`),
each item's first ``id_tokens`` keys carrying its id direction (explicit) and all its keys a
weaker topic direction (semantic), and the last ``question_tokens`` queries asking for the gold
direction. A method is scored on the question rows by

* ``gold_recall``: the share of the gold keys its mask keeps (mean over question rows and heads;
  for the global task, the share of the exact softmax mass kept),
* ``rel_error``: ||out - exact|| / ||exact|| of its output (its own call, whatever it computes),
* ``lse_gap``: mean of exact lse - the lse of the mask's keys (= -log of the mass kept, >= 0),

per length bucket. Deterministic (seeded), O(N) memory: gold keys are counted with the mask's
kernel (zero queries make every visible key weigh the same; values are the gold indicator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from . import methods as _methods
from . import synthetic
from .kernels import attention, sparse_attention
from .masks import BlockMask

ABILITIES = ("explicit_single", "semantic_single", "explicit_multiple", "semantic_multiple", "global")
DEPTHS = (0, 4, 9, 14, 19, 24, 29, 34, 39, 44, 49, 54, 59)  # M4LE's gold item positions


@dataclass
class M4LETask:
    """One packed context: q (B, Hq, N, D), k / v (B, Hkv, N, D), the gold key positions, the
    question rows (the last ``question_tokens`` queries) and the gold items."""
    ability: str
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    gold: np.ndarray          # int positions of the gold keys (empty for "global")
    question: np.ndarray      # query rows of the question
    gold_items: List[int] = field(default_factory=list)
    item_tokens: int = 64


def make_task(ability: str, n: int, *, item_tokens: int = 64, id_tokens: int = 4, question_tokens: int = 32,
              n_gold: int = 3, Hq: int = 4, Hkv: int = 2, D: int = 64, seed: int = 0,
              strength: float = 1.0) -> M4LETask:
    """Build one task of `ability` over `n` tokens (see the module docstring).

    Parameters
    ----------
    ability : one of ABILITIES
    n : int
        Context length in tokens (question included).
    item_tokens, id_tokens : int
        Tokens per item and, among them, the leading id tokens.
    question_tokens : int
        The last rows, the question.
    n_gold : int
        Gold items of the multiple-span tasks (at M4LE's positions 0, 4, 9, ...).
    seed : int
        Background workload, directions and the single-span gold depth (M4LE's item positions 4,
        9, 14, ... in turn; position 0, the attention sink, is left to the multiple-span tasks).
    strength : float
        Logit gain of the planted id match relative to the workload's planted heads.
    """
    if ability not in ABILITIES:
        raise ValueError(f"ability must be one of {ABILITIES}, got {ability!r}")
    items = (n - question_tokens) // item_tokens
    if items < 2 or id_tokens > item_tokens:
        raise ValueError(f"n={n} holds {items} items of {item_tokens} tokens before a {question_tokens}-token "
                         f"question; at least 2 are needed (and id_tokens <= item_tokens)")
    w = synthetic.structured_qkv(B=1, Hq=Hq, Hkv=Hkv, N=n, D=D, seed=seed)
    q, k, v = w.q.copy(), w.k.copy(), w.v.copy()
    rng = np.random.default_rng((seed, 4242))
    gain = strength * (np.log(n) + 4.0) * np.sqrt(D)  # q . k of a planted match (as the workload's heads)
    a = np.sqrt(gain)
    dirs = rng.standard_normal((items + 8, D))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    starts = np.arange(items) * item_tokens
    question = np.arange(n - question_tokens, n)
    depths = [d for d in DEPTHS if d < items]
    gold_items: List[int] = []
    gold: List[int] = []
    if ability in ("explicit_single", "semantic_single"):  # M4LE's positions after the first, by seed
        gold_items = [depths[1 + seed % (len(depths) - 1)] if len(depths) > 1 else depths[0]]
    elif ability in ("explicit_multiple", "semantic_multiple"):
        gold_items = depths[:max(1, min(n_gold, len(depths)))]
    if ability.startswith("explicit"):
        # every item carries its own id on its id tokens; the multiple-span gold items share one
        # category direction on theirs (the condition the question names)
        for i, s in enumerate(starts):
            d = dirs[-1] if (ability == "explicit_multiple" and i in gold_items) else dirs[i]
            k[:, :, s:s + id_tokens] += a * d
        target = dirs[gold_items[0]] if ability == "explicit_single" else dirs[-1]
        gold = [int(s) + j for i, s in enumerate(starts) if i in gold_items for j in range(id_tokens)]
        q[:, :, question] += a * target
    elif ability.startswith("semantic"):
        # a weaker topic on every token of an item (meaning spread over the item): the gold items'
        # topic is the one the question asks about
        topics = rng.integers(0, 7, items)
        for i in gold_items:
            topics[i] = 7
        for i, s in enumerate(starts):
            k[:, :, s:s + item_tokens] += 0.5 * a * dirs[items + int(topics[i])]
        gold = [int(s) + j for i, s in enumerate(starts) if i in gold_items for j in range(item_tokens)]
        q[:, :, question] += 0.5 * a * dirs[items + 7]
    else:  # global: the question reads the whole context (a query near the mean key)
        q[:, :, question] = np.repeat(k.mean(axis=2, keepdims=True), Hq // Hkv, axis=1) * 0.5
    return M4LETask(ability, q.astype(np.float32), k.astype(np.float32), v, np.asarray(gold, dtype=np.int64),
                    question, gold_items, item_tokens)


def _mask_of(m, task: M4LETask):
    """The method's mask of this call (own_output methods: the mask their call used)."""
    if m.capabilities.own_output or m.capabilities.value_inputs:
        out = m(task.q, task.k, task.v, causal=True)
        return m.last_info["mask"], out
    mask = m.estimate(task.q, task.k, causal=True)
    return mask, m(task.q, task.k, task.v, causal=True)


def score(m, task: M4LETask) -> Dict[str, Any]:
    """gold_recall, rel_error and lse_gap of method `m` (an instance) on `task`'s question rows."""
    q, k, v = task.q, task.k, task.v
    mask, out = _mask_of(m, task)
    exact, lse = attention(q, k, v, causal=True, return_lse=True)
    rows = task.question
    err = float(np.linalg.norm((out - exact)[:, :, rows]) / np.linalg.norm(exact[:, :, rows]))
    _, lse_m = sparse_attention(q, k, v, mask, causal=True, return_lse=True)
    gap = float(np.mean((lse - lse_m)[:, :, rows]))
    if task.ability == "global":  # the mass kept: exp(lse of the mask's keys - exact lse)
        gold_recall = float(np.mean(np.exp(-(lse - lse_m)[:, :, rows])))
    else:
        ind = np.zeros(k.shape[:3] + (8,), dtype=np.float32)
        ind[:, :, task.gold, :] = 1.0
        zq = np.zeros_like(q)
        share, lse0 = sparse_attention(zq, k, ind, mask, causal=True, return_lse=True)
        kept = share[..., 0] * np.exp(lse0)  # gold keys visible in the mask, per row
        gold_recall = float(np.mean(kept[:, :, rows] / len(task.gold)))
    density = mask.density(causal=True) if isinstance(mask, BlockMask) else mask.density(q_len=q.shape[2], causal=True)
    return {"gold_recall": gold_recall, "rel_error": err, "lse_gap": gap, "density": float(np.mean(density))}


def evaluate(method_names: Optional[Iterable[str]] = None, lengths: Sequence[int] = (2048, 4096, 8192),
             abilities: Sequence[str] = ABILITIES, *, seeds: Sequence[int] = (0, 1, 2),
             params: Optional[Dict[str, Dict]] = None, progress: bool = False,
             **task_kw: Any) -> List[Dict[str, Any]]:
    """Score methods on every (ability, length, seed) task. `method_names` default: every
    registered method that runs causal prefill (Nq == Nk) and is not an exact-attention
    reference. Returns one record per (method, ability, n), the metrics averaged over `seeds`
    (other backgrounds and single-span gold depths)."""
    return _run(method_names, lengths, abilities, params, progress, "m4le tasks", False,
                lambda ability, n: [make_task(ability, n, seed=s, **task_kw) for s in seeds])


def _run(method_names, lengths, abilities, params, progress, desc, skip_fit, tasks_of) -> List[Dict[str, Any]]:
    """Score every method on the tasks of every (ability, length): one record each, the metrics
    averaged over the tasks. Default methods: every registered one that runs causal prefill and
    is not an exact-attention reference (nor needs a trained state, with `skip_fit`)."""
    params = params or {}
    if method_names is None:
        caps = {n: _methods.get(n).capabilities for n in _methods.available()}
        method_names = [n for n, c in caps.items() if c.causal and c.prefill and not c.exact_reference_only
                        and not (skip_fit and c.needs_fit)]
    names = list(method_names)
    recs: List[Dict[str, Any]] = []
    it = [(a, n) for n in lengths for a in abilities]
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=desc)
    for ability, n in it:
        tasks = tasks_of(ability, int(n))
        for name in names:
            runs = [score(_methods.get(name, **params.get(name, {})), t) for t in tasks]
            recs.append({"method": name, "ability": ability, "n": int(n),
                         **{key: float(np.mean([r[key] for r in runs])) for key in runs[0]}})
    return recs


MODEL_ABILITIES = ("explicit_single", "explicit_multiple", "global")
_CATEGORIES = ("apple", "river", "violin", "granite", "falcon", "tulip", "comet", "marble")


def model_tasks(model, tokenizer, ability: str, n: int, *, item_words: int = 40, question_tokens: Optional[int] = None,
                n_gold: int = 3, seed: int = 0, layers: Optional[Sequence[int]] = None) -> List[M4LETask]:
    """The M4LE construction on a real model: a prompt of about `n` tokens packed from items
    ``"ID 3FA2C1 (category: river): <item_words words of the licence texts>"`` with M4LE's random
    6-hex ids, gold item(s) at the item positions {4, 9, 14, ...} (single: by seed) or {0, 4, 9}
    (multiple: the gold items share a category no other item has), then a question: the category of
    one id (explicit single-span), the ids of every item of a category (explicit multiple-span) or a
    summary of the whole text (global). The model runs once with exact attention (spattn backend,
    ``dense``) while each layer's q, k, v are captured; returns one task per layer (of `layers`,
    default all): gold = the gold items' token positions, question = the question's rows. The model
    is left on the attention it had before spattn (a spattn configuration on it is removed)."""
    from . import models as _models
    from .integrations import hf

    if ability not in MODEL_ABILITIES:
        raise ValueError(f"ability must be one of {MODEL_ABILITIES} on a model, got {ability!r}")
    torch, _ = hf._require_transformers()
    rng = np.random.default_rng((seed, 77))
    words = _models.long_text().split()
    enc = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    questions = {
        "explicit_single": "\nQuestion: what is the category of the item with ID {id}? Answer:",
        "explicit_multiple": "\nQuestion: list the IDs of all items of category {cat}. Answer:",
        "global": "\nQuestion: summarise all the items above in one sentence. Answer:",
    }
    pieces, spans, ids_, cats = [], [], [], []
    total, w0 = 0, int(rng.integers(0, 1000))
    while True:
        hid = "".join(rng.choice(list("0123456789ABCDEF"), 6))
        cat = _CATEGORIES[int(rng.integers(1, len(_CATEGORIES)))]
        body = " ".join(words[(w0 + len(pieces) * item_words + i) % len(words)] for i in range(item_words))
        toks = enc(f"ID {hid} (category: {cat}): {body}\n")
        if total + len(toks) > n - 40:
            break
        pieces.append(toks)
        spans.append((total, total + len(toks)))
        ids_.append(hid)
        cats.append(cat)
        total += len(toks)
    items = len(pieces)
    depths = [d for d in DEPTHS if d < items]
    if ability == "explicit_single":
        gold_items = [depths[1 + seed % (len(depths) - 1)] if len(depths) > 1 else 0]
        question = questions[ability].format(id=ids_[gold_items[0]])
    elif ability == "explicit_multiple":
        gold_items = depths[:max(1, min(n_gold, len(depths)))]
        for i in gold_items:  # the gold category, on the gold items only
            pieces[i] = enc(tokenizer.decode(pieces[i]).replace(f"category: {cats[i]}", f"category: {_CATEGORIES[0]}"))
        total, spans = 0, []
        for p in pieces:
            spans.append((total, total + len(p)))
            total += len(p)
        question = questions[ability].format(cat=_CATEGORIES[0])
    else:
        gold_items = []
        question = questions[ability]
    qtoks = enc(question)
    ids = [t for p in pieces for t in p] + qtoks
    input_ids = torch.tensor([ids])
    gold = np.asarray([j for i in gold_items for j in range(*spans[i])], dtype=np.int64)
    qrows = np.arange(len(ids) - len(qtoks), len(ids))
    if question_tokens is not None:
        qrows = qrows[-int(question_tokens):]
    hf.use(model, "dense")
    try:
        with hf.capture(model, values=True) as store, torch.no_grad():
            model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
    finally:
        hf.restore(model)
    todo = sorted(store) if layers is None else [int(i) for i in layers]
    return [M4LETask(ability, np.ascontiguousarray(store[i][0]), np.ascontiguousarray(store[i][1]),
                     np.ascontiguousarray(store[i][-1]), gold, qrows, list(gold_items)) for i in todo]


def evaluate_model(model, tokenizer, method_names: Optional[Iterable[str]] = None,
                   lengths: Sequence[int] = (2048, 4096, 8192), abilities: Sequence[str] = MODEL_ABILITIES, *,
                   layers: Optional[Sequence[int]] = None, seed: int = 0, params: Optional[Dict[str, Dict]] = None,
                   progress: bool = False) -> List[Dict[str, Any]]:
    """:func:`evaluate` on a real model's captured attention (:func:`model_tasks`): one record per
    (method, ability, n), the metrics averaged over the chosen layers and their heads."""
    return _run(method_names, lengths, abilities, params, progress, "m4le model tasks", True,
                lambda ability, n: model_tasks(model, tokenizer, ability, n, seed=seed, layers=layers))


def table(records: List[Dict[str, Any]], metric: str = "gold_recall") -> str:
    """Markdown: one row per method, one column per length, each cell the metric averaged over
    the abilities (and the global task's mass recall), then the per-ability means."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    lengths = sorted({r["n"] for r in records})
    abilities = [a for a in ABILITIES if any(r["ability"] == a for r in records)]
    head = "| method | " + " | ".join(f"{n // 1024}k" for n in lengths) + " | " + \
        " | ".join(a.replace("_", " ") for a in abilities) + " |"
    lines = [head, "|" + " --- |" * (1 + len(lengths) + len(abilities))]
    for m in methods:
        rs = [r for r in records if r["method"] == m]
        by_n = [np.mean([r[metric] for r in rs if r["n"] == n]) for n in lengths]
        by_a = [np.mean([r[metric] for r in rs if r["ability"] == a]) for a in abilities]
        lines.append(f"| `{m}` | " + " | ".join(f"{x:.3f}" for x in by_n) + " | " +
                     " | ".join(f"{x:.3f}" for x in by_a) + " |")
    return "\n".join(lines)


__all__ = ["ABILITIES", "MODEL_ABILITIES", "M4LETask", "make_task", "score", "evaluate", "model_tasks",
           "evaluate_model", "table"]
