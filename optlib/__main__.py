"""Command line: python -m optlib run | summary | report | export-best | example.

  python -m optlib run --target cpu [--notebooks 00,01] [--params FILE] [--force [00,03]] [--dry-run]
  python -m optlib plan --params FILE [--notebooks 00,01] [--budget-minutes N [--write FILE]]   # what will run, how long
  python -m optlib run --params FILE --budget-minutes N   # the plan cut to fit N minutes first, then the run
  python -m optlib run --targets cpu,edge --cluster local|ADDRESS   # each target a Ray task (core.cluster)
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


def _force(value: str | None) -> set[str] | bool:
    """--force alone: every selected chapter; --force 00,03: those."""
    if value is None:
        return False
    return True if value == "*" else {s.strip() for s in value.split(",") if s.strip()}


def print_runs(runs, seconds: float, label: str = "") -> None:
    print(f"\n[optlib] summary{label} ({seconds:.0f} s):")
    for r in runs:
        note = r.error or ("; ".join(r.why) if r.status == "skipped" else "")
        print(f"  {r.status:7s} {r.notebook:28s} {r.seconds:7.1f} s" + (f"  {note}" if note else ""))


def cmd_run(args) -> int:
    from .core.pipeline import resolve_params, run_notebooks
    from .core.runstate import LockedError

    selection = [s.strip() for s in args.notebooks.split(",")] if args.notebooks else None
    if args.cluster or args.targets:
        from .core.cluster import ClusterError, run_targets

        if not (args.cluster and args.targets):
            raise ValueError("--targets and --cluster go together "
                             "(--cluster local runs a Ray instance on this machine)")
        try:
            results = run_targets([t.strip() for t in args.targets.split(",") if t.strip()], args.cluster,
                                  selection, _force(args.force))
        except ClusterError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        failed = []
        for res in results:
            print_runs(res.runs, res.seconds, f" of target {res.target!r} on {res.node}")
            failed += [f"{res.target}/{r.notebook}" for r in res.runs if r.status == "failed"]
        if failed:
            print(f"[optlib] {len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0
    params, path = resolve_params(args.target, args.params)
    if args.params and args.target_given:
        params.target = args.target
    print(f"[optlib] target {params.target!r} from {path}; outputs in {paths.target_dir(params.target)}")
    if args.dry_run:
        _chapters_to_run(params, args)
        return 0
    if args.budget_minutes is not None:
        # the plan first: cut what can be cut to fit, keep the fitted params beside the outputs, run those
        from .measurement.plan import probe

        running = _chapters_to_run(params, args, show=False)  # the run lists them itself
        if running:
            fitted = paths.target_dir(params.target) / "params.fitted.yaml"
            params, table, p = _fit(params, path, args.budget_minutes, running, probe(params), str(fitted))
            _print_plan(params, p, table)
            print(f"[optlib] estimate {float(table['total_min'].sum()):.0f} min; running with the fitted params")
    t0 = time.perf_counter()
    try:
        runs = run_notebooks(params, selection, _force(args.force))
    except LockedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_runs(runs, time.perf_counter() - t0)
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        print(f"[optlib] {len(failed)} notebook(s) failed: {', '.join(r.notebook for r in failed)}", file=sys.stderr)
        return 1
    return 0


def _fit(params, path: str, budget_minutes: float, running: list[str], probe_result, write: str | None):
    """Params cut to fit `budget_minutes` for the chapters `running` (measurement.plan.fit), the cuts
    printed, and written to `write` with the cuts in the file's first lines. Returns the fitted
    params, their estimate (a table per chapter) and the probe with their image counts."""
    import dataclasses
    from datetime import date

    import yaml

    from .core.io import write_text_atomic
    from .measurement.plan import describe_fit, estimate, fit, image_counts

    before = float(estimate(params, probe_result, running)["total_min"].sum())
    params, cuts, table = fit(params, probe_result, budget_minutes, running)
    print(describe_fit(budget_minutes, before, cuts, float(table["total_min"].sum())))
    if write:
        note = "".join(f"#   {c['key']}: {c['from']} -> {c['to']} ({c['costs']})\n" for c in cuts) or "#   nothing\n"
        out = write_text_atomic(f"# {path} fitted to {budget_minutes:g} min by `optlib` on {date.today()}; "
                                f"cut:\n{note}" + yaml.safe_dump(params.to_dict(), sort_keys=False), write)
        print(f"[optlib] params that fit written to {out}")
    return params, table, dataclasses.replace(probe_result, images=image_counts(params))


def _chapters_to_run(params, args, show: bool = True) -> list[str]:
    """What `run` would do with these params (printed when `show`), and the chapters it would run."""
    from .core.pipeline import list_notebooks, plan

    selection = [s.strip() for s in args.notebooks.split(",")] if args.notebooks else None
    todo = plan(params, list_notebooks(selection), _force(args.force))
    for nb, why in todo if show else ():
        print(f"  {'run' if why else 'skip':4s} {nb.stem:28s} {'; '.join(why) if why else 'unchanged'}")
    return [nb.stem for nb, why in todo if why]


def _print_plan(params, p, table) -> None:
    """The estimate per chapter and the plan in words (measurement.plan.describe)."""
    import pandas as pd

    from .measurement.plan import describe

    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.1f}".format):
        print(table)
    print(describe(params, p, table))


def cmd_plan(args) -> int:
    """What `run` would do with these params, and how long each chapter should take: a probe of the
    model in eager FP32 priced by measurement.plan's cost model."""
    from .core.pipeline import resolve_params
    from .measurement.plan import estimate, probe

    if args.write and args.budget_minutes is None:
        raise SystemExit("optlib plan: --write FILE writes the params fitted to --budget-minutes; give both")
    params, path = resolve_params(args.target, args.params)
    print(f"[optlib] plan for target {params.target!r} from {path}")
    running = _chapters_to_run(params, args)
    if not running:
        return 0
    p = probe(params)
    table = estimate(params, p, running)
    if args.budget_minutes is not None:
        params, table, p = _fit(params, path, args.budget_minutes, running, p, args.write)
        if args.write:
            print(f"[optlib] run them: `optlib run --params {args.write}`")
    _print_plan(params, p, table)
    return 0


