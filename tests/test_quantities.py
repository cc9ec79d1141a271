"""Every cpu/memory quantity the config accepts is one KFP's compiler and Kubernetes both accept."""

from hypothesis import given, settings
from hypothesis import strategies as st
from kfp import dsl
from kubernetes.utils import parse_quantity

from streetvision.config import ConfigError, load_config

NUMBERS = st.from_regex(r"\A-?[0-9]{0,4}(\.[0-9]{0,3})?(e[0-9])?\Z")
SUFFIXES = st.sampled_from(["", "m", "k", "K", "Ki", "M", "Mi", "G", "Gi", "T", "Ti", "P", "Pi", "E", "Ei", "u", " "])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(NUMBERS, SUFFIXES, st.sampled_from(["cpu", "memory"]))
def test_accepted_quantities_compile_and_schedule(number, suffix, kind):
    value = number + suffix
    try:
        cfg = load_config([f"cluster.phase1.{kind}='{value}'"])
    except ConfigError as exc:
        assert exc.problems[0].startswith(f"cluster.phase1.{kind}: ")
        return
    # What the compiler's set_cpu_limit / set_memory_limit check (their validators use no task state) ...
    validate = {
        "cpu": dsl.PipelineTask._validate_cpu_request_limit,
        "memory": dsl.PipelineTask._validate_memory_request_limit,
    }
    validate[kind](None, value)
    # ... and what the cluster parses; a task needs more than nothing.
    assert parse_quantity(getattr(cfg.cluster.resources_for("phase1"), kind)) > 0
