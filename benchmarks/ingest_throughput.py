"""Ingest throughput (images/s per core) for 1080p and 224 px JPEGs, and shard cache read throughput.

The anchor is PIL with `Image.draft` decoding 1080p JPEGs to 224 px on one core (~200 images/s on the
development machine); the whole ingest phase (read, validate, hash, pHash, resize, dedupe, split, write
shards and report) should stay within 80 % of it per core.

    python benchmarks/ingest_throughput.py                      # defaults: 150 x 1080p, 400 x 224 px
    python benchmarks/ingest_throughput.py --n-1080p 400 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from streetvision.config import load_config
from streetvision.contracts import Split
from streetvision.data.decode import decode_image
from streetvision.data.shards import open_shards
from streetvision.phases.ingest import run_ingest
from streetvision.phases.result import PhasePaths

LABELS = ("no_roadwork", "roadwork")


def photo_like(seed: int, width: int, height: int) -> bytes:
    """A JPEG with smooth structure plus sensor noise (compresses like a photo, unlike flat colour)."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray((rng.random((18, 32, 3)) * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    arr = np.asarray(base, dtype=np.float32) + rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_dataset(root: Path, n: int, width: int, height: int) -> list[Path]:
    paths = []
    for i in range(n):
        path = root / LABELS[i % 2] / f"img{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo_like(i, width, height))
        paths.append(path)
    return paths


def per_image_rates(paths: list[Path], size: int, repeats: int = 3) -> tuple[float, float]:
    """Best-of-`repeats` images/s on one core, alternating so both see the same machine load:
    (anchor: PIL open + draft + convert + resize; ingest's decode_image: the same plus validation, EXIF
    orientation, pixel hash and pHash). Bytes are read beforehand (decode only)."""
    blobs = [p.read_bytes() for p in paths]

    def anchor(data: bytes) -> None:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (size, size))
        img.convert("RGB").resize((size, size), Image.BILINEAR)

    best = {"anchor": float("inf"), "decode_image": float("inf")}
    for _ in range(repeats):
        for name, fn in (("anchor", anchor), ("decode_image", lambda d: decode_image(d, size, 32))):
            start = time.perf_counter()
            for data in blobs:
                fn(data)
            best[name] = min(best[name], time.perf_counter() - start)
    return len(blobs) / best["anchor"], len(blobs) / best["decode_image"]


def ingest_rate(root: Path, out: Path, size: int, workers: int) -> tuple[float, float, Path]:
    cfg = load_config(
        [
            "data.source=folder",
            f"data.path={root}",
            f"model.img_size={size}",
            f"data.workers={workers}",
            "model.patch_size=null",
            "data.max_quarantine_fraction=0.0",
            "data.split.train=0.4",
            "data.split.val_select=0.2",
            "data.split.val_calib=0.2",
            "data.split.val_test=0.2",
        ]
    )
    n = sum(1 for _ in root.rglob("*.jpg"))
    start = time.perf_counter()
    paths = PhasePaths.of("ingest", **{s.value: out / s.value for s in Split}, data_report=out / "report")
    meta = run_ingest(cfg, paths).outputs
    seconds = time.perf_counter() - start
    return n / seconds, meta["data_report"]["summary"]["decode_images_per_second"], out


def cache_read_rate(split_dir: Path, batch: int = 256, seconds: float = 3.0) -> tuple[float, float]:
    """Images/s for random batches (training access) and for one sequential pass, from the memory-mapped shards."""
    images = open_shards(split_dir)
    rng = np.random.default_rng(0)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images[rng.integers(0, len(images), batch)]
        done += batch
    random_rate = done / (time.perf_counter() - start)
    start = time.perf_counter()
    for lo in range(0, len(images), batch):
        images[lo : lo + batch]
    return random_rate, len(images) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-1080p", type=int, default=150, help="number of 1920x1080 JPEGs (default 150)")
    parser.add_argument("--n-224", type=int, default=400, help="number of 224x224 JPEGs (default 400)")
    parser.add_argument("--size", type=int, default=224, help="cache resolution (default 224)")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, os.cpu_count() or 1],
        help="decode thread counts to measure (default: 1 and all cores)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where to write data (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        print(
            f"cores: {os.cpu_count()}; writing {args.n_1080p} x 1080p and {args.n_224} x 224 px JPEGs ...", flush=True
        )
        sets = {
            "1080p": (write_dataset(tmp / "src1080", args.n_1080p, 1920, 1080), tmp / "src1080"),
            "224px": (write_dataset(tmp / "src224", args.n_224, 224, 224), tmp / "src224"),
        }
        anchor, decode_rate = per_image_rates(sets["1080p"][0], args.size)
        print(f"anchor  PIL+draft 1080p->{args.size}, 1 core: {anchor:7.1f} images/s (best of 3)", flush=True)
        print(
            f"decode  ingest's decode_image 1080p->{args.size}, 1 core: {decode_rate:7.1f} images/s (best of 3) "
            f"= {100 * decode_rate / anchor:.0f} % of the anchor",
            flush=True,
        )
        last_out = None
        for name, (_paths, root) in sets.items():
            for workers in sorted(set(args.workers)):
                out = tmp / f"out_{name}_{workers}"
                rate, decode_rate, last_out = ingest_rate(root, out, args.size, workers)
                line = (
                    f"ingest  {name:>5} -> {args.size}, {workers:2d} thread(s): {rate:7.1f} images/s "
                    f"({rate / workers:6.1f} per core; read+decode stage {decode_rate:7.1f} images/s)"
                )
                if name == "1080p" and workers == 1:
                    line += f"  = {100 * rate / anchor:.0f} % of the anchor (goal >= 80 %)"
                print(line, flush=True)
        random_rate, sequential_rate = cache_read_rate(last_out / "train")
        print(
            f"cache   read {args.size}px uint8 shards: {random_rate:9.0f} images/s random batches of 256, "
            f"{sequential_rate:9.0f} images/s sequential",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
