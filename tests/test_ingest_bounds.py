"""Ingest reads only what it should: regular files, under a byte cap, inside the manifest's folder; and a killed
ingest's staging folder does not stay behind."""

import json
import os
import socket
import subprocess
import sys

from conftest import TINY
from streetvision_pipelines.local_run import prepare_run

from streetvision.config import config_to_yaml, load_config
from streetvision.phases import ingest
from streetvision.run_summary import PIPELINE_ROOT, RUN_CONFIG


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def _staging(parent, owner: dict | None):
    staging = parent / ingest.STAGING_DIR
    staging.mkdir(parents=True)
    (staging / "pixels.npy").write_bytes(b"\0" * 4096)
    if owner is not None:
        (staging / ingest.STAGING_OWNER).write_text(json.dumps(owner))
    return staging


def test_a_resumed_run_removes_the_staging_a_killed_ingest_left(tmp_path):
    run_dir = tmp_path / "run"
    root = run_dir / PIPELINE_ROOT
    run_dir.mkdir()
    (run_dir / RUN_CONFIG).write_text(config_to_yaml(load_config(TINY)))
    killed = _staging(root / "attempt-1" / "ingest" / "train", {"host": socket.gethostname(), "pid": _dead_pid()})
    unowned = _staging(root / "attempt-0" / "ingest" / "train", None)  # an older layout, or a torn owner file
    live = _staging(root / "attempt-2" / "ingest" / "train", {"host": socket.gethostname(), "pid": os.getpid()})
    elsewhere = _staging(root / "attempt-3" / "ingest" / "train", {"host": "another-node", "pid": 1})
    prepare_run(None, tmp_path, run_dir)
    assert not killed.exists() and not unowned.exists()
    assert live.exists() and elsewhere.exists()  # a running ingest, or one this machine cannot see, is left alone
    assert killed.parent.is_dir()  # only the staging folder goes
