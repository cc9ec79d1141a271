"""The one training loop of every phase that trains (phase 1's classifier, phase 3's Gatekeeper tuning, phase 4's
ExPLoRA), in the torchtune spirit: the loop is a plain function, `fit`, and each phase brings a recipe object
(what one step and one evaluation mean for it, and its own state) built by composition from the parts here:

- `warmup_cosine`: the learning-rate schedule (linear warm-up, then cosine to an end value);
- `param_groups`: the optimizer groups, from timm's public builders (no weight decay on norms, biases,
  tokens; optional layer-wise lr decay; optional head/backbone split for a frozen warm start);
- `Optimization`: AdamW + schedule + gradient clipping + EMA + DDP wrapping + bf16 autocast;
- `Checkpoints`: the training state of a run in a local/PVC folder or under a gs:// prefix (the only IO here).

`fit` owns what every phase needs the same way: epochs and steps, resume from a saved state (the step
counters, the recipe's state and every process's torch generators), saving on a timer or a step count and at
every epoch's end, the divergence check, selection of the best epoch and early stopping.

A recipe provides:

    steps_per_epoch: int
    batches(epoch, first_step) -> iterable of batches (the steps of `epoch` from `first_step` on)
    step(batch) -> (loss tensor of the global batch, still on the device; global number of samples)
    evaluate(epoch) -> dict of metrics (must hold the plan's `select` key when selection is on)
    weights() -> CPU state dict of the weights selection keeps (the EMA when it is on)
    describe(batch) -> str naming the batch's samples (for the divergence error)
    train_mode() -> None (called before each epoch's steps)
    last_lr() -> float (recorded in the history)
    state_dict() / load_state_dict(state)
"""

from __future__ import annotations

import io
import logging
import math
import pickle
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from streetvision import io as storage
from streetvision.contracts.errors import CheckpointError, ConfigError, TrainingDivergedError
from streetvision.contracts.validators import validate_location
from streetvision.training import distributed as dist_utils

logger = logging.getLogger(__name__)

# -- schedule and parameter groups ---------------------------------------------------------------------


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, start: float = 1.0, end: float = 0.0) -> float:
    """Linear warm-up to `start` over `warmup_steps`, then a cosine from `start` to `end` at `total_steps`."""
    if step < warmup_steps:
        return start * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(
    model: Any, lr: float, weight_decay: float, layer_decay: float | None = None, split_head: bool = False
) -> list[dict]:
    """AdamW groups from timm's public builders: no weight decay on 1-d parameters (norms, biases, tokens) nor on
    the model's `no_weight_decay()` names; with `layer_decay`, layer-wise lr scales (`lr_scale`). With
    `split_head` each group is split into head and backbone parts (`is_head`), so the backbone can be frozen
    for a warm start. Parameters that do not require gradients are left out."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    if layer_decay is None:
        groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    else:
        groups = param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    head = {id(p) for p in model.get_classifier().parameters()} if split_head else set()
    out = []
    for group in groups:
        for is_head in (False, True) if split_head else (False,):
            params = [p for p in group["params"] if (id(p) in head) == is_head]
            if params:
                scale = group.get("lr_scale", 1.0)
                out.append(
                    {
                        "params": params,
                        "weight_decay": group["weight_decay"],
                        "lr": lr * scale,
                        "lr_scale": scale,
                        "is_head": is_head,
                    }
                )
    return out


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def autocast_dtype(precision: str) -> torch.dtype | None:
    if precision == "fp16":  # also refused by the config check; kept for callers that build configs in code
        raise ConfigError(
            "training.precision=fp16 is refused",
            "training",
            "DINOv2 activations overflow fp16 (no loss scaling here); use bf16 on GPU or fp32",
        )
    return torch.bfloat16 if precision == "bf16" else None


def epoch_batches(n: int, seed: int, epoch: int, batch_size: int, world: int) -> list[np.ndarray]:
    """Global batches of sample indices for one epoch (a function of seed and epoch only, so a resumed run
    repeats the order). With several processes a last batch smaller than the number of processes is dropped
    (every process needs a sample)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if world > 1 and len(batches[-1]) < world:
        batches.pop()
    return batches


# -- one optimisation step -----------------------------------------------------------------------------


