"""Decode and validate one image: every failure becomes a named quarantine reason, never a crash or a skip."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.fft import dctn

from streetvision import io as storage

# Modes we can convert to RGB without inventing data. Alpha, CMYK and 16 bits per sample (RGB or grey) are
# refused: converting them silently changes what the model sees compared with deployment's 8-bit RGB JPEGs.
_CONVERTIBLE_MODES = {"RGB", "L"}
_EXIF_ORIENTATION = 0x0112
# Perceptual hash (pHash): DCT of a 32x32 grey copy, the sign of the 8x8 lowest frequencies against their median.
_PHASH_SIDE, _PHASH_BITS_SIDE = 32, 8
# A frame whose low-frequency AC energy is below this (grey levels) is flat: its pHash bits are noise, so it
# takes no part in near-duplicate matching (exact duplicates still match by pixel hash).
_FLAT_AC_LIMIT = 2.0


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
    phash: int = 0  # 64-bit perceptual hash, for near-duplicate detection
    flat: bool = False  # no structure to hash: excluded from near-duplicate matching


def perceptual_hash(img: Image.Image) -> tuple[int, bool]:
    """pHash of an image (as in the `imagehash` package) and whether the image is flat."""
    grey = np.asarray(
        img.convert("L").resize((_PHASH_SIDE, _PHASH_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0),
        dtype=np.float64,
    )
    low = dctn(grey, type=2, norm="ortho")[:_PHASH_BITS_SIDE, :_PHASH_BITS_SIDE]
    bits = (low > np.median(low)).ravel()
    value = int(np.packbits(bits).view(">u8")[0])
    flat = bool(np.abs(low.ravel()[1:]).max() < _FLAT_AC_LIMIT)
    return value, flat


def image_validation(data_cfg) -> dict:
    """The settings an image is read and validated with (`read_image_file`, `decode_image`), from the `data`
    config: ingest applies them, and a bundle records them so that deployment (predict, drift, evaluate's
    renders) refuses what ingest quarantines."""
    return {"min_image_size": data_cfg.min_image_size, "max_record_bytes": data_cfg.max_record_bytes}


def unreadable(exc: BaseException) -> QuarantineReason:
    """A read failure as the record's quarantine reason (first line of the message; the OS's own words)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    detail = getattr(exc, "strerror", None) or text
    return QuarantineReason("unreadable", f"{type(exc).__name__}: {detail}")


def read_image_file(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of one image file (a local path or gs:// URI), read with bounds; ingest, predict and drift read
    every image file through here.

    Only a regular file is read (not_a_file: a FIFO, device, socket or folder is refused on a non-blocking
    descriptor, never read), and at most `max_bytes` of it (too_large beyond: data.max_record_bytes): a bad path
    costs a stat, never a hang or a full memory.

    Raises:
        QuarantineReason: not_a_file, too_large, or unreadable (missing, no permission, a storage error).
    """
    try:
        data = storage.read_prefix(path, max_bytes + 1)
    except FileNotFoundError:
        raise QuarantineReason("unreadable", "no such file") from None
    except storage.NotARegularFileError as exc:
        raise QuarantineReason("not_a_file", f"{exc.filename} is {exc.strerror}") from None
    except Exception as exc:  # no permission, a transient storage error that outlived its retries ...
        raise unreadable(exc) from None
    if len(data) > max_bytes:
        raise QuarantineReason("too_large", f"more than data.max_record_bytes={max_bytes} bytes")
    return data


def _sixteen_bit(img: Image.Image) -> bool:
    """Whether the decoder will read more than 8 bits per sample (its raw mode, e.g. 'RGB;16B' or 'I;16')."""
    for tile in getattr(img, "tile", []):  # an ImageFile before load()
        rawmode = tile.args if isinstance(tile.args, str) else (tile.args or ("",))[0]
        if ";16" in str(rawmode):
            return True
    return img.mode.startswith("I;16")


def decode_image(data: bytes, size: int, min_size: int) -> DecodedImage:
    """Decode `data`, apply EXIF orientation, check it, and resize the whole frame to size x size."""
    if len(data) == 0:
        raise QuarantineReason("zero_byte", "file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = img.format
            mode = img.mode
            if _sixteen_bit(img):  # PIL opens a 16-bit RGB PNG as mode RGB, dropping the low byte of each sample
                raise QuarantineReason(
                    "unsupported_mode", f"{fmt} image with 16 bits per sample; convert it to 8-bit RGB first"
                )
            if mode == "P" and "transparency" not in img.info:
                mode = "RGB"  # a plain palette image converts losslessly
            if mode not in _CONVERTIBLE_MODES:
                what = "palette with transparency" if img.mode == "P" else f"mode {img.mode}"
                raise QuarantineReason(
                    "unsupported_mode", f"{fmt} image, {what}; convert it to 8-bit RGB without alpha first"
                )
            width, height = img.size
            if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # rotated by 90 degrees when shown
                width, height = height, width
            # JPEG draft decoding (DCT scaling by 1/2, 1/4 or 1/8) is ~4x faster for large photos; it keeps
            # both sides >= the target size, and the DCT scaling itself low-pass filters.
            if fmt == "JPEG":
                img.draft("RGB", (size, size))
            img.load()
            img = ImageOps.exif_transpose(img)
    except QuarantineReason:
        raise
    except UnidentifiedImageError:
        raise QuarantineReason("not_an_image", "no image format recognised") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise QuarantineReason("too_large", str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports truncation and corrupt streams this way
        code = "truncated" if "truncated" in str(exc).lower() else "undecodable"
        raise QuarantineReason(code, f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # malformed files make PIL raise many kinds of errors; each is this record's problem
        raise QuarantineReason("undecodable", f"{type(exc).__name__}: {exc}") from None
    if min(width, height) < min_size:
        raise QuarantineReason("too_small", f"{width}x{height} is below data.min_image_size={min_size}")
    rgb = img.convert("RGB")
    pixel_hash = hashlib.sha256(rgb.tobytes()).hexdigest()
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    phash, flat = perceptual_hash(resized if size >= 64 else rgb)  # a 64+ px copy holds the 32 px hash input
    return DecodedImage(np.asarray(resized, dtype=np.uint8), pixel_hash, width, height, phash, flat)
