"""The image-list pipeline (data/image_batches.py, crop_decode.py, color_jitter.py): the crop-box decode
against the full decode + torchvision resize, the draws' distributions against torchvision's, per-image
determinism from (seed, epoch, position), the batched colour jitter against torchvision's functions, and a
killed image-list training that resumes bit for bit."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

import longtail.data.crop_decode as crop_decode
import longtail.data.image_batches as image_batches
from image_tree import make_tree
from longtail.config import load_config
from longtail.data import build_data
from longtail.data.color_jitter import BRIGHTNESS, CONTRAST, SATURATION, color_jitter, jitter_params
from longtail.data.crop_decode import decode_box, random_resized_crop_box, reduction
from longtail.data.image_batches import CropAugment, CroppedImages, ImageListPipeline, finish
from longtail.data.image_list import UnreadableImage, decode
from longtail.data.pipeline import cropped_train_images
from longtail.data.samplers import EpochSampler, SeededSampler, sample_seed
from longtail.distributed import Runtime
from longtail.input_spec import InputSpec, centre_crop_box, eval_resize

CPU = torch.device("cpu")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
KS_001 = 1.95  # two-sample Kolmogorov-Smirnov: c(alpha = 0.001); a correct draw fails once in a thousand
Z_001 = 3.29  # two-sided normal quantile at p = 0.001
CHI2_DF5, CHI2_DF9 = 20.52, 27.88  # chi-square critical values at p = 0.001


def photo(path: Path, width: int, height: int, seed: int = 0, fmt: str = "JPEG", mode: str = "RGB", noise: int = 8) -> Path:
    """A smooth random image with some texture (what real photos look like to a resampler)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((height // 16 + 2, width // 16 + 2, 3)) * 255).astype(np.uint8))
    pixels = np.asarray(coarse.resize((width, height), Image.BICUBIC)).astype(np.int16)
    pixels = (pixels + rng.integers(-noise, noise + 1, pixels.shape)).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def ks_statistic(a: list[float], b: list[float]) -> float:
    """The two-sample Kolmogorov-Smirnov distance sup |F_a - F_b|."""
    xs = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), xs, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), xs, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def ks_critical(n: int, m: int) -> float:
    return KS_001 * math.sqrt((n + m) / (n * m))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    photo(root / "wide.jpg", 500, 375)
    photo(root / "tall.jpg", 300, 420, seed=1)
    photo(root / "smooth.jpg", 300, 420, seed=5, noise=0)
    photo(root / "grey.jpg", 200, 150, seed=2, mode="L")
    photo(root / "cmyk.jpg", 200, 150, seed=3, mode="CMYK")
    photo(root / "png.JPEG", 120, 90, seed=4, fmt="PNG")  # a PNG under a .JPEG name, as ImageNet has
    return root


# ----------------------------------------------------------------------------- the crop-box decode


@pytest.mark.parametrize("decoder", ["pillow", "simplejpeg"])
@pytest.mark.parametrize("box,size", [((40, 30, 400, 300), 224), ((100, 50, 320, 300), 112), ((0, 0, 500, 375), 48),
                                      ((10, 20, 60, 50), 64)])
def test_crop_box_decode_matches_the_full_decode_and_resize(photos, box, size, decoder, monkeypatch):
    if decoder == "simplejpeg" and crop_decode.simplejpeg is None:
        pytest.skip("simplejpeg is not installed (optional extra `jpeg`)")
    if decoder == "pillow":
        monkeypatch.setattr(crop_decode, "simplejpeg", None)
    path = str(photos / "wide.jpg")
    got = decode_box(path, lambda w, h: tuple(map(float, box)), size)
    left, top, w, h = box
    want = F.resized_crop(decode(path), top, left, h, w, [size, size], antialias=True)
    diff = (got.float() - want.float()).abs()
    # factor 1: the same kernel on the same pixels, exactly; reduced (DCT) decodes differ a little
    if reduction(tuple(map(float, box)), size) == 1:
        assert torch.equal(got, want)
    limit = 1.0 if reduction(tuple(map(float, box)), size) == 1 else 3.0
    assert float(diff.mean()) < limit, float(diff.mean())
    flipped = decode_box(path, lambda w, h: tuple(map(float, box)), size, flip=True)
    assert torch.equal(flipped, got.flip(-1))


