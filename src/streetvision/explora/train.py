"""The ExPLoRA training loop: student (adapted backbone + fresh heads) and EMA teacher, multi-crop views,
DINO + iBOT + KoLeo, with an atomic checkpoint that a retried (preempted) task resumes from.

Determinism makes the resume exact: each step draws its batch from `numpy.random.default_rng([seed, step])`
and reseeds torch with (seed, step), so a resumed run repeats the same steps an uninterrupted one takes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streetvision.config.schema import ExploraConfig
from streetvision.contracts.errors import CheckpointError, ContractError
from streetvision.contracts.metadata import atomic_write
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
from streetvision.progress import log

CHECKPOINT_FILE = "explora_state.pt"


class SSLDivergedError(ContractError):
    """The self-supervised loss became NaN or infinite."""


class Student(nn.Module):
    """What the student trains: the adapted backbone, the projection head and iBOT's mask token."""

    def __init__(self, backbone: nn.Module, embed_dim: int, cfg: ExploraConfig):
        super().__init__()
        self.backbone = backbone  # a PEFT model around a timm ViT
        self.head = ProjectionHead(embed_dim, cfg.prototypes, cfg.hidden_dim, cfg.bottleneck_dim)
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))

    @property
    def vit(self) -> nn.Module:
        return self.backbone.base_model.model  # the timm model, with PEFT's layers injected

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None):
        cls, patches = vit_tokens(self.vit, images, masks, self.mask_token)
        return cls, patches


@dataclass
class ImagePool:
    """uint8 NHWC arrays (TRAIN memmap, decoded pool) sampled as one set without copying them together."""

    arrays: list[np.ndarray]
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


def _cosine(step: int, total: int, start: float, end: float) -> float:
    progress = min(1.0, step / max(1, total))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedules(cfg: ExploraConfig, step: int) -> dict[str, float]:
    """Learning rate (linear warm-up, cosine to min_lr), teacher EMA momentum (cosine to 1), teacher temperature
    (linear warm-up)."""
    if step < cfg.warmup_steps:
        lr = cfg.lr * (step + 1) / cfg.warmup_steps
    else:
        lr = _cosine(step - cfg.warmup_steps, cfg.steps - cfg.warmup_steps, cfg.lr, cfg.min_lr)
    if step < cfg.teacher_temp_warmup_steps:
        temp = (
            cfg.teacher_temp_start + (cfg.teacher_temp - cfg.teacher_temp_start) * step / cfg.teacher_temp_warmup_steps
        )
    else:
        temp = cfg.teacher_temp
    return {"lr": lr, "momentum": _cosine(step, cfg.steps, cfg.ema_momentum, 1.0), "teacher_temp": temp}


