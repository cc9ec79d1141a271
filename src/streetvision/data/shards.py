"""On-disk formats of split data (the decoded uint8 cache) and of per-split logits.

A split artifact directory holds the image shards ``shards/images-00000.npy`` ... (each (n, S, S, 3) uint8,
decoded once at ingest at training resolution, memory-mapped by readers), ``shards.json`` (the shard list:
file, count, bytes) and ``samples.parquet`` (one row per image, in shard order: id, label, group,
source, source URI, pixel hash). Every file is written under a temporary name and renamed when complete;
``shards.json`` comes after the shards, and the metadata record after everything. A logits
artifact holds ``predictions.parquet`` (sample_id, label, logit_0, logit_1). Both carry the metadata record
of ``contracts.metadata``; readers check it before touching the data: its binding, the file list and sizes,
and the digests of the tables up front; each shard's digest when the shard is first read (once per process),
so an epoch never re-hashes the cache and a damaged shard is refused before any of it is used.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streetvision import io as storage
from streetvision.contracts.errors import DataError, IntegrityError, LeakageViolationError
from streetvision.contracts.metadata import ArtifactMetadata, fingerprint_ids, require_input, verify_file
from streetvision.contracts.splits import Role, Split
from streetvision.contracts.validators import validate_labels, validate_logits

SHARDS_DIR = "shards"
SHARDS_FILE = "shards.json"
SAMPLES_FILE = "samples.parquet"
PREDICTIONS_FILE = "predictions.parquet"
SHARDS_SCHEMA = "streetvision.shards/v1"
_NPY_HEADER_BYTES = 128  # a .npy header of a 4-D uint8 array (format 1.0 pads it to a multiple of 64)


class ShardedImages:
    """Read-only (N, S, S, 3) uint8 view over several memory-mapped shards.

    Supports len(), .shape, .dtype, .ndim, np.asarray(), and indexing by an int, a slice or an int array;
    indexing returns a plain uint8 numpy array (a copy), gathered shard by shard. `verifiers` (one per shard,
    or None) check a shard's content before its first read; each runs once.
    """

    def __init__(
        self,
        shards: list[np.ndarray],
        image_shape: tuple[int, int, int],
        verifiers: list[Callable[[], None]] | None = None,
    ):
        self._shards = shards
        self._unverified = dict(enumerate(verifiers)) if verifiers else {}
        self._verify_lock = threading.Lock()  # loader threads may touch a fresh shard at once
        counts = np.array([len(s) for s in shards], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.shape = (int(self._starts[-1]), *image_shape)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self[np.array([index])][0]
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        index = np.asarray(index)
        if index.size == 0:
            index = index.astype(np.int64)  # [] is float64 to numpy
        if index.dtype == bool:
            index = np.flatnonzero(index)
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
            raise IndexError(f"index with an int, a slice or a 1-D int array, got {index!r}")
        index = np.where(index < 0, index + len(self), index)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} images")
        out = np.empty((len(index), *self.shape[1:]), dtype=np.uint8)
        shard_of = np.searchsorted(self._starts, index, side="right") - 1
        for shard in np.unique(shard_of):
            self._verify(int(shard))
            where = np.flatnonzero(shard_of == shard)
            rows = index[where] - self._starts[shard]
            # Sorted reads are sequential on disk; scatter back to the requested order.
            order = np.argsort(rows, kind="stable")
            out[where[order]] = self._shards[shard][rows[order]]
        return out

    def _verify(self, shard: int) -> None:
        if shard not in self._unverified:  # the usual case, without the lock
            return
        with self._verify_lock:
            check = self._unverified.get(shard)
            if check is not None:
                check()  # raises on damage, and the shard stays unverified
                del self._unverified[shard]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[slice(None)]
        return whole if dtype is None else whole.astype(dtype)


@dataclass
class SplitData:
    split: Split
    images: ShardedImages  # (N, S, S, 3) uint8 over memory-mapped shards
    sample_ids: list[str]
    labels: np.ndarray  # (N,) int64
    groups: list[str]
    sources: list[str]
    meta: ArtifactMetadata
    original_sizes: np.ndarray | None = None  # (N, 2) width, height before resizing, when ingest recorded them


@dataclass
class LogitsData:
    split: Split
    sample_ids: list[str]
    labels: np.ndarray
    logits: np.ndarray  # (N, 2) float32
    meta: ArtifactMetadata
    # Deployment-style renders of the same images (VAL_CALIB only): (N, R, 2) logits and (N, R) challenge levels.
    render_logits: np.ndarray | None = None
    render_levels: np.ndarray | None = None

    @property
    def renders(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.render_logits is None or self.render_levels is None:
            return None
        return self.render_logits, self.render_levels


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
    meta = _require_split(
        require_input(path, kind="split", phase=phase, input_name=input_name, role=role), split, where
    )
    table = read_table(Path(path) / SAMPLES_FILE, where)
    images = open_shards(path, where, meta)
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
        original_sizes=np.stack([table.column("orig_width").to_numpy(), table.column("orig_height").to_numpy()], axis=1)
        if "orig_width" in table.column_names
        else None,
    )


def write_shard(out_dir: str | Path, index: int, images: np.ndarray) -> dict:
    """Write one shard atomically; returns its entry for shards.json."""
    folder = Path(out_dir) / SHARDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = f"images-{index:05d}.npy"

    images = np.ascontiguousarray(images, dtype=np.uint8)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.lib.format.write_array(handle, images, allow_pickle=False)

    storage.atomic_write(folder / name, write, size_hint=_NPY_HEADER_BYTES + images.nbytes)
    return {"file": f"{SHARDS_DIR}/{name}", "count": int(len(images)), "bytes": (folder / name).stat().st_size}


def write_shard_manifest(out_dir: str | Path, shards: list[dict], image_shape: tuple[int, int, int]) -> None:
    """shards.json, written (atomically) only after every shard it lists is in place."""
    out_dir = Path(out_dir)
    body = {
        "schema": SHARDS_SCHEMA,
        "image_shape": list(image_shape),
        "dtype": "uint8",
        "count": int(sum(s["count"] for s in shards)),
        "shards": shards,
    }
    storage.write_text(out_dir / SHARDS_FILE, json.dumps(body, indent=2))


_DAMAGED = "the split artifact is damaged; rerun ingest (`streetvision run --resume RUN` reruns a damaged ingest)"


def read_table(file: Path, where: str) -> pa.Table:
    """A parquet table; a file that does not parse is refused by name, not with a raw pyarrow error."""
    try:
        return pq.read_table(file)
    except (OSError, pa.ArrowException) as exc:  # ArrowInvalid, corrupt snappy data, a torn footer
        raise IntegrityError(f"{file} is not a readable parquet table: {exc}", where, _DAMAGED) from exc


def open_shards(path: str | Path, where: str = "", meta: ArtifactMetadata | None = None) -> ShardedImages:
    """Memory-map every shard listed in shards.json, checking each one's count, shape and size. With the
    artifact's (verified) record, each shard's digest is checked when the shard is first read."""
    path = Path(path)
    where = where or str(path)
    manifest_path = path / SHARDS_FILE
    if not manifest_path.is_file():
        raise DataError(f"no {SHARDS_FILE} in the split artifact", where, "rerun ingest; the cache is incomplete")
    try:
        manifest = json.loads(manifest_path.read_bytes())
        height, width, channels = (int(v) for v in manifest["image_shape"])
        image_shape = (height, width, channels)
        entries = [(str(e["file"]), int(e["count"]), int(e["bytes"])) for e in manifest["shards"]]
    except (ValueError, TypeError, KeyError) as exc:
        raise IntegrityError(f"{manifest_path} is unreadable: {exc!r}", where, _DAMAGED) from exc
    shards: list[np.ndarray] = []
    verifiers: list[Callable[[], None]] = []
    for name, count, size in entries:
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            raise IntegrityError(f"shard {name} is missing or has the wrong size", where, _DAMAGED)
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:  # "Cannot parse header", "mmap length is greater than file size"
            raise IntegrityError(f"shard {file} is not a readable .npy array: {exc}", where, _DAMAGED) from exc
        if array.dtype != np.uint8 or array.shape != (count, *image_shape):
            raise IntegrityError(
                f"shard {name} has shape {array.shape} {array.dtype}, expected "
                f"({count}, {', '.join(map(str, image_shape))}) uint8",
                where,
                _DAMAGED,
            )
        shards.append(array)
        if meta is not None:
            verifiers.append(functools.partial(verify_file, path, meta, name, where))
    return ShardedImages(shards, image_shape, verifiers or None)


def write_predictions(
    out_dir: str | Path,
    sample_ids: list[str],
    labels: np.ndarray,
    logits: np.ndarray,
    renders: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """One row per sample; `renders` = ((N, R, 2) logits, (N, R) levels) adds each image's deployment renders."""
    where = f"writing {out_dir}"
    logits = validate_logits(np.asarray(logits, dtype=np.float32), where, expected_rows=len(sample_ids))
    labels = validate_labels(labels, where, expected_rows=len(sample_ids))
    columns = {
        "sample_id": pa.array(sample_ids, pa.string()),
        "label": pa.array(labels, pa.int64()),
        "logit_0": pa.array(logits[:, 0], pa.float32()),
        "logit_1": pa.array(logits[:, 1], pa.float32()),
    }
    if renders is not None:
        render_logits, levels = np.asarray(renders[0], dtype=np.float32), np.asarray(renders[1], dtype=np.int64)
        validate_logits(render_logits.reshape(-1, 2), where, expected_rows=levels.size)
        columns["render_level"] = pa.array(list(levels), pa.list_(pa.int64()))
        columns["render_logit_0"] = pa.array(list(render_logits[:, :, 0]), pa.list_(pa.float32()))
        columns["render_logit_1"] = pa.array(list(render_logits[:, :, 1]), pa.list_(pa.float32()))
    pq.write_table(pa.table(columns), Path(out_dir) / PREDICTIONS_FILE)


def load_logits(path: str | Path, *, split: Split, role: Role, phase: str, input_name: str) -> LogitsData:
    where = f"{phase}, input '{input_name}' ({path})"
    meta = _require_split(
        require_input(path, kind="logits", phase=phase, input_name=input_name, role=role), split, where
    )
    table = read_table(Path(path) / PREDICTIONS_FILE, where)
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
    data = LogitsData(split=split, sample_ids=sample_ids, labels=labels, logits=logits, meta=meta)
    if "render_level" in table.column_names:
        rows = table.column("render_level").to_pylist()
        if len({len(r) for r in rows}) != 1 or not rows[0]:
            raise DataError(
                "rows hold different numbers of deployment renders", where, "regenerate the logits with phase1"
            )
        levels = np.array(rows, dtype=np.int64)
        pair = [np.array(table.column(f"render_logit_{k}").to_pylist(), dtype=np.float32) for k in (0, 1)]
        render_logits = np.stack(pair, axis=-1).reshape(*levels.shape, 2)
        validate_logits(render_logits.reshape(-1, 2), where, expected_rows=levels.size)
        data.render_logits, data.render_levels = render_logits, levels
    return data
