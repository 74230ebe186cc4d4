"""Target priors through every door: on the seed-0 CE and LA-loss runs of Fashion-MNIST-LT (IF 100), the test
split resampled to forward-50 / uniform / backward-50 (`longtail shift`'s subsamples, seed 0), scored by

- the raw argmax of the logits, and `longtail shift`'s `known` row;
- `longtail evaluate RUN --target-prior SPEC` (the same rule in memory);
- `longtail predict RUN PNGS --target-prior SPEC` on the kept test images written as lossless PNG files;
- the ONNX export with `--prior-input`, fed log q, on those files through the run's input contract.

Runs that exist (RUNS/ce, RUNS/la with metrics.json) are reused; missing ones are trained first (about 5 minutes
each on 2 cores with native bf16). The table goes to benchmarks/results/target_prior.md:

    python benchmarks/target_prior.py                                  # full size
    python benchmarks/target_prior.py --runs /tmp/tp --out /tmp/tp.md model.name=resnet8 train.epochs=1 \\
        dataset.n_max=200                                             # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine.py

from longtail.config import load_config  # noqa: E402
from longtail.data import build_data  # noqa: E402
from longtail.deployment import preprocessing  # noqa: E402
from longtail.engine import fit  # noqa: E402
from longtail.evaluation import evaluate_checkpoint  # noqa: E402
from longtail.export import export_run  # noqa: E402
from longtail.predict import predict_paths  # noqa: E402
from longtail.priors import log_target_prior  # noqa: E402
from longtail.run import load_run, store_calibrator  # noqa: E402
from longtail.shift import evaluate_target_prior, run_shift  # noqa: E402
from machine import machine_line  # noqa: E402

METHODS = {"CE": ("ce", "configs/fmnist_lt/ce_imba100.yaml"), "LA loss": ("la", "configs/fmnist_lt/loss_imba100.yaml")}
PRIORS = ("forward-50", "uniform", "backward-50")


def ensure_run(run_dir: Path, config: str, overrides: list[str]) -> None:
    """Train the run unless it finished; give an older run its stored calibration."""
    if not (run_dir / "metrics.json").is_file():
        fit(load_config(REPO / config, [*overrides, "train.progress=false"]), run_dir)
    metrics = evaluate_checkpoint(run_dir)
    if "calibrator" in metrics:
        store_calibrator(Path(metrics["checkpoint_path"]), metrics["calibrator"])


def write_pngs(run_dir: Path, keep: list[int], folder: Path) -> None:
    from PIL import Image

    images = build_data(load_run(run_dir)[0]).test.images
    folder.mkdir(parents=True, exist_ok=True)
    for i in keep:
        array = images[i].permute(1, 2, 0).squeeze(-1).numpy()
        Image.fromarray(array).save(folder / f"{i:05d}.png")


def onnx_predictions(run_dir: Path, files: list[Path], spec: str, work: Path) -> list[int]:
    import onnxruntime

    cfg, ckpt, _ = load_run(run_dir)
    path = export_run(run_dir, "onnx", work / "model.onnx", prior_input=True).path
    prep = preprocessing(cfg, ckpt)
    log_q = log_target_prior(spec, ckpt["class_counts"], ckpt["class_names"]).float().numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    predictions = []
    for start in range(0, len(files), 500):
        batch = torch.stack([prep(prep.load(f)) for f in files[start:start + 500]]).numpy()
        predictions += session.run(["scores"], {"images": batch, "log_prior": log_q})[0].argmax(1).tolist()
    return predictions


def measure(method: str, run_dir: Path, work: Path) -> list[dict]:
    shift = run_shift(run_dir, PRIORS, write=False, log=lambda line: None)
    rows = []
    for spec in PRIORS:
        evaluated = evaluate_target_prior(run_dir, spec)
        keep = evaluated["indices"]
        labels = build_data(load_run(run_dir)[0]).test.labels[keep].tolist()
        folder = work / f"{run_dir.name}_{spec}"
        write_pngs(run_dir, keep, folder)
        out = work / f"{run_dir.name}_{spec}.json"
        predict_paths(run_dir, [folder], out=out, target_prior=spec, progress=False)
        predicted = [r["class_index"] for r in sorted(json.loads(out.read_text())["predictions"], key=lambda r: r["path"])]
        exported = onnx_predictions(run_dir, sorted(folder.glob("*.png")), spec, work)
        top1 = lambda preds: 100.0 * sum(p == y for p, y in zip(preds, labels)) / len(labels)  # noqa: E731
        by_name = {r["correction"]: r for r in shift["rows"] if r["test_prior"] == spec}
        rows.append({
            "method": method, "test_prior": spec, "images": len(keep), "raw": evaluated["raw"]["top1"],
            "shift_known": by_name["known"]["top1"], "evaluate": evaluated["top1"], "predict": top1(predicted),
            "onnx": top1(exported), "predict_equals_evaluate": sum(a == b for a, b in zip(predicted, evaluated["predictions"])),
            "onnx_equals_predict": sum(a == b for a, b in zip(exported, predicted)),
        })
    return rows


def table(rows: list[dict], command: str) -> str:
    lines = [
        "# Target priors through shift, evaluate, predict and the ONNX export (Fashion-MNIST-LT, IF 100, seed 0)",
        "",
        f"- **Machine:** {machine_line(torch.device('cpu'))}; torch {torch.__version__}.",
        f"- **Command:** `{command}`",
        "- **Rule (priors.py):** scores = log p_val(c|x) - log pi_val(c) + log q(c), p_val the run's BCTS calibration "
        "fitted on the validation split when training ended. Test split resampled to each prior as `longtail shift` "
        "does (seed 0); `predict` and ONNX read the kept images as PNG files through the run's input contract.",
        "- **Columns:** top-1 (%) on the resampled test set; the last two count the images on which predict agrees "
        "with evaluate, and the ONNX export with predict.",
        "",
        "| method | test prior | images | raw argmax | shift known | evaluate | predict | ONNX | predict = evaluate | ONNX = predict |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['test_prior']} | {r['images']} | {r['raw']:.2f} | {r['shift_known']:.2f} | "
                     f"{r['evaluate']:.2f} | {r['predict']:.2f} | {r['onnx']:.2f} | {r['predict_equals_evaluate']} | "
                     f"{r['onnx_equals_predict']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(REPO / "runs" / "benchmarks" / "target_prior"), help="run directories (ce, la)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "target_prior.md"))
    parser.add_argument("overrides", nargs="*", help="config overrides for runs trained here (a quick check)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method, (name, config) in METHODS.items():
            run_dir = Path(args.runs) / name
            ensure_run(run_dir, config, args.overrides)
            rows += measure(method, run_dir, Path(tmp))
    command = " ".join(["python benchmarks/target_prior.py", *sys.argv[1:]])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table(rows, command), encoding="utf-8")
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(table(rows, command))


if __name__ == "__main__":
    main()
