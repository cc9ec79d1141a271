"""Metadata every artifact carries, and the run-time checks each phase makes before using an input.

The KFP local runner hands downstream tasks a plain ``Artifact`` (custom types are dropped), so the types
alone cannot stop a mis-wired run. Each artifact directory therefore holds ``_streetvision.json``: what it
is, which split it came from, how many samples of each class, a fingerprint of its sample ids, the ingest
partition it belongs to, its lineage (every split read upstream, in which role), and the size and SHA-256 of
every file the artifact holds. The file is written last: an artifact without it is incomplete, never mistaken
for a finished one.

The record is bound by a digest over the canonical JSON of all its other fields, content digests included,
so editing one field (a relabelled ``split``) or one file (a flipped byte in a shard) fails verification.
This is integrity, not authenticity: anyone can recompute the digests. What it buys is that damage, and a
label edited alone, are refused; trusting who wrote an artifact needs a signature.

Readers check the binding, the file list and the sizes up front (cheap), hash the small files (parquet
tables, checkpoints, JSON) before using them, and leave the image shards to ``data.shards``, which hashes
each one when it is first read. A digest is computed once per process per file state (``file_digest``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from streetvision import io as storage
from streetvision.contracts.errors import IncompleteArtifactError, IntegrityError, LeakageViolationError
from streetvision.contracts.splits import Role, Split, check_access

METADATA_FILE = "_streetvision.json"
SCHEMA = "streetvision.artifact/v2"
# Files checked lazily by their reader (the image shards, hashed when first read), not when the record is read.
LAZY_PREFIXES = ("shards/",)


@dataclass(frozen=True)
class LineageEntry:
    """One split read by one phase in one role."""

    phase: str
    role: str
    split: str
    fingerprint: str
    count: int


@dataclass
class ArtifactMetadata:
    kind: str  # split | logits | checkpoint | policy | bundle | evaluation | data_report
    phase: str  # the producing phase
    split: str | None = None
    count: int | None = None
    class_counts: dict[str, int] | None = None
    fingerprint: str | None = None
    partition: str | None = None
    lineage: list[LineageEntry] = field(default_factory=list)
    # Phase-specific numbers shown in the run summary (small, JSON-able).
    summary: dict = field(default_factory=dict)
    schema: str = SCHEMA
    created_unix: float = field(default_factory=time.time)
    # Every file of the artifact but this record: relative path -> {"bytes": n, "sha256": hex}. Filled by
    # write_metadata from what is on disk.
    contents: dict[str, dict] = field(default_factory=dict)
    digest: str | None = None  # SHA-256 of the canonical JSON of every other field (record_digest)

    def to_dict(self) -> dict:
        return json_safe(asdict(self))

    def for_kfp(self) -> dict:
        """The record as KFP artifact metadata: without the per-file list, which can be long (a shard per
        thousand images) and lives in the file; the digest that binds it stays, so a downstream task's
        cache key follows this artifact's content."""
        return {k: v for k, v in self.to_dict().items() if k != "contents"}

    @classmethod
    def from_dict(cls, data: dict) -> ArtifactMetadata:
        data = dict(data)
        data["lineage"] = [LineageEntry(**e) for e in data.get("lineage", [])]
        return cls(**data)

    def reads(self, phase: str, role: Role) -> LineageEntry:
        """The lineage entry recording that `phase` read this (split) artifact in `role`."""
        return LineageEntry(phase, role.value, str(self.split), str(self.fingerprint), int(self.count or 0))


