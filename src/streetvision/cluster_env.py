"""What a task learns from the cluster and the machine it runs on, without importing kfp.

On Kubeflow, the pipeline factory exposes the KFP run id to checkpointing phases as an environment variable
(through the Kubernetes downward API: KFP labels every pod of a run with `pipeline/runid`). The run id is the
same for every retry of a task, so `task_checkpoint_dir` names a location that a retried (preempted) task
finds again and resumes from. Locally the variable is absent and the answer is None.
"""

from __future__ import annotations

import os

from streetvision.config.schema import Config

RUN_ID_ENV = "STREETVISION_RUN_ID"
# The pod label the KFP backend puts on every pod of a run (Argo workflow podMetadata).
RUN_ID_FIELD_PATH = "metadata.labels['pipeline/runid']"


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's CPU set, not the host's count where Linux says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def task_checkpoint_dir(cfg: Config, phase: str) -> str | None:
    """`<cluster.checkpoint_root>/<run id>/<phase>` on a cluster (a PVC path or a gs:// URI), else None."""
    run_id = os.environ.get(RUN_ID_ENV, "").strip()
    root = cfg.cluster.checkpoint_root.rstrip("/")
    if not run_id or not root:
        return None
    return f"{root}/{run_id}/{phase}"


def resume_root(cfg: Config, phase: str) -> str | None:
    """Where a training phase keeps resumable state: `training.resume_dir` when set, else (on a cluster) the
    run's checkpoint location for the phase, else None (no resumable state)."""
    return cfg.training.resume_dir or task_checkpoint_dir(cfg, phase)
