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


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values)
    return np.unpackbits(values[..., None].view(np.uint8), axis=-1).sum(-1)


def near_duplicate_pairs(hashes: np.ndarray, radius: int) -> np.ndarray:
    """Index pairs (i < j) of 64-bit hashes within Hamming distance `radius`, as an (M, 2) int64 array.

    Multi-index hashing: cut the 64 bits into radius + 1 bands; two hashes within the radius agree exactly
    on at least one band (pigeonhole), so only hashes sharing a band value are compared. Exact, and near
    linear for real photos (a bucket of equal band values is small).
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2 or radius < 0:
        return np.zeros((0, 2), dtype=np.int64)
    edges = np.linspace(0, 64, radius + 2).astype(int)
    found: set[tuple[int, int]] = set()
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        band = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        sorted_band = band[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_band[1:] != sorted_band[:-1]]))
        ends = np.concatenate([starts[1:], [n]])
        for start, end in zip(starts, ends):
            if end - start < 2:
                continue
            members = np.sort(order[start:end])
            values = hashes[members]
            for row0 in range(0, len(members), 256):  # row blocks bound memory for a large bucket
                xor = values[row0 : row0 + 256, None] ^ values[None, :]
                distance = _popcount(xor)
                a, b = np.nonzero(distance <= radius)
                keep = row0 + a < b
                found.update(zip(members[row0 + a[keep]].tolist(), members[b[keep]].tolist()))
    return np.array(sorted(found), dtype=np.int64).reshape(-1, 2)


def merge_groups(pairs: Iterable[tuple[str, str]], group_ids: Iterable[str]) -> dict[str, str]:
    """Map each group id to its merged group, joining groups connected by `pairs` (connected components).

    A merged group is named by its smallest member id, so the name does not depend on visiting order.
    Adding data never moves an existing sample, with one exception no group-level rule can avoid: a new
    sample that is a (near) duplicate of an existing group, with a smaller group id, renames that group
    (and may move it); one that bridges two groups in different splits joins them (one of them moves).
    Both are visible in the data report's joined groups.
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