def json_safe(value):
    """Replace NaN/inf by None (JSON has no NaN; KFP's metadata protobuf refuses it) and numpy scalars by
    Python ones, recursively."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fingerprint_ids(ids: Iterable[str]) -> str:
    """Order-independent fingerprint of a set of sample ids."""
    digest = hashlib.sha256()
    for sample_id in sorted(ids):
        digest.update(sample_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def record_digest(data: dict) -> str:
    """SHA-256 of a record's canonical JSON (sorted keys, no whitespace), its own `digest` field left out."""
    body = {k: v for k, v in data.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_digest_lock = threading.Lock()
# (real path, inode, size, mtime in ns) -> SHA-256: a file is hashed once per process while it is unchanged.
_digests: dict[tuple[str, int, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """The file's SHA-256, memoized per process on its identity and state (a rewritten file is hashed again)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with _digest_lock:
        known = _digests.get(key)
    if known is None:
        with open(path, "rb") as handle:
            known = hashlib.file_digest(handle, "sha256").hexdigest()
        with _digest_lock:
            _digests[key] = known
    return known


def _files(root: Path) -> dict[str, Path]:
    """Every file under an artifact directory but its record, by path relative to it (with '/')."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            file = Path(dirpath) / name
            relative = file.relative_to(root).as_posix()
            if relative != METADATA_FILE:
                found[relative] = file
    return found


def prepare_output_dir(path: str | Path) -> Path:
    """Start an output artifact from empty: a retried task must not inherit a previous attempt's files."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.mkdir(parents=True)
    return path


def write_metadata(path: str | Path, meta: ArtifactMetadata) -> dict:
    """Write the completion record (atomically, last), listing and hashing every file the artifact holds now,
    and bound by its digest. Returns it as KFP artifact metadata (`ArtifactMetadata.for_kfp`)."""
    meta.contents = {
        relative: {"bytes": file.stat().st_size, "sha256": file_digest(file)}
        for relative, file in _files(Path(path)).items()
    }
    # Through JSON first, so the digest is over exactly what a reader will parse (e.g. int keys become str).
    data = json.loads(json.dumps({**meta.to_dict(), "digest": None}))
    meta.digest = data["digest"] = record_digest(data)
    storage.write_text(Path(path) / METADATA_FILE, json.dumps(data, indent=2, sort_keys=True))
    return meta.for_kfp()


_REGENERATE = (
    "do not edit or reuse damaged artifacts: rerun the phase that wrote it (`streetvision run --resume RUN` "
    "re-verifies a run's outputs and reruns the phases whose outputs fail)"
)


def read_metadata(path: str | Path, where: str) -> ArtifactMetadata:
    """The completion record, after checking that it is bound (no field edited) and that the artifact holds
    exactly the files it lists, at their sizes. Contents are hashed by `verify_contents`."""
    record = Path(path) / METADATA_FILE
    if not record.is_file():
        raise IncompleteArtifactError(
            f"artifact at {path} has no completion record ({METADATA_FILE})",
            where,
            "the phase that writes it failed or is still running; rerun the pipeline (a resumed run redoes "
            "that phase) instead of using its partial output",
        )
    try:
        data = json.loads(record.read_bytes())
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, expected an object")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise IntegrityError(f"completion record {record} is unreadable: {exc}", where, _REGENERATE) from exc
    if data.get("schema") != SCHEMA:
        raise IncompleteArtifactError(
            f"completion record {record} has schema {data.get('schema')!r}, expected {SCHEMA!r}",
            where,
            "the artifact was written by another version; regenerate it by rerunning the phase",
        )
    if data.get("digest") != record_digest(data):
        raise IntegrityError(
            f"completion record {record} does not match its digest: a field was edited after it was written",
            where,
            _REGENERATE,
        )
    try:
        meta = ArtifactMetadata.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise IntegrityError(f"completion record {record} is malformed: {exc}", where, _REGENERATE) from exc
    on_disk = _files(Path(path))
    missing = sorted(set(meta.contents) - set(on_disk))
    extra = sorted(set(on_disk) - set(meta.contents))
    resized = sorted(
        f"{name} ({on_disk[name].stat().st_size} bytes, recorded {meta.contents[name]['bytes']})"
        for name in set(meta.contents) & set(on_disk)
        if on_disk[name].stat().st_size != meta.contents[name]["bytes"]
    )
    if missing or extra or resized:
        problems = [f"missing: {', '.join(missing)}"] if missing else []
        problems += [f"not in the record: {', '.join(extra)}"] if extra else []
        problems += [f"wrong size: {', '.join(resized)}"] if resized else []
        raise IntegrityError(
            f"artifact at {path} does not hold the files its completion record lists ({'; '.join(problems)})",
            where,
            _REGENERATE,
        )
    return meta


def verify_file(path: str | Path, meta: ArtifactMetadata, relative: str, where: str) -> None:
    """Hash one file of an artifact and compare it with the record."""
    expected = meta.contents.get(relative)
    if expected is None:
        raise IntegrityError(f"{relative} is not listed in the completion record of {path}", where, _REGENERATE)
    if file_digest(Path(path) / relative) != expected["sha256"]:
        raise IntegrityError(
            f"{Path(path) / relative} is damaged: its SHA-256 differs from the one recorded when it was written",
            where,
            _REGENERATE,
        )


def verify_contents(path: str | Path, meta: ArtifactMetadata, where: str, lazy: Iterable[str] = LAZY_PREFIXES) -> None:
    """Hash every file of the artifact (but those under the `lazy` prefixes, which their reader verifies)."""
    lazy = tuple(lazy)
    for relative in meta.contents:
        if not relative.startswith(lazy):
            verify_file(path, meta, relative, where)


def verify_artifact(path: str | Path, where: str) -> ArtifactMetadata:
    """Everything, shards included: the record's binding, its file list, and every file's digest."""
    meta = read_metadata(path, where)
    verify_contents(path, meta, where, lazy=())
    return meta


def check_lineage(lineage: Iterable[LineageEntry], where: str, forbid: Iterable[Split] = ()) -> None:
    """Every upstream read must have obeyed the policy; `forbid` lists splits that may not appear at all."""
    forbidden = {Split(s) for s in forbid}
    for entry in lineage:
        check_access(Role(entry.role), entry.split, f"{where} (upstream: {entry.phase} read {entry.split})")
        if Split(entry.split) in forbidden:
            raise LeakageViolationError(
                f"this input was derived from {entry.split.upper()} data (read by {entry.phase} as {entry.role})",
                where,
                f"{entry.split.upper()} may not influence this step; rebuild the input without it",
            )


def check_same_partition(metas: dict[str, ArtifactMetadata], where: str) -> str:
    """All inputs must come from one ingest partition: splits of different ingests can share samples."""
    partitions = {name: m.partition for name, m in metas.items()}
    distinct = set(partitions.values())
    if len(distinct) != 1 or None in distinct:
        raise LeakageViolationError(
            f"inputs come from different (or unknown) ingest partitions: {partitions}",
            where,
            "use splits, logits and models produced from one ingest run; samples of two different splittings "
            "can sit in TRAIN of one and VAL_TEST of the other",
        )
    partition = distinct.pop()
    assert partition is not None  # refused above
    return partition


def require_input(
    path: str | Path, *, kind: str, phase: str, input_name: str, role: Role | None = None
) -> ArtifactMetadata:
    """Read an input's metadata and check it is complete, of the right kind, readable in `role`, and that its
    files are the ones written (the image shards are verified by their reader, when first read)."""
    where = f"{phase}, input '{input_name}' ({path})"
    meta = read_metadata(path, where)
    if meta.kind != kind:
        raise LeakageViolationError(
            f"expected a '{kind}' artifact, got '{meta.kind}' (produced by {meta.phase})",
            where,
            f"wire the '{kind}' output of the right upstream phase into '{input_name}'",
        )
    if role is not None:
        check_access(role, meta.split, where)
    check_lineage(meta.lineage, where)
    verify_contents(path, meta, where)
    return meta
