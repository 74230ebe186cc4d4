"""`longtail export`: ONNX Runtime and TorchScript scores against evaluate's, folded corrections, the
log-prior input, multi-expert ensembles, metadata and bad input."""

from __future__ import annotations

import importlib.util
import json
import math
import warnings

import onnx
import pytest
import torch

from deploy_runs import RUNNERS, evaluate_scores, normalised, run_onnx, split_images, target_scores, train_tiny
from longtail.cli import main
from longtail.data.fmnist import CLASS_NAMES as FMNIST_NAMES
from longtail.errors import LongtailError
from longtail.export import INSTALL_HINT, export_run

TOL = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run):
    """The session's tiny run (resnet8, configured with la) and a 2-expert run of this module's own."""
    experts = train_tiny(tmp_path_factory.mktemp("export"), "experts", ["model.name=resnet8_experts", "model.num_experts=2"])
    images = normalised(tiny_run, split_images(tiny_run)[0])  # 500 test images: not the traced batch size
    return {"single": tiny_run, "experts": experts, "images": images}


def export(run, fmt, out, *options):
    code = main(["export", str(run), "--format", fmt, "--out", str(out), *options])
    assert code == 0
    return out


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("posthoc", ["none", "la", "tau_norm"])
def test_exported_scores_match_evaluate(runs, tmp_path, fmt, posthoc):
    path = export(runs["single"], fmt, tmp_path / f"m.{fmt}", "--posthoc", posthoc, "--tau", "0.7")
    got = RUNNERS[fmt](path, runs["images"])
    expected = evaluate_scores(runs["single"], posthoc, tau=0.7)
    assert (got - expected).abs().max() < TOL
    if posthoc != "none":  # the correction changed the scores: the parity is not the raw network's
        assert (got - evaluate_scores(runs["single"], "none")).abs().max() > 100 * TOL


def test_onnx_graph_is_the_plain_network_with_the_correction_folded(runs, tmp_path):
    plain = onnx.load(str(export(runs["single"], "onnx", tmp_path / "raw.onnx", "--posthoc", "none")))
    folded = onnx.load(str(export(runs["single"], "onnx", tmp_path / "la.onnx")))  # configured: la
    ops = lambda proto: [node.op_type for node in proto.graph.node]  # noqa: E731
    assert ops(folded) == ops(plain) and ops(folded)[-1] == "Gemm"
    meta = {p.key: json.loads(p.value) for p in folded.metadata_props}
    assert meta["rule"]["name"] == "la" and meta["rule"]["folded_into"] == "classifier"
    counts = torch.load(runs["single"] / "checkpoints" / "best.pt", weights_only=True)["class_counts"]
    expected = [-math.log(n / sum(counts)) for n in counts]  # la at tau 1: the bias is -log pi
    assert meta["rule"]["bias"] == pytest.approx(expected, abs=1e-5) and meta["rule"]["scale"] is None


def test_pn_exports_the_log_of_its_rebalanced_probabilities(runs, tmp_path):
    got = run_onnx(export(runs["single"], "onnx", tmp_path / "pn.onnx", "--posthoc", "pn"), runs["images"])
    pn = evaluate_scores(runs["single"], "pn")  # p_c / S_c, S from the validation split
    assert torch.equal(got.argmax(1), pn.argmax(1))
    assert (got.log_softmax(1) - (pn / pn.sum(1, keepdim=True)).log()).abs().max() < TOL


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_prior_input_gives_the_target_prior_scores(runs, tmp_path, fmt):
    """Fed log q, the graph returns log p_val(c|x) - log pi_val(c) + log q(c) with the run's stored calibration,
    whatever the run's own rule (la here)."""
    path = export(runs["single"], fmt, tmp_path / f"prior.{fmt}", "--prior-input")
    classes = len(FMNIST_NAMES)
    q = torch.linspace(1, 10, classes, dtype=torch.float64)
    for log_q in (torch.full((classes,), -math.log(classes), dtype=torch.float64), (q / q.sum()).log()):
        got = RUNNERS[fmt](path, runs["images"], log_q.float())
        assert (got - target_scores(runs["single"], log_q)).abs().max() < TOL
    uniform = RUNNERS[fmt](path, runs["images"], torch.full((classes,), -math.log(classes)))
    assert not torch.equal(uniform.argmax(1), evaluate_scores(runs["single"], "la").argmax(1))  # not the la rule


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_multi_expert_models_export_their_ensemble(runs, tmp_path, fmt):
    path = export(runs["experts"], fmt, tmp_path / f"experts.{fmt}", "--posthoc", "la", "--tau", "1.5")
    images = normalised(runs["experts"], split_images(runs["experts"])[0])
    got = RUNNERS[fmt](path, images)
    assert (got - evaluate_scores(runs["experts"], "la", tau=1.5)).abs().max() < TOL


def test_metadata_states_classes_and_preprocessing(runs, tmp_path):
    proto = onnx.load(str(export(runs["single"], "onnx", tmp_path / "m.onnx")))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["class_names"] == FMNIST_NAMES  # the checkpoint's class names (Fashion-MNIST's own)
    assert meta["input"]["mean"] == pytest.approx([0.2860]) and meta["input"]["std"] == pytest.approx([0.3530])
    assert meta["input"]["shape"] == ["batch", 1, 28, 28] and meta["input"]["color"] == "L"
    assert meta["output"]["name"] == "scores" and meta["prior_input"] is None
    path = export(runs["single"], "torchscript", tmp_path / "m.pt", "--prior-input")
    sidecar = json.loads((tmp_path / "m.pt.json").read_text())
    extra = {"longtail.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["longtail.json"]) == sidecar
    assert sidecar["prior_input"]["name"] == "log_prior" and sidecar["class_names"] == meta["class_names"]


def test_bad_input_is_one_line(runs, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses an unknown format
        main(["export", str(runs["single"]), "--format", "tflite"])
    assert exit_info.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(LongtailError, match="unknown export format 'tflite'"):
        export_run(runs["single"], "tflite")
    assert main(["export", str(runs["experts"]), "--format", "onnx", "--posthoc", "tau_norm", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "single linear head" in err
    assert not (tmp_path / "x.onnx").exists()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    assert main(["export", str(runs["single"]), "--format", "onnx", "--out", str(tmp_path / "y.onnx")]) == 2
    assert INSTALL_HINT in capsys.readouterr().err and INSTALL_HINT == 'pip install "longtail[export]"'
