"""Phase 3: Gatekeeper (Rabanser et al., 2025) — fine-tune the phase-1 model so its confidence separates right
from wrong, then fit its threshold policy on VAL_CALIB exactly as phase 2 does.

Loss on a TRAIN batch, "correct" meaning the model's own prediction is right:
    L = alpha * mean_correct CE(p, y) + (1 - alpha) * mean_incorrect KL(p || uniform)
The head (and optionally the last blocks) is tuned; the epoch is chosen by AURC on VAL_SELECT, where the
untuned model (epoch 0) is a candidate too, so the gate never ranks worse than the model it started from
there. VAL_CALIB is read only to compute the tuned model's logits for the calibrator and the threshold.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from streetvision.config.schema import Config
from streetvision.contracts.metadata import (
    ArtifactMetadata,
    check_same_partition,
    prepare_output_dir,
    require_input,
    write_metadata,
)
from streetvision.contracts.splits import Role
from streetvision.contracts.validators import sha256_file, validate_checkpoint
from streetvision.data.shards import SplitData, load_split
from streetvision.devices import task_device
from streetvision.metrics.evaluation import aurc_scores
from streetvision.models import load_model_dir, predict_logits, save_model_dir, to_model_input
from streetvision.phases.phase2 import fit_threshold_policy, policy_summary, write_policy
from streetvision.phases.registry import PHASE_READS
from streetvision.progress import log, progress

PHASE = "phase3"


def gatekeeper_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * CE on samples the model gets right + (1 - alpha) * KL(p || uniform) on the ones it gets wrong."""
    correct = logits.argmax(dim=1) == labels
    log_p = F.log_softmax(logits, dim=1)
    zero = logits.sum() * 0.0  # keeps the graph when a group is empty
    ce = F.nll_loss(log_p[correct], labels[correct]) if correct.any() else zero
    # KL(p || u) = sum_k p_k log p_k + log K: zero exactly when the prediction is uniform.
    kl = (log_p.exp() * log_p).sum(dim=1) + math.log(logits.shape[1])
    kl = kl[~correct].mean() if (~correct).any() else zero
    return alpha * ce + (1.0 - alpha) * kl


def _trainable(model: torch.nn.Module, unfreeze_blocks: int) -> list[torch.nn.Parameter]:
    """Freeze everything, then open the classifier head and (optionally) the last blocks and final norms."""
    for p in model.parameters():
        p.requires_grad_(False)
    modules = [model.get_classifier()]
    if unfreeze_blocks > 0:
        modules += list(model.blocks[-unfreeze_blocks:])
        modules += [
            getattr(model, name)
            for name in ("norm", "fc_norm")
            if isinstance(getattr(model, name, None), torch.nn.Module)
        ]
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def _select_aurc(model, data: SplitData, mean, std, batch_size, device) -> float:
    logits = predict_logits(model, data.images, mean, std, batch_size, device)
    return aurc_scores(logits.max(axis=1) - logits.min(axis=1), logits.argmax(axis=1) == data.labels)[0]


