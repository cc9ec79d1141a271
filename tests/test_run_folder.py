"""A run folder on resume: damaged outputs are re-verified and rerun, and one run at a time holds the folder."""

import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY
from streetvision_pipelines.local_run import DAMAGED, RUN_LOCK, hold_run_folder

from streetvision.contracts.metadata import METADATA_FILE, verify_artifact
from streetvision.run_summary import summarize_run


def _streetvision(*args):
    return subprocess.run([sys.executable, "-m", "streetvision", *args], capture_output=True, text=True, timeout=600)


def _shards(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "kfp").rglob("images-*.npy") if "/train/" in str(p))


@pytest.mark.slow
def test_resume_reruns_a_damaged_ingest_and_is_refused_while_the_folder_is_held(tmp_path):
    first = _streetvision("run", *TINY, "--phases", "ingest", "--output-dir", str(tmp_path / "runs"))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    [run_dir] = (tmp_path / "runs").iterdir()
    [shard] = _shards(run_dir)
    damaged_train = shard.parent.parent
    with open(shard, "r+b") as handle:  # a truncated shard in a finished run
        handle.truncate(shard.stat().st_size // 2)

    # A second process may not resume while this one holds the folder (another open file description).
    with open(run_dir / RUN_LOCK, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = _streetvision("run", "--resume", str(run_dir))
    assert busy.returncode == 1, busy.stdout[-2000:] + busy.stderr[-2000:]
    assert f"run folder {run_dir} is in use by another run or resume" in busy.stderr
    assert [p.name for p in _shards(run_dir)] == [shard.name] and not (run_dir / DAMAGED).exists()  # untouched

    resumed = _streetvision("run", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "train failed verification" in resumed.stdout and "wrong size" in resumed.stdout
    assert "Task ingest cache hit" not in resumed.stdout  # ingest ran again
    assert json.loads((run_dir / "run.json").read_text())["status"] == "succeeded"
    [moved] = (run_dir / DAMAGED).iterdir()
    assert (moved / damaged_train.relative_to(run_dir / "kfp") / METADATA_FILE).is_file()  # kept, not deleted
    assert not damaged_train.exists()
    train = summarize_run(run_dir, ["ingest"]).outputs["ingest", "train"].path
    verify_artifact(train, "test")  # the repaired split, shards included

    again = _streetvision("run", "--resume", str(run_dir))
    assert again.returncode == 0 and "Task ingest cache hit" in again.stdout  # repaired: reused, no loop
    assert "failed verification" not in again.stdout


def test_the_lock_is_exclusive_and_released(tmp_path):
    from streetvision_pipelines.local_run import RunFolderInUseError

    with hold_run_folder(tmp_path):
        assert "pid" in (tmp_path / RUN_LOCK).read_text()
        with (
            pytest.raises(RunFolderInUseError, match="is in use by another run or resume") as info,
            hold_run_folder(tmp_path),
        ):
            pass
        assert str(tmp_path) in info.value.what and "pid" in info.value.what
    with hold_run_folder(tmp_path):  # released on exit
        pass
