"""The `longtail` command line's parser: subcommands and their options, no handlers (cli.COMMANDS maps
each subcommand to its handler). Importing it loads neither torch nor any longtail module but the torch-free
catalog, so a sweep file's steps are checked against it (sweep.spec) without an import cycle through the CLI.

Rule names are not argparse choices: a run's plugin rules are known only once its checkpoint is read, so the
name is checked then (one line, with a did-you-mean); the help lists the catalog's names."""

from __future__ import annotations

import argparse

from .catalog import choices, names


def _rules(with_none: bool = True) -> str:
    return ", ".join(choices("posthoc") if with_none else names("posthoc")) + " or a plugin's rule"


def _posthoc(parser: argparse.ArgumentParser, text: str, **options) -> None:
    parser.add_argument("--posthoc", metavar="RULE", help=f"{text} (one of {_rules(not options.get('required'))})", **options)


def _version() -> str:
    from . import __version__  # the package's __init__ imports no torch

    return __version__


def _rule_options(parser: argparse.ArgumentParser) -> None:
    _posthoc(parser, "prediction rule (default: the run's eval.posthoc)")
    parser.add_argument("--tau", type=float, help="strength of the correction (default: the run's eval.tau)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longtail", description="Long-tailed image classification.")
    parser.add_argument("--version", action="version", version=f"longtail {_version()}",
                        help="print longtail's version and exit")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads for this command (default: torch's choice)")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a YAML config")
    train.add_argument("config", help="YAML config, e.g. configs/fmnist_lt/ce_imba100.yaml")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=5")
    train.add_argument("--out", help="run directory (default: runs/<config name>)")
    train.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt")
    train.add_argument("--allow-config-change", action="store_true", help="resume even if the config changed")

    evaluate = commands.add_parser("evaluate", help="evaluate a run directory or checkpoint")
    evaluate.add_argument("run", help="run directory (uses checkpoints/best.pt), a .pt checkpoint, or a config with "
                          "model.finetune=zero_shot (CLIP without training)")
    evaluate.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. dataset.root=/data")
    evaluate.add_argument("--split", choices=["val", "test"], default="test")
    _posthoc(evaluate, "prediction rule (default: the run's eval.posthoc, as metrics.json; none: the raw argmax)")
    evaluate.add_argument("--tau", type=float, help="strength of the correction (default: the run's eval.tau)")
    evaluate.add_argument("--pn-mass", choices=["val", "transductive"], help="PN's class mass: from the validation split, "
                          "or from the evaluated split itself (default: the run's eval.pn_mass)")
    prior = evaluate.add_mutually_exclusive_group()
    prior.add_argument("--imbalance-factor", type=float, help="la: adjust by the prior of this imbalance factor "
                       "(same n_max and profile) instead of the checkpoint's training counts")
    prior.add_argument("--class-counts", help="la: adjust by these per-class counts, e.g. 5000,2997,1796,...")
    evaluate.add_argument("--target-prior", metavar="SPEC", help="resample the test split to this class prior (uniform, "
                          "forward-IF, backward-IF or a file of per-class weights) and correct the predictions to it")
    evaluate.add_argument("--save", action="store_true", help="write eval_<posthoc>.json (eval_target_prior.json) into the run "
                          "directory, and store the run's calibration for target priors when it lacks one")
    evaluate.add_argument("--json", metavar="FILE", help="also write the metrics (the keys of metrics.json) to FILE")

    shift = commands.add_parser("shift", help="accuracy under other test class priors, with label-shift corrections; writes shift.json")
    shift.add_argument("run", help="run directory (uses checkpoints/best.pt) or a .pt checkpoint")
    shift.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. dataset.val_source=test_holdout")
    shift.add_argument("--priors", help="comma-separated test priors: uniform, forward-IF, backward-IF or files of per-class "
                       "weights (default forward-50,forward-10,uniform,backward-10,backward-50)")
    shift.add_argument("--seed", type=int, default=0, help="seed of the per-class test subsamples (default 0)")
    shift.add_argument("--calibration", choices=["bcts", "temperature"], default="bcts",
                       help="calibration fitted on the validation split before correcting (default bcts)")

    tune = commands.add_parser("tune", help="choose the tau of a post-hoc correction on the validation split")
    tune.add_argument("run", help="run directory (uses checkpoints/best.pt) or a .pt checkpoint")
    tune.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. dataset.val_source=test_holdout")
    _posthoc(tune, "the rule whose tau is chosen", required=True)
    tune.add_argument("--grid", default="0:2:0.1", help="tau values: start:stop:step (stop included) or a list (default 0:2:0.1)")
    tune.add_argument("--on", choices=["val", "test"], default="val",
                      help="split to choose tau on; 'test' is optimistic and every output says TUNED ON TEST")
    tune.add_argument("--pn-mass", choices=["val", "transductive"], help="PN's class mass (default: the run's eval.pn_mass)")

    inspect = commands.add_parser("inspect", help="a dataset's long-tail diagnostics and class-count chart, without training")
    inspect.add_argument("config", help="YAML config, e.g. configs/own_data/ce.yaml")
    inspect.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. dataset.root=/data/photos")
    inspect.add_argument("--out", help="folder for inspect.json and class_counts.png (default: inspect/<config name>)")

    report = commands.add_parser("report", help="tables and figures (markdown, CSV, PNG, HTML) from run directories")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders searched for them")
    report.add_argument("--out", required=True, metavar="REPORT_DIR", help="folder for results.md, results.csv, figures/, index.html")

    predict = commands.add_parser(
        "predict", help="predict image files or folders with a trained run",
        epilog="exit status: 0 every image predicted; 1 some images could not be read (their rows say why, the "
               "others are predicted); 2 a usage error",
    )
    predict.add_argument("run", help="run directory (uses checkpoints/best.pt) or a .pt checkpoint")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively), then "
                         "dotted key=value overrides, e.g. train.amp=false")
    predict.add_argument("--out", help="preds.csv or preds.json (default: CSV on stdout)")
    predict.add_argument("--top-k", type=int, help="classes listed per image (default: 5, or C when smaller)")
    _rule_options(predict)
    predict.add_argument("--target-prior", metavar="SPEC", help="the target class prior q: uniform, forward-IF, backward-IF, "
                         "or a file of per-class weights (numbers in class order, or a JSON list or {class name: weight}); "
                         "scores are the run's calibrated posteriors moved to q (replaces the run's rule)")
    predict.add_argument("--batch-size", type=int, help="images per batch (default: the run's eval.batch_size)")
    predict.add_argument("--workers", type=int, default=0, help="image decoding processes (default 0: in this process)")
    predict.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="config override, the same as a positional key=value (repeatable)")
    predict.set_defaults(overrides=[])

    export = commands.add_parser("export", help="export a run as ONNX or TorchScript returning its configured scores")
    export.add_argument("run", help="run directory (uses checkpoints/best.pt) or a .pt checkpoint")
    export.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. dataset.root=/data (pn's validation pass)")
    export.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    export.add_argument("--out", metavar="FILE", help="default: RUN/model.onnx or RUN/model.torchscript.pt")
    export.add_argument("--prior-input", action="store_true",
                        help="take log q of a target prior as a second input 'log_prior' (C,); the scores are then the run's "
                             "calibrated posteriors moved to q, as predict --target-prior")
    _rule_options(export)

    sweep = commands.add_parser("sweep", help="run a grid of trainings (and post-hoc steps) from a sweep file")
    sweep.add_argument("sweep", metavar="SWEEP.yaml", help="sweep file (base, overrides, axes, out, variants, slurm)")
    sweep.add_argument("--executor", choices=["local", "slurm"], default="local", help="this machine (default) or a Slurm cluster")
    sweep.add_argument("--jobs", type=int, metavar="N", help="runs at once (local: default 1, each with cores/N threads; "
                       "slurm: array tasks at once, default no limit)")
    sweep.add_argument("--dry-run", action="store_true", help="list every run and step as done, partial or to do; run nothing")
    for flag, kind, text in (("--partition", str, "Slurm partition"), ("--time", str, "time limit per job: minutes, H:MM:SS or D-HH:MM:SS"),
                             ("--nodes", int, "nodes per training job (one DDP run over all of them)"),
                             ("--gpus", int, "GPUs per node of a job, one training process each (DDP)"),
                             ("--tasks-per-node", int, "training processes per node on a CPU partition (DDP over gloo)"),
                             ("--cpus", int, "CPUs per process (also its torch threads)"),
                             ("--mem", str, "memory per node of a job, e.g. 32G")):
        sweep.add_argument(flag, type=kind, help=f"{text} (default: the sweep file's slurm: section)")
    for command in commands.choices.values():  # an option of every command
        command.add_argument("--plugin", action="append", default=[], metavar="FILE|MODULE",
                             help="a Python file or module registering components (repeatable; see docs/adding-a-method.md)")
    return parser
