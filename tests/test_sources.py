"""Ingest from each source layout (local), with every kind of bad record: every record accounted for."""

import io
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ingest_paths
from ingest_data import outcomes, rows_of, write_folder, write_manifest, write_parquet
from PIL import Image

from streetvision.config import load_config
from streetvision.contracts import DataError, Split
from streetvision.data.decode import decode_image
from streetvision.data.shards import open_shards
from streetvision.phases.ingest import run_ingest

SMALL = [
    "model.img_size=32",
    "data.split.train=0.4",
    "data.split.val_select=0.2",
    "data.split.val_calib=0.2",
    "data.split.val_test=0.2",
    "data.max_quarantine_fraction=0.5",
    "data.shard_images=16",
    "data.split.seed=1",
    "data.report_thumbnails=4",
]


def ingest(tmp_path, *overrides, name="out"):
    cfg = load_config([*SMALL, *overrides])
    out = tmp_path / name
    result = run_ingest(cfg, ingest_paths(out))
    return cfg, out, result


def check_invariants(out):
    """Disjoint ids and groups across splits; each split's cache, table and metadata agree."""
    seen_ids, seen_groups = set(), {}
    for split in Split:
        table = pq.read_table(out / split.value / "samples.parquet").to_pydict()
        ids = table["sample_id"]
        assert not seen_ids & set(ids)
        seen_ids |= set(ids)
        for g in set(table["group_id"]):
            assert seen_groups.setdefault(g, split) == split, f"group {g} crosses splits"
        images = open_shards(out / split.value)
        assert images.shape == (len(ids), 32, 32, 3)
    placed = {r["sample_id"] for r in rows_of(out) if r["placement"] != "quarantine"}
    assert seen_ids == placed


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    return root, write_folder(root / "data", n=80)


def test_folder_source_accounts_for_every_file(folder, tmp_path):
    root, expect = folder
    _, out, meta = ingest(tmp_path, "data.source=folder", f"data.path={root / 'data'}")
    assert outcomes(out, "folder/") == expect
    check_invariants(out)
    rows = {r["sample_id"]: r for r in rows_of(out)}
    # Frames of one sequence carry no group id; the perceptual hash joins them.
    for seq in range(40):
        label = "no_roadwork" if seq % 5 == 0 else "roadwork"
        a, b = (rows[f"folder/{label}/seq{seq:03d}_f{k}.jpg"] for k in (0, 1))
        assert a["group_id"] == b["group_id"] and a["placement"] == b["placement"]
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["duplicates"]["near_duplicate_pairs"] >= 40
    assert report["records"] == len(expect) == meta.outputs["data_report"]["count"]
    assert "<img" in meta.reports["data_report_html"] and (out / "report" / "report.md").is_file()


