"""Grouping of duplicates and the group-aware, seeded split assignment.

Grouping: exact duplicates (and a source's own groups) always share a group (connected components,
`merge_groups`); near duplicates join by complete linkage (`near_duplicate_clusters`): two groups merge only
when *every* pair of their images is within the pHash radius, so a group's diameter is bounded by the radius.
Single linkage (any one close pair joins) chains distinct images through intermediate ones: on 1,797 small
scans a radius of 8 made one group of 140 distinct images.

Assignment (`assign_splits`): per label stratum, groups are ordered by a seeded hash of their id and the split
boundaries are put at the target counts along that order, so each split's share and class ratio is on target
up to one group per boundary. Groups larger than ``data.split.large_group_fraction`` of the data are placed
first, each into the split (of its stratum) furthest below its target. The trade against a fixed hash cut
(``data.split.assignment=stable``, which never moves an old group but leaves shares and class ratios to
sampling noise and large groups to chance): adding data can move an old group, but only one that lies next to a
boundary the new data shifted (about sqrt(new images) per boundary), never the bulk.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

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


def split_of_group(group_id: str, shares: dict[Split, float], seed: int) -> Split:
    """`data.split.assignment=stable`: the split of a group depends only on (seed, group id, shares).

    Adding data therefore never moves an existing group (while the shares stay). Each label stratum is cut by
    the same thresholds, so class ratios agree across splits up to sampling noise.
    """
    u = hash_unit(seed, group_id)
    edge = 0.0
    for split in _ORDER:
        edge += shares[split]
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


def near_duplicate_clusters(
    unit_of: list[str], pairs: np.ndarray, distances: np.ndarray, hashed: list[bool] | None = None
) -> dict[str, str]:
    """Complete-linkage merging of units (exact-duplicate / source groups) through near-duplicate image pairs.

    `unit_of[i]` is image i's unit; `pairs` (M, 2) the image index pairs within the radius and `distances` their
    Hamming distances. Pairs are visited closest first (ties by index, so the result does not depend on input
    order), and two clusters merge only when every pair of their hashed images is among `pairs`: each cluster's
    diameter stays within the radius. Returns unit -> cluster name (its smallest unit id).
    """
    hashed = hashed if hashed is not None else [True] * len(unit_of)
    size: dict[str, int] = defaultdict(int)
    for unit, h in zip(unit_of, hashed):
        size[unit] += int(h)
    parent = {unit: unit for unit in unit_of}

    def root(u: str) -> str:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    # links[a][b]: number of image pairs within the radius between clusters a and b.
    links: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    for a, b in pairs.tolist():
        ua, ub = unit_of[a], unit_of[b]
        if ua != ub:
            links[ua][ub] += 1
            links[ub][ua] += 1
    order = np.lexsort((pairs[:, 1], pairs[:, 0], np.asarray(distances))) if len(pairs) else np.zeros(0, np.int64)
    for k in order.tolist():
        ra, rb = root(unit_of[pairs[k, 0]]), root(unit_of[pairs[k, 1]])
        if ra == rb or links[ra].get(rb, 0) < size[ra] * size[rb]:
            continue
        keep, gone = (ra, rb) if ra < rb else (rb, ra)
        parent[gone] = keep
        size[keep] += size.pop(gone)
        for other, n in links.pop(gone).items():
            del links[other][gone]
            if other != keep:
                links[keep][other] += n
                links[other][keep] += n
    return {unit: root(unit) for unit in parent}


def hamming_distances(hashes: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    hashes = np.asarray(hashes, dtype=np.uint64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return _popcount(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]).astype(np.int64)


def split_targets(cfg: SplitConfig, n: int) -> tuple[dict[Split, float], list[str]]:
    """The split shares for `n` images: the configured fractions, with VAL_SELECT and VAL_CALIB raised to their
    floors (data.split.min_val_select / min_val_calib images), taken from TRAIN, as long as TRAIN keeps at least
    data.split.min_train_fraction. Returns the shares and a note for each adjustment made or refused."""
    shares = {split: cfg.fractions()[split.value] for split in _ORDER}
    notes = []
    raise_to = {
        Split.VAL_SELECT: (cfg.min_val_select / n if n else 0.0, "min_val_select", cfg.min_val_select),
        Split.VAL_CALIB: (cfg.min_val_calib / n if n else 0.0, "min_val_calib", cfg.min_val_calib),
    }
    wanted = {split: max(0.0, floor - shares[split]) for split, (floor, _, _) in raise_to.items()}
    room = max(0.0, shares[Split.TRAIN] - cfg.min_train_fraction)
    scale = min(1.0, room / sum(wanted.values())) if sum(wanted.values()) > 0 else 1.0
    for split, extra in wanted.items():
        if extra <= 0:
            continue
        shares[split] += extra * scale
        shares[Split.TRAIN] -= extra * scale
        _, key, floor = raise_to[split]
        got = round(shares[split] * n)
        notes.append(
            f"{split.value} raised to {shares[split]:.1%} (~{got} of {n} images) for data.split.{key}={floor}"
            + (
                ""
                if scale >= 1.0
                else f"; short of the floor because TRAIN keeps data.split.min_train_fraction={cfg.min_train_fraction}"
            )
        )
    return shares, notes


@dataclass(frozen=True)
class GroupFacts:
    size: int  # images
    label: int  # the majority label of its images (ties: 1): the stratum it is balanced in


def assign_splits(groups: dict[str, GroupFacts], cfg: SplitConfig) -> tuple[dict[str, Split], list[str]]:
    """Each group's split, balanced per label stratum (see the module docstring); plus the notes of
    `split_targets`. Deterministic for given groups and seed."""
    n = sum(g.size for g in groups.values())
    shares, notes = split_targets(cfg, n)
    if cfg.assignment == "stable":
        return {name: split_of_group(name, shares, cfg.seed) for name in groups}, notes
    large = max(2, math.ceil(cfg.large_group_fraction * n))
    placed: dict[str, Split] = {}
    for label in sorted({g.label for g in groups.values()}):
        members = {name: g for name, g in groups.items() if g.label == label}
        total = sum(g.size for g in members.values())
        target = {split: shares[split] * total for split in _ORDER}
        taken = dict.fromkeys(_ORDER, 0)
        big = sorted(
            (name for name, g in members.items() if g.size >= large),
            key=lambda name: (-members[name].size, hash_unit(cfg.seed, name)),
        )
        for name in big:
            split = max(_ORDER, key=lambda s: (target[s] - taken[s], -_ORDER.index(s)))
            placed[name] = split
            taken[split] += members[name].size
        rest = sorted(
            (name for name in members if name not in placed), key=lambda name: (hash_unit(cfg.seed, name), name)
        )
        left = {split: max(0.0, target[split] - taken[split]) for split in _ORDER}
        scale = sum(members[name].size for name in rest) / max(sum(left.values()), 1e-12)
        edges = np.cumsum([left[split] * scale for split in _ORDER])
        position = 0.0
        for name in rest:
            middle = position + members[name].size / 2
            placed[name] = _ORDER[min(int(np.searchsorted(edges, middle, side="right")), len(_ORDER) - 1)]
            position += members[name].size
    return placed, notes
