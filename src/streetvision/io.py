"""Files at a local path or a ``gs://bucket/key`` URI, through one interface; the bottom of the import graph.

This module imports nothing else of streetvision, so every layer (contracts, data, models, training,
phases) can use it. Callers import it as ``from streetvision import io as storage``.

- ``read_bytes``, ``open_read`` (a seekable binary file object, e.g. for pyarrow), ``size``, ``exists``,
  ``is_dir``, ``list_files`` (lazy, page by page: a bucket is never listed into memory at once)
- ``atomic_write(uri, write)`` and ``write_bytes(uri, data)``: the one atomic write. Locally a temp file
  with a unique name in the target's folder, fsync of the file and the folder, then ``os.replace``; on GCS
  an upload (an object only appears once its upload has finished). A full disk raises ``NoSpaceError``,
  saying where and how much was needed (``reserve`` allocates a file to be memory-mapped up front)
- ``Store``: named files under one folder or prefix (training state, checkpoints)
- ``prefetch(pool, fn, items, ahead)`` and ``read_many``: parallel reads with at most N in flight
- ``join``, ``is_gcs``, ``split_gcs``

GCS calls go through google-cloud-storage with its retry predicate (429/5xx, connection resets and
refusals) and this module's backoff. ``STORAGE_EMULATOR_HOST`` (set by tests that start fake-gcs-server)
makes the client talk to the emulator with anonymous credentials.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

GCS_SCHEME = "gs://"
LIST_PAGE_SIZE = 1000
READ_CHUNK_BYTES = 8 * 1024 * 1024
# Backoff 0.1 s doubling to 8 s, giving up after 120 s: survives a server restart or a burst of 503s.
RETRY_INITIAL_S = 0.1
RETRY_MAXIMUM_S = 8.0
RETRY_TIMEOUT_S = 120.0

_client_lock = threading.Lock()
_clients: dict[str, object] = {}


def is_gcs(uri: str | Path) -> bool:
    return str(uri).startswith(GCS_SCHEME)


def unsupported_scheme(uri: str | Path) -> str | None:
    """The scheme of `uri` when this module cannot serve it ('s3' for s3://...), else None."""
    head, sep, _ = str(uri).partition("://")
    if sep and head.isalnum() and head not in ("gs", "file"):
        return head
    return None


def split_gcs(uri: str) -> tuple[str, str]:
    """'gs://bucket/a/b' -> ('bucket', 'a/b')."""
    bucket, _, key = str(uri)[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} is not a gs://bucket/key URI")
    return bucket, key


def join(base: str | Path, relative: str) -> str:
    """`relative` under the folder or prefix `base`; absolute paths and URIs are returned unchanged."""
    if is_gcs(relative) or os.path.isabs(relative):
        return relative
    if is_gcs(base):
        return str(base).rstrip("/") + "/" + relative.lstrip("/")
    return str(Path(base) / relative)


def retry_policy():
    """google-cloud-storage's default retry (which errors are transient) with this module's backoff."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_delay(initial=RETRY_INITIAL_S, maximum=RETRY_MAXIMUM_S, multiplier=2.0).with_timeout(
        RETRY_TIMEOUT_S
    )


def gcs_client():
    """One client per process and endpoint (the client is safe to share between threads)."""
    endpoint = os.environ.get("STORAGE_EMULATOR_HOST", "")
    with _client_lock:
        if endpoint not in _clients:
            from google.cloud import storage

            if endpoint:
                from google.auth.credentials import AnonymousCredentials

                _clients[endpoint] = storage.Client(credentials=AnonymousCredentials(), project="emulator")
            else:
                _clients[endpoint] = storage.Client()
        return _clients[endpoint]


def _blob(uri: str):
    bucket, key = split_gcs(uri)
    return gcs_client().bucket(bucket).blob(key)


def read_bytes(uri: str | Path) -> bytes:
    """The whole file.

    Args:
        uri: a local path or ``gs://bucket/key``.

    Returns:
        Its bytes.

    Raises:
        FileNotFoundError: no local file at `uri`.
        google.api_core.exceptions.NotFound: no such GCS object (after retries of transient errors).
    """
    if is_gcs(uri):
        return _blob(str(uri)).download_as_bytes(retry=retry_policy())
    return Path(uri).read_bytes()


class NotARegularFileError(OSError):
    """A path that is not a regular file (a FIFO, a device, a socket, a folder): never read as data."""


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
    kinds += [(stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_prefix(uri: str | Path, limit: int) -> bytes:
    """At most the first `limit` bytes of a regular file or a GCS object (all of it when it is smaller).

    Locally the path is checked with stat before it is opened, and again with fstat on the descriptor, which is
    opened non-blocking: a FIFO can neither hang the reader nor be swapped in between, and a device (/dev/zero)
    cannot stream forever; anything but a regular file raises NotARegularFileError. A GCS object is fetched
    with a ranged request, so a large one is never downloaded whole.

    Args:
        uri: a local path or ``gs://bucket/key``.
        limit: the most bytes to return.

    Returns:
        The file's first min(size, limit) bytes.

    Raises:
        NotARegularFileError: a local path that is a FIFO, device, socket or folder.
        FileNotFoundError: no local file at `uri`.
        google.api_core.exceptions.NotFound: no such GCS object.
    """
    if is_gcs(uri):
        from google.api_core.exceptions import RequestRangeNotSatisfiable

        try:
            return _blob(str(uri)).download_as_bytes(start=0, end=limit - 1, retry=retry_policy())
        except RequestRangeNotSatisfiable:  # an empty object has no byte 0
            return b""
    mode = os.stat(uri).st_mode
    if not stat.S_ISREG(mode):
        raise NotARegularFileError(errno.EINVAL, f"{_file_kind(mode)}, not a regular file", str(uri))
    fd = os.open(uri, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(errno.EINVAL, f"{_file_kind(mode)}, not a regular file", str(uri))
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, READ_CHUNK_BYTES))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def open_read(uri: str | Path) -> BinaryIO:
    """A seekable binary file object. GCS objects are read in ranged chunks, not downloaded whole.

    Args:
        uri: a local path or ``gs://bucket/key``.

    Returns:
        An open binary file object; close it (or use it in a ``with``).

    Raises:
        FileNotFoundError: no local file at `uri`.
        google.api_core.exceptions.NotFound: no such GCS object.
    """
    if is_gcs(uri):
        blob = _blob(str(uri))
        blob.reload(retry=retry_policy())  # the size is needed for seeking from the end (parquet footers)
        return blob.open("rb", chunk_size=READ_CHUNK_BYTES, retry=retry_policy())
    return open(uri, "rb")


def size(uri: str | Path) -> int:
    """The file's size in bytes."""
    if is_gcs(uri):
        blob = _blob(str(uri))
        blob.reload(retry=retry_policy())
        return int(blob.size)
    return Path(uri).stat().st_size


def exists(uri: str | Path) -> bool:
    """Whether a local path (file or folder) or a GCS object exists."""
    if is_gcs(uri):
        return _blob(str(uri)).exists(retry=retry_policy())
    return Path(uri).exists()


def is_dir(uri: str | Path) -> bool:
    """A local folder, or a GCS prefix with at least one object under it."""
    if is_gcs(uri):
        return next(list_files(str(uri).rstrip("/") + "/"), None) is not None
    return Path(uri).is_dir()


def list_files(prefix: str | Path, suffixes: Iterable[str] | None = None) -> Iterator[str]:
    """Files under a folder or GCS prefix, recursively, in lexicographic order, fetched page by page.

    Args:
        prefix: a local folder, or a GCS prefix (end it with "/" to exclude ``gs://b/data2`` from ``gs://b/data``).
        suffixes: if given (e.g. ('.jpg', '.png')), only names ending in one of them, compared lower-cased.

    Returns:
        A lazy iterator of paths or ``gs://`` URIs; a missing local folder yields nothing.
    """
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None
    if is_gcs(prefix):
        bucket, key = split_gcs(str(prefix))
        pages = gcs_client().list_blobs(bucket, prefix=key, page_size=LIST_PAGE_SIZE, retry=retry_policy()).pages
        for page in pages:
            for blob in page:
                if blob.name.endswith("/"):
                    continue  # a "folder" placeholder object
                if wanted is None or blob.name.lower().endswith(wanted):
                    yield f"{GCS_SCHEME}{bucket}/{blob.name}"
        return
    for dirpath, dirnames, filenames in os.walk(prefix):
        dirnames.sort()
        for name in sorted(filenames):
            if wanted is None or name.lower().endswith(wanted):
                yield str(Path(dirpath) / name)


class NoSpaceError(OSError):
    """A write that ran out of disk: says where, how much was needed (when known) and how much is free."""

    def __init__(self, target: Path, needed: int | None, written: int):
        try:
            free = f"{shutil.disk_usage(target.parent).free} bytes are free there"
        except OSError:
            free = "the free space there is unknown"
        need = f"needs {needed} bytes" if needed is not None else "needs more space"
        super().__init__(
            errno.ENOSPC,
            f"no space left on device: writing {target} {need} ({written} written before the disk filled; "
            f"{free}). Free space on that disk, or point the output at a larger one, then rerun or resume",
            str(target),
        )
        self.target, self.needed, self.written = target, needed, written


# numpy's `tofile` (under np.save) reports a short write as "N requested and M written", without an errno.
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")


def _disk_full(exc: BaseException, target: Path, size_hint: int | None, written: int) -> NoSpaceError | None:
    if not isinstance(exc, OSError) or isinstance(exc, NoSpaceError):
        return None
    short = _SHORT_WRITE.search(str(exc)) if exc.errno is None else None
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT) and short is None:
        return None
    needed = size_hint if size_hint is not None else (written - int(short[2]) + int(short[1]) if short else None)
    return NoSpaceError(target, needed, written)


