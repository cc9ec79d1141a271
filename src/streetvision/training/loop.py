"""The supervised training loop of phase 1: uint8 cache in, augmentation on the model's device, selection on
VAL_SELECT with early stopping. The same code path runs on CPU (slowly) and on GPU."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from streetvision.config.schema import TrainingConfig
from streetvision.contracts.errors import ContractError
from streetvision.metrics.classification import selection_score
from streetvision.models import predict_logits
from streetvision.progress import log


class TrainingDivergedError(ContractError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    images_per_second: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ContractError(
            "training.device=cuda but no CUDA device is visible",
            "phase1",
            "set training.device=auto (or cpu), or run on a GPU node",
        )
    return torch.device(name)


def autocast_dtype(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if precision == "bf16" else None


def build_augmentation(img_size: int) -> nn.Module:
    """Per-sample random augmentation applied to whole batches on the model's device (kornia)."""
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.RandomHorizontalFlip(),
        K.RandomResizedCrop((img_size, img_size), scale=(0.6, 1.0), ratio=(0.8, 1.25)),
        K.ColorJitter(0.2, 0.2, 0.2, 0.02, p=0.5),
    )


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # No weight decay on norms, biases, position embeddings and tokens (standard ViT practice).
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith((".bias", "pos_embed", "cls_token", "reg_token")):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_classifier(
    model: nn.Module,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    train_ids: list[str],
    select_images: np.ndarray,
    select_labels: np.ndarray,
    mean: list[float],
    std: list[float],
    cfg: TrainingConfig,
) -> TrainResult:
    """Train on TRAIN, pick the best epoch by cfg.selection_metric on VAL_SELECT; leaves the best weights loaded."""
    torch.manual_seed(cfg.seed)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    amp = autocast_dtype(cfg.precision)
    model.to(device)
    augment = build_augmentation(train_images.shape[1]).to(device)
    mean_t = torch.tensor(mean, device=device)
    std_t = torch.tensor(std, device=device)

    counts = np.bincount(train_labels, minlength=2).astype(np.float64)
    weights = counts.sum() / (2.0 * np.maximum(counts, 1.0)) if cfg.balance_classes else np.ones(2)
    criterion = nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float32, device=device), label_smoothing=cfg.label_smoothing
    )
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train_labels) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(total, int(cfg.warmup_epochs * steps_per_epoch))
    )

    best_score, best_epoch, best_state = -math.inf, -1, None
    history: list[dict] = []
    seen_images, train_seconds = 0, 0.0
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_labels))
        epoch_start = time.perf_counter()
        loss_sum = 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = np.sort(order[start : start + cfg.batch_size])  # sorted reads are faster on a memmap
            batch = torch.from_numpy(np.ascontiguousarray(train_images[idx])).to(device, non_blocking=True)
            target = torch.from_numpy(train_labels[idx]).to(device)
            with torch.no_grad():
                x = augment(batch.permute(0, 3, 1, 2).float().div_(255.0))
                x = (x - mean_t.view(1, 3, 1, 1)) / std_t.view(1, 3, 1, 1)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = criterion(model(x).float(), target)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"loss is {loss.item()} at epoch {epoch}, step {step}",
                    f"phase1 batch of sample ids {[train_ids[i] for i in idx[:5]]} ...",
                    "lower training.lr, keep training.precision=fp32/bf16, and check those samples; "
                    f"the last good weights are from epoch {best_epoch}",
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
            step += 1
        seconds = time.perf_counter() - epoch_start
        seen_images += len(order)
        train_seconds += seconds

        logits = predict_logits(model, select_images, mean, std, batch_size=cfg.batch_size * 2, device=device,
                                autocast_dtype=amp)
        score = selection_score(cfg.selection_metric, select_labels, logits)
        improved = score > best_score
        if improved:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / len(order),
                f"val_select_{cfg.selection_metric}": score,
                "lr": scheduler.get_last_lr()[0],
                "images_per_second": len(order) / seconds,
            }
        )
        log(
            f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum / len(order):.4f} "
            f"VAL_SELECT {cfg.selection_metric} {score:.4f}{' *' if improved else ''} "
            f"({len(order) / seconds:.0f} img/s)"
        )
        if epoch - best_epoch >= cfg.patience:
            log(f"early stop: no {cfg.selection_metric} gain on VAL_SELECT for {cfg.patience} epochs")
            break
    model.load_state_dict(best_state)
    return TrainResult(
        best_epoch=best_epoch,
        best_score=float(best_score),
        epochs_run=len(history),
        history=history,
        images_per_second=seen_images / max(train_seconds, 1e-9),
    )


__all__ = ["TrainResult", "TrainingDivergedError", "resolve_device", "train_classifier"]
