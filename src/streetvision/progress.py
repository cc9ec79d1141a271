"""The library's console output: `logging` under the ``streetvision`` logger, with one console handler, and
progress for long loops (a live rich bar on a terminal, periodic log lines otherwise, as in KFP task logs).

Modules log to ``logging.getLogger(__name__)``. The handler is installed here, once, at import: in a KFP task
no entry point of ours runs before the phase, and the executor's root handler would prefix every line with its
own timestamped tag. An application that wants other output replaces ``CONSOLE`` or sets ``propagate``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class _Console(logging.StreamHandler):
    """`[streetvision] message` (with the level for warnings and errors) on stderr as it is when the line is
    written, not when the handler was made, so that redirections and captured output see it."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("[streetvision] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else text.replace("] ", f"] {record.levelname}: ", 1)


LOGGER = logging.getLogger("streetvision")
CONSOLE = _Console()
if not any(isinstance(h, _Console) for h in LOGGER.handlers):
    LOGGER.addHandler(CONSOLE)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False  # one handler: not printed again by a root handler (KFP's executor has one)
logger = logging.getLogger(__name__)


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
            logger.info(f"{desc}: {done}/{total} {unit}s ({rate:.0f}/s, eta {eta:.0f}s)")
