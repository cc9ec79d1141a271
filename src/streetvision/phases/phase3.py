"""Phase 3: Gatekeeper (Rabanser et al., 2025) — fine-tune the phase-1 model so its confidence separates right
from wrong, then fit its threshold policy on VAL_CALIB exactly as phase 2 does.

Loss on a TRAIN batch, "correct" meaning the model's own prediction is right:
    L = alpha * mean_correct CE(p, y) + (1 - alpha) * mean_incorrect KL(p || uniform)
The head (and optionally the last blocks) is tuned; the epoch is chosen by AURC on VAL_SELECT, where the
untuned model (epoch 0) is a candidate too, so the gate never ranks worse than the model it started from
there. VAL_CALIB is read only to compute the tuned model's logits for the calibrator and the threshold.

The tuning runs in the training engine (`streetvision.training.engine`) with phase 1's settings for what the
engine shares: gradient clipping (`training.grad_clip_norm`), weight EMA (`training.ema_decay`), bf16 autocast on
GPU (`training.precision`) and resumable state under `training.resume_dir` (on a cluster, the run's
checkpoint location), saved every epoch and every `training.checkpoint_every_minutes`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from streetvision.challenge import val_calib_renders
from streetvision.cluster_env import resume_root
from streetvision.config.loader import config_from_json, config_to_json
from streetvision.config.schema import Config
from streetvision.contracts.metadata import (
    ArtifactMetadata,
    check_same_partition,
    prepare_output_dir,
    require_input,
    write_metadata,
)
from streetvision.contracts.splits import Role
from streetvision.contracts.validators import sha256_file
from streetvision.data.shards import SplitData, load_split
from streetvision.devices import task_device
from streetvision.metrics.evaluation import aurc_scores
from streetvision.models import load_model_dir, predict_logits, save_model_dir, to_model_input, validate_checkpoint
from streetvision.models.multiview import MultiViewClassifier
from streetvision.phases.phase2 import calibration_inputs, fit_threshold_policy, policy_summary, write_policy
from streetvision.phases.result import PhasePaths, PhaseResult
from streetvision.progress import progress
from streetvision.registry import PHASE_READS
from streetvision.training import distributed
from streetvision.training.engine import (
    Checkpoints,
    Optimization,
    Plan,
    autocast_dtype,
    cpu_state,
    epoch_batches,
    fit,
    param_groups,
)

logger = logging.getLogger(__name__)

PHASE = "phase3"
STATE_FILE = "gate_state.pt"


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


def _trainable(model: Any, unfreeze_blocks: int) -> list[torch.nn.Parameter]:
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


class GateRecipe:
    """Phase 3 for the training engine: TRAIN batches in a (seed, epoch) order, the Gatekeeper loss, the engine's
    optimisation (AdamW at a constant lr, clipping, EMA, autocast), AURC on VAL_SELECT for selection."""

    def __init__(self, model, params, train: SplitData, select: SplitData, mean, std, cfg: Config, device, scorer=None):
        g = cfg.gate
        self.cfg, self.model, self.train, self.select, self.device = cfg, model, train, select, device
        # How deployment scores the weights (e.g. wrapped in multi-view): selection scores them the same way.
        self.scorer = scorer or (lambda m: m)
        self.mean, self.std = mean, std
        self.mean_t, self.std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
        self.labels = torch.from_numpy(train.labels)
        # bf16 autocast on GPU as in phase 1 (training.precision); the loss is computed in fp32.
        amp = autocast_dtype(cfg.training.precision) if device.type == "cuda" else None
        self.optimization = Optimization(
            model,
            param_groups(model, g.lr, g.weight_decay),
            g.lr,
            lambda step, group: 1.0,  # a short fine-tune from trained weights: constant lr
            device,
            grad_clip_norm=cfg.training.grad_clip_norm,
            ema_decay=cfg.training.ema_decay,
            amp=amp,
        )
        self.world = distributed.world_size()
        self.steps_per_epoch = len(self._batches(0))
        self.trainable = sum(p.numel() for p in params)

    def _batches(self, epoch: int) -> list[np.ndarray]:
        g = self.cfg.gate
        return epoch_batches(len(self.train.labels), g.seed, epoch, g.batch_size, self.world)

    def batches(self, epoch: int, first_step: int):
        rank, batches = distributed.rank(), self._batches(epoch)[first_step:]
        desc = f"gate epoch {epoch + 1}/{self.cfg.gate.epochs}"
        for index in progress(batches, len(batches), desc, unit="step"):
            yield np.sort(index[rank :: self.world])  # sorted: memmap reads stay sequential

    def step(self, index: np.ndarray) -> tuple[torch.Tensor, int]:
        images = torch.from_numpy(np.array(self.train.images[index])).to(self.device)
        with self.optimization.autocast():
            logits = self.optimization.net(to_model_input(images, self.mean_t, self.std_t))
        loss = gatekeeper_loss(logits.float(), self.labels[index].to(self.device), self.cfg.gate.correct_weight)
        self.optimization.update(loss / self.world)
        return distributed.all_reduce_sum(loss.detach() / self.world), len(index) * self.world

    def evaluate(self, epoch: int) -> dict[str, float]:
        model = self.scorer(self.optimization.eval_model())
        score = _select_aurc(model, self.select, self.mean, self.std, self.cfg.evaluation.batch_size, self.device)
        return {"val_select_aurc": float(score)}

    def weights(self) -> dict[str, torch.Tensor]:
        return cpu_state(self.optimization.eval_model())

    def describe(self, index: np.ndarray) -> str:
        ids = [self.train.sample_ids[i] for i in index[:8]]
        return f"sample ids {ids}{' ...' if len(index) > 8 else ''}"

    def train_mode(self) -> None:
        self.model.train()

    def last_lr(self) -> float:
        return self.optimization.last_lr()

    def state_dict(self) -> dict:
        return self.optimization.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimization.load_state_dict(state)


def resume_key(cfg: Config, weights_sha256: str, inputs: dict[str, SplitData]) -> str:
    """Names the run's training state: the settings that shape the tuned weights, the starting weights and the
    data."""
    t = cfg.training
    ident = {
        "gate": cfg.gate.model_dump(),
        "training": {"grad_clip_norm": t.grad_clip_norm, "ema_decay": t.ema_decay, "precision": t.precision},
        "weights": weights_sha256,
        "data": {k: v.meta.fingerprint for k, v in inputs.items()},
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def run_phase3(cfg: Config, paths: PhasePaths) -> PhaseResult:
    """Gatekeeper-tune phase 1's model, then fit its threshold policy as phase 2 does.

    The tuning runs in the training engine: with training.resume_dir set (on a cluster: the run's checkpoint
    location), its state is saved there and a retried task resumes it. With ``training.num_processes`` > 1 it
    runs in one torchrun worker per GPU (DDP), as phase 1's training does; rank 0 writes the outputs.

    Args:
        cfg: the run's config (``gate``, ``training``, ``calibration``).
        paths: inputs ``checkpoint``, ``train``, ``val_select``, ``val_calib``; outputs ``gate_checkpoint`` and
            ``policy``.

    Returns:
        The outputs' metadata.

    Raises:
        LeakageViolationError: an input comes from a split (or lineage) this phase's role may not read.
        IntegrityError: an input is incomplete (no completion record) or altered since it was written.
        TrainingDivergedError: the loss became NaN or infinite.
    """
    _load_inputs(paths)  # checks roles, completeness and the checkpoint before anything is written
    # Resolved before anything is written or any worker starts: a GPU task without a visible GPU fails here.
    device = task_device(cfg, PHASE)
    for name in paths.outputs:
        prepare_output_dir(paths.output(name))
    job = {"config": config_to_json(cfg), "paths": {"inputs": dict(paths.inputs), "outputs": dict(paths.outputs)}}
    processes = distributed.resolve_num_processes(cfg.training.num_processes, device.type, PHASE)
    return PhaseResult(PHASE, distributed.run_job(PHASE, processes, "streetvision.phases.phase3:_tune_and_write", job))


def _load_inputs(paths: PhasePaths) -> tuple[dict[str, SplitData], ArtifactMetadata, str]:
    """The three splits (each checked for its role), the checkpoint's record, and their common partition."""
    checkpoint_dir = paths.input("checkpoint")
    inputs: dict[str, SplitData] = {}
    for name, (role, split) in PHASE_READS[PHASE].items():
        inputs[name] = load_split(paths.input(name), split=split, role=role, phase=PHASE, input_name=name)
    ckpt_meta = require_input(checkpoint_dir, kind="checkpoint", phase=PHASE, input_name="checkpoint")
    partition = check_same_partition({"checkpoint": ckpt_meta, **{k: v.meta for k, v in inputs.items()}}, PHASE)
    validate_checkpoint(checkpoint_dir)
    return inputs, ckpt_meta, partition


