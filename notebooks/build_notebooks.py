"""Writes the notebooks of this folder (kept as a script so notebook diffs stay reviewable).

Run: python notebooks/build_notebooks.py   (tests_py/test_notebooks.py executes the results)
"""

import pathlib

import nbformat as nbf

HERE = pathlib.Path(__file__).resolve().parent
META = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


def write(name, cells):
    nbf.write(nbf.v4.new_notebook(cells=cells, metadata=META), HERE / name)


quickstart = [
    nbf.v4.new_markdown_cell("# spattn quickstart\n\nA synthetic workload with planted attention "
                             "structures, masks from the registered methods, their pictures, and the demo table."),
    nbf.v4.new_code_cell("import numpy as np\nimport matplotlib\nmatplotlib.use('Agg')\n"
                         "import matplotlib.pyplot as plt\nimport spattn\n"
                         "print(spattn.__version__, spattn.num_threads(), 'threads;', spattn.methods.available())"),
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
    nbf.v4.new_markdown_cell("## The demo table (`python -m spattn demo`)"),
    nbf.v4.new_code_cell("from spattn import compare\nrows = compare.demo(progress=False)\nprint(compare.format_table(rows))"),
]

flexprefill = [
    nbf.v4.new_markdown_cell(
        "# FlexPrefill: per-head pattern choice\n\nLai et al., ICLR 2025. For each head the sqrt "
        "Jensen-Shannon distance between the pooled estimate and the last queries' true block "
        "distribution picks *query-aware* (below `tau`) or *vertical-slash* blocks."),
    nbf.v4.new_code_cell(
        "import numpy as np\nimport matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nimport spattn\n"
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

write("quickstart.ipynb", quickstart)
write("flexprefill.ipynb", flexprefill)
