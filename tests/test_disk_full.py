"""A full disk: the error says "no space left on device", where, and how much was needed; the CLI exits
cleanly and run.json is still written. The real cases run on a small tmpfs, mounted in a private mount
namespace (`unshare`); where that is not allowed they are skipped, and the record's fallback is still tested."""

import errno
import json
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import TINY
from streetvision_pipelines import local_run
from streetvision_pipelines.local_run import RECORD_RESERVE_BYTES, write_run_record

from streetvision import io as storage


def _on_tmpfs(tmp_path, size: str, script: str) -> subprocess.CompletedProcess:
    """Run a shell script with a tmpfs of `size` mounted at $DISK (tmp_path/disk), as this user, privately."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here")
    disk = tmp_path / "disk"
    disk.mkdir()
    body = f'mount -t tmpfs -o size={size} none "$DISK" || exit 97\n{script}'
    result = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", body],
        capture_output=True,
        text=True,
        timeout=300,
        env={"DISK": str(disk), "PY": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    if result.returncode == 97 or "unshare failed" in result.stderr or "Operation not permitted" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()[-200:]}")
    return result


WRITE_SHARD = """
import os, sys
import numpy as np
from streetvision import io as storage
from streetvision.data.shards import write_shard
try:
    write_shard(sys.argv[1], 0, np.zeros((120, 64, 64, 3), np.uint8))  # 1.4 MiB on a 1 MiB disk
except storage.NoSpaceError as exc:
    print("REFUSED", exc)
print("LEFT", sorted(os.listdir(os.path.join(sys.argv[1], "shards"))))
"""


def test_a_shard_that_does_not_fit_says_where_and_how_much(tmp_path):
    result = _on_tmpfs(tmp_path, "1m", f'"$PY" -c \'{WRITE_SHARD}\' "$DISK/split"')
    assert result.returncode == 0, result.stderr[-2000:]
    assert "REFUSED [Errno 28] no space left on device: writing" in result.stdout
    assert "split/shards/images-00000.npy needs 1474688 bytes" in result.stdout  # 128-byte header + pixels
    assert "bytes are free there" in result.stdout
    assert "LEFT []" in result.stdout  # no temp file left behind, nothing that looks complete


@pytest.mark.slow
def test_a_run_that_fills_the_disk_fails_cleanly_and_writes_run_json(tmp_path):
    args = shlex.join([*TINY, "model.img_size=64", "--phases", "ingest"])  # 1.5 MB of pixels on a 1.2 MB disk
    script = f"""
cd "{tmp_path}"
"$PY" -m streetvision run {args} --output-dir "$DISK/runs"
echo "rc=$?"
cat "$DISK"/runs/*/run.json
"""
    result = _on_tmpfs(tmp_path, "1200k", script)
    assert "rc=1" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no space left on device: writing" in result.stdout and "needs" in result.stdout
    assert "Traceback" not in result.stderr  # the CLI itself did not crash (the task's own log is on stdout)
    record = json.loads(result.stdout[result.stdout.index("rc=1") + 4 :])
    assert record["status"] == "failed" and record["phases"] == {"ingest": "not finished"}


def test_a_run_on_a_disk_already_full_is_an_error_not_a_traceback(tmp_path):
    script = """
dd if=/dev/zero of="$DISK/filler" bs=4096 count=64 2>/dev/null
"$PY" -m streetvision run --output-dir "$DISK/runs"
echo "rc=$?"
"""
    result = _on_tmpfs(tmp_path, "256k", script)
    assert "rc=1" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    # The first file a new run writes (its signing key, then config.yaml) is named.
    assert "error: [Errno 28] no space left on device: writing" in result.stderr and "/runs/" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_json_is_written_into_its_reserved_space_when_the_disk_is_full(tmp_path, monkeypatch, capsys):
    write_run_record(tmp_path, {"status": "running"})
    assert (tmp_path / "run.json").stat().st_size == RECORD_RESERVE_BYTES

    def full(uri, data):
        raise storage.NoSpaceError(tmp_path / "run.json", len(data), 0)

    monkeypatch.setattr(local_run.storage, "write_bytes", full)
    write_run_record(tmp_path, {"status": "failed", "error": "no space left on device"})
    assert json.loads((tmp_path / "run.json").read_text()) == {"status": "failed", "error": "no space left on device"}

    (tmp_path / "run.json").unlink()  # no reservation either: the record goes to stderr, nothing crashes
    write_run_record(tmp_path, {"status": "failed"})
    assert '"status": "failed"' in capsys.readouterr().err


def test_other_write_errors_are_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    def denied(tmp):
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        storage.atomic_write(tmp_path / "x", denied)


def test_numpys_short_write_report_is_read_as_a_full_disk(tmp_path):
    """np.save reports a short write as "N requested and M written", without an errno: still a full disk."""

    def short(tmp):
        tmp.write_bytes(b"h" * 128 + b"x" * 1000)  # the header and the part of the array that fit
        raise OSError("14708736 requested and 1000 written")

    with pytest.raises(
        storage.NoSpaceError, match=r"no space left on device: writing .*shard\.npy needs 14708864 bytes"
    ):
        storage.atomic_write(tmp_path / "shard.npy", short)
    assert list(tmp_path.iterdir()) == []
