"""The demo scenes as an ordinary data source: a folder of JPEGs with a manifest that ingest reads.

A manifest (not a bare folder source) because it carries each frame's dashcam sequence as its group id, so
near-duplicate frames never straddle two splits. The core library knows nothing of the renderer: a config
whose source is ``demo`` is turned here into one whose source is this manifest, before the pipeline runs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import secrets
import shutil
from pathlib import Path

from streetvision import io as storage
from streetvision.config.schema import Config, DataConfig, DemoConfig, SourceConfig
from streetvision_demo import scenes

# Under the library's logger, so its console handler shows the lines.
logger = logging.getLogger("streetvision.demo")

MANIFEST = "manifest.csv"
SOURCE_NAME = "demo"


def write_demo_folder(out_dir: str | Path, cfg: DemoConfig, label_names: tuple[str, str]) -> Path:
    """Render the scenes into `out_dir` (<label name>/<frame>.jpg) and write `out_dir`/manifest.csv.

    Args:
        out_dir: the folder to fill; created if missing.
        cfg: the scenes to render (``data.demo``).
        label_names: the negative and positive label names, used as folder names.

    Returns:
        The manifest's path; written last, so its presence means the folder is complete.

    Raises:
        ValueError: the label names are not two distinct plain folder names.
    """
    out_dir = Path(out_dir)
    records = scenes.generate_demo_dataset(out_dir, cfg, label_names)
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "label", "group_id", "source"])
    writer.writerows([r.path, r.label, r.group_id, r.source] for r in records)
    storage.write_text(out_dir / MANIFEST, text.getvalue())
    return out_dir / MANIFEST


def cache_key(cfg: DemoConfig, label_names: tuple[str, str]) -> str:
    """Names a rendering: the demo config, the label names and the renderer's own source."""
    digest = hashlib.sha256(cfg.model_dump_json().encode() + repr(tuple(label_names)).encode())
    digest.update(Path(scenes.__file__).read_bytes())
    return digest.hexdigest()[:16]


def cached_demo_folder(cache_root: str | Path, cfg: DemoConfig, label_names: tuple[str, str]) -> Path:
    """The manifest of `cache_root`/<cache key>/, rendered first if no finished rendering is there.

    A rendering is made in a scratch folder and renamed into place, so an interrupted one is never reused.
    """
    cache_root = Path(cache_root)
    folder = cache_root / cache_key(cfg, label_names)
    if not (folder / MANIFEST).is_file():
        cache_root.mkdir(parents=True, exist_ok=True)
        scratch = cache_root / f".{folder.name}-{secrets.token_hex(4)}"
        logger.info(f"rendering the demo scenes ({cfg.num_sequences} sequences) into {folder}")
        write_demo_folder(scratch, cfg, label_names)
        shutil.rmtree(folder, ignore_errors=True)  # an unfinished folder left by an older version
        try:
            os.rename(scratch, folder)
        except OSError:  # another process renamed its rendering into place first: the same bytes
            shutil.rmtree(scratch)
    return folder / MANIFEST


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def _demo_as_manifest(src: SourceConfig, manifest: Path) -> SourceConfig:
    fields = {**src.model_dump(), "kind": "manifest", "path": str(manifest), "name": src.name or SOURCE_NAME}
    return SourceConfig.model_validate(fields)


def with_demo_data(cfg: Config, cache_root: str | Path, run_root: str | Path | None = None) -> Config:
    """`cfg` with each demo source replaced by the manifest of its rendered scenes.

    Args:
        cfg: a config; one without a demo source is returned unchanged.
        cache_root: where renderings are kept, one folder per demo config (see `cached_demo_folder`).
        run_root: if given, the rendering is linked (or copied) into `run_root`/<cache key>/ and the config
            names that copy: a folder the pipeline's tasks can read, e.g. inside a container that mounts only
            the run's pipeline root.

    Returns:
        The config with ``data.source=sources`` and a manifest source named ``demo`` (sample ids stay
        ``demo/<label>/<frame>.jpg``), or `cfg` itself.
    """
    data = cfg.data
    if not data.uses_demo():
        return cfg
    manifest = cached_demo_folder(cache_root, data.demo, (data.label_names[0], data.label_names[1]))
    if run_root is not None:
        target = Path(run_root) / manifest.parent.name
        if not (target / MANIFEST).is_file():  # the manifest last: its presence means the copy is complete
            ignore = shutil.ignore_patterns(MANIFEST)
            shutil.copytree(manifest.parent, target, copy_function=_link_or_copy, ignore=ignore, dirs_exist_ok=True)
            _link_or_copy(str(manifest), str(target / MANIFEST))
        manifest = target / MANIFEST
    manifest = manifest.resolve()
    sources = [_demo_as_manifest(s, manifest) if s.kind == "demo" else s for s in data.source_list()]
    new_data = DataConfig.model_validate({**data.model_dump(), "source": "sources", "sources": sources})
    return cfg.model_copy(update={"data": new_data})
