"""The `longtail` command: train, evaluate, tune, shift, report. User mistakes end in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import LongtailError


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
    from .evaluation import evaluate_checkpoint, run_directory
    from .posthoc import format_configured

    if args.target_prior is not None:
        return _evaluate_target_prior(args)
    posthoc = args.posthoc or "none"
    if posthoc == "none" and (args.tau is not None or args.save or args.pn_mass):
        raise LongtailError("--tau, --pn-mass and --save go with --posthoc la|pn|tau_norm")
    tau = 1.0 if args.tau is None else args.tau
    metrics = evaluate_checkpoint(
        args.run, split=args.split, overrides=args.overrides, posthoc=posthoc, tau=tau, pn_mass=args.pn_mass,
        imbalance_factor=args.imbalance_factor, class_counts=_class_counts(args.class_counts),
    )
    if not launched_as_main():  # under torchrun every process evaluated its shard; rank 0 reports
        return
    from .selection import SELECTED_ON_TEST

    tag = f"[{SELECTED_ON_TEST}] " if metrics.get("selected_on_test") else ""
    print(format_configured(metrics, f"{tag}{metrics['split']} metrics of {metrics['checkpoint_path']}"))
    if args.save:
        out = run_directory(args.run) / f"eval_{posthoc}.json"
        write_json_atomic(out, metrics)
        print(f"wrote {out}")
    if args.json:
        write_json_atomic(Path(args.json), metrics)


def _evaluate_target_prior(args: argparse.Namespace) -> None:
    from .checkpoint import write_json_atomic
    from .distributed import launched_as_main
    from .evaluation import run_directory
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
    from .report.tables import markdown

    report = write_report(args.runs, args.out)
    for path in report.skipped:
        print(f"longtail: skipped unfinished run '{path}' (no metrics.json)", file=sys.stderr)
    print(markdown(report.tables))
    counts = {"run": len(report.runs), "dataset": len(report.tables), "figure": sum(f.suffix == ".png" for f in report.files)}
    print(f"wrote {Path(args.out) / 'index.html'}: " + ", ".join(f"{n} {w}{'s' if n != 1 else ''}" for w, n in counts.items()))


def _predict(args: argparse.Namespace) -> int:
    from .predict import predict_paths

    summary = predict_paths(
        args.run, args.paths, out=args.out, top_k=args.top_k, posthoc=args.posthoc, tau=args.tau,
        target_prior=args.target_prior, overrides=args.set, batch_size=args.batch_size, workers=args.workers,
    )
    print(summary.line(), file=sys.stdout if args.out else sys.stderr)  # without --out the rows are on stdout
    return 1 if summary.failures else 0


def _export(args: argparse.Namespace) -> None:
    from .export import export_run

    print(export_run(args.run, args.format, args.out, args.prior_input, args.posthoc, args.tau, args.overrides).line())


def _rule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--posthoc", choices=["none", "la", "pn", "tau_norm"], help="prediction rule (default: the run's eval.posthoc)")
    parser.add_argument("--tau", type=float, help="strength of the correction (default: the run's eval.tau)")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longtail", description="Long-tailed image classification.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads for this command (default: torch's choice)")
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
    evaluate.add_argument("--posthoc", choices=["la", "pn", "tau_norm"], help="apply a post-hoc correction (no retraining)")
    evaluate.add_argument("--tau", type=float, help="strength of the correction (default 1)")
    evaluate.add_argument("--pn-mass", choices=["val", "transductive"], help="PN's class mass: from the validation split, "
                          "or from the evaluated split itself (default: the run's eval.pn_mass)")
    prior = evaluate.add_mutually_exclusive_group()
    prior.add_argument("--imbalance-factor", type=float, help="la: adjust by the prior of this imbalance factor "
                       "(same n_max and profile) instead of the checkpoint's training counts")
    prior.add_argument("--class-counts", help="la: adjust by these per-class counts, e.g. 5000,2997,1796,...")
    evaluate.add_argument("--target-prior", metavar="SPEC", help="resample the test split to this class prior (uniform, "
                          "forward-IF, backward-IF or a file of per-class weights) and correct the predictions to it")
    evaluate.add_argument("--save", action="store_true", help="write eval_<posthoc>.json (eval_target_prior.json) into the run directory")
    evaluate.add_argument("--json", metavar="FILE", help="also write the metrics (the keys of metrics.json) to FILE")
    evaluate.set_defaults(func=_evaluate)

    shift = commands.add_parser("shift", help="accuracy under other test class priors, with label-shift corrections; writes shift.json")
    shift.add_argument("run", help="run directory (uses checkpoints/best.pt) or a .pt checkpoint")
    shift.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. dataset.val_source=test_holdout")
    shift.add_argument("--priors", help="comma-separated test priors: uniform, forward-IF, backward-IF or files of per-class "
                       "weights (default forward-50,forward-10,uniform,backward-10,backward-50)")
    shift.add_argument("--seed", type=int, default=0, help="seed of the per-class test subsamples (default 0)")
    shift.add_argument("--calibration", choices=["bcts", "temperature"], default="bcts",
                       help="calibration fitted on the validation split before correcting (default bcts)")
    shift.set_defaults(func=_shift)

    tune = commands.add_parser("tune", help="choose the tau of a post-hoc correction on the validation split")
    tune.add_argument("run", help="run directory (uses checkpoints/best.pt) or a .pt checkpoint")
    tune.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. dataset.val_source=test_holdout")
    tune.add_argument("--posthoc", choices=["la", "pn", "tau_norm"], required=True)
    tune.add_argument("--grid", default="0:2:0.1", help="tau values: start:stop:step (stop included) or a list (default 0:2:0.1)")
    tune.add_argument("--on", choices=["val", "test"], default="val",
                      help="split to choose tau on; 'test' is optimistic and every output says TUNED ON TEST")
    tune.add_argument("--pn-mass", choices=["val", "transductive"], help="PN's class mass (default: the run's eval.pn_mass)")
    tune.set_defaults(func=_tune)

    inspect = commands.add_parser("inspect", help="a dataset's long-tail diagnostics and class-count chart, without training")
    inspect.add_argument("config", help="YAML config, e.g. configs/own_data/ce.yaml")
    inspect.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. dataset.root=/data/photos")
    inspect.add_argument("--out", help="folder for inspect.json and class_counts.png (default: inspect/<config name>)")
    inspect.set_defaults(func=_inspect)

    report = commands.add_parser("report", help="tables and figures (markdown, CSV, PNG, HTML) from run directories")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders searched for them")
    report.add_argument("--out", required=True, metavar="REPORT_DIR", help="folder for results.md, results.csv, figures/, index.html")
    report.set_defaults(func=_report)

    predict = commands.add_parser(
        "predict", help="predict image files or folders with a trained run",
        epilog="exit status: 0 every image predicted; 1 some images could not be read (their rows say why, the "
               "others are predicted); 2 a usage error",
    )
    predict.add_argument("run", help="run directory (uses checkpoints/best.pt) or a .pt checkpoint")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    predict.add_argument("--out", help="preds.csv or preds.json (default: CSV on stdout)")
    predict.add_argument("--top-k", type=int, help="classes listed per image (default: 5, or C when smaller)")
    _rule_options(predict)
    predict.add_argument("--target-prior", metavar="SPEC", help="the target class prior q: uniform, forward-IF, backward-IF, "
                         "or a file of per-class weights (numbers in class order, or a JSON list or {class name: weight}); "
                         "adds log q to the scores")
    predict.add_argument("--batch-size", type=int, help="images per batch (default: the run's eval.batch_size)")
    predict.add_argument("--workers", type=int, default=0, help="image decoding processes (default 0: in this process)")
    predict.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="config override, e.g. --set train.amp=false or --set dataset.root=/data (repeatable)")
    predict.set_defaults(func=_predict)

    export = commands.add_parser("export", help="export a run as ONNX or TorchScript returning its configured scores")
    export.add_argument("run", help="run directory (uses checkpoints/best.pt) or a .pt checkpoint")
    export.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. dataset.root=/data (pn's validation pass)")
    export.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    export.add_argument("--out", metavar="FILE", help="default: RUN/model.onnx or RUN/model.torchscript.pt")
    export.add_argument("--prior-input", action="store_true",
                        help="take the log target prior as a second input 'log_prior' (C,), added to the scores")
    _rule_options(export)
    export.set_defaults(func=_export)

    sweep = commands.add_parser("sweep", help="run a grid of trainings (and post-hoc steps) from a sweep file")
    sweep.add_argument("sweep", metavar="SWEEP.yaml", help="sweep file (base, overrides, axes, out, variants, slurm)")
    sweep.add_argument("--executor", choices=["local", "slurm"], default="local", help="this machine (default) or a Slurm cluster")
    sweep.add_argument("--jobs", type=int, metavar="N", help="runs at once (local: default 1, each with cores/N threads; "
                       "slurm: array tasks at once, default no limit)")
    sweep.add_argument("--dry-run", action="store_true", help="list every run and step as done, partial or to do; run nothing")
    for flag, kind, text in (("--partition", str, "Slurm partition"), ("--time", str, "time limit per job: minutes or H:MM:SS"),
                             ("--nodes", int, "nodes per training job (one DDP run over all of them)"),
                             ("--gpus", int, "GPUs per node of a job, one training process each (DDP)"),
                             ("--tasks-per-node", int, "training processes per node on a CPU partition (DDP over gloo)"),
                             ("--cpus", int, "CPUs per process (also its torch threads)"),
                             ("--mem", str, "memory per node of a job, e.g. 32G")):
        sweep.add_argument(flag, type=kind, help=f"{text} (default: the sweep file's slurm: section)")
    sweep.set_defaults(func=_sweep)
    return parser


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
        if args.threads is not None:
            if args.threads < 1:
                raise LongtailError(f"--threads must be at least 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        status = args.func(args)
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
