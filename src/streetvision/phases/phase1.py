"""Phase 1: train the classifier on TRAIN, select on VAL_SELECT, write logits for VAL_SELECT and VAL_CALIB."""

from __future__ import annotations

import json
import time
from pathlib import Path

from streetvision.config.schema import Config
from streetvision.contracts.metadata import ArtifactMetadata, check_same_partition, prepare_output_dir, write_metadata
from streetvision.contracts.splits import PHASE_READS, Role, Split
from streetvision.contracts.validators import sha256_file
from streetvision.data.shards import SplitData, class_counts, load_split, write_predictions
from streetvision.metrics.classification import classification_metrics, probabilities
from streetvision.models import create_model, model_spec, normalization, predict_logits, save_model_dir
from streetvision.progress import log
from streetvision.training.loop import autocast_dtype, resolve_device, train_classifier

PHASE = "phase1"


def run_phase1(
    cfg: Config,
    train_dir: str | Path,
    val_select_dir: str | Path,
    val_calib_dir: str | Path,
    checkpoint_dir: str | Path,
    val_select_logits_dir: str | Path,
    val_calib_logits_dir: str | Path,
) -> dict[str, dict]:
    started = time.time()
    reads = PHASE_READS[PHASE]
    inputs: dict[str, SplitData] = {}
    for name, path in (("train", train_dir), ("val_select", val_select_dir), ("val_calib", val_calib_dir)):
        role, split = reads[name]
        inputs[name] = load_split(path, split=split, role=role, phase=PHASE, input_name=name)
    partition = check_same_partition({k: v.meta for k, v in inputs.items()}, PHASE)
    train, select, calib = inputs["train"], inputs["val_select"], inputs["val_calib"]
    outs = [prepare_output_dir(p) for p in (checkpoint_dir, val_select_logits_dir, val_calib_logits_dir)]
    checkpoint_dir, val_select_logits_dir, val_calib_logits_dir = outs

    model = create_model(cfg.model)
    mean, std = normalization(model)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {cfg.model.name} ({n_params / 1e6:.2f}M parameters, {cfg.model.img_size}px), "
        f"TRAIN {train.meta.count} images, VAL_SELECT {select.meta.count}")
    result = train_classifier(
        model, train.images, train.labels, train.sample_ids, select.images, select.labels, mean, std, cfg.training
    )

    spec = model_spec(cfg.model)
    save_model_dir(model, spec, checkpoint_dir)
    weights_sha256 = sha256_file(checkpoint_dir / "model.safetensors")
    preprocessing = {"img_size": cfg.model.img_size, "mean": mean, "std": std, "input": "uint8 RGB, whole frame "
                     "resized to img_size x img_size (bilinear)"}
    (checkpoint_dir / "preprocessing.json").write_text(json.dumps(preprocessing, indent=2))
    (checkpoint_dir / "training_history.json").write_text(json.dumps(result.history, indent=2))
    trained_on = [train.meta.reads(PHASE, Role.FIT), select.meta.reads(PHASE, Role.MODEL_SELECTION)]

    device = resolve_device(cfg.training.device)
    amp = autocast_dtype(cfg.training.precision)
    outputs = {}
    summaries = {}
    for data, out_dir in ((select, val_select_logits_dir), (calib, val_calib_logits_dir)):
        logits = predict_logits(model, data.images, mean, std, cfg.evaluation.batch_size, device, amp)
        write_predictions(out_dir, data.sample_ids, data.labels, logits)
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
                | {"weights_sha256": weights_sha256},  # policies fitted on these logits record it
            ),
        )
    select_metric = f"val_select_{cfg.training.selection_metric}"
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
                "train_images_per_second": round(result.images_per_second, 1),
                "parameters": n_params,
                "device": str(device),
                "seconds": round(time.time() - started, 1),
            },
        ),
    )
    return outputs
