"""Results tables in the seeds' layout: per dataset, one row per method (and post-hoc variant),
one column per imbalance factor, cells "mean ± std (n seeds)" of top-1 accuracy (%), with the
sample standard deviation (n - 1); a second table gives many / medium / few.

Runs are seeds of one method when their configs differ only in the keys of NOT_METHOD.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from .. import catalog, config
from ..config import Config, flat_dict
from ..errors import LongtailError
from ..protocol import SELECTED_ON_TEST  # row marker of runs whose epoch was chosen on test
from ..shots import SHOTS
from .runs import Run

# What tables and legends call a method: the display name in each component's record (longtail/catalog.py; a
# name not registered in this process is shown as written). Multi-expert backbones (model.name ending in
# "_experts") add "(N experts)"; single-head backbones are not part of the method's name.
DISPLAYED_KINDS = {"loss.name": "loss", "eval.posthoc": "posthoc"}

# Keys that do not change what a run computes (seeds, table and column, paths, speed options): each declares
# method=False in config.py.
NOT_METHOD = config.NOT_METHOD


def given_split(name: object) -> bool:
    """Whether the dataset's training split is given (its record's fact), so dataset.imbalance_factor does not apply."""
    try:
        return bool(catalog.entry("dataset", str(name)).facts.get("given_split"))
    except LongtailError:
        return False


MISSING, UNDEFINED = "missing", "n/a"  # no run for the cell / an empty shot group


@dataclass
class Entry:
    """One measured accuracy: a run's test metrics, or the same run after a post-hoc correction."""

    run: Run
    name: str
    metrics: dict[str, Any]
    variant: int = 0  # row order within a method: 0 raw, 1 fixed post-hoc, 2 tuned on val, 3 tuned otherwise
    tau: Optional[float] = None  # tuned tau
    tune: Optional[dict] = None  # the tune_*.json it came from

    @property
    def dataset(self) -> str:
        return str(self.run.config.get("dataset.name", "?"))

    @property
    def column(self) -> str:
        cfg = self.run.config
        # a given split (ImageNet-LT, your own data, google's CIFAR-LT files): its own imbalance, from the counts
        if cfg.get("dataset.train_list") or given_split(cfg.get("dataset.name")):
            counts = [c for c in self.class_counts or [] if c > 0]
            return f"IF {max(counts) / min(counts):.0f}" if counts else "given split"
        factor, profile = float(cfg.get("dataset.imbalance_factor", 0)), cfg.get("dataset.profile", "exp")
        return f"IF {factor:g}" if profile == "exp" else f"{str(profile).capitalize()}-{factor:g}"

    @property
    def column_order(self) -> tuple:
        number = re.findall(r"[\d.]+", self.column)
        return not self.column.startswith("IF"), -float(number[-1]) if number else 0.0

    @property
    def seed(self) -> tuple:
        return self.run.config.get("seed"), self.run.config.get("dataset.seed")

    @property
    def training(self) -> tuple:
        """The config keys that decide the trained weights."""
        return tuple(sorted((k, repr(v)) for k, v in self.run.config.items() if k not in NOT_METHOD and not k.startswith("eval.")))

    @property
    def identity(self) -> tuple:
        # a raw argmax does not depend on eval.*: raw, a run configured with a post-hoc step is the plain method
        if self.variant == 0:
            return self.training
        return tuple(sorted((k, repr(v)) for k, v in self.run.config.items() if k not in NOT_METHOD))

    @property
    def class_counts(self) -> Optional[list[int]]:
        return self.metrics.get("class_counts") or self.run.metrics.get("class_counts")


def _display(key: str, value: Any) -> str:
    try:
        return catalog.entry(DISPLAYED_KINDS[key], str(value)).display
    except LongtailError:
        return str(value)


def _adjusts_by_prior(rule: str) -> bool:
    try:
        return bool(catalog.entry("posthoc", rule).facts.get("prior"))
    except LongtailError:
        return False


def method_name(config: dict[str, Any]) -> str:
    """The trained method: loss, and the number of experts for a multi-expert backbone."""
    name = _display("loss.name", config.get("loss.name", "?"))
    if str(config.get("model.name", "")).endswith("_experts"):
        name += f" ({config.get('model.num_experts', '?')} experts)"
    return name


def selected_on_test(run: Run) -> bool:
    """The run reports the epoch with the best test accuracy (the released codes' protocol)."""
    return run.config.get("train.select") == "best_test" or str(run.metrics.get("selected_by", "")).startswith("test_")


