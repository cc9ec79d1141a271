"""Evaluate: the bundle's own inference path on VAL_TEST, the only phase that ever reads VAL_TEST.

Numbers come with bootstrap intervals; VAL_TEST is also re-rendered as deployment sends it (224 px JPEG
challenge levels) and sliced by source tag; a blessing turns configured thresholds into a pass/fail verdict.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import confusion_matrix, roc_curve

from streetvision.challenge import LEVELS, render_challenge
from streetvision.config.schema import BlessingConfig, Config
from streetvision.contracts.metadata import (
    ArtifactMetadata,
    check_lineage,
    check_same_partition,
    json_safe,
    prepare_output_dir,
    require_input,
    write_metadata,
)
from streetvision.contracts.splits import Role, Split
from streetvision.data.shards import class_counts, load_split
from streetvision.devices import task_device
from streetvision.inference import Bundle, Predictions
from streetvision.metrics.evaluation import (
    bootstrap_intervals,
    evaluation_metrics,
    interval_method,
    risk_coverage_curve,
)
from streetvision.phases.result import ClassificationCurves, PhasePaths, PhaseResult
from streetvision.registry import PHASE_READS
from streetvision.report import write_html_report
from streetvision.selective import policy_outcomes, pooled_outcomes

logger = logging.getLogger(__name__)

PHASE = "evaluate"
REPORT_FILE = "report.html"
METRICS_FILE = "metrics.json"

# The seed README's targets, shown beside the measured numbers: (metric, label, band, passes).
SEED_TARGETS = [
    ("accuracy", "accuracy", "88-92 %", lambda v: v >= 0.88),
    ("ece", "ECE (15 bins)", "3-5 %", lambda v: v <= 0.05),
    ("auroc", "AUROC", "0.94-0.96", lambda v: v >= 0.94),
    ("coverage_at_target_accuracy", "coverage at 95 % selective accuracy", "75-85 %", lambda v: v >= 0.75),
]


def _scored(bundle: Bundle, images: np.ndarray, labels: np.ndarray, cfg: Config, device: str):
    preds = bundle.predict(images, cfg.evaluation.batch_size, device)
    target = 1.0 - bundle.policy["target_risk"]
    point = evaluation_metrics(labels, preds.prob_roadwork, preds.accept, target, cfg.evaluation.ece_bins)
    return preds, point


def _method(cfg: Config, n: int) -> str:
    return interval_method(cfg.evaluation.bootstrap_method, n, cfg.evaluation.bca_max_samples)


def _answers(bundle: Bundle, preds: Predictions, labels: np.ndarray) -> dict:
    """Errors among answered images beside the guarantee's own quantity (see selective.policy_outcomes)."""
    probs = np.stack([1.0 - preds.prob_roadwork, preds.prob_roadwork], axis=1)
    return policy_outcomes(bundle.policy, probs, labels)


def _intervals(preds: Predictions, labels: np.ndarray, target: float, cfg: Config) -> dict:
    ev = cfg.evaluation
    return bootstrap_intervals(
        labels,
        preds.prob_roadwork,
        preds.accept,
        target,
        ev.ece_bins,
        ev.bootstrap_resamples,
        ev.confidence_level,
        ev.bootstrap_method,
        ev.seed,
        ev.bca_max_samples,
    )


# Original image size buckets by the longer side, in pixels: (upper bound, name).
SIZE_BUCKETS = [(256, "<= 256 px"), (640, "257-640 px"), (1280, "641-1280 px"), (float("inf"), "> 1280 px")]
MIN_SLICE = 10  # below this many images a slice gets no bootstrap interval (it would say nothing)


def _slice_masks(test) -> list[tuple[str, np.ndarray]]:
    """Slices worth a row: each source tag when there are several, each original-size bucket when sizes vary."""
    found = []
    sources = np.asarray(test.sources)
    if len(set(sources)) > 1:
        found += [(f"source={s}", sources == s) for s in sorted(set(sources))]
    if test.original_sizes is not None:
        longer = test.original_sizes.max(axis=1)
        bucket = np.searchsorted([upper for upper, _ in SIZE_BUCKETS], longer, side="left")
        if len(set(bucket)) > 1:
            found += [(f"original size {SIZE_BUCKETS[b][1]}", bucket == b) for b in sorted(set(bucket))]
    return found


