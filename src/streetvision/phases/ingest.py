"""Ingest: read the sources, validate every record, group duplicates, split by group, write the shard cache.

Every input record ends in exactly one place: one split, or the quarantine list with its reason.

Flow: list records (source by source) -> pre-checks (repeated id, label, listing problems) -> read bytes
(parallel, retried; parquet row group by row group) -> decode + resize on all cores into a staging array
on disk (memory stays bounded) -> exact duplicates (pixel hash) and near duplicates (pHash within a Hamming
radius) join groups (connected components) -> seeded group hash picks the split -> shards per split,
samples table, data report, and the completion records last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streetvision import io as storage
from streetvision.cluster_env import usable_cpus
from streetvision.config.schema import Config, DataConfig, SourceConfig
from streetvision.contracts.errors import DataError
from streetvision.contracts.metadata import (
    ArtifactMetadata,
    fingerprint_ids,
    prepare_output_dir,
    write_metadata,
)
from streetvision.contracts.splits import Split
from streetvision.data.decode import DecodedImage, QuarantineReason, decode_image, read_image_file, unreadable
from streetvision.data.report import REPORT_HTML, write_data_report
from streetvision.data.shards import SAMPLES_FILE, class_counts, write_shard, write_shard_manifest
from streetvision.data.sources import SourceRecord, read_parquet_images, read_sources
from streetvision.data.splits import (
    GroupFacts,
    assign_splits,
    hamming_distances,
    merge_groups,
    near_duplicate_clusters,
    near_duplicate_pairs,
)
from streetvision.phases.result import PhasePaths, PhaseResult
from streetvision.progress import progress

logger = logging.getLogger(__name__)

PHASE = "ingest"
QUARANTINE = "quarantine"
# Decoded pixels of every record wait here (a memory-mapped array beside TRAIN's shards) until the splits are
# known. The owner file names the process that fills it, so a later run can tell a killed ingest's leftover
# (removed by `remove_stale_staging`) from a live one.
STAGING_DIR = ".ingest-staging"
_NO_PIXELS = np.zeros((0, 0, 3), dtype=np.uint8)
STAGING_OWNER = "owner.json"


def _claim_staging(parent: Path) -> Path:
    staging_dir = parent / STAGING_DIR
    shutil.rmtree(staging_dir, ignore_errors=True)  # an earlier attempt's leftover in this very folder
    staging_dir.mkdir()
    owner = {"host": socket.gethostname(), "pid": os.getpid()}
    storage.write_text(staging_dir / STAGING_OWNER, json.dumps(owner))
    return staging_dir


def _owner_alive(staging_dir: Path) -> bool:
    try:
        owner = json.loads((staging_dir / STAGING_OWNER).read_text())
        if owner["host"] != socket.gethostname():
            return True  # another machine's process: not ours to judge
        os.kill(int(owner["pid"]), 0)  # signal 0: only asks whether the process exists
    except (OSError, ValueError, KeyError, TypeError):  # no (readable) owner, or no such process
        return False
    return True


def remove_stale_staging(root: str | Path) -> list[Path]:
    """Remove the staging folders under `root` whose ingest was killed (its process is gone); return them.

    A killed ingest never reaches its own clean-up, and a resumed run writes its outputs to fresh folders, so
    without this the leftover (as large as every decoded image) would stay forever.
    """
    stale = [d for d in Path(root).rglob(STAGING_DIR) if d.is_dir() and not _owner_alive(d)]
    for staging_dir in stale:
        shutil.rmtree(staging_dir, ignore_errors=True)
        logger.info(f"removed the staging folder a killed ingest left behind: {staging_dir}")
    return stale


@dataclass
class Placed:
    index: int  # position in the record list
    record: SourceRecord
    label: int
    image: DecodedImage  # pixels are in the staging array, row `index`; `image.pixels` is dropped
    group: str  # after merging duplicates
    split: Split | None = None


def decode_workers(cfg: DataConfig) -> int:
    return cfg.workers or usable_cpus()


def label_index(raw: str, names: list[str], src: SourceConfig | None = None) -> int:
    """0/1, a name in data.label_names, or one of the source's extra spellings; else quarantined."""
    if raw in ("0", "1"):
        return int(raw)
    if raw in names:
        return names.index(raw)
    if src is not None:
        if raw in src.negative_labels:
            return 0
        if raw in src.positive_labels:
            return 1
    extra = " or the source's negative_labels/positive_labels" if src is not None else ""
    raise QuarantineReason("unknown_label", f"label {raw!r} is neither 0/1 nor one of data.label_names={names}{extra}")


