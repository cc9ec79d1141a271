"""Data-parallel training on one node: one process per GPU, launched with torchrun, joined with DDP.

A training phase's task (phases 1, 3 and 4) runs as one process; when more than one process is asked for
(`training.num_processes`), `run_job` writes a small job file and starts
``torchrun --standalone --nproc-per-node N -m streetvision.training.distributed JOB``. Each worker
joins the process group (NCCL on GPUs, gloo on CPU), runs the job's target function and leaves. Inside a
worker the helpers below talk to the group; outside one they are no-ops, so the training loop has one path.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from streetvision.cluster_env import usable_cpus
from streetvision.contracts.errors import ConfigError, TrainingError

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def agree(flag: bool) -> bool:
    """True on every process when rank 0 says so (time-based decisions must be taken together)."""
    if not is_distributed():
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def gather_objects(obj) -> list:
    """`obj` from every process, in rank order (on every process)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def resolve_num_processes(requested: int, device: str, phase: str) -> int:
    """0 means one per visible GPU (1 without GPUs)."""
    if requested == 0:
        uses_gpu = device != "cpu" and torch.cuda.is_available()
        return max(1, torch.cuda.device_count()) if uses_gpu else 1
    if device != "cpu" and torch.cuda.is_available() and requested > torch.cuda.device_count():
        raise ConfigError(
            f"training.num_processes={requested} but only {torch.cuda.device_count()} GPU(s) are visible",
            phase,
            "set training.num_processes=0 (one per GPU) or request that many GPUs for the task",
        )
    return requested


def run_job(phase: str, num_processes: int, target: str, job: dict[str, Any]) -> dict[str, Any]:
    """`target(**job)` ("module:function") in this process when `num_processes` is 1, else in that many torchrun
    workers; returns what the call on rank 0 returned (workers hand it back with `hand_back`)."""
    if num_processes == 1:
        return _function(target)(**job)
    with tempfile.TemporaryDirectory(prefix=f"streetvision-{phase}-") as scratch:
        result_path = os.path.join(scratch, RESULT_FILE)
        logger.info(f"{phase}: launching {num_processes} training processes (DDP)")
        launch(num_processes, target, {**job, "result_path": result_path}, scratch, phase)
        return json.loads(Path(result_path).read_text())


def hand_back(result: dict[str, Any], result_path: str | None) -> dict[str, Any]:
    """The end of a `run_job` target: rank 0's result goes back to the launching process (JSON-able)."""
    if result_path and rank() == 0:
        Path(result_path).write_text(json.dumps(result))
    return result


RESULT_FILE = "result.json"


def _function(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def launch(num_processes: int, target: str, kwargs: dict, job_dir: str | Path, phase: str) -> None:
    """Run `target` ("module:function", called with **kwargs) in `num_processes` torchrun workers; returns
    when all finished, raises when any failed (their output is in this task's log)."""
    job = Path(job_dir) / "distributed_job.json"
    job.write_text(json.dumps({"target": target, "kwargs": kwargs}))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={num_processes}",
        "-m",
        "streetvision.training.distributed",
        str(job),
    ]
    env = dict(os.environ)
    if not torch.cuda.is_available():
        # CPU workers share the cores instead of each taking all of them.
        env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // num_processes)))
    result = subprocess.run(cmd, env=env, check=False)
    if result.returncode != 0:
        raise TrainingError(
            f"a training worker failed (torchrun exit code {result.returncode})",
            f"{phase} with training.num_processes={num_processes}",
            "the worker's error is printed above in this task's log; fix it, or set training.num_processes=1",
        )


def _worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="One worker of a multi-process training run (started by torchrun; not for direct use)."
    )
    parser.add_argument("job", help="job JSON written by streetvision.training.distributed.launch")
    args = parser.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    try:
        _function(job["target"])(**job["kwargs"])
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