class Optimization:
    """What turns a loss into an update, the same for every phase: AdamW over `groups`, a per-group lr factor
    `schedule(step, group)` (LambdaLR), gradient clipping, an EMA of the weights, DDP wrapping when the run
    has several processes, torch.compile on request, and bf16 autocast for the forward pass."""

    def __init__(
        self,
        model: nn.Module,
        groups: list[dict],
        lr: float,
        schedule: Callable[[int, dict], float],
        device: torch.device,
        grad_clip_norm: float = 0.0,
        ema_decay: float = 0.0,
        amp: torch.dtype | None = None,
        compile: bool = False,
    ):
        self.model, self.device, self.amp, self.grad_clip_norm = model, device, amp, grad_clip_norm
        self.world = dist_utils.world_size()
        self.optimizer = torch.optim.AdamW(groups, lr=lr)

        def for_group(group: dict) -> Callable[[int], float]:
            return lambda step: schedule(step, group)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [for_group(g) for g in self.optimizer.param_groups]
        )
        self.ema = None
        if ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        net = dist_utils.wrap_ddp(model, device) if self.world > 1 else model
        self.net = torch.compile(net) if compile else net  # what forward passes of training steps call

    def autocast(self) -> AbstractContextManager:
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def update(self, loss: torch.Tensor) -> None:
        """Backward, clip, step, schedule, EMA. Times world size because DDP averages gradients: a loss that is
        this process's share of the global batch's mean then gives the gradient of the whole batch."""
        self.optimizer.zero_grad(set_to_none=True)
        (loss * self.world).backward()
        if self.grad_clip_norm > 0:
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def eval_model(self) -> nn.Module:
        """The weights selection and outputs use: the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.model

    def last_lr(self) -> float:
        return float(self.scheduler.get_last_lr()[-1])

    def state_dict(self) -> dict:
        return {
            "model": cpu_state(self.model),
            "ema": cpu_state(self.ema) if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


# -- checkpoints ---------------------------------------------------------------------------------------


def plain_state(value: Any, where: str = "state") -> Any:
    """`value` as what `torch.load(weights_only=True)` reads back: tensors, and dicts/lists/tuples of numbers,
    strings, bools and None (numpy scalars and arrays become Python numbers and tensors). Anything else is
    refused at save time, so a saved state never needs the unrestricted unpickler to load."""
    if isinstance(value, np.generic):  # first: np.float64 is also a float, but pickles as a numpy object
        return value.item()
    if isinstance(value, torch.Tensor) or value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {k: plain_state(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_state(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"{where} is a {type(value).__name__}: training state holds only tensors and plain data")


class Checkpoints:
    """The training state of one run, `name` under `root` (a local/PVC folder or gs://bucket/prefix); written
    atomically. With a `fingerprint`, a saved state of another run (config, model, data) is never resumed.

    The state is loaded with `weights_only=True`: tensors and plain data only. A resume location can be a
    shared bucket, and the unrestricted unpickler runs whatever code a crafted file names."""

    def __init__(self, root: str, name: str, where: str, fingerprint: str | None = None):
        self.store = storage.Store(validate_location(str(root), where))
        self.name, self.where, self.fingerprint = name, where, fingerprint

    def describe(self) -> str:
        return self.store.describe(self.name)

    def load(self) -> dict | None:
        if not self.store.exists(self.name):
            return None
        try:
            state = torch.load(io.BytesIO(self.store.read(self.name)), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # weights_only refused an object: never run a file's code
            # torch's message ends by suggesting weights_only=False; keep only what was refused.
            detail = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), str(exc))
            raise CheckpointError(
                f"training state {self.describe()} holds objects other than tensors and plain data, which are "
                f"refused because loading them could run code ({detail})",
                f"{self.where} resume",
                f"delete {self.describe()} to start afresh (a state this version saved never holds such objects)",
            ) from exc
        except Exception as exc:  # a torn or foreign file: say so, never resume from it
            raise CheckpointError(
                f"training state {self.describe()} is unreadable: {exc}",
                f"{self.where} resume",
                f"delete {self.describe()} to start afresh",
            ) from exc
        if self.fingerprint is not None and state.get("fingerprint") != self.fingerprint:
            logger.info(f"training state {self.describe()} belongs to another config or dataset; starting afresh")
            return None
        return state

    def save(self, state: dict) -> None:
        buffer = io.BytesIO()
        torch.save(plain_state({**state, "fingerprint": self.fingerprint}), buffer)
        self.store.write(self.name, lambda handle: handle.write(buffer.getbuffer()))


# -- the loop ------------------------------------------------------------------------------------------


class Recipe(Protocol):
    steps_per_epoch: int

    def batches(self, epoch: int, first_step: int) -> Iterable[Any]: ...
    def step(self, batch: Any) -> tuple[torch.Tensor, int]: ...
    def evaluate(self, epoch: int) -> dict[str, float]: ...
    def weights(self) -> dict[str, torch.Tensor]: ...
    def describe(self, batch: Any) -> str: ...
    def train_mode(self) -> None: ...
    def last_lr(self) -> float: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Plan:
    """How long to train and how to pick the result; what `fit` needs besides the recipe."""

    phase: str  # names the phase in logs and errors
    epochs: int
    select: str | None = None  # the metric of evaluate() that picks the best epoch; None: no evaluation
    higher_is_better: bool = True
    patience: int | None = None  # epochs without improvement before stopping; None: never stop early
    # The starting weights are a candidate too: scored as epoch -1, the first row of the history.
    evaluate_before_training: bool = False
    save_every_minutes: float | None = None  # mid-epoch saves on a timer (0: after every step) ...
    save_every_steps: int | None = None  # ... or every that many global steps
    log_every_seconds: float = 0.0
    # (epoch, step, mean loss so far, images/s this epoch), every log_every_seconds on rank 0
    log_step: Callable[[int, int, float, float], None] | None = None
    hint: str = "lower the learning rate or check those samples, then rerun"  # said when the loss diverges


@dataclass
class FitResult:
    best_epoch: int  # -1: the starting weights (evaluate_before_training), or no selection
    best_score: float
    best_state: dict[str, torch.Tensor] | None
    epochs_run: int
    global_step: int
    history: list[dict] = field(default_factory=list)
    images_per_second: float = 0.0
    resumed_from: dict | None = None  # {"epoch", "step_in_epoch", "global_step"} when a saved state was resumed


def _rng_state(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def fmt_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


@dataclass
class _Progress:
    """What `fit` saves besides the recipe's state: where the run is and what it has found so far."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    best_state: dict | None = None
    history: list[dict] = field(default_factory=list)
    seen_images: int = 0
    train_seconds: float = 0.0
    epoch_loss: float = 0.0  # summed loss of the steps of an unfinished epoch
    epoch_seen: int = 0


def fit(recipe: Recipe, plan: Plan, checkpoints: Checkpoints | None, device: torch.device) -> FitResult:
    """Train `recipe` as `plan` says, saving to and resuming from `checkpoints`; returns what was found. The
    recipe's weights are left as the last step made them (the best ones are in the result)."""
    rank = dist_utils.rank()
    sign = 1.0 if plan.higher_is_better else -1.0  # scores are kept as "higher is better"
    run = _Progress()
    resumed_from = None
    saved = checkpoints.load() if checkpoints is not None else None
    if checkpoints is not None and saved is not None:
        recipe.load_state_dict(saved["recipe"])
        _set_rng_state(saved["rng"][rank], device)
        run = _Progress(**saved["progress"])
        resumed_from = {"epoch": run.epoch, "step_in_epoch": run.step_in_epoch, "global_step": run.global_step}
        if rank == 0:
            logger.info(
                f"{plan.phase}: resuming from {checkpoints.describe()}: epoch {run.epoch + 1}, step "
                f"{run.step_in_epoch} of {recipe.steps_per_epoch}"
            )
    elif checkpoints is not None and rank == 0:
        logger.info(f"{plan.phase}: training state will be saved to {checkpoints.describe()}")
    last_good = checkpoints.describe() if checkpoints is not None and saved is not None else "none yet"

    def save() -> None:
        nonlocal last_good
        rng = dist_utils.gather_objects(_rng_state(device))  # every process, to resume each exactly
        if checkpoints is None or rank != 0:
            return
        checkpoints.save(
            {
                "epoch": run.epoch,  # at the top level too: a saved state says where it is at a glance
                "step_in_epoch": run.step_in_epoch,
                "global_step": run.global_step,
                "progress": dict(run.__dict__),
                "recipe": recipe.state_dict(),
                "rng": rng,
            }
        )
        last_good = checkpoints.describe()

    def checked(pending: tuple) -> float:
        """The summed loss of a finished step (mean x samples); stops the run if it is not finite."""
        loss, epoch, step, batch, n = pending
        value = float(loss)
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"loss is {value} at epoch {epoch + 1}, step {step} of that epoch",
                f"{plan.phase} training batch of {recipe.describe(batch)}",
                f"the last good training state is {last_good}; {plan.hint}",
            )
        return value * n

    if plan.evaluate_before_training and saved is None and plan.select:
        metrics = recipe.evaluate(-1)
        run.history.append({"epoch": -1, **metrics})  # the starting point, kept with the saved state
        run.best_score, run.best_state = sign * metrics[plan.select], recipe.weights()

    last_save = time.monotonic()
    start_epoch, start_step = run.epoch, run.step_in_epoch
    for epoch in range(start_epoch, plan.epochs):
        if plan.patience is not None and run.best_epoch >= 0 and epoch - run.best_epoch > plan.patience:
            break  # a resumed state that had already stopped early
        recipe.train_mode()
        first = start_step if epoch == start_epoch else 0
        if not first:
            run.epoch_loss, run.epoch_seen = 0.0, 0
        epoch_start = last_log = time.perf_counter()
        pending = None  # the previous step's loss, checked one step late so the GPU queue stays full
        n_epoch = 0
        for step, batch in enumerate(recipe.batches(epoch, first), start=first):
            loss, n = recipe.step(batch)
            if pending is not None:
                run.epoch_loss += checked(pending)
            pending = (loss, epoch, step, batch, n)
            run.epoch_seen += n
            n_epoch += n
            run.global_step += 1
            run.epoch, run.step_in_epoch = epoch, step + 1
            now = time.perf_counter()
            if plan.log_step and plan.log_every_seconds and now - last_log >= plan.log_every_seconds and rank == 0:
                plan.log_step(epoch, step, run.epoch_loss / max(run.epoch_seen, 1), n_epoch / (now - epoch_start))
                last_log = now
            if plan.save_every_steps:
                due = run.global_step % plan.save_every_steps == 0
            elif plan.save_every_minutes is not None:
                due = plan.save_every_minutes == 0 or time.monotonic() - last_save >= plan.save_every_minutes * 60
            else:
                due = False
            if checkpoints is not None and step + 1 < recipe.steps_per_epoch and dist_utils.agree(due):
                run.epoch_loss += checked(pending)
                pending = None
                save()
                last_save = time.monotonic()
        if pending is not None:
            run.epoch_loss += checked(pending)
        seconds = time.perf_counter() - epoch_start
        run.seen_images += n_epoch
        run.train_seconds += seconds
        ips = n_epoch / max(seconds, 1e-9)
        record = {"epoch": epoch, "train_loss": run.epoch_loss / max(run.epoch_seen, 1)}
        improved = False
        if plan.select:
            metrics = recipe.evaluate(epoch)
            record.update(metrics)
            score = sign * metrics[plan.select]
            improved = score > run.best_score
            if improved:
                run.best_score, run.best_epoch, run.best_state = score, epoch, recipe.weights()
        run.history.append({**record, "lr": recipe.last_lr(), "images_per_second": ips})
        if rank == 0:
            shown = f" {plan.select} {metrics[plan.select]:.4f}{' *' if improved else ''}" if plan.select else ""
            eta = fmt_seconds((plan.epochs - epoch - 1) * seconds)
            logger.info(
                f"{plan.phase} epoch {epoch + 1}/{plan.epochs} loss {record['train_loss']:.4f}{shown} "
                f"({ips:.0f} img/s, eta {eta} at most)"
            )
        stop = plan.patience is not None and plan.select is not None and epoch - run.best_epoch >= plan.patience
        run.epoch, run.step_in_epoch, run.epoch_loss, run.epoch_seen = epoch + 1, 0, 0.0, 0
        save()
        last_save = time.monotonic()
        if stop:
            if rank == 0:
                logger.info(f"{plan.phase}: early stop, no {plan.select} gain for {plan.patience} epochs")
            break
    return FitResult(
        best_epoch=run.best_epoch,
        best_score=sign * run.best_score if plan.select else math.nan,
        best_state=run.best_state,
        epochs_run=sum(row["epoch"] >= 0 for row in run.history) or run.epoch,
        global_step=run.global_step,
        history=run.history,
        images_per_second=run.seen_images / max(run.train_seconds, 1e-9),
        resumed_from=resumed_from,
    )