def test_reduction_keeps_the_box_at_least_the_output_size():
    assert reduction((0.0, 0.0, 500.0, 375.0), 224) == 1
    assert reduction((0.0, 0.0, 300.0, 260.0), 112) == 2
    assert reduction((0.0, 0.0, 500.0, 375.0), 46) == 8
    assert reduction((0.0, 0.0, 10.0, 10.0), 224) == 1  # an upscale decodes at full size


@pytest.mark.parametrize("width,height,size", [(500, 375, 224), (375, 500, 224), (800, 600, 224), (36, 36, 32),
                                               (120, 90, 24), (224, 224, 224), (299, 401, 112)])
def test_centre_box_is_resize_then_centre_crop(width, height, size):
    """Resize(short side R) + CenterCrop(S) of a coordinate image lands on the box's centre pixels."""
    resize_to = eval_resize(size, None)
    xs = torch.arange(width, dtype=torch.float64).view(1, 1, width).expand(1, height, width)
    ys = torch.arange(height, dtype=torch.float64).view(1, height, 1).expand(1, height, width)
    plane = torch.cat([xs, ys])
    cropped = F.center_crop(F.resize(plane, [resize_to], antialias=False), [size, size])
    left, top, w, h = centre_crop_box(width, height, size, resize_to)
    # the centre of output pixel (i, j) samples the input at left + (j + 0.5) * w / size - 0.5 (and likewise y)
    j = torch.arange(size, dtype=torch.float64)
    assert torch.allclose(cropped[0, size // 2], left + (j + 0.5) * w / size - 0.5, atol=0.51 * w / size + 1e-6)
    assert torch.allclose(cropped[1, :, size // 2], top + (j + 0.5) * h / size - 0.5, atol=0.51 * h / size + 1e-6)


@pytest.mark.parametrize("name", ["smooth.jpg", "tall.jpg"])
@pytest.mark.parametrize("reduced", [False, True])
def test_evaluation_crop_matches_the_old_resize_and_centre_crop(photos, name, reduced, monkeypatch):
    """At full size the box decode is the old Resize + CenterCrop up to rounding. Decoded at 1/2 scale
    (the default here) the box is rounded to the half-size image's pixels, a shift of up to a third of an
    output pixel, and the DCT is another low-pass filter: a few levels on these strongly textured photos."""
    if not reduced:
        monkeypatch.setattr(crop_decode, "reduction", lambda box, size: 1)
    path = str(photos / name)
    got = decode_box(path, InputSpec(3, 96, MEAN, STD).eval_box, 96)
    want = F.center_crop(F.resize(decode(path), [eval_resize(96, None)], antialias=True), [96, 96])
    assert float((got.float() - want.float()).abs().mean()) < (5.0 if reduced else 1.0)


@pytest.mark.parametrize("name", ["grey.jpg", "cmyk.jpg", "png.JPEG"])
def test_any_file_pillow_reads_becomes_rgb(photos, name):
    out = decode_box(str(photos / name), lambda w, h: (0.0, 0.0, float(w), float(h)), 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    full = F.resize(decode(str(photos / name)), [32, 32], antialias=True)
    # the colours are right (swapped or uninverted CMYK channels are off by ~100 levels); decoded at 1/4
    # scale (DCT), another low-pass filter than Pillow's, so this textured image differs by a few levels
    assert float((out.float() - full.float()).abs().mean()) < 8.0


# ----------------------------------------------------------------------------- the draws


def recorded_draws(monkeypatch, keys: list[tuple[int, int]], augment: CropAugment, width: int, height: int):
    """(box, flip, jitter params) that CroppedImages draws for each key, decoding nothing."""
    seen: list[tuple] = []

    def fake_decode(path, box_of, size, flip=False, interpolation="bilinear"):
        seen.append((box_of(width, height), flip))
        return torch.zeros(3, size, size, dtype=torch.uint8)

    class Listed:  # what CroppedImages uses of an ImageList
        targets = np.zeros(1, dtype=np.int64)

        def read(self, i, reader):
            return reader("unused")

    monkeypatch.setattr(image_batches, "decode_box", fake_decode)
    dataset = CroppedImages(Listed(), InputSpec(3, 32, MEAN, STD), augment)
    params = [dataset[key][2] for key in keys]
    return [(box, flip, p) for (box, flip), p in zip(seen, params)]


def test_crop_scale_ratio_and_position_follow_torchvision(monkeypatch):
    n, (width, height) = 3000, (500, 375)
    keys = [(0, sample_seed(7, 2, position)) for position in range(n)]
    draws = recorded_draws(monkeypatch, keys, CropAugment(jitter=0.4), width, height)
    ours = [box for box, _, _ in draws]
    torch.manual_seed(0)
    image = torch.empty(3, height, width, dtype=torch.uint8)
    theirs = [v2.RandomResizedCrop(32).make_params([image])for _ in range(n)]
    theirs = [(p["left"], p["top"], p["width"], p["height"]) for p in theirs]

    def features(boxes):
        return {
            "area": [w * h / (width * height) for _, _, w, h in boxes],
            "log ratio": [math.log(w / h) for _, _, w, h in boxes],
            "centre x": [(left + w / 2) / width for left, _, w, _ in boxes],
            "centre y": [(top + h / 2) / height for _, top, _, h in boxes],
        }

    a, b = features(ours), features(theirs)
    for name in a:
        assert ks_statistic(a[name], b[name]) < ks_critical(n, n), name
    assert all(0 <= left and 0 <= top and left + w <= width and top + h <= height for left, top, w, h in ours)


def test_a_broken_draw_fails_the_distribution_test():
    """The KS test above has the power to see a wrong draw: a linear (not log-uniform) ratio."""
    n, rng = 3000, random.Random(0)
    good = [math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * rng.random() for _ in range(n)]
    broken = [math.log(3 / 4 + (4 / 3 - 3 / 4) * rng.random()) for _ in range(n)]
    assert ks_statistic(good, broken) > ks_critical(n, n)


def test_fallback_crop_is_torchvisions_centre_crop():
    """Uniforms that never fit (area 100% at the extreme ratio) end in the clamped centre crop."""
    never = [1.0 - 1e-12, 1.0 - 1e-12, 0.5, 0.5] * 10
    assert random_resized_crop_box(1000, 100, never) == (433, 0, 133, 100)  # ratio 10 clamped to 4/3
    assert random_resized_crop_box(100, 100, never) == (0, 0, 100, 100)


def test_flip_rate_and_jitter_ranges_follow_the_configuration(monkeypatch):
    n, strength = 4000, 0.4
    keys = [(0, sample_seed(1, 0, position)) for position in range(n)]
    draws = recorded_draws(monkeypatch, keys, CropAugment(jitter=strength), 64, 48)
    flips = sum(flip for _, flip, _ in draws)
    assert abs(flips - n / 2) < Z_001 * math.sqrt(n / 4), flips
    params = torch.stack([p for _, _, p in draws])
    factors = params[:, :3]
    assert float(factors.min()) >= 1 - strength and float(factors.max()) <= 1 + strength
    for k in range(3):  # each factor uniform over [0.6, 1.4]: chi-square over ten bins
        bins = ((factors[:, k] - (1 - strength)) / (2 * strength) * 10).long().clamp(max=9)
        counts = torch.bincount(bins, minlength=10).double()
        assert float(((counts - n / 10) ** 2 / (n / 10)).sum()) < CHI2_DF9
    orders = [tuple(int(v) for v in p[3:]) for p in params]
    assert all(sorted(o) == [0, 1, 2] for o in orders)
    counts = torch.tensor([orders.count(o) for o in sorted(set(orders))], dtype=torch.float64)
    assert len(counts) == 6 and float(((counts - n / 6) ** 2 / (n / 6)).sum()) < CHI2_DF5
    # no jitter configured: the device gets zeros and skips it; flip off: never mirrored
    plain = recorded_draws(monkeypatch, keys[:50], CropAugment(flip=False), 64, 48)
    assert not any(flip for _, flip, _ in plain) and all(not p.any() for _, _, p in plain)


def test_jitter_factors_never_go_negative():
    assert jitter_params([0.0] * 6, 1.5)[:3] == [0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- the batched colour jitter


def test_batched_jitter_is_torchvisions_functions_in_the_drawn_order():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 3, 20, 16, generator=g)
    params = torch.tensor([jitter_params(torch.rand(6, generator=g).tolist(), 0.8) for _ in range(24)])
    got = color_jitter(x.clone(), params)
    ops = {BRIGHTNESS: F.adjust_brightness, CONTRAST: F.adjust_contrast, SATURATION: F.adjust_saturation}
    for i in range(24):
        want = x[i]
        for slot in range(3):
            op = int(params[i, 3 + slot])
            want = ops[op](want, float(params[i, op]))
        assert torch.allclose(got[i], want, atol=1e-5), i


def test_finish_without_jitter_is_the_loaders_normalisation():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    want = v2.Normalize(MEAN, STD)(v2.ToDtype(torch.float32, scale=True)(x))
    assert torch.equal(finish(x, torch.zeros(4, 6), False, mean, std), want)
    # with factors of 1 the jitter changes nothing beyond rounding
    ones = torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0, 2.0]]).expand(4, 6)
    assert torch.allclose(finish(x, ones, True, mean, std), want, atol=1e-6)


# ----------------------------------------------------------------------------- determinism and the pipeline


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict[str, Path]:
    return make_tree(tmp_path_factory.mktemp("jpegs"))


def list_cfg(tree, *extra: str):
    return load_config(None, [
        "dataset.name=imagenet_lt", f"dataset.root={tree['root']}", f"dataset.train_list={tree['train_list']}",
        f"dataset.val_list={tree['val_list']}", f"dataset.test_list={tree['test_list']}", "data.image_size=24",
        "data.color_jitter=0.4", "train.batch_size=8", *extra,
    ])


def test_same_seed_epoch_and_position_give_the_same_image(tree):
    cfg = list_cfg(tree)
    dataset = cropped_train_images(build_data(cfg), cfg)
    x, y, p = dataset[(5, sample_seed(0, 3, 17))]
    assert x.shape == (3, 24, 24) and x.dtype == torch.uint8 and p.shape == (6,)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    again = dataset[(5, sample_seed(0, 3, 17))]
    assert torch.equal(x, again[0]) and torch.equal(p, again[2]) and y == again[1]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is untouched
    others = [dataset[(5, sample_seed(0, epoch, position))] for epoch, position in ((4, 17), (3, 18))]
    assert all(not torch.equal(p, o[2]) for o in others)


def test_batches_do_not_depend_on_workers_or_on_the_epochs_before(tree):
    cfg = list_cfg(tree)
    bundle = build_data(cfg)

    def epoch_batches(workers: int, epochs: list[int]) -> list:
        pipeline = ImageListPipeline(cropped_train_images(bundle, cfg), SeededSampler(EpochSampler(bundle.train.targets, 0)),
                                     8, 0, CPU, bundle.spec, workers)
        for epoch in epochs:
            pipeline.set_epoch(epoch)
            batches = list(pipeline)
        return batches

    straight = epoch_batches(0, [0, 1, 2])
    resumed = epoch_batches(2, [2])
    assert len(straight) == 4 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(straight, resumed))
    assert straight[0][0].dtype == torch.float32 and straight[0][0].shape == (8, 3, 24, 24)


def test_other_augmentation_keys_run_in_the_workers_after_the_crop(tree):
    cfg = list_cfg(tree, "data.randaugment=true", "data.grayscale=0.5")
    dataset = cropped_train_images(build_data(cfg), cfg)
    assert dataset.augment.jitter == 0 and dataset.worker_steps is not None  # the jitter stays before RandAugment
    x, _, p = dataset[(3, 99)]
    assert torch.equal(x, dataset[(3, 99)][0]) and not p.any()


def test_an_unreadable_image_names_its_file_and_line(tree, tmp_path):
    bad = tmp_path / "images"
    bad.mkdir()
    (bad / "bad.JPEG").write_bytes(b"\xff\xd8 not a jpeg")
    listed = tmp_path / "list.txt"
    listed.write_text("bad.JPEG 0\n")
    cfg = load_config(None, ["dataset.name=imagenet_lt", f"dataset.root={bad}", f"dataset.train_list={listed}",
                             f"dataset.test_list={listed}", "data.image_size=24"])
    dataset = cropped_train_images(build_data(cfg), cfg)
    with pytest.raises(UnreadableImage, match=r"image '.*bad.JPEG' \(list.txt:1\) cannot be read"):
        dataset[(0, 5)]


def test_evaluation_batches_are_uint8_centre_crops_normalised_on_the_device(tree):
    from longtail.data.pipeline import eval_batches

    cfg = list_cfg(tree)
    bundle = build_data(cfg)
    x, y = next(eval_batches(bundle.test, bundle, cfg, Runtime(CPU)))
    raw = decode(bundle.test.full_path(0))
    want = F.center_crop(F.resize(raw, [eval_resize(24, None)], antialias=True), [24, 24])
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    pixels = x[0] * std + mean
    assert x.shape[1:] == (3, 24, 24) and float((pixels * 255 - want.float()).abs().mean()) < 3.0


def test_per_image_seeds_use_every_bit_of_seed_epoch_and_position():
    """torch's generator keeps a seed's low 32 bits, which in sample_seed are the position alone: the
    loader's augmentation must still change with the epoch and the run seed (seed32), and so must ours."""
    from longtail.data.base import TensorImages
    from longtail.data.loader import TransformedImages

    images = TransformedImages(TensorImages(torch.arange(3 * 16 * 16, dtype=torch.uint8).view(1, 3, 16, 16) % 251,
                                            torch.zeros(1, dtype=torch.long)), v2.RandomCrop(16, padding=4))
    keys = [sample_seed(seed, epoch, 5) for seed, epoch in ((0, 0), (0, 1), (0, 2), (1, 0), (2, 0))]
    crops = [images[(0, key)][0] for key in keys]
    assert all(not torch.equal(crops[0], other) for other in crops[1:])
    uniforms = [image_batches.image_uniforms(key) for key in keys]
    assert len({tuple(u) for u in uniforms}) == len(keys)


def test_killed_image_list_training_resumes_bit_for_bit(tree, tmp_path):
    """Crop boxes, flips and jitter drawn in two workers, the jitter on the device: killed once epoch 1's
    checkpoint exists, the run resumes after epoch 1 and ends with the uninterrupted run's weights."""
    from resume_harness import Kill, assert_same_run, check_resumed, last_epoch, launch

    def args(run: Path) -> list[str]:
        return ["train", "configs/fmnist_lt/ce_imba100.yaml", "dataset.name=imagenet_lt", f"dataset.root={tree['root']}",
                f"dataset.train_list={tree['train_list']}", f"dataset.val_list={tree['val_list']}",
                f"dataset.test_list={tree['test_list']}", "model.name=resnet8", "data.image_size=32", "train.epochs=3",
                "train.batch_size=10", "train.progress=false", "eval.batch_size=64", "data.num_workers=2",
                "data.color_jitter=0.4", "--out", str(run), "--resume"]

    reference, run = tmp_path / "reference", tmp_path / "killed"
    launch(args(reference), reference)
    killed = launch(args(run), run, Kill("after epoch 1", file="checkpoints/last.pt"))
    before = last_epoch(run)
    assert killed.killed and 1 <= before < 3
    final = launch(args(run), run)
    check_resumed(final, run, before)
    assert final.trained_epochs() == list(range(before + 1, 4))
    assert_same_run(run, reference)
