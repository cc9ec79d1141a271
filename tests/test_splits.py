import collections

from streetvision.config.schema import SplitConfig
from streetvision.contracts import Split
from streetvision.data.splits import merge_groups, split_of_group


def test_assignment_is_deterministic_and_seeded():
    cfg = SplitConfig()
    groups = [f"g{i}" for i in range(500)]
    first = [split_of_group(g, cfg) for g in groups]
    assert first == [split_of_group(g, cfg) for g in groups]
    other_seed = [split_of_group(g, SplitConfig(seed=1)) for g in groups]
    assert first != other_seed


def test_adding_groups_never_moves_existing_ones():
    cfg = SplitConfig()
    old = {f"seq{i}": split_of_group(f"seq{i}", cfg) for i in range(300)}
    for i in range(300, 3000):
        split_of_group(f"seq{i}", cfg)  # new data arrives
    assert old == {g: split_of_group(g, cfg) for g in old}


def test_fractions_within_tolerance():
    cfg = SplitConfig(train=0.7, val_select=0.1, val_calib=0.1, val_test=0.1)
    counts = collections.Counter(split_of_group(f"g{i}", cfg) for i in range(20000))
    for split, expected in zip(Split, (0.7, 0.1, 0.1, 0.1)):
        assert abs(counts[split] / 20000 - expected) < 0.01, (split, counts)


def test_merge_groups_joins_connected_groups_by_smallest_name():
    merged = merge_groups([("b", "c"), ("d", "c"), ("x", "x")], ["a", "b", "c", "d", "e", "x"])
    assert merged == {"a": "a", "b": "b", "c": "b", "d": "b", "e": "e", "x": "x"}


def test_near_duplicate_pairs_match_scipy_brute_force():
    import numpy as np
    from scipy.spatial.distance import cdist

    from streetvision.data.splits import near_duplicate_pairs

    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**63, size=400, dtype=np.int64).astype(np.uint64)
    # Near copies at 1..10 flipped bits, and a block of identical hashes (one big bucket).
    flips = [np.uint64(sum(1 << int(b) for b in rng.choice(64, k, replace=False))) for k in range(1, 11)]
    hashes = np.concatenate([base, base[:10] ^ np.array(flips, dtype=np.uint64), np.full(30, base[50])])
    bits = np.unpackbits(hashes[:, None].view(np.uint8), axis=1)
    distance = np.rint(cdist(bits, bits, "hamming") * 64).astype(int)
    for radius in (0, 3, 8):
        a, b = np.nonzero(np.triu(distance <= radius, k=1))
        expected = sorted(zip(a.tolist(), b.tolist()))
        assert near_duplicate_pairs(hashes, radius).tolist() == [list(p) for p in expected]
    assert near_duplicate_pairs(hashes, -1).shape == (0, 2)


def test_split_fractions_hold_within_each_label_stratum():
    cfg = SplitConfig()
    for label in (0, 1):
        counts = collections.Counter(split_of_group(f"label{label}-g{i}", cfg) for i in range(10000))
        for split, expected in zip(Split, (0.7, 0.1, 0.1, 0.1)):
            assert abs(counts[split] / 10000 - expected) < 0.015, (label, split, counts)
