"""Which torch device a task computes on: the one rule every phase uses.

The device follows the task's resources, not a training setting: a phase the cluster gives no GPU
(`cluster.<phase>.gpus == 0`: ingest, phase 2, phase 5 and phase 6 by default) runs on CPU whatever
`training.device` says, since its pod gets the CPU image and no GPU. A phase with GPUs uses `training.device`:
`auto` (the default) takes CUDA when a device is visible and the CPU otherwise; `cuda` insists on a GPU.
"""

from __future__ import annotations

import torch

from streetvision.config.schema import Config
from streetvision.contracts.errors import ConfigError


def resolve_device(name: str, local_rank: int = 0, where: str = "training.device") -> torch.device:
    """`auto` | `cpu` | `cuda` as a torch device (`cuda` on this process's GPU, `local_rank`)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "training.device=cuda but no CUDA device is visible",
                where,
                "set training.device=auto (CUDA when visible, else CPU) or cpu, or run the task on a GPU node",
            )
        return torch.device("cuda", local_rank)
    return torch.device(name)


def task_device(cfg: Config, phase: str, local_rank: int = 0) -> torch.device:
    """The device `phase` computes on: CPU when `cluster.<phase>.gpus` is 0, else `training.device`."""
    gpus = cfg.cluster.resources_for(phase).gpus
    if gpus == 0:
        return torch.device("cpu")
    return resolve_device(cfg.training.device, local_rank, f"{phase} (cluster.{phase}.gpus={gpus})")
