"""Small datasets for ingest tests, in every source layout, with every kind of bad record.

Each good image is a smooth random scene (distinct perceptual hashes); `near` variants are the same scene
slightly brighter and shifted (a near duplicate that is not byte- or pixel-identical).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

LABELS = ("no_roadwork", "roadwork")


def scene(seed: int, size=(96, 72), brighten: int = 0, shift: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = Image.fromarray((rng.random((9, 12, 3)) * 255).astype(np.uint8)).resize(
        (size[0] + 8, size[1] + 8), Image.BICUBIC
    )
    arr = np.asarray(base, dtype=np.int16)[4 + shift : 4 + shift + size[1], 4 : 4 + size[0]] + brighten
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def bad_records() -> dict[str, bytes]:
    """name -> bytes of a record that must be quarantined, and (in the name) the expected reason code."""
    good = encode(scene(10_000))
    cmyk = encode(scene(10_001).convert("CMYK"))
    palette_alpha = scene(10_002).convert("P")
    rotated = scene(10_003)
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "zero_byte.jpg": b"",
        "truncated.jpg": good[: len(good) // 2],
        "not_an_image.png": b"<html>404 not found</html>",
        "unsupported_mode_cmyk.jpg": cmyk,
        "unsupported_mode_16bit.png": encode(Image.fromarray(np.full((64, 64), 40000, np.uint16)), "PNG"),
        "unsupported_mode_palette_alpha.png": encode(palette_alpha, "PNG", transparency=0),
        "too_small.jpg": encode(scene(10_004, size=(20, 12))),
    }, {"rotated_ok.jpg": encode(rotated, exif=exif.tobytes())}


def expected_code(name: str) -> str:
    for code in ("zero_byte", "truncated", "not_an_image", "unsupported_mode", "too_small"):
        if name.startswith(code):
            return code
    raise KeyError(name)


def good_images(n: int, seed: int = 0) -> list[tuple[str, int, bytes, str]]:
    """(relative name, label, bytes, sequence) for n images in sequences of 2 near-duplicate frames."""
    out = []
    for i in range(n):
        seq = i // 2
        label = int(seq % 5 != 0)  # ~80 % roadwork, like the NATIX data
        img = scene(seed * 100_000 + seq, brighten=6 * (i % 2), shift=i % 2)
        out.append((f"seq{seq:03d}_f{i % 2}.jpg", label, encode(img, quality=90), f"seq{seq:03d}"))
    return out


def write_folder(root: Path, n: int = 60, with_bad: bool = True) -> dict[str, str]:
    """<root>/<label>/*.jpg plus bad records; returns {relative path: expected outcome ('ok' or code)}."""
    expect = {}
    for name, label, data, _ in good_images(n):
        path = root / LABELS[label] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect[f"{LABELS[label]}/{name}"] = "ok"
    if with_bad:
        bad, extra_good = bad_records()
        for name, data in bad.items():
            (root / LABELS[1] / name).write_bytes(data)
            expect[f"{LABELS[1]}/{name}"] = expected_code(name)
        for name, data in extra_good.items():
            (root / LABELS[0] / name).write_bytes(data)
            expect[f"{LABELS[0]}/{name}"] = "ok"
        (root / "maybe").mkdir(exist_ok=True)
        (root / "maybe" / "unknown.jpg").write_bytes(encode(scene(20_000)))
        expect["maybe/unknown.jpg"] = "unknown_label"
        (root / "stray.jpg").write_bytes(encode(scene(20_001)))
        expect["stray.jpg"] = "unknown_label"
        (root / LABELS[0] / "notes.txt").write_bytes(b"not data")
        expect[f"{LABELS[0]}/notes.txt"] = "unsupported_file"
    return expect


def write_manifest(root: Path, n: int = 60, fmt: str = "jsonl") -> dict[str, str]:
    """Images in <root>/img/, a manifest <root>/manifest.<fmt> with group ids and real/synthetic tags, a
    record whose file is missing, and one with an unknown label."""
    expect, rows = {}, []
    (root / "img").mkdir(parents=True, exist_ok=True)
    for k, (name, label, data, seq) in enumerate(good_images(n, seed=1)):
        (root / "img" / name).write_bytes(data)
        rows.append(
            {
                "path": f"img/{name}",
                "label": LABELS[label] if k % 3 else str(label),
                "group_id": seq,
                "source": "synthetic" if k % 4 == 0 else "real",
            }
        )
        expect[f"img/{name}"] = "ok"
    rows.append({"path": "img/missing.jpg", "label": "1", "group_id": "", "source": "real"})
    expect["img/missing.jpg"] = "unreadable"
    (root / "img" / "odd.jpg").write_bytes(encode(scene(30_000)))
    rows.append({"path": "img/odd.jpg", "label": "maybe", "group_id": "", "source": "real"})
    expect["img/odd.jpg"] = "unknown_label"
    if fmt == "jsonl":
        (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        lines = ["path,label,group_id,source"] + [
            f"{r['path']},{r['label']},{r['group_id']},{r['source']}" for r in rows
        ]
        (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return expect


def write_parquet(root: Path, n: int = 60, files: int = 2, row_group_size: int = 7) -> dict[str, str]:
    """NATIX layout: `image` struct {bytes, path}, `label` 0/1, metadata columns; bad rows included."""
    expect = {}
    images = good_images(n, seed=2)
    bad, _ = bad_records()
    bad_items = list(bad.items())
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        part = images[f::files]
        rows = [{"image": {"bytes": data, "path": name}, "label": label, "city": "x"} for name, label, data, _ in part]
        rows += [
            {"image": {"bytes": data, "path": name}, "label": 1, "city": "y"} for name, data in bad_items[f::files]
        ]
        rows.append({"image": None, "label": 0, "city": "z"})  # a null image
        rows.append({"image": {"bytes": encode(scene(40_000 + f)), "path": "two.jpg"}, "label": 2, "city": "z"})
        table = pa.Table.from_pylist(
            rows,
            schema=pa.schema(
                [
                    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                    ("label", pa.int64()),
                    ("city", pa.string()),
                ]
            ),
        )
        name = f"train-{f:05d}.parquet"
        pq.write_table(table, root / name, row_group_size=row_group_size)
        for r, row in enumerate(rows):
            img = row["image"]
            if img is None:
                outcome = "zero_byte"
            elif row["label"] == 2:
                outcome = "unknown_label"
            elif img["path"] in bad:
                outcome = expected_code(img["path"])
            else:
                outcome = "ok"
            expect[f"{name}/{r}"] = outcome
    return expect


def rows_of(out):
    with open(out / "report" / "records.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def outcomes(out, prefix):
    """{sample id without the source prefix: 'ok' or the quarantine code}."""
    return {
        r["sample_id"].removeprefix(prefix): "ok" if r["placement"] != "quarantine" else r["reason"].split(":")[0]
        for r in rows_of(out)
    }
