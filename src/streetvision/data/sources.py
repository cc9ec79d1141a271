"""Where records come from: the demo generator or a CSV manifest. A record is not yet validated."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from streetvision.config.schema import DataConfig
from streetvision.contracts.errors import DataError


@dataclass(frozen=True)
class SourceRecord:
    sample_id: str  # unique and stable across runs: the key of the split hash and of the fingerprints
    uri: str  # where the bytes are (a local path)
    label: str  # as the source gives it: "0"/"1" or a label name; mapped (or quarantined) at ingest
    group_id: str  # near-duplicates (a dashcam sequence) share one; never split across splits
    source: str  # source tag, e.g. "demo", "real", "synthetic"


def demo_records(cfg: DataConfig, out_dir: Path) -> list[SourceRecord]:
    """Generate the demo scenes as JPEG files under `out_dir` and describe them."""
    from streetvision.data.demo import generate_demo_dataset

    generated = generate_demo_dataset(out_dir, cfg.demo, tuple(cfg.label_names))
    return [
        SourceRecord(
            sample_id=f"demo/{rec.path}",
            uri=str(out_dir / rec.path),
            label=str(rec.label),
            group_id=rec.group_id,
            source=rec.source,
        )
        for rec in generated
    ]


def manifest_records(manifest: str | Path) -> list[SourceRecord]:
    """Read a CSV manifest: columns path (or uri), label, optional group_id and source.

    Relative paths are relative to the manifest's folder. A record without a group id is its own group.
    """
    manifest = Path(manifest)
    where = f"data.manifest={manifest}"
    if not manifest.is_file():
        raise DataError(f"manifest {manifest} does not exist", where, "set data.manifest to a CSV file")
    with open(manifest, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        path_col = "path" if "path" in columns else "uri" if "uri" in columns else None
        if path_col is None or "label" not in columns:
            raise DataError(
                f"manifest columns are {sorted(columns)}; need 'path' (or 'uri') and 'label'",
                where,
                "add a header row: path,label[,group_id,source]",
            )
        records = []
        for line, row in enumerate(reader, start=2):
            raw = (row.get(path_col) or "").strip()
            path = Path(raw)
            uri = str(path if path.is_absolute() else manifest.parent / path)
            sample_id = raw or f"{manifest.name}:line{line}"
            records.append(
                SourceRecord(
                    sample_id=sample_id,
                    uri=uri if raw else "",
                    label=(row.get("label") or "").strip(),
                    group_id=(row.get("group_id") or "").strip() or sample_id,
                    source=(row.get("source") or "").strip() or "manifest",
                )
            )
    return records