@contextlib.contextmanager
def naming_disk_full(target: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn a full disk met inside the block into NoSpaceError naming `target` and the bytes `needed`."""
    try:
        yield
    except OSError as exc:
        target = Path(target)
        full = _disk_full(exc, target, needed, target.stat().st_size if target.is_file() else 0)
        if full is None:
            raise
        raise full from exc


def reserve(path: str | Path) -> None:
    """Allocate a local file's blocks now (for a file about to be memory-mapped and written). A mapped write
    that meets a full disk kills the process with SIGBUS and no message; this fails first, with NoSpaceError."""
    needed = Path(path).stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        with naming_disk_full(path, needed):
            os.posix_fallocate(fd, 0, needed)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate: map as before
            raise
    finally:
        os.close(fd)


def _fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(uri: str | Path, write: Callable[[Path], object], size_hint: int | None = None) -> None:
    """Replace `uri` whole: readers (and a restarted, preempted task) see the old file or the complete new one.

    Locally the temp file lives beside the target under a unique name (concurrent writers never share one), is
    fsynced, renamed over the target, and the folder is fsynced so the rename survives a crash. A GCS object is
    uploaded from the temp file; it appears only once the upload has finished.

    Args:
        uri: the target, a local path (its folder is created) or ``gs://bucket/key``.
        write: fills the temp file at the path it is given, e.g. ``lambda tmp: torch.save(state, tmp)``.
        size_hint: the file's final size in bytes, if known: named in a full-disk error.

    Raises:
        NoSpaceError: the disk is full (an OSError, ENOSPC), naming the target and, with `size_hint` or from
            numpy's report, the bytes needed.
        OSError: anything else `write` or the file system raises. The target is then unchanged and the temp
            file removed.
    """
    if is_gcs(uri):
        with tempfile.TemporaryDirectory(prefix="streetvision-upload-") as scratch:
            local = Path(scratch) / "object"
            write(local)
            # The retry re-sends the same file, so retrying (without preconditions) cannot mix contents.
            _blob(str(uri)).upload_from_filename(str(local), retry=retry_policy())
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not created here: the writer creates it, so the file gets the usual permissions.
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    try:
        write(tmp)
        _fsync_path(tmp)  # the bytes are on disk before the rename makes them visible
        os.replace(tmp, target)
    except BaseException as exc:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        full = _disk_full(exc, target, size_hint, written)
        if full is not None:
            raise full from exc
        raise
    _fsync_path(target.parent)


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Write all of `data` or nothing (see `atomic_write`)."""
    if is_gcs(uri):
        # From memory: no temp file. A retry re-sends the same bytes.
        _blob(str(uri)).upload_from_file(io.BytesIO(data), size=len(data), rewind=True, retry=retry_policy())
        return
    atomic_write(uri, lambda tmp: tmp.write_bytes(data), size_hint=len(data))


def write_text(uri: str | Path, text: str) -> None:
    """Write `text` (UTF-8) all or nothing (see `atomic_write`)."""
    write_bytes(uri, text.encode())


class Store:
    """Named files under one folder: a local (or mounted PVC) path or a gs:// prefix, e.g. training state."""

    def __init__(self, root: str | Path):
        self.root = str(root).removeprefix("file://")

    def describe(self, name: str) -> str:
        """Where `name` lives (a path or URI), for reading and for messages."""
        return join(self.root, name)

    def exists(self, name: str) -> bool:
        return exists(self.describe(name))

    def read(self, name: str) -> bytes:
        return read_bytes(self.describe(name))

    def write(self, name: str, writer: Callable[[BinaryIO], object]) -> None:
        """Write `name` atomically from `writer(handle)`."""

        def fill(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                writer(handle)

        atomic_write(self.describe(name), fill)


def prefetch(pool: Executor, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """`pool.map(fn, items)` with at most `ahead` calls in flight (memory stays bounded), results in input order."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def read_many(uris: Iterable[str], workers: int = 16) -> Iterator[tuple[str, bytes | Exception]]:
    """Read many files in parallel; yields (uri, bytes or the exception) in input order, with bounded memory."""

    def fetch(uri: str) -> tuple[str, bytes | Exception]:
        try:
            return uri, read_bytes(uri)
        except Exception as exc:  # reported to the caller per file, never raised for the whole batch
            return uri, exc

    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from prefetch(pool, fetch, uris, ahead=4 * workers)
