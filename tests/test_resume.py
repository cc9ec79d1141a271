"""Preemption: kill the training process mid-epoch, restart it, and get the weights of an uninterrupted run."""

import json
import signal
import subprocess
import sys

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

from streetvision.config import config_to_json, load_config
from streetvision.contracts import CheckpointError, Split
from streetvision.contracts.validators import validate_location
from streetvision.io import Store

# The training process: runs phase 1 from a job file; with KILL_AT > 0 it SIGKILLs itself right after that
# many optimizer steps (before the state of that step is saved), like a preempted node.
CHILD = r"""
import json, os, signal, sys
import torch
from streetvision.config import config_from_json
from streetvision.phases.phase1 import run_phase1
from streetvision.phases.result import PhasePaths

job, kill_at = json.loads(open(sys.argv[1]).read()), int(sys.argv[2])
if kill_at > 0:
    original, calls = torch.optim.AdamW.step, [0]
    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    torch.optim.AdamW.step = step
run_phase1(config_from_json(job["config"]), PhasePaths.of("phase1", **job["paths"]))
"""


def _run(tmp_path, dirs, out: str, overrides: list[str], kill_at: int = 0) -> subprocess.CompletedProcess:
    cfg = load_config(TINY + overrides)
    splits = {s.value: str(dirs[s]) for s in (Split.TRAIN, Split.VAL_SELECT, Split.VAL_CALIB)}
    outs = {name: str(tmp_path / out / name) for name in ("checkpoint", "val_select_logits", "val_calib_logits")}
    job = tmp_path / f"{out}-{kill_at}.json"
    job.write_text(
        json.dumps(
            {
                "config": config_to_json(cfg),
                "paths": {**splits, **outs},
            }
        )
    )
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(job), str(kill_at)], capture_output=True, text=True, timeout=300
    )


def test_killed_mid_epoch_then_restarted_equals_uninterrupted(ingested, tmp_path):
    _, dirs, _, _ = ingested
    # 88 TRAIN images in batches of 32: 3 steps per epoch. Deterministic CPU mode; dropout and every
    # augmentation op on (their draws are part of the state a resume restores).
    common = [
        "training.epochs=3",
        "training.patience=5",
        "training.deterministic=true",
        "training.multiview=single",
        "training.augment.rotation_degrees=20",
        "training.augment.vflip_p=0.5",
        "training.augment.jpeg_p=0.3",
        "training.augment.blur_p=0.2",
        "training.augment.noise_p=0.2",
    ]
    resumable = common + [f"training.resume_dir={tmp_path / 'resume'}", "training.checkpoint_every_minutes=0"]

    plain = _run(tmp_path, dirs, "plain", common)
    assert plain.returncode == 0, plain.stderr[-3000:]

    killed = _run(tmp_path, dirs, "restarted", resumable, kill_at=5)  # epoch 2, its 2nd step
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-3000:]
    assert not (tmp_path / "restarted" / "checkpoint" / "_streetvision.json").exists()
    [state_dir] = (tmp_path / "resume").iterdir()
    state = torch.load(state_dir / "train_state.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 4)  # saved after step 4

    again = _run(tmp_path, dirs, "restarted", resumable)
    assert again.returncode == 0, again.stderr[-3000:]
    console = again.stdout + again.stderr  # log lines go to stderr
    assert "resuming from" in console and "epoch 2, step 1 of 3" in console

    a = load_file(str(tmp_path / "plain" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "restarted" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    hist = [
        json.loads((tmp_path / r / "checkpoint" / "training_history.json").read_text()) for r in ("plain", "restarted")
    ]
    drop = lambda h: [{k: v for k, v in row.items() if k != "images_per_second"} for row in h]  # noqa: E731
    assert drop(hist[0]) == drop(hist[1]) and len(hist[0]) == 3
    summary = json.loads((tmp_path / "restarted" / "checkpoint" / "training_summary.json").read_text())
    assert summary["resumed_from"] == {"epoch": 1, "step_in_epoch": 1, "global_step": 4}


def test_resume_key_separates_configs_and_data(ingested):
    from streetvision.phases.phase1 import _load_inputs, resume_key

    cfg, dirs, _, _ = ingested
    inputs = _load_inputs(dirs[Split.TRAIN], dirs[Split.VAL_SELECT], dirs[Split.VAL_CALIB])
    key = resume_key(cfg, inputs)
    assert key == resume_key(load_config(TINY + ["training.log_every_seconds=5", "training.resume_dir=/x"]), inputs)
    assert key != resume_key(load_config(TINY + ["training.lr=0.01"]), inputs)
    swapped = dict(inputs, train=inputs["val_calib"])
    assert key != resume_key(cfg, swapped)


def test_local_store_writes_atomically_and_remote_needs_a_backend(tmp_path):
    store = Store(validate_location(str(tmp_path / "state"), "test"))
    store.write("a.bin", lambda f: f.write(b"one"))

    def failing(handle):
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.write("a.bin", failing)
    assert store.read("a.bin") == b"one"  # the old file survives a failed write
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["a.bin"]  # no temp file left behind
    with pytest.raises(CheckpointError, match=r"no storage backend for s3://"):
        validate_location("s3://bucket/runs", "training.resume_dir")  # local and gs:// only
