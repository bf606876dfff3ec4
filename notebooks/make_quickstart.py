"""Writes notebooks/quickstart.ipynb (kept as a script so the notebook diff stays reviewable).

Run: python notebooks/make_quickstart.py
"""

import nbformat as nbf

cells = [
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
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
nbf.write(nb, __file__.replace("make_quickstart.py", "quickstart.ipynb"))