def test_cache_holds_the_decoded_training_copy(folder, tmp_path):
    root, _ = folder
    _, out, _ = ingest(tmp_path, "data.source=folder", f"data.path={root / 'data'}")
    table = pq.read_table(out / "train" / "samples.parquet").to_pydict()
    images = open_shards(out / "train")
    assert len(list((out / "train" / "shards").glob("images-*.npy"))) == -(-len(images) // 16)
    picks = np.array([0, len(images) - 1, len(images) // 2, 17])  # across shards, out of order
    got = images[picks]
    for k, i in enumerate(picks):
        path = root / "data" / table["sample_id"][i].removeprefix("folder/")
        assert np.array_equal(got[k], decode_image(path.read_bytes(), 32, 32).pixels)
    assert np.array_equal(images[3:9], np.asarray(images)[3:9]) and images[5].shape == (32, 32, 3)


def test_manifest_csv_and_jsonl_sources(tmp_path):
    for fmt in ("jsonl", "csv"):
        root = tmp_path / fmt
        expect = write_manifest(root, n=80, fmt=fmt)
        _, out, _ = ingest(tmp_path, "data.source=manifest", f"data.manifest={root / f'manifest.{fmt}'}", name=fmt)
        assert outcomes(out, "manifest/") == expect
        check_invariants(out)
        sources = {r["source"] for r in rows_of(out)}
        assert sources == {"real", "synthetic"}


def test_parquet_source_in_the_natix_layout(tmp_path):
    expect = write_parquet(tmp_path / "natix", n=80)
    _, out, _ = ingest(tmp_path, "data.source=parquet", f"data.path={tmp_path / 'natix'}")
    assert outcomes(out, "parquet/") == expect
    check_invariants(out)


def test_several_sources_in_one_run_tag_every_record(folder, tmp_path):
    root, folder_expect = folder
    manifest_expect = write_manifest(tmp_path / "team", n=40)
    parquet_expect = write_parquet(tmp_path / "natix", n=40)
    sources = (
        f"data.sources=[{{kind: parquet, path: '{tmp_path / 'natix'}', name: natix}}, "
        f"{{kind: manifest, path: '{tmp_path / 'team' / 'manifest.jsonl'}', name: team}}, "
        f"{{kind: folder, path: '{root / 'data'}', name: bucket, positive_labels: [maybe]}}]"
    )
    _, out, meta = ingest(tmp_path, "data.source=sources", sources)
    rows = rows_of(out)
    assert len(rows) == len(folder_expect) + len(manifest_expect) + len(parquet_expect)
    assert {r["origin"] for r in rows} == {"natix", "team", "bucket"}
    # positive_labels maps the 'maybe' folder to roadwork for that source.
    assert [r["placement"] != "quarantine" for r in rows if r["sample_id"] == "bucket/maybe/unknown.jpg"] == [True]
    check_invariants(out)
    assert set(meta.outputs["train"]["summary"]["sources"]) >= {"natix", "real", "bucket"}


def test_rerun_is_identical_and_new_samples_never_move_old_ones(tmp_path):
    """With data.split.assignment=stable (a fixed hash cut, floors off); the balanced default's bounded moves are
    in test_splits."""
    stable = ["data.split.assignment=stable", "data.split.min_val_select=0", "data.split.min_val_calib=0"]
    write_folder(tmp_path / "v1", n=100, with_bad=False)
    _, first, meta1 = ingest(tmp_path, "data.source=folder", f"data.path={tmp_path / 'v1'}", *stable, name="a")
    _, again, meta2 = ingest(tmp_path, "data.source=folder", f"data.path={tmp_path / 'v1'}", *stable, name="b")
    assert {k: v["fingerprint"] for k, v in meta1.outputs.items() if k != "data_report"} == {
        k: v["fingerprint"] for k, v in meta2.outputs.items() if k != "data_report"
    }
    for split in Split:
        assert np.array_equal(
            np.asarray(open_shards(first / split.value)), np.asarray(open_shards(again / split.value))
        )
    # v2 = v1 plus 40 new sequences, written with different seeds (new scenes).
    write_folder(tmp_path / "v2", n=100, with_bad=False)
    from ingest_data import LABELS, encode, scene

    for i in range(40):
        label = LABELS[i % 3 != 0]
        (tmp_path / "v2" / label / f"new{i:03d}.jpg").write_bytes(encode(scene(50_000 + i)))
    _, grown, _ = ingest(tmp_path, "data.source=folder", f"data.path={tmp_path / 'v2'}", *stable, name="c")
    before = {r["sample_id"]: r["placement"] for r in rows_of(first)}
    after = {r["sample_id"]: r["placement"] for r in rows_of(grown)}
    assert len(after) == len(before) + 40
    assert {k: after[k] for k in before} == before


def test_exact_duplicate_label_conflict_rules(tmp_path):
    write_folder(tmp_path / "data", n=100, with_bad=False)
    copy = (tmp_path / "data" / "roadwork" / "seq001_f0.jpg").read_bytes()
    (tmp_path / "data" / "roadwork" / "dup_a.jpg").write_bytes(copy)
    (tmp_path / "data" / "no_roadwork" / "dup_b.jpg").write_bytes(copy)  # 2 x roadwork, 1 x no_roadwork
    base = ["data.source=folder", f"data.path={tmp_path / 'data'}"]
    _, out, _ = ingest(tmp_path, *base, name="q")
    codes = outcomes(out, "folder/")
    assert [codes[k] for k in ("roadwork/seq001_f0.jpg", "roadwork/dup_a.jpg", "no_roadwork/dup_b.jpg")] == [
        "conflicting_duplicate"
    ] * 3
    _, out, _ = ingest(tmp_path, *base, "data.dedupe.label_conflict=majority", name="m")
    codes = outcomes(out, "folder/")
    assert [codes[k] for k in ("roadwork/seq001_f0.jpg", "roadwork/dup_a.jpg", "no_roadwork/dup_b.jpg")] == [
        "ok",
        "ok",
        "conflicting_duplicate",
    ]
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["duplicates"]["exact_duplicate_label_conflicts"][0]["kept_label"] == 1


def test_quarantine_limit_names_the_worst_reasons(folder, tmp_path):
    root, expect = folder
    with pytest.raises(DataError) as info:
        ingest(tmp_path, "data.source=folder", f"data.path={root / 'data'}", "data.max_quarantine_fraction=0.05")
    message = str(info.value)
    bad = sum(v != "ok" for v in expect.values())
    assert f"{bad} of {len(expect)} records quarantined" in message
    assert "unsupported_mode x3" in message and "e.g. folder/" in message


def test_source_level_mistakes_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist or is empty"):
        ingest(tmp_path, "data.source=folder", f"data.path={tmp_path / 'nowhere'}")
    (tmp_path / "p").mkdir()
    import pyarrow as pa

    pq.write_table(pa.table({"img": [b"x"], "label": [1]}), tmp_path / "p" / "a.parquet")
    with pytest.raises(DataError, match="lack \\['image'\\]") as info:
        ingest(tmp_path, "data.source=parquet", f"data.path={tmp_path / 'p'}")
    assert "image_column" in str(info.value)
    (tmp_path / "m.jsonl").write_text('{"path": "a.jpg", "label": 1}\nnot json\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        ingest(tmp_path, "data.source=manifest", f"data.manifest={tmp_path / 'm.jsonl'}")


def test_exif_rotated_record_is_stored_upright(folder, tmp_path):
    root, _ = folder
    _, out, _ = ingest(tmp_path, "data.source=folder", f"data.path={root / 'data'}")
    row = next(r for r in rows_of(out) if r["sample_id"].endswith("rotated_ok.jpg"))
    table = pq.read_table(out / row["placement"] / "samples.parquet").to_pydict()
    i = table["sample_id"].index(row["sample_id"])
    assert (table["orig_width"][i], table["orig_height"][i]) == (72, 96)  # stored 96x72, shown rotated
    expected = np.asarray(
        Image.open(io.BytesIO((root / "data" / "no_roadwork" / "rotated_ok.jpg").read_bytes()))
        .transpose(Image.Transpose.ROTATE_270)
        .resize((32, 32), Image.BILINEAR),
        dtype=np.int16,
    )
    got = open_shards(out / row["placement"])[i].astype(np.int16)
    assert np.abs(got - expected).mean() < 6


@pytest.mark.parametrize("column", ["group_id", "group", "sequence"])
def test_manifest_group_column_is_read_under_its_common_names(tmp_path, column):
    from streetvision.data.sources import manifest_records

    path = tmp_path / "m.csv"
    path.write_text(f"path,label,{column}\na.jpg,1,s1\nb.jpg,1,s1\nc.jpg,0,\n")
    records = manifest_records(path)
    assert [r.group_id for r in records] == ["manifest/s1", "manifest/s1", "manifest/c.jpg"]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"path": "a.jpg", "label": "1", column: "s9"}) + "\n")
    assert manifest_records(jsonl)[0].group_id == "manifest/s9"


@pytest.mark.parametrize(
    ("header", "message"),
    [("path,label,grp", "unknown column(s) ['grp']"), ("path,label,group,sequence", "several group columns")],
)
def test_manifest_unknown_or_ambiguous_column_is_an_error(tmp_path, header, message):
    from streetvision.data.sources import manifest_records

    path = tmp_path / "m.csv"
    path.write_text(f"{header}\na.jpg,1,s1,s1\n")
    with pytest.raises(DataError, match=re.escape(message)):
        manifest_records(path)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"path": "a.jpg", "label": "1", "scene": "x"}) + "\n")
    with pytest.raises(DataError, match="line 1: unknown column"):
        manifest_records(jsonl)


