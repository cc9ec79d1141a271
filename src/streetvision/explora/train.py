"""The ExPLoRA recipe: student (adapted backbone + fresh heads) and EMA teacher, multi-crop views, DINO + iBOT +
KoLeo. The training engine (`streetvision.training.engine`) runs it, with an atomic checkpoint (a local/PVC
folder or a gs:// prefix) that a retried (preempted) task resumes from.

Determinism makes the resume exact: each step draws its batch from `numpy.random.default_rng([seed, step])`
and reseeds torch with (seed, step), so a resumed run repeats the same steps an uninterrupted one takes.

With several processes (DDP, `training.num_processes`) every process draws the same global batch and the same
views and masks of it (augmentation is cheap next to the forward and backward passes), then trains on its share
of the images: each loss is that share's part of the global batch's loss, the teacher's centres are updated
with the global batch's mean (all-reduced, as DINOv2 does), and the EMA teacher stays the same everywhere. Only
KoLeo differs from one process: its nearest neighbours are searched within each process's share, as in DINOv2.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from streetvision.config.schema import ExploraConfig
from streetvision.contracts.errors import ConfigError, TrainingDivergedError
from streetvision.explora.objective import (
    ProjectionHead,
    build_multicrop,
    dino_loss,
    ibot_loss,
    koleo_loss,
    random_patch_masks,
    teacher_probabilities,
    update_center,
    vit_tokens,
)
from streetvision.models import ImageRows
from streetvision.training import distributed
from streetvision.training.engine import Checkpoints, Optimization, Plan, fit, param_groups, warmup_cosine

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "explora_state.pt"


class SSLDivergedError(TrainingDivergedError):
    """The self-supervised loss became NaN or infinite."""


def _pair(values: list[float]) -> tuple[float, float]:
    low, high = values  # the config checks there are two
    return low, high


class Student(nn.Module):
    """What the student trains: the adapted backbone, the projection head and iBOT's mask token."""

    def __init__(self, backbone: Any, embed_dim: int, cfg: ExploraConfig):
        super().__init__()
        self.backbone = backbone  # a PEFT model around a timm ViT
        self.head = ProjectionHead(embed_dim, cfg.prototypes, cfg.hidden_dim, cfg.bottleneck_dim)
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))

    @property
    def vit(self) -> Any:
        return self.backbone.base_model.model  # the timm model, with PEFT's layers injected

    def forward(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        local_images: torch.Tensor | None = None,
        patch_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Class tokens of `images` (masked patches replaced by the mask token), their prototype logits, the
        patch tokens' logits (with `masks` or `patch_logits`) and the local views' logits: one call per step,
        so that DDP sees every use of the weights."""
        cls, patches = vit_tokens(self.vit, images, masks, self.mask_token)
        patch_out = self.head(patches) if masks is not None or patch_logits else None
        local_out = self.head(vit_tokens(self.vit, local_images)[0]) if local_images is not None else None
        return cls, self.head(cls), patch_out, local_out


@dataclass
class ImagePool:
    """uint8 NHWC arrays (TRAIN memmap, decoded pool) sampled as one set without copying them together."""

    arrays: list[ImageRows]
    offsets: list[int] = field(init=False)

    def __post_init__(self):
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def gather(self, idx: np.ndarray) -> np.ndarray:
        out = []
        for array, start, stop in zip(self.arrays, self.offsets[:-1], self.offsets[1:]):
            local = np.sort(idx[(idx >= start) & (idx < stop)] - start)
            if len(local):
                out.append(np.ascontiguousarray(array[local]))
        return np.concatenate(out)


def schedules(cfg: ExploraConfig, step: int) -> dict[str, float]:
    """Learning rate (linear warm-up, cosine to min_lr), teacher EMA momentum (cosine to 1), teacher temperature
    (linear warm-up)."""
    if step < cfg.teacher_temp_warmup_steps:
        temp = (
            cfg.teacher_temp_start + (cfg.teacher_temp - cfg.teacher_temp_start) * step / cfg.teacher_temp_warmup_steps
        )
    else:
        temp = cfg.teacher_temp
    return {
        "lr": warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr),
        "momentum": warmup_cosine(step, cfg.steps, 0, cfg.ema_momentum, 1.0),
        "teacher_temp": temp,
    }


def local_crop_size(cfg: ExploraConfig, img_size: int, patch_size: int) -> int:
    size = cfg.local_crop_size or max(patch_size, (img_size * 7 // 16) // patch_size * patch_size)
    if size % patch_size or size > img_size:
        raise ConfigError(
            f"explora.local_crop_size={size} is not a multiple of the patch size {patch_size} at most "
            f"model.img_size={img_size}",
            "explora config",
            f"use a multiple of {patch_size} (or 0 for 7/16 of the image size)",
        )
    return size


class ExploraTrainer:
    """One student, its EMA teacher, the optimiser and the centres; `step()` is one optimisation step."""

    def __init__(
        self,
        peft_backbone: Any,
        cfg: ExploraConfig,
        img_size: int,
        mean: list[float],
        std: list[float],
        device: torch.device,
        amp_dtype: torch.dtype | None,
    ):
        self.cfg, self.device, self.amp_dtype = cfg, device, amp_dtype
        vit: Any = peft_backbone.base_model.model
        torch.manual_seed(cfg.seed)  # fresh heads: same init on every attempt
        self.student = Student(peft_backbone, vit.embed_dim, cfg).to(device)
        if not cfg.ibot:
            self.student.mask_token.requires_grad_(False)  # unused: DDP needs every trained weight in the loss
        self.teacher = copy.deepcopy(self.student).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.trained_names = [n for n, p in self.student.named_parameters() if p.requires_grad]
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.local_size = local_crop_size(cfg, img_size, self.patch_size)
        self.global_aug, self.local_aug = (
            m.to(device)
            for m in build_multicrop(
                img_size, self.local_size, _pair(cfg.global_crop_scale), _pair(cfg.local_crop_scale)
            )
        )
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        # The engine's optimisation: AdamW without decay on norms, biases and tokens, the lr schedule, clipping
        # and autocast. The teacher is the DINO EMA (momentum-scheduled, below), not the engine's weight EMA.
        self.optimization = Optimization(
            self.student,
            param_groups(self.student, cfg.lr, cfg.weight_decay),
            cfg.lr,
            lambda step, group: schedules(cfg, step)["lr"] / cfg.lr,
            device,
            grad_clip_norm=cfg.grad_clip_norm,
            amp=amp_dtype,
        )
        self.optimizer = self.optimization.optimizer
        self.dino_center = torch.zeros(cfg.prototypes, device=device)
        self.ibot_center = torch.zeros(cfg.prototypes, device=device)
        self.num_patches = (img_size // self.patch_size) ** 2
        self.step_index = 0
        self.history: list[dict] = []

    # -- one step ---------------------------------------------------------------------------------------
    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def step(self, batch_uint8: np.ndarray) -> dict[str, float]:
        cfg, device = self.cfg, self.device
        sched = schedules(cfg, self.step_index)
        sched["lr"] = self.optimizer.param_groups[0]["lr"]  # what the optimizer uses at this step
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step_index)
        torch.manual_seed(cfg.seed * 1_000_003 + self.step_index)  # kornia draws from the global generator

        x = torch.from_numpy(batch_uint8).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        batch = x.shape[0]
        # The views and masks of the whole global batch (the same on every process), then this process's share.
        with torch.no_grad():
            globals_ = [self._normalize(self.global_aug(x)) for _ in range(2)]
            locals_ = [self._normalize(self.local_aug(x)) for _ in range(cfg.local_crops)]
        all_masks = None
        if cfg.ibot:
            all_masks = random_patch_masks(
                2 * batch, self.num_patches, _pair(cfg.ibot_mask_ratio), cfg.ibot_mask_probability, gen
            ).to(device)
        share = torch.arange(self.rank, batch, self.world, device=device)
        weight = len(share) / batch  # this share's part of a mean over the global batch
        global_batch = torch.cat([view[share] for view in globals_])
        local_batch = torch.cat([view[share] for view in locals_]) if locals_ else None
        masks = all_masks.view(2, batch, -1)[:, share].flatten(0, 1) if all_masks is not None else None

        with torch.no_grad(), self.optimization.autocast():
            _, t_cls_logits, t_patch_logits, _ = self.teacher(global_batch, patch_logits=cfg.ibot)
            teacher_probs = teacher_probabilities(t_cls_logits, self.dino_center, sched["teacher_temp"]).chunk(2)
            if t_patch_logits is not None:
                teacher_patch_probs = teacher_probabilities(t_patch_logits, self.ibot_center, sched["teacher_temp"])

        with self.optimization.autocast():
            s_cls, s_cls_logits, s_patch_logits, s_local_logits = self.optimization.net(
                global_batch, masks, local_batch
            )
            student_logits = list(s_cls_logits.chunk(2))
            if s_local_logits is not None:
                student_logits += list(s_local_logits.chunk(cfg.local_crops))
            losses = {"dino": weight * dino_loss(student_logits, list(teacher_probs), cfg.student_temp)}
            if all_masks is not None:
                assert masks is not None and s_patch_logits is not None and t_patch_logits is not None
                masked = float(all_masks.sum())  # iBOT averages over the global batch's masked patches
                losses["ibot"] = ibot_loss(s_patch_logits, teacher_patch_probs, masks, cfg.student_temp, masked)
            if cfg.koleo:
                first, second = s_cls.chunk(2)
                losses["koleo"] = weight * (koleo_loss(first) + koleo_loss(second)) / 2
        total = losses["dino"] + cfg.ibot_weight * losses.get("ibot", 0.0) + cfg.koleo_weight * losses.get("koleo", 0.0)
        # The global batch's losses: the sum of every process's share (the same number on every process).
        shown = distributed.all_reduce_sum(torch.stack([total, *losses.values()]).detach().float())
        if not torch.isfinite(shown[0]):
            raise SSLDivergedError(
                f"SSL loss is {shown[0].item()} at step {self.step_index}",
                "phase4",
                "lower explora.lr, keep training.precision fp32 or bf16, or raise explora.teacher_temp_warmup_steps; "
                "the run resumes from its last checkpoint",
            )
        self.optimization.update(total)
        self._ema(sched["momentum"])
        reduce = distributed.all_reduce_sum
        self.dino_center = update_center(self.dino_center, t_cls_logits, cfg.center_momentum, reduce)
        if all_masks is not None and all_masks.any():
            assert masks is not None and t_patch_logits is not None
            self.ibot_center = update_center(self.ibot_center, t_patch_logits[masks], cfg.center_momentum, reduce)
        values = dict(zip(["loss", *losses], shown.tolist()))
        record = {"step": self.step_index, **values, **sched}
        self.history.append(record)
        self.step_index += 1
        return record

    @torch.no_grad()
    def _ema(self, momentum: float) -> None:
        student = dict(self.student.named_parameters())
        teacher = dict(self.teacher.named_parameters())
        for name in self.trained_names:
            teacher[name].mul_(momentum).add_(student[name].detach(), alpha=1.0 - momentum)

    # -- checkpoint -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Only what training changes: the trained parameters of student and teacher (not the frozen backbone),
        the optimizer and schedule, the centres, the step and the history."""
        student = dict(self.student.named_parameters())
        teacher = dict(self.teacher.named_parameters())
        return {
            "step": self.step_index,
            "student": {n: student[n].detach().cpu() for n in self.trained_names},
            "teacher": {n: teacher[n].detach().cpu() for n in self.trained_names},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.optimization.scheduler.state_dict(),
            "dino_center": self.dino_center.cpu(),
            "ibot_center": self.ibot_center.cpu(),
            "history": json.dumps(self.history),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        student = dict(self.student.named_parameters())
        teacher = dict(self.teacher.named_parameters())
        for name in self.trained_names:
            student[name].copy_(state["student"][name])
            teacher[name].copy_(state["teacher"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.optimization.scheduler.load_state_dict(state["scheduler"])
        self.dino_center = state["dino_center"].to(self.device)
        self.ibot_center = state["ibot_center"].to(self.device)
        self.step_index = int(state["step"])
        self.history = json.loads(state["history"])


def run_fingerprint(cfg: ExploraConfig, model_spec: dict, data_fingerprint: str) -> str:
    """What a checkpoint must match to be resumed: the phase-4 config, the architecture and the data."""
    payload = json.dumps(
        {"explora": cfg.model_dump(), "model": model_spec, "data": data_fingerprint}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def checkpoints(root: str | Path, fingerprint: str) -> Checkpoints:
    """Phase 4's training state under `root` (a local/PVC folder or gs://bucket/prefix)."""
    return Checkpoints(str(root), CHECKPOINT_FILE, "phase4 checkpoint", fingerprint)


def load_checkpoint(root: str | Path, fingerprint: str) -> dict | None:
    """The saved state when it belongs to this run (same config, model and data), else None."""
    return checkpoints(root, fingerprint).load()


class SSLRecipe:
    """Phase 4 for the engine: one "epoch" of `explora.steps` steps, each drawing its batch from
    `numpy.random.default_rng([seed, step])`; no selection (the probes score the result afterwards)."""

    def __init__(self, trainer: ExploraTrainer, pool: ImagePool):
        self.trainer, self.pool, self.cfg = trainer, pool, trainer.cfg
        self.steps_per_epoch = self.cfg.steps
        self.images_seen = 0
        self._window_images, self._window_start = 0, time.perf_counter()

    def batches(self, epoch: int, first_step: int):
        for step in range(first_step, self.cfg.steps):
            rng = np.random.default_rng([self.cfg.seed, step])
            yield self.pool.gather(
                rng.choice(len(self.pool), size=self.cfg.batch_size, replace=len(self.pool) < self.cfg.batch_size)
            )

    def step(self, batch: np.ndarray) -> tuple[torch.Tensor, int]:
        cfg = self.cfg
        record = ssl_step(self.trainer, batch)
        self.images_seen += len(batch)
        self._window_images += len(batch)
        done = self.trainer.step_index
        if (done % cfg.log_every == 0 or done == cfg.steps) and self.trainer.rank == 0:
            rate = self._window_images / max(time.perf_counter() - self._window_start, 1e-9)
            parts = " ".join(f"{k} {record[k]:.4f}" for k in ("dino", "ibot", "koleo") if k in record)
            logger.info(
                f"phase4 step {done}/{cfg.steps} loss {record['loss']:.4f} ({parts}) lr {record['lr']:.2e} "
                f"{rate:.1f} images/s"
            )
            self._window_images, self._window_start = 0, time.perf_counter()
        return torch.tensor(record["loss"]), len(batch)

    def evaluate(self, epoch: int) -> dict[str, float]:
        return {}

    def weights(self) -> dict[str, torch.Tensor]:
        return {}

    def describe(self, batch) -> str:
        return f"{len(batch)} sampled images at step {self.trainer.step_index}"

    def train_mode(self) -> None:
        self.trainer.student.train()

    def last_lr(self) -> float:
        return self.trainer.optimization.last_lr()

    def state_dict(self) -> dict:
        return self.trainer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state)


def train_ssl(trainer: ExploraTrainer, pool: ImagePool, checkpoint_root: str | Path | None, fingerprint: str) -> dict:
    """Run the remaining steps with the training engine, saving every `explora.checkpoint_every` steps and at
    the end under `checkpoint_root` (local/PVC or gs://), resuming a saved state of the same run. Returns
    throughput numbers."""
    cfg = trainer.cfg
    recipe = SSLRecipe(trainer, pool)
    plan = Plan(
        phase="phase4",
        epochs=1,
        save_every_steps=cfg.checkpoint_every,
        hint="lower explora.lr, keep training.precision fp32 or bf16, or raise explora.teacher_temp_warmup_steps",
    )
    store = checkpoints(checkpoint_root, fingerprint) if checkpoint_root else None
    result = fit(recipe, plan, store, trainer.device)
    seen = recipe.images_seen
    return {"images_per_second": result.images_per_second if seen else None, "images_seen_this_attempt": seen}


def ssl_step(trainer: ExploraTrainer, batch: np.ndarray) -> dict:
    """One step (a module-level seam so tests can interrupt training between steps)."""
    return trainer.step(batch)
