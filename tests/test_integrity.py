"""Artifacts verify their content, not their label: damaged or relabelled artifacts are refused by name."""

import hashlib
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PHASE1_OUTPUTS, phase1_paths, reseal_record

from streetvision.contracts import IntegrityError, Role, Split
from streetvision.contracts import metadata as metadata_module
from streetvision.contracts.metadata import METADATA_FILE, read_metadata, verify_artifact
from streetvision.data.shards import SAMPLES_FILE, load_logits, load_split


def _copy(src, tmp_path, name="copy"):
    return shutil.copytree(src, tmp_path / name)


def _first_shard(path):
    return path / json.loads((path / "shards.json").read_text())["shards"][0]["file"]


def _train(path):
    return load_split(path, split=Split.TRAIN, role=Role.FIT, phase="phase1", input_name="train")


def test_record_lists_every_file_and_kfp_gets_its_digest(ingested):
    _, dirs, _, meta = ingested
    record = read_metadata(dirs[Split.TRAIN], "x")
    assert SAMPLES_FILE in record.contents and "shards.json" in record.contents
    assert any(name.startswith("shards/") for name in record.contents)
    samples = dirs[Split.TRAIN] / SAMPLES_FILE
    assert record.contents[SAMPLES_FILE]["sha256"] == hashlib.sha256(samples.read_bytes()).hexdigest()
    assert "contents" not in meta["train"] and meta["train"]["digest"] == record.digest  # KFP's copy stays small


def test_flipped_pixel_bytes_in_a_train_shard_are_refused_when_first_read(ingested, tmp_path, monkeypatch):
    _, dirs, _, _ = ingested
    train = _copy(dirs[Split.TRAIN], tmp_path)
    shard = _first_shard(train)
    raw = bytearray(shard.read_bytes())
    for offset in range(len(raw) - 1000, len(raw) - 10, 7):  # pixel bytes, past the header
        raw[offset] ^= 0xFF
    shard.write_bytes(bytes(raw))  # same size: only the digest can tell

    hashed = []
    original = metadata_module.hashlib.file_digest
    monkeypatch.setattr(metadata_module.hashlib, "file_digest", lambda f, d: hashed.append(f.name) or original(f, d))
    data = _train(train)  # cheap checks only: the shards are not hashed yet
    assert not any("/shards/" in name for name in hashed)
    with pytest.raises(IntegrityError, match=r"images-00000\.npy is damaged") as info:
        data.images[np.arange(len(data.images))]
    assert str(train) in info.value.where and "rerun" in info.value.fix
    with pytest.raises(IntegrityError, match="is damaged"):
        verify_artifact(train, "resume check")


def test_phase1_refuses_to_train_on_a_flipped_train_shard(ingested, tmp_path):
    from streetvision.phases.phase1 import run_phase1

    cfg, dirs, _, _ = ingested
    train = _copy(dirs[Split.TRAIN], tmp_path)
    shard = _first_shard(train)
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0x01  # one pixel bit
    shard.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=r"images-00000\.npy is damaged"):
        run_phase1(cfg, phase1_paths(dirs, tmp_path / "out", train=train))
    assert not any((tmp_path / "out" / name / METADATA_FILE).exists() for name in PHASE1_OUTPUTS)  # none complete


def test_a_shard_is_hashed_once_per_process(ingested, tmp_path, monkeypatch):
    _, dirs, _, _ = ingested
    train = _copy(dirs[Split.TRAIN], tmp_path)
    hashed = []
    original = metadata_module.hashlib.file_digest
    monkeypatch.setattr(metadata_module.hashlib, "file_digest", lambda f, d: hashed.append(f.name) or original(f, d))
    data = _train(train)
    for _ in range(3):  # three "epochs"
        np.asarray(data.images)
    again = _train(train)
    np.asarray(again.images)
    shard_hashes = [name for name in hashed if "/shards/" in name]
    assert len(shard_hashes) == len(set(shard_hashes)) == sum(n.startswith("shards/") for n in again.meta.contents)