def _tune_and_write(config: str, paths: dict[str, dict[str, str]], result_path: str | None = None) -> dict:
    """Everything after the input checks; runs in every training process (DDP), rank 0 writes the outputs."""
    started = time.time()
    cfg = config_from_json(config)
    where = PhasePaths(PHASE, **paths)
    checkpoint_dir = where.input("checkpoint")
    gate_checkpoint_dir, policy_dir = where.output("gate_checkpoint"), where.output("policy")
    inputs, ckpt_meta, partition = _load_inputs(where)
    train, select, calib = inputs["train"], inputs["val_select"], inputs["val_calib"]
    g = cfg.gate

    torch.manual_seed(g.seed)
    if cfg.training.num_threads > 0:
        torch.set_num_threads(cfg.training.num_threads)
    device = task_device(cfg, PHASE, distributed.local_rank())
    loaded = load_model_dir(checkpoint_dir).to(device)
    # A multi-view checkpoint is tuned through its single-view network (every view shares its weights), on single
    # TRAIN views; selection and the threshold score the views as deployment will.
    model = loaded.model if isinstance(loaded, MultiViewClassifier) else loaded

    def scorer(m):
        return MultiViewClassifier(m, loaded.aggregation, loaded.grid) if isinstance(loaded, MultiViewClassifier) else m

    preprocessing = json.loads((checkpoint_dir / "preprocessing.json").read_text())
    mean, std = preprocessing["mean"], preprocessing["std"]
    batch = cfg.evaluation.batch_size
    params = _trainable(model, g.unfreeze_blocks)
    recipe = GateRecipe(model, params, train, select, mean, std, cfg, device, scorer)
    checkpoints = None
    resume = resume_root(cfg, PHASE)
    if resume:
        key = resume_key(cfg, sha256_file(checkpoint_dir / "model.safetensors"), inputs)
        checkpoints = Checkpoints(f"{resume.rstrip('/')}/{PHASE}-{key}", STATE_FILE, "training.resume_dir")
    logger.info(
        f"gate: tuning {recipe.trainable} parameters (head + {g.unfreeze_blocks} blocks), alpha={g.correct_weight}"
    )
    plan = Plan(
        phase=PHASE,
        epochs=g.epochs,
        select="val_select_aurc",
        higher_is_better=False,
        evaluate_before_training=True,  # the untuned model is a candidate: the gate never ranks worse
        save_every_minutes=cfg.training.checkpoint_every_minutes,
        hint="lower gate.lr or check those samples, then rerun (with training.resume_dir set the run continues "
        "from that state)",
    )
    result = fit(recipe, plan, checkpoints, device)
    distributed.barrier()
    if distributed.rank() != 0:
        return {}
    # Epoch 0 is the untuned model, 1..epochs the tuned ones.
    history = [
        {"epoch": row["epoch"] + 1, **{k: row[k] for k in ("train_loss", "val_select_aurc") if k in row}}
        for row in result.history
    ]
    best_epoch, best_aurc = result.best_epoch + 1, result.best_score
    logger.info(
        f"gate: VAL_SELECT AURC before {history[0]['val_select_aurc']:.4f}, best {best_aurc:.4f} (epoch {best_epoch})"
    )
    assert result.best_state is not None  # evaluate_before_training: epoch 0 is always a candidate
    model.load_state_dict(result.best_state)
    model.eval()

    spec = json.loads((checkpoint_dir / "model_config.json").read_text())
    save_model_dir(model, spec, gate_checkpoint_dir)  # copies the tensors to CPU itself
    (gate_checkpoint_dir / "preprocessing.json").write_text(json.dumps(preprocessing, indent=2))
    (gate_checkpoint_dir / "gate_history.json").write_text(json.dumps(history, indent=2))
    weights_sha256 = sha256_file(gate_checkpoint_dir / "model.safetensors")

    # The threshold is fitted on logits of exactly the weights just saved.
    tuned = scorer(model)
    logits = predict_logits(tuned, calib.images, mean, std, batch, device)
    renders = val_calib_renders(cfg, tuned, np.asarray(calib.images), mean, std, device)
    calib_inputs = calibration_inputs(cfg, logits, calib.labels, renders, f"{PHASE} VAL_CALIB")
    calibrator, policy = fit_threshold_policy(cfg, calib_inputs, weights_sha256, kind="gate")
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
                "processes": distributed.world_size(),
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
    return distributed.hand_back({"gate_checkpoint": checkpoint_meta, "policy": policy_meta}, result_path)
