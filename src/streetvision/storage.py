"""File access for a local path or a ``gs://bucket/key`` URI, with retries and parallel transfers.

A small, general API (reused for data, checkpoints and bundles):

- ``read_bytes(uri)``, ``open_read(uri)`` (a seekable binary file object, e.g. for pyarrow)
- ``write_bytes(uri, data)``: atomic — a local temp file renamed into place; a GCS object only appears once
  its upload has finished
- ``list_files(prefix, suffixes)``: lazy, page by page; a bucket is never listed into memory at once
- ``exists(uri)``, ``join(base, relative)``, ``is_gcs(uri)``
- ``read_many(uris, workers)``: parallel downloads, results in input order

GCS calls go through google-cloud-storage with a retry policy (exponential backoff on 429/5xx and on
connection errors, e.g. a restarted server). ``STORAGE_EMULATOR_HOST`` (set by tests that start
fake-gcs-server) makes the client talk to the emulator with anonymous credentials.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

GCS_SCHEME = "gs://"
LIST_PAGE_SIZE = 1000
# Backoff 0.1 s doubling to 8 s, giving up after 120 s: survives a server restart or a burst of 503s.
RETRY_INITIAL_S = 0.1
RETRY_MAXIMUM_S = 8.0
RETRY_TIMEOUT_S = 120.0

_client_lock = threading.Lock()
_clients: dict[str, object] = {}


def is_gcs(uri: str) -> bool:
    return str(uri).startswith(GCS_SCHEME)


def split_gcs(uri: str) -> tuple[str, str]:
    """'gs://bucket/a/b' -> ('bucket', 'a/b')."""
    bucket, _, key = str(uri)[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} is not a gs://bucket/key URI")
    return bucket, key


def join(base: str, relative: str) -> str:
    """`relative` under the folder or prefix `base`; absolute paths and URIs are returned unchanged."""
    if is_gcs(relative) or os.path.isabs(relative):
        return relative
    if is_gcs(base):
        return base.rstrip("/") + "/" + relative.lstrip("/")
    return str(Path(base) / relative)


def retry_policy():
    """google-api-core's retry for idempotent GCS calls, with this module's backoff."""
    from google.api_core.retry import Retry
    from google.cloud.storage.retry import DEFAULT_RETRY

    return Retry(
        predicate=DEFAULT_RETRY._predicate,  # 408/429/5xx, connection resets and refusals
        initial=RETRY_INITIAL_S,
        maximum=RETRY_MAXIMUM_S,
        multiplier=2.0,
        timeout=RETRY_TIMEOUT_S,
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


def read_bytes(uri: str) -> bytes:
    if is_gcs(uri):
        return _blob(uri).download_as_bytes(retry=retry_policy())
    return Path(uri).read_bytes()


def open_read(uri: str):
    """A seekable binary file object. GCS objects are read in ranged chunks, not downloaded whole."""
    if is_gcs(uri):
        blob = _blob(uri)
        blob.reload(retry=retry_policy())  # the size is needed for seeking from the end (parquet footers)
        return blob.open("rb", chunk_size=8 * 1024 * 1024, retry=retry_policy())
    return open(uri, "rb")


def write_bytes(uri: str, data: bytes) -> None:
    """Write all of `data` or nothing: no reader ever sees a partial file."""
    if is_gcs(uri):
        # A GCS object becomes visible only when its upload completes. A retry re-sends the same bytes
        # from memory, so retrying (unconditionally) cannot leave mixed content.
        blob = _blob(uri)
        blob.upload_from_file(io.BytesIO(data), size=len(data), rewind=True, retry=retry_policy())
        return
    from streetvision.training.storage import LocalStore  # temp file, fsync, rename

    path = Path(uri)
    LocalStore(path.parent).write(path.name, lambda handle: handle.write(data))


def exists(uri: str) -> bool:
    if is_gcs(uri):
        return _blob(uri).exists(retry=retry_policy())
    return Path(uri).exists()


def is_dir(uri: str) -> bool:
    """A local folder, or a GCS prefix with at least one object under it."""
    if is_gcs(uri):
        return next(list_files(uri.rstrip("/") + "/"), None) is not None
    return Path(uri).is_dir()


def list_files(prefix: str, suffixes: Iterable[str] | None = None) -> Iterator[str]:
    """Files under a folder or GCS prefix, recursively, in lexicographic order, fetched page by page.

    `suffixes` (e.g. ('.jpg', '.png')) filters by lower-cased name ending.
    """
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None
    if is_gcs(prefix):
        bucket, key = split_gcs(prefix)
        pages = gcs_client().list_blobs(bucket, prefix=key, page_size=LIST_PAGE_SIZE, retry=retry_policy()).pages
        for page in pages:
            for blob in page:
                if blob.name.endswith("/"):
                    continue  # a "folder" placeholder object
                if wanted is None or blob.name.lower().endswith(wanted):
                    yield f"{GCS_SCHEME}{bucket}/{blob.name}"
        return
    root = Path(prefix)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if wanted is None or name.lower().endswith(wanted):
                yield str(Path(dirpath) / name)


def read_many(uris: Iterable[str], workers: int = 16) -> Iterator[tuple[str, bytes | Exception]]:
    """Read many files in parallel; yields (uri, bytes or the exception) in input order, with bounded memory."""
    uris = iter(uris)

    def fetch(uri: str):
        try:
            return uri, read_bytes(uri)
        except Exception as exc:  # reported to the caller per file, never raised for the whole batch
            return uri, exc

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = []
        for uri in uris:
            pending.append(pool.submit(fetch, uri))
            if len(pending) >= 4 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


class GcsStore:
    """Training state under a gs:// prefix, for `streetvision.training.storage` (checkpoints that survive a
    preempted node). Objects appear only when their upload completes, so every write is atomic."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self._cache = Path(tempfile.mkdtemp(prefix="streetvision-gcs-"))

    def describe(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        return exists(self.describe(name))

    def write(self, name: str, writer) -> None:
        buffer = io.BytesIO()
        writer(buffer)
        write_bytes(self.describe(name), buffer.getvalue())

    def fetch(self, name: str) -> Path:
        local = self._cache / name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(read_bytes(self.describe(name)))
        return local


def _register_checkpoint_backend() -> None:
    from streetvision.training.storage import register_remote

    register_remote("gs", GcsStore)


_register_checkpoint_backend()
