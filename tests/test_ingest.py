import csv
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY, ingest_paths, png_rgb16, split_dirs
from PIL import Image

from streetvision.config import load_config
from streetvision.contracts import DataError, Split
from streetvision.contracts.metadata import METADATA_FILE, fingerprint_ids, read_metadata
from streetvision.data.shards import open_shards
from streetvision.phases.ingest import run_ingest


def _rows(report_dir):
    with open(report_dir / "records.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_record_lands_in_exactly_one_place(ingested):
    _, dirs, report_dir, meta = ingested
    rows = _rows(report_dir)
    report = json.loads((report_dir / "report.json").read_text())
    assert len(rows) == report["records"] == report["placed"] + report["quarantined"]
    ids_by_split = {s: pq.read_table(dirs[s] / "samples.parquet").column("sample_id").to_pylist() for s in Split}
    placed = [i for ids in ids_by_split.values() for i in ids]
    assert len(placed) == len(set(placed)) == report["placed"]  # disjoint ids
    assert sorted(placed) == sorted(r["sample_id"] for r in rows if r["placement"] != "quarantine")
    groups = {s: set(pq.read_table(dirs[s] / "samples.parquet").column("group_id").to_pylist()) for s in Split}
    for a in Split:
        for b in Split:
            if a != b:
                assert not groups[a] & groups[b], (a, b)  # groups never cross splits
    for split in Split:
        m = read_metadata(dirs[split], "t")
        assert m.fingerprint == fingerprint_ids(ids_by_split[split]) and m.count == len(ids_by_split[split])
        assert open_shards(dirs[split]).shape == (m.count, 32, 32, 3)
        assert m.partition == meta["data_report"]["partition"]


def test_rerun_gives_the_same_splits(ingested, tmp_path):
    cfg, dirs, _, meta = ingested
    again = run_ingest(cfg, ingest_paths(tmp_path)).outputs
    for split in Split:
        assert again[split.value]["fingerprint"] == meta[split.value]["fingerprint"]
        assert np.array_equal(np.asarray(open_shards(dirs[split])), np.asarray(open_shards(tmp_path / split.value)))


def _jpeg(color, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def _manifest(tmp_path, n_good=100, bad=()):
    rows = ["path,label,group_id,source"]
    for i in range(n_good):
        (tmp_path / f"img{i}.jpg").write_bytes(_jpeg((i * 4 % 256, 10, 200 - i)))
        rows.append(f"img{i}.jpg,{'roadwork' if i % 2 else 'no_roadwork'},g{i // 2},real")
    for i, (name, data, label) in enumerate(bad):
        if data is not None:
            (tmp_path / name).write_bytes(data)
        rows.append(f"{name},{label},b{i},real")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "manifest.csv"


BAD = [
    ("empty.jpg", b"", "1"),
    ("text.jpg", b"hello", "0"),
    ("missing.jpg", None, "1"),
    ("small.jpg", _jpeg((1, 1, 1), (8, 8)), "1"),
    ("odd_label.jpg", _jpeg((9, 9, 9)), "maybe"),
]
SIXTEEN_BIT = ("deep.png", png_rgb16(), "1")  # 16 bits per sample, which predict refuses too (tests/test_predict.py)


def _manifest_cfg(manifest, *extra):
    return load_config([*TINY, "data.source=manifest", f"data.manifest={manifest}", "data.split.seed=3", *extra])


def test_manifest_quarantine_names_every_bad_record(tmp_path):
    bad = [*BAD, SIXTEEN_BIT]
    manifest = _manifest(tmp_path, bad=bad)
    cfg = _manifest_cfg(manifest, "data.max_quarantine_fraction=0.2")
    out = tmp_path / "out"
    run_ingest(cfg, ingest_paths(out))
    rows = {r["sample_id"].removeprefix("manifest/"): r for r in _rows(out / "report")}
    reasons = {name: rows[name]["reason"].split(":")[0] for name, _, _ in bad}
    assert reasons == {
        "empty.jpg": "zero_byte",
        "text.jpg": "not_an_image",
        "missing.jpg": "unreadable",
        "small.jpg": "too_small",
        "odd_label.jpg": "unknown_label",
        "deep.png": "unsupported_mode",
    }
    assert all(rows[name]["placement"] == "quarantine" for name, _, _ in bad)
    assert sum(r["placement"] != "quarantine" for r in rows.values()) == 100


def test_too_many_bad_records_fail_loudly_without_complete_outputs(tmp_path):
    manifest = _manifest(tmp_path, n_good=20, bad=BAD)
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        run_ingest(_manifest_cfg(manifest), ingest_paths(out))
    message = str(info.value)
    assert "5 of 25 records quarantined" in message and "max_quarantine_fraction" in message
    assert "zero_byte" in message or "not_an_image" in message
    # The quarantine list is kept for the user; no output looks complete.
    assert len(_rows(out / "report")) == 25
    assert not any((p / METADATA_FILE).exists() for p in [*split_dirs(out).values(), out / "report"])


def test_exact_duplicates_share_a_group_and_conflicts_are_quarantined(tmp_path):
    manifest = _manifest(tmp_path)
    (tmp_path / "copy_same.jpg").write_bytes((tmp_path / "img3.jpg").read_bytes())
    (tmp_path / "copy_conflict.jpg").write_bytes((tmp_path / "img5.jpg").read_bytes())
    with open(manifest, "a") as handle:
        handle.write("copy_same.jpg,roadwork,other1,real\ncopy_conflict.jpg,no_roadwork,other2,real\n")
    cfg = _manifest_cfg(manifest)
    out = tmp_path / "out"
    run_ingest(cfg, ingest_paths(out))
    rows = {r["sample_id"].removeprefix("manifest/"): r for r in _rows(out / "report")}
    assert rows["copy_same.jpg"]["group_id"] == rows["img3.jpg"]["group_id"]
    assert rows["copy_same.jpg"]["placement"] == rows["img3.jpg"]["placement"] != "quarantine"
    assert rows["copy_conflict.jpg"]["placement"] == rows["img5.jpg"]["placement"] == "quarantine"
    assert rows["img5.jpg"]["reason"].startswith("conflicting_duplicate")


def test_repeated_sample_ids_are_quarantined_not_dropped(tmp_path):
    manifest = _manifest(tmp_path)
    with open(manifest, "a") as handle:
        handle.write("img7.jpg,roadwork,g3,real\n")
    out = tmp_path / "out"
    run_ingest(_manifest_cfg(manifest), ingest_paths(out))
    rows = _rows(out / "report")
    assert len(rows) == 101
    assert [r["reason"].split(":")[0] for r in rows if r["sample_id"] == "manifest/img7.jpg"] == [
        "",
        "duplicate_record",
    ]