def entries(run: Run) -> list[Entry]:
    """The rows a run contributes: its test metrics (raw and post-hoc when metrics.json holds both),
    and one row per tune_*.json, at the tuned tau. A run selected on test marks every row it gives."""
    cfg, metrics, base = run.config, run.metrics, method_name(run.config)
    if selected_on_test(run):
        base += f" [{SELECTED_ON_TEST}]"
    posthoc, tau = cfg.get("eval.posthoc", catalog.NO_RULE), cfg.get("eval.tau", 1.0)
    if isinstance(metrics.get("raw"), dict) and isinstance(metrics.get("posthoc"), dict):
        # metrics.json: the configured (post-hoc) prediction at the top level, plain argmax under "raw"
        block = metrics["posthoc"]
        label = f"{_display('eval.posthoc', block.get('name', posthoc))} (τ={block.get('tau', tau):g})"
        found = [Entry(run, base, metrics["raw"]), Entry(run, f"{base} + {label}", metrics, 1)]
    elif posthoc != catalog.NO_RULE:
        found = [Entry(run, f"{base} + {_display('eval.posthoc', posthoc)} (τ={tau:g})", metrics, 1)]
    else:
        found = [Entry(run, base, metrics)]
    for name, saved in run.evals.items():  # `longtail evaluate --posthoc NAME --save` on this run's checkpoint
        block = saved["posthoc"]
        other_prior = _adjusts_by_prior(name) and block.get("prior_counts") not in (None, saved.get("class_counts"))
        label = f"{_display('eval.posthoc', name)} (τ={block.get('tau', 1.0):g}{', other prior' if other_prior else ''})"
        found.append(Entry(run, f"{base} + {label}", saved, 1))
    for name, tune in run.tunes.items():
        on = tune.get("on", "val")
        if not isinstance(tune.get("test"), dict):
            raise LongtailError(f"tune_{name}.json in '{run.path}' has no 'test' metrics; re-run `longtail tune`")
        label = "tuned τ" if on == "val" else f"τ tuned on {on}"
        found.append(Entry(run, f"{base} + {_display('eval.posthoc', name)} ({label})", tune["test"],
                           2 if on == "val" else 3, tune.get("tau"), tune))
    return found


@dataclass
class Table:
    """One dataset: rows (method label -> column -> entries) in display order."""

    dataset: str
    columns: list[str]
    rows: dict[str, dict[str, list[Entry]]]
    seeds: set = field(default_factory=set)

    def row_entries(self, method: str) -> list[Entry]:
        return [e for cell in self.rows[method].values() for e in cell]


def build_tables(runs: Iterable[Run]) -> list[Table]:
    found = _drop_repeated_raw([e for run in runs for e in entries(run)])
    tables = []
    for dataset in sorted({e.dataset for e in found}):
        mine = [e for e in found if e.dataset == dataset]
        labels = _disambiguate(mine)
        loss_order = list(catalog.names("loss"))
        # a method's variants (post-hoc rows) stay under the run they came from
        mine.sort(key=lambda e: (_index(loss_order, e.run.config.get("loss.name")), method_name(e.run.config),
                                 e.training, e.variant, labels[id(e)]))
        columns = [c for _, c in sorted({(e.column_order, e.column) for e in mine})]
        rows: dict[str, dict[str, list[Entry]]] = {}
        for e in mine:
            rows.setdefault(labels[id(e)], {c: [] for c in columns})[e.column].append(e)
        tables.append(Table(dataset, columns, rows, {e.seed for e in mine}))
    return tables


def _drop_repeated_raw(found: list[Entry]) -> list[Entry]:
    """A run configured with a post-hoc step also reports its raw argmax. Where a plain run of the same
    method and seed exists, that raw entry is the same training measured twice: keep the plain run's."""
    def key(e: Entry) -> tuple:
        return e.dataset, e.column, e.identity, e.seed

    def plain(e: Entry) -> bool:
        return e.run.config.get("eval.posthoc", catalog.NO_RULE) == catalog.NO_RULE

    measured = {key(e) for e in found if e.variant == 0 and plain(e)}
    return [e for e in found if e.variant != 0 or plain(e) or key(e) not in measured]


def _index(order: list, value: Any) -> int:
    return order.index(value) if value in order else len(order)


def _disambiguate(found: list[Entry]) -> dict[int, str]:
    """Label per entry. Methods that share a display name but differ in config get, in brackets,
    the differing keys whose value is not the default (so the all-default run keeps the plain name)."""
    defaults = {k: repr(v) for k, v in flat_dict(Config()).items()}
    labels = {}
    for name in {e.name for e in found}:
        same = [e for e in found if e.name == name]
        configs = {e.identity: dict(e.identity) for e in same}
        differing = sorted({k for c in configs.values() for k in c if any(c.get(k) != o.get(k) for o in configs.values())})
        for e in same:
            own = configs[e.identity]
            keys = [f"{k}={own[k] if k in own else 'unset'}".replace("'", "") for k in differing if own.get(k) != defaults.get(k)]
            labels[id(e)] = f"{name} [{', '.join(keys)}]" if keys else name
    return labels


# ----------------------------------------------------------------------------- cells


