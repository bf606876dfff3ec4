"""Command line: ``python -m spattn demo | compare | bench``.

demo     every registered method on the embedded synthetic workload (under a minute here)
compare  chosen methods and parameters on a synthetic workload of chosen shape
bench    kernel sweep: sequence length, head dim, causal, GQA; GFLOP/s, ratio to torch SDPA
         and block-sparse speedups; --methods adds end-to-end method records (see spattn.bench)

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
    args = p.parse_args(argv)

    try:
        params = parse_method_params(args.set) if args.cmd in ("compare", "bench") else {}
    except ValueError as exc:
        p.error(str(exc))
    print(f"spattn {spattn.__version__}, {spattn.num_threads()} threads (OMP_NUM_THREADS)")
    if args.cmd == "demo":
        w = DEMO_WORKLOAD
        print(f"workload: synthetic structured heads, B={w['B']} Hq={w['Hq']} Hkv={w['Hkv']} "
              f"N={w['N']} D={w['D']}, causal")
        records = demo()
    elif args.cmd == "compare":
        w = spattn.synthetic.structured_qkv(B=args.batch, Hq=args.hq, Hkv=args.hkv, N=args.n,
                                            D=args.d, seed=args.seed)
        print(f"workload: B={args.batch} Hq={args.hq} Hkv={args.hkv} N={args.n} D={args.d}, "
              f"{'non-causal' if args.non_causal else 'causal'}")
        records = evaluate(args.methods, w, causal=not args.non_causal, params=params,
                            repeats=args.repeats)
    else:
        return bench.run(args)
    print(format_table(records))
    if getattr(args, "json", None):
        with open(args.json, "w") as fh:
            json.dump(records_as_dicts(records), fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
