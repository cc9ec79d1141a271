"""Decode and validate one image: every failure becomes a named quarantine reason, never a crash or a skip."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Modes we can convert to RGB without inventing data. Alpha, CMYK and 16-bit are refused: converting them
# silently changes what the model sees compared with deployment's RGB JPEGs.
_CONVERTIBLE_MODES = {"RGB", "L"}
_EXIF_ORIENTATION = 0x0112


class QuarantineReason(Exception):
    """Why a record cannot be used. `code` is stable (for counting), `detail` is for people."""

    def __init__(self, code: str, detail: str):
        self.code, self.detail = code, detail
        super().__init__(f"{code}: {detail}")


@dataclass
class DecodedImage:
    pixels: np.ndarray  # (size, size, 3) uint8, the training-resolution copy
    pixel_hash: str  # hash of the decoded pixels, for exact-duplicate detection
    width: int  # original size, after EXIF orientation
    height: int


def decode_image(data: bytes, size: int, min_size: int) -> DecodedImage:
    """Decode `data`, apply EXIF orientation, check it, and resize the whole frame to size x size."""
    if len(data) == 0:
        raise QuarantineReason("zero_byte", "file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            mode = img.mode
            if mode == "P" and "transparency" not in img.info:
                mode = "RGB"  # a plain palette image converts losslessly
            if mode not in _CONVERTIBLE_MODES:
                raise QuarantineReason(
                    "unsupported_mode", f"{fmt} image in mode {img.mode}; convert it to 8-bit RGB first"
                )
            width, height = img.size
            if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # rotated by 90 degrees when shown
                width, height = height, width
            # JPEG draft decoding (DCT scaling) is ~4x faster for large photos and keeps >= 2x the target size.
            if fmt == "JPEG":
                img.draft("RGB", (2 * size, 2 * size))
            img.load()
            img = ImageOps.exif_transpose(img)
    except QuarantineReason:
        raise
    except UnidentifiedImageError:
        raise QuarantineReason("not_an_image", "no image format recognised") from None
    except Image.DecompressionBombWarning as exc:
        raise QuarantineReason("too_large", str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports truncation and corrupt streams this way
        raise QuarantineReason("undecodable", f"{type(exc).__name__}: {exc}") from None
    if min(width, height) < min_size:
        raise QuarantineReason("too_small", f"{width}x{height} is below data.min_image_size={min_size}")
    rgb = img.convert("RGB")
    pixel_hash = hashlib.sha256(rgb.tobytes()).hexdigest()
    resized = rgb.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
    return DecodedImage(np.asarray(resized, dtype=np.uint8), pixel_hash, width, height)
