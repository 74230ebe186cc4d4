"""The `longtail` command: train, evaluate, tune, shift, predict, export, report, sweep. Each command parses its
arguments, calls the Python API (longtail.api: the same functions a notebook calls) and prints; the API prints
what the command shows when called with progress=True. User mistakes end in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import LongtailError
from .parser import build_parser


def _train(args: argparse.Namespace) -> None:
    from .api import train

    train(args.config, *args.overrides, out=args.out, progress=True, resume=args.resume,
          allow_config_change=args.allow_config_change)


def _inspect(args: argparse.Namespace) -> None:
    from .config import load_config
    from .diagnostics import inspect_dataset

    cfg = load_config(args.config, args.overrides)
    inspect_dataset(cfg, args.out or Path("inspect") / Path(args.config).stem)


def _class_counts(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LongtailError(f"--class-counts '{text}' must be comma-separated integers, e.g. 5000,2997,1796") from None


def _evaluate(args: argparse.Namespace) -> None:
    from .api import load_run
    from .checkpoint import write_json_atomic
    from .distributed import launched_as_main

    metrics = load_run(args.run, *args.overrides).evaluate(
        args.posthoc, args.tau, args.target_prior, args.split, pn_mass=args.pn_mass, imbalance_factor=args.imbalance_factor,
        class_counts=_class_counts(args.class_counts), save=args.save, progress=True,
    )
    if args.json and launched_as_main():  # under torchrun rank 0 alone writes
        write_json_atomic(Path(args.json), metrics)


def _shift(args: argparse.Namespace) -> None:
    from .api import load_run

    load_run(args.run, *args.overrides).shift(args.priors, args.calibration, seed=args.seed, progress=True)


def _tune(args: argparse.Namespace) -> None:
    from .api import load_run

    load_run(args.run, *args.overrides).tune(args.posthoc, args.grid, args.on, pn_mass=args.pn_mass, progress=True)


def _report(args: argparse.Namespace) -> None:
    from .api import report

    report(*args.runs, out=args.out, progress=True)


def _split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """predict's positionals: paths, and key=value overrides (a `name=value` that is not an existing file)."""
    import re

    is_override = [bool(re.fullmatch(r"[A-Za-z_][\w.]*=.*", a)) and not Path(a).exists() for a in items]
    return [a for a, o in zip(items, is_override) if not o], [a for a, o in zip(items, is_override) if o]


def _predict(args: argparse.Namespace) -> int:
    from .api import load_run

    paths, overrides = _split_overrides(args.paths)
    if not paths:
        raise LongtailError("predict needs at least one image file or folder after the run")
    rows = load_run(args.run, *overrides, *args.overrides, *args.set).predict(
        paths, args.target_prior, args.top_k, posthoc=args.posthoc, tau=args.tau, batch_size=args.batch_size,
        workers=args.workers, out=args.out or sys.stdout, progress=True,
    )
    summary = rows.attrs["summary"]
    print(summary.line(), file=sys.stdout if args.out else sys.stderr)  # without --out the rows are on stdout
    return 1 if summary.failures else 0


def _export(args: argparse.Namespace) -> None:
    from .api import load_run

    result = load_run(args.run, *args.overrides).export(args.out, args.format, args.prior_input, posthoc=args.posthoc, tau=args.tau)
    print(result.line())


def _sweep(args: argparse.Namespace) -> int:
    from .api import sweep

    slurm = {"partition": args.partition, "time": args.time, "nodes": args.nodes, "gpus": args.gpus,
             "tasks_per_node": args.tasks_per_node, "cpus": args.cpus, "mem": args.mem}
    result = sweep(args.sweep, args.executor, args.jobs, args.dry_run, slurm=slurm, progress=True)
    return 1 if result.summary is not None and result.summary.failed else 0


# subcommand -> handler (the parser itself, without handlers, is longtail.parser.build_parser)
COMMANDS = {
    "train": _train, "evaluate": _evaluate, "shift": _shift, "tune": _tune, "inspect": _inspect, "report": _report,
    "predict": _predict, "export": _export, "sweep": _sweep,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    # key=value overrides may also follow the options (`tune RUN --posthoc la dataset.root=/data`),
    # which plain parse_args rejects once the positionals are behind
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        if args.plugin:  # before anything reads a config or a run; sweeps hand them to their trainings
            from .plugins import export_to_children, load_plugins

            export_to_children(load_plugins(args.plugin))
        if args.threads is not None:
            if args.threads < 1:
                raise LongtailError(f"--threads must be at least 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        status = COMMANDS[args.command](args)
    except LongtailError as exc:
        if args.debug:
            raise
        print(f"longtail: error: {exc}", file=sys.stderr)  # one line: LongtailError folds its message
        return 2
    except RuntimeError as exc:  # a collective of a multi-process run: another process died or hangs
        from .distributed import peer_failure

        line = peer_failure(exc)
        if line is None or args.debug:
            raise
        print(f"longtail: error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("longtail: interrupted; the last checkpoint written is intact, resume with --resume", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