def test_flipped_labels_in_samples_parquet_are_refused(ingested, tmp_path):
    _, dirs, _, _ = ingested
    train = _copy(dirs[Split.TRAIN], tmp_path)
    table = pq.read_table(train / SAMPLES_FILE)
    flipped = table.set_column(
        table.column_names.index("label"), "label", pa.array(1 - table.column("label").to_numpy(), pa.int64())
    )
    pq.write_table(flipped, train / SAMPLES_FILE)
    with pytest.raises(IntegrityError, match=r"samples\.parquet"):
        _train(train)


def test_truncated_shard_and_extra_files_are_refused_by_name(ingested, tmp_path):
    _, dirs, _, _ = ingested
    train = _copy(dirs[Split.TRAIN], tmp_path)
    shard = _first_shard(train)
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size - 100)
    with pytest.raises(IntegrityError, match=r"wrong size: shards/images-00000\.npy"):
        _train(train)
    other = _copy(dirs[Split.TRAIN], tmp_path, "other")
    (other / "notes.txt").write_text("hi")
    with pytest.raises(IntegrityError, match=r"not in the record: notes\.txt"):
        _train(other)


def _relabel(path, **fields):
    record = path / METADATA_FILE
    data = json.loads(record.read_text())
    data.update(fields)
    record.write_text(json.dumps(data))


def test_a_relabelled_split_field_is_refused(ingested, trained, tmp_path):
    _, dirs, out = trained
    test_as_train = _copy(dirs[Split.VAL_TEST], tmp_path, "test")
    _relabel(test_as_train, split="train")
    with pytest.raises(IntegrityError, match="a field was edited"):
        _train(test_as_train)
    select_as_calib = _copy(out["val_select_logits"], tmp_path, "logits")
    _relabel(select_as_calib, split="val_calib")
    with pytest.raises(IntegrityError, match="a field was edited"):
        load_logits(
            select_as_calib, split=Split.VAL_CALIB, role=Role.POLICY_FITTING, phase="phase2", input_name="val_calib"
        )


def test_garbled_files_get_a_clear_error_naming_the_file(ingested, tmp_path):
    _, dirs, _, _ = ingested
    cases = {
        "header": lambda p: _garble(_first_shard(p), 10, b"\x7b\x27descr\x27: nonsense"),
        "mmap": lambda p: _grow_header_shape(_first_shard(p)),
        "shards.json": lambda p: (p / "shards.json").write_text('{"schema": '),
        # Inside the footer's metadata (before its 4-byte length and "PAR1"): a garble mid-file can land in plain
        # column values that still parse.
        "parquet": lambda p: _garble(p / SAMPLES_FILE, (p / SAMPLES_FILE).stat().st_size - 8 - 24, b"\xff" * 16),
    }
    for name, damage in cases.items():
        path = _copy(dirs[Split.TRAIN], tmp_path, name)
        damage(path)
        reseal_record(path)  # the record matches the damage: the parser itself must say what is wrong, and where
        with pytest.raises(IntegrityError) as info:
            _train(path)
        assert str(path) in str(info.value), (name, str(info.value))
    record = _copy(dirs[Split.TRAIN], tmp_path, "record")
    (record / METADATA_FILE).write_text('{"kind": "split", ')
    with pytest.raises(IntegrityError, match=r"_streetvision\.json is unreadable"):
        _train(record)


def _garble(file, offset, data):
    raw = bytearray(file.read_bytes())
    raw[offset : offset + len(data)] = data
    file.write_bytes(bytes(raw))


def _grow_header_shape(file):
    raw = file.read_bytes()
    header_end = raw.index(b"\n") + 1
    header = raw[:header_end].decode("latin1")
    count = header.split("'shape': (")[1].split(",")[0]
    grown = header.replace(f"'shape': ({count},", f"'shape': ({int(count) * 9},", 1)
    grown = grown[: len(header) - 1] + "\n"  # the header ends in padding spaces: same length, same file size
    file.write_bytes(grown.encode("latin1") + raw[header_end:])
