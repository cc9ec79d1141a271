"""Thin KFP components, one per phase: typed artifacts -> paths -> the streetvision phase -> metadata.

These are plain functions; the pipeline factory wraps them with `dsl.component` and the configured image
(lightweight components, kfp baked into the image, `install_kfp_package=False`), because the KFP local
runner only runs lightweight components. Bodies import inside because KFP ships each body on its own.
The task's cache key (used by `streetvision run --resume`) covers this source and the arguments (the
config), not the library code: resuming after a fix in a failed phase reuses the phases that finished.
"""

from kfp.dsl import HTML, ClassificationMetrics, Input, Metrics, Output

from streetvision_components.types import (
    Checkpoint,
    DataReport,
    DeploymentBundle,
    EvaluationResult,
    SelectivePolicy,
    TrainSplit,
    ValCalibLogits,
    ValCalibSplit,
    ValSelectLogits,
    ValSelectSplit,
    ValTestSplit,
)


def ingest(
    config: str,
    train: Output[TrainSplit],
    val_select: Output[ValSelectSplit],
    val_calib: Output[ValCalibSplit],
    val_test: Output[ValTestSplit],
    data_report: Output[DataReport],
):
    """Read the source, validate every image, group duplicates, split by group, write the uint8 cache."""
    from streetvision.config import config_from_json
    from streetvision.contracts import Split
    from streetvision.phases.ingest import run_ingest

    outs = {Split.TRAIN: train, Split.VAL_SELECT: val_select, Split.VAL_CALIB: val_calib, Split.VAL_TEST: val_test}
    meta = run_ingest(config_from_json(config), {s: a.path for s, a in outs.items()}, data_report.path)
    for split, artifact in outs.items():
        artifact.metadata.update(meta[split.value])
    data_report.metadata.update(meta["data_report"])


def phase1_train(
    config: str,
    train: Input[TrainSplit],
    val_select: Input[ValSelectSplit],
    val_calib: Input[ValCalibSplit],
    checkpoint: Output[Checkpoint],
    val_select_logits: Output[ValSelectLogits],
    val_calib_logits: Output[ValCalibLogits],
    training_metrics: Output[Metrics],
    training_curves: Output[HTML],
):
    """Train on TRAIN, select on VAL_SELECT, write logits for VAL_SELECT and VAL_CALIB."""
    import json

    from streetvision.config import config_from_json
    from streetvision.phases.phase1 import run_phase1

    meta = run_phase1(config_from_json(config), train.path, val_select.path, val_calib.path, checkpoint.path,
                      val_select_logits.path, val_calib_logits.path, training_curves.path)
    checkpoint.metadata.update(meta["checkpoint"])
    val_select_logits.metadata.update(meta["val_select_logits"])
    val_calib_logits.metadata.update(meta["val_calib_logits"])
    for name, value in meta["training_metrics"].items():
        training_metrics.log_metric(name, value)
    # KFP's local cache treats an output whose path does not exist as missing.
    with open(training_metrics.path, "w") as handle:
        json.dump(meta["training_metrics"], handle, indent=2)


def phase2_threshold(
    config: str,
    val_calib_logits: Input[ValCalibLogits],
    policy: Output[SelectivePolicy],
):
    """Fit temperature scaling and the SGR threshold policy on VAL_CALIB logits only."""
    from streetvision.config import config_from_json
    from streetvision.phases.phase2 import run_phase2

    meta = run_phase2(config_from_json(config), val_calib_logits.path, policy.path)
    policy.metadata.update(meta["policy"])


def phase6_export(
    config: str,
    checkpoint: Input[Checkpoint],
    policy: Input[SelectivePolicy],
    bundle: Output[DeploymentBundle],
):
    """Export the deployment bundle with exactly one policy."""
    from streetvision.config import config_from_json
    from streetvision.phases.phase6 import run_phase6

    meta = run_phase6(config_from_json(config), checkpoint.path, policy.path, bundle.path)
    bundle.metadata.update(meta["bundle"])


def evaluate(
    config: str,
    bundle: Input[DeploymentBundle],
    val_test: Input[ValTestSplit],
    evaluation: Output[EvaluationResult],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[HTML],
):
    """Final numbers on VAL_TEST, through the bundle's own inference path; the only reader of VAL_TEST."""
    import json

    from streetvision.config import config_from_json
    from streetvision.phases.evaluate import run_evaluate

    cfg = config_from_json(config)
    result = run_evaluate(cfg, bundle.path, val_test.path, evaluation.path, report.path)
    evaluation.metadata.update(result["evaluation"])
    for name, value in result["scalars"].items():
        metrics.log_metric(name, value)
    classification_metrics.log_confusion_matrix(cfg.data.label_names, result["confusion_matrix"])
    roc = result["roc"]
    classification_metrics.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    # KFP's local cache treats an output whose path does not exist as missing: give both metric artifacts a file.
    with open(metrics.path, "w") as handle:
        json.dump(result["scalars"], handle, indent=2)
    with open(classification_metrics.path, "w") as handle:
        json.dump({"confusion_matrix": result["confusion_matrix"], "roc": roc}, handle)


# Phase name (as in the config) -> component function.
PHASE_FUNCTIONS = {
    "ingest": ingest,
    "phase1": phase1_train,
    "phase2": phase2_threshold,
    "phase6": phase6_export,
    "evaluate": evaluate,
}