def local_crop_size(cfg: ExploraConfig, img_size: int, patch_size: int) -> int:
    size = cfg.local_crop_size or max(patch_size, (img_size * 7 // 16) // patch_size * patch_size)
    if size % patch_size or size > img_size:
        raise ContractError(
            f"explora.local_crop_size={size} is not a multiple of the patch size {patch_size} at most "
            f"model.img_size={img_size}",
            "explora config",
            f"use a multiple of {patch_size} (or 0 for 7/16 of the image size)",
        )
    return size


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        # No decay on norms, biases, tokens and LoRA's DoRA magnitudes (standard ViT practice).
        (no_decay if param.ndim <= 1 or name.endswith(("bias", "mask_token")) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ExploraTrainer:
    """One student, its EMA teacher, the optimiser and the centres; `step()` is one optimisation step."""

    def __init__(
        self,
        peft_backbone: nn.Module,
        cfg: ExploraConfig,
        img_size: int,
        mean: list[float],
        std: list[float],
        device: torch.device,
        amp_dtype: torch.dtype | None,
    ):
        self.cfg, self.device, self.amp_dtype = cfg, device, amp_dtype
        vit = peft_backbone.base_model.model
        torch.manual_seed(cfg.seed)  # fresh heads: same init on every attempt
        self.student = Student(peft_backbone, vit.embed_dim, cfg).to(device)
        self.teacher = copy.deepcopy(self.student).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.trained_names = [n for n, p in self.student.named_parameters() if p.requires_grad]
        self.patch_size = vit.patch_embed.patch_size[0]
        self.local_size = local_crop_size(cfg, img_size, self.patch_size)
        self.global_aug, self.local_aug = (
            m.to(device)
            for m in build_multicrop(
                img_size, self.local_size, tuple(cfg.global_crop_scale), tuple(cfg.local_crop_scale)
            )
        )
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.optimizer = torch.optim.AdamW(_param_groups(self.student, cfg.weight_decay), lr=cfg.lr)
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
        for group in self.optimizer.param_groups:
            group["lr"] = sched["lr"]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step_index)
        torch.manual_seed(cfg.seed * 1_000_003 + self.step_index)  # kornia draws from the global generator

        x = torch.from_numpy(batch_uint8).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        batch = x.shape[0]
        with torch.no_grad():
            globals_ = [self._normalize(self.global_aug(x)) for _ in range(2)]
            locals_ = [self._normalize(self.local_aug(x)) for _ in range(cfg.local_crops)]
        masks = None
        if cfg.ibot:
            masks = random_patch_masks(
                2 * batch, self.num_patches, tuple(cfg.ibot_mask_ratio), cfg.ibot_mask_probability, gen
            ).to(device)
        global_batch = torch.cat(globals_)

        amp = dict(device_type=device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        with torch.no_grad(), torch.autocast(**amp):
            t_cls, t_patches = self.teacher(global_batch)
            t_cls_logits = self.teacher.head(t_cls)
            teacher_probs = teacher_probabilities(t_cls_logits, self.dino_center, sched["teacher_temp"]).chunk(2)
            if cfg.ibot:
                t_patch_logits = self.teacher.head(t_patches)
                teacher_patch_probs = teacher_probabilities(t_patch_logits, self.ibot_center, sched["teacher_temp"])

        with torch.autocast(**amp):
            s_cls, s_patches = self.student(global_batch, masks)
            student_logits = list(self.student.head(s_cls).chunk(2))
            if locals_:
                l_cls, _ = self.student(torch.cat(locals_))
                student_logits += list(self.student.head(l_cls).chunk(cfg.local_crops))
            losses = {"dino": dino_loss(student_logits, list(teacher_probs), cfg.student_temp)}
            if cfg.ibot:
                losses["ibot"] = ibot_loss(self.student.head(s_patches), teacher_patch_probs, masks, cfg.student_temp)
            if cfg.koleo:
                losses["koleo"] = sum(koleo_loss(c) for c in s_cls.chunk(2)) / 2
        total = losses["dino"] + cfg.ibot_weight * losses.get("ibot", 0.0) + cfg.koleo_weight * losses.get("koleo", 0.0)
        if not torch.isfinite(total):
            raise SSLDivergedError(
                f"SSL loss is {total.item()} at step {self.step_index}",
                "phase4",
                "lower explora.lr, keep training.precision fp32 or bf16, or raise explora.teacher_temp_warmup_steps; "
                "the run resumes from its last checkpoint",
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip_norm > 0:
            nn.utils.clip_grad_norm_([p for p in self.student.parameters() if p.requires_grad], cfg.grad_clip_norm)
        self.optimizer.step()
        self._ema(sched["momentum"])
        self.dino_center = update_center(self.dino_center, t_cls_logits, cfg.center_momentum)
        if cfg.ibot:
            self.ibot_center = (
                update_center(self.ibot_center, t_patch_logits[masks], cfg.center_momentum)
                if masks.any()
                else self.ibot_center
            )
        record = {"step": self.step_index, "loss": total.item(), **{k: v.item() for k, v in losses.items()}, **sched}
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
    def state(self, fingerprint: str) -> dict:
        student = dict(self.student.named_parameters())
        teacher = dict(self.teacher.named_parameters())
        return {
            "fingerprint": fingerprint,
            "step": self.step_index,
            "student": {n: student[n].detach().cpu() for n in self.trained_names},
            "teacher": {n: teacher[n].detach().cpu() for n in self.trained_names},
            "optimizer": self.optimizer.state_dict(),
            "dino_center": self.dino_center.cpu(),
            "ibot_center": self.ibot_center.cpu(),
            "history": json.dumps(self.history),
        }

    @torch.no_grad()
    def load_state(self, state: dict) -> None:
        student = dict(self.student.named_parameters())
        teacher = dict(self.teacher.named_parameters())
        for name in self.trained_names:
            student[name].copy_(state["student"][name])
            teacher[name].copy_(state["teacher"][name])
        self.optimizer.load_state_dict(state["optimizer"])
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


def save_checkpoint(state: dict, directory: Path) -> Path:
    """Atomic: write a temporary file, then rename over the previous checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_FILE
    atomic_write(target, lambda tmp: torch.save(state, tmp))
    return target


def load_checkpoint(directory: Path, fingerprint: str) -> dict | None:
    """The saved state when it belongs to this run (same config, model and data), else None."""
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: say so, never resume from it
        raise CheckpointError(
            f"phase-4 checkpoint {path} is unreadable: {exc}", "phase4 resume", f"delete {path} to start phase 4 afresh"
        ) from exc
    if state.get("fingerprint") != fingerprint:
        log(f"checkpoint {path} belongs to another config or dataset; starting phase 4 afresh")
        return None
    return state


def train_ssl(trainer: ExploraTrainer, pool: ImagePool, checkpoint_dir: Path | None, fingerprint: str) -> dict:
    """Run the remaining steps; checkpoint every `checkpoint_every` steps. Returns throughput numbers."""
    cfg = trainer.cfg
    if checkpoint_dir is not None:
        state = load_checkpoint(checkpoint_dir, fingerprint)
        if state is not None:
            trainer.load_state(state)
            log(f"resumed phase 4 from {checkpoint_dir / CHECKPOINT_FILE} at step {trainer.step_index}/{cfg.steps}")
    trainer.student.train()
    seen, seconds = 0, 0.0
    window_images, window_start = 0, time.perf_counter()
    while trainer.step_index < cfg.steps:
        step = trainer.step_index
        rng = np.random.default_rng([cfg.seed, step])
        idx = rng.choice(len(pool), size=cfg.batch_size, replace=len(pool) < cfg.batch_size)
        started = time.perf_counter()
        record = ssl_step(trainer, pool.gather(idx))
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - started
        seen += cfg.batch_size
        window_images += cfg.batch_size
        done = trainer.step_index
        if done % cfg.log_every == 0 or done == cfg.steps:
            rate = window_images / max(time.perf_counter() - window_start, 1e-9)
            parts = " ".join(f"{k} {record[k]:.4f}" for k in ("dino", "ibot", "koleo") if k in record)
            log(
                f"phase4 step {done}/{cfg.steps} loss {record['loss']:.4f} ({parts}) lr {record['lr']:.2e} "
                f"{rate:.1f} images/s"
            )
            window_images, window_start = 0, time.perf_counter()
        if checkpoint_dir is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            save_checkpoint(trainer.state(fingerprint), checkpoint_dir)
    return {"images_per_second": seen / seconds if seconds else None, "images_seen_this_attempt": seen}


def ssl_step(trainer: ExploraTrainer, batch: np.ndarray) -> dict:
    """One step (a module-level seam so tests can interrupt training between steps)."""
    return trainer.step(batch)