def test_data_report_shows_shares_class_ratios_and_warns_about_a_large_group(tmp_path):
    """One 30-frame sequence in 100 images: placed as a whole, listed first among the largest groups, warned."""
    root = tmp_path / "m"
    write_manifest(root, n=80, fmt="csv")
    lines = (root / "manifest.csv").read_text().splitlines()
    header, rows = lines[0], [line for line in lines[1:] if "missing" not in line and "odd" not in line]
    fields = header.split(",")
    big = []
    for line in rows[:30]:
        cells = line.split(",")
        cells[fields.index("group_id")] = "long-sequence"
        big.append(",".join(cells))
    (root / "manifest.csv").write_text("\n".join([header, *big, *rows[30:]]) + "\n")
    _, out, _ = ingest(tmp_path, "data.source=manifest", f"data.manifest={root / 'manifest.csv'}", name="r")
    report = json.loads((out / "report" / "report.json").read_text())
    splits = report["splits"]
    assert sum(s["share"] for s in splits.values()) == pytest.approx(1.0, abs=1e-3)
    for s in splits.values():
        assert s["positive_rate"] == pytest.approx(s["class_counts"]["1"] / s["count"], abs=1e-4)
    assert report["largest_groups"][0]["group"] == "manifest/long-sequence"
    assert report["largest_groups"][0]["images"] >= 25
    assert any("manifest/long-sequence" in w for w in report["warnings"])
    assert "WARNING: group manifest/long-sequence" in (out / "report" / "report.md").read_text()
