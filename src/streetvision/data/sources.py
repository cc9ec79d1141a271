"""Where records come from: an image folder, a CSV/JSONL manifest or parquet files.

Each source is a local path or a ``gs://bucket/prefix`` (read through ``streetvision.io``: paged
listing, retries). A record is not yet validated: its bytes are read and checked at ingest, and any
problem there quarantines it. Problems with a whole source (a missing manifest, a parquet file without the
label column) raise ``DataError``: they are configuration mistakes, not bad records.

Sample ids and group ids are prefixed with the source's name (``natix/train-0001.parquet/17``), so several
sources never collide, and each record carries a source tag (the name, or the manifest's / parquet's own
``source`` value such as ``real`` or ``synthetic``).
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from streetvision import io as storage
from streetvision.config.schema import DataConfig, SourceConfig
from streetvision.contracts.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# A manifest's group column, under its common names; any other unknown column is an error, never ignored.
GROUP_COLUMNS = ("group_id", "group", "sequence")
MANIFEST_COLUMNS = ("path", "uri", "label", "source", *GROUP_COLUMNS)


def _check_manifest_columns(columns, uri: str, line: str = "") -> None:
    unknown = sorted(set(columns) - set(MANIFEST_COLUMNS))
    groups = [c for c in GROUP_COLUMNS if c in columns]
    problem = (unknown and f"unknown column(s) {unknown}") or (len(groups) > 1 and f"several group columns {groups}")
    if problem:
        raise DataError(
            f"{line}{problem}; a manifest has path (or uri), label, and optionally source and one group column "
            f"({' / '.join(GROUP_COLUMNS)})",
            f"manifest {uri}",
            "rename or drop the column (a sequence or scene id belongs in the group column)",
        )


MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")


@dataclass(frozen=True)
class SourceRecord:
    sample_id: str  # unique and stable across runs: the key of the fingerprints
    uri: str  # where the bytes are: a file, or (parquet) the file holding them
    label: str  # as the source gives it: "0"/"1" or a label name; mapped (or quarantined) at ingest
    group_id: str  # near-duplicates (a dashcam sequence) share one; never split across splits
    source: str  # source tag, e.g. "demo", "real", "synthetic"
    origin: str = ""  # name of the configured source the record came from
    row_group: int = -1  # parquet: row group and row within it that hold the image bytes
    row: int = -1
    problem: str = ""  # a problem found while listing (e.g. a file outside the label folders)

    @property
    def location(self) -> str:
        return f"{self.uri}#row_group={self.row_group},row={self.row}" if self.row_group >= 0 else self.uri


def read_sources(cfg: DataConfig) -> Iterator[SourceRecord]:
    """Every record of every configured source, source by source, in a stable order.

    Raises:
        DataError: a whole source is unusable (see the module's docstring), or a demo source that was not
            rendered into a folder first.
    """
    for src in cfg.source_list():
        if src.kind == "demo":
            # The renderer is a package of its own (streetvision_demo), not part of the library or its images.
            raise DataError(
                "the demo scenes were not rendered: a demo source is turned into a manifest before the run",
                f"data source {src.display_name()!r} (kind: demo)",
                "run the pipeline with `streetvision run`, which renders them, or render them with "
                "`python -m streetvision_demo OUT_DIR` and set data.source=manifest data.manifest=OUT_DIR/manifest.csv",
            )
        if src.kind == "folder":
            yield from folder_records(src)
        elif src.kind == "manifest":
            yield from manifest_records(src, cfg.allow_outside_paths)
        elif src.kind == "parquet":
            yield from parquet_records(src)


def _folder(path: str) -> str:
    """A GCS prefix as a folder: 'gs://b/data' must not also list 'gs://b/data2/...'."""
    return path.rstrip("/") + "/" if storage.is_gcs(path) else path


def _relative(uri: str, root: str) -> str:
    root = root.rstrip("/")
    rel = uri[len(root) :].lstrip("/") if uri.startswith(root) else uri
    return rel.replace("\\", "/")


def folder_records(src: SourceConfig) -> Iterator[SourceRecord]:
    """<path>/<label name>/**/<image>: the first folder level is the label. Every file is a record; one
    outside a label folder, or not a jpg/png/webp, is kept and quarantined at ingest with its reason."""
    name = src.display_name()
    if not storage.is_dir(src.path):
        raise DataError(
            f"image folder {src.path} does not exist or is empty",
            f"{name}: path={src.path}",
            "point the source's path at <root> holding <root>/<label name>/*.jpg",
        )
    for uri in storage.list_files(_folder(src.path)):
        rel = _relative(uri, src.path)
        label, sep, _ = rel.partition("/")
        problem = ""
        if not sep:
            problem = "unknown_label: file is not inside a <label name>/ folder"
        elif not rel.lower().endswith(IMAGE_SUFFIXES):
            problem = f"unsupported_file: extension is not one of {', '.join(IMAGE_SUFFIXES)}"
        yield SourceRecord(
            sample_id=f"{name}/{rel}",
            uri=uri,
            label=label if sep else "",
            group_id=f"{name}/{rel}",
            source=name,
            origin=name,
            problem=problem,
        )


def _manifest_rows(text: str, uri: str) -> Iterator[tuple[int, dict]]:
    if uri.lower().endswith((".jsonl", ".json")):
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"line {line_no} is not valid JSON: {exc}",
                    f"manifest {uri}",
                    'write one JSON object per line: {"path": ..., "label": ...}',
                ) from None
            if not isinstance(row, dict):
                raise DataError(
                    f"line {line_no} is not a JSON object", f"manifest {uri}", "write one JSON object per line"
                )
            _check_manifest_columns(row, uri, f"line {line_no}: ")
            yield line_no, {k: "" if v is None else str(v) for k, v in row.items()}
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = set(reader.fieldnames or [])
    if not ({"path", "uri"} & columns) or "label" not in columns:
        raise DataError(
            f"manifest columns are {sorted(columns)}; need 'path' (or 'uri') and 'label'",
            f"manifest {uri}",
            "add a header row: path,label[,group_id,source]",
        )
    _check_manifest_columns(columns, uri)
    for line_no, row in enumerate(reader, start=2):
        yield line_no, {k: (v or "") for k, v in row.items() if k is not None}


def outside_root(target: str, root: str) -> str:
    """Why `target` lies outside the folder or gs:// prefix `root` ("" when it is inside). Local paths are
    compared after resolving symlinks, so a link inside the folder cannot point out of it."""
    if storage.is_gcs(root) or storage.is_gcs(target):

        def key(uri: str) -> str:
            return posixpath.normpath(uri.removeprefix(storage.GCS_SCHEME))

        inside = storage.is_gcs(root) and storage.is_gcs(target) and key(target).startswith(key(root) + "/")
        return "" if inside else f"{target} is outside the manifest's location {root}/"
    resolved, folder = Path(target).resolve(), Path(root).resolve()
    if resolved.is_relative_to(folder):
        return ""
    shown = f"{target} (resolves to {resolved})" if str(resolved) != target else target
    return f"{shown} is outside the manifest's folder {folder}"


def manifest_records(src: SourceConfig | str | Path, allow_outside: bool = False) -> list[SourceRecord]:
    """A CSV (header row) or JSONL manifest: path or uri, label, optional group (group_id, group or sequence)
    and source.

    Relative paths are relative to the manifest's folder (or prefix). A path outside it (../, absolute, a
    symlink out of it) is a record quarantined as outside_root unless `allow_outside` (data.allow_outside_paths).
    A record without a group id is its own group. A string argument is a manifest path with the default
    source name.
    """
    if not isinstance(src, SourceConfig):
        src = SourceConfig(kind="manifest", path=str(src))
    uri, name = src.path, src.display_name()
    where = f"{name}: manifest {uri}"
    if not uri.lower().endswith(MANIFEST_SUFFIXES):
        raise DataError(f"manifest {uri} is neither .csv nor .jsonl", where, "use a CSV or a JSONL manifest")
    try:
        text = storage.read_bytes(uri).decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(
            f"manifest {uri} does not exist", where, "set the manifest path to a CSV or JSONL file"
        ) from None
    except Exception as exc:
        if type(exc).__name__ == "NotFound":
            raise DataError(f"manifest {uri} does not exist", where, "check the gs:// URI") from None
        raise
    base = uri.rsplit("/", 1)[0] if storage.is_gcs(uri) else str(Path(uri).parent)
    records = []
    for line_no, row in _manifest_rows(text, uri):
        raw = (row.get("path") or row.get("uri") or "").strip()
        sample_id = f"{name}/{raw}" if raw else f"{name}/line{line_no}"
        group = next((row[c] for c in GROUP_COLUMNS if c in row), "").strip()
        target = storage.join(base, raw) if raw else ""
        problem = "" if raw else f"unreadable: manifest line {line_no} has no path"
        if target and not allow_outside and (outside := outside_root(target, base)):
            problem = f"outside_root: {outside}; set data.allow_outside_paths=true to read it"
        records.append(
            SourceRecord(
                sample_id=sample_id,
                uri=target,
                label=(row.get("label") or "").strip(),
                group_id=f"{name}/{group}" if group else sample_id,
                source=(row.get("source") or "").strip() or name,
                origin=name,
                problem=problem,
            )
        )
    return records


def parquet_files(src: SourceConfig) -> list[str]:
    if src.path.lower().endswith(".parquet"):
        return [src.path]
    files = list(storage.list_files(_folder(src.path), suffixes=(".parquet",)))
    if not files:
        raise DataError(
            f"no .parquet files under {src.path}",
            f"{src.display_name()}: path={src.path}",
            "point the source's path at a .parquet file or a folder/prefix holding them",
        )
    return files


def parquet_records(src: SourceConfig) -> Iterator[SourceRecord]:
    """One record per row, reading only the small columns (row group by row group); image bytes are read
    later, one row group at a time, by `read_parquet_images`."""
    name = src.display_name()
    for file in parquet_files(src):
        where = f"{name}: {file}"
        with storage.open_read(file) as handle:
            pf = pq.ParquetFile(handle)
            columns = set(pf.schema_arrow.names)
            needed = [c for c in (src.image_column, src.label_column) if c not in columns]
            needed += [c for c in (src.id_column, src.group_column, src.source_column) if c and c not in columns]
            if needed:
                raise DataError(
                    f"parquet columns {sorted(columns)} lack {needed}",
                    where,
                    "set the source's image_column / label_column / id_column / group_column / "
                    "source_column to this file's column names",
                )
            small = [
                c for c in dict.fromkeys([src.label_column, src.id_column, src.group_column, src.source_column]) if c
            ]
            stem = posixpath.basename(file)
            row_number = 0
            for rg in range(pf.num_row_groups):
                table = pf.read_row_group(rg, columns=small)
                values = {c: table.column(c).to_pylist() for c in small}
                for i in range(table.num_rows):
                    label = values[src.label_column][i]
                    row_id = values[src.id_column][i] if src.id_column else None
                    sample_id = f"{name}/{row_id}" if row_id not in (None, "") else f"{name}/{stem}/{row_number}"
                    group = values[src.group_column][i] if src.group_column else None
                    tag = values[src.source_column][i] if src.source_column else None
                    yield SourceRecord(
                        sample_id=sample_id,
                        uri=file,
                        label="" if label is None else str(int(label) if isinstance(label, bool) else label),
                        group_id=f"{name}/{group}" if group not in (None, "") else sample_id,
                        source=str(tag) if tag not in (None, "") else name,
                        origin=name,
                        row_group=rg,
                        row=i,
                    )
                    row_number += 1


def read_parquet_images(file: str, row_group: int, image_column: str) -> list[bytes | None]:
    """The image bytes of one row group: a binary column, or a struct with a `bytes` field (Hugging Face
    `Image` feature, as in the NATIX dataset). A null image is None."""
    with storage.open_read(file) as handle:
        column = pq.ParquetFile(handle).read_row_group(row_group, columns=[image_column]).column(image_column)
    out = []
    for value in column.to_pylist():
        if isinstance(value, dict):
            value = value.get("bytes")
        out.append(bytes(value) if value is not None else None)
    return out