def bless(point: dict, intervals: dict, rules: BlessingConfig) -> dict:
    """The pass/fail verdict: every configured bound, checked on the point or the interval's cautious end."""
    checks = []

    def judged(name: str, higher_is_better: bool) -> float:
        if rules.judge == "point":
            return point[name]
        low, high = intervals[name]
        return low if higher_is_better else high

    if rules.require_answers:
        checks.append(
            {
                "rule": "the policy answers some VAL_TEST images (coverage > 0); one that accepts nothing sends every "
                "image to Stage 2 (make it feasible with more VAL_CALIB data, a stronger model or a looser "
                "calibration.target_risk, or set evaluation.blessing.require_answers=false)",
                "value": point["coverage"],
                "passed": bool(point["coverage"] > 0),
            }
        )
    if rules.require_above_majority:
        value = judged("accuracy", True)
        checks.append(
            {
                "rule": f"accuracy > majority-class rate {point['majority_rate']:.4f}",
                "value": value,
                "passed": bool(value > point["majority_rate"]),
            }
        )
    for name, bound, higher in (
        ("accuracy", rules.min_accuracy, True),
        ("mcc", rules.min_mcc, True),
        ("auroc", rules.min_auroc, True),
        ("ece", rules.max_ece, False),
        ("coverage", rules.min_coverage, True),
    ):
        if bound is None:
            continue
        value = judged(name, higher)
        passed = bool(np.isfinite(value) and (value >= bound if higher else value <= bound))
        checks.append({"rule": f"{name} {'>=' if higher else '<='} {bound}", "value": value, "passed": passed})
    return {"passed": all(c["passed"] for c in checks), "judge": rules.judge, "checks": checks}


