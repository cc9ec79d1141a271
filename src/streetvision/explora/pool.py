"""The optional unlabelled pool: target-domain images from outside the labelled set (a local folder or a
gs:// prefix, read through `streetvision.io`).

Decoded with ingest's own decoder at the training resolution, so the pool looks to the model exactly like
the TRAIN cache. A pool may never carry VAL data: a folder that is a split artifact must be TRAIN, and any
pool image whose decoded pixels equal a VAL_SELECT image is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from streetvision import io as storage
from streetvision.contracts.errors import DataError, LeakageViolationError
from streetvision.contracts.metadata import METADATA_FILE, fingerprint_ids
from streetvision.contracts.splits import Role, check_access
from streetvision.data.decode import QuarantineReason, decode_image
from streetvision.progress import progress

logger = logging.getLogger(__name__)

POOL_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def pixel_hashes(images) -> set[str]:
    """sha256 of each decoded image's pixels (uint8 arrays or ingest's sharded view)."""
    images = np.asarray(images)
    return {hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest() for img in images}


def _refuse_split_artifact(source: str, where: str) -> None:
    record = storage.join(source, METADATA_FILE)
    if not storage.exists(record):
        return
    split = json.loads(storage.read_bytes(record)).get("split")
    check_access(Role.FIT, split, where)  # a VAL split (or a split-less artifact) raises LeakageViolationError
    raise DataError(
        "explora.pool_source is the TRAIN split artifact, which phase 4 reads already",
        where,
        "point explora.pool_source at a folder of unlabelled images, or leave it empty",
    )


def load_pool(
    source: str,
    img_size: int,
    min_size: int,
    max_images: int,
    where: str,
    forbidden_hashes: set[str],
    workers: int = 16,
) -> tuple[np.ndarray, dict]:
    """Decode every image under `source` (sorted, recursive). Returns (N, S, S, 3) uint8 and a report."""
    if not storage.is_dir(source):
        raise DataError(
            f"explora.pool_source {source} is not a folder (or an empty gs:// prefix)",
            where,
            'set explora.pool_source to a folder or gs:// prefix of images, or to "" for none',
        )
    _refuse_split_artifact(source, where)
    files: list[str] = []
    for uri in storage.list_files(source, POOL_SUFFIXES):
        if max_images and len(files) >= max_images:
            break
        files.append(uri)
    if not files:
        raise DataError(
            f"no {'/'.join(POOL_SUFFIXES)} images under {source}",
            where,
            'fill it with unlabelled street photos, or set explora.pool_source=""',
        )
    images, quarantined = [], {}
    for uri, data in progress(storage.read_many(files, workers), len(files), "reading pool", unit="image"):
        try:
            if isinstance(data, Exception):
                raise QuarantineReason("unreadable", f"{type(data).__name__}: {data}")
            images.append(decode_image(data, img_size, min_size).pixels)
        except QuarantineReason as reason:
            quarantined[uri] = reason.code
    if not images:
        raise DataError(
            f"none of the {len(files)} pool images could be used (e.g. {list(quarantined.items())[:3]})",
            where,
            "check the pool's images",
        )
    pool = np.stack(images)
    leaked = pixel_hashes(pool) & forbidden_hashes
    if leaked:
        raise LeakageViolationError(
            f"{len(leaked)} pool image(s) are identical to VAL_SELECT images",
            where,
            "remove labelled validation images from the unlabelled pool: phase 4 fits weights, which only TRAIN "
            "(and outside data) may influence",
        )
    if quarantined:
        logger.info(
            f"pool: {len(quarantined)} of {len(files)} images could not be used: {list(quarantined.items())[:5]}"
        )
    base = source.rstrip("/") + "/"
    report = {
        "pool_images": int(len(pool)),
        "pool_quarantined": quarantined,
        "pool_fingerprint": fingerprint_ids(uri.removeprefix(base) for uri in files),
    }
    return pool, report
