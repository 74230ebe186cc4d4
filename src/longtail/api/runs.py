"""`longtail.load_run` and `Run`: a trained run directory, evaluated, tuned, shifted, used to predict and exported
from Python, with the same rules and the same one-line errors as `longtail evaluate / tune / shift / predict /
export` (each of which calls the method of the same name)."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, TextIO, Union

from ..errors import LongtailError
from .output import pandas_module, quiet, say
from .overrides import override_strings

if TYPE_CHECKING:  # for the signatures only: importing longtail loads neither torch nor pandas
    import pandas
    import torch

    from ..config import Config
    from ..export import ExportResult


def _main_process() -> bool:
    from ..distributed import launched_as_main

    return launched_as_main()


class Run:
    """A run directory (or a loose checkpoint) with `key=value` overrides (e.g. `dataset.root=/data`).

    Get one from `longtail.train` or `longtail.load_run`. Reading `.config` loads the checkpoint; every method
    runs the checkpoint the run reports (checkpoints/best.pt, else last.pt).

    Examples:
        >>> run = longtail.load_run("runs/ce_imba100")
        >>> run.metrics["top1"], run.history["val_top1"].max()
    """

    def __init__(self, path: str | Path, overrides: Sequence[str] = ()) -> None:
        from ..run import run_directory

        self.source = Path(path)  # what was given: a run directory or a checkpoint file
        # the run directory, where its result files live (a run still to be trained: the folder it will be in)
        self.path = run_directory(self.source) if self.source.is_file() else self.source
        self.overrides = list(overrides)

    def __repr__(self) -> str:
        extra = "".join(f", {o!r}" for o in self.overrides)
        return f"longtail.load_run({str(self.source)!r}{extra})"

    def __fspath__(self) -> str:  # a Run stands for its directory wherever a path is taken (longtail.report(run))
        return str(self.path)

    # ------------------------------------------------------------------------- what the run holds

    @cached_property
    def config(self) -> "Config":
        """The run's config (as stored in its checkpoint), with the overrides applied.

        Examples:
            >>> longtail.load_run("runs/ce_imba100").config.loss.name
            'ce'
        """
        from ..run import load_run as load_checkpoint_run

        return load_checkpoint_run(self.source, self.overrides)[0]

    @property
    def metrics(self) -> dict:
        """metrics.json: the test metrics training reported, as a dict.

        Examples:
            >>> longtail.load_run("runs/ce_imba100").metrics["few"]
        """
        return self._json("metrics.json", "its training has not finished; continue it with longtail.train(config, out=...)")

    @property
    def history(self) -> "pandas.DataFrame":
        """epochs.jsonl: one row per trained epoch (train_loss, lr, val_top1, ...), as a pandas DataFrame.

        Examples:
            >>> longtail.load_run("runs/ce_imba100").history[["epoch", "train_loss", "val_top1"]]
        """
        file = self.path / "epochs.jsonl"
        try:
            rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError:
            raise LongtailError(f"run '{self.path}' has no epochs.jsonl: no epoch has finished yet") from None
        except ValueError:
            raise LongtailError(f"'{file}' is not valid JSON lines; the run directory is damaged") from None
        return pandas_module().DataFrame(rows)

    def _json(self, name: str, missing: str) -> dict:
        file = self.path / name
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except OSError:
            raise LongtailError(f"run '{self.path}' has no {name}: {missing}") from None
        except ValueError:
            raise LongtailError(f"'{file}' is not valid JSON; the run directory is damaged") from None
        if not isinstance(data, dict):
            raise LongtailError(f"'{file}' does not hold a JSON object; the run directory is damaged")
        return data

    # ------------------------------------------------------------------------- the commands

    def evaluate(self, posthoc: Optional[str] = None, tau: Optional[float] = None, target_prior: Optional[str] = None,
                 split: str = "test", *, pn_mass: Optional[str] = None, imbalance_factor: Optional[float] = None,
                 class_counts: Optional[Sequence[int]] = None, save: bool = False, progress: bool = False) -> dict:
        """Metrics of the run's checkpoint, as `longtail evaluate RUN` computes them, with the keys of metrics.json.

        Args:
            posthoc: the prediction rule: none (the raw argmax), la, pn or tau_norm; default the run's
                eval.posthoc, so that the test metrics equal metrics.json's.
            tau: the rule's strength (default the run's eval.tau).
            target_prior: resample the test split to this class prior (uniform, forward-IF, backward-IF or a
                file of per-class weights) and correct the predictions to it; replaces posthoc and tau.
            split: "test" or "val".
            pn_mass: where PN's class mass comes from: "val" or "transductive" (default the run's eval.pn_mass).
            imbalance_factor: la adjusts by the prior of this imbalance factor instead of the training counts.
            class_counts: la adjusts by these per-class counts.
            save: write eval_<posthoc>.json (eval_target_prior.json) into the run directory, and store the run's
                calibration when it lacks one, as `--save` does.
            progress: print the metrics table and what was written, as the command does.

        Examples:
            >>> run = longtail.load_run("runs/ce_imba100")
            >>> run.evaluate()["top1"] == run.metrics["top1"]
            True
            >>> run.evaluate(posthoc="la", tau=1.0)["few"]
        """
        from ..checkpoint import write_json_atomic

        log = say(progress)
        if target_prior is not None:
            metrics = self._evaluate_target_prior(target_prior, posthoc, tau, pn_mass, imbalance_factor, class_counts, split, progress)
            name = "target_prior"
        else:
            from ..evaluation import evaluate_checkpoint
            from ..posthoc import format_configured
            from ..protocol import SELECTED_ON_TEST

            with quiet(progress):
                metrics = evaluate_checkpoint(self.source, split=split, overrides=self.overrides, posthoc=posthoc, tau=tau,
                                              pn_mass=pn_mass, imbalance_factor=imbalance_factor, class_counts=class_counts)
            tag = f"[{SELECTED_ON_TEST}] " if metrics.get("selected_on_test") else ""
            log(format_configured(metrics, f"{tag}{metrics['split']} metrics of {metrics['checkpoint_path']}"))
            name = metrics["posthoc"]["name"] if metrics["posthoc"] else "none"
        if save and _main_process():  # under torchrun every process evaluated its shard; rank 0 writes
            from ..run import store_calibrator

            out = self.path / f"eval_{name}.json"
            write_json_atomic(out, metrics)
            log(f"wrote {out}")
            if "calibrator" in metrics and store_calibrator(Path(metrics["checkpoint_path"]), metrics["calibrator"]):
                log(f"stored the run's calibration (for target priors) in {metrics['checkpoint_path']}")
        return metrics

    def _evaluate_target_prior(self, spec: str, posthoc, tau, pn_mass, imbalance_factor, class_counts, split, progress) -> dict:
        from ..shift import evaluate_target_prior, format_target_prior

        if posthoc or tau is not None or pn_mass or imbalance_factor or class_counts or split != "test":
            raise LongtailError("--target-prior resamples the test split and corrects to that prior on its own; "
                                "leave out --posthoc, --tau, --pn-mass, --imbalance-factor, --class-counts and --split")
        with quiet(progress):
            metrics = evaluate_target_prior(self.source, spec, overrides=self.overrides)
        say(progress)(format_target_prior(metrics, f"test metrics of {metrics['checkpoint_path']}"))
        return metrics

    def tune(self, posthoc: str, grid: Union[str, Sequence[float], None] = None, on: str = "val", *,
             pn_mass: Optional[str] = None, save: bool = True, progress: bool = False) -> dict:
        """Choose tau of a post-hoc correction on the validation split, as `longtail tune RUN --posthoc P` does.

        Args:
            posthoc: la, pn or tau_norm.
            grid: tau values: "start:stop:step" (stop included), "0.5,1,1.5" or a list; default "0:2:0.1".
            on: "val", or "test" (optimistic: everything returned then says TUNED ON TEST).
            pn_mass: PN's class mass, "val" or "transductive" (default the run's eval.pn_mass).
            save: write tune_<posthoc>.json into the run directory (the command always does).
            progress: print the tau curve and the test metrics at the chosen tau.

        Returns tune_<posthoc>.json's content: "tau", "curve" (one row per tau), "test" (metrics at tau).

        Examples:
            >>> result = longtail.load_run("runs/ce_imba100").tune("la", grid="0:2:0.25")
            >>> result["tau"], result["test"]["top1"]
        """
        from ..tune import DEFAULT_GRID, tune

        with quiet(progress):
            return tune(self.source, posthoc, grid=DEFAULT_GRID if grid is None else grid, on=on, overrides=self.overrides,
                        pn_mass=pn_mass, write=save and _main_process(), log=say(progress))

    def shift(self, priors: Union[str, Sequence[str], None] = None, calibration: str = "bcts", *, seed: int = 0,
              save: bool = True, progress: bool = False) -> "pandas.DataFrame":
        """Accuracy under other test class priors, with the label-shift corrections, as `longtail shift RUN` does.

        Args:
            priors: test priors (uniform, forward-IF, backward-IF, or files of per-class weights), a list or a
                comma-separated text; default forward-50, forward-10, uniform, backward-10, backward-50.
            calibration: "bcts" or "temperature", fitted on the validation split before correcting.
            seed: seed of the per-class test subsamples.
            save: write shift.json into the run directory (the command always does).
            progress: print the table.

        Returns one row per (test prior, correction): test_prior, n_images, correction (none, known, em,
        bbse), top1, mean_class_acc, prior_l1; `.attrs["calibration"]` holds the calibration's summary.

        Examples:
            >>> table = longtail.load_run("runs/ce_imba100").shift(["forward-10", "uniform"])
            >>> table.pivot(index="test_prior", columns="correction", values="top1")
        """
        from ..shift import DEFAULT_PRIORS, parse_prior_list, run_shift

        specs = list(DEFAULT_PRIORS) if priors is None else parse_prior_list(priors) if isinstance(priors, str) else list(priors)
        pandas = pandas_module()
        with quiet(progress):
            result = run_shift(self.source, specs, seed=seed, overrides=self.overrides, calibration=calibration,
                               write=save and _main_process(), log=say(progress))
        table = pandas.DataFrame(result["rows"])
        table.attrs["calibration"] = result["calibration"]
        return table

    def predict(self, images: Any, target_prior: Optional[str] = None, top_k: Optional[int] = 1, *,
                posthoc: Optional[str] = None, tau: Optional[float] = None, batch_size: Optional[int] = None,
                workers: int = 0, out: Union[str, Path, TextIO, None] = None, progress: bool = False) -> "pandas.DataFrame":
        """Predict images with the run's model and prediction rule, as `longtail predict RUN PATHS` does.

        Args:
            images: image files, folders (searched recursively), PIL images, or uint8 tensors (C, H, W) or
                (N, C, H, W); one of them or a list.
            target_prior: move the run's calibrated posteriors to this class prior (uniform, forward-IF,
                backward-IF or a file of per-class weights) instead of applying its rule.
            top_k: classes listed per image (None: 5, or the number of classes when smaller).
            posthoc: the prediction rule (default the run's eval.posthoc); tau: its strength.
            batch_size: images per batch (default the run's eval.batch_size); workers: decoding processes.
            out: also write the rows, as they come, to a .csv or .json file or (CSV) a text stream.
            progress: show a progress bar.

        Returns one row per image, in input order: path (None for an image given in memory), class_index,
        class_name, probability, top1_name, top1_prob, ..., error. An image that cannot be read gets a row
        with its reason in `error` and no prediction; `.attrs["summary"]` is the `PredictionSummary`.

        Examples:
            >>> rows = longtail.load_run("runs/ce_imba100").predict(["shirt.png", "photos/"])
            >>> rows[["path", "class_name", "probability", "error"]]
        """
        from ..predict import flat_row, predict_paths

        pandas = pandas_module()
        with quiet(progress):
            summary = predict_paths(self.source, images, out=out, top_k=top_k, posthoc=posthoc, tau=tau,
                                    target_prior=target_prior, overrides=self.overrides, batch_size=batch_size,
                                    workers=workers, progress=progress)
        table = pandas.DataFrame([flat_row(row) for row in summary.rows])
        table["class_index"] = table["class_index"].astype("Int64")  # an integer column with gaps (unreadable images)
        table.attrs["summary"] = summary
        return table

    def scores(self, split: str = "test") -> "tuple[torch.Tensor, torch.Tensor]":
        """The model's raw logits (N, C), before any post-hoc rule, and the labels (N,) of a split.

        Examples:
            >>> logits, labels = longtail.load_run("runs/ce_imba100").scores("test")
            >>> (logits.argmax(1) == labels).float().mean()
        """
        from ..evaluation import load_outputs

        if split not in ("val", "test"):
            raise LongtailError(f"split must be 'val' or 'test', got {split!r}")
        with quiet(False):
            outputs = load_outputs(self.source, self.overrides, [split])
        scored = outputs.split(split, alternative="use split='test'")
        return scored["logits"], scored["labels"]

    def export(self, path: Union[str, Path, None] = None, format: str = "onnx", prior_input: bool = False, *,
               posthoc: Optional[str] = None, tau: Optional[float] = None) -> "ExportResult":
        """Export the model with its prediction rule folded in, as `longtail export RUN --format F` does.

        Args:
            path: the file to write (default RUN/model.onnx or RUN/model.torchscript.pt).
            format: "onnx" or "torchscript".
            prior_input: take log q of a target prior as a second input `log_prior` (C,) and return the
                calibrated posteriors moved to q.
            posthoc: the rule folded in (default the run's eval.posthoc); tau: its strength.

        Returns the `ExportResult`: `.path`, `.metadata` and `.max_abs_diff` (exported against torch).

        Examples:
            >>> longtail.load_run("runs/ce_imba100").export("model.onnx").path
        """
        from ..export import export_run

        with quiet(False):
            return export_run(self.source, format, path, prior_input, posthoc, tau, self.overrides)


def load_run(path: str | Path, *overrides: Union[str, dict]) -> Run:
    """The `Run` of a run directory (or of a checkpoint file), with `key=value` overrides such as
    `dataset.root=/data` for where its data now is.

    Raises `LongtailError` when `path` is neither a run directory (with checkpoints/best.pt or last.pt)
    nor a checkpoint file.

    Examples:
        >>> import longtail
        >>> run = longtail.load_run("runs/ce_imba100")
        >>> run.evaluate(posthoc="la")["top1"]
    """
    from ..run import resolve_checkpoint

    resolve_checkpoint(path)  # a wrong path fails now, in one line
    return Run(path, override_strings(overrides))


__all__ = ["Run", "load_run"]
