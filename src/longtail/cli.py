"""The `longtail` command: train, evaluate, report. User mistakes end in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import LongtailError


def _train(args: argparse.Namespace) -> None:
    from .config import load_config
    from .engine import fit

    overrides = list(args.overrides) + (["train.resume=true"] if args.resume else [])
    cfg = load_config(args.config, overrides)
    run_dir = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    fit(cfg, run_dir, allow_config_change=args.allow_config_change)


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate_checkpoint
    from .metrics import format_table

    metrics = evaluate_checkpoint(args.run, split=args.split, overrides=args.overrides)
    print(format_table(metrics, f"{metrics['split']} metrics of {metrics['checkpoint_path']}:"))


def _report(args: argparse.Namespace) -> None:
    from .report import write_report
    from .report.tables import markdown

    report = write_report(args.runs, args.out)
    for path in report.skipped:
        print(f"longtail: skipped unfinished run '{path}' (no metrics.json)", file=sys.stderr)
    print(markdown(report.tables))
    counts = {"run": len(report.runs), "dataset": len(report.tables), "figure": sum(f.suffix == ".png" for f in report.files)}
    print(f"wrote {Path(args.out) / 'index.html'}: " + ", ".join(f"{n} {w}{'s' if n != 1 else ''}" for w, n in counts.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longtail", description="Long-tailed image classification.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a YAML config")
    train.add_argument("config", help="YAML config, e.g. configs/fmnist_lt/ce_imba100.yaml")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=5")
    train.add_argument("--out", help="run directory (default: runs/<config name>)")
    train.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt")
    train.add_argument("--allow-config-change", action="store_true", help="resume even if the config changed")
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a run directory or checkpoint")
    evaluate.add_argument("run", help="run directory (uses checkpoints/best.pt) or a .pt checkpoint")
    evaluate.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. dataset.root=/data")
    evaluate.add_argument("--split", choices=["val", "test"], default="test")
    evaluate.set_defaults(func=_evaluate)

    report = commands.add_parser("report", help="tables and figures (markdown, CSV, PNG, HTML) from run directories")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders searched for them")
    report.add_argument("--out", required=True, metavar="REPORT_DIR", help="folder for results.md, results.csv, figures/, index.html")
    report.set_defaults(func=_report)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    # overrides may come after options too (`train CFG --out DIR train.epochs=5`)
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        args.func(args)
    except LongtailError as exc:
        if args.debug:
            raise
        print(f"longtail: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longtail: interrupted; the last checkpoint written is intact, resume with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
