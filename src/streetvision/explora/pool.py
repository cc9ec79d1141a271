"""The optional unlabelled pool: target-domain images from outside the labelled set (a local folder).

Decoded with ingest's own decoder at the training resolution, so the pool looks to the model exactly like
the TRAIN cache. A pool may never carry VAL data: a folder that is a split artifact must be TRAIN, and any
pool image whose decoded pixels equal a VAL_SELECT image is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from streetvision.contracts.errors import DataError, LeakageViolationError
from streetvision.contracts.metadata import METADATA_FILE, fingerprint_ids, read_metadata
from streetvision.contracts.splits import Role, check_access
from streetvision.data.decode import QuarantineReason, decode_image
from streetvision.progress import log, progress

POOL_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def pixel_hashes(images) -> set[str]:
    """sha256 of each decoded image's pixels (uint8 arrays or ingest's sharded view)."""
    images = np.asarray(images)
    return {hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest() for img in images}


def load_pool(source: str, img_size: int, min_size: int, max_images: int, where: str,
              forbidden_hashes: set[str]) -> tuple[np.ndarray, dict]:
    """Decode every image under `source` (sorted, recursive). Returns (N, S, S, 3) uint8 and a report."""
    root = Path(source)
    if (root / METADATA_FILE).is_file():
        meta = read_metadata(root, where)
        # A streetvision artifact as the pool: only TRAIN may be used to fit weights.
        check_access(Role.FIT, meta.split, where)
        raise DataError(
            "explora.pool_source is the TRAIN split artifact, which phase 4 reads already",
            where,
            "point explora.pool_source at a folder of unlabelled images, or leave it empty",
        )
    if not root.is_dir():
        raise DataError(f"explora.pool_source {source} is not a folder", where,
                        "set explora.pool_source to a local folder of images, or to \"\" for none")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in POOL_SUFFIXES)
    if max_images:
        files = files[:max_images]
    if not files:
        raise DataError(f"no {'/'.join(POOL_SUFFIXES)} images under {source}", where,
                        "fill the folder with unlabelled street photos, or set explora.pool_source=\"\"")
    images, quarantined = [], {}
    for path in progress(files, len(files), "decoding pool", unit="image"):
        try:
            images.append(decode_image(path.read_bytes(), img_size, min_size).pixels)
        except QuarantineReason as reason:
            quarantined[str(path.relative_to(root))] = reason.code
    if not images:
        raise DataError(f"none of the {len(files)} pool images could be decoded (e.g. {list(quarantined.items())[:3]})",
                        where, "check the pool folder's images")
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
        log(f"pool: {len(quarantined)} of {len(files)} images could not be used: {list(quarantined.items())[:5]}")
    report = {
        "pool_images": int(len(pool)),
        "pool_quarantined": quarantined,
        "pool_fingerprint": fingerprint_ids(str(p.relative_to(root)) for p in files),
    }
    return pool, report
