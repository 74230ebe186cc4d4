"""The `longtail` command: train, evaluate, tune, shift, report. User mistakes end in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import LongtailError
from .parser import build_parser


def _train(args: argparse.Namespace) -> None:
    from .config import load_config

    overrides = list(args.overrides) + (["train.resume=true"] if args.resume else [])
    cfg = load_config(args.config, overrides)  # before importing torch: a typo is reported in a blink
    from .engine import fit

    run_dir = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    fit(cfg, run_dir, allow_config_change=args.allow_config_change)


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
    from .distributed import launched_as_main
    from .checkpoint import write_json_atomic
    from .evaluation import evaluate_checkpoint
    from .protocol import SELECTED_ON_TEST
    from .posthoc import format_configured
    from .run import run_directory, store_calibrator

    if args.target_prior is not None:
        return _evaluate_target_prior(args)
    metrics = evaluate_checkpoint(  # without --posthoc: the run's own rule, as metrics.json reports it
        args.run, split=args.split, overrides=args.overrides, posthoc=args.posthoc, tau=args.tau, pn_mass=args.pn_mass,
        imbalance_factor=args.imbalance_factor, class_counts=_class_counts(args.class_counts),
    )
    if not launched_as_main():  # under torchrun every process evaluated its shard; rank 0 reports
        return
    tag = f"[{SELECTED_ON_TEST}] " if metrics.get("selected_on_test") else ""
    print(format_configured(metrics, f"{tag}{metrics['split']} metrics of {metrics['checkpoint_path']}"))
    if args.save:
        name = metrics["posthoc"]["name"] if metrics["posthoc"] else "none"
        out = run_directory(args.run) / f"eval_{name}.json"
        write_json_atomic(out, metrics)
        print(f"wrote {out}")
        if "calibrator" in metrics and store_calibrator(Path(metrics["checkpoint_path"]), metrics["calibrator"]):
            print(f"stored the run's calibration (for target priors) in {metrics['checkpoint_path']}")
    if args.json:
        write_json_atomic(Path(args.json), metrics)


def _evaluate_target_prior(args: argparse.Namespace) -> None:
    from .checkpoint import write_json_atomic
    from .distributed import launched_as_main
    from .run import run_directory
    from .shift import evaluate_target_prior, format_target_prior

    if args.posthoc or args.tau is not None or args.pn_mass or args.imbalance_factor or args.class_counts or args.split != "test":
        raise LongtailError("--target-prior resamples the test split and corrects to that prior on its own; "
                            "leave out --posthoc, --tau, --pn-mass, --imbalance-factor, --class-counts and --split")
    metrics = evaluate_target_prior(args.run, args.target_prior, overrides=args.overrides)
    if not launched_as_main():
        return
    print(format_target_prior(metrics, f"test metrics of {metrics['checkpoint_path']}"))
    if args.save:
        out = run_directory(args.run) / "eval_target_prior.json"
        write_json_atomic(out, metrics)
        print(f"wrote {out}")
    if args.json:
        write_json_atomic(Path(args.json), metrics)


def _shift(args: argparse.Namespace) -> None:
    from .distributed import launched_as_main
    from .shift import DEFAULT_PRIORS, parse_prior_list, run_shift

    main = launched_as_main()  # under torchrun rank 0 alone prints and writes
    priors = parse_prior_list(args.priors) if args.priors is not None else list(DEFAULT_PRIORS)
    run_shift(args.run, priors, seed=args.seed, overrides=args.overrides, calibration=args.calibration,
              write=main, log=print if main else lambda line: None)


def _tune(args: argparse.Namespace) -> None:
    from .distributed import launched_as_main
    from .tune import tune

    main = launched_as_main()  # under torchrun rank 0 alone prints and writes
    tune(args.run, args.posthoc, grid=args.grid, on=args.on, overrides=args.overrides, pn_mass=args.pn_mass,
         write=main, log=print if main else lambda line: None)


def _report(args: argparse.Namespace) -> None:
    from .report import write_report
    from .report.markdown import markdown

    report = write_report(args.runs, args.out)
    for path in report.skipped:
        print(f"longtail: skipped unfinished run '{path}' (no metrics.json)", file=sys.stderr)
    print(markdown(report.tables))
    counts = {"run": len(report.runs), "dataset": len(report.tables), "figure": sum(f.suffix == ".png" for f in report.files)}
    print(f"wrote {Path(args.out) / 'index.html'}: " + ", ".join(f"{n} {w}{'s' if n != 1 else ''}" for w, n in counts.items()))


def _split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """predict's positionals: paths, and key=value overrides (a `name=value` that is not an existing file)."""
    import re

    is_override = [bool(re.fullmatch(r"[A-Za-z_][\w.]*=.*", a)) and not Path(a).exists() for a in items]
    return [a for a, o in zip(items, is_override) if not o], [a for a, o in zip(items, is_override) if o]


def _predict(args: argparse.Namespace) -> int:
    from .predict import predict_paths

    paths, overrides = _split_overrides(args.paths)
    if not paths:
        raise LongtailError("predict needs at least one image file or folder after the run")
    summary = predict_paths(
        args.run, paths, out=args.out, top_k=args.top_k, posthoc=args.posthoc, tau=args.tau,
        target_prior=args.target_prior, overrides=[*overrides, *args.overrides, *args.set], batch_size=args.batch_size, workers=args.workers,
    )
    print(summary.line(), file=sys.stdout if args.out else sys.stderr)  # without --out the rows are on stdout
    return 1 if summary.failures else 0


def _export(args: argparse.Namespace) -> None:
    from .export import export_run

    print(export_run(args.run, args.format, args.out, args.prior_input, args.posthoc, args.tau, args.overrides).line())


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import dry_run, load_sweep, run_sweep

    sweep = load_sweep(args.sweep)  # the file and every run's config are checked before anything starts
    if args.dry_run:
        dry_run(sweep)
        return 0
    slurm = {"partition": args.partition, "time": args.time, "nodes": args.nodes, "gpus": args.gpus,
             "tasks_per_node": args.tasks_per_node, "cpus": args.cpus, "mem": args.mem}
    given = [f"--{k.replace('_', '-')}" for k, v in slurm.items() if v is not None]
    spread = [f"--{k.replace('_', '-')} {slurm[k]}" for k in ("nodes", "tasks_per_node") if slurm[k] is not None]
    if spread and args.executor != "slurm":
        raise LongtailError(f"{' and '.join(spread)} needs --executor slurm: the local executor runs each training as one "
                            "process on this machine; for several processes here, run the training under torchrun")
    if given and args.executor != "slurm":
        raise LongtailError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --executor slurm only")
    summary = run_sweep(sweep, args.executor, args.jobs, slurm)
    return 1 if summary.failed else 0


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
