"""Fashion-MNIST-LT benchmark of the logit-adjustment family: every method of the METHODS table at
imbalance factors 100 and 10 with seeds 0, 1, 2 (`seed` and `dataset.seed` both), trained from
configs/fmnist_lt/<config>_imba<IF>.yaml, and a markdown table of mean ± std over the seeds.

    python benchmarks/fmnist_methods.py                                   # the full benchmark
    python benchmarks/fmnist_methods.py --methods ce,gala_pn --seeds 0    # a subset
    python benchmarks/fmnist_methods.py --override model.name=resnet8 train.epochs=2   # a smoke run

Finished runs (metrics.json present) are skipped and interrupted ones resumed, so re-running the
same command continues where it stopped. Runs with --override go to their own folder (and table
file) named after the overrides, so a smoke run never mixes with the real one.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))  # machine.py, also when the tests load this file

import torch  # noqa: E402

from longtail.config import load_config  # noqa: E402
from longtail.engine import fit  # noqa: E402
from longtail.evaluation import evaluate_checkpoint  # noqa: E402
from longtail.tune import tune  # noqa: E402
from machine import machine_line  # noqa: E402


@dataclass(frozen=True)
class Method:
    key: str  # for --methods
    label: str  # the table's row name
    config: str  # configs/fmnist_lt/<config>_imba<IF>.yaml trains it
    posthoc: Optional[str] = None  # applied to that config's run afterwards, without retraining
    tau: Optional[float] = None  # post-hoc tau; None = tuned on the validation split


# One line per method; a new method (e.g. LGLA: Method("lgla", "LGLA", "lgla")) is one more line.
METHODS: list[Method] = [
    Method("ce", "CE", "ce"),
    Method("la_loss", "LA loss", "loss"),
    Method("ce_posthoc_la", "CE + post-hoc LA (tau 1)", "ce", posthoc="la", tau=1.0),
    Method("ce_posthoc_la_tuned", "CE + post-hoc LA (tau tuned on val)", "ce", posthoc="la"),
    Method("gala", "GALA", "gala"),
    Method("gala_pn", "GALA + PN (class mass from val)", "gala_pn"),
    Method("bagmar", "BaGMar", "bagmar"),
    Method("balanced_softmax", "Balanced Softmax", "balanced_softmax"),
    Method("ldam_drw", "LDAM-DRW", "ldam_drw"),
    Method("lgla", "LGLA (3 experts)", "lgla"),
]
# --small: the same recipes on the ResNet-8 family, for a table that fits a short CPU budget.
SMALL_MODELS = {"resnet32": "resnet8", "resnet32_experts": "resnet8_experts"}
IMBALANCE_FACTORS = (100, 10)
SEEDS = (0, 1, 2)
TUNE_GRID = "0:2:0.1"
COLUMNS = ("top1", "many", "medium", "few")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", help=f"comma-separated keys (default all): {', '.join(m.key for m in METHODS)}")
    parser.add_argument("--ifs", type=int, nargs="+", default=list(IMBALANCE_FACTORS), help="imbalance factors")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "benchmarks" / "fmnist_methods", help="run directories")
    parser.add_argument("--table-only", action="store_true", help="train nothing: tabulate the runs already finished")
    parser.add_argument("--small", action="store_true", help="train ResNet-8 (and resnet8_experts) in place of ResNet-32")
    parser.add_argument("--out", type=Path, help="markdown table (default benchmarks/results/fmnist_lt_methods[.<overrides>].md)")
    args = parser.parse_args(argv)
    known = {m.key: m for m in METHODS}
    keys = [k.strip() for k in args.methods.split(",")] if args.methods else list(known)
    unknown = [k for k in keys if k not in known]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    args.selected = [known[k] for k in keys]
    return args


def overrides_tag(overrides: list[str], small: bool = False) -> str:
    if not overrides:
        return "small" if small else "default"
    tag = "override-" + hashlib.sha1("\n".join(sorted(overrides)).encode()).hexdigest()[:8]
    return f"small-{tag}" if small else tag


def config_path(config: str, imbalance: int) -> Path:
    return REPO / "configs" / "fmnist_lt" / f"{config}_imba{imbalance}.yaml"


def train(config: str, imbalance: int, seed: int, run_dir: Path, overrides: list[str], small: bool = False) -> dict:
    """Train one run unless finished; resume it if it was interrupted. Returns its metrics.json."""
    if (run_dir / "metrics.json").is_file():
        return json.loads((run_dir / "metrics.json").read_text())
    values = [f"seed={seed}", f"dataset.seed={seed}", *overrides]
    if small:
        model = load_config(config_path(config, imbalance)).model.name
        values.append(f"model.name={SMALL_MODELS.get(model, model)}")
    if (run_dir / "checkpoints" / "last.pt").is_file():
        values.append("train.resume=true")
    return fit(load_config(config_path(config, imbalance), values), run_dir)


def measure(method: Method, run_dir: Path) -> dict:
    """The method's test metrics (plus the tau it used) from its trained run."""
    if method.posthoc is None:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        return {**metrics, "tau": (metrics.get("posthoc") or {}).get("tau")}
    if method.tau is not None:
        metrics = evaluate_checkpoint(run_dir, posthoc=method.posthoc, tau=method.tau)
        return {**metrics, "tau": method.tau}
    result = tune(run_dir, method.posthoc, grid=TUNE_GRID, on="val", log=lambda line: None)
    return {**result["test"], "tau": result["tau"]}