def cmd_summary(args) -> int:
    from .results.report import summary

    print(summary(_target(args), args.format))
    return 0


def cmd_report(args) -> int:
    from .results.report import render_html

    out = render_html(_target(args))
    print(f"[optlib] report written to {out}")
    from .results.browser import print_pdf

    try:  # the same page as a PDF, where a Chromium is installed; the HTML stands without it
        print(f"[optlib] PDF written to {print_pdf(out, out.with_suffix('.pdf'))}")
    except Exception as e:  # noqa: BLE001 - no browser, or it failed: say so in one line
        print(f"[optlib] no PDF of the report: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
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

    if args.xray:
        from .workload.example import build_xray_example

        params = build_xray_example(args.out, image_size=args.image_size or 224, steps=args.steps)
    else:
        params = build_example(args.out, image_size=args.image_size or 64, epochs=args.epochs)
    print(f"[optlib] example written; run it with: python -m optlib run --params {params}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("example", help="build the own-model example (binary digits, one sigmoid logit, Lightning .ckpt)")
    ex.add_argument("--out", required=True, help="folder to write data/, binary-digits.ckpt and params.yaml into")
    ex.add_argument("--image-size", type=int, default=None, help="64 (digits) or 224 (--xray)")
    ex.add_argument("--epochs", type=int, default=5)
    ex.add_argument("--xray", action="store_true",
                    help="the user's case at its real size: 224x224 phantom PNGs (624 test, 2,000 training), a "
                         "ResNet50 with an MLP head and one logit (Lightning .ckpt), params/example-xray.yaml pointed at them")
    ex.add_argument("--steps", type=int, default=60, help="--xray: training steps of batch 32 for its checkpoint")
    ex.set_defaults(fn=cmd_example)
    for name, fn in (("run", cmd_run), ("plan", cmd_plan), ("summary", cmd_summary), ("report", cmd_report),
                     ("export-best", cmd_export_best)):
        p = sub.add_parser(name)
        p.add_argument("--target", default=None, help="params/<target>.yaml and outputs/<target>/ (default cpu)")
        p.add_argument("--params", default=None, help="a params YAML file (its `target` names the outputs)")
        if name in ("run", "plan"):
            p.add_argument("--notebooks", default=None, help="comma-separated numbers or names, e.g. 00,01")
            p.add_argument("--force", nargs="?", const="*", default=None, metavar="NOTEBOOKS",
                           help="rerun chapters whose inputs are unchanged: all selected, or those named (00,03)")
            p.add_argument("--budget-minutes", type=float, default=None,
                           help="cut what can be cut (SHRINKS in optlib/measurement/plan.py) until the estimate fits"
                           + ("" if name == "plan" else "; run with those params (saved as "
                                                          "outputs/<target>/params.fitted.yaml)"))
        if name == "plan":
            p.add_argument("--write", default=None, metavar="FILE", help="with --budget-minutes: the params that fit")
        if name == "run":
            p.add_argument("--dry-run", action="store_true", help="say which chapters would run and why; run none")
            p.add_argument("--targets", default=None,
                           help="with --cluster: comma-separated targets (names or params files), each a Ray task")
            p.add_argument("--cluster", default=None,
                           help="Ray cluster address, or `local` for a Ray instance on this machine (extra `cluster`)")
        if name == "summary":
            p.add_argument("--format", choices=("table", "json", "csv"), default="table")
        p.set_defaults(fn=fn)
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # a log file (nohup, tee) shows the plan before the run, not at exit
        sys.stdout.reconfigure(line_buffering=True)
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
