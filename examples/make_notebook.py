"""Writes logit_adjustment.ipynb (unexecuted) from the cells below: the notebook's source lives here as plain
Python, reviewable in a diff; `python examples/execute.py` then runs it and stores its outputs."""

from pathlib import Path

import nbformat

CELLS = [
    ("markdown", """# Long-tail learning via logit adjustment: Table 1 and Figure 1 on Fashion-MNIST-LT

Menon et al., *Long-tail learning via logit adjustment* (ICLR 2021), compare three ways to train on long-tailed data:
the plain cross-entropy baseline (**CE**), the same model with its logits adjusted after training
(**post-hoc LA**: predict `argmax_y f_y(x) - tau log pi_y`, pi the training class prior), and training with the
**logit-adjusted loss** (`CE(f(x) + tau log pi, y)`, predicting with the plain argmax). A fork of the authors' code
(seed 003) reproduces their Table 1 and Figure 1 in a notebook; this is that notebook for `longtail`, through its
Python API, on Fashion-MNIST-LT (imbalance factor 100: 5000 training images in the largest class, 50 in the smallest).

- **Table 1**: balanced error (100 - mean per-class accuracy, %) on the balanced test set, and the accuracy of
  the many / medium / few-shot classes (> 100, 20-100, < 20 training images).
- **Figure 1**: per-class test accuracy against the class's training frequency.

The first cell holds the parameters. It runs the full recipe (ResNet-32, 20 epochs: `configs/fmnist_lt/`) by
default, and a tiny one (ResNet-8, one epoch, 100 images in the largest class) when `LONGTAIL_NOTEBOOK_TINY=1`,
as the test suite runs it."""),
    ("code", """# Parameters
import os
from pathlib import Path

TINY = os.environ.get("LONGTAIL_NOTEBOOK_TINY") == "1"
REPO = Path(".") if Path("configs").is_dir() else Path("..")  # run from the repository or from examples/
CONFIGS = {  # the two trainings; post-hoc LA re-uses the CE model
    "CE": REPO / "configs/fmnist_lt/ce_imba100.yaml",
    "LA loss": REPO / "configs/fmnist_lt/loss_imba100.yaml",
}
TAU = 1.0  # the strength of post-hoc LA (the LA loss configs use tau 1 as well)
OVERRIDES = ["train.progress=false"]
if TINY:
    OVERRIDES += ["model.name=resnet8", "train.epochs=1", "dataset.n_max=100", "dataset.val_per_class=10",
                  "train.batch_size=32", "data.num_workers=0"]
if os.environ.get("LONGTAIL_NOTEBOOK_DATASET_ROOT"):  # where Fashion-MNIST is, when not where longtail looks
    OVERRIDES.append(f"dataset.root={os.environ['LONGTAIL_NOTEBOOK_DATASET_ROOT']}")
RUNS = Path(os.environ.get("LONGTAIL_NOTEBOOK_RUNS", REPO / "runs" / ("notebook_tiny" if TINY else "notebook")))
# the numbers shown below are read back from these files (the full-size ones are committed)
RESULTS = RUNS / "results" if TINY else REPO / "benchmarks/results/notebook_logit_adjustment\""""),
    ("code", """import json
import subprocess

import matplotlib.pyplot as plt
import pandas as pd
import torch

import longtail

lscpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout
MACHINE = f"{' '.join(lscpu.split())}; torch {torch.__version__}, {torch.get_num_threads()} threads; longtail {longtail.__version__}"
print(MACHINE)"""),
    ("markdown", """## Training

`longtail.train` returns a `Run`; a run directory that already holds a finished run is returned as it is
(re-running the notebook does not retrain)."""),
    ("code", """runs = {name: longtail.train(config, *OVERRIDES, out=RUNS / name.lower().replace(" ", "_"))
        for name, config in CONFIGS.items()}
runs"""),
    ("markdown", """## Table 1

Each method evaluated on the test split with `Run.evaluate`: the CE model without correction and with post-hoc
LA at tau 1, and the LA-loss model without correction. At imbalance factor 100 the smallest of the ten classes
keeps 50 training images, so no class is few-shot (fewer than 20): the full-size few column is empty (NaN); the
tiny run, with 100 images in its largest class, has few-shot classes but no many-shot ones."""),
    ("code", """evaluated = {
    "CE": runs["CE"].evaluate(posthoc="none"),
    "post-hoc LA": runs["CE"].evaluate(posthoc="la", tau=TAU, save=True),  # save: the report below shows it too
    "LA loss": runs["LA loss"].evaluate(posthoc="none"),
}


def percent(value):  # 2 decimals as longtail prints them; NaN for a shot group without classes
    return float("nan") if value is None else round(value, 2)


table = pd.DataFrame([
    {"method": method, "balanced error (%)": percent(100 - m["mean_class_acc"]),
     "many (%)": percent(m["many"]), "medium (%)": percent(m["medium"]), "few (%)": percent(m["few"]),
     "top-1 (%)": percent(m["top1"])}
    for method, m in evaluated.items()
])
per_class = pd.DataFrame({"class": evaluated["CE"]["class_names"], "training images": evaluated["CE"]["class_counts"],
                          **{method: m["per_class"] for method, m in evaluated.items()}})
RESULTS.mkdir(parents=True, exist_ok=True)
table.to_csv(RESULTS / "table1.csv", index=False)
per_class.to_csv(RESULTS / "figure1_per_class.csv", index=False)
(RESULTS / "run.json").write_text(json.dumps({
    "machine": MACHINE, "tiny": TINY, "overrides": OVERRIDES, "tau": TAU,
    "command": ("LONGTAIL_NOTEBOOK_TINY=1 " if TINY else "OMP_NUM_THREADS=1 ") + "python examples/execute.py",
    "configs": {name: str(path.relative_to(REPO)) for name, path in CONFIGS.items()},
    "metrics": {method: {k: m[k] for k in ("top1", "mean_class_acc", "many", "medium", "few", "per_class")}
                for method, m in evaluated.items()},
}, indent=2) + "\\n")
pd.read_csv(RESULTS / "table1.csv").set_index("method")  # the numbers as the committed file holds them"""),
    ("markdown", """## Figure 1

Per-class test accuracy against the number of training images of the class (log scale), from the file written
above."""),
    ("code", """shown = pd.read_csv(RESULTS / "figure1_per_class.csv").sort_values("training images", ascending=False)
fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
for method, marker in zip(evaluated, "osd"):
    ax.plot(shown["training images"], shown[method], marker=marker, label=method)
ax.set(xscale="log", xlabel="training images of the class (log scale)", ylabel="test accuracy (%)",
       title="Fashion-MNIST-LT, imbalance factor 100" + (" (tiny run)" if TINY else ""))
ax.legend()
fig.savefig(RESULTS / "figure1.png", dpi=100)
plt.show()""", {"alt": "Per-class test accuracy of CE, post-hoc LA and the LA loss against the training images of each class",
               "caption": "Figure 1: per-class test accuracy against the class's training images, Fashion-MNIST-LT at imbalance "
                          "factor 100, ResNet-32, 20 epochs. Source: benchmarks/results/notebook_logit_adjustment/figure1.png, "
                          "from benchmarks/results/notebook_logit_adjustment/figure1_per_class.csv."}),
    ("markdown", """The same runs feed `longtail.report`, whose tables and figures are those `longtail report` writes:"""),
    ("code", """report = longtail.report(*runs.values())
report.tables["shots"]"""),
]


def build() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, text, *figure in CELLS:
        cell = nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
        if figure:  # alt text and caption of the figure the cell draws, for the docs page (scripts/notebook_page.py)
            cell.metadata["longtail_figure"] = figure[0]
        nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # stable ids: a rebuild changes no line that did not change
    return nb


if __name__ == "__main__":
    nbformat.write(build(), Path(__file__).with_name("logit_adjustment.ipynb"))