def cell(values: list[Optional[float]]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    if len(present) == 1:
        return f"{present[0]:.2f}"
    return f"{statistics.mean(present):.2f} ± {statistics.stdev(present):.2f}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def render(results: dict, args: argparse.Namespace, elapsed: float, tag: str) -> str:
    lines = [
        "# Fashion-MNIST-LT: the logit-adjustment family",
        "",
        f"- Command: `{' '.join(shlex.quote(a) for a in [sys.executable.rsplit('/', 1)[-1], *sys.argv])}`",
        f"- torch {torch.__version__}; {machine_line(torch.device('cuda' if torch.cuda.is_available() else 'cpu'))}; commit {git_commit()}; "
        f"{datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; {elapsed / 60:.1f} min for the runs not already finished",
        f"- Configs: configs/fmnist_lt/<method>_imba<IF>.yaml; seeds {', '.join(map(str, args.seeds))} "
        "(`seed` and `dataset.seed`); checkpoint chosen by validation top-1 (100 unused training images per class); "
        "test = the full Fashion-MNIST test set (1000 images per class).",
        f"- Overrides: {' '.join(args.override) if args.override else 'none'} (runs in {args.runs / tag})",
        *(["- **Smaller setting (--small): ResNet-8 / resnet8_experts in place of the configs' ResNet-32 / "
            "resnet32_experts; everything else as configured.**"] if args.small else []),
        "- Cells: mean ± std over seeds (sample std) of test accuracy in %; many/medium/few = classes with >100 / 20-100 / "
        "<20 training images (n/a: no class in the group). Post-hoc rows re-use the CE runs' checkpoints; "
        f"tuned tau: best validation top-1 over {TUNE_GRID}.",
        "",
        "| Method | IF | top-1 | many | medium | few | tau | seeds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method in args.selected:
        for imbalance in args.ifs:
            rows = results.get((method.key, imbalance), [])
            if not rows:
                continue
            taus = [r["tau"] for r in rows if r.get("tau") is not None]
            tau = "" if not taus else (f"{taus[0]:g}" if len(set(taus)) == 1 else ", ".join(f"{t:g}" for t in taus))
            stats = " | ".join(cell([r.get(c) for r in rows]) for c in COLUMNS)
            lines.append(f"| {method.label} | {imbalance} | {stats} | {tau} | {len(rows)} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    tag = overrides_tag(args.override, args.small)
    out = args.out or REPO / "benchmarks" / "results" / (
        "fmnist_lt_methods.md" if tag == "default" else f"fmnist_lt_methods.{tag}.md")
    runs = args.runs / tag
    configs = list(dict.fromkeys(m.config for m in args.selected))  # each trained once, in table order
    # every method's first seed before any second seed, so a stopped benchmark still covers every method
    jobs = [(c, i, s) for i in args.ifs for s in args.seeds for c in configs]
    start = time.perf_counter()
    for n, (config, imbalance, seed) in enumerate(jobs, 1):
        run_dir = runs / f"{config}_imba{imbalance}_seed{seed}"
        state = "done" if (run_dir / "metrics.json").is_file() else "skipped" if args.table_only else "training"
        print(f"[{n}/{len(jobs)}] {config}_imba{imbalance} seed {seed}: {state} ({run_dir})", flush=True)
        if not args.table_only:
            train(config, imbalance, seed, run_dir, args.override, args.small)
    elapsed = time.perf_counter() - start
    results: dict = {}
    for method in args.selected:
        for imbalance in args.ifs:
            for seed in args.seeds:
                run_dir = runs / f"{method.config}_imba{imbalance}_seed{seed}"
                if not (run_dir / "metrics.json").is_file():
                    continue  # not trained (yet): the table's seed count shows it
                results.setdefault((method.key, imbalance), []).append(measure(method, run_dir))
    table = render(results, args, elapsed, tag)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
