"""Evaluate: the bundle's own inference path on VAL_TEST, the only phase that ever reads VAL_TEST."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import confusion_matrix, roc_curve

from streetvision.config.schema import Config
from streetvision.contracts.metadata import (
    ArtifactMetadata,
    check_lineage,
    check_same_partition,
    json_safe,
    prepare_output_dir,
    require_input,
    write_metadata,
)
from streetvision.contracts.splits import PHASE_READS, Role, Split
from streetvision.data.shards import class_counts, load_split
from streetvision.inference import Bundle
from streetvision.metrics.classification import classification_metrics, selective_metrics
from streetvision.progress import log
from streetvision.report import write_html_report
from streetvision.training.loop import resolve_device

PHASE = "evaluate"
REPORT_FILE = "report.html"


def risk_coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and selective risk when accepting the k most confident samples, k = 1..N."""
    order = np.argsort(-confidence, kind="stable")
    errors = np.cumsum(~np.asarray(correct, dtype=bool)[order])
    k = np.arange(1, len(order) + 1)
    return k / len(order), errors / k


def run_evaluate(
    cfg: Config,
    bundle_dir: str | Path,
    val_test_dir: str | Path,
    evaluation_dir: str | Path,
    report_path: str | Path,
) -> dict:
    """Returns the evaluation metadata plus what the KFP wrapper logs (scalars, confusion matrix, ROC)."""
    started = time.time()
    bundle_meta = require_input(bundle_dir, kind="bundle", phase=PHASE, input_name="bundle")
    # The bundle must not have been influenced by VAL_TEST in any way, at any depth.
    check_lineage(bundle_meta.lineage, f"{PHASE}, input 'bundle' ({bundle_dir})", forbid=[Split.VAL_TEST])
    role, split = PHASE_READS[PHASE]["val_test"]
    test = load_split(val_test_dir, split=split, role=role, phase=PHASE, input_name="val_test")
    partition = check_same_partition({"bundle": bundle_meta, "val_test": test.meta}, PHASE)
    evaluation_dir = prepare_output_dir(evaluation_dir)

    bundle = Bundle.load(bundle_dir)
    device = str(resolve_device(cfg.training.device))
    preds = bundle.predict(np.asarray(test.images), cfg.evaluation.batch_size, device)
    probs = np.stack([1.0 - preds.prob_roadwork, preds.prob_roadwork], axis=1)
    metrics = classification_metrics(test.labels, probs, cfg.evaluation.ece_bins)
    metrics.update(selective_metrics(test.labels, preds.prediction, preds.accept))
    metrics["policy_target_accuracy"] = 1.0 - bundle.policy["target_risk"]
    metrics["policy_feasible"] = bool(bundle.policy["feasible"])
    correct = preds.prediction == test.labels
    coverage, risk = risk_coverage_curve(preds.confidence, correct)
    metrics["aurc"] = float(risk.mean())

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
    (evaluation_dir / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2))
    write_html_report(
        evaluation_dir / REPORT_FILE,
        metrics=metrics,
        confidence=preds.confidence,
        correct=correct,
        matrix=matrix,
        roc=(fpr, tpr),
        risk_coverage=(coverage, risk),
        policy=bundle.policy,
        label_names=cfg.data.label_names,
        ece_bins=cfg.evaluation.ece_bins,
    )
    shutil.copyfile(evaluation_dir / REPORT_FILE, report_path)
    verdict = "above" if metrics["accuracy"] > metrics["majority_rate"] else "NOT above"
    log(
        f"VAL_TEST: accuracy {metrics['accuracy']:.3f} ({verdict} the majority-class rate "
        f"{metrics['majority_rate']:.3f}), MCC {metrics['mcc']:.3f}, AUROC {metrics['auroc']:.3f}, "
        f"ECE {metrics['ece']:.3f}, coverage {metrics['coverage']:.3f}"
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
        summary={
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()},
            "seconds": round(time.time() - started, 1),
        },
    )
    return {
        "evaluation": write_metadata(evaluation_dir, meta),
        "scalars": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)},
        "confusion_matrix": matrix.tolist(),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()},
    }
