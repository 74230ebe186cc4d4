"""Training and evaluation. The engine knows no method by name: it calls the model, the loss
(`loss(output[loss.input_key], targets)`, `loss.set_epoch`) and the data pipeline it is given.

Reading order: `train_one_epoch`, then `fit` (with its run-directory helpers). Running a model over a split
lives in `inference.py`, shared with evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import config, distributed, plugins, selection
from .calibration import calibration_summary
from .catalog import NO_RULE
from .checkpoint import TRAINING_STATE, load_checkpoint, load_state, remove_partial_writes, save_atomic, write_json_atomic, write_text_atomic
from .config import Config, dump_yaml, flat_dict, from_dict, to_dict
from .data import DataBundle
from .data.pipeline import TrainBatches, eval_batches, eval_splits_on_device, train_batches
from .data.samplers import epoch_generator
from .distributed import Runtime
from .errors import LongtailError
from .losses import Loss, create_loss
from .metrics import with_class_names
from .input_spec import CONFIG_KEYS as INPUT_KEYS
from .inference import autocast, describe, evaluate_split, predict_split, prepare_model, to_layout
from .models import create_model
from .models import finetune
from .models.freeze import train_mode
from .models.head_init import initialise_head
from .models.sync_batchnorm import convert_sync_batchnorm
from .optim import build_optimizer, build_scheduler
from .run import fit_calibrator, load_data, store_calibrator, store_fitted
from .posthoc import check_posthoc, class_mass, classifier_weight, configured_metrics, format_configured

# Keys that may change between a run and its resume without changing what is computed: each declares it in
# config.py (resume_safe). data.num_workers is not one: with workers, augmentation draws come from per-worker generators.
RESUME_SAFE_KEYS = config.RESUME_SAFE_KEYS
CHECK_EVERY = 25  # steps between host syncs (non-finite loss check, progress bar)


class NonFiniteLoss(LongtailError):
    pass


def train_one_epoch(
    model: nn.Module,
    criterion: Loss,
    batches: TrainBatches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: Config,
    runtime: Runtime,
    epoch: int,
    show_progress: bool,
) -> dict[str, float]:
    """One pass over `batches`. Loss values stay on the device and are checked every CHECK_EVERY steps.
    The reported train_loss is averaged over all processes (each process's batches are equal in size)."""
    train_mode(model)  # frozen parts of a decoupled model stay in eval mode
    criterion.train()
    device = runtime.device
    recent = torch.zeros(CHECK_EVERY, device=device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    images, steps, start = 0, 0, time.perf_counter()
    bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False, disable=None if show_progress else True)
    for x, y in batches:
        x, y = to_layout(x.to(device, non_blocking=True), cfg, device), y.to(device, non_blocking=True)
        with autocast(cfg, device):
            output = model(x)
        loss = criterion(output[criterion.input_key].float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        recent[steps % CHECK_EVERY] = loss.detach()
        loss_sum += loss.detach()
        steps += 1
        images += len(y)
        if steps % CHECK_EVERY == 0 or steps == len(batches):
            _check_finite(recent, steps, epoch)
            recent.zero_()
            if not bar.disable:  # reading the running loss is a second host sync; only for a visible bar
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{float(loss_sum) / steps:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.4g}",
                                img_s=f"{images * runtime.world_size / elapsed:.0f}")
                bar.update(steps - bar.n)
    bar.close()
    elapsed = time.perf_counter() - start
    distributed.all_reduce_sum(loss_sum)
    return {
        "train_loss": float(loss_sum) / max(steps, 1) / runtime.world_size,
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": images * runtime.world_size / elapsed,
        "epoch_time_s": elapsed,
    }


def _check_finite(recent: torch.Tensor, steps: int, epoch: int) -> None:
    bad = ~torch.isfinite(recent)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0])
        step = (steps - 1) // CHECK_EVERY * CHECK_EVERY + first + 1
        raise NonFiniteLoss(f"the loss became {recent[first].item()} at step {step} of epoch {epoch + 1}")


# ----------------------------------------------------------------------------- run directory


@dataclass
class Progress:
    """Everything about where training stands that is not a module's state_dict."""

    epoch: int = 0  # epochs completed
    best_score: float = -math.inf
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    # one entry per launch of `train`: {"start_epoch": epochs done when it started, "epochs": epochs it trained},
    # so a resumed run shows where it resumed and that it retrained nothing (a launch killed before its
    # first checkpoint leaves no entry; metrics.json gets the list)
    launches: list[dict[str, int]] = field(default_factory=list)


