"""On-disk formats of split data (the decoded uint8 cache) and of per-split logits.

A split artifact directory holds ``images.npy`` (N, S, S, 3) uint8 — decoded once at ingest at training
resolution, memory-mapped by readers — and ``samples.parquet`` (one row per image, same order). A logits
artifact holds ``predictions.parquet`` (sample_id, label, logit_0, logit_1). Both carry the metadata record
of ``contracts.metadata``; readers check it before touching the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streetvision.contracts.errors import DataError, LeakageViolationError
from streetvision.contracts.metadata import ArtifactMetadata, fingerprint_ids, require_input
from streetvision.contracts.splits import Role, Split
from streetvision.contracts.validators import validate_labels, validate_logits

IMAGES_FILE = "images.npy"
SAMPLES_FILE = "samples.parquet"
PREDICTIONS_FILE = "predictions.parquet"


@dataclass
class SplitData:
    split: Split
    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    sample_ids: list[str]
    labels: np.ndarray  # (N,) int64
    groups: list[str]
    sources: list[str]
    meta: ArtifactMetadata


@dataclass
class LogitsData:
    split: Split
    sample_ids: list[str]
    labels: np.ndarray
    logits: np.ndarray  # (N, 2) float32
    meta: ArtifactMetadata


def class_counts(labels: np.ndarray) -> dict[str, int]:
    return {str(c): int((labels == c).sum()) for c in (0, 1)}


def _require_split(meta: ArtifactMetadata, split: Split, where: str) -> ArtifactMetadata:
    # The role check passed; this catches wiring one readable split where another was meant (PREDICTION may
    # read VAL_SELECT and VAL_CALIB, but phase1's 'val_calib' input must be VAL_CALIB).
    if meta.split != split.value:
        raise LeakageViolationError(
            f"expected {split.name} data, got {str(meta.split).upper()}", where, f"wire the {split.name} split here"
        )
    return meta


def load_split(path: str | Path, *, split: Split, role: Role, phase: str, input_name: str) -> SplitData:
    """Open a split artifact after checking (from its metadata) that `role` may read it and it is `split`."""
    where = f"{phase}, input '{input_name}' ({path})"
    meta = _require_split(require_input(path, kind="split", phase=phase, input_name=input_name, role=role), split, where)
    table = pq.read_table(Path(path) / SAMPLES_FILE)
    images = np.load(Path(path) / IMAGES_FILE, mmap_mode="r")
    sample_ids = table.column("sample_id").to_pylist()
    labels = validate_labels(table.column("label").to_numpy(), where, expected_rows=len(sample_ids))
    if images.shape[0] != len(sample_ids) or meta.count != len(sample_ids):
        raise DataError(
            f"{images.shape[0]} images, {len(sample_ids)} sample rows, metadata says {meta.count}",
            where,
            "the split artifact is damaged; rerun ingest",
        )
    if fingerprint_ids(sample_ids) != meta.fingerprint:
        raise DataError(
            "sample ids do not match the fingerprint recorded at ingest",
            where,
            "the split was modified after ingest; rerun ingest instead of editing split artifacts",
        )
    return SplitData(
        split=split,
        images=images,
        sample_ids=sample_ids,
        labels=labels,
        groups=table.column("group_id").to_pylist(),
        sources=table.column("source").to_pylist(),
        meta=meta,
    )


def write_predictions(out_dir: str | Path, sample_ids: list[str], labels: np.ndarray, logits: np.ndarray) -> None:
    where = f"writing {out_dir}"
    logits = validate_logits(np.asarray(logits, dtype=np.float32), where, expected_rows=len(sample_ids))
    labels = validate_labels(labels, where, expected_rows=len(sample_ids))
    table = pa.table(
        {
            "sample_id": pa.array(sample_ids, pa.string()),
            "label": pa.array(labels, pa.int64()),
            "logit_0": pa.array(logits[:, 0], pa.float32()),
            "logit_1": pa.array(logits[:, 1], pa.float32()),
        }
    )
    pq.write_table(table, Path(out_dir) / PREDICTIONS_FILE)


def load_logits(path: str | Path, *, split: Split, role: Role, phase: str, input_name: str) -> LogitsData:
    where = f"{phase}, input '{input_name}' ({path})"
    meta = _require_split(
        require_input(path, kind="logits", phase=phase, input_name=input_name, role=role), split, where
    )
    table = pq.read_table(Path(path) / PREDICTIONS_FILE)
    sample_ids = table.column("sample_id").to_pylist()
    logits = np.stack([table.column("logit_0").to_numpy(), table.column("logit_1").to_numpy()], axis=1)
    logits = validate_logits(logits, where, expected_rows=len(sample_ids))
    labels = validate_labels(table.column("label").to_numpy(), where, expected_rows=len(sample_ids))
    if fingerprint_ids(sample_ids) != meta.fingerprint:
        raise DataError(
            "logit rows do not match the sample fingerprint in their metadata",
            where,
            "regenerate the logits with phase1 instead of editing them",
        )
    return LogitsData(split=split, sample_ids=sample_ids, labels=labels, logits=logits, meta=meta)
