"""Phase 1's recipe for the training engine (``training.engine``): uint8 cache in, augmentation on the model's
device, selection on VAL_SELECT with early stopping, preemption-safe training state. The same code path runs on
CPU (slowly), on one GPU and on every GPU of a node (DDP; see ``training.distributed``).

Determinism: the sample order of an epoch is a function of (seed, epoch), and so are the JPEG re-compression
draws of each batch (with the batch and process); the rest of augmentation and dropout draw from torch's
generators, whose states are saved with every training-state checkpoint. So a run resumed from any
checkpoint continues exactly as the uninterrupted run would have (bit-identical on CPU with
``training.deterministic``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streetvision.cluster_env import usable_cpus
from streetvision.config.schema import TrainingConfig
from streetvision.devices import resolve_device
from streetvision.metrics.classification import selection_score
from streetvision.models import predict_logits
from streetvision.training import distributed as dist_utils
from streetvision.training.augment import BatchAugment
from streetvision.training.engine import (
    Checkpoints,
    Optimization,
    Plan,
    TrainingDivergedError,
    autocast_dtype,
    cpu_state,
    epoch_batches,
    fit,
    fmt_seconds,
    param_groups,
    warmup_cosine,
)

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"


@dataclass
class TrainResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    images_per_second: float = 0.0
    resumed_from: dict | None = None  # {"epoch", "step_in_epoch"} when this run continued a saved state
    last_state: dict[str, torch.Tensor] | None = None  # weights after the last epoch (the "last" checkpoint)


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
            futures: list[Future | None] = [
                pool.submit(self._load, i) for i in range(min(self.ahead, len(self.batches)))
            ]
            for i, idx in enumerate(self.batches):
                if i + self.ahead < len(self.batches):
                    futures.append(pool.submit(self._load, i + self.ahead))
                future = futures[i]
                assert future is not None
                yield idx, future.result()
                futures[i] = None  # free the batch


class Trainer:
    """The phase-1 step: augmentation on the model's device, class-weighted label-smoothed cross entropy, and
    the engine's optimisation (AdamW with layer-wise decay, warm-up + cosine with a frozen-backbone start, EMA,
    clipping, DDP, autocast)."""

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
        self.rank = dist_utils.rank()
        self.amp = autocast_dtype(cfg.precision)
        # The plain module: state dicts, EMA and evaluation use it. Channels-last trains a CNN ~17 % faster on
        # CPU (test_resnet at 64 px, 2 cores); on GPU it is unmeasured (benchmarks/train_throughput.py
        # --channels_last measures it). train_classifier hands the model back in the default layout.
        self.model = model.to(device).to(memory_format=torch.channels_last)
        total = steps_per_epoch * cfg.epochs
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        frozen = cfg.freeze_backbone_epochs * steps_per_epoch

        def schedule(step: int, group: dict) -> float:
            if not group["is_head"] and step < frozen:
                return 0.0  # backbone groups get lr 0 while frozen (AdamW then moves them not at all)
            return warmup_cosine(step, total, warmup)

        self.optimization = Optimization(
            model,
            param_groups(model, cfg.lr, cfg.weight_decay, layer_decay=cfg.layer_decay, split_head=True),
            cfg.lr,
            schedule,
            device,
            grad_clip_norm=cfg.grad_clip_norm,
            ema_decay=cfg.ema_decay,
            amp=self.amp,
            compile=cfg.compile,
        )
        self.augment = BatchAugment(img_size, cfg.augment)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32, device=device)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.optimization.optimizer

    def host_prepare(self, epoch: int, first_batch: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """What the batch readers do to batch `i` of an epoch's batches from `first_batch` on, before the copy to
        the device: JPEG re-compression, drawn from a generator seeded by (seed, epoch, batch, process)."""
        seed, rank = self.cfg.seed, self.rank
        return lambda batch, i: self.augment.recompress(batch, [seed, epoch, first_batch + i, rank])

    def eval_model(self) -> nn.Module:
        """The weights selection and outputs use: the EMA when it is on."""
        return self.optimization.eval_model()

    def step(self, batch_u8: torch.Tensor, target: torch.Tensor, global_weight: float) -> torch.Tensor:
        """One optimizer step on this process's share of a global batch; returns the global batch's loss
        (weighted mean over all processes' samples), still on the device."""
        x = batch_u8.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        with torch.no_grad():
            x = self.augment(x.permute(0, 3, 1, 2).float().div_(255.0))
            x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with self.optimization.autocast():
            logits = self.optimization.net(x)
        # PyTorch's class-weighted, label-smoothed cross entropy, summed here and divided by the class weight
        # of the whole global batch (what its "mean" divides by): with the engine's world-size factor, the
        # same gradient as one process on the whole batch.
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
        self.optimization.update(loss)
        return dist_utils.all_reduce_sum(loss.detach())

    def state(self) -> dict:
        return self.optimization.state_dict()

    def load_state(self, state: dict) -> None:
        self.optimization.load_state_dict(state)


class ClassifierRecipe:
    """Phase 1 for the engine: TRAIN batches (each process reads its share of every global batch), the
    trainer's step, selection on VAL_SELECT."""

    def __init__(
        self,
        trainer: Trainer,
        train_images,
        train_labels: np.ndarray,
        train_ids: list[str],
        select_images,
        select_labels: np.ndarray,
        mean: list[float],
        std: list[float],
        class_weights: np.ndarray,
    ):
        self.trainer, self.cfg, self.mean, self.std = trainer, trainer.cfg, mean, std
        self.train_images, self.train_labels, self.train_ids = train_images, train_labels, train_ids
        self.select_images, self.select_labels = select_images, select_labels
        self.class_weights = class_weights
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.steps_per_epoch = len(self._global_batches(0))

    def _global_batches(self, epoch: int) -> list[np.ndarray]:
        return epoch_batches(len(self.train_labels), self.cfg.seed, epoch, self.cfg.batch_size, self.world)

    def batches(self, epoch: int, first_step: int):
        """(this process's indices, its uint8 batch, the global batch's indices) for each step."""
        batches = self._global_batches(epoch)[first_step:]
        local = [np.sort(b[self.rank :: self.world]) for b in batches]  # sorted reads are faster on a memmap
        pin = self.trainer.device.type == "cuda"
        reader = _Batches(self.train_images, local, pin=pin, prepare=self.trainer.host_prepare(epoch, first_step))
        for gidx, (idx, batch) in zip(batches, reader):
            yield idx, batch, gidx

    def step(self, batch) -> tuple[torch.Tensor, int]:
        idx, images, gidx = batch
        target = torch.from_numpy(self.train_labels[idx])
        loss = self.trainer.step(images, target, float(self.class_weights[self.train_labels[gidx]].sum()))
        return loss, len(gidx)

    def evaluate(self, epoch: int) -> dict[str, float]:
        logits = predict_logits(
            self.trainer.eval_model(),
            self.select_images,
            self.mean,
            self.std,
            batch_size=self.cfg.batch_size * 2,
            device=self.trainer.device,
            autocast_dtype=self.trainer.amp,
        )
        metric = self.cfg.selection_metric
        return {f"val_select_{metric}": selection_score(metric, self.select_labels, logits)}

    def weights(self) -> dict[str, torch.Tensor]:
        return cpu_state(self.trainer.eval_model())

    def describe(self, batch) -> str:
        gidx = batch[2]
        return f"sample ids {[self.train_ids[i] for i in gidx[:8]]}{' ...' if len(gidx) > 8 else ''}"

    def train_mode(self) -> None:
        self.trainer.model.train()

    def last_lr(self) -> float:
        return self.trainer.optimization.last_lr()

    def state_dict(self) -> dict:
        return self.trainer.state()

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state(state)


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
    checkpoints: Checkpoints | None = None,
    device: torch.device | None = None,
) -> TrainResult:
    """Train on TRAIN, pick the best epoch by cfg.selection_metric on VAL_SELECT; leaves the best weights loaded
    into `model`. With `checkpoints`, training state is saved there and a saved state is resumed. `device`:
    where to train (phase 1 passes its task's device, `streetvision.devices.task_device`); None: cfg.device."""
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
    recipe = ClassifierRecipe(
        trainer, train_images, train_labels, train_ids, select_images, select_labels, mean, std, weights
    )

    def log_step(epoch: int, step: int, loss: float, rate: float) -> None:
        left = (steps_per_epoch - step - 1) * cfg.batch_size + (cfg.epochs - epoch - 1) * len(train_labels)
        logger.info(
            f"epoch {epoch + 1}/{cfg.epochs} step {step + 1}/{steps_per_epoch} loss {loss:.4f} {rate:.0f} img/s, "
            f"eta {fmt_seconds(left / max(rate, 1e-9))} (at most, before early stop)"
        )

    plan = Plan(
        phase="phase1",
        epochs=cfg.epochs,
        select=f"val_select_{cfg.selection_metric}",
        patience=cfg.patience,
        save_every_minutes=cfg.checkpoint_every_minutes,
        log_every_seconds=cfg.log_every_seconds,
        log_step=log_step,
        hint="lower training.lr or check those samples, then rerun (with training.resume_dir set the run continues "
        "from that state)",
    )
    result = fit(recipe, plan, checkpoints, device)
    last_state = cpu_state(trainer.eval_model())
    model.to(memory_format=torch.contiguous_format)  # the layout a bundle loads its weights in
    model.load_state_dict(result.best_state if result.best_state is not None else last_state)
    return TrainResult(
        best_epoch=result.best_epoch,
        best_score=float(result.best_score),
        epochs_run=result.epochs_run,
        history=result.history,
        images_per_second=result.images_per_second,
        resumed_from=result.resumed_from,
        last_state=last_state,
    )


__all__ = [
    "ClassifierRecipe",
    "Trainer",
    "TrainResult",
    "TrainingDivergedError",
    "autocast_dtype",
    "epoch_batches",
    "train_classifier",
]