def _check_writable(run_dir: Path) -> None:
    """Fail in seconds, before any data is loaded, when the run directory cannot be written."""
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / "checkpoints" / ".write_probe.tmp"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise LongtailError(f"cannot write to the run directory '{run_dir}' ({exc.strerror or exc}); pass --out with a writable folder") from None


def _check_space(run_dir: Path, model: nn.Module) -> None:
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    needed = 6 * param_bytes + 64 * 2**20  # best + last + temp copies with optimizer state, and logs
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise LongtailError(f"only {free / 2**20:.0f} MiB free under '{run_dir}', checkpoints need about {needed / 2**20:.0f} MiB; free some space or use --out elsewhere")


def _config_differences(saved: Config, current: Config) -> list[str]:
    before, after = flat_dict(saved), flat_dict(current)
    return sorted(k for k in after if k not in RESUME_SAFE_KEYS and before.get(k) != after[k])


def _stored_input(cfg: Config, resume_ckpt: Optional[dict]) -> Optional[dict]:
    """A resumed run keeps the input spec it was trained with (its last.pt's), unless --allow-config-change changed
    a data.* key of the spec; then, and for a fresh run, the spec is built from the config."""
    if resume_ckpt is None:
        return None
    changed = _config_differences(from_dict(resume_ckpt["config"]), cfg)
    return None if any(k in changed for k in INPUT_KEYS) else resume_ckpt