def run_phase3(
    cfg: Config,
    checkpoint_dir: str | Path,
    train_dir: str | Path,
    val_select_dir: str | Path,
    val_calib_dir: str | Path,
    gate_checkpoint_dir: str | Path,
    policy_dir: str | Path,
) -> dict[str, dict]:
    started = time.time()
    g = cfg.gate
    reads = PHASE_READS[PHASE]
    inputs: dict[str, SplitData] = {}
    for name, path in (("train", train_dir), ("val_select", val_select_dir), ("val_calib", val_calib_dir)):
        role, split = reads[name]
        inputs[name] = load_split(path, split=split, role=role, phase=PHASE, input_name=name)
    checkpoint_dir = Path(checkpoint_dir)
    ckpt_meta = require_input(checkpoint_dir, kind="checkpoint", phase=PHASE, input_name="checkpoint")
    partition = check_same_partition({"checkpoint": ckpt_meta, **{k: v.meta for k, v in inputs.items()}}, PHASE)
    validate_checkpoint(checkpoint_dir)
    train, select, calib = inputs["train"], inputs["val_select"], inputs["val_calib"]
    gate_checkpoint_dir, policy_dir = prepare_output_dir(gate_checkpoint_dir), prepare_output_dir(policy_dir)

    torch.manual_seed(g.seed)
    device = task_device(cfg, PHASE)
    model = load_model_dir(checkpoint_dir).to(device)
    preprocessing = json.loads((checkpoint_dir / "preprocessing.json").read_text())
    mean, std = preprocessing["mean"], preprocessing["std"]
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    params = _trainable(model, g.unfreeze_blocks)
    optimizer = torch.optim.AdamW(params, lr=g.lr, weight_decay=g.weight_decay)
    batch = cfg.evaluation.batch_size
    # bf16 autocast on GPU as in phase 1 (training.precision); the loss is computed in fp32.
    bf16 = cfg.training.precision == "bf16" and device.type == "cuda"

    best_aurc = _select_aurc(model, select, mean, std, batch, device)
    best_epoch, best_state = 0, copy.deepcopy(model.state_dict())
    history = [{"epoch": 0, "val_select_aurc": best_aurc}]
    log(
        f"gate: tuning {sum(p.numel() for p in params)} parameters (head + {g.unfreeze_blocks} blocks), "
        f"alpha={g.correct_weight}, VAL_SELECT AURC before {best_aurc:.4f}"
    )
    rng = np.random.default_rng(g.seed)
    labels_all = torch.from_numpy(train.labels)
    for epoch in range(1, g.epochs + 1):
        model.train()
        order = rng.permutation(len(train.labels))
        losses = []
        starts = range(0, len(order), g.batch_size)
        for start in progress(starts, len(starts), f"gate epoch {epoch}/{g.epochs}", unit="step"):
            index = np.sort(order[start : start + g.batch_size])  # sorted: memmap reads stay sequential
            images = torch.from_numpy(np.array(train.images[index])).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(to_model_input(images, mean_t, std_t))
            loss = gatekeeper_loss(logits.float(), labels_all[index].to(device), g.correct_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        score = _select_aurc(model, select, mean, std, batch, device)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_select_aurc": score})
        log(f"gate epoch {epoch}/{g.epochs}: loss {np.mean(losses):.4f}, VAL_SELECT AURC {score:.4f}")
        if score < best_aurc:
            best_aurc, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()

    spec = json.loads((checkpoint_dir / "model_config.json").read_text())
    save_model_dir(model, spec, gate_checkpoint_dir)  # copies the tensors to CPU itself
    (gate_checkpoint_dir / "preprocessing.json").write_text(json.dumps(preprocessing, indent=2))
    (gate_checkpoint_dir / "gate_history.json").write_text(json.dumps(history, indent=2))
    weights_sha256 = sha256_file(gate_checkpoint_dir / "model.safetensors")

    # The threshold is fitted on logits of exactly the weights just saved.
    logits = predict_logits(model, calib.images, mean, std, batch, device)
    calibrator, policy = fit_threshold_policy(cfg, logits, calib.labels, weights_sha256, kind="gate")
    policy.update(
        gate_best_epoch=best_epoch,
        gate_val_select_aurc=best_aurc,
        gate_val_select_aurc_before=history[0]["val_select_aurc"],
        gate_correct_weight=g.correct_weight,
    )
    policy["guarantee"] = "Gatekeeper-tuned model. " + policy["guarantee"]
    write_policy(policy_dir, policy, calibrator, f"{PHASE} output")

    tuned_on = ckpt_meta.lineage + [train.meta.reads(PHASE, Role.FIT), select.meta.reads(PHASE, Role.MODEL_SELECTION)]
    checkpoint_meta = write_metadata(
        gate_checkpoint_dir,
        ArtifactMetadata(
            kind="checkpoint",
            phase=PHASE,
            partition=partition,
            lineage=tuned_on,
            summary={
                "best_epoch": best_epoch,
                "epochs_run": g.epochs,
                "val_select_aurc": round(best_aurc, 4),
                "val_select_aurc_before": round(history[0]["val_select_aurc"], 4),
                "device": str(device),
                "seconds": round(time.time() - started, 1),
            },
        ),
    )
    policy_meta = write_metadata(
        policy_dir,
        ArtifactMetadata(
            kind="policy",
            phase=PHASE,
            partition=partition,
            lineage=tuned_on + [calib.meta.reads(PHASE, Role.POLICY_FITTING)],
            summary=policy_summary(policy, calibrator),
        ),
    )
    return {"gate_checkpoint": checkpoint_meta, "policy": policy_meta}
