"""Thin KFP components, one per phase: typed artifacts -> paths -> the streetvision phase -> metadata.

These are plain functions; the pipeline factory wraps them with `dsl.component` and the configured image
(lightweight components, kfp baked into the image, `install_kfp_package=False`), because the KFP local
runner only runs lightweight components. Bodies import inside because KFP ships each body on its own.
The task's cache key (used by `streetvision run --resume`) covers this source and the arguments (the
config), not the library code: resuming after a fix in a failed phase reuses the phases that finished.
"""

from typing import NamedTuple

from kfp.dsl import HTML, ClassificationMetrics, Input, Metrics, Output
from streetvision_components.types import (
    AdaptedBackbone,
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

from streetvision.registry import PHASES


def ingest(
    config: str,
    train: Output[TrainSplit],
    val_select: Output[ValSelectSplit],
    val_calib: Output[ValCalibSplit],
    val_test: Output[ValTestSplit],
    data_report: Output[DataReport],
    data_report_html: Output[HTML],
):
    """Read the sources, validate every image, group duplicates, split by group, write the uint8 shard cache."""
    from streetvision.config import config_from_json
    from streetvision.contracts import Split
    from streetvision.phases.ingest import run_ingest

    outs = {Split.TRAIN: train, Split.VAL_SELECT: val_select, Split.VAL_CALIB: val_calib, Split.VAL_TEST: val_test}
    meta = run_ingest(
        config_from_json(config),
        {s: a.path for s, a in outs.items()},
        data_report.path,
        html_path=data_report_html.path,
    )
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
    """Train on TRAIN, select on VAL_SELECT, write logits for VAL_SELECT and VAL_CALIB. On a cluster, training
    state goes to the run's checkpoint location, so a retried (preempted) task resumes."""
    import json

    from streetvision.cluster_env import task_checkpoint_dir
    from streetvision.config import config_from_json
    from streetvision.phases.phase1 import run_phase1

    cfg = config_from_json(config)
    cfg.training.resume_dir = cfg.training.resume_dir or task_checkpoint_dir(cfg, "phase1") or ""
    meta = run_phase1(
        cfg,
        train.path,
        val_select.path,
        val_calib.path,
        checkpoint.path,
        val_select_logits.path,
        val_calib_logits.path,
        training_curves.path,
    )
    checkpoint.metadata.update(meta["checkpoint"])
    val_select_logits.metadata.update(meta["val_select_logits"])
    val_calib_logits.metadata.update(meta["val_calib_logits"])
    for name, value in meta["training_metrics"].items():
        training_metrics.log_metric(name, value)
    # KFP's local cache treats an output whose path does not exist as missing.
    with open(training_metrics.path, "w") as handle:
        json.dump(meta["training_metrics"], handle, indent=2)


def phase4_explora(
    config: str,
    train: Input[TrainSplit],
    val_select: Input[ValSelectSplit],
    backbone: Output[AdaptedBackbone],
    ssl_metrics: Output[Metrics],
    ssl_curves: Output[HTML],
):
    """ExPLoRA: adapt the backbone on TRAIN (+ an unlabelled pool) with DINOv2's objective and LoRA; probe
    TRAIN -> VAL_SELECT before and after. Resumes from its checkpoint when a retried task finds one."""
    import json
    import shutil

    from streetvision.cluster_env import task_checkpoint_dir
    from streetvision.config import config_from_json
    from streetvision.phases.phase4 import run_phase4

    cfg = config_from_json(config)
    result = run_phase4(cfg, train.path, val_select.path, backbone.path, task_checkpoint_dir(cfg, "phase4"))
    backbone.metadata.update(result["backbone"])
    for name, value in result["metrics"].items():
        ssl_metrics.log_metric(name, value)
    with open(ssl_metrics.path, "w") as handle:  # the local cache needs a file behind every output
        json.dump(result["metrics"], handle, indent=2)
    shutil.copyfile(result["curves_html"], ssl_curves.path)


def phase1_train_adapted(
    config: str,
    train: Input[TrainSplit],
    val_select: Input[ValSelectSplit],
    val_calib: Input[ValCalibSplit],
    backbone: Input[AdaptedBackbone],
    checkpoint: Output[Checkpoint],
    val_select_logits: Output[ValSelectLogits],
    val_calib_logits: Output[ValCalibLogits],
    training_metrics: Output[Metrics],
    training_curves: Output[HTML],
):
    """Phase 1 from phase 4's adapted backbone: `model.weights` is set to it, lineage records its TRAIN read."""
    import json

    from streetvision.cluster_env import task_checkpoint_dir
    from streetvision.config import config_from_json
    from streetvision.phases.phase1 import run_phase1
    from streetvision.phases.phase4 import add_backbone_lineage, phase1_config_from_backbone

    cfg = phase1_config_from_backbone(config_from_json(config), backbone.path, train.path)
    cfg.training.resume_dir = cfg.training.resume_dir or task_checkpoint_dir(cfg, "phase1") or ""
    trained = run_phase1(
        cfg,
        train.path,
        val_select.path,
        val_calib.path,
        checkpoint.path,
        val_select_logits.path,
        val_calib_logits.path,
        training_curves.path,
    )
    meta = add_backbone_lineage(
        backbone.path,
        {
            "checkpoint": checkpoint.path,
            "val_select_logits": val_select_logits.path,
            "val_calib_logits": val_calib_logits.path,
        },
    )
    checkpoint.metadata.update(meta["checkpoint"])
    val_select_logits.metadata.update(meta["val_select_logits"])
    val_calib_logits.metadata.update(meta["val_calib_logits"])
    for name, value in trained["training_metrics"].items():
        training_metrics.log_metric(name, value)
    with open(training_metrics.path, "w") as handle:  # the local cache needs a file behind every output
        json.dump(trained["training_metrics"], handle, indent=2)


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


def phase3_gate(
    config: str,
    checkpoint: Input[Checkpoint],
    train: Input[TrainSplit],
    val_select: Input[ValSelectSplit],
    val_calib: Input[ValCalibSplit],
    gate_checkpoint: Output[Checkpoint],
    policy: Output[SelectivePolicy],
):
    """Gatekeeper fine-tune on TRAIN (epoch by AURC on VAL_SELECT), then its SGR threshold on VAL_CALIB."""
    from streetvision.config import config_from_json
    from streetvision.phases.phase3 import run_phase3

    meta = run_phase3(
        config_from_json(config),
        checkpoint.path,
        train.path,
        val_select.path,
        val_calib.path,
        gate_checkpoint.path,
        policy.path,
    )
    gate_checkpoint.metadata.update(meta["gate_checkpoint"])
    policy.metadata.update(meta["policy"])


def phase5_scrc(
    config: str,
    val_calib_logits: Input[ValCalibLogits],
    policy: Output[SelectivePolicy],
):
    """Fit the calibrator and the SCRC-I policy (selection + conformal risk control) on VAL_CALIB logits only."""
    from streetvision.config import config_from_json
    from streetvision.phases.phase5 import run_phase5

    meta = run_phase5(config_from_json(config), val_calib_logits.path, policy.path)
    policy.metadata.update(meta["policy"])


def phase6_export(
    config: str,
    checkpoint: Input[Checkpoint],
    policy: Input[SelectivePolicy],
    val_calib: Input[ValCalibSplit],
    bundle: Output[DeploymentBundle],
):
    """Export the deployment bundle with exactly one policy (threshold, gate or SCRC: one required input),
    and the drift reference of the policy's own data (VAL_CALIB)."""
    from streetvision.config import config_from_json
    from streetvision.phases.phase6 import run_phase6

    meta = run_phase6(config_from_json(config), checkpoint.path, policy.path, val_calib.path, bundle.path)
    bundle.metadata.update(meta["bundle"])


def evaluate(
    config: str,
    bundle: Input[DeploymentBundle],
    val_test: Input[ValTestSplit],
    evaluation: Output[EvaluationResult],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[HTML],
) -> NamedTuple("EvaluateOutputs", [("blessed", bool)]):  # type: ignore[valid-type]  # KFP reads outputs from it
    """Final numbers on VAL_TEST, through the bundle's own inference path; the only reader of VAL_TEST.

    `blessed` is the pass/fail verdict of `evaluation.blessing`; a cluster pipeline can gate publishing on it
    (`dsl.If(evaluate_task.outputs["blessed"] == True)`)."""
    import json
    from collections import namedtuple

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
    return namedtuple("EvaluateOutputs", ["blessed"])(result["blessed"])


# Phase name -> its component function, and phase -> {feeding phase: the variant it runs as then}; both named
# in the phase registry.
PHASE_FUNCTIONS = {spec.name: globals()[spec.component] for spec in PHASES}
PHASE_VARIANTS = {
    spec.name: {feeder: globals()[function] for feeder, function in spec.variants.items()}
    for spec in PHASES
    if spec.variants
}