def _write_history(run_dir: Path, history: list[dict]) -> None:
    write_text_atomic(run_dir / "epochs.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def _read_metrics(run_dir: Path) -> Optional[dict]:
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, or edited by hand into invalid JSON: test again
        return None
    return metrics if isinstance(metrics, dict) else None


def checkpoint_payload(cfg: Config, bundle: DataBundle, model: nn.Module, **extra: Any) -> dict[str, Any]:
    """What any checkpoint carries so it can be evaluated on its own."""
    return {
        "config": to_dict(cfg),
        "class_counts": bundle.class_counts,
        "class_names": bundle.names(),
        "num_classes": bundle.num_classes,
        "in_channels": bundle.in_channels,
        "input": bundle.spec.to_dict(),  # the one record of mean, std, size and resize (input_spec.py)
        "model": finetune.model_state(model, cfg.model),
        **({"base": base} if (base := finetune.base_identity(cfg.model)) is not None else {}),
        "plugins": plugins.recorded(),  # the plugin files whose components the run uses (plugins.reload_recorded)
        **extra,
    }


def _seed_epoch(seed: int, epoch: int) -> None:
    # Every random draw of an epoch (augmentation, dropout) follows from (seed, epoch) alone,
    # so resuming at an epoch boundary reproduces the uninterrupted run exactly. DataLoader
    # workers are seeded from the loader's own epoch generator (data/loader.py).
    epoch_seed = int(epoch_generator(seed, epoch, stream=2).initial_seed())
    torch.manual_seed(epoch_seed)
    random.seed(epoch_seed)
    np.random.seed(epoch_seed % 2**32)


def _set_determinism(cfg: Config, device: torch.device) -> None:
    if device.type == "cpu" and cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.train.deterministic


def fit(cfg: Config, run_dir: str | Path, allow_config_change: bool = False) -> dict:
    """Train, select the checkpoint (train.select: see selection.py), test it, write metrics.json."""
    run_dir = Path(run_dir)
    runtime = distributed.setup(cfg.device)
    try:
        with _own_run_dir(run_dir, runtime):
            return _fit(cfg, run_dir, runtime, allow_config_change)
    finally:
        distributed.cleanup()


@contextmanager
def _own_run_dir(run_dir: Path, runtime: Runtime) -> Iterator[None]:
    """The main process checks the run directory is writable, then holds a lock on it for the whole run
    (a second process on the same folder, e.g. a requeued job, is refused instead of racing this one)
    and deletes temp files a killed process left behind. The OS releases the lock when the process dies."""
    if not runtime.is_main:
        yield
        return
    _check_writable(run_dir)
    with open(run_dir / "checkpoints" / ".lock", "a") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            raise LongtailError(f"run directory '{run_dir}' is in use by another longtail process; wait for it to end or use --out with another folder") from None
        except (ImportError, OSError):  # no flock here (Windows, some network file systems): run unlocked
            pass
        for directory in (run_dir, run_dir / "checkpoints"):
            remove_partial_writes(directory)
        yield


def _fit(cfg: Config, run_dir: Path, runtime: Runtime, allow_config_change: bool) -> dict:
    log = print if runtime.is_main else (lambda *a, **k: None)
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    resume_ckpt = _resume_checkpoint(cfg, run_dir, last_path, allow_config_change, log)
    if resume_ckpt is not None and resume_ckpt["progress"]["epoch"] >= cfg.train.epochs:
        finished = _read_metrics(run_dir)
        if finished is not None:
            log(f"run '{run_dir}' already finished {cfg.train.epochs} epochs; nothing to do (metrics.json is unchanged)")
            return finished

    _set_determinism(cfg, runtime.device)
    torch.manual_seed(cfg.seed)
    bundle = eval_splits_on_device(load_data(cfg, _stored_input(cfg, resume_ckpt)), runtime.device)
    model = _build_model(cfg, bundle, runtime, fresh=resume_ckpt is None).to(runtime.device)
    if runtime.distributed and cfg.train.sync_bn:
        model = convert_sync_batchnorm(model, runtime.device)
    log(finetune.describe(*finetune.freeze(model, cfg.model), cfg.model))
    if resume_ckpt is None:
        initialise_head(model, cfg.model.head_init, _head_context(cfg, bundle, runtime))
    model = prepare_model(model, cfg, runtime.device)
    if cfg.eval.posthoc != NO_RULE:  # fail now, not after training, if the model cannot take it
        check_posthoc(cfg.eval.posthoc, classifier_weight(model))
    criterion = create_loss(cfg.loss, bundle.class_counts).to(runtime.device)
    batches = train_batches(bundle, cfg, runtime)
    optimizer = build_optimizer(model, cfg.train, fused=runtime.device.type == "cuda")
    progress = Progress()
    if resume_ckpt is not None:
        progress = _restore(resume_ckpt, last_path, model, optimizer, criterion)
    # the schedule is a function of the step count, so resuming needs no saved scheduler state
    scheduler = build_scheduler(optimizer, cfg.train, len(batches), start_step=progress.epoch * len(batches))
    if runtime.is_main:
        _check_space(run_dir, model)
        write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
        for name, text in bundle.split_files.items():  # how the data was split, to audit or reuse (data/folder.py)
            write_text_atomic(run_dir / name, text)
        if resume_ckpt is not None:
            _settle_killed_run(run_dir, progress, best_path, lambda: _best_payload(cfg, bundle, model, progress))
            log(f"resuming '{run_dir}' after epoch {progress.epoch}")
    for note in bundle.notes:
        log(note)
    log(f"computing on {describe(cfg, runtime.device)}")
    distributed.barrier()
    train_model: nn.Module = model
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.train.compile:
        train_model = torch.compile(train_model)

    writer = _tensorboard(run_dir, progress.epoch) if runtime.is_main else None
    show_progress = cfg.train.progress and runtime.is_main
    score_key = selection.score_key(cfg, bundle.val is not None)
    if selection.selects_on_test(cfg):
        log(selection.WARNING)
    progress.launches.append({"start_epoch": progress.epoch, "epochs": 0})
    for epoch in range(progress.epoch, cfg.train.epochs):
        _seed_epoch(cfg.seed, epoch)
        criterion.set_epoch(epoch)
        batches.set_epoch(epoch)
        try:
            stats = train_one_epoch(train_model, criterion, batches, optimizer, scheduler, cfg, runtime, epoch, show_progress)
        except NonFiniteLoss as exc:
            kept = f"the last good checkpoint '{last_path}' (epoch {progress.epoch}) was kept" if progress.epoch else "no checkpoint had been written yet"
            raise NonFiniteLoss(f"{exc}; training stopped and {kept}; lower train.lr or check the data") from None
        row: dict[str, Any] = {"epoch": epoch + 1, **stats}
        last_epoch = epoch + 1 == cfg.train.epochs
        evaluated = (epoch + 1) % cfg.train.eval_every == 0 or last_epoch
        if bundle.val is not None and evaluated:
            val = evaluate_split(model, bundle.val, bundle, cfg, runtime)
            row.update({f"val_{k}": v for k, v in val.items() if k != "per_class"})
        if evaluated and (selection.selects_on_test(cfg) or cfg.eval.test_every_epoch):
            row.update(selection.test_scores(model, bundle, cfg, runtime))
        score = selection.epoch_score(row, score_key)
        improved = score is not None and score > progress.best_score
        if improved:
            progress.best_score, progress.best_epoch = score, epoch + 1
        progress.epoch = epoch + 1
        progress.history.append(row)
        progress.launches[-1]["epochs"] += 1
        if runtime.is_main:
            # Order matters for a kill at any line: TensorBoard first (a resume purges events past last.pt),
            # then last.pt, the epoch's commit point (no RNG state in it: every epoch reseeds from (seed, epoch)),
            # then best.pt, which a resume rebuilds from last.pt if the kill came between the two.
            _log_scalars(writer, row)
            save_atomic(checkpoint_payload(
                cfg, bundle, model, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                loss=criterion.state_dict(), progress=dict(progress.__dict__),
            ), last_path)
            if improved:
                save_atomic(_best_payload(cfg, bundle, model, progress), best_path)
            _write_history(run_dir, progress.history)
            log(_epoch_line(row, cfg.train.epochs) + selection.epoch_note(row, cfg))
        distributed.barrier()
    if writer is not None:
        writer.close()
    return _final_test(cfg, run_dir, bundle, model, runtime, progress, best_path)


def _best_payload(cfg: Config, bundle: DataBundle, model: nn.Module, progress: Progress) -> dict[str, Any]:
    """best.pt when the model holds the weights of the epoch just finished (the best one)."""
    return checkpoint_payload(cfg, bundle, model, epoch=progress.epoch, val=progress.history[-1].get("val_top1"))


def _restore(ckpt: dict, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Loss) -> Progress:
    """Load the training state of last.pt. Optimizer hyper-parameters (lr, momentum, weight decay) keep
    the values of the current config: equal to the saved ones unless --allow-config-change changed them."""
    finetune.load_model_state(model, ckpt["model"], "base" in ckpt, path)
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise LongtailError(f"the optimizer state in '{path}' does not fit this model ({type(exc).__name__}); it was saved by another model or optimizer") from None
    for group, values in zip(optimizer.param_groups, hyper):
        group.update(values)
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != p.shape:
                    raise LongtailError(f"the optimizer state '{name}' in '{path}' has shape {tuple(value.shape)} where the model has {tuple(p.shape)}; the checkpoint is damaged")
    load_state(criterion, ckpt["loss"], "loss", path)
    saved = ckpt["progress"]
    return Progress(**{**saved, "history": list(saved["history"]), "launches": [dict(x) for x in saved.get("launches", [])]})


def _settle_killed_run(run_dir: Path, progress: Progress, best_path: Path, best_payload) -> None:
    """Finish what a killed process left half done, so the run directory agrees with last.pt: rebuild
    best.pt when the kill fell between writing last.pt and best.pt, and rewrite epochs.jsonl (it may lack
    the last epoch). Temp files of interrupted writes are already gone (`_own_run_dir`)."""
    if progress.best_epoch == progress.epoch:  # the last epoch was the best: best.pt must hold it
        best_epoch = None
        if best_path.is_file():
            try:
                best_epoch = load_checkpoint(best_path).get("epoch")
            except LongtailError:
                best_epoch = None  # unreadable: rebuilt below from last.pt's weights
        if best_epoch != progress.epoch:
            save_atomic(best_payload(), best_path)
    _write_history(run_dir, progress.history)


def _head_context(cfg: Config, bundle: DataBundle, runtime: Runtime) -> dict[str, Any]:
    """What model.head_init may read: the whole training set in evaluation form (on every process, so all
    start equal), the class count and names, the device."""
    alone = dataclasses.replace(runtime, rank=0, world_size=1)
    return {"batches": lambda: eval_batches(bundle.train, bundle, cfg, alone), "num_classes": bundle.num_classes,
            "class_names": bundle.class_names, "device": runtime.device}


def _build_model(cfg: Config, bundle: DataBundle, runtime: Runtime, fresh: bool) -> nn.Module:
    """The model; `model.pretrained` applies to a fresh run, and to a resumed one whose last.pt holds only the
    trained tensors (model.finetune: the base comes from the same file again). Rank 0 builds first, so a
    download lands in the cache once before the others read it."""
    keep_base = fresh or finetune.stores_trained_only(cfg.model)
    model_cfg = cfg.model if keep_base else dataclasses.replace(cfg.model, pretrained=None)
    model = create_model(model_cfg, bundle.num_classes, bundle.in_channels) if runtime.is_main else None
    if model_cfg.pretrained is not None:
        distributed.barrier()
    if model is None:
        model = create_model(model_cfg, bundle.num_classes, bundle.in_channels)
    return model


def _resume_checkpoint(cfg: Config, run_dir: Path, last_path: Path, allow_config_change: bool, log) -> Optional[dict]:
    if not cfg.train.resume:
        if last_path.exists() or (run_dir / "metrics.json").exists():
            raise LongtailError(f"run directory '{run_dir}' already holds a run; pass train.resume=true to continue it or --out with a new folder")
        return None
    if not last_path.exists():
        if (run_dir / "metrics.json").exists():
            raise LongtailError(f"run directory '{run_dir}' has metrics.json but no checkpoints/last.pt to resume from; use --out with a new folder")
        # killed before its first checkpoint (or never started): nothing to continue, so start it
        log(f"no checkpoint in '{run_dir}' yet; starting the run from epoch 1")
        return None
    ckpt = load_checkpoint(last_path, require=tuple(TRAINING_STATE))
    if "base" in ckpt:
        finetune.check_base(cfg.model, ckpt["base"], last_path)
    try:
        saved = from_dict(ckpt["config"])
    except LongtailError as exc:
        raise LongtailError(f"the config stored in '{last_path}' cannot be read by this longtail ({exc})") from None
    changed = _config_differences(saved, cfg)
    if changed and not allow_config_change:
        raise LongtailError(
            f"the config differs from the run being resumed in: {', '.join(changed)}; "
            "restore those keys or pass --allow-config-change"
        )
    return ckpt


def _final_test(cfg: Config, run_dir: Path, bundle: DataBundle, model: nn.Module, runtime: Runtime,
                progress: Progress, best_path: Path) -> dict:
    chosen = "best" if best_path.exists() else "last"
    if chosen == "best":
        best = load_checkpoint(best_path)
        finetune.load_model_state(model, best["model"], "base" in best, best_path)
    # one pass per split; the raw and post-hoc metrics are both computed from these outputs
    test = predict_split(model, bundle.test, bundle, cfg, runtime)
    val = predict_split(model, bundle.val, bundle, cfg, runtime) if bundle.val is not None else None  # pn mass, calibration
    metrics = configured_metrics(cfg.eval.posthoc, cfg.eval.tau, cfg.eval.pn_mass, test, val,
                                 bundle.class_counts, classifier_weight(model))
    metrics["calibration"] = calibration_summary(test, val, f"no validation split (dataset.val_source={cfg.dataset.val_source})")
    if val is not None:  # what a target prior needs (priors.py), stored with the checkpoint reported
        metrics["calibrator"] = fit_calibrator(val, bundle.num_classes)
    metrics.update({
        "split": "test",
        "checkpoint": chosen,
        "epoch": progress.best_epoch,
        "selected_by": selection.selected_by(cfg, bundle.val is not None),
        "class_counts": bundle.class_counts,
        **selection.protocol_fields(cfg),
    })
    metrics = with_class_names(metrics, bundle.names())
    metrics["launches"] = progress.launches
    if runtime.is_main:
        if "calibrator" in metrics:
            reported = best_path if chosen == "best" else run_dir / "checkpoints" / "last.pt"
            store_calibrator(reported, metrics["calibrator"])
            # what a rule fits on validation (PN's class mass), so predict and export need no dataset
            store_fitted(reported, {"class_mass": class_mass(val["logits"]).tolist()})
        write_json_atomic(run_dir / "metrics.json", metrics)
        title = f"{selection.tag(cfg)}test metrics of the {chosen} checkpoint (epoch {progress.best_epoch})"
        print(format_configured(metrics, title))
    return metrics


def _tensorboard(run_dir: Path, start_epoch: int):
    from torch.utils.tensorboard import SummaryWriter

    # purge_step hides the events a killed run logged past its last checkpoint (steps are 1-based epochs)
    return SummaryWriter(str(run_dir / "tb"), purge_step=start_epoch + 1)


def _log_scalars(writer, row: dict) -> None:
    if writer is None:
        return
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)) and value is not None:
            writer.add_scalar(key.replace("val_", "val/").replace("train_", "train/"), value, row["epoch"])
    writer.flush()


def _epoch_line(row: dict, epochs: int) -> str:
    text = f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s"
    if "val_top1" in row:
        groups = "/".join("n/a" if row.get(f"val_{g}") is None else f"{row[f'val_{g}']:.1f}" for g in ("many", "medium", "few"))
        text += f"  val top1 {row['val_top1']:.2f}  many/med/few {groups}"
    return text
