"""Metadata every artifact carries, and the run-time checks each phase makes before using an input.

The KFP local runner hands downstream tasks a plain ``Artifact`` (custom types are dropped), so the types
alone cannot stop a mis-wired run. Each artifact directory therefore holds ``_streetvision.json``: what it
is, which split it came from, how many samples of each class, a fingerprint of its sample ids, the ingest
partition it belongs to, and its lineage (every split read upstream, in which role). The file is written
last: an artifact without it is incomplete, never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from streetvision import io as storage
from streetvision.contracts.errors import IncompleteArtifactError, LeakageViolationError
from streetvision.contracts.splits import Role, Split, check_access

METADATA_FILE = "_streetvision.json"
SCHEMA = "streetvision.artifact/v1"


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

    def to_dict(self) -> dict:
        return json_safe(asdict(self))

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
    """Write the completion record (atomically, last). Returns it as a dict for KFP artifact metadata."""
    data = meta.to_dict()
    storage.write_text(Path(path) / METADATA_FILE, json.dumps(data, indent=2, sort_keys=True))
    return data


def read_metadata(path: str | Path, where: str) -> ArtifactMetadata:
    record = Path(path) / METADATA_FILE
    if not record.is_file():
        raise IncompleteArtifactError(
            f"artifact at {path} has no completion record ({METADATA_FILE})",
            where,
            "the phase that writes it failed or is still running; rerun the pipeline (a resumed run redoes "
            "that phase) instead of using its partial output",
        )
    try:
        data = json.loads(record.read_text())
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA!r}")
        return ArtifactMetadata.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise IncompleteArtifactError(
            f"completion record {record} is unreadable: {exc}",
            where,
            "the artifact was written by another version or edited by hand; regenerate it by rerunning the phase",
        ) from exc


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
    """Read an input's metadata and check it is complete, of the right kind, and readable in `role`."""
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
    return meta
