"""Choosing tau of a post-hoc correction: sweep a grid on the validation split, keep the best
top-1 (the validation split is class-balanced, so this is balanced accuracy), report test metrics
at that tau, and write `tune_<posthoc>.json` into the run directory (and the run's calibration, for
target priors, into its checkpoint and metrics.json when they lack it: run.store_calibrator).

Sweeping on the test set is possible only when asked (`on="test"`), and everything written or
printed then says TUNED ON TEST: such a tau, and the test metrics at it, are optimistic.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import LongtailError
from .checkpoint import write_json_atomic
from .evaluation import outputs_of, sweep
from .metrics import class_names_of, format_table, with_class_names
from .posthoc import PosthocInputs, check_name, check_posthoc, class_mass, configured_metrics, needs, needs_val_mass
from .protocol import TUNED_ON_TEST
from .run import fit_calibrator, run_directory, store_calibrator
from .zeroshot import load_run

DEFAULT_GRID = "0:2:0.1"
ON_TEST = TUNED_ON_TEST  # the label of tune.py's outputs when tau was chosen on test
MAX_GRID = 10_000  # values in one sweep


def parse_grid(text: str) -> list[float]:
    """'start:stop:step' (stop included) or a comma list '0.5,1,1.5'."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if not step > 0 or stop < start:
                raise ValueError
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            if count > MAX_GRID:
                raise ValueError
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except (ValueError, OverflowError):
        values = []
    if not values or len(values) > MAX_GRID or not all(math.isfinite(v) for v in values):
        raise LongtailError(f"--grid '{text}' is not a grid of tau values; write start:stop:step (e.g. 0:2:0.1) or a list (e.g. 0.5,1,1.5)")
    return values


def best_tau(curve: Sequence[dict]) -> float:
    """Highest top-1; ties go to the tau closest to the default 1, then to the smaller tau."""
    return max(curve, key=lambda row: (row["top1"], -abs(row["tau"] - 1.0), -row["tau"]))["tau"]


def tune(
    path: str | Path,
    posthoc: str,
    grid: Sequence[float] | str = DEFAULT_GRID,
    on: str = "val",
    overrides: Sequence[str] = (),
    pn_mass: Optional[str] = None,
    write: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    if on not in ("val", "test"):
        raise LongtailError(f"tau can be tuned on 'val' or 'test', not {on!r}")
    taus = parse_grid(grid) if isinstance(grid, str) else [float(t) for t in grid]
    check_name(posthoc)  # before the model runs; whether the model can take it is checked below
    cfg, ckpt, ckpt_path = load_run(path, overrides)
    pn_mass = pn_mass or cfg.eval.pn_mass
    needs_val = on == "val" or needs_val_mass(posthoc, pn_mass)
    run = outputs_of(cfg, ckpt, ckpt_path, ["val", "test"] if needs_val else ["test"])
    check_posthoc(posthoc, run.weight)
    test = run.split("test")
    if on == "val":
        tuning = run.split("val", " to tune tau on", "tune on the test set with --on test (labelled TUNED ON TEST)")
    else:
        tuning = test
    val = run.split("val", " to estimate PN's class mass", "pass --pn-mass transductive") if needs_val else None

    # PN's class mass: from val, or (transductive) from whichever split is being scored
    fixed_mass = class_mass(val["logits"]) if needs_val_mass(posthoc, pn_mass) else None
    inputs = PosthocInputs(run.class_counts, run.weight, fixed_mass)
    curve = sweep(posthoc, tuning["logits"], tuning["labels"], taus, run.class_counts, inputs)
    tau = best_tau(curve)
    test_metrics = with_class_names(configured_metrics(posthoc, tau, pn_mass, test, val, run.class_counts, run.weight),
                                    class_names_of(ckpt))

    result = {
        "posthoc": posthoc, "on": on, "tau": tau, "grid": taus, "curve": curve, "test": test_metrics,
        "class_mass": pn_mass if needs(posthoc, "class_mass") else None, "checkpoint_path": str(run.ckpt_path),
    }
    if on == "test":
        result["warning"] = f"{ON_TEST}: tau was chosen on the test set, so these test metrics are optimistic"
        result["test"]["tuned_on_test"] = True
    _report(result, log)
    if write:
        out = run_directory(path) / f"tune_{posthoc}.json"
        write_json_atomic(out, result)
        log(_tag(on) + f"wrote {out}")
        if run.splits.get("val") is not None and store_calibrator(run.ckpt_path, fit_calibrator(run.splits["val"], len(run.class_counts))):
            log(f"stored the run's calibration (for target priors) in {run.ckpt_path}")
    return result


def _tag(on: str) -> str:
    return f"[{ON_TEST}] " if on == "test" else ""


def _report(result: dict, log: Callable[[str], None]) -> None:
    tag, split = _tag(result["on"]), "test" if result["on"] == "test" else "validation"
    log(tag + f"post-hoc {result['posthoc']}: {split} top-1 over tau")
    for row in result["curve"]:
        mark = "  <- best" if row["tau"] == result["tau"] else ""
        log(tag + f"  tau {row['tau']:6.3g}  top1 {row['top1']:6.2f}{mark}")
    for line in format_table(result["test"]["raw"], "test metrics without correction:").splitlines():
        log(tag + line)
    title = f"test metrics at tau {result['tau']:g} (tuned on {split}):"
    for line in format_table(result["test"], title).splitlines():
        log(tag + line)
