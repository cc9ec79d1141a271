"""Ingest reads only what it should: regular files, under a byte cap, inside the manifest's folder; and a killed
ingest's staging folder does not stay behind."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from conftest import TINY, ingest_paths
from ingest_data import encode, rows_of, scene, write_folder, write_manifest
from streetvision_pipelines.local_run import prepare_run

from streetvision.config import config_to_yaml, load_config
from streetvision.data.decode import QuarantineReason, read_image_file
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


def _png_declaring(width: int, height: int) -> bytes:
    """A valid, tiny PNG whose header declares width x height pixels (a decompression bomb's signature)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.fixture
def no_hang():
    """Fail a test that blocks (a FIFO opened for reading without a writer) instead of hanging the suite."""

    def hung(*_):
        raise TimeoutError("the read blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_the_bounded_reader_refuses_what_is_not_a_small_regular_file(tmp_path, no_hang):
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "big.jpg").write_bytes(b"\xff" * 1001)
    (tmp_path / "fits.jpg").write_bytes(b"\xff" * 1000)
    codes = {}
    for name in ("/dev/zero", str(tmp_path / "fifo.jpg"), str(tmp_path), str(tmp_path / "big.jpg"), "/no/such.jpg"):
        with pytest.raises(QuarantineReason) as info:
            read_image_file(name, max_bytes=1000)
        codes[name] = info.value.code
    assert list(codes.values()) == ["not_a_file", "not_a_file", "not_a_file", "too_large", "unreadable"]
    assert read_image_file(str(tmp_path / "fits.jpg"), max_bytes=1000) == b"\xff" * 1000


def _with_rows(root, rows: list[tuple[str, str]]) -> Path:
    """The 160-image manifest of ingest_data plus `rows` (path, label)."""
    write_manifest(root, n=160)
    manifest = root / "manifest.jsonl"
    with open(manifest, "a") as handle:
        handle.writelines(json.dumps({"path": path, "label": label}) + "\n" for path, label in rows)
    return manifest


# Larger held-out splits, so each of them gets both classes from this small set.
EVEN_SPLITS = [f"data.split.{name}={share}" for name, share in [("train", 0.4), ("val_select", 0.2)]]
EVEN_SPLITS += [f"data.split.{name}=0.2" for name in ("val_calib", "val_test")]


def _ingest(tmp_path, source: list[str], *extra: str) -> dict[str, str]:
    out = tmp_path / "out"
    cfg = load_config([*TINY, *source, "data.max_quarantine_fraction=0.5", *EVEN_SPLITS, *extra])
    ingest.run_ingest(cfg, ingest_paths(out))
    return {r["sample_id"]: r["reason"] for r in rows_of(out)}


def test_manifest_paths_stay_inside_the_manifests_folder(tmp_path, no_hang):
    root, outside = tmp_path / "data", tmp_path / "outside"
    outside.mkdir()
    (outside / "x.jpg").write_bytes(encode(scene(7)))
    manifest = _with_rows(root, [("../outside/x.jpg", "1"), (str(outside / "x.jpg"), "1"), ("img/escape.jpg", "1")])
    (root / "img" / "escape.jpg").symlink_to(outside / "x.jpg")
    (root / "img" / "inside.jpg").symlink_to(root / "img" / "seq000_f0.jpg")  # a link within the folder is fine
    with open(manifest, "a") as handle:
        handle.write(json.dumps({"path": "img/inside.jpg", "label": "0", "group_id": "seq000"}) + "\n")
    reasons = _ingest(tmp_path, ["data.source=manifest", f"data.manifest={manifest}"])
    for path in ("../outside/x.jpg", str(outside / "x.jpg"), "img/escape.jpg"):
        assert reasons[f"manifest/{path}"].startswith("outside_root: "), reasons[f"manifest/{path}"]
        assert "data.allow_outside_paths" in reasons[f"manifest/{path}"]
    assert reasons["manifest/img/inside.jpg"] == ""
    # Allowed, they are read like any other record (here: placed, or quarantined as duplicates of each other).
    allowed = _ingest(tmp_path, ["data.source=manifest", f"data.manifest={manifest}", "data.allow_outside_paths=true"])
    assert not any(allowed[f"manifest/{p}"].startswith("outside_root") for p in ("../outside/x.jpg", "img/escape.jpg"))


def test_devices_fifos_bombs_and_oversized_files_are_quarantined_with_their_reason(tmp_path, no_hang):
    root = tmp_path / "data"
    manifest = _with_rows(
        root, [("/dev/zero", "1"), ("img/fifo.jpg", "1"), ("img/bomb.png", "0"), ("img/big.png", "0")]
    )
    os.mkfifo(root / "img" / "fifo.jpg")
    (root / "img" / "bomb.png").write_bytes(_png_declaring(30_000, 30_000))
    (root / "img" / "big.png").write_bytes(encode(scene(8, size=(400, 300)), "PNG"))  # ~360 kB, over the cap below
    reasons = _ingest(
        tmp_path,
        ["data.source=manifest", f"data.manifest={manifest}"],
        "data.allow_outside_paths=true",  # /dev/zero is absolute: let it through to the reader
        "data.max_record_bytes=100000",
    )
    assert reasons["manifest//dev/zero"].startswith("not_a_file: ")
    assert reasons["manifest/img/fifo.jpg"].startswith("not_a_file: ")
    assert reasons["manifest/img/bomb.png"].startswith("too_large: ") and "pixels" in reasons["manifest/img/bomb.png"]
    assert (
        reasons["manifest/img/big.png"].startswith("too_large: ")
        and "max_record_bytes" in reasons["manifest/img/big.png"]
    )
    assert sum(r == "" for r in reasons.values()) == 160  # every good record placed, every bad one accounted for


def test_a_fifo_in_a_folder_source_is_quarantined(tmp_path, no_hang):
    root = tmp_path / "folder"
    write_folder(root, n=160, with_bad=False)
    os.mkfifo(root / "roadwork" / "pipe.jpg")
    reasons = _ingest(tmp_path, ["data.source=folder", f"data.path={root}"])
    assert reasons["folder/roadwork/pipe.jpg"].startswith("not_a_file: ") and len(reasons) == 161
