import io

import numpy as np
import pytest
from conftest import png_rgb16
from PIL import Image

from streetvision.data.decode import QuarantineReason, decode_image, read_image_file


def _encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _code(data: bytes, size=32, min_size=16) -> str:
    with pytest.raises(QuarantineReason) as info:
        decode_image(data, size, min_size)
    return info.value.code


def test_good_images_decode_to_the_training_size():
    for img, fmt in [
        (Image.new("RGB", (80, 60), (200, 10, 10)), "JPEG"),
        (Image.new("L", (40, 40), 128), "PNG"),
        (Image.new("RGB", (50, 50)).convert("P"), "PNG"),
    ]:
        out = decode_image(_encode(img, fmt), 32, 16)
        assert out.pixels.shape == (32, 32, 3) and out.pixels.dtype == np.uint8
        assert (out.width, out.height) == img.size


def test_every_bad_input_has_a_named_reason():
    good = _encode(Image.new("RGB", (64, 64), (1, 2, 3)))
    assert _code(b"") == "zero_byte"
    assert _code(b"this is not an image at all") == "not_an_image"
    assert _code(good[: len(good) // 2]) == "truncated"
    corrupt = bytearray(_encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG"))
    corrupt[40:60] = b"\xff" * 20  # damaged IHDR/IDAT: the header parses, the data does not
    assert _code(bytes(corrupt)) in ("undecodable", "not_an_image")
    palette_alpha = Image.new("P", (64, 64))
    palette_alpha.info["transparency"] = 0
    assert _code(_encode(palette_alpha, "PNG", transparency=0)) == "unsupported_mode"
    assert _code(_encode(Image.new("RGBA", (64, 64)), "WEBP")) == "unsupported_mode"
    assert _code(_encode(Image.new("RGB", (10, 64)))) == "too_small"
    assert _code(_encode(Image.new("CMYK", (64, 64)))) == "unsupported_mode"
    assert _code(_encode(Image.new("RGBA", (64, 64)), "PNG")) == "unsupported_mode"
    assert _code(_encode(Image.new("I;16", (64, 64)), "PNG")) == "unsupported_mode"


def test_exif_orientation_is_applied():
    # A 60x30 image whose EXIF says "rotate 90": it must come out as seen (portrait), size reported 30x60.
    img = Image.new("RGB", (60, 30), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 30, 30))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when shown
    out = decode_image(_encode(img, exif=exif.tobytes()), 32, 16)
    assert (out.width, out.height) == (30, 60)
    top, bottom = out.pixels[:8].mean(), out.pixels[-8:].mean()
    assert top > 200 and bottom < 50  # the white left half is now on top


def test_pixel_hash_identifies_identical_content():
    a = _encode(Image.new("RGB", (64, 64), (5, 6, 7)))
    assert decode_image(a, 32, 16).pixel_hash == decode_image(a, 32, 16).pixel_hash
    b = _encode(Image.new("RGB", (64, 64), (90, 6, 7)))
    assert decode_image(a, 32, 16).pixel_hash != decode_image(b, 32, 16).pixel_hash


def test_large_jpeg_uses_reduced_decode_and_keeps_orientation():
    # A 1920x1080 frame, EXIF "rotate 270": the result is portrait content at the training size.
    img = Image.new("RGB", (1920, 1080), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 960, 1080))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 CCW when shown: the left half goes to the bottom
    out = decode_image(_encode(img, exif=exif.tobytes(), quality=90), 64, 32)
    assert (out.width, out.height) == (1080, 1920)
    assert out.pixels.shape == (64, 64, 3)
    assert out.pixels[-8:, :, 0].mean() > 200 and out.pixels[:8, :, 2].mean() > 200


def test_perceptual_hash_is_close_for_near_duplicates_and_far_for_different_scenes():
    rng = np.random.default_rng(0)
    base = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    scene = Image.fromarray(base).resize((320, 240), Image.BICUBIC)
    brighter = Image.fromarray(np.clip(np.asarray(scene, dtype=np.int16) + 12, 0, 255).astype(np.uint8))
    other = Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).resize((320, 240), Image.BICUBIC)
    a, b, c = (decode_image(_encode(x, quality=85), 64, 32) for x in (scene, brighter, other))
    distance = lambda x, y: bin(x.phash ^ y.phash).count("1")  # noqa: E731
    assert distance(a, b) <= 4 < 16 < distance(a, c)
    assert a.pixel_hash != b.pixel_hash and not a.flat
    assert decode_image(_encode(Image.new("RGB", (64, 64), (9, 9, 9))), 32, 16).flat


def test_sixteen_bit_images_are_quarantined_not_truncated():
    """PIL opens a 16-bit RGB PNG as plain RGB (the low byte of every sample dropped): refused, as 16-bit grey is."""
    assert Image.open(io.BytesIO(png_rgb16())).mode == "RGB"  # why a mode check alone lets it through
    with pytest.raises(QuarantineReason, match="16 bits per sample"):
        decode_image(png_rgb16(), 32, 16)
    assert _code(_encode(Image.fromarray(np.zeros((40, 40), np.uint16)), "PNG")) == "unsupported_mode"
    assert decode_image(_encode(Image.new("RGB", (40, 40)), "PNG"), 32, 16).pixels.shape == (32, 32, 3)  # 8-bit


def test_image_files_are_read_bounded_and_only_when_regular(tmp_path):
    import os

    image = tmp_path / "a.png"
    image.write_bytes(_encode(Image.new("RGB", (40, 40)), "PNG"))
    assert read_image_file(image, 10_000) == image.read_bytes()
    os.mkfifo(tmp_path / "pipe.jpg")  # opened without blocking, refused on its descriptor
    for path, max_bytes, expected in [
        (image, 10, "too_large: more than data.max_record_bytes=10 bytes"),
        (tmp_path / "pipe.jpg", 10_000, "not a regular file"),
        (tmp_path, 10_000, "not a regular file"),
        (tmp_path / "missing.jpg", 10_000, "no such file"),
        ("/dev/zero", 10_000, "not a regular file"),
    ]:
        with pytest.raises(QuarantineReason, match=expected):
            read_image_file(path, max_bytes)
