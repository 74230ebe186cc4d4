"""`longtail.sweep` and `Sweep`: a sweep file (or dict) run, or listed, as `longtail sweep` does."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from .output import pandas_module, quiet, say
from .runs import Run

if TYPE_CHECKING:
    import pandas

    from .. import sweep as sweep_package

RESULT_KEYS = ("top1", "mean_class_acc", "many", "medium", "few")


class Sweep:
    """A sweep: its trainings and post-hoc steps, and what running it did (`summary`, None for a dry run).

    Examples:
        >>> sweep = longtail.sweep("benchmarks/fmnist_methods_small.yaml", dry_run=True)
        >>> sweep.table()[["run", "status"]]
    """

    def __init__(self, spec: "sweep_package.Sweep", summary: Optional["sweep_package.Summary"] = None) -> None:
        self.spec = spec  # longtail.sweep.Sweep: the parsed file (trainings, steps, out, slurm)
        self.summary = summary  # longtail.sweep.Summary: ran, skipped, failed, blocked; None for a dry run

    def __repr__(self) -> str:
        return f"<longtail Sweep '{self.spec.path}': {len(self.spec.trainings)} trainings, {len(self.spec.steps)} steps>"

    @property
    def out(self) -> Path:
        """The folder the runs are in.

        Examples:
            >>> longtail.sweep("sweep.yaml", dry_run=True).out
        """
        return self.spec.out

    @property
    def runs(self) -> list[Run]:
        """A `Run` for every training, in the file's order (a run not trained yet has no results to read).

        Examples:
            >>> [run.metrics["top1"] for run in longtail.sweep("sweep.yaml").runs]
        """
        return [Run(training.run_dir) for training in self.spec.trainings]

    def table(self) -> "pandas.DataFrame":
        """One row per training: run (its folder under `out`), variant, status (done, partial, to do), path,
        overrides, and the test top1, mean_class_acc, many, medium, few of its metrics.json (NaN until done).

        Examples:
            >>> longtail.sweep("sweep.yaml").table().groupby("variant")["top1"].mean()
        """
        import json

        rows = []
        for training in self.spec.trainings:
            status = training.status()
            metrics: dict[str, Any] = {}
            if status == "done":
                metrics = json.loads((training.run_dir / "metrics.json").read_text(encoding="utf-8"))
            rows.append({"run": training.name, "variant": training.variant, "status": status, "path": str(training.run_dir),
                         "overrides": " ".join(training.overrides), **{k: metrics.get(k) for k in RESULT_KEYS}})
        return pandas_module().DataFrame(rows, columns=["run", "variant", "status", "path", "overrides", *RESULT_KEYS])


def sweep(file_or_dict: Union[str, Path, dict], executor: str = "local", jobs: Optional[int] = None, dry_run: bool = False,
          *, slurm: Optional[dict[str, Any]] = None, progress: bool = False) -> Sweep:
    """Run every training of a sweep and then its post-hoc steps, as `longtail sweep FILE` does: finished runs
    are skipped, partial ones resume, a failure does not stop the others.

    Args:
        file_or_dict: a sweep file (YAML: base, overrides, axes, out, variants, slurm) or the same as a dict
            (its relative paths then start at the working directory).
        executor: "local" (this machine) or "slurm".
        jobs: runs at once (local: default 1; slurm: array tasks at once).
        dry_run: list every run and step as done, partial or to do, and run nothing; it refuses what a real
            run would refuse (bad Slurm options, options without --executor slurm, a job Slurm cannot run).
        slurm: Slurm options over the file's slurm: section: partition, time, nodes, gpus, tasks_per_node,
            cpus, mem.
        progress: print the plan (dry run) or the progress lines and the summary.

    Examples:
        >>> import longtail
        >>> plan = longtail.sweep({"base": "configs/fmnist_lt/ce_imba100.yaml", "out": "runs/seeds",
        ...                        "axes": {"seed": [0, 1, 2]}}, dry_run=True)
        >>> done = longtail.sweep("benchmarks/fmnist_methods_small.yaml", jobs=2)
        >>> done.table()
    """
    from ..sweep import check_launch, dry_run as list_plan, load_sweep, run_sweep

    spec = load_sweep(file_or_dict)  # the file and every run's config are checked before anything starts
    if dry_run:
        check_launch(spec, executor, jobs, slurm)
        list_plan(spec, say=say(progress))
        return Sweep(spec)
    with quiet(progress):
        summary = run_sweep(spec, executor, jobs, slurm, say=say(progress))
    return Sweep(spec, summary)


__all__ = ["Sweep", "sweep"]
