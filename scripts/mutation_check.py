"""Do the tests catch defects? Seeded defects, applied one at a time, each in a temporary copy of the tree.

    OMP_NUM_THREADS=1 python scripts/mutation_check.py            # every defect (a few minutes on 2 cores)
    python scripts/mutation_check.py --list                       # the defects and their tests
    python scripts/mutation_check.py --only la_loss_sign ldam_drw_epoch

A defect is (name, file under src/longtail, the exact original snippet, its replacement, the tests that concern
it). For each one, src/ and tests/ are copied into a temporary folder (the rest of the checkout is linked), the
snippet is replaced there, and pytest runs the defect's tests in the copy with PYTHONPATH at the copy's src. The
defect is *caught* when a test fails, *survived* when they all pass, and STALE when the snippet is not in the
file exactly once (the code moved on: update the defect, it proves nothing until then). Before the defects, the
union of their tests runs once on the unmodified copy: a test that fails there would catch everything.

Every defect must be caught: a survivor needs a test that fails on it, written from a hand computation. Not part
of `make test`: the check to run before a release (docs/development.md); its last result is in
benchmarks/results/mutation_check.txt. Exit code 0 when every defect was caught, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("src", "tests")  # copied (and mutated); every other top-level entry is linked


@dataclass(frozen=True)
class Defect:
    name: str
    file: str  # relative to src/longtail
    original: str  # must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # pytest node ids (or files) under tests/


T = "tests/"
DEFECTS: list[Defect] = [
    # ------------------------------------------------------------------ losses
    Defect("ce_loss_smoothed", "losses/cross_entropy.py", "return F.cross_entropy(logits, targets)",
           "return F.cross_entropy(logits, targets, label_smoothing=0.1)",
           (T + "test_seeded_defects.py::test_cross_entropy_hand_value",)),
    Defect("la_loss_sign", "losses/logit_adjusted.py", "logits + self.tau * self.log_prior", "logits - self.tau * self.log_prior",
           (T + "test_losses.py::test_logit_adjusted_loss_hand_value",)),
    Defect("balanced_softmax_half_counts", "losses/balanced_softmax.py", "logits + self.log_counts", "logits + 0.5 * self.log_counts",
           (T + "test_losses.py::test_logit_adjusted_at_tau_1_equals_balanced_softmax_values_and_gradients",)),
    Defect("gala_theta_single_sum", "losses/gala.py", "self.theta += self.pos_acc", "self.theta += step[0]",
           (T + "test_losses.py::test_gala_statistics_after_two_steps_match_the_literal_accumulators",)),
    Defect("gala_gradient_not_batch_mean", "losses/gala.py", "grad = (probs - F.one_hot(targets, probs.shape[1]).double()).abs() / len(targets)",
           "grad = (probs - F.one_hot(targets, probs.shape[1]).double()).abs()",
           (T + "test_losses.py::test_gala_statistics_after_the_first_step_by_hand",)),
    Defect("gala_margin_sign", "losses/gala.py", "margin = self.lambda1 * log_theta - self.lambda2 * log_phi_y",
           "margin = self.lambda1 * log_theta + self.lambda2 * log_phi_y",
           (T + "test_losses.py::test_gala_paper_variant_uses_single_sums_and_leaves_the_target_logit_alone",)),
    Defect("ldam_margin_exponent", "losses/ldam.py", "margins = counts.pow(-0.25)", "margins = counts.pow(-0.5)",
           (T + "test_losses.py::test_ldam_margins_scale_as_n_to_the_minus_quarter",)),
    Defect("ldam_margin_unscaled", "losses/ldam.py", "(self.scale * self.margins[targets])[:, None]", "(self.margins[targets])[:, None]",
           (T + "test_losses.py::test_ldam_loss_subtracts_the_scaled_margin_from_the_target_logit",)),
    Defect("ldam_drw_effective_number", "losses/ldam.py", "torch.pow(torch.tensor(beta, dtype=torch.float64), counts))",
           "torch.pow(torch.tensor(beta, dtype=torch.float64), counts + 1))",
           (T + "test_losses.py::test_ldam_drw_switches_on_class_balanced_weights_at_its_epoch",)),
    Defect("ldam_drw_epoch_late", "losses/ldam.py", "epoch >= self.drw_epoch", "epoch > self.drw_epoch",
           (T + "test_losses.py::test_ldam_drw_switches_on_class_balanced_weights_at_its_epoch",)),
    Defect("lgla_local_prior_min", "losses/lgla.py", "local = torch.where(member, prior, prior.max())",
           "local = torch.where(member, prior, prior.min())",
           (T + "test_lgla.py::test_local_and_global_adjustments_hand_worked",)),
    Defect("lgla_aaw_weight_doubled", "losses/lgla.py", "torch.ones_like(excess), 1.0 + excess)", "torch.ones_like(excess), 1.0 + 2 * excess)",
           (T + "test_lgla.py::test_aaw_weights_hand_worked_batch",)),
    Defect("lgla_subset_cut", "losses/lgla.py", "if running > target:", "if running >= target:",
           (T + "test_lgla.py::test_three_subsets_restart_the_running_sum",
            T + "test_seeded_defects.py::test_lgla_cuts_only_when_the_running_sum_passes_the_target")),
    # ------------------------------------------------------------------ post-hoc rules
    Defect("posthoc_la_sign", "posthoc.py", "return logits - tau * log_prior(class_counts)", "return logits + tau * log_prior(class_counts)",
           (T + "test_posthoc.py::test_logit_adjust_hand_value_flips_a_head_prediction",)),
    Defect("posthoc_pn_exponent", "posthoc.py", "mass.clamp_min(torch.finfo(probs.dtype).tiny) ** tau",
           "mass.clamp_min(torch.finfo(probs.dtype).tiny) ** (tau / 2)",
           (T + "test_posthoc.py::test_rebalance_hand_value",)),
    Defect("posthoc_tau_norm_exponent", "posthoc.py", "norm(dim=1).pow(tau)", "norm(dim=1).pow(-tau)",
           (T + "test_posthoc.py::test_tau_norm_hand_values_on_logits_and_features",)),
    # ------------------------------------------------------------------ priors
    Defect("target_prior_source_sign", "priors.py", "return log_posterior - log_source.to(log_posterior) + log_q.to(log_posterior)",
           "return log_posterior + log_source.to(log_posterior) + log_q.to(log_posterior)",
           (T + "test_shift.py::test_shifted_scores_are_bayes_rule",)),
    Defect("prior_profile_exponent", "priors.py", "prior.factor ** (-rank / (num_classes - 1))", "prior.factor ** (-rank / num_classes)",
           (T + "test_shift.py::test_forward_and_backward_counts_follow_the_training_order",
            T + "test_seeded_defects.py::test_a_forward_profile_spreads_the_factor_over_c_minus_1_steps")),
    Defect("log_prior_of_counts", "priors.py", "return torch.log(counts / counts.sum() + LOG_EPS).float()",
           "return torch.log(counts + LOG_EPS).float()",
           (T + "test_posthoc.py::test_logit_adjust_hand_value_flips_a_head_prediction",
            T + "test_losses.py::test_logit_adjusted_loss_hand_value",
            T + "test_seeded_defects.py::test_log_prior_is_the_log_of_the_class_frequencies")),
    # ------------------------------------------------------------------ calibration
    Defect("calibrator_times_temperature", "calibration.py", "z = logits.double() / self.temperature", "z = logits.double() * self.temperature",
           (T + "test_calibration.py::test_temperature_scaling_recovers_the_generating_temperature",)),
    Defect("bcts_bias_sign", "calibration.py", "scaled = z * torch.exp(-log_t) + (bias if with_bias else 0)",
           "scaled = z * torch.exp(-log_t) - (bias if with_bias else 0)",
           (T + "test_calibration.py::test_bcts_recovers_temperature_and_class_biases",)),
    Defect("temperature_fit_inverted", "calibration.py", "scaled = z * torch.exp(-log_t) + (bias if with_bias else 0)",
           "scaled = z * torch.exp(log_t) + (bias if with_bias else 0)",
           (T + "test_calibration.py::test_temperature_scaling_recovers_the_generating_temperature",)),
    Defect("ece_floor_bins", "calibration.py", "index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)",
           "index = torch.floor(confidence * bins).long().clamp(0, bins - 1)",
           (T + "test_calibration.py::test_confidence_one_lands_in_the_last_bin",
            T + "test_seeded_defects.py::test_a_confidence_on_a_bin_edge_belongs_to_the_lower_bin")),
    Defect("brier_mean_over_classes", "calibration.py", "((probs - onehot) ** 2).sum(-1).mean()", "((probs - onehot) ** 2).mean(-1).mean()",
           (T + "test_calibration.py::test_ece_nll_brier_by_hand",)),
    # ------------------------------------------------------------------ label shift: EM and BBSE
    Defect("em_without_source_prior", "shift.py", "log_post = log_q + (log_w - log_source)", "log_post = log_q + log_w",
           (T + "test_shift.py::test_em_is_referred_to_the_source_prior", T + "test_shift.py::test_em_and_bbse_recover_a_shifted_prior")),
    Defect("bbse_transposed_confusion", "shift.py", "weights = (torch.linalg.pinv(joint) @ mu).clamp_min(0)",
           "weights = (torch.linalg.pinv(joint.T) @ mu).clamp_min(0)",
           (T + "test_shift.py::test_em_and_bbse_recover_a_shifted_prior", T + "test_shift.py::test_estimates_with_a_long_tailed_source_prior")),
    Defect("bbse_weights_not_times_source", "shift.py", "prior = weights * source_prior.double()", "prior = weights",
           (T + "test_shift.py::test_em_and_bbse_recover_a_shifted_prior", T + "test_shift.py::test_estimates_with_a_long_tailed_source_prior")),
    # ------------------------------------------------------------------ long-tailed counts, splits, shot groups
    Defect("counts_exponent", "data/splits.py", "(1.0 / imbalance_factor) ** (i / (num_classes - 1))",
           "(1.0 / imbalance_factor) ** (i / num_classes)",
           (T + "test_splits.py::test_cifar10_lt_if100_counts_match_reference",)),
    Defect("counts_rounded", "data/splits.py", "counts = [int(n_max * (1.0 / imbalance_factor)", "counts = [round(n_max * (1.0 / imbalance_factor)",
           (T + "test_splits.py::test_cifar10_lt_if100_counts_match_reference", T + "test_splits.py::test_imbalance_factor_one_is_balanced_and_formula_uses_floor")),
    Defect("split_val_overlaps_train", "data/splits.py", "val.append(order[n : n + val_per_class])", "val.append(order[:val_per_class])",
           (T + "test_splits.py::test_subset_has_exact_counts_and_disjoint_balanced_validation",)),
    Defect("split_share_takes_half", "data/splits.py", "return max(0, min(asked, (n - 1) // 2))", "return max(0, min(asked, n // 2))",
           (T + "test_folder.py::test_split_share_by_hand",)),
    Defect("shots_many_inclusive", "shots.py", '"many": [c for c, n in enumerate(class_counts) if n > MANY_ABOVE]',
           '"many": [c for c, n in enumerate(class_counts) if n >= MANY_ABOVE]',
           (T + "test_metrics.py::test_shot_group_boundaries_are_100_and_20",)),
    Defect("shots_few_inclusive", "shots.py", '"few": [c for c, n in enumerate(class_counts) if n < FEW_BELOW]',
           '"few": [c for c, n in enumerate(class_counts) if n <= FEW_BELOW]',
           (T + "test_metrics.py::test_shot_group_boundaries_are_100_and_20",)),
    # ------------------------------------------------------------------ samplers
    Defect("sampler_no_padding", "data/samplers.py", "self.total = -(-len(self.labels) // world_size) * world_size",
           "self.total = len(self.labels) // world_size * world_size",
           (T + "test_ddp.py::test_uneven_dataset_pads_to_equal_shards",)),
    Defect("class_balanced_first_member", "data/samplers.py",
           "offsets = (torch.rand(n, generator=g, dtype=torch.float64) * sizes).long().clamp_(max=sizes - 1)",
           "offsets = torch.zeros_like(sizes)",
           (T + "test_ddp.py::test_ranks_split_each_global_batch_exactly",
            T + "test_seeded_defects.py::test_class_balanced_draws_reach_every_member_of_a_class")),
    Defect("epoch_order_ignores_epoch", "data/samplers.py", "manual_seed(seed * 1_000_003 + epoch * 101 + stream)",
           "manual_seed(seed * 1_000_003 + stream)",
           (T + "test_seeded_defects.py::test_each_epoch_has_its_own_order",)),
    # ------------------------------------------------------------------ model selection
    Defect("select_on_raw_instead_of_posthoc", "selection.py",
           'return "test_top1" if cfg.eval.posthoc == NO_RULE else f"test_{cfg.eval.posthoc}_top1"', 'return "test_top1"',
           (T + "test_select_on_test.py::test_selection_rule_keys", T + "test_select_on_test.py::test_with_a_posthoc_the_corrected_test_top1_decides")),
    Defect("select_best_val_ignored", "selection.py", 'if cfg.train.select == "best_val" and has_val:\n        return "val_top1"',
           'if cfg.train.select == "best_val" and has_val:\n        return None',
           (T + "test_select_on_test.py::test_selection_rule_keys",)),
    # ------------------------------------------------------------------ metrics
    Defect("confusion_transposed", "metrics.py", "flat = targets.long() * num_classes + preds.long()",
           "flat = preds.long() * num_classes + targets.long()",
           (T + "test_metrics.py::test_confusion_matrix_rows_are_true_classes", T + "test_metrics.py::test_hand_computed_metrics")),
    Defect("mean_class_acc_counts_empty_classes", "metrics.py", "per_class = [float(100 * c / s) if s > 0 else None",
           "per_class = [float(100 * c / s) if s > 0 else 0.0",
           (T + "test_metrics.py::test_class_without_test_images_is_none_and_excluded_from_means",)),
    # ------------------------------------------------------------------ checkpoint / resume state
    Defect("resume_drops_loss_state", "engine.py", '    load_state(criterion, ckpt["loss"], "loss", path)\n', "",
           (T + "test_seeded_defects.py::test_a_resumed_stateful_loss_continues_its_statistics",)),
    Defect("resume_keeps_saved_hyperparameters", "engine.py", "        group.update(values)\n", "        pass\n",
           (T + "test_resume_rules.py::test_resume_applies_changed_optimizer_settings_and_the_schedule_position",)),
    # ------------------------------------------------------------------ export folding
    Defect("export_bias_not_scaled", "export.py", "head.bias.mul_(scale)", "head.bias.mul_(1.0)",
           (T + "test_export.py::test_exported_scores_match_evaluate",)),
    Defect("export_bias_subtracted", "export.py", "head.bias.add_(bias)", "head.bias.sub_(bias)",
           (T + "test_export.py::test_exported_scores_match_evaluate",)),
    # ------------------------------------------------------------------ the input's normalisation
    Defect("normalise_by_256", "input_spec.py", "return x.float().mul_(1.0 / 255).sub_(mean).div_(std)",
           "return x.float().mul_(1.0 / 256).sub_(mean).div_(std)",
           (T + "test_input_spec.py::test_the_one_normalisation_is_torchvisions_to_the_bit",
            T + "test_device_pipeline.py::test_device_and_loader_batches_are_identical_without_augmentation",
            T + "test_image_batches.py::test_evaluation_batches_are_uint8_centre_crops_normalised_on_the_device")),
]


def make_copy(tmp: Path) -> Path:
    """src/ and tests/ copied, everything else at the top of the checkout linked; returns the copy's root."""
    for entry in ROOT.iterdir():
        if entry.name in COPIED:
            shutil.copytree(entry, tmp / entry.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif entry.name not in (".git", ".venv") and not entry.name.startswith(".pytest"):
            (tmp / entry.name).symlink_to(entry)
    return tmp


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(copy / "src"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timed out"
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return proc.returncode, lines[-1] if lines else ""


def apply(copy: Path, defect: Defect) -> str | None:
    """Replace the snippet in the copy; None, or why the defect is stale."""
    path = copy / "src" / "longtail" / defect.file
    if not path.is_file():
        return f"{defect.file} does not exist"
    text = path.read_text(encoding="utf-8")
    count = text.count(defect.original)
    if count != 1:
        return f"the snippet occurs {count} times in {defect.file}"
    path.write_text(text.replace(defect.original, defect.replacement), encoding="utf-8")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these defects only")
    parser.add_argument("--list", action="store_true", help="list the defects and their tests, run nothing")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per defect's tests (default 300)")
    args = parser.parse_args(argv)
    names = [d.name for d in DEFECTS]
    assert len(set(names)) == len(names), "two defects share a name"
    chosen = [d for d in DEFECTS if not args.only or d.name in args.only]
    unknown = set(args.only or ()) - set(names)
    if unknown:
        parser.error(f"unknown defect(s): {', '.join(sorted(unknown))}")
    if args.list:
        for d in chosen:
            print(f"{d.name}: src/longtail/{d.file}\n    {d.original!r}\n -> {d.replacement!r}\n    tests: {' '.join(d.tests)}")
        return 0
    print(f"mutation check: {len(chosen)} defects; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutation_clean_") as tmp:
        clean = make_copy(Path(tmp))
        union = tuple(dict.fromkeys(t for d in chosen for t in d.tests))
        code, last = run_tests(clean, union, args.timeout * 4)
        print(f"unmodified tree: {len(union)} test selections {'pass' if code == 0 else 'FAIL'} ({last}) "
              f"in {time.monotonic() - start:.0f} s", flush=True)
        if code != 0:
            print("the tests must pass on the unmodified tree before defects can be judged; fix that first")
            return 2
    results: dict[str, list[str]] = {"caught": [], "survived": [], "STALE": []}
    for d in chosen:
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"mutation_{d.name}_") as tmp:
            copy = make_copy(Path(tmp))
            stale = apply(copy, d)
            if stale:
                verdict, detail = "STALE", stale
            else:
                code, detail = run_tests(copy, d.tests, args.timeout)
                verdict = "survived" if code == 0 else "caught"
        results[verdict].append(d.name)
        print(f"{verdict:8} {time.monotonic() - began:6.1f} s  {d.name:40} src/longtail/{d.file}: {detail}", flush=True)
    total = time.monotonic() - start
    print(f"\n{len(results['caught'])} of {len(chosen)} caught, {len(results['survived'])} survived"
          f"{': ' + ', '.join(results['survived']) if results['survived'] else ''}, {len(results['STALE'])} stale"
          f"{': ' + ', '.join(results['STALE']) if results['STALE'] else ''}; {total:.0f} s")
    return 0 if len(results["caught"]) == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
