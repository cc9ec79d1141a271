"""Ingest: read a source, validate every record, group exact duplicates, split by group, write the cache.

Every input record ends in exactly one place: one split, or the quarantine list with its reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streetvision.config.schema import Config
from streetvision.contracts.errors import DataError
from streetvision.contracts.metadata import ArtifactMetadata, fingerprint_ids, prepare_output_dir, write_metadata
from streetvision.contracts.splits import Split
from streetvision.data.decode import DecodedImage, QuarantineReason, decode_image
from streetvision.data.shards import IMAGES_FILE, SAMPLES_FILE, class_counts
from streetvision.data.sources import SourceRecord, demo_records, manifest_records
from streetvision.data.splits import merge_groups, split_of_group
from streetvision.progress import log, progress

PHASE = "ingest"
QUARANTINE = "quarantine"


@dataclass
class Placed:
    index: int  # position in the source's record list
    record: SourceRecord
    label: int
    image: DecodedImage
    group: str  # after merging exact duplicates
    split: Split | None = None


def _load_and_decode(record: SourceRecord, size: int, min_size: int) -> DecodedImage:
    if not record.uri:
        raise QuarantineReason("unreadable", "record has no path")
    try:
        data = Path(record.uri).read_bytes()
    except OSError as exc:
        raise QuarantineReason("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}") from None
    return decode_image(data, size, min_size)


def _label_index(raw: str, names: list[str]) -> int:
    if raw in ("0", "1"):
        return int(raw)
    if raw in names:
        return names.index(raw)
    raise QuarantineReason("unknown_label", f"label {raw!r} is neither 0/1 nor one of data.label_names={names}")


def _partition_id(placed: list[Placed], cfg: Config) -> str:
    digest = hashlib.sha256(json.dumps(cfg.data.split.fractions(), sort_keys=True).encode())
    digest.update(str(cfg.data.split.seed).encode())
    for item in sorted(placed, key=lambda p: p.record.sample_id):
        digest.update(f"{item.record.sample_id}\t{item.split.value}\n".encode())
    return digest.hexdigest()[:16]


def _write_split(out_dir: Path, items: list[Placed], size: int) -> None:
    images = np.lib.format.open_memmap(out_dir / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=(len(items), size, size, 3))
    for i, item in enumerate(items):
        images[i] = item.image.pixels
    images.flush()
    del images
    table = pa.table(
        {
            "sample_id": [p.record.sample_id for p in items],
            "label": pa.array([p.label for p in items], pa.int64()),
            "group_id": [p.group for p in items],
            "source": [p.record.source for p in items],
            "uri": [p.record.uri for p in items],
            "orig_width": pa.array([p.image.width for p in items], pa.int32()),
            "orig_height": pa.array([p.image.height for p in items], pa.int32()),
        }
    )
    pq.write_table(table, out_dir / SAMPLES_FILE)


def run_ingest(cfg: Config, split_dirs: dict[Split, str | Path], report_dir: str | Path) -> dict[str, dict]:
    """Write the four split artifacts and the data report. Returns the metadata of each, keyed by name."""
    started = time.time()
    split_dirs = {split: prepare_output_dir(path) for split, path in split_dirs.items()}
    report_dir = prepare_output_dir(report_dir)
    size, data_cfg = cfg.model.img_size, cfg.data

    if data_cfg.source == "demo":
        log(f"generating demo scenes ({data_cfg.demo.num_sequences} sequences) ...")
        records = demo_records(data_cfg, report_dir / "demo_images")
    else:
        records = manifest_records(data_cfg.manifest)
    if not records:
        raise DataError("the source has no records", f"data.source={data_cfg.source}", "point data.* at images")
    log(f"{len(records)} records from source '{data_cfg.source}'; decoding to {size}x{size}")

    # Keyed by record index: every record, duplicates included, gets exactly one outcome.
    quarantined: dict[int, QuarantineReason] = {}
    first_index: dict[str, int] = {}
    for index, rec in enumerate(records):
        if rec.sample_id in first_index:
            quarantined[index] = QuarantineReason(
                "duplicate_record", f"sample id repeats record {first_index[rec.sample_id]} of the source"
            )
        else:
            first_index[rec.sample_id] = index

    def work(index: int) -> Placed | QuarantineReason:
        rec = records[index]
        try:
            label = _label_index(rec.label, data_cfg.label_names)
            return Placed(index, rec, label, _load_and_decode(rec, size, data_cfg.min_image_size), rec.group_id)
        except QuarantineReason as reason:
            return reason

    todo = [i for i in range(len(records)) if i not in quarantined]
    placed: list[Placed] = []
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        for index, outcome in progress(zip(todo, pool.map(work, todo)), total=len(todo), desc="decode", unit="image"):
            if isinstance(outcome, QuarantineReason):
                quarantined[index] = outcome
            else:
                placed.append(outcome)

    # Exact duplicates (same decoded pixels) join one group; conflicting labels among them are quarantined.
    by_hash: dict[str, list[Placed]] = defaultdict(list)
    for item in placed:
        by_hash[item.image.pixel_hash].append(item)
    conflicts = 0
    pairs = []
    for items in by_hash.values():
        if len({i.label for i in items}) > 1:
            conflicts += 1
            for i in items:
                quarantined[i.index] = QuarantineReason(
                    "conflicting_duplicate", f"identical pixels to {len(items) - 1} other record(s) with another label"
                )
        else:
            pairs += [(items[0].group, other.group) for other in items[1:]]
    placed = [p for p in placed if p.index not in quarantined]
    merged = merge_groups(pairs, [p.group for p in placed])
    for item in placed:
        item.group = merged[item.group]
        item.split = split_of_group(item.group, data_cfg.split)
    partition = _partition_id(placed, cfg)

    by_split: dict[Split, list[Placed]] = {s: [] for s in Split}
    for item in sorted(placed, key=lambda p: p.record.sample_id):
        by_split[item.split].append(item)

    report = _write_report(report_dir, records, placed, quarantined, by_split, conflicts, partition)
    _check_outcome(report, by_split, data_cfg.max_quarantine_fraction, report_dir)

    outputs = {}
    for split, items in by_split.items():
        _write_split(split_dirs[split], items, size)
        labels = np.array([p.label for p in items])
        meta = ArtifactMetadata(
            kind="split",
            phase=PHASE,
            split=split.value,
            count=len(items),
            class_counts=class_counts(labels),
            fingerprint=fingerprint_ids(p.record.sample_id for p in items),
            partition=partition,
            summary={"groups": len({p.group for p in items}), "image_size": size},
        )
        outputs[split.value] = write_metadata(split_dirs[split], meta)
    report_meta = ArtifactMetadata(
        kind="data_report",
        phase=PHASE,
        partition=partition,
        count=len(records),
        summary={
            "records": len(records),
            "placed": len(placed),
            "quarantined": len(quarantined),
            "majority_rate_val_test": report["splits"]["val_test"]["majority_rate"],
            "seconds": round(time.time() - started, 1),
        },
    )
    outputs["data_report"] = write_metadata(report_dir, report_meta)
    log(f"ingest done: {len(placed)} placed, {len(quarantined)} quarantined, partition {partition}")
    return outputs


def _write_report(report_dir, records, placed, quarantined, by_split, conflicts, partition) -> dict:
    placement = {p.index: p for p in placed}
    with open(report_dir / "records.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["record", "sample_id", "uri", "label", "source_group_id", "group_id", "source", "placement",
                         "reason"])
        for index, rec in enumerate(records):
            item, reason = placement.get(index), quarantined.get(index)
            writer.writerow([index, rec.sample_id, rec.uri, rec.label, rec.group_id, item.group if item else "",
                             rec.source, item.split.value if item else QUARANTINE, str(reason) if reason else ""])
    splits = {}
    for split, items in by_split.items():
        labels = np.array([p.label for p in items], dtype=np.int64)
        counts = class_counts(labels)
        splits[split.value] = {
            "count": len(items),
            "class_counts": counts,
            "groups": len({p.group for p in items}),
            "sources": dict(Counter(p.record.source for p in items)),
            "majority_rate": round(max(counts.values()) / len(items), 4) if items else None,
        }
    reasons = Counter(r.code for r in quarantined.values())
    report = {
        "records": len(records),
        "placed": len(placed),
        "quarantined": len(quarantined),
        "quarantine_fraction": round(len(quarantined) / max(1, len(records)), 4),
        "quarantine_reasons": dict(reasons.most_common()),
        "quarantine_examples": {
            code: [f"{records[i].sample_id}: {r.detail}" for i, r in sorted(quarantined.items()) if r.code == code][:3]
            for code in reasons
        },
        "exact_duplicate_label_conflicts": conflicts,
        "splits": splits,
        "partition": partition,
    }
    (report_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _check_outcome(report: dict, by_split: dict, max_fraction: float, report_dir: Path) -> None:
    where = f"ingest (data report: {report_dir})"
    if report["quarantine_fraction"] > max_fraction:
        worst = "; ".join(
            f"{code} x{n} (e.g. {report['quarantine_examples'][code][0]})"
            for code, n in list(report["quarantine_reasons"].items())[:3]
        )
        raise DataError(
            f"{report['quarantined']} of {report['records']} records quarantined "
            f"({report['quarantine_fraction']:.1%} > data.max_quarantine_fraction={max_fraction:.1%}): {worst}",
            where,
            "fix or remove those files (records.csv lists every one), or raise data.max_quarantine_fraction",
        )
    for split, items in by_split.items():
        counts = class_counts(np.array([p.label for p in items], dtype=np.int64))
        if min(counts.values()) == 0:
            raise DataError(
                f"split {split.name} has class counts {counts}: every split needs both classes",
                where,
                "add data, or change data.split.seed / data.split fractions",
            )