def run_evaluate(cfg: Config, paths: PhasePaths) -> PhaseResult:
    """The evaluation, its scalars, confusion matrix and ROC, the report page and the blessing verdict.

    Args:
        cfg: the run's config (``evaluation``, its blessing rule included).
        paths: inputs ``bundle`` and ``val_test`` (read once, here only); output ``evaluation``.

    Returns:
        The evaluation's metadata, scalar metrics, ClassificationMetrics curves, the HTML report and the
        ``blessed`` output parameter.

    Raises:
        LeakageViolationError: an input comes from a split (or lineage) this phase's role may not read.
        IntegrityError: an input is incomplete (no completion record) or altered since it was written.
        BundleError: the bundle's files do not match their recorded sha256.
    """
    started = time.time()
    bundle_dir, val_test_dir = paths.input("bundle"), paths.input("val_test")
    evaluation_dir = paths.output("evaluation")
    bundle_meta = require_input(bundle_dir, kind="bundle", phase=PHASE, input_name="bundle")
    # The bundle must not have been influenced by VAL_TEST in any way, at any depth.
    check_lineage(bundle_meta.lineage, f"{PHASE}, input 'bundle' ({bundle_dir})", forbid=[Split.VAL_TEST])
    role, split = PHASE_READS[PHASE]["val_test"]
    test = load_split(val_test_dir, split=split, role=role, phase=PHASE, input_name="val_test")
    partition = check_same_partition({"bundle": bundle_meta, "val_test": test.meta}, PHASE)
    evaluation_dir = prepare_output_dir(evaluation_dir)

    # Verified against the configured identity; signing.method=none is the config's explicit "unsigned is fine".
    bundle = Bundle.load(bundle_dir, cfg.signing, allow_unsigned=cfg.signing.method == "none")
    device = str(task_device(cfg, PHASE))
    target = 1.0 - bundle.policy["target_risk"]
    images = np.asarray(test.images)
    preds, point = _scored(bundle, images, test.labels, cfg, device)
    intervals = _intervals(preds, test.labels, target, cfg)
    answers = _answers(bundle, preds, test.labels)
    logger.info(
        f"VAL_TEST metrics with {cfg.evaluation.confidence_level:.0%} bootstrap intervals "
        f"({cfg.evaluation.bootstrap_resamples} resamples, {_method(cfg, len(test.labels))})"
    )

    challenge = []
    for level in cfg.evaluation.challenge_levels:
        # Deployment path: 224 px JPEG bytes, decoded exactly as ingest and `predict` decode files.
        encoded = render_challenge(images, level, cfg.evaluation.challenge_size, cfg.evaluation.seed)
        rendered = np.stack([bundle.decode(data) for data in encoded])
        level_preds, level_point = _scored(bundle, rendered, test.labels, cfg, device)
        challenge.append(
            {
                "level": level,
                "description": LEVELS[level],
                "metrics": level_point,
                "intervals": _intervals(level_preds, test.labels, target, cfg),
                "answers": _answers(bundle, level_preds, test.labels),
            }
        )
        logger.info(
            f"challenge level {level}: accuracy {level_point['accuracy']:.3f}, MCC {level_point['mcc']:.3f}, "
            f"deployment score {level_point['deployment_score']:.3f}"
        )

    answer_mixes = _promises(bundle.policy, answers, challenge)
    for row in answer_mixes:
        mixed = row["answers"]
        logger.info(
            f"{row['name']}: answered {mixed['coverage']:.3f} of images, error among answered "
            f"{_share(mixed['answered_error'])} (promised <= {bundle.policy['target_risk']})"
        )

    slices = []
    for name, mask in _slice_masks(test):
        sub = Predictions(*(getattr(preds, f)[mask] for f in Predictions.__dataclass_fields__))
        slice_point = evaluation_metrics(
            test.labels[mask], sub.prob_roadwork, sub.accept, target, cfg.evaluation.ece_bins
        )
        intervals_of_slice = (
            _intervals(sub, test.labels[mask], target, cfg)
            if mask.sum() >= MIN_SLICE
            else {k: (float("nan"), float("nan")) for k in intervals}
        )
        slices.append({"slice": name, "metrics": slice_point, "intervals": intervals_of_slice})

    blessing = bless(point, intervals, cfg.evaluation.blessing)
    targets = [
        {
            "metric": name,
            "label": label,
            "target": band,
            "value": point[name],
            "met": bool(np.isfinite(point[name]) and passes(point[name])),
        }
        for name, label, band, passes in SEED_TARGETS
    ]

    correct = preds.prediction == test.labels
    coverage, risk = risk_coverage_curve(preds.confidence, correct)
    matrix = confusion_matrix(test.labels, preds.prediction, labels=[0, 1])
    fpr, tpr, thresholds = roc_curve(test.labels, preds.prob_roadwork)
    thresholds = np.clip(thresholds, 0.0, 1.0)  # sklearn's first threshold is +inf

    pq.write_table(
        pa.table(
            {
                "sample_id": test.sample_ids,
                "label": pa.array(test.labels, pa.int64()),
                "prob_roadwork": pa.array(preds.prob_roadwork, pa.float64()),
                "prediction": pa.array(preds.prediction, pa.int64()),
                "accept": pa.array(preds.accept, pa.bool_()),
                "source": test.sources,
            }
        ),
        evaluation_dir / "predictions.parquet",
    )
    results = {
        "metrics": point,
        "intervals": intervals,
        "confidence_level": cfg.evaluation.confidence_level,
        "answers": answers,
        "answer_mixes": answer_mixes,
        "challenge": challenge,
        "slices": slices,
        "blessing": blessing,
        "seed_targets": targets,
        "policy": {
            k: bundle.policy.get(k) for k in ("kind", "target_risk", "delta", "threshold", "feasible", "guarantee")
        },
    }
    (evaluation_dir / METRICS_FILE).write_text(json.dumps(json_safe(results), indent=2))
    write_html_report(
        evaluation_dir / REPORT_FILE,
        results=results,
        confidence=preds.confidence,
        correct=correct,
        matrix=matrix,
        roc=(fpr, tpr),
        risk_coverage=(coverage, risk),
        policy=bundle.policy,
        label_names=cfg.data.label_names,
        ece_bins=cfg.evaluation.ece_bins,
    )
    verdict = "above" if point["accuracy"] > point["majority_rate"] else "NOT above"
    logger.info(
        f"VAL_TEST: accuracy {point['accuracy']:.3f} ({verdict} the majority-class rate "
        f"{point['majority_rate']:.3f}), MCC {point['mcc']:.3f}, AUROC {point['auroc']:.3f}, "
        f"ECE {point['ece']:.3f}, coverage {point['coverage']:.3f}, error among answered images "
        f"{_share(answers['answered_error'])}; blessing "
        f"{'PASSED' if blessing['passed'] else 'FAILED'}"
    )
    summary = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in point.items()}
    summary.update(
        {
            "accuracy_interval": [round(v, 4) for v in intervals["accuracy"]],
            "mcc_interval": [round(v, 4) for v in intervals["mcc"]],
            "answered": answers["answered"],
            "answered_error": answers["answered_error"],
            "guarantee_quantity": answers["guarantee_quantity"],
            "guarantee_value": answers["guarantee_value"],
            "deployment_mix_answered_error": answer_mixes[0]["answers"]["answered_error"] if answer_mixes else None,
            "deployment_mix_coverage": answer_mixes[0]["answers"]["coverage"] if answer_mixes else None,
            "blessed": blessing["passed"],
            "blessing_checks": [f"{c['rule']}: {'pass' if c['passed'] else 'FAIL'}" for c in blessing["checks"]],
            "seconds": round(time.time() - started, 1),
        }
    )
    meta = ArtifactMetadata(
        kind="evaluation",
        phase=PHASE,
        split=Split.VAL_TEST.value,
        count=test.meta.count,
        class_counts=class_counts(test.labels),
        fingerprint=test.meta.fingerprint,
        partition=partition,
        lineage=bundle_meta.lineage + [test.meta.reads(PHASE, Role.FINAL_EVALUATION)],
        summary=summary,
    )
    scalars = {k: float(v) for k, v in point.items() if isinstance(v, (int, float)) and np.isfinite(v)}
    for name, (low, high) in intervals.items():
        if np.isfinite(low) and np.isfinite(high):
            scalars[f"{name}_ci_low"], scalars[f"{name}_ci_high"] = low, high
    if answer_mixes:
        scalars["deployment_mix_coverage"] = float(answer_mixes[0]["answers"]["coverage"])
    for entry in challenge:
        for name in ("accuracy", "mcc", "deployment_score"):
            if np.isfinite(entry["metrics"][name]):
                scalars[f"challenge_level{entry['level']}_{name}"] = float(entry["metrics"][name])
    return PhaseResult(
        PHASE,
        {"evaluation": write_metadata(evaluation_dir, meta)},
        metrics=scalars,
        reports={"report": (evaluation_dir / REPORT_FILE).read_text()},
        classification=ClassificationCurves(
            label_names=list(cfg.data.label_names),
            confusion_matrix=matrix.tolist(),
            fpr=fpr.tolist(),
            tpr=tpr.tolist(),
            thresholds=thresholds.tolist(),
        ),
        parameters={"blessed": bool(blessing["passed"])},
    )


def _share(value: float | None) -> str:
    return "n/a (nothing answered)" if value is None else f"{value:.3f}"


def _promises(policy: dict, plain: dict, challenge: list[dict]) -> list[dict]:
    """Marks each VAL_TEST row with what the guarantee promises for it, and returns the pooled row of the
    deployment mix when the policy was certified on it (the rows it pools are evaluated here)."""
    certified = list(policy.get("calibration_levels") or [])
    target = policy["target_risk"] if policy["feasible"] else None
    bound = "none (infeasible policy)" if target is None else f"<= {target}"
    plain["promise"] = "not promised (certified for the deployment mix)" if certified else bound
    for entry in challenge:
        part = entry["level"] in certified
        entry["answers"]["promise"] = (
            "not promised alone (one part of the certified mix)"
            if part
            else f"not promised (certified for {'levels ' + str(certified) if certified else 'plain images'})"
        )
    parts = [e["answers"] for e in challenge if e["level"] in certified]
    if not certified or {e["level"] for e in challenge if e["level"] in certified} != set(certified):
        return []
    pooled = pooled_outcomes(parts) | {"promise": bound}
    return [{"name": f"deployment mix of levels {certified} (what the guarantee is for)", "answers": pooled}]
