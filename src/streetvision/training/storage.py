"""Where training state and weights live: a local/PVC directory, or a remote URI through a pluggable seam.

Local paths are handled here in full (atomic writes: temp file + fsync + rename). Remote schemes such as
``gs://`` are served by a backend registered with :func:`register_remote`; the shared storage module
registers the GCS one. Asking for a scheme with no backend is a clear error, never a silent local fallback.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from streetvision.contracts.errors import CheckpointError


class Store(Protocol):
    """A directory-like place holding named files."""

    def describe(self, name: str) -> str: ...

    def exists(self, name: str) -> bool: ...

    def write(self, name: str, writer: Callable[[BinaryIO], None]) -> None:
        """Write `name` atomically: readers see the old file or the complete new one, never a part."""

    def fetch(self, name: str) -> Path:
        """A local path holding the file's bytes (the file itself for local stores)."""


class LocalStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def describe(self, name: str) -> str:
        return str(self.root / name)

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def write(self, name: str, writer: Callable[[BinaryIO], None]) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                writer(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def fetch(self, name: str) -> Path:
        return self.root / name


# scheme ("gs") -> factory(uri) returning a Store rooted at that URI.
_REMOTE: dict[str, Callable[[str], Store]] = {}


def register_remote(scheme: str, factory: Callable[[str], Store]) -> None:
    _REMOTE[scheme] = factory


def _scheme(uri: str) -> str | None:
    head, sep, _ = uri.partition("://")
    return head if sep and head.isalnum() else None


def open_store(uri: str, where: str) -> Store:
    """The store rooted at `uri` (a directory path or scheme://bucket/prefix)."""
    scheme = _scheme(uri)
    if scheme is None or scheme == "file":
        return LocalStore(uri.removeprefix("file://"))
    if scheme not in _REMOTE:
        # The shared storage module registers its backends on import, when it is installed.
        with contextlib.suppress(ImportError):
            import streetvision.storage  # noqa: F401
    if scheme not in _REMOTE:
        raise CheckpointError(
            f"no storage backend for {scheme}:// paths ({uri})",
            where,
            "use a local or mounted (PVC) path, or install the storage backend that registers "
            f"{scheme}:// with streetvision.training.storage.register_remote",
        )
    return _REMOTE[scheme](uri)


def fetch_file(uri: str, where: str) -> Path:
    """A local path for the file at `uri` (remote files are downloaded by their backend)."""
    scheme = _scheme(uri)
    if scheme is None or scheme == "file":
        return Path(uri.removeprefix("file://"))
    parent, _, name = uri.rstrip("/").rpartition("/")
    return open_store(parent, where).fetch(name)
