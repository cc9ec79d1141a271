"""Group-aware, seeded, stable split assignment, and grouping of exact duplicates."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from streetvision.config.schema import SplitConfig
from streetvision.contracts.splits import Split

_ORDER = (Split.TRAIN, Split.VAL_SELECT, Split.VAL_CALIB, Split.VAL_TEST)


def hash_unit(seed: int, key: str) -> float:
    """A uniform number in [0, 1) from a seeded hash: independent of every other key."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of_group(group_id: str, cfg: SplitConfig) -> Split:
    """The split of a group depends only on (seed, group id, fractions).

    Adding data therefore never moves an existing group. Each label stratum is cut by the same thresholds, so
    class ratios agree across splits up to sampling noise (exact counts are in the data report).
    """
    u = hash_unit(cfg.seed, group_id)
    edge = 0.0
    fractions = cfg.fractions()
    for split in _ORDER:
        edge += fractions[split.value]
        if u < edge:
            return split
    return _ORDER[-1]  # rounding of the fractions' sum


def merge_groups(pairs: Iterable[tuple[str, str]], group_ids: Iterable[str]) -> dict[str, str]:
    """Map each group id to its merged group, joining groups connected by `pairs` (connected components).

    A merged group is named by its smallest member id, so the name does not depend on visiting order.
    """
    names = sorted(set(group_ids))
    index = {name: i for i, name in enumerate(names)}
    edges = [(index[a], index[b]) for a, b in pairs]
    rows = np.array([a for a, _ in edges], dtype=np.int64)
    cols = np.array([b for _, b in edges], dtype=np.int64)
    graph = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(len(names), len(names)))
    _, component = connected_components(graph, directed=False)
    first: dict[int, str] = {}
    for name, comp in zip(names, component):  # names are sorted, so the first seen is the smallest
        first.setdefault(int(comp), name)
    return {name: first[int(comp)] for name, comp in zip(names, component)}
