"""What verifying the shard cache costs: SHA-256 of each shard when it is first read, never again that process.

Writes a synthetic split (uint8 shards at training resolution, its completion record with every file's digest)
into a temporary folder, then reads every image in shuffled batches for a few epochs through the same view the
training loop uses. Prints the record's hashing time, the read rate of the first epoch (which verifies each
shard on first touch) and of the later ones (which hash nothing), and plain SHA-256 throughput. Needs only
numpy and pyarrow (PYTHONPATH=src).

    PYTHONPATH=src python benchmarks/shard_verify.py --images 20000 --size 224 --dir /mnt/fast-disk
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

from streetvision.contracts.metadata import ArtifactMetadata, read_metadata, write_metadata
from streetvision.data.shards import open_shards, write_shard, write_shard_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--shard-images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write the split (default: a temp folder)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        root = Path(scratch)
        entries, start = [], 0
        while start < args.images:
            n = min(args.shard_images, args.images - start)
            pixels = rng.integers(0, 256, (n, args.size, args.size, 3), dtype=np.uint8)
            entries.append(write_shard(root, len(entries), pixels))
            start += n
        shape = (args.size, args.size, 3)
        write_shard_manifest(root, entries, shape)
        total_bytes = sum(e["bytes"] for e in entries)

        began = time.perf_counter()
        write_metadata(root, ArtifactMetadata(kind="split", phase="benchmark", split="train", count=args.images))
        record_seconds = time.perf_counter() - began

        meta = read_metadata(root, "benchmark")
        images = open_shards(root, "benchmark", meta)
        print(
            f"{args.images} images at {args.size} px in {len(entries)} shards ({total_bytes / 2**30:.2f} GiB); "
            f"record written (every file hashed) in {record_seconds:.2f} s"
        )
        for epoch in range(args.epochs):
            order = rng.permutation(args.images)
            began = time.perf_counter()
            for first in range(0, args.images, args.batch_size):
                images[order[first : first + args.batch_size]]
            seconds = time.perf_counter() - began
            what = "verifies each shard on first read" if epoch == 0 else "hashes nothing"
            print(f"epoch {epoch + 1}: {args.images / seconds:,.0f} images/s ({what})")

        with open(root / entries[0]["file"], "rb") as handle:
            began = time.perf_counter()
            hashlib.file_digest(handle, "sha256")
            seconds = time.perf_counter() - began
        print(f"SHA-256 of one shard: {entries[0]['bytes'] / 2**20 / seconds:,.0f} MiB/s")


if __name__ == "__main__":
    main()
