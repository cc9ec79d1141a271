"""The phase registry: one declaration per phase, and what is derived from it."""

import json

from streetvision_components.phases import PHASE_FUNCTIONS, PHASE_VARIANTS
from streetvision_pipelines.factory import make_component

from streetvision.config import Config, load_config
from streetvision.contracts.metadata import METADATA_FILE
from streetvision.phase_graph import resolve_phases
from streetvision.registry import PHASE_NAMES, PHASE_SPECS, PHASES
from streetvision.run_summary import summarize_run


def _component_io(spec) -> tuple[set[str], set[str]]:
    return set(spec.inputs or {}) - {"config"}, set(spec.outputs or {})


def test_registry_matches_the_components():
    """Each declared input is a parameter of the component (or of a variant), each declared output one of its
    outputs, and every provider names an output the providing phase declares."""
    cfg = load_config()
    for spec in PHASES:
        inputs, outputs = _component_io(make_component(spec.name, cfg).component_spec)
        variant_inputs = set()
        for function in PHASE_VARIANTS.get(spec.name, {}).values():
            v_inputs, v_outputs = _component_io(make_component(spec.name, cfg, function).component_spec)
            assert v_outputs == outputs, spec.name
            variant_inputs |= v_inputs - inputs
        assert set(spec.inputs) == inputs | variant_inputs, spec.name
        assert set(spec.outputs) <= outputs, spec.name
        assert set(spec.reads) <= set(spec.inputs), spec.name
        for providers in spec.inputs.values():
            for provider in providers:
                phase, output = provider.split(".")
                assert output in PHASE_SPECS[phase].outputs, provider
                assert PHASE_NAMES.index(phase) < PHASE_NAMES.index(spec.name), provider
        assert PHASE_FUNCTIONS[spec.name].__name__ == spec.component
        assert callable(spec.library_function())


def test_config_defaults_come_from_the_registry():
    cfg = Config()
    for spec in PHASES:
        res = cfg.cluster.resources_for(spec.name)
        assert (res.cpu, res.memory, res.gpus) == (spec.resources.cpu, spec.resources.memory, spec.resources.gpus)
    assert cfg.pipeline.phases == [s.name for s in PHASES if s.default]


def test_requirements_are_added_in_registry_order():
    phases, added = resolve_phases(["phase3", "phase6"])
    assert phases == [p for p in PHASE_NAMES if p in {"ingest", "phase1", "phase3", "phase6"}]
    assert added == ["ingest", "phase1"]


def _record(root, folder: str, **meta) -> None:
    path = root / "kfp" / "attempt1" / folder
    path.mkdir(parents=True)
    (path / METADATA_FILE).write_text(json.dumps({"created_unix": 1.0, "summary": {}, **meta}))


def test_run_summary_counts_an_output_for_the_phase_that_wrote_it(tmp_path):
    """A phase-5 policy does not make phase 2 done (both write kind 'policy')."""
    _record(tmp_path, "phase5-policy", kind="policy", phase="phase5", summary={"guarantee": "scrc"})
    summary = summarize_run(tmp_path, ["phase2", "phase5"])
    assert summary.status("phase5") == "done"
    assert summary.status("phase2") == "not finished"
    assert summary.policy_guarantee == "scrc"
    rows = {(phase, status) for phase, status, *_ in summary.rows()}
    assert ("phase2", "missing") in rows and ("phase5", "done") in rows


def test_run_summary_tells_phase3_checkpoint_from_phase1s(tmp_path):
    _record(tmp_path, "phase1-checkpoint", kind="checkpoint", phase="phase1")
    summary = summarize_run(tmp_path, ["phase1", "phase3"])
    assert ("phase1", "checkpoint") in summary.outputs
    assert summary.status("phase3") == "not finished"
    _record(tmp_path, "phase3-gate", kind="checkpoint", phase="phase3")
    _record(tmp_path, "phase3-policy", kind="policy", phase="phase3")
    assert summarize_run(tmp_path, ["phase1", "phase3"]).status("phase3") == "done"