def _fetch_unit(
    unit: tuple, records: list[SourceRecord], sources: dict[str, SourceConfig], max_bytes: int
) -> list[tuple[int, object]]:
    """Bytes (or the reason they could not be read) of one file, or of every listed row of one row group."""
    if unit[0] == "file":
        index = unit[1]
        try:
            return [(index, read_image_file(records[index].uri, max_bytes))]
        except QuarantineReason as reason:  # this record's problem, not the run's
            return [(index, reason)]
    _, file, row_group, indices = unit
    try:
        column = read_parquet_images(file, row_group, sources[records[indices[0]].origin].image_column)
    except Exception as exc:
        return [(i, unreadable(exc)) for i in indices]
    out: list[tuple[int, object]] = []
    for i in indices:
        data = column[records[i].row]
        if data is None:
            out.append((i, QuarantineReason("zero_byte", "the row's image is null")))
        elif len(data) > max_bytes:
            out.append((i, QuarantineReason("too_large", f"the image is over data.max_record_bytes={max_bytes} bytes")))
        else:
            out.append((i, data))
    return out


def _work_units(records: list[SourceRecord], todo: list[int]) -> list[tuple]:
    """One unit per file; one per parquet row group (its image column is read once for all its rows)."""
    units: list[tuple] = []
    by_row_group: dict[tuple[str, int], list[int]] = {}
    for i in todo:
        rec = records[i]
        if rec.row_group < 0:
            units.append(("file", i))
            continue
        key = (rec.uri, rec.row_group)
        if key not in by_row_group:
            by_row_group[key] = []
            units.append(("parquet", rec.uri, rec.row_group, by_row_group[key]))
        by_row_group[key].append(i)
    return units


def decode_records(
    records: list[SourceRecord],
    todo: list[int],
    cfg: DataConfig,
    size: int,
    staging: np.ndarray,
    sources: dict[str, SourceConfig],
) -> Iterator[tuple[int, DecodedImage | QuarantineReason]]:
    """Read and decode `todo` records; pixels go to `staging[index]`. Yields each record's outcome."""
    units = _work_units(records, todo)
    remote = any(storage.is_gcs(records[i].uri) for i in todo)
    n_decode = decode_workers(cfg)
    n_io = cfg.io_workers if remote else min(cfg.io_workers, 2 * n_decode)

    def decode(item: tuple[int, bytes | QuarantineReason]) -> tuple[int, DecodedImage | QuarantineReason]:
        index, data = item
        if isinstance(data, QuarantineReason):
            return index, data
        try:
            image = decode_image(data, size, cfg.min_image_size)
        except QuarantineReason as reason:
            return index, reason
        staging[index] = image.pixels
        image.pixels = _NO_PIXELS  # the staging row holds them; keep memory flat
        return index, image

    with (
        ThreadPoolExecutor(n_io, thread_name_prefix="read") as io_pool,
        ThreadPoolExecutor(n_decode, thread_name_prefix="decode") as decode_pool,
    ):
        fetched = storage.prefetch(
            io_pool, lambda u: _fetch_unit(u, records, sources, cfg.max_record_bytes), units, ahead=2 * n_io
        )
        flat = (item for batch in fetched for item in batch)
        yield from storage.prefetch(decode_pool, decode, flat, ahead=4 * n_decode)


