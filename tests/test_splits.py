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
