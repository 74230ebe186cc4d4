"""The device pipeline: augmentation statistics against the loader's transforms, per-image AutoAugment
semantics against torchvision, bit-identical batches with the loader when augmentation is off, resume,
and a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.transforms import v2

from longtail.config import DataConfig, load_config
from longtail.data.base import DataBundle, TensorImages
from longtail.data.batch_augment import PAD, BatchAugment, cutout
from longtail.data.batch_autoaugment import NUM_BINS, BatchAutoAugment, torchvision_policy
from longtail.data.device import DevicePipeline
from longtail.data.loader import LoaderPipeline, TransformedImages
from longtail.data.pipeline import choose_pipeline
from longtail.data.samplers import EpochSampler
from longtail.data.transforms import Cutout, train_transform
from longtail.errors import LongtailError
from longtail.input_spec import InputSpec

CPU = torch.device("cpu")
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def chi_square_uniform(values: torch.Tensor, bins: int) -> float:
    counts = torch.bincount(values, minlength=bins).double()
    assert len(counts) == bins, "a value fell outside the expected range"
    expected = len(values) / bins
    return float(((counts - expected) ** 2 / expected).sum())


# chi-square critical values at p = 0.001 (df = bins - 1): a correct sampler fails once in a thousand seeds
CHI2_DF8, CHI2_DF31 = 26.12, 61.10


def coordinate_images(n: int, size: int = 32) -> torch.Tensor:
    """Channel 0 holds row + 1, channel 1 column + 1, channel 2 is 200: where a crop came from is readable."""
    rows = torch.arange(1, size + 1, dtype=torch.uint8).view(size, 1).expand(size, size)
    cols = rows.t()
    image = torch.stack([rows, cols, torch.full((size, size), 200, dtype=torch.uint8)])
    return image.expand(n, 3, size, size).contiguous()


def random_split(n: int, classes: int = 10, size: int = 32, channels: int = 3, seed: int = 0) -> TensorImages:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes  # every class present, in a scrambled order below
    return TensorImages(images, labels[torch.randperm(n, generator=g)])


def device_pipeline(split: TensorImages, augment: BatchAugment, batch_size: int = 64, seed: int = 3,
                    chunk_images=None, **sampler_args) -> DevicePipeline:
    sampler = EpochSampler(split.labels, seed=seed, **sampler_args)
    return DevicePipeline(split, sampler, batch_size, seed, CPU, spec_of(split), augment, chunk_images=chunk_images)


def spec_of(split: TensorImages) -> InputSpec:
    """In-memory images at their own size, normalised with MEAN / STD (their first C values)."""
    channels, size = split.images.shape[1], split.images.shape[-1]
    return InputSpec(channels, size, MEAN[:channels], STD[:channels], crop_pct=1.0)


def epoch(pipeline, e: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    pipeline.set_epoch(e)
    return list(pipeline)


def raw_augmented(augment: BatchAugment, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return augment.apply(images, augment.draw(len(images), torch.Generator().manual_seed(seed)))


# ----------------------------------------------------------------------------- crop, flip, Cutout


def test_crop_offsets_uniform_over_the_loaders_range():
    n = 4500
    images = coordinate_images(n)
    out = raw_augmented(BatchAugment(32, 32, crop=True, flip=False), images)
    # out[i, j] = source[i + dy - 4, j + dx - 4]; at (8, 8) the source pixel is always inside the image
    dy, dx = out[:, 0, 8, 8].long() - 1 - 8 + PAD, out[:, 1, 8, 8].long() - 1 - 8 + PAD
    # the loader's v2.RandomCrop(32, padding=4) on the same image, one at a time
    loader_crop = v2.RandomCrop(32, padding=4)
    torch.manual_seed(0)
    ref = torch.stack([loader_crop(images[0]) for _ in range(900)])
    ref_dy = ref[:, 0, 8, 8].long() - 1 - 8 + PAD
    for offsets in (dy, dx, ref_dy):
        assert int(offsets.min()) == 0 and int(offsets.max()) == 2 * PAD
        assert chi_square_uniform(offsets, 2 * PAD + 1) < CHI2_DF8
    assert abs(float(dy.double().mean()) - PAD) < 0.15 and abs(float(dx.double().mean()) - PAD) < 0.15
    # padding is zero, as v2.RandomCrop's default fill: a crop from the top-left corner starts with 4 zero rows
    corner = torch.nonzero((dy == 0) & (dx == 0)).flatten()[0]
    assert out[corner, :, :PAD].eq(0).all() and out[corner, :, :, :PAD].eq(0).all()
    assert torch.equal(out[corner, :, PAD:, PAD:], images[0, :, : 32 - PAD, : 32 - PAD])


def test_flip_rate_is_one_half_and_flips_exactly():
    n = 4000
    images = coordinate_images(n)
    out = raw_augmented(BatchAugment(32, 32, crop=False, flip=True), images, seed=1)
    flipped = out[:, 1, 0, 0] == 32  # column 31 moved to the left edge
    assert torch.equal(out[flipped], images[flipped].flip(-1))
    assert torch.equal(out[~flipped], images[~flipped])
    rate = float(flipped.double().mean())
    assert abs(rate - 0.5) < 3.3 * (0.25 / n) ** 0.5


def hole_boxes(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(heights, widths, row/col starts and stops) of the zeroed square of each image (channel 0)."""
    hole = out[:, 0] == 0
    rows, cols = hole.any(2), hole.any(1)
    heights, widths = rows.sum(1), cols.sum(1)
    y0 = rows.long().argmax(1)
    x0 = cols.long().argmax(1)
    # the zeros form one full rectangle per image
    assert torch.equal(hole.sum((1, 2)), heights * widths)
    return heights, widths, torch.stack([y0, y0 + heights, x0, x0 + widths], 1)


