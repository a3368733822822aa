"""Command line: python -m optlib run | summary | report | export-best | example.

  python -m optlib run --target cpu [--notebooks 00,01] [--params FILE]
  python -m optlib summary --target cpu --format table|json|csv
  python -m optlib report --target cpu
  python -m optlib export-best --target cpu   # outputs/cpu/deploy/: the chosen model, runnable without optlib
  python -m optlib example --out DIR   # a single-logit custom-head Lightning checkpoint, its data and params
"""
from __future__ import annotations

import argparse
import sys
import time

from .core import paths
from .core.params import ParamsError


def _target(args) -> str:
    """--target when given, else the `target` of --params, else cpu."""
    if args.params and not args.target_given:
        from .core.params import load_params

        return load_params(args.params).target
    return args.target


def cmd_run(args) -> int:
    from .core.pipeline import resolve_params, run_notebooks

    params, path = resolve_params(args.target, args.params)
    if args.params and args.target_given:
        params.target = args.target
    selection = [s.strip() for s in args.notebooks.split(",")] if args.notebooks else None
    print(f"[optlib] target {params.target!r} from {path}; outputs in {paths.target_dir(params.target)}")
    t0 = time.perf_counter()
    runs = run_notebooks(params, selection)
    print(f"\n[optlib] summary ({time.perf_counter() - t0:.0f} s):")
    for r in runs:
        print(f"  {r.status:6s} {r.notebook:28s} {r.seconds:7.1f} s" + (f"  {r.error}" if r.error else ""))
    failed = [r for r in runs if r.status != "ok"]
    if failed:
        print(f"[optlib] {len(failed)} notebook(s) failed: {', '.join(r.notebook for r in failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_summary(args) -> int:
    from .results.report import summary

    print(summary(_target(args), args.format))
    return 0


def cmd_report(args) -> int:
    from .results.report import render_html

    out = render_html(_target(args))
    print(f"[optlib] report written to {out}")
    return 0


def cmd_export_best(args) -> int:
    from .core.pipeline import resolve_params
    from .results.deploy import DeployError, export_best

    params, _ = resolve_params(args.target, args.params)
    if args.params and args.target_given:
        params.target = args.target
    try:
        out, _, _ = export_best(params)
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[optlib] deploy folder written to {out} (try: python {out / 'predict.py'} --check)")
    return 0


def cmd_example(args) -> int:
    from .workload.example import build_example

    params = build_example(args.out, image_size=args.image_size, epochs=args.epochs)
    print(f"[optlib] example written; run it with: python -m optlib run --params {params}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("example", help="build the own-model example (binary digits, one sigmoid logit, Lightning .ckpt)")
    ex.add_argument("--out", required=True, help="folder to write data/, binary-digits.ckpt and params.yaml into")
    ex.add_argument("--image-size", type=int, default=64)
    ex.add_argument("--epochs", type=int, default=5)
    ex.set_defaults(fn=cmd_example)
    for name, fn in (("run", cmd_run), ("summary", cmd_summary), ("report", cmd_report),
                     ("export-best", cmd_export_best)):
        p = sub.add_parser(name)
        p.add_argument("--target", default=None, help="params/<target>.yaml and outputs/<target>/ (default cpu)")
        p.add_argument("--params", default=None, help="a params YAML file (its `target` names the outputs)")
        if name == "run":
            p.add_argument("--notebooks", default=None, help="comma-separated numbers or names, e.g. 00,01")
        if name == "summary":
            p.add_argument("--format", choices=("table", "json", "csv"), default="table")
        p.set_defaults(fn=fn)
    args = parser.parse_args(argv)
    args.target_given = getattr(args, "target", None) is not None
    if not args.target_given:
        args.target = "cpu"
    try:
        return args.fn(args)
    except (ParamsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
