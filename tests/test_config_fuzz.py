"""Fuzzing the overrides: whatever a user types, loading the config gives a config or one ConfigError.

Keys are drawn from the schema's own dotted keys (so most examples reach a field's validation, not just the
unknown-key check), values from every kind YAML can spell. A config that loads must also resolve to a phase
plan and survive the JSON round trip a pipeline task validates again.
"""

import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streetvision.config import Config, ConfigError, config_from_json, config_to_json, load_config
from streetvision.config.loader import _inner_model
from streetvision.config.schema import Group
from streetvision.phase_graph import resolve_phases
from streetvision.registry import PHASE_NAMES


def dotted_keys(model: type[Group] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.group_keys().items():
        inner = _inner_model(info.annotation)
        key = f"{prefix}{name}"
        if inner is not None and info.annotation is inner:  # a nested group: its own keys
            keys += dotted_keys(inner, f"{key}.")
        else:
            keys.append(key)
    return keys


KEYS = dotted_keys()
SCALARS = st.one_of(
    st.integers(-3, 3),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["phase1", "all", "8G", "500m", "0", "-1", "gs://b/x", "../x.csv", "ingest"]),
)
PHASE_LISTS = st.lists(st.sampled_from([*PHASE_NAMES, "all", "phase9"]), max_size=3)
VALUES = st.one_of(
    SCALARS, PHASE_LISTS, st.lists(SCALARS, max_size=4), st.dictionaries(st.text(max_size=5), SCALARS, max_size=2)
)
# The keys where a bad value used to crash later (issue table): drawn as often as all the others together.
RISKY_KEYS = [
    "pipeline.phases",
    "cluster.phase1.cpu",
    "cluster.phase1.memory",
    "model.patch_size",
    "model.num_heads",
    "model.depth",
    "model.embed_dim",
    "model.img_size",
    "training.warmup_epochs",
    "data.min_image_size",
    "data.max_record_bytes",
]


def _spelled(value) -> str:
    """The value as a user would type it after `key=` (YAML flow style, as the loader parses it)."""
    if isinstance(value, str):
        return value  # raw text: YAML may read it as anything, or fail to parse it
    if isinstance(value, float) and not math.isfinite(value):
        return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


OVERRIDE = st.builds(
    lambda key, value: f"{key}={_spelled(value)}", st.sampled_from(KEYS) | st.sampled_from(RISKY_KEYS), VALUES
)


def test_the_schema_keys_cover_the_groups():
    assert set(RISKY_KEYS) <= set(KEYS) and "data.sources" in KEYS
    assert len(KEYS) > 150


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OVERRIDE, min_size=1, max_size=2))
def test_overrides_give_a_config_or_a_config_error(overrides):
    try:
        cfg = load_config(overrides)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    phases, _ = resolve_phases(cfg.pipeline.phases)
    assert phases
    assert config_from_json(config_to_json(cfg)) == cfg


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.one_of(PHASE_LISTS, SCALARS))
def test_any_phase_choice_gives_a_plan_or_a_config_error(value):
    try:
        cfg = load_config([f"pipeline.phases={_spelled(value)}", "model=vit_tiny"])  # phase 4 takes a ViT only
    except ConfigError as exc:
        assert exc.problems[0].startswith("pipeline.phases: ")
        return
    phases, _ = resolve_phases(cfg.pipeline.phases)
    assert phases and set(phases) <= set(PHASE_NAMES)