def test_cutout_size_clipping_and_centre_distribution():
    n, size = 3200, 16
    images = torch.full((n, 3, 32, 32), 255, dtype=torch.uint8)
    out = raw_augmented(BatchAugment(32, 32, crop=False, flip=False, cutout=size), images, seed=2)
    heights, widths, box = hole_boxes(out)
    assert heights.max() == size and widths.max() == size
    assert heights.min() == size // 2 and widths.min() == size // 2  # centre on the border: half the square
    # a hole smaller than `size` must touch the border it was clipped at
    short = heights < size
    assert torch.all((box[short, 0] == 0) | (box[short, 1] == 32))
    # recover the centre: y0 = cy - 8 unless clipped at the top, then y1 = cy + 8
    cy = torch.where(box[:, 0] > 0, box[:, 0] + size // 2, box[:, 1] - size // 2)
    cx = torch.where(box[:, 2] > 0, box[:, 2] + size // 2, box[:, 3] - size // 2)
    assert chi_square_uniform(cy, 32) < CHI2_DF31 and chi_square_uniform(cx, 32) < CHI2_DF31


def test_cutout_matches_the_loader_cutout_for_the_same_centre():
    image = torch.full((3, 28, 28), 255, dtype=torch.uint8)
    for seed in range(30):
        torch.manual_seed(seed)
        ref = Cutout(10)(image)
        torch.manual_seed(seed)  # replay the two centre draws Cutout made
        cy, cx = int(torch.randint(28, ())), int(torch.randint(28, ()))
        ours = cutout(image[None], torch.tensor([[cy, cx]]), 10)[0]
        assert torch.equal(ours, ref), (seed, cy, cx)
    # a hand-worked corner case: centre (0, 31) of a 32x32 image, size 16 -> rows 0..7, columns 23..31
    out = cutout(torch.ones(1, 1, 32, 32, dtype=torch.uint8), torch.tensor([[0, 31]]), 16)[0, 0]
    expected = torch.ones(32, 32, dtype=torch.uint8)
    expected[0:8, 23:32] = 0
    assert torch.equal(out, expected)


# ----------------------------------------------------------------------------- AutoAugment


def replay_torchvision_draws(aa: BatchAutoAugment, height: int, width: int) -> list[int]:
    """The variant ids v2.AutoAugment(CIFAR10) will pick from the global RNG's current state, drawn the way
    its forward() draws them: sub-policy, then per operation u <= p and, for signed magnitudes, the sign."""
    subpolicies, space = torchvision_policy(v2.AutoAugmentPolicy.CIFAR10)
    k = int(torch.randint(len(subpolicies), ()))
    ids = []
    for slot, (name, probability, _) in enumerate(subpolicies[k]):
        if not torch.rand(()) <= probability:
            ids.append(-1)
            continue
        bins, signed = space[name]
        negate = bins(NUM_BINS, height, width) is not None and signed and bool(torch.rand(()) <= 0.5)
        ids.append(int((aa.minus if negate else aa.plus)[k, slot]))
    return ids


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_autoaugment_matches_torchvision_image_by_image(shape):
    """One batched call with the draws torchvision made equals torchvision's AutoAugment on every image."""
    c, h, w = shape
    aa = BatchAutoAugment(h, w)
    reference = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    n = 120
    images = random_split(n, size=h, channels=c, seed=5).images
    expected, ids = [], []
    for i in range(n):
        torch.manual_seed(1000 + i)
        expected.append(reference(images[i]))
        torch.manual_seed(1000 + i)
        ids.append(replay_torchvision_draws(aa, h, w))
    variants = torch.tensor(ids)
    assert len({tuple(r) for r in ids}) > 20  # many different operation pairs in the one batch
    out = aa(images, variants)
    assert torch.equal(out, torch.stack(expected))
    # the input batch is left as it was
    assert torch.equal(images, random_split(n, size=h, channels=c, seed=5).images)


def test_autoaugment_is_per_image_within_a_batch():
    aa = BatchAutoAugment(32, 32)
    n = 512
    variants = aa.draw(n, torch.Generator().manual_seed(0))
    # the same image repeated: its copies must come out different, as each draws its own sub-policy
    image = random_split(1, seed=1).images.expand(n, 3, 32, 32)
    out = aa(image, variants)
    distinct = {tuple(v) for v in variants.tolist()}
    assert len(distinct) > 30
    assert len(torch.unique(out.flatten(1), dim=0)) > 20
    # the images that drew nothing are untouched, the others (mostly) changed
    none = (variants == -1).all(1)
    assert torch.equal(out[none], image[none])


def test_autoaugment_draws_each_images_sub_policy_uniformly():
    """The draws the batch op makes: every image its own sub-policy, uniform over the 25, and operations
    that belong to the sub-policy drawn, applied at its probabilities."""
    aa = BatchAutoAugment(32, 32)
    assert aa.num_subpolicies == 25
    policy, variants = aa.draw_with_subpolicies(20000, torch.Generator().manual_seed(1))
    assert torch.equal(variants, aa.draw(20000, torch.Generator().manual_seed(1)))  # what `draw` hands the op
    assert chi_square_uniform(policy, aa.num_subpolicies) < 51.18  # df 24, p = 0.001
    # per image within a batch: every batch of 256 mixes many sub-policies
    for batch in policy.split(256):
        assert len(torch.unique(batch)) >= 20
    # each slot holds the drawn sub-policy's operation (either sign) or -1
    for slot in range(2):
        ids = variants[:, slot]
        allowed = (ids == -1) | (ids == aa.plus[policy, slot]) | (ids == aa.minus[policy, slot])
        assert bool(allowed.all())
        # applied at the sub-policy's probability: the count per slot is binomial, within 4.5 standard deviations
        p = aa.prob[policy, slot]
        applied = float((ids >= 0).sum())
        assert abs(applied - float(p.sum())) < 4.5 * float((p * (1 - p)).sum().sqrt())


def test_autoaugment_identity_magnitudes_change_nothing():
    from longtail.data.batch_autoaugment import OPS

    x = random_split(16, seed=2).images
    for name, magnitude in [("ShearX", 0.0), ("ShearY", 0.0), ("TranslateX", 0.0), ("TranslateY", 0.0), ("Rotate", 0.0),
                            ("Brightness", 0.0), ("Color", 0.0), ("Contrast", 0.0), ("Sharpness", 0.0), ("Posterize", 8.0)]:
        assert torch.equal(OPS[name](x, magnitude), x), name
    assert torch.equal(OPS["Invert"](OPS["Invert"](x, 0.0), 0.0), x)
    assert torch.equal(OPS["Brightness"](x, -1.0), torch.zeros_like(x))  # factor 0: black
    # the magnitude table: signed operations come in +/- pairs, Posterize bins are integers 4..8
    mags = {name: [] for name in OPS}
    aa = BatchAutoAugment(32, 32)
    for name, m in aa.variants:
        mags[name].append(m)
    assert sorted(mags["TranslateY"]) == pytest.approx([-14.5015, -4.8338, 4.8338, 14.5015], abs=1e-3)  # 150/331*32*k/9
    assert all(float(m).is_integer() and 4 <= m <= 8 for m in mags["Posterize"])


# ----------------------------------------------------------------------------- against the loader pipeline


def loader_pipeline(split: TensorImages, data: DataConfig, batch_size: int = 64, seed: int = 3,
                    **sampler_args) -> LoaderPipeline:
    dataset = TransformedImages(split, train_transform(data, spec_of(split), split.images.shape[-1]))
    return LoaderPipeline(dataset, EpochSampler(split.labels, seed=seed, **sampler_args), batch_size, seed, num_workers=0)


@pytest.mark.parametrize("sampler_args", [{}, {"class_balanced": True}, {"rank": 1, "world_size": 2}])
def test_device_and_loader_batches_are_identical_without_augmentation(sampler_args):
    split = random_split(230)  # 230 = 3 full batches of 64 and a short one
    off = DataConfig(crop=False, flip=False, autoaugment=False, cutout=0)
    loader = loader_pipeline(split, off, **sampler_args)
    device = device_pipeline(split, BatchAugment(32, 32, crop=False, flip=False), **sampler_args)
    assert len(loader) == len(device)
    for e in (0, 1):
        a, b = epoch(loader, e), epoch(device, e)
        assert len(a) == len(b) == len(device)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert xa.dtype == xb.dtype == torch.float32 and ya.dtype == yb.dtype == torch.int64
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(epoch(device, 0)[0][1], epoch(device, 1)[0][1])  # a new order each epoch


def test_distributed_shares_cover_the_global_order():
    split = random_split(101)
    aug = BatchAugment(32, 32, crop=True, flip=True, autoaugment=True, cutout=8)
    single = torch.cat([x for x, _ in epoch(device_pipeline(split, aug, batch_size=101), 0)])
    shares = [torch.cat([x for x, _ in epoch(device_pipeline(split, aug, batch_size=51, rank=r, world_size=2), 0)])
              for r in (0, 1)]
    # rank r holds global positions r, r + 2, ...; the padded last position repeats position 0
    assert torch.equal(shares[0], single[0::2]) and torch.equal(shares[1][:50], single[1::2])


def test_chunk_size_changes_nothing():
    split = random_split(200)
    aug = BatchAugment(32, 32, crop=True, flip=True, autoaugment=True, cutout=16)
    per_batch = epoch(device_pipeline(split, aug, batch_size=32, chunk_images=32), 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:  # the pipeline works on one thread but hands every batch out with the caller's setting restored
        pipeline = device_pipeline(split, aug, batch_size=32, chunk_images=10_000)
        pipeline.set_epoch(2)
        whole = []
        for batch in pipeline:
            assert torch.get_num_threads() == 2
            whole.append(batch)
    finally:
        torch.set_num_threads(threads)
    for (xa, ya), (xb, yb) in zip(per_batch, whole):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_resumed_pipeline_sees_the_same_augmentation():
    split = random_split(150)
    aug = BatchAugment(32, 32, crop=True, flip=True, autoaugment=True, cutout=16)
    running = device_pipeline(split, aug)
    epochs = [epoch(running, e) for e in range(3)]
    resumed = epoch(device_pipeline(split, aug), 2)  # a fresh process resuming at epoch 2
    for (xa, ya), (xb, yb) in zip(epochs[2], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(epochs[1][0][0], epochs[2][0][0])


# ----------------------------------------------------------------------------- selection and end to end


def test_auto_selects_device_for_in_memory_datasets():
    split = random_split(20)
    bundle = DataBundle("cifar10_lt", split, None, split, [2] * 10, 10, 3, MEAN, STD, input=spec_of(split))
    assert choose_pipeline(bundle, load_config()) == "device"
    assert choose_pipeline(bundle, load_config(overrides=["data.pipeline=loader"])) == "loader"
    assert choose_pipeline(bundle, load_config(overrides=["data.randaugment=true"])) == "loader"
    with pytest.raises(LongtailError, match="data.randaugment"):
        choose_pipeline(bundle, load_config(overrides=["data.pipeline=device", "data.randaugment=true"]))
    files = DataBundle("imagenet_lt", object(), None, object(), [2] * 10, 10, 3, MEAN, STD, in_memory=False)
    assert choose_pipeline(files, load_config()) == "loader"
    with pytest.raises(LongtailError, match="in-memory"):
        choose_pipeline(files, load_config(overrides=["data.pipeline=device"]))


# The recipe of the end-to-end tests, after the tiny_fmnist fixture's overrides: every augmentation of the device pipeline on.
DEVICE_RECIPE = ["data.pipeline=device", "data.autoaugment=true", "data.cutout=8", "device=cpu",
                 "eval.batch_size=256"]  # small eval batches are faster on a CPU


def test_device_pipeline_trains_end_to_end(tmp_path, tiny_fmnist):
    from longtail.engine import fit

    metrics = fit(load_config(overrides=[*tiny_fmnist, *DEVICE_RECIPE]), tmp_path / "run")
    row = json.loads((tmp_path / "run" / "epochs.jsonl").read_text().splitlines()[0])
    assert row["epoch"] == 1 and row["images_per_s"] > 0 and 0 < row["train_loss"] < 10
    assert 0 <= metrics["top1"] <= 100 and metrics["num_images"] > 0


def test_resuming_mid_run_repeats_the_uninterrupted_epoch(tmp_path, tiny_fmnist):
    """Epoch 2 of an uninterrupted run and epoch 2 of a fresh process restored from the state after epoch 1
    (what a resumed run does) see the same batches and augmentation: same loss, same weights."""
    import copy

    from longtail.data import build_data
    from longtail.data.pipeline import train_batches
    from longtail.distributed import Runtime
    from longtail.engine import _seed_epoch, train_one_epoch
    from longtail.losses import create_loss
    from longtail.models import create_model
    from longtail.optim import build_optimizer, build_scheduler

    cfg = load_config(overrides=[*tiny_fmnist, *DEVICE_RECIPE, "train.epochs=2"])
    runtime = Runtime(CPU)
    bundle = build_data(cfg)

    def fresh():
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, bundle.num_classes, bundle.in_channels)
        batches = train_batches(bundle, cfg, runtime)
        assert isinstance(batches, DevicePipeline)
        optimizer = build_optimizer(model, cfg.train)
        return model, batches, optimizer, build_scheduler(optimizer, cfg.train, len(batches))

    def run_epoch(state, e):
        model, batches, optimizer, scheduler = state
        _seed_epoch(cfg.seed, e)
        batches.set_epoch(e)
        return train_one_epoch(model, create_loss(cfg.loss, bundle.class_counts), batches, optimizer, scheduler,
                               cfg, runtime, e, False)["train_loss"]

    straight = fresh()
    run_epoch(straight, 0)
    saved = [copy.deepcopy(part.state_dict()) for part in (straight[0], straight[2], straight[3])]
    loss_straight = run_epoch(straight, 1)
    resumed = fresh()
    for part, state in zip((resumed[0], resumed[2], resumed[3]), saved):
        part.load_state_dict(state)
    assert run_epoch(resumed, 1) == loss_straight
    for a, b in zip(straight[0].state_dict().values(), resumed[0].state_dict().values()):
        assert torch.equal(a, b)