def _group_facts(placed: list[Placed]) -> dict[str, GroupFacts]:
    labels: dict[str, Counter] = defaultdict(Counter)
    for item in placed:
        labels[item.group][item.label] += 1
    return {group: GroupFacts(sum(c.values()), int(c[1] >= c[0])) for group, c in labels.items()}


def _partition_id(placed: list[Placed], cfg: Config) -> str:
    digest = hashlib.sha256(json.dumps(cfg.data.split.model_dump(), sort_keys=True).encode())
    for item in sorted(placed, key=lambda p: p.record.sample_id):
        assert item.split is not None, "placed before the partition is named"
        digest.update(f"{item.record.sample_id}\t{item.split.value}\n".encode())
    return digest.hexdigest()[:16]


def _write_split(out_dir: Path, items: list[Placed], staging: np.ndarray, size: int, shard_images: int) -> None:
    shards = []
    for k, start in enumerate(range(0, len(items), shard_images)):
        rows = np.array([p.index for p in items[start : start + shard_images]], dtype=np.int64)
        shards.append(write_shard(out_dir, k, staging[rows]))
    table = pa.table(
        {
            "sample_id": [p.record.sample_id for p in items],
            "label": pa.array([p.label for p in items], pa.int64()),
            "group_id": [p.group for p in items],
            "source": [p.record.source for p in items],
            "uri": [p.record.location for p in items],
            "pixel_sha256": [p.image.pixel_hash for p in items],
            "phash": pa.array([f"{p.image.phash:016x}" for p in items], pa.string()),
            "orig_width": pa.array([p.image.width for p in items], pa.int32()),
            "orig_height": pa.array([p.image.height for p in items], pa.int32()),
        }
    )
    storage.atomic_write(out_dir / SAMPLES_FILE, lambda tmp: pq.write_table(table, tmp))
    write_shard_manifest(out_dir, shards, (size, size, 3))


def _dedupe(placed: list[Placed], quarantined: dict[int, QuarantineReason], cfg: DataConfig) -> dict:
    """Join exact and near duplicates into groups; apply the label-conflict rule. Returns report facts."""
    by_hash: dict[str, list[Placed]] = defaultdict(list)
    for item in placed:
        by_hash[item.image.pixel_hash].append(item)
    pairs: list[tuple[str, str]] = []
    exact_groups, conflicts = [], []
    for items in by_hash.values():
        if len(items) < 2:
            continue
        labels = Counter(i.label for i in items)
        ids = sorted(i.record.sample_id for i in items)
        if len(labels) > 1:
            top = labels.most_common()
            keep = top[0][0] if cfg.dedupe.label_conflict == "majority" and top[0][1] > top[1][1] else None
            conflicts.append(
                {"samples": ids, "labels": dict(sorted((str(k), v) for k, v in labels.items())), "kept_label": keep}
            )
            for i in items:
                if i.label != keep:
                    quarantined[i.index] = QuarantineReason(
                        "conflicting_duplicate",
                        f"identical pixels to {len(items) - 1} other record(s), labels {dict(labels)} "
                        f"(data.dedupe.label_conflict={cfg.dedupe.label_conflict})",
                    )
            items = [i for i in items if i.label == keep]
        exact_groups.append(ids)
        pairs += [(items[0].group, other.group) for other in items[1:]]
    placed[:] = [p for p in placed if p.index not in quarantined]

    # Exact duplicates (and a source's own groups) always stay together; near duplicates join those units by
    # complete linkage, so no chain of close pairs can join distinct images (streetvision.data.splits).
    exact = merge_groups(pairs, [p.group for p in placed])
    near_pairs, cluster = 0, {}
    if cfg.dedupe.near_duplicate_radius >= 0:
        hashed = [p for p in placed if not p.image.flat]
        hashes = np.array([p.image.phash for p in hashed], dtype=np.uint64)
        found = near_duplicate_pairs(hashes, cfg.dedupe.near_duplicate_radius)
        near_pairs = len(found)
        cluster = near_duplicate_clusters([exact[p.group] for p in hashed], found, hamming_distances(hashes, found))
    members: dict[str, set[str]] = defaultdict(set)
    for item in placed:
        unit = exact[item.group]
        merged = cluster.get(unit, unit)
        members[merged].add(item.group)
        item.group = merged
    joined = sorted(((g, sorted(m)) for g, m in members.items() if len(m) > 1), key=lambda gm: (-len(gm[1]), gm[0]))
    labels_by_group: dict[str, set[int]] = defaultdict(set)
    for item in placed:
        labels_by_group[item.group].add(item.label)
    mixed = sorted(g for g, labels in labels_by_group.items() if len(labels) > 1)
    return {
        "exact_duplicate_sets": len(exact_groups),
        "exact_duplicate_records": sum(len(g) for g in exact_groups),
        "exact_duplicate_label_conflicts": conflicts,
        "near_duplicate_pairs": near_pairs,
        "near_duplicate_radius": cfg.dedupe.near_duplicate_radius,
        "flat_images_not_hashed": sum(p.image.flat for p in placed),
        "joined_groups": len(joined),
        "joined_group_examples": [{"group": g, "source_groups": m[:20], "size": len(m)} for g, m in joined[:20]],
        "groups_with_mixed_labels": len(mixed),
        "mixed_label_group_examples": mixed[:20],
    }


