"""Thin KFP components, one per phase (and variant): a typed signature, then the one adapter.

The signatures encode the split rules (each input names only the artifact types its role may read); every
body is the same call, `run_component(phase, config, **artifacts)` (adapter.py), which hands the artifacts'
paths to the phase's library function and its result back to KFP.

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
    from streetvision_components.adapter import run_component

    run_component(
        "ingest",
        config,
        train=train,
        val_select=val_select,
        val_calib=val_calib,
        val_test=val_test,
        data_report=data_report,
        data_report_html=data_report_html,
    )


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
    from streetvision_components.adapter import run_component

    run_component(
        "phase1",
        config,
        train=train,
        val_select=val_select,
        val_calib=val_calib,
        checkpoint=checkpoint,
        val_select_logits=val_select_logits,
        val_calib_logits=val_calib_logits,
        training_metrics=training_metrics,
        training_curves=training_curves,
    )


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
    from streetvision_components.adapter import run_component

    run_component(
        "phase4",
        config,
        train=train,
        val_select=val_select,
        backbone=backbone,
        ssl_metrics=ssl_metrics,
        ssl_curves=ssl_curves,
    )


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
    from streetvision_components.adapter import run_component

    run_component(
        "phase1",
        config,
        train=train,
        val_select=val_select,
        val_calib=val_calib,
        backbone=backbone,
        checkpoint=checkpoint,
        val_select_logits=val_select_logits,
        val_calib_logits=val_calib_logits,
        training_metrics=training_metrics,
        training_curves=training_curves,
    )


def phase2_threshold(
    config: str,
    val_calib_logits: Input[ValCalibLogits],
    policy: Output[SelectivePolicy],
):
    """Fit the calibrator and the certified threshold policy (Learn-then-Test or SGR) on VAL_CALIB logits only."""
    from streetvision_components.adapter import run_component

    run_component("phase2", config, val_calib_logits=val_calib_logits, policy=policy)


def phase3_gate(
    config: str,
    checkpoint: Input[Checkpoint],
    train: Input[TrainSplit],
    val_select: Input[ValSelectSplit],
    val_calib: Input[ValCalibSplit],
    gate_checkpoint: Output[Checkpoint],
    policy: Output[SelectivePolicy],
):
    """Gatekeeper fine-tune on TRAIN (epoch by AURC on VAL_SELECT), then its certified threshold on VAL_CALIB."""
    from streetvision_components.adapter import run_component

    run_component(
        "phase3",
        config,
        checkpoint=checkpoint,
        train=train,
        val_select=val_select,
        val_calib=val_calib,
        gate_checkpoint=gate_checkpoint,
        policy=policy,
    )


def phase5_scrc(
    config: str,
    val_calib_logits: Input[ValCalibLogits],
    policy: Output[SelectivePolicy],
):
    """Fit the calibrator and the SCRC-I policy (selection + conformal risk control) on VAL_CALIB logits only."""
    from streetvision_components.adapter import run_component

    run_component("phase5", config, val_calib_logits=val_calib_logits, policy=policy)


def phase6_export(
    config: str,
    checkpoint: Input[Checkpoint],
    policy: Input[SelectivePolicy],
    val_calib: Input[ValCalibSplit],
    bundle: Output[DeploymentBundle],
):
    """Export the deployment bundle with exactly one policy (threshold, gate or SCRC: one required input),
    and the drift reference of the policy's own data (VAL_CALIB)."""
    from streetvision_components.adapter import run_component

    run_component("phase6", config, checkpoint=checkpoint, policy=policy, val_calib=val_calib, bundle=bundle)


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
    from streetvision_components.adapter import run_component

    return run_component(
        "evaluate",
        config,
        bundle=bundle,
        val_test=val_test,
        evaluation=evaluation,
        metrics=metrics,
        classification_metrics=classification_metrics,
        report=report,
    )


# Phase name -> its component function, and phase -> {feeding phase: the variant it runs as then}; both named
# in the phase registry.
PHASE_FUNCTIONS = {spec.name: globals()[spec.component] for spec in PHASES}
PHASE_VARIANTS = {
    spec.name: {feeder: globals()[function] for feeder, function in spec.variants.items()}
    for spec in PHASES
    if spec.variants
}
