"""Command line: ``python -m spattn demo | compare | bench``.

demo     every registered method on the embedded synthetic workload (under a minute here)
compare  chosen methods and parameters on a synthetic workload of chosen shape
bench    kernel sweep: sequence length, head dim, causal, GQA; GFLOP/s, ratio to torch SDPA
         and block-sparse speedups (see spattn.bench)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional


def _parse_sets(items: List[str]) -> Dict[str, Dict[str, Any]]:
    """--set method.param=value (value parsed as JSON when possible)."""
    out: Dict[str, Dict[str, Any]] = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise SystemExit(f"--set expects method.param=value, got {item!r}")
        key, val = item.split("=", 1)
        method, param = key.split(".", 1)
        try:
            parsed = json.loads(val)
        except json.JSONDecodeError:
            parsed = val
        out.setdefault(method, {})[param] = parsed
    return out


def main(argv: Optional[List[str]] = None) -> int:
    import spattn
    from spattn import bench, compare

    p = argparse.ArgumentParser(prog="python -m spattn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="every method on the embedded workload")
    d.add_argument("--json", help="also write the rows to this JSON file")
    c = sub.add_parser("compare", help="chosen methods on a synthetic workload")
    c.add_argument("--methods", nargs="*", help=f"default: all of {spattn.methods.available()}")
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

    print(f"spattn {spattn.__version__}, {spattn.num_threads()} threads (OMP_NUM_THREADS)")
    if args.cmd == "demo":
        w = compare.DEMO_WORKLOAD
        print(f"workload: synthetic structured heads, B={w['B']} Hq={w['Hq']} Hkv={w['Hkv']} "
              f"N={w['N']} D={w['D']}, causal")
        rows = compare.demo()
    elif args.cmd == "compare":
        w = spattn.synthetic.structured_qkv(B=args.batch, Hq=args.hq, Hkv=args.hkv, N=args.n,
                                            D=args.d, seed=args.seed)
        print(f"workload: B={args.batch} Hq={args.hq} Hkv={args.hkv} N={args.n} D={args.d}, "
              f"{'non-causal' if args.non_causal else 'causal'}")
        rows = compare.compare_methods(w.q, w.k, w.v, causal=not args.non_causal, names=args.methods,
                                       params=_parse_sets(args.set), repeats=args.repeats)
    else:
        return bench.run(args)
    print(compare.format_table(rows))
    if getattr(args, "json", None):
        with open(args.json, "w") as fh:
            json.dump(compare.rows_as_dicts(rows), fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