def run_ingest(cfg: Config, paths: PhasePaths) -> PhaseResult:
    """Write the four split artifacts and the data report; the result carries the report's HTML page.

    Args:
        cfg: the run's config (``data``: sources, dedupe, split; ``model.img_size``: the shard resolution).
        paths: outputs ``train``, ``val_select``, ``val_calib``, ``val_test`` and ``data_report``.

    Returns:
        Each output's metadata (split, count, fingerprint of its sample ids) and the data report page.

    Raises:
        DataError: no records, a whole source unusable (missing manifest, wrong parquet columns, an unrendered
            demo source), more than ``data.max_quarantine_fraction`` quarantined, or an empty split.
    """
    started = time.time()
    out_dirs = {split: prepare_output_dir(paths.output(split.value)) for split in Split}
    report_dir = prepare_output_dir(paths.output("data_report"))
    size, data_cfg = cfg.model.img_size, cfg.data
    sources = {src.display_name(): src for src in data_cfg.source_list()}

    records = list(read_sources(data_cfg))
    if not records:
        raise DataError("the sources have no records", f"data.source={data_cfg.source}", "point data.* at images")
    per_source = Counter(r.origin for r in records)
    logger.info(
        f"{len(records)} records ({', '.join(f'{k}: {v}' for k, v in per_source.items())}); "
        f"decoding to {size}x{size} on {decode_workers(data_cfg)} threads"
    )

    # Keyed by record index: every record, duplicates included, gets exactly one outcome.
    quarantined: dict[int, QuarantineReason] = {}
    labels: dict[int, int] = {}
    first_index: dict[str, int] = {}
    for index, rec in enumerate(records):
        if rec.sample_id in first_index:
            quarantined[index] = QuarantineReason(
                "duplicate_record", f"sample id repeats record {first_index[rec.sample_id]} of the sources"
            )
            continue
        first_index[rec.sample_id] = index
        if rec.problem:
            code, _, detail = rec.problem.partition(": ")
            quarantined[index] = QuarantineReason(code, detail)
            continue
        try:
            labels[index] = label_index(rec.label, data_cfg.label_names, sources.get(rec.origin))
        except QuarantineReason as reason:
            quarantined[index] = reason

    todo = [i for i in range(len(records)) if i not in quarantined]
    staging_dir = _claim_staging(out_dirs[Split.TRAIN])
    staging: np.memmap | None = None
    try:
        shape = (max(1, len(records)), size, size, 3)
        with storage.naming_disk_full(staging_dir / "pixels.npy", int(np.prod(shape))):
            staging = np.lib.format.open_memmap(staging_dir / "pixels.npy", mode="w+", dtype=np.uint8, shape=shape)
            storage.reserve(staging_dir / "pixels.npy")  # a full disk fails here, by name, not by SIGBUS later
        placed: list[Placed] = []
        decode_started = time.time()
        outcomes = decode_records(records, todo, data_cfg, size, staging, sources)
        for index, outcome in progress(outcomes, total=len(todo), desc="read+decode", unit="image"):
            if isinstance(outcome, QuarantineReason):
                quarantined[index] = outcome
            else:
                placed.append(Placed(index, records[index], labels[index], outcome, records[index].group_id))
        decode_seconds = time.time() - decode_started

        dedupe = _dedupe(placed, quarantined, data_cfg)
        split_of, split_notes = assign_splits(_group_facts(placed), data_cfg.split)
        for note in split_notes:
            logger.info(f"split: {note}")
        for item in placed:
            item.split = split_of[item.group]
        dedupe["split_notes"] = split_notes
        partition = _partition_id(placed, cfg)
        by_split: dict[Split, list[Placed]] = {s: [] for s in Split}
        for item in sorted(placed, key=lambda p: p.record.sample_id):
            assert item.split is not None
            by_split[item.split].append(item)

        report = write_data_report(report_dir, cfg, records, labels, by_split, quarantined, dedupe, partition, staging)
        for warning in report["warnings"]:
            logger.warning(warning)
        _check_outcome(report, by_split, data_cfg.max_quarantine_fraction, report_dir)
        size_check = report["calibration_size"]
        (logger.info if size_check["reachable"] else logger.warning)(size_check["message"])

        metas: dict[str, ArtifactMetadata] = {}
        for split, items in by_split.items():
            _write_split(out_dirs[split], items, staging, size, data_cfg.shard_images)
            split_labels = np.array([p.label for p in items], dtype=np.int64)
            meta = ArtifactMetadata(
                kind="split",
                phase=PHASE,
                split=split.value,
                count=len(items),
                class_counts=class_counts(split_labels),
                fingerprint=fingerprint_ids(p.record.sample_id for p in items),
                partition=partition,
                summary={
                    "groups": len({p.group for p in items}),
                    "image_size": size,
                    "sources": dict(sorted(Counter(p.record.source for p in items).items())),
                },
            )
            metas[split.value] = meta
    finally:
        staging = None
        shutil.rmtree(staging_dir, ignore_errors=True)

    # Completion records last: only now is every split (and the report) complete.
    outputs = {split.value: write_metadata(out_dirs[split], metas[split.value]) for split in Split}
    report_meta = ArtifactMetadata(
        kind="data_report",
        phase=PHASE,
        partition=partition,
        count=len(records),
        summary={
            "records": len(records),
            "placed": len(placed),
            "quarantined": len(quarantined),
            "near_duplicate_pairs": dedupe["near_duplicate_pairs"],
            "majority_rate_val_test": report["splits"]["val_test"]["majority_rate"],
            "val_calib_can_reach_target": report["calibration_size"]["reachable"],
            "min_error_free_accepted": report["calibration_size"]["min_error_free_accepted"],
            "decode_images_per_second": round(len(todo) / max(decode_seconds, 1e-9), 1),
            "seconds": round(time.time() - started, 1),
        },
    )
    outputs["data_report"] = write_metadata(report_dir, report_meta)
    logger.info(
        f"ingest done: {len(placed)} placed, {len(quarantined)} quarantined, "
        f"{dedupe['joined_groups']} groups joined by duplicates, partition {partition}"
    )
    return PhaseResult(PHASE, outputs, reports={"data_report_html": (report_dir / REPORT_HTML).read_text()})


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
