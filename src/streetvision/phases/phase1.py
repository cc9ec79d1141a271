"""Phase 1: train the classifier on TRAIN, select on VAL_SELECT, write logits for VAL_SELECT and VAL_CALIB.

After training (best epoch by VAL_SELECT), two more choices are made, both on VAL_SELECT only and both
reported: the head bias is shifted to the deployment prior, and single- vs multi-view inference is picked.
With ``training.num_processes`` > 1 the training runs in one torchrun worker per GPU (DDP); rank 0 writes
the outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streetvision import io as storage
from streetvision.challenge import val_calib_renders, val_select_for_selection
from streetvision.cluster_env import resume_root
from streetvision.config.loader import config_from_json, config_to_json
from streetvision.config.schema import Config
from streetvision.contracts.metadata import (
    ArtifactMetadata,
    check_same_partition,
    prepare_output_dir,
    write_metadata,
)
from streetvision.contracts.splits import Role, Split
from streetvision.contracts.validators import sha256_file
from streetvision.data.shards import SplitData, class_counts, load_split, write_predictions
from streetvision.devices import task_device
from streetvision.metrics.classification import classification_metrics, probabilities, selection_score
from streetvision.models import create_model, model_spec, normalization, predict_logits, save_model_dir
from streetvision.models.multiview import MultiViewClassifier, multiview_cost
from streetvision.phases.result import PhasePaths, PhaseResult
from streetvision.registry import PHASE_READS
from streetvision.training import distributed
from streetvision.training.curves import curve_metrics, curves_html
from streetvision.training.engine import Checkpoints
from streetvision.training.loop import STATE_FILE, train_classifier

logger = logging.getLogger(__name__)

PHASE = "phase1"
OUTPUT_NAMES = ("checkpoint", "val_select_logits", "val_calib_logits")
# Settings that do not change the trained weights: a restart with other values still resumes.
_NOT_IN_RESUME_KEY = (
    "resume_dir",
    "checkpoint_every_minutes",
    "log_every_seconds",
    "num_threads",
    "multiview",
    "multiview_aggregation",
    "prior_correction",
    "deployment_prior",
)


def _load_inputs(train_dir, val_select_dir, val_calib_dir) -> dict[str, SplitData]:
    reads = PHASE_READS[PHASE]
    inputs = {}
    for name, path in (("train", train_dir), ("val_select", val_select_dir), ("val_calib", val_calib_dir)):
        role, split = reads[name]
        inputs[name] = load_split(path, split=split, role=role, phase=PHASE, input_name=name)
    return inputs


def resume_key(cfg: Config, inputs: dict[str, SplitData]) -> str:
    """Names the run's training state: same config (what shapes the weights) + same data -> same key."""
    training = {k: v for k, v in cfg.training.model_dump().items() if k not in _NOT_IN_RESUME_KEY}
    ident = {
        "model": cfg.model.model_dump(),
        "training": training,
        "data": {k: v.meta.fingerprint for k, v in inputs.items()},
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def run_phase1(cfg: Config, paths: PhasePaths) -> PhaseResult:
    """Train, select, write the checkpoint and both logits outputs; the result carries the training scalars
    (for a KFP Metrics artifact) and the training curves page.

    With the optional `backbone` input (phase 4's adapted backbone, the `phase1_train_adapted` variant) the
    model starts from it, and the outputs' lineage records the backbone's own reads. Training state is kept
    under `training.resume_dir` or, on a cluster, the run's checkpoint location, so a retried task resumes.

    Args:
        cfg: the run's config (``model``, ``training``).
        paths: inputs ``train``, ``val_select``, ``val_calib`` (and optionally ``backbone``); outputs
            ``checkpoint``, ``val_select_logits``, ``val_calib_logits``.

    Returns:
        The outputs' metadata, the training scalars and the training curves page.

    Raises:
        LeakageViolationError: an input comes from a split (or lineage) this phase's role may not read.
        IntegrityError: an input is incomplete (no completion record) or altered since it was written.
        ConfigError: the device or process count asked for is not available.
        TrainingDivergedError: the loss became NaN or infinite.
    """
    train_dir, val_select_dir, val_calib_dir = (paths.input(n) for n in ("train", "val_select", "val_calib"))
    out_dirs = {name: paths.output(name) for name in OUTPUT_NAMES}
    inputs = _load_inputs(train_dir, val_select_dir, val_calib_dir)  # checks roles and completeness first
    check_same_partition({k: v.meta for k, v in inputs.items()}, PHASE)
    backbone = paths.optional_input("backbone")
    if backbone is not None:
        from streetvision.phases.phase4 import phase1_config_from_backbone  # phase 4 imports peft: only here

        cfg = phase1_config_from_backbone(cfg, backbone, train_dir)
    # Resolved before anything is written or any worker starts: a GPU task without a visible GPU fails here.
    device = task_device(cfg, PHASE)
    for path in out_dirs.values():
        prepare_output_dir(path)
    job = {
        "config": config_to_json(cfg),
        "dirs": [str(p) for p in (train_dir, val_select_dir, val_calib_dir, *out_dirs.values())],
    }
    processes = distributed.resolve_num_processes(cfg.training.num_processes, device.type, PHASE)
    trained = distributed.run_job(PHASE, processes, "streetvision.phases.phase1:_train_and_write", job)
    outputs = {name: trained[name] for name in OUTPUT_NAMES}
    if backbone is not None:
        from streetvision.phases.phase4 import add_backbone_lineage

        outputs = add_backbone_lineage(backbone, out_dirs)
    return PhaseResult(
        PHASE, outputs, metrics=trained["training_metrics"], reports={"training_curves": trained["training_curves"]}
    )


def _train_and_write(config: str, dirs: list[str], result_path: str | None = None) -> dict:
    """Everything after input checks; runs in every training process, rank 0 writes the outputs."""
    started = time.time()
    cfg = config_from_json(config)
    train_dir, val_select_dir, val_calib_dir, checkpoint_dir, val_select_logits_dir, val_calib_logits_dir = map(
        Path, dirs
    )
    inputs = _load_inputs(train_dir, val_select_dir, val_calib_dir)
    partition = check_same_partition({k: v.meta for k, v in inputs.items()}, PHASE)
    train, select, calib = inputs["train"], inputs["val_select"], inputs["val_calib"]
    rank = distributed.rank()

    # Seeded here: imported libraries may reseed torch, and a restarted task must start from the same weights.
    torch.manual_seed(cfg.training.seed)
    model = create_model(cfg.model)
    mean, std = normalization(model)
    n_params = sum(p.numel() for p in model.parameters())
    checkpoints = None
    resume = resume_root(cfg, PHASE)
    if resume:
        checkpoints = Checkpoints(
            f"{resume.rstrip('/')}/phase1-{resume_key(cfg, inputs)}", STATE_FILE, "training.resume_dir"
        )
    if rank == 0:
        logger.info(
            f"model {cfg.model.name} ({n_params / 1e6:.2f}M parameters, {cfg.model.img_size}px), "
            f"TRAIN {train.meta.count} images, VAL_SELECT {select.meta.count}, "
            f"{distributed.world_size()} process(es)"
        )
    device = task_device(cfg, PHASE, distributed.local_rank())
    # The epoch is chosen on plain VAL_SELECT and its renders at the levels the policy is certified for.
    select_images, select_labels, selected_on = val_select_for_selection(cfg, select.images, select.labels)
    if rank == 0:
        logger.info(f"selecting the epoch on {selected_on}")
    result = train_classifier(
        model,
        train.images,
        train.labels,
        train.sample_ids,
        select_images,
        select_labels,
        mean,
        std,
        cfg.training,
        checkpoints,
        device,
    )
    distributed.barrier()
    if rank != 0:
        return {}

    # From here on every logit is computed in fp32, by the function Bundle.predict uses (models.predict_logits
    # without autocast): the calibrator and policy are fitted on VAL_CALIB logits, and a guarantee certified on
    # bf16 logits would hold for numbers deployment never computes. Deployment stays fp32 (not bf16) because
    # `predict` and evaluate run on CPUs without fast bf16, and a bundle must score alike on every device.
    # Training (and its per-epoch VAL_SELECT scoring) keeps training.precision; this inference is cheap.
    model.to(device)
    prior = _correct_prior(model, cfg, train.labels, select, mean, std, device)
    scorer, views = _choose_views(model, cfg, select, mean, std, device)

    spec = model_spec(cfg.model)
    if views["chosen"] == "multi":
        spec["multiview"] = {"grid": 3, "aggregation": cfg.training.multiview_aggregation}
    save_model_dir(model, spec, checkpoint_dir)
    last = {k: v.contiguous() for k, v in (result.last_state or {}).items()}
    if last:
        from safetensors.torch import save_file

        storage.atomic_write(checkpoint_dir / "last.safetensors", lambda p: save_file(last, str(p)))
    weights_sha256 = sha256_file(checkpoint_dir / "model.safetensors")
    preprocessing = {
        "img_size": cfg.model.img_size,
        "mean": mean,
        "std": std,
        "input": "uint8 RGB, whole frame resized to img_size x img_size (bilinear)",
        "views": spec.get("multiview") or "single",
        "deployment_prior": cfg.training.deployment_prior if cfg.training.prior_correction else None,
    }
    training_summary = {
        "prior_correction": prior,
        "views": views,
        "resumed_from": result.resumed_from,
        "selected_on": selected_on,
        "best_epoch": result.best_epoch + 1,
        "epochs_run": result.epochs_run,
        "processes": distributed.world_size(),
    }
    for name, payload in (
        ("preprocessing.json", preprocessing),
        ("training_history.json", result.history),
        ("training_summary.json", training_summary),
    ):
        storage.write_text(checkpoint_dir / name, json.dumps(payload, indent=2))
    select_metric = f"val_select_{cfg.training.selection_metric}"
    trained_on = [train.meta.reads(PHASE, Role.FIT), select.meta.reads(PHASE, Role.MODEL_SELECTION)]

    outputs: dict[str, Any] = {}  # metadata by output name, plus the training scalars and curves page
    summaries = {}
    for data, out_dir in ((select, val_select_logits_dir), (calib, val_calib_logits_dir)):
        logits = predict_logits(scorer, data.images, mean, std, cfg.evaluation.batch_size, device)
        # VAL_CALIB also as deployment sends it: phase 2 fits the calibrator and policy on these renders.
        renders = val_calib_renders(cfg, scorer, np.asarray(data.images), mean, std, device) if data is calib else None
        rendered = {"deployment_render_levels": cfg.calibration_levels()} if renders is not None else {}
        write_predictions(out_dir, data.sample_ids, data.labels, logits, renders)
        metrics = classification_metrics(data.labels, probabilities(logits), cfg.evaluation.ece_bins)
        summaries[data.split.value] = metrics
        outputs[f"{data.split.value}_logits"] = write_metadata(
            out_dir,
            ArtifactMetadata(
                kind="logits",
                phase=PHASE,
                split=data.split.value,
                count=data.meta.count,
                class_counts=class_counts(data.labels),
                fingerprint=data.meta.fingerprint,
                partition=partition,
                lineage=trained_on + [data.meta.reads(PHASE, Role.PREDICTION)],
                summary={k: round(v, 4) for k, v in metrics.items() if k in ("accuracy", "mcc", "auroc", "ece")}
                | {"weights_sha256": weights_sha256}  # policies fitted on these logits record it
                | rendered,
            ),
        )
    outputs["checkpoint"] = write_metadata(
        checkpoint_dir,
        ArtifactMetadata(
            kind="checkpoint",
            phase=PHASE,
            partition=partition,
            lineage=trained_on,
            summary={
                "best_epoch": result.best_epoch + 1,
                "epochs_run": result.epochs_run,
                select_metric: round(result.best_score, 4),
                "val_select_accuracy": round(summaries[Split.VAL_SELECT.value]["accuracy"], 4),
                "views": views["chosen"],
                "prior_shift": round(prior["logit_shift"], 4),
                "train_images_per_second": round(result.images_per_second, 1),
                "parameters": n_params,
                "device": str(device),
                "processes": distributed.world_size(),
                "seconds": round(time.time() - started, 1),
            },
        ),
    )
    outputs["training_metrics"] = {
        select_metric: float(result.best_score),
        "best_epoch": float(result.best_epoch + 1),
        "epochs_run": float(result.epochs_run),
        "train_images_per_second": float(result.images_per_second),
        **curve_metrics(result.history, cfg.training.selection_metric),
    }
    outputs["training_curves"] = curves_html(result.history, cfg.training.selection_metric, training_summary)
    return distributed.hand_back(outputs, result_path)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _correct_prior(model, cfg: Config, train_labels, select: SplitData, mean, std, device) -> dict:
    """Shift the head bias from the prior the loss trained for to the deployment prior; report the effect on
    VAL_SELECT (metrics at the 0.5 cut, before and after)."""
    trained_prior = 0.5 if cfg.training.balance_classes else float(np.mean(train_labels == 1))
    trained_prior = min(max(trained_prior, 1e-4), 1 - 1e-4)
    shift = _logit(cfg.training.deployment_prior) - _logit(trained_prior) if cfg.training.prior_correction else 0.0

    def metrics() -> dict:
        logits = predict_logits(model, select.images, mean, std, cfg.evaluation.batch_size, device)
        m = classification_metrics(select.labels, probabilities(logits), cfg.evaluation.ece_bins)
        return {k: round(m[k], 4) for k in ("accuracy", "balanced_accuracy", "mcc")}

    report = {
        "trained_prior": trained_prior,
        "deployment_prior": cfg.training.deployment_prior,
        "logit_shift": shift,
        "val_select_before": metrics(),
    }
    if shift:
        with torch.no_grad():
            bias = model.get_classifier().bias
            bias[1] += shift / 2
            bias[0] -= shift / 2
        report["val_select_after"] = metrics()
    else:
        report["val_select_after"] = report["val_select_before"]
    logger.info(
        f"prior correction: trained for P(roadwork)={trained_prior:.3f}, deployment {cfg.training.deployment_prior}"
        f" (logit shift {shift:+.3f}); VAL_SELECT {report['val_select_before']} -> {report['val_select_after']}"
    )
    return report


def _choose_views(model, cfg: Config, select: SplitData, mean, std, device):
    """Single view vs 1 global + 3x3 local views, scored on VAL_SELECT; returns the scorer and a report."""
    t = cfg.training
    report: dict = {"mode": t.multiview, "aggregation": t.multiview_aggregation, "cost_factor": multiview_cost()}
    multi = MultiViewClassifier(model, t.multiview_aggregation).eval()
    for name, scorer in (("single", model), ("multi", multi)):
        if t.multiview != "select" and name != t.multiview:
            continue
        started = time.perf_counter()
        logits = predict_logits(scorer, select.images, mean, std, cfg.evaluation.batch_size, device)
        report[f"{name}_seconds"] = round(time.perf_counter() - started, 3)
        report[f"{name}_val_select_{t.selection_metric}"] = selection_score(t.selection_metric, select.labels, logits)
    if t.multiview == "select":
        # Ties keep the single view: ten times cheaper.
        better = report[f"multi_val_select_{t.selection_metric}"] > report[f"single_val_select_{t.selection_metric}"]
        report["chosen"] = "multi" if better else "single"
        logger.info(
            f"views on VAL_SELECT ({t.selection_metric}): "
            f"single {report[f'single_val_select_{t.selection_metric}']:.4f}"
            f" vs multi ({t.multiview_aggregation}, {multiview_cost()}x cost) "
            f"{report[f'multi_val_select_{t.selection_metric}']:.4f} -> {report['chosen']}"
        )
    else:
        report["chosen"] = t.multiview
    return (multi if report["chosen"] == "multi" else model), report
