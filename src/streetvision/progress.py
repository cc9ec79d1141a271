"""Progress for long loops: a live bar on a terminal, periodic log lines otherwise (KFP task logs)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def log(message: str) -> None:
    print(f"[streetvision] {message}", flush=True)


def progress(items: Iterable[T], total: int, desc: str, unit: str = "item") -> Iterator[T]:
    """Yield `items`; report count, rate and ETA. Logs at most ~10 lines when not on a terminal."""
    if sys.stdout.isatty():
        from rich.progress import track

        yield from track(items, total=total, description=desc)
        return
    start = time.perf_counter()
    step = max(1, total // 10)
    for done, item in enumerate(items, 1):
        yield item
        if done % step == 0 or done == total:
            elapsed = time.perf_counter() - start
            rate = done / elapsed if elapsed > 0 else float("inf")
            eta = (total - done) / rate if rate > 0 else 0.0
            log(f"{desc}: {done}/{total} {unit}s ({rate:.0f}/s, eta {eta:.0f}s)")
