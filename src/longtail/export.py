"""`longtail export`: a saved run as an ONNX or TorchScript model that returns the run's scores.

Input `images`: a float32 NCHW batch, already normalised (deployment.Preprocessing: x = (pixel / 255 -
mean) / std at the run's size and channels); any batch size. Output `scores` (N, C): the run's prediction
rule (deployment.ScoreRule), argmax = the prediction, softmax = its probabilities. The rule's per-class
constants are folded into the network: into the weight and bias of a single linear head (la / pn add
to the bias, tau_norm scales the row and its bias), so the exported graph is the plain network. A head
without a bias to fold into (cosine heads, the multi-expert ensemble: logits = mean over experts) gets
one multiply-add after it; a per-class constant added to each expert or after averaging is the same.

With `prior_input` the model takes a second input `log_prior` (C,), log q of a target prior q, and returns
priors.target_prior_scores, the rule `predict --target-prior` applies: scores = log p_v(c|x) - log pi_v(c)
+ log_prior(c), p_v = softmax(logits / T + b) the run's stored calibration (folded into the graph as
constants), pi_v the validation prior it refers to. The run's own rule is not applied then (it is what q
replaces); a deployment changes the prior without re-exporting. log_prior = log pi_v gives the calibrated
posterior itself; -inf for a class that cannot occur.

Metadata (class names, preprocessing, rule, versions): ONNX `metadata_props` (each value JSON text);
for TorchScript a sidecar FILE.json and the same JSON inside the file (`_extra_files` 'longtail.json').
Exported in float32 on the CPU.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from . import __version__
from .checkpoint import write_json_atomic
from .calibration import Calibrator
from .deployment import Deployment, ScoreRule, load_deployment
from .errors import LongtailError, one_line
from .priors import target_prior_scores
from .run import run_directory
from .tte import refuse_export
from .models.lora import merge_lora

INSTALL_HINT = 'pip install "longtail[export]"'
EXAMPLE_BATCH = 2  # a batch of 1 would freeze the batch dimension
OPSET = 17


class ScoredModel(nn.Module):
    """images -> scores = logits * scale + bias; with a calibration (prior_input), (images, log_prior) ->
    priors.target_prior_scores(logits, calibrator, log_source, log_prior)."""

    def __init__(self, model: nn.Module, scale: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                 calibration: Optional[tuple[Calibrator, torch.Tensor]] = None,
                 function: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        super().__init__()
        self.model = model
        self.function = function  # a rule without per-class constants, traced after the network
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.calibrator = None if calibration is None else calibration[0]
        self.register_buffer("log_source", None if calibration is None else calibration[1].float())

    @property
    def prior_input(self) -> bool:
        return self.calibrator is not None

    def forward(self, images: torch.Tensor, log_prior: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits = self.model(images)["logits"]
        if self.calibrator is not None:
            return target_prior_scores(logits.float(), self.calibrator, self.log_source, log_prior).float()
        if self.function is not None:
            return self.function(logits.float()).float()
        if self.scale is not None:
            logits = logits * self.scale
        if self.bias is not None:
            logits = logits + self.bias
        return logits


def fold_rule(model: nn.Module, rule: ScoreRule) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], str]:
    """Fold the rule's scale and bias into `model.classifier` when it is an nn.Linear (the head of every
    single-head model with classifier: linear); returns what is left to apply after the network and where
    the constants went."""
    scale, bias = rule.scale, rule.bias
    head = getattr(model, "classifier", None)
    if (scale is None and bias is None) or not isinstance(head, nn.Linear):
        return scale, bias, "none" if scale is None and bias is None else "after the network"
    with torch.no_grad():
        if scale is not None:
            head.weight.mul_(scale[:, None])
            if head.bias is not None:
                head.bias.mul_(scale)
        if bias is not None:
            if head.bias is None:
                head.bias = nn.Parameter(torch.zeros(head.out_features))
            head.bias.add_(bias)
    return None, None, "classifier"


def prepared_model(deployment: Deployment, prior_input: bool) -> tuple[ScoredModel, str]:
    """A copy of the run's model ready to trace: float32 on the CPU, LoRA updates merged into their layers
    (models/lora.py; adapters stay as layers of the graph), with the rule folded into the head where it can be,
    or (prior_input) followed by the target-prior scores."""
    model = copy.deepcopy(deployment.model).float().cpu().eval()
    merge_lora(model)
    if prior_input:
        target = deployment.rule.target
        return ScoredModel(model, None, None, (target.calibrator, target.log_source)).eval(), "none (target-prior scores)"
    rule = deployment.rule
    if rule.function is not None:
        if not rule.traceable:
            raise LongtailError(f"post-hoc rule '{rule.posthoc}' cannot be exported: its record does not declare it "
                                "traceable (pure tensor code); export with --posthoc none, or use longtail predict")
        return ScoredModel(model, None, None, function=rule.function).eval(), "the graph (the rule traced after the network)"
    scale, bias, folded = fold_rule(model, rule)
    return ScoredModel(model, scale, bias).eval(), folded


def metadata(deployment: Deployment, fmt: str, folded: str, prior_input: bool) -> dict:
    names, prep = deployment.class_names, deployment.preprocessing
    count = len(names)
    scores_are = (("log p(c|x) - log pi_val(c) + log_prior(c), the run's calibrated posterior moved to the target "
                   "prior" if prior_input else "the run's prediction rule applied to the logits")
                  + "; argmax = predicted class index, softmax = class probabilities")
    return {
        "format": fmt,
        "class_names": names,
        "num_classes": count,
        "input": {"name": "images", "shape": ["batch", prep.channels, prep.size, prep.size], **prep.metadata()},
        "prior_input": ({"name": "log_prior", "shape": [count], "dtype": "float32",
                         "meaning": "log q of the target class prior (any additive constant is harmless); "
                                    "-inf: a class that cannot occur"}
                        if prior_input else None),
        "output": {"name": "scores", "shape": ["batch", count], "meaning": scores_are},
        "rule": _rule_metadata(deployment.rule, folded, prior_input),
        "checkpoint": str(deployment.ckpt_path),
        "model": deployment.cfg.model.name,
        "longtail_version": __version__,
        "torch_version": torch.__version__,
    }


def _rule_metadata(rule: ScoreRule, folded: str, prior_input: bool) -> dict:
    if prior_input:
        cal = rule.target.calibrator
        return {"name": "target_prior", "text": f"target prior from the log_prior input ({cal.method} calibration from "
                f"val, T = {cal.temperature:.3f})", "folded_into": folded, "calibrator": cal.to_dict(),
                "log_val_prior": _values(rule.target.log_source)}
    return {**rule.metadata(), "text": rule.describe(), "folded_into": folded, "scale": _values(rule.scale),
            "bias": _values(rule.bias)}


def _values(constants: Optional[torch.Tensor]) -> Optional[list[float]]:
    return None if constants is None else [float(v) for v in constants]


def _example(deployment: Deployment, batch: int, prior_input: bool) -> tuple[torch.Tensor, ...]:
    prep = deployment.preprocessing
    images = torch.randn(batch, prep.channels, prep.size, prep.size, generator=torch.Generator().manual_seed(0))
    return (images, torch.zeros(len(deployment.class_names))) if prior_input else (images,)


# ----------------------------------------------------------------------------- formats


def write_onnx(scored: ScoredModel, example: tuple, out: Path, meta: dict) -> Callable[[tuple], torch.Tensor]:
    import onnx

    names = ["images", "log_prior"][: len(example)]
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(scored, example, str(tmp), dynamo=False, input_names=names, output_names=["scores"],
                          dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}}, opset_version=OPSET)
    proto = onnx.load(str(tmp))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(tmp))
    os.replace(tmp, out)

    def run(inputs: tuple) -> Optional[torch.Tensor]:
        if importlib.util.find_spec("onnxruntime") is None:
            return None
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(["scores"], {n: t.numpy() for n, t in zip(names, inputs)})[0])

    return run


def write_torchscript(scored: ScoredModel, example: tuple, out: Path, meta: dict) -> Callable[[tuple], torch.Tensor]:
    tmp = out.with_name(out.name + ".tmp")
    text = json.dumps(meta, indent=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated upstream; tracing still works
        traced = torch.jit.trace(scored, example)
        torch.jit.save(traced, str(tmp), _extra_files={"longtail.json": text})
    os.replace(tmp, out)
    write_json_atomic(sidecar(out), meta)

    def run(inputs: tuple) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.jit.load(str(out))
        with torch.no_grad():
            return loaded(*inputs)

    return run


FORMATS: dict[str, Callable[[ScoredModel, tuple, Path, dict], Callable[[tuple], Optional[torch.Tensor]]]] = {
    "onnx": write_onnx,
    "torchscript": write_torchscript,
}
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def sidecar(out: Path) -> Path:
    return out.with_name(out.name + ".json")


@dataclass
class ExportResult:
    path: Path
    metadata: dict
    max_abs_diff: Optional[float]  # exported vs torch on a random batch of 3; None when not checked

    def line(self) -> str:
        check = ("not checked (onnxruntime is not installed)" if self.max_abs_diff is None
                 else f"matches torch on a test batch (max abs difference {self.max_abs_diff:.2g})")
        extra = f", metadata in {sidecar(self.path)}" if self.metadata["format"] == "torchscript" else ""
        prior = " + log_prior" if self.metadata["prior_input"] else ""
        return (f"wrote {self.path} ({self.metadata['format']}: images{prior} -> scores, {self.metadata['rule']['text']}"
                f"{extra}); {check}")


def export_run(run: str | Path, fmt: str, out: Optional[str | Path] = None, prior_input: bool = False,
               posthoc: Optional[str] = None, tau: Optional[float] = None, overrides: Sequence[str] = ()) -> ExportResult:
    """Export the run at `run` in format `fmt` (onnx | torchscript) to `out` (default: in the run directory)."""
    if fmt not in FORMATS:
        raise LongtailError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise LongtailError(f"ONNX export needs the onnx package: {INSTALL_HINT}")
    if prior_input and (posthoc is not None or tau is not None):
        raise LongtailError("--prior-input exports the target-prior scores, which replace the run's rule; leave out --posthoc and --tau")
    # with prior_input, a uniform prior stands in while loading: it checks the stored calibration, and the
    # graph takes log q as its input
    deployment = load_deployment(run, overrides, posthoc, tau, torch.device("cpu"), prior="uniform" if prior_input else None)
    refuse_export(deployment.cfg)  # eval.tte averages views: no single-view graph computes it
    path = Path(out) if out is not None else run_directory(run) / f"model{SUFFIXES[fmt]}"
    scored, folded = prepared_model(deployment, prior_input)
    meta = metadata(deployment, fmt, folded, prior_input)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            scored(*_example(deployment, EXAMPLE_BATCH, prior_input))  # a dry run before tracing
            run_exported = FORMATS[fmt](scored, _example(deployment, EXAMPLE_BATCH, prior_input), path, meta)
            check = _example(deployment, EXAMPLE_BATCH + 1, prior_input)  # another batch size than traced
            got = run_exported(check)
            diff = None if got is None else float((got - scored(*check)).abs().max())
    except OSError as exc:
        raise LongtailError(f"cannot write '{path}' ({one_line(exc.strerror or exc)}); pass --out with a writable path") from None
    return ExportResult(path, meta, diff)


__all__ = ["export_run", "ExportResult", "ScoredModel", "fold_rule", "FORMATS", "INSTALL_HINT"]
