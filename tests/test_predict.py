"""`longtail predict`: predictions against evaluate's on the test split (written out as lossless PNGs),
the prediction rule and target priors, the preprocessing rule, and bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from deploy_runs import evaluate_scores, split_images, target_scores
from longtail.checkpoint import load_checkpoint, save_atomic
from longtail.cli import main
from longtail.config import load_config
from longtail.data.fmnist import CLASS_NAMES as FMNIST_NAMES
from longtail.data.transforms import eval_transform
from longtail.deployment import preprocessing
from longtail.input_spec import InputSpec


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_run):
    """The session's tiny run (resnet8, configured with post-hoc la), and its whole test split as PNGs (pixel-exact)."""
    tmp = tmp_path_factory.mktemp("predict")
    run_dir = tiny_run
    images, labels = split_images(run_dir)
    folder = tmp / "test_pngs"
    for i, image in enumerate(images):
        sub = folder / f"label_{int(labels[i])}"  # nested: predict searches folders recursively
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy(), mode="L").save(sub / f"{i:04d}.png")
    return run_dir, folder, len(images)


def predict(capsys, *args):
    code = main(["predict", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def by_index(rows):
    """Rows of the PNGs written above, ordered as the test split."""
    return sorted(rows, key=lambda r: int(r["path"].rsplit("/", 1)[1].split(".")[0]))


def test_predictions_match_evaluate_on_the_test_split(run, tmp_path, capsys):
    run_dir, folder, count = run
    code, out, _ = predict(capsys, run_dir, folder, "--out", tmp_path / "preds.json", "--top-k", "3")
    assert code == 0 and f"predicted {count} of {count} images (post-hoc la (tau 1))" in out
    result = json.loads((tmp_path / "preds.json").read_text())
    rows = by_index(result["predictions"])
    scores = evaluate_scores(run_dir, "la")  # the run's configured rule
    probs = scores.softmax(1)
    assert [r["class_index"] for r in rows] == scores.argmax(1).tolist()
    got = torch.tensor([[t["probability"] for t in r["top_k"]] for r in rows])
    assert (got - probs.topk(3, dim=1).values).abs().max() < 1e-5
    assert all(r["error"] is None and r["class_name"] == FMNIST_NAMES[r["class_index"]] for r in rows)
    assert result["rule"]["name"] == "la" and result["summary"] == {"images": count, "predicted": count, "unreadable": 0}


def test_posthoc_and_tau_override_the_run_rule(run, tmp_path, capsys):
    run_dir, folder, _ = run
    raw = evaluate_scores(run_dir, "none").argmax(1).tolist()
    for options in (["--posthoc", "none"], ["--tau", "0"]):
        assert predict(capsys, run_dir, folder, "--out", tmp_path / "p.json", *options)[0] == 0
        rows = by_index(json.loads((tmp_path / "p.json").read_text())["predictions"])
        assert [r["class_index"] for r in rows] == raw
    assert raw != evaluate_scores(run_dir, "la").argmax(1).tolist()  # la does change predictions here


def test_pn_takes_its_class_mass_from_validation(run, tmp_path, capsys):
    run_dir, folder, _ = run
    assert predict(capsys, run_dir, folder, "--posthoc", "pn", "--out", tmp_path / "pn.json")[0] == 0
    rows = by_index(json.loads((tmp_path / "pn.json").read_text())["predictions"])
    assert [r["class_index"] for r in rows] == evaluate_scores(run_dir, "pn").argmax(1).tolist()
    # the class mass was stored with the run when training ended: predict needs no validation data any more
    code, _, _ = predict(capsys, run_dir, folder, "--posthoc", "pn", "--set", "dataset.val_source=none",
                         "--out", tmp_path / "pn_stored.json")
    assert code == 0 and json.loads((tmp_path / "pn_stored.json").read_text())["predictions"] == \
        json.loads((tmp_path / "pn.json").read_text())["predictions"]


def test_target_prior_file_moves_the_calibrated_posteriors(run, tmp_path, capsys):
    run_dir, folder, _ = run
    weights = np.arange(1, 11, dtype=np.float64)
    (tmp_path / "prior.txt").write_text(", ".join(map(str, weights)))
    assert predict(capsys, run_dir, folder, "--target-prior", tmp_path / "prior.txt", "--out", tmp_path / "p.csv")[0] == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows = by_index(list(csv.DictReader(f)))
    # the run's la rule is replaced: calibrated posteriors - log pi_val + log q
    shifted = target_scores(run_dir, torch.tensor(weights / weights.sum()).log())
    assert [int(r["class_index"]) for r in rows] == shifted.argmax(1).tolist()
    assert np.allclose([float(r["probability"]) for r in rows], shifted.softmax(1).max(1).values.numpy(), atol=1e-5)
    # the same prior as a JSON object by class name
    (tmp_path / "prior.json").write_text(json.dumps({FMNIST_NAMES[c]: float(w) for c, w in enumerate(weights)}))
    assert predict(capsys, run_dir, folder, "--target-prior", tmp_path / "prior.json", "--out", tmp_path / "q.csv")[0] == 0
    assert (tmp_path / "q.csv").read_text() == (tmp_path / "p.csv").read_text()
    for text, message in (("1 2 3", "has 3 weights but the run has 10 classes"), ("1 " * 9 + "-1", ">= 0"),
                          ("0 " * 10, "no positive weight"), ("1 x", "not a list of numbers")):
        (tmp_path / "bad.txt").write_text(text)
        code, _, err = predict(capsys, run_dir, folder, "--target-prior", tmp_path / "bad.txt")
        assert code == 2 and message in err and err.count("\n") == 1
    code, _, err = predict(capsys, run_dir, folder, "--target-prior", "no_such_prior.txt")
    assert code == 2 and "neither a prior spec nor an existing file" in err


def test_unreadable_images_are_listed_and_the_rest_predicted(run, tmp_path, capsys):
    run_dir, folder, _ = run
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    good = sorted(folder.rglob("*.png"))[:3]
    for path in good:
        (mixed / path.name).write_bytes(path.read_bytes())
    (mixed / "0001_broken.jpg").write_bytes(b"this is not a JPEG")
    (mixed / "0002_cut.png").write_bytes(good[0].read_bytes()[:60])  # a truncated PNG
    (mixed / "readme.txt").write_text("not an image extension: skipped")
    code, out, _ = predict(capsys, run_dir, mixed, "--out", tmp_path / "p.csv")
    assert code == 1
    assert "predicted 3 of 5 images" in out and "2 could not be read" in out and "0001_broken.jpg" in out
    with open(tmp_path / "p.csv", newline="") as f:
        rows = {r["path"].rsplit("/", 1)[1]: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(["0001_broken.jpg", "0002_cut.png", *(p.name for p in good)])
    for name in ("0001_broken.jpg", "0002_cut.png"):
        assert rows[name]["error"].startswith("cannot be read") and rows[name]["class_index"] == ""
    # the readable ones get the predictions they get on their own
    assert predict(capsys, run_dir, *good, "--out", tmp_path / "alone.csv")[0] == 0
    with open(tmp_path / "alone.csv", newline="") as f:
        alone = {r["path"].rsplit("/", 1)[1]: r for r in csv.DictReader(f)}
    assert all(rows[p.name]["class_index"] == alone[p.name]["class_index"] != "" for p in good)


def test_csv_columns_and_top_k(run, tmp_path, capsys):
    run_dir, folder, _ = run
    one = sorted(folder.rglob("*.png"))[0]
    code, out, err = predict(capsys, run_dir, one)  # no --out: CSV on stdout, the summary on stderr
    assert code == 0 and "predicted 1 of 1 images" in err
    header, row = list(csv.reader(out.splitlines()))
    assert header == ["path", "class_index", "class_name", "probability",
                      *[f"top{i}_{w}" for i in range(1, 6) for w in ("name", "prob")], "error"]
    probs = [float(row[header.index(f"top{i}_prob")]) for i in range(1, 6)]
    assert probs == sorted(probs, reverse=True) and row[header.index("top1_name")] == row[2]
    for k in ("11", "0"):
        code, _, err = predict(capsys, run_dir, one, "--top-k", k)
        assert code == 2 and "between 1 and the model's 10 classes" in err


def test_missing_paths_and_folders_without_images(run, tmp_path, capsys):
    run_dir = run[0]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("x")
    code, _, err = predict(capsys, run_dir, tmp_path / "empty")
    assert code == 2 and "holds no images" in err and err.count("\n") == 1
    code, _, err = predict(capsys, run_dir, tmp_path / "nowhere.png")
    assert code == 2 and "does not exist" in err
    code, _, err = predict(capsys, run_dir, run[1], "--out", tmp_path / "p.txt")
    assert code == 2 and "must end in .csv or .json" in err


def test_class_names_from_the_checkpoint(run, tmp_path, capsys):
    run_dir, folder, _ = run
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    names = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
    save_atomic({**ckpt, "class_names": names}, tmp_path / "named.pt")
    one = sorted(folder.rglob("*.png"))[:4]
    assert predict(capsys, tmp_path / "named.pt", *one, "--out", tmp_path / "p.json")[0] == 0
    rows = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert all(r["class_name"] == names[r["class_index"]] for r in rows)
    assert all(t["name"] == names[t["index"]] for r in rows for t in r["top_k"])
    save_atomic({**ckpt, "class_names": names[:9]}, tmp_path / "nine.pt")  # a checkpoint of another class count
    code, _, err = predict(capsys, tmp_path / "nine.pt", *one)
    assert code == 2 and "do not name its 10 classes" in err


# ----------------------------------------------------------------------------- the preprocessing rule


def test_colour_images_into_a_grey_model_use_pillow_luma(tmp_path):
    cfg = load_config("configs/fmnist_lt/ce_imba100.yaml")
    prep = preprocessing(cfg, {"input": InputSpec(1, 28, (0.5,), (0.25,), crop_pct=1.0).to_dict()})
    Image.new("RGB", (28, 28), (200, 10, 10)).save(tmp_path / "red.png")
    loaded = prep.load(tmp_path / "red.png")
    # Pillow's L = (19595 R + 38470 G + 7471 B + 2^15) >> 16 = 4411178 >> 16 = 67
    assert loaded.shape == (1, 28, 28) and int(loaded.unique()) == 67
    assert torch.allclose(prep(loaded), torch.full((1, 28, 28), (67 / 255 - 0.5) / 0.25))
    Image.new("L", (56, 40), 255).save(tmp_path / "big.png")  # another size: short side to 28, centre crop
    assert prep(prep.load(tmp_path / "big.png")).shape == (1, 28, 28)


def test_image_list_runs_use_their_evaluation_transform(tmp_path):
    cfg = load_config(None, ["dataset.name=imagenet_lt", "data.image_size=32"])
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    prep = preprocessing(cfg, {"input": InputSpec(3, 32, tuple(mean), tuple(std)).to_dict()})
    pixels = np.random.default_rng(0).integers(0, 256, (50, 70), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(tmp_path / "grey.png")  # grey file, RGB model: three equal channels
    loaded = prep.load(tmp_path / "grey.png")
    assert loaded.shape == (3, 50, 70) and torch.equal(loaded[0], loaded[2])
    expected = eval_transform(prep.spec)(loaded)  # Resize(37) + CenterCrop(32)
    assert prep.spec.eval_resize_size() == 37 and torch.equal(prep(loaded), expected)
    by_hand = F.center_crop(F.resize(loaded, [37], antialias=True), [32, 32]).float() / 255
    assert torch.allclose(prep(loaded), (by_hand - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1), atol=1e-6)


def test_a_label_shift_spec_is_its_exponential_profile(run, tmp_path, capsys):
    """backward-10 over 10 classes in training order (class 0 most frequent): q_c = 10^(-(9 - c)/9) / Z."""
    run_dir, folder, _ = run
    assert predict(capsys, run_dir, folder, "--target-prior", "backward-10", "--out", tmp_path / "b.csv")[0] == 0
    with open(tmp_path / "b.csv", newline="") as f:
        rows = by_index(list(csv.DictReader(f)))
    weights = np.array([10.0 ** (-(9 - c) / 9) for c in range(10)])
    shifted = target_scores(run_dir, torch.tensor(weights / weights.sum()).log())
    assert [int(r["class_index"]) for r in rows] == shifted.argmax(1).tolist()
    assert np.allclose([float(r["probability"]) for r in rows], shifted.softmax(1).max(1).values.numpy(), atol=1e-5)
    code, _, err = predict(capsys, run_dir, folder, "--target-prior", "sideways-3", "--out", tmp_path / "c.csv")
    assert code == 2 and "neither a prior spec nor an existing file" in err
