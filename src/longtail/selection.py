"""Which epoch's weights a run reports (`train.select`), and the per-epoch scores that choose it.

- best_val: the best validation top-1 (the last epoch when the run has no validation split);
- last: the last epoch;
- best_test: the best TEST top-1, or the configured post-hoc correction's test top-1 when `eval.posthoc`
  is set. This is the released GALA/BaGMar and LGLA protocol (their CIFAR "val" split is the test set;
  with PN the choice is made on PN's accuracy), offered to reproduce their numbers. It is optimistic,
  never a default, and every output of such a run says SELECTED ON TEST.

The rule is kept here so that the engine only asks "which row key decides" and "what does this epoch score".
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from .catalog import NO_RULE
from .config import Config
from .data import DataBundle
from .distributed import Runtime
from .inference import predict_split
from .posthoc import classifier_weight, configured_metrics, needs_val_mass
from .protocol import SELECTED_ON_TEST

WARNING = (f"{SELECTED_ON_TEST}: train.select=best_test chose the reported epoch by its test accuracy (the released "
           "codes' protocol), so these test metrics are optimistic and not comparable with runs selected on validation")
RECORDED = ("top1", "mean_class_acc", "many", "medium", "few")  # per-epoch test metrics in epochs.jsonl


def selects_on_test(cfg: Config) -> bool:
    return cfg.train.select == "best_test"


def score_key(cfg: Config, has_val: bool) -> Optional[str]:
    """The epochs.jsonl key whose maximum picks the reported epoch; None: the last epoch."""
    if selects_on_test(cfg):
        return "test_top1" if cfg.eval.posthoc == NO_RULE else f"test_{cfg.eval.posthoc}_top1"
    if cfg.train.select == "best_val" and has_val:
        return "val_top1"
    return None


def selected_by(cfg: Config, has_val: bool) -> str:
    """metrics.json's "selected_by": the row key that chose the epoch, or "last_epoch"."""
    return score_key(cfg, has_val) or "last_epoch"


def epoch_score(row: dict[str, Any], key: Optional[str]) -> Optional[float]:
    """The epoch's score (higher is better; None when the epoch was not evaluated). The last-epoch rule
    scores epochs by their number, so every epoch improves on the one before."""
    return float(row["epoch"]) if key is None else row.get(key)


def test_scores(model: nn.Module, bundle: DataBundle, cfg: Config, runtime: Runtime) -> dict[str, Any]:
    """An epoch's test metrics (best_test, eval.test_every_epoch): `test_<metric>` of the plain argmax and, with eval.posthoc,
    `test_<posthoc>_<metric>` of the corrected prediction (PN's class mass as configured)."""
    test = predict_split(model, bundle.test, bundle, cfg, runtime)
    needs_val = needs_val_mass(cfg.eval.posthoc, cfg.eval.pn_mass)
    val = predict_split(model, bundle.val, bundle, cfg, runtime) if needs_val and bundle.val is not None else None
    metrics = configured_metrics(cfg.eval.posthoc, cfg.eval.tau, cfg.eval.pn_mass, test, val,
                                 bundle.class_counts, classifier_weight(model))
    row = {f"test_{k}": metrics["raw"][k] for k in RECORDED}
    if cfg.eval.posthoc != NO_RULE:
        row.update({f"test_{cfg.eval.posthoc}_{k}": metrics[k] for k in RECORDED})
    return row


def protocol_fields(cfg: Config) -> dict[str, Any]:
    """What metrics.json (and `evaluate`) add for a run selected on test: a flag and the warning."""
    return {"selected_on_test": True, "protocol_warning": WARNING} if selects_on_test(cfg) else {}


def tag(cfg: Config) -> str:
    """Prefix of printed titles: '[SELECTED ON TEST] ' for best_test runs."""
    return f"[{SELECTED_ON_TEST}] " if selects_on_test(cfg) else ""


def epoch_note(row: dict[str, Any], cfg: Config) -> str:
    """The test part of an epoch's console line (runs with train.select=best_test or eval.test_every_epoch)."""
    if "test_top1" not in row:
        return ""
    text = f"  test top1 {row['test_top1']:.2f}"
    key = f"test_{cfg.eval.posthoc}_top1"
    if key in row:
        text += f" ({cfg.eval.posthoc} {row[key]:.2f})"
    return text + (f"  [{SELECTED_ON_TEST}]" if selects_on_test(cfg) else "")
