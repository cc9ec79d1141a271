"""The shard cache: indexing across shards, atomic writes, damage detection."""

import os

import numpy as np
import pytest
from conftest import TINY, ingest_paths, split_dirs, with_demo

from streetvision import io as storage
from streetvision.config import load_config
from streetvision.contracts import DataError, IntegrityError, Role, Split
from streetvision.contracts.metadata import METADATA_FILE
from streetvision.data.shards import load_split, open_shards, write_shard, write_shard_manifest


def _write(tmp_path, sizes=(5, 3, 7)):
    rng = np.random.default_rng(0)
    whole = rng.integers(0, 256, (sum(sizes), 4, 4, 3), dtype=np.uint8)
    entries, start = [], 0
    for k, n in enumerate(sizes):
        entries.append(write_shard(tmp_path, k, whole[start : start + n]))
        start += n
    write_shard_manifest(tmp_path, entries, (4, 4, 3))
    return whole


def test_indexing_across_shards_matches_one_array(tmp_path):
    whole = _write(tmp_path)
    images = open_shards(tmp_path)
    assert len(images) == 15 and images.shape == (15, 4, 4, 3) and images.dtype == np.uint8
    idx = np.array([14, 0, 5, 5, 7, 4, 8, -1])
    for key in (idx, slice(2, 13, 3), slice(None), 6, -2, np.arange(15) % 2 == 0, []):
        got = images[key]
        assert isinstance(got, np.ndarray) and got.dtype == np.uint8
        assert np.array_equal(got, whole[key]), key
    assert np.array_equal(np.asarray(images), whole)
    with pytest.raises(IndexError):
        images[np.array([15])]


def test_a_crash_while_writing_leaves_no_shard_that_looks_complete(tmp_path, monkeypatch):
    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "replace", crash)  # the rename of the one atomic write fails
    with pytest.raises(OSError):
        write_shard(tmp_path, 0, np.zeros((2, 4, 4, 3), np.uint8))
    assert not list((tmp_path / "shards").iterdir())  # no shard, and the temp file is removed
    with pytest.raises(DataError, match="no shards.json"):
        open_shards(tmp_path)


def test_damaged_shards_are_refused(tmp_path):
    _write(tmp_path)
    file = tmp_path / "shards" / "images-00001.npy"
    with open(file, "r+b") as handle:
        handle.truncate(os.path.getsize(file) - 10)
    with pytest.raises(IntegrityError, match="images-00001.npy is missing or has the wrong size"):
        open_shards(tmp_path)
    file.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        open_shards(tmp_path)


def test_ingest_that_fails_mid_write_leaves_every_split_incomplete(tmp_path, monkeypatch):
    from streetvision.contracts.errors import IncompleteArtifactError
    from streetvision.phases import ingest

    calls = []

    def failing_write_shard(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("node lost")
        return write_shard(*args)

    monkeypatch.setattr(ingest, "write_shard", failing_write_shard)
    cfg = with_demo(load_config([*TINY, "data.shard_images=8"]), tmp_path / "demo")
    dirs = split_dirs(tmp_path)
    with pytest.raises(OSError, match="node lost"):
        ingest.run_ingest(cfg, ingest_paths(tmp_path))
    assert not any((d / METADATA_FILE).exists() for d in [*dirs.values(), tmp_path / "report"])
    assert not (dirs[Split.TRAIN] / ingest.STAGING_DIR).exists()
    with pytest.raises(IncompleteArtifactError):
        load_split(dirs[Split.TRAIN], split=Split.TRAIN, role=Role.FIT, phase="phase1", input_name="train")
