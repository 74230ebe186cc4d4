"""Distributed training on CPU (gloo): samplers split every global batch exactly, gathered evaluation
keeps the set's order with uneven shards, BatchNorm statistics cover the global batch, and a
2-process torchrun run (and its resume) of the GALA loss matches the 1-process run with the same
global batch: metrics, weights and the loss's gradient statistics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import FMNIST_CONFIG, ddp_settings, epoch_rows, fit_here, torchrun
from longtail.data.fmnist import FILES, read_idx
from longtail.data.samplers import EpochSampler, SeededSampler

@pytest.mark.parametrize("class_balanced", [False, True])
def test_ranks_split_each_global_batch_exactly(class_balanced):
    labels = torch.tensor([0] * 50 + [1] * 20 + [2] * 6 + [3] * 4)  # 80 images, global batch 16
    one = list(SeededSampler(EpochSampler(labels, seed=3, class_balanced=class_balanced)))
    for world in (2, 4):
        ranks = [list(SeededSampler(EpochSampler(labels, 3, class_balanced=class_balanced, rank=r, world_size=world)))
                 for r in range(world)]
        per = 16 // world
        for k in range(5):
            joined = sorted(key for keys in ranks for key in keys[k * per:(k + 1) * per])
            assert joined == sorted(one[k * 16:(k + 1) * 16])  # same images with the same augmentation seeds
    if class_balanced:  # every class drawn about equally often
        counts = torch.bincount(labels[torch.tensor([i for i, _ in one])], minlength=4)
        assert counts.min() >= 10


def test_uneven_dataset_pads_to_equal_shards():
    labels = torch.zeros(11, dtype=torch.long)
    shards = [list(EpochSampler(labels, 0, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6  # one image repeats so both processes take the same steps
    assert sorted(set(shards[0]) | set(shards[1])) == list(range(11))


def _worker(rank: int, world: int, init_file: str, results: str) -> None:
    import torch.distributed as dist
    from torch import nn

    from longtail import distributed
    from longtail.models.sync_batchnorm import convert_sync_batchnorm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    # gather_strided: 7 rows sharded rank::2 (4 and 3 rows) come back in order on every rank
    rows = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)
    gathered = distributed.gather_strided(rows[rank::world])
    # GlobalBatchNorm on this rank's half of a batch vs BatchNorm on the whole batch
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5)
    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ours = convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), torch.device("cpu"))
    ours.load_state_dict(reference.state_dict())
    ddp = nn.parallel.DistributedDataParallel(ours)
    weights = torch.linspace(-1, 1, 8 * 4 * 3 * 3).view(8, 4, 3, 3)
    (reference(x) * weights).sum().div(8).backward()  # a per-image objective, averaged over the batch
    part = slice(rank * 4, rank * 4 + 4)
    (ddp(x[part]) * weights[part]).sum().div(4).backward()  # DDP averages the two halves' gradients
    torch.save({
        "gathered": gathered,
        "grads": [(p.grad, q.grad) for p, q in zip(reference.parameters(), ours.parameters())],
        "stats": [(reference[1].running_mean, ours[1].running_mean), (reference[1].running_var, ours[1].running_var)],
    }, f"{results}.{rank}")
    dist.destroy_process_group()


def test_gather_and_global_batchnorm_in_two_processes(tmp_path):
    # spawn, not fork: a child forked after earlier tests started OpenMP's thread pool can hang in it
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True,
                       start_method="spawn")
    for rank in range(2):
        out = torch.load(tmp_path / f"out.{rank}", weights_only=True)
        assert torch.equal(out["gathered"], torch.arange(21, dtype=torch.float32).view(7, 3))
        for ref, ours in out["grads"] + out["stats"]:
            assert torch.allclose(ref, ours, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- end to end


def _last(run: Path, part: str) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)[part]


def test_two_process_torchrun_matches_one_process_and_resumes(tmp_path, torchrun_reference, small_fmnist_root):
    """Over 30 s (four torchrun launches, two of them the session's shared reference): the only test of the
    2-process torchrun path end to end: gloo DDP training equal to one process on the global batch (metrics,
    weights, GALA's summed statistics), its resume after epoch 1, and evaluate and tune under torchrun writing once."""
    single = tmp_path / "one"
    settings = ddp_settings(small_fmnist_root)
    test_images = len(read_idx(small_fmnist_root / FILES["test_labels"]))
    fit_here(FMNIST_CONFIG, [*settings, "train.epochs=2"], single)  # one process, in this one: the same code
    reference = torchrun_reference
    first = reference.first_history
    assert len(first) == 1 and not (reference.run / "checkpoints" / ".last.pt.tmp").exists()
    double = tmp_path / "two"
    shutil.copytree(reference.run, double)  # evaluate --save and tune write into the run: into a copy
    resumed = reference.resumed
    # a resume, not a restart: it says where it resumed, trains epoch 2 only and keeps epoch 1's row byte for byte
    assert resumed.count(f"resuming '{reference.run}' after epoch 1") == 1, resumed
    assert "epoch 2/2" in resumed and "epoch 1/2" not in resumed, resumed
    assert (double / "epochs.jsonl").read_text().startswith(reference.first_row)
    assert json.loads((double / "metrics.json").read_text())["launches"] == [{"start_epoch": 0, "epochs": 1}, {"start_epoch": 1, "epochs": 1}]

    one, two = epoch_rows(single), epoch_rows(double)
    assert [r["epoch"] for r in two] == [1, 2]  # written once (by rank 0), resumed after epoch 1
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)  # averaged over both processes
        assert b["val_num_images"] == a["val_num_images"] == 100  # the whole validation set, gathered
        assert abs(b["val_top1"] - a["val_top1"]) <= 1.0
    m1, m2 = (json.loads((run / "metrics.json").read_text()) for run in (single, double))
    assert m2["num_images"] == m1["num_images"] == test_images
    assert m2["epoch"] == m1["epoch"]
    assert abs(m2["top1"] - m1["top1"]) <= 0.2  # percentage points: a few images on the decision boundary
    assert max(abs(a - b) for a, b in zip(m1["per_class"], m2["per_class"])) <= 1.0
    w1, w2 = _last(single, "model"), _last(double, "model")
    # float32 round-off in other summation orders only (measured 3e-5 after 6 steps, running statistics included);
    # per-process BatchNorm (train.sync_bn=false) already moves the first epoch's train_loss by 3e-4 relative
    worst = max((w1[k].float() - w2[k].float()).abs().max().item() for k in w1)
    assert worst < 1e-3, worst
    g1, g2 = _last(single, "loss"), _last(double, "loss")  # GALA's accumulated gradient statistics
    assert g1 and set(g1) == set(g2)
    for key in g1:
        assert g1[key].abs().sum() > 0 and torch.allclose(g1[key], g2[key], rtol=1e-4), key

    # evaluate and tune under torchrun: the whole test set, printed and written once (by rank 0)
    shown = torchrun("evaluate", str(double), "--posthoc", "la", "--save").stdout
    assert shown.count("test metrics of") == 1 and shown.count("without and with post-hoc la") == 1, shown  # one comparison table
    assert shown.count("wrote ") == 1, shown
    saved = json.loads((double / "eval_la.json").read_text())
    assert saved["num_images"] == test_images
    shown = torchrun("tune", str(double), "--posthoc", "la", "--grid", "0:1:0.5").stdout
    assert shown.count("wrote ") == 1 and shown.count("post-hoc la: validation top-1 over tau") == 1, shown
