"""Input paths a local run will read, checked on this machine before any task starts.

A missing or unreadable input fails the same way on every attempt of a task, so it is reported here, once,
before a run folder exists, instead of from inside `ingest` (or phase 1/4) after the pipeline has started.
Only local paths are checked: a `gs://` URI is read by the tasks through `streetvision.io` (with its own
retries), and a compiled pipeline's paths are the cluster's (a PVC mount, an image path), which is why
`plan`, `compile` and `submit` do not call this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from streetvision import io as storage
from streetvision.config.schema import Config
from streetvision.contracts.errors import DataError
from streetvision.data.sources import MANIFEST_SUFFIXES
from streetvision.phase_graph import resolve_phases

REMOTE_SCHEMES = ("gs://",)  # read by the tasks themselves; everything else must be a local path


@dataclass(frozen=True)
class InputProblem:
    key: str  # the config key, e.g. data.manifest or data.sources[1].path
    value: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}: {self.what}; {self.fix}"


def _local(value: str) -> Path | None:
    """The local path behind a config value, or None for a URI the tasks read remotely."""
    return None if value.startswith(REMOTE_SCHEMES) else Path(value)  # as the tasks read it: no ~ expansion


def _unsupported_scheme(key: str, value: str) -> InputProblem | None:
    if "://" in value and not value.startswith(REMOTE_SCHEMES):
        return InputProblem(
            key,
            value,
            f"the scheme {value.split('://')[0]}:// is not supported",
            "use a local path or a gs://bucket/prefix URI",
        )
    return None


def _readable_file(key: str, value: str, kind: str, fix: str) -> InputProblem | None:
    path = _local(value)
    if path is None:
        return None
    where = path.resolve()
    if not path.exists():
        return InputProblem(key, value, f"no such {kind}: {where}", fix)
    if not path.is_file():
        return InputProblem(key, value, f"{where} is not a file", fix)
    if not os.access(path, os.R_OK):
        return InputProblem(
            key, value, f"{where} is not readable by this user", f"make it readable (chmod a+r), or {fix}"
        )
    return None


def _readable_dir(key: str, value: str, kind: str, fix: str) -> InputProblem | None:
    path = _local(value)
    if path is None:
        return None
    where = path.resolve()
    if not path.exists():
        return InputProblem(key, value, f"no such {kind}: {where}", fix)
    if not path.is_dir():
        return InputProblem(key, value, f"{where} is not a folder", fix)
    if not os.access(path, os.R_OK | os.X_OK):
        return InputProblem(
            key, value, f"{where} cannot be listed by this user", f"make it readable (chmod a+rx), or {fix}"
        )
    return None


def _source_problems(key: str, kind: str, value: str) -> list[InputProblem]:
    problem = _unsupported_scheme(key, value)
    if problem or _local(value) is None:
        return [problem] if problem else []
    if kind == "manifest":
        fix = "point it at a CSV (header row: path,label[,group_id,source]) or JSONL manifest on this machine"
        if not value.lower().endswith(MANIFEST_SUFFIXES):
            return [InputProblem(key, value, f"a manifest must end in {'/'.join(MANIFEST_SUFFIXES)}", fix)]
        return [p for p in [_readable_file(key, value, "manifest", fix)] if p]
    if kind == "folder":
        fix = "point it at a folder <root> holding <root>/<label name>/*.jpg on this machine"
        return [p for p in [_readable_dir(key, value, "image folder", fix)] if p]
    if kind == "parquet":
        fix = "point it at a .parquet file, or a folder holding .parquet files, on this machine"
        if value.lower().endswith(".parquet"):
            return [p for p in [_readable_file(key, value, "parquet file", fix)] if p]
        problem = _readable_dir(key, value, "parquet folder", fix)
        if problem:
            return [problem]
        if next(storage.list_files(value, suffixes=(".parquet",)), None) is None:
            return [InputProblem(key, value, f"no .parquet files under {Path(value).resolve()}", fix)]
    return []


def _data_problems(cfg: Config) -> list[InputProblem]:
    data = cfg.data
    if data.source == "manifest":
        return _source_problems("data.manifest", "manifest", data.manifest)
    if data.source in ("folder", "parquet"):
        return _source_problems("data.path", data.source, data.path)
    problems = []
    if data.source == "sources":
        for i, src in enumerate(data.sources):
            if src.kind != "demo":
                problems += _source_problems(f"data.sources[{i}].path", src.kind, src.path)
    return problems


def _weights_problems(cfg: Config) -> list[InputProblem]:
    weights = cfg.model.weights
    if weights in ("none", "hub") or "://" in weights:
        return []  # a URI is fetched by the task through the storage backend of its scheme
    fix = "set model.weights to a .safetensors/.pt file or an artifact folder holding one, or to none / hub"
    if Path(weights).is_dir():  # an artifact folder: which file it holds is checked when phase 1 loads it
        return [p for p in [_readable_dir("model.weights", weights, "weights folder", fix)] if p]
    return [p for p in [_readable_file("model.weights", weights, "weights file", fix)] if p]


def _pool_problems(cfg: Config) -> list[InputProblem]:
    pool = cfg.explora.pool_source
    if not pool:
        return []
    fix = 'point explora.pool_source at a folder of unlabelled images on this machine, or set it to ""'
    return [p for p in [_readable_dir("explora.pool_source", pool, "image folder", fix)] if p]


def local_input_problems(cfg: Config) -> list[InputProblem]:
    """Every local input path the selected phases will read that does not exist or cannot be read."""
    phases, _ = resolve_phases(cfg.pipeline.phases)
    problems = _data_problems(cfg) if "ingest" in phases else []
    if "phase1" in phases or "phase4" in phases:
        problems += _weights_problems(cfg)
    if "phase4" in phases:
        problems += _pool_problems(cfg)
    return problems


def check_local_inputs(cfg: Config) -> None:
    """Raise one DataError naming every input path problem (config key, value, what is wrong, how to fix)."""
    problems = local_input_problems(cfg)
    if not problems:
        return
    listed = "\n".join(f"  - {p}" for p in problems)
    raise DataError(
        f"{len(problems)} input path(s) of the run cannot be read:\n{listed}",
        "the run's input paths, checked on this machine before any task starts (relative paths are relative "
        f"to {Path.cwd()})",
        "correct the paths above (with key=value overrides or in --config), or use gs:// URIs; nothing was run",
    )
