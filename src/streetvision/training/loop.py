"""The supervised training loop of phase 1: uint8 cache in, augmentation on the model's device, selection on
VAL_SELECT with early stopping, preemption-safe training state. The same code path runs on CPU (slowly), on
one GPU and on every GPU of a node (DDP; see ``training.distributed``).

Determinism: the sample order of an epoch is a function of (seed, epoch), and so are the JPEG re-compression
draws of each batch (with the batch and process); the rest of augmentation and dropout draw from torch's
generators, whose states are saved with every training-state checkpoint. So a run resumed from any
checkpoint continues exactly as the uninterrupted run would have (bit-identical on CPU with
``training.deterministic``).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streetvision.cluster_env import usable_cpus
from streetvision.config.schema import TrainingConfig
from streetvision.contracts.errors import ContractError
from streetvision.devices import resolve_device
from streetvision.metrics.classification import selection_score
from streetvision.models import predict_logits
from streetvision.progress import log
from streetvision.training import distributed as dist_utils
from streetvision.training.augment import BatchAugment
from streetvision.training.storage import Store

STATE_FILE = "train_state.pt"


class TrainingDivergedError(ContractError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    images_per_second: float = 0.0
    resumed_from: dict | None = None  # {"epoch", "step_in_epoch"} when this run continued a saved state
    last_state: dict[str, torch.Tensor] | None = None  # weights after the last epoch (the "last" checkpoint)


def autocast_dtype(precision: str) -> torch.dtype | None:
    if precision == "fp16":  # also refused by the config check; kept for callers that build configs in code
        raise ContractError(
            "training.precision=fp16 is refused",
            "phase1",
            "DINOv2 activations overflow fp16 (no loss scaling here); use bf16 on GPU or fp32",
        )
    return torch.bfloat16 if precision == "bf16" else None


def param_groups(model: nn.Module, cfg: TrainingConfig) -> list[dict]:
    """timm's layer-wise-decay groups (no weight decay on norms, biases, tokens, position embeddings), each
    split into head and backbone parts so the backbone can be frozen for a warm start."""
    from timm.optim._param_groups import param_groups_layer_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_layer_decay(model, cfg.weight_decay, no_weight_decay_list=skip, layer_decay=cfg.layer_decay)
    head = {id(p) for p in model.get_classifier().parameters()}
    out = []
    for group in groups:
        for is_head in (False, True):
            params = [p for p in group["params"] if (id(p) in head) == is_head]
            if params:
                scale = group.get("lr_scale", 1.0)
                out.append(
                    {
                        "params": params,
                        "weight_decay": group["weight_decay"],
                        "lr": cfg.lr * scale,
                        "lr_scale": scale,
                        "is_head": is_head,
                    }
                )
    return out


def _schedule(total_steps: int, warmup_steps: int, frozen_steps: int, is_head: bool) -> Callable[[int], float]:
    """Warmup + cosine; backbone groups get lr 0 while frozen (AdamW then moves them not at all)."""

    def factor(step: int) -> float:
        if not is_head and step < frozen_steps:
            return 0.0
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class _Batches:
    """Reads the uint8 batches of one epoch ahead of the training step in background threads (numpy's fancy
    indexing of the memory-mapped cache and the JPEG codec release the GIL), applies `prepare(batch, i)` (the
    host side of augmentation) and pins them for an asynchronous copy on GPU."""

    def __init__(
        self,
        images,
        index_batches: list[np.ndarray],
        pin: bool,
        prepare: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        ahead: int | None = None,
    ):
        self.images, self.batches, self.pin, self.prepare = images, index_batches, pin, prepare
        # One reader per batch in flight. Compiled ViT-S/14 on an H200 with jpeg_p 0.3 asks for about 1,900 JPEG
        # round trips/s at 224 px, some 3 cores' worth; the processes of a node share its cores.
        self.ahead = ahead or min(8, max(2, usable_cpus() // dist_utils.world_size()))

    def _load(self, i: int) -> torch.Tensor:
        batch = torch.from_numpy(np.ascontiguousarray(self.images[self.batches[i]]))
        if self.prepare is not None:
            batch = self.prepare(batch, i)
        return batch.pin_memory() if self.pin else batch

    def __iter__(self):
        with ThreadPoolExecutor(max_workers=self.ahead) as pool:
            futures = [pool.submit(self._load, i) for i in range(min(self.ahead, len(self.batches)))]
            for i, idx in enumerate(self.batches):
                if i + self.ahead < len(self.batches):
                    futures.append(pool.submit(self._load, i + self.ahead))
                yield idx, futures[i].result()
                futures[i] = None  # free the batch


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Trainer:
    """One training run: model, optimizer, schedule, EMA, augmentation; steps over the uint8 cache."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainingConfig,
        img_size: int,
        mean: list[float],
        std: list[float],
        steps_per_epoch: int,
        class_weights: np.ndarray,
        device: torch.device,
    ):
        self.cfg, self.device = cfg, device
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.amp = autocast_dtype(cfg.precision)
        self.model = model.to(device)  # the plain module: state dicts, EMA and evaluation use it
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
        total = steps_per_epoch * cfg.epochs
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        frozen = cfg.freeze_backbone_epochs * steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [_schedule(total, warmup, frozen, g["is_head"]) for g in self.optimizer.param_groups]
        )
        self.ema = None
        if cfg.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        self.net = dist_utils.wrap_ddp(model, device) if self.world > 1 else model
        self.step_fn = torch.compile(self.net) if cfg.compile else self.net
        self.augment = BatchAugment(img_size, cfg.augment)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32, device=device)
        self.class_weights_np = np.asarray(class_weights, dtype=np.float64)

    def host_prepare(self, epoch: int, first_batch: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """What the batch readers do to batch `i` of an epoch's batches from `first_batch` on, before the copy to
        the device: JPEG re-compression, drawn from a generator seeded by (seed, epoch, batch, process)."""
        seed, rank = self.cfg.seed, self.rank
        return lambda batch, i: self.augment.recompress(batch, [seed, epoch, first_batch + i, rank])

    def eval_model(self) -> nn.Module:
        """The weights selection and outputs use: the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.model

    def step(self, batch_u8: torch.Tensor, target: torch.Tensor, global_weight: float) -> torch.Tensor:
        """One optimizer step on this process's share of a global batch; returns the global batch's loss
        (weighted mean over all processes' samples), still on the device."""
        x = batch_u8.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        with torch.no_grad():
            x = self.augment(x.permute(0, 3, 1, 2).float().div_(255.0))
            x = (x - self.mean) / self.std
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits = self.step_fn(x)
        # PyTorch's class-weighted, label-smoothed cross entropy, summed here and divided by the class weight
        # of the whole global batch (what its "mean" divides by); times world size below because DDP averages
        # gradients: the same gradient as one process on the whole batch.
        loss = (
            F.cross_entropy(
                logits.float(),
                target,
                weight=self.class_weights,
                reduction="sum",
                label_smoothing=self.cfg.label_smoothing,
            )
            / global_weight
        )
        self.optimizer.zero_grad(set_to_none=True)
        (loss * self.world).backward()
        if self.cfg.grad_clip_norm > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return dist_utils.all_reduce_sum(loss.detach())

    def state(self) -> dict:
        return {
            "model": _cpu_state(self.model),
            "ema": _cpu_state(self.ema) if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _rng_state(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_train_state(store: Store | None) -> dict | None:
    if store is None or not store.exists(STATE_FILE):
        return None
    return torch.load(str(store.fetch(STATE_FILE)), map_location="cpu", weights_only=False)


def save_train_state(store: Store, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    store.write(STATE_FILE, lambda handle: handle.write(buffer.getbuffer()))


def epoch_batches(n: int, seed: int, epoch: int, batch_size: int, world: int) -> list[np.ndarray]:
    """Global batches of sample indices for one epoch (a function of seed and epoch only). With several
    processes a last batch smaller than the number of processes is dropped (every process needs a sample)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if world > 1 and len(batches[-1]) < world:
        batches.pop()
    return batches


def train_classifier(
    model: nn.Module,
    train_images,
    train_labels: np.ndarray,
    train_ids: list[str],
    select_images,
    select_labels: np.ndarray,
    mean: list[float],
    std: list[float],
    cfg: TrainingConfig,
    store: Store | None = None,
    device: torch.device | None = None,
) -> TrainResult:
    """Train on TRAIN, pick the best epoch by cfg.selection_metric on VAL_SELECT; leaves the best weights loaded
    into `model`. With a `store`, training state is saved there and a saved state is resumed. `device`: where to
    train (phase 1 passes its task's device, `streetvision.devices.task_device`); None: cfg.device."""
    rank, world = dist_utils.rank(), dist_utils.world_size()
    torch.manual_seed(cfg.seed + rank)  # augmentation and dropout differ per process, as they should
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device is None:
        device = resolve_device(cfg.device, dist_utils.local_rank())
    img_size = int(train_images.shape[1])
    counts = np.bincount(train_labels, minlength=2).astype(np.float64)
    weights = counts.sum() / (2.0 * np.maximum(counts, 1.0)) if cfg.balance_classes else np.ones(2)
    steps_per_epoch = len(epoch_batches(len(train_labels), cfg.seed, 0, cfg.batch_size, world))
    trainer = Trainer(model, cfg, img_size, mean, std, steps_per_epoch, weights, device)

    best_score, best_epoch, best_state = -math.inf, -1, None
    history: list[dict] = []
    seen_images, train_seconds = 0, 0.0
    start_epoch, start_step, global_step = 0, 0, 0
    resumed_from = None
    saved = load_train_state(store)
    if saved is not None:
        trainer.load_state(saved["trainer"])
        _set_rng_state(saved["rng"][rank], device)
        best_score, best_epoch, best_state = saved["best_score"], saved["best_epoch"], saved["best_state"]
        history, seen_images, train_seconds = saved["history"], saved["seen_images"], saved["train_seconds"]
        start_epoch, start_step, global_step = saved["epoch"], saved["step_in_epoch"], saved["global_step"]
        resumed_from = {"epoch": start_epoch, "step_in_epoch": start_step, "global_step": global_step}
        if rank == 0:
            log(
                f"resuming from {store.describe(STATE_FILE)}: epoch {start_epoch + 1}, step {start_step} "
                f"of {steps_per_epoch}"
            )
    elif store is not None and rank == 0:
        log(f"training state will be saved to {store.describe(STATE_FILE)}")
    last_good = store.describe(STATE_FILE) if saved is not None else "none yet"

    def save(epoch: int, step_in_epoch: int, epoch_loss: float, epoch_seen: int) -> None:
        nonlocal last_good
        rng = dist_utils.gather_objects(_rng_state(device))  # every process, to resume each exactly
        if store is None or rank != 0:
            return
        save_train_state(
            store,
            {
                "trainer": trainer.state(),
                "rng": rng,
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "best_score": best_score,
                "best_epoch": best_epoch,
                "best_state": best_state,
                "history": history,
                "seen_images": seen_images,
                "train_seconds": train_seconds,
                "epoch_loss": epoch_loss,
                "epoch_seen": epoch_seen,
            },
        )
        last_good = store.describe(STATE_FILE)

    last_save = time.monotonic()
    epoch_loss_carry, epoch_seen_carry = (saved["epoch_loss"], saved["epoch_seen"]) if saved else (0.0, 0)
    epochs_done = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        if epoch - best_epoch > cfg.patience and best_epoch >= 0:
            break  # a resumed state that had already stopped early
        trainer.model.train()
        batches = epoch_batches(len(train_labels), cfg.seed, epoch, cfg.batch_size, world)
        first = start_step if epoch == start_epoch else 0
        local = [np.sort(b[rank::world]) for b in batches[first:]]  # sorted reads are faster on a memmap
        loss_sum, seen = (epoch_loss_carry, epoch_seen_carry) if first else (0.0, 0)
        epoch_start = last_log = time.perf_counter()
        pending = None  # previous step's loss, checked one step late so the GPU queue stays full
        reader = _Batches(train_images, local, pin=device.type == "cuda", prepare=trainer.host_prepare(epoch, first))
        for offset, (idx, batch) in enumerate(reader):
            b = first + offset
            gidx = batches[b]
            target = torch.from_numpy(train_labels[idx])
            loss = trainer.step(batch, target, float(weights[train_labels[gidx]].sum()))
            if pending is not None:
                loss_sum += _checked(pending, last_good, train_ids)
            pending = (loss, epoch, b, gidx)
            seen += len(gidx)
            global_step += 1
            now = time.perf_counter()
            if cfg.log_every_seconds and now - last_log >= cfg.log_every_seconds and rank == 0:
                rate = (seen - (epoch_seen_carry if first else 0)) / (now - epoch_start)
                left = (len(batches) - b - 1) * cfg.batch_size + (cfg.epochs - epoch - 1) * len(train_labels)
                log(
                    f"epoch {epoch + 1}/{cfg.epochs} step {b + 1}/{len(batches)} loss {loss_sum / max(seen, 1):.4f} "
                    f"{rate:.0f} img/s, eta {_fmt_seconds(left / max(rate, 1e-9))} (at most, before early stop)"
                )
                last_log = now
            due = cfg.checkpoint_every_minutes == 0 or time.monotonic() - last_save >= cfg.checkpoint_every_minutes * 60
            if store is not None and b + 1 < len(batches) and dist_utils.agree(due):
                loss_sum += _checked(pending, last_good, train_ids)
                pending = None
                save(epoch, b + 1, loss_sum, seen)
                last_save = time.monotonic()
        if pending is not None:
            loss_sum += _checked(pending, last_good, train_ids)
        seconds = time.perf_counter() - epoch_start
        n_epoch = sum(len(x) for x in batches[first:])
        seen_images += n_epoch
        train_seconds += seconds

        score = selection_score(
            cfg.selection_metric,
            select_labels,
            predict_logits(
                trainer.eval_model(),
                select_images,
                mean,
                std,
                batch_size=cfg.batch_size * 2,
                device=device,
                autocast_dtype=trainer.amp,
            ),
        )
        improved = score > best_score
        if improved:
            best_score, best_epoch = score, epoch
            best_state = _cpu_state(trainer.eval_model())
        epoch_ips = n_epoch / max(seconds, 1e-9)
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / max(seen, 1),
                f"val_select_{cfg.selection_metric}": score,
                "lr": trainer.scheduler.get_last_lr()[-1],
                "images_per_second": epoch_ips,
            }
        )
        if rank == 0:
            eta = _fmt_seconds((cfg.epochs - epoch - 1) * len(train_labels) / max(epoch_ips, 1e-9))
            log(
                f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum / max(seen, 1):.4f} "
                f"VAL_SELECT {cfg.selection_metric} {score:.4f}{' *' if improved else ''} ({epoch_ips:.0f} img/s, "
                f"eta {eta} at most)"
            )
        epochs_done = epoch + 1
        stop = epoch - best_epoch >= cfg.patience
        save(epoch + 1, 0, 0.0, 0)
        last_save = time.monotonic()
        if stop:
            if rank == 0:
                log(f"early stop: no {cfg.selection_metric} gain on VAL_SELECT for {cfg.patience} epochs")
            break
    last_state = _cpu_state(trainer.eval_model())
    if best_state is None:  # nothing trained in this call (the saved state had finished)
        best_state = last_state
    model.load_state_dict(best_state)
    return TrainResult(
        best_epoch=best_epoch,
        best_score=float(best_score),
        epochs_run=len(history) if history else epochs_done,
        history=history,
        images_per_second=seen_images / max(train_seconds, 1e-9),
        resumed_from=resumed_from,
        last_state=last_state,
    )


def _checked(pending: tuple, last_good: str, train_ids: list[str]) -> float:
    """The summed loss of a finished step (weighted mean x batch size); stops the run if it is not finite."""
    loss, epoch, step, gidx = pending
    value = float(loss)
    if not math.isfinite(value):
        raise TrainingDivergedError(
            f"loss is {value} at epoch {epoch + 1}, step {step} of that epoch",
            f"phase1 training batch of sample ids {[train_ids[i] for i in gidx[:8]]}{' ...' if len(gidx) > 8 else ''}",
            f"the last good training state is {last_good}; lower training.lr or check those samples, then rerun "
            "(with training.resume_dir set the run continues from that state)",
        )
    return value * len(gidx)


__all__ = ["Trainer", "TrainResult", "TrainingDivergedError", "autocast_dtype", "epoch_batches", "train_classifier"]