def mean_std(values: Iterable[Any]) -> tuple[Optional[float], Optional[float], int]:
    """Mean, sample standard deviation (None for fewer than 2 values) and count of the non-null values."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None, 0
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None, len(present)


def _pm(mean: float, std: Optional[float]) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def top1_cell(cell: list[Entry], expected: int) -> str:
    """'mean ± std (n seeds)', with 'n of m' when seeds of the table are missing, and the tuned tau."""
    if not cell:
        return MISSING
    mean, std, n = mean_std(e.metrics.get("top1") for e in cell)
    if mean is None:
        return UNDEFINED
    notes = [f"{n} of {expected} seeds" if n < expected else f"{n} seed" + ("s" if n != 1 else "")]
    distinct = len({e.seed for e in cell})
    if distinct < n:  # several runs with the same seeds (e.g. copies): say so rather than count them as seeds
        notes[0] = f"{n} runs of {distinct} seed" + ("s" if distinct != 1 else "")
    taus = [e.tau for e in cell if e.tau is not None]
    if taus:
        low, high = min(taus), max(taus)
        notes.append(f"τ={low:g}" if low == high else f"τ={low:g}–{high:g}")
    return f"{_pm(mean, std)} ({', '.join(notes)})"


def shot_cell(cell: list[Entry], shot: str) -> str:
    if not cell:
        return MISSING
    mean, std, _ = mean_std(e.metrics.get(shot) for e in cell)
    return UNDEFINED if mean is None else _pm(mean, std)


def grid(table: Table, shots: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of strings, first column the method."""
    if shots:
        header = ["Method"] + [f"{c} {s}" for c in table.columns for s in SHOTS]
        rows = [[m] + [shot_cell(cells[c], s) for c in table.columns for s in SHOTS] for m, cells in table.rows.items()]
    else:
        header = ["Method"] + table.columns
        rows = [[m] + [top1_cell(cells[c], len(table.seeds)) for c in table.columns] for m, cells in table.rows.items()]
    return header, rows


def provenance(table: Table) -> str:
    """Which seeds, models and epoch counts stand behind a table."""
    runs = {id(e.run): e.run for m in table.rows for e in table.row_entries(m)}.values()

    def values(key: str) -> str:
        return ", ".join(sorted({str(r.config.get(key)) for r in runs}, key=lambda v: (len(v), v)))

    return f"{len(runs)} run{'s' if len(runs) != 1 else ''}; seeds {values('seed')}; model {values('model.name')}; epochs {values('train.epochs')}"


def tuned_on_test(table: Table) -> bool:
    return any(e.tune is not None and e.tune.get("on", "val") != "val" for m in table.rows for e in table.row_entries(m))


def has_selected_on_test(table: Table) -> bool:
    return any(selected_on_test(e.run) for m in table.rows for e in table.row_entries(m))


SELECTED_ON_TEST_NOTE = (f"Rows marked '{SELECTED_ON_TEST}' report the epoch with the best test accuracy "
                         "(train.select=best_test, the released codes' protocol): optimistic, not comparable with the other rows.")


def summary(tables: list[Table]) -> list[dict[str, Any]]:
    """The numbers behind the cells, one record per (dataset, method, column) that has runs."""
    records = []
    for table in tables:
        for method, cells in table.rows.items():
            for column, cell in cells.items():
                if not cell:
                    continue
                record: dict[str, Any] = {"dataset": table.dataset, "method": method, "column": column,
                                          "imbalance_factor": float(cell[0].run.config.get("dataset.imbalance_factor", 0))}
                for key in ("top1", "mean_class_acc", *SHOTS):
                    mean, std, n = mean_std(e.metrics.get(key) for e in cell)
                    record.update({f"{key}_mean": mean, f"{key}_std": std})
                    if key == "top1":
                        record["n"] = n
                taus = [e.tau for e in cell if e.tau is not None]
                record["tau"] = statistics.fmean(taus) if taus else None
                record["tuned_on"] = cell[0].tune.get("on", "val") if cell[0].tune else None
                record["selected_on_test"] = selected_on_test(cell[0].run)
                record["runs"] = ";".join(str(e.run.path) for e in cell)
                records.append(record)
    return records


# ----------------------------------------------------------------------------- text formats


def csv_rows(tables: list[Table], shots: bool = False) -> tuple[list[str], list[list[str]]]:
    """All datasets in one sheet: columns dataset, method and the union of the tables' columns."""
    columns: list[str] = []
    records = []
    for table in tables:
        header, rows = grid(table, shots)
        columns += [c for c in header[1:] if c not in columns]
        records += [{"dataset": table.dataset, **dict(zip(header, row))} for row in rows]
    header = ["dataset", "Method", *columns]
    return header, [[r.get(c, "") for c in header] for r in records]


def per_class_rows(tables: list[Table]) -> tuple[list[str], list[list[Any]]]:
    """One row per class of every entry: its name (from metrics.json's class_names, else the index),
    training images and test accuracy, so a report can be read by class name."""
    header = ["dataset", "method", "column", "run", "class_index", "class_name", "train_images", "test_accuracy"]
    rows: list[list[Any]] = []
    for table in tables:
        for method, cells in table.rows.items():
            for column, cell in cells.items():
                for e in cell:
                    accuracies = e.metrics.get("per_class") or []
                    names = e.metrics.get("class_names") or e.run.metrics.get("class_names") or []
                    counts = e.class_counts or []
                    for c, acc in enumerate(accuracies):
                        name = names[c] if c < len(names) else str(c)
                        rows.append([table.dataset, method, column, str(e.run.path), c, name,
                                     counts[c] if c < len(counts) else "", "" if acc is None else acc])
    return header, rows
