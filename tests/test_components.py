"""The KFP components as KFP calls them: each component's python function with kfp.dsl artifacts on disk.

The whole-pipeline local runs (test_local_run.py) execute the default phases; here the variant (phase 1 from
phase 4's adapted backbone) and the optional phases 3, 4 and 5 run too, through the one adapter.
"""

import inspect
import json
import typing

import pytest
from conftest import TINY
from kfp.dsl import HTML, ClassificationMetrics, Metrics
from streetvision_components import phases as components
from streetvision_components import types
from streetvision_components.adapter import run_component

from streetvision.config import config_to_json, load_config
from streetvision.contracts import ContractError, Split
from streetvision.contracts.metadata import METADATA_FILE
from streetvision.phases.result import PhasePaths
from streetvision.registry import PHASE_SPECS

# Phase 4 at test size (as tests/test_explora.py runs it).
EXPLORA = [
    "model.depth=2",
    "explora.steps=1",
    "explora.rank=4",
    "explora.batch_size=4",
    "explora.local_crops=0",
    "explora.prototypes=64",
    "explora.hidden_dim=32",
    "explora.bottleneck_dim=16",
    "explora.warmup_steps=0",
    "explora.teacher_temp_warmup_steps=0",
    "explora.knn_k=5",
]
SPLIT_TYPES = {
    Split.TRAIN: types.TrainSplit,
    Split.VAL_SELECT: types.ValSelectSplit,
    Split.VAL_CALIB: types.ValCalibSplit,
    Split.VAL_TEST: types.ValTestSplit,
}


def artifact(cls, path):
    """An artifact as the KFP executor hands it to the component: `.path` is the folder or file on disk."""
    return cls(name=path.name, uri=str(path))


def splits(dirs, *which):
    return {s.value: artifact(SPLIT_TYPES[s], dirs[s]) for s in which}


def _annotation_type(annotation):
    """Output[HTML] -> HTML (KFP's Input/Output are Annotated aliases)."""
    return typing.get_args(annotation)[0] if typing.get_args(annotation) else annotation


def test_html_outputs_of_every_component_are_the_registry_reports():
    for spec in PHASE_SPECS.values():
        for name in [spec.component, *spec.variants.values()]:
            params = inspect.signature(getattr(components, name)).parameters.values()
            html = {p.name for p in params if _annotation_type(p.annotation) is HTML}
            assert html == set(spec.reports), name


def test_metrics_and_reports_are_written_behind_every_output(ingested, tmp_path):
    """Phase 4's component, then the variant that trains phase 1 from its backbone."""
    _, dirs, _, _ = ingested
    cfg = load_config(TINY + EXPLORA)
    backbone = artifact(types.AdaptedBackbone, tmp_path / "backbone")
    ssl_metrics, ssl_curves = artifact(Metrics, tmp_path / "ssl_metrics"), artifact(HTML, tmp_path / "ssl_curves")
    components.phase4_explora(
        config_to_json(cfg),
        **splits(dirs, Split.TRAIN, Split.VAL_SELECT),
        backbone=backbone,
        ssl_metrics=ssl_metrics,
        ssl_curves=ssl_curves,
    )
    assert backbone.metadata["kind"] == "backbone"
    record = json.loads((tmp_path / "backbone" / METADATA_FILE).read_text())
    assert backbone.metadata["digest"] == record["digest"]  # the record as written, bound by its digest
    # KFP's local cache needs a file behind every output; the Metrics file holds what was logged.
    assert json.loads((tmp_path / "ssl_metrics").read_text()) == ssl_metrics.metadata
    assert ssl_metrics.metadata["steps"] == 1.0
    assert "<img" in (tmp_path / "ssl_curves").read_text()

    outs = {
        "checkpoint": artifact(types.Checkpoint, tmp_path / "checkpoint"),
        "val_select_logits": artifact(types.ValSelectLogits, tmp_path / "val_select_logits"),
        "val_calib_logits": artifact(types.ValCalibLogits, tmp_path / "val_calib_logits"),
        "training_metrics": artifact(Metrics, tmp_path / "training_metrics"),
        "training_curves": artifact(HTML, tmp_path / "training_curves"),
    }
    components.phase1_train_adapted(
        config_to_json(cfg),
        **splits(dirs, Split.TRAIN, Split.VAL_SELECT, Split.VAL_CALIB),
        backbone=artifact(types.AdaptedBackbone, tmp_path / "backbone"),
        **outs,
    )
    for name in ("checkpoint", "val_select_logits", "val_calib_logits"):
        lineage = [(e["phase"], e["role"], e["split"]) for e in outs[name].metadata["lineage"]]
        assert lineage[:2] == [("phase4", "fit", "train"), ("phase4", "model_selection", "val_select")], name
        assert ("phase1", "fit", "train") in lineage, name
        on_disk = json.loads((tmp_path / name / METADATA_FILE).read_text())
        assert outs[name].metadata["lineage"] == on_disk["lineage"], name  # the rewritten record, not the first
    assert outs["checkpoint"].metadata["summary"]["backbone"] == f"phase4 {cfg.explora.adapter}"
    assert json.loads((tmp_path / "training_metrics").read_text())["epochs_run"] == 1.0
    assert outs["training_metrics"].metadata["epochs_run"] == 1.0
    assert "<img" in (tmp_path / "training_curves").read_text()


def test_gate_scrc_threshold_export_and_evaluate_components(trained, tmp_path):
    _, dirs, out = trained
    config = config_to_json(load_config(TINY + ["gate.epochs=1"]))
    gate = {
        "gate_checkpoint": artifact(types.Checkpoint, tmp_path / "gate_checkpoint"),
        "policy": artifact(types.SelectivePolicy, tmp_path / "gate"),
    }
    components.phase3_gate(
        config,
        checkpoint=artifact(types.Checkpoint, out["checkpoint"]),
        **splits(dirs, Split.TRAIN, Split.VAL_SELECT, Split.VAL_CALIB),
        **gate,
    )
    assert gate["gate_checkpoint"].metadata["kind"] == "checkpoint"
    assert gate["policy"].metadata["kind"] == "policy" and gate["policy"].metadata["phase"] == "phase3"
    assert json.loads((tmp_path / "gate" / "policy.json").read_text())["kind"] == "gate"

    for function, phase, kind in (
        (components.phase5_scrc, "phase5", "scrc"),
        (components.phase2_threshold, "phase2", "threshold"),
    ):
        policy = artifact(types.SelectivePolicy, tmp_path / kind)
        function(config, val_calib_logits=artifact(types.ValCalibLogits, out["val_calib_logits"]), policy=policy)
        assert policy.metadata["phase"] == phase
        assert json.loads((tmp_path / kind / "policy.json").read_text())["kind"] == kind

    bundle = artifact(types.DeploymentBundle, tmp_path / "bundle")
    components.phase6_export(
        config,
        checkpoint=artifact(types.Checkpoint, tmp_path / "gate_checkpoint"),
        policy=artifact(types.SelectivePolicy, tmp_path / "gate"),
        val_calib=artifact(types.ValCalibSplit, dirs[Split.VAL_CALIB]),
        bundle=bundle,
    )
    assert bundle.metadata["summary"]["policy"] == "gate"

    outs = {
        "evaluation": artifact(types.EvaluationResult, tmp_path / "evaluation"),
        "metrics": artifact(Metrics, tmp_path / "metrics"),
        "classification_metrics": artifact(ClassificationMetrics, tmp_path / "classification_metrics"),
        "report": artifact(HTML, tmp_path / "report"),
    }
    returned = components.evaluate(
        config, bundle=bundle, val_test=artifact(types.ValTestSplit, dirs[Split.VAL_TEST]), **outs
    )
    assert returned.blessed == outs["evaluation"].metadata["summary"]["blessed"]
    assert outs["evaluation"].metadata["split"] == "val_test"
    assert "accuracy" in outs["metrics"].metadata
    assert json.loads((tmp_path / "metrics").read_text()) == outs["metrics"].metadata
    matrix = outs["classification_metrics"].metadata["confusionMatrix"]["rows"]
    assert sum(sum(row["row"]) for row in matrix) == outs["evaluation"].metadata["count"]
    assert json.loads((tmp_path / "classification_metrics").read_text())["roc"]["fpr"][0] == 0.0
    assert (tmp_path / "report").read_text() == (tmp_path / "evaluation" / "report.html").read_text()


def test_adapter_refuses_artifacts_the_registry_does_not_know_before_running(trained, tmp_path):
    cfg, _, out = trained
    logits = artifact(types.ValCalibLogits, out["val_calib_logits"])
    policy = artifact(types.SelectivePolicy, tmp_path / "policy")
    with pytest.raises(TypeError, match="'val_test' .* neither an input or output the phase registry declares"):
        run_component(
            "phase2",
            config_to_json(cfg),
            val_calib_logits=logits,
            policy=policy,
            val_test=artifact(types.ValTestSplit, tmp_path / "t"),
        )
    with pytest.raises(TypeError, match="not a report"):
        run_component(
            "phase2", config_to_json(cfg), val_calib_logits=logits, policy=policy, curves=artifact(HTML, tmp_path / "c")
        )
    assert not (tmp_path / "policy").exists()


def test_phase_paths_name_what_is_missing_or_unknown(tmp_path):
    with pytest.raises(ContractError, match="missing val_calib") as info:
        PhasePaths.of("phase1", train=tmp_path, val_select=tmp_path, checkpoint=tmp_path)
    assert "phase1" in info.value.where
    with pytest.raises(ContractError, match="unknown phase"):
        PhasePaths.of("phase9")
    # The variant's input is optional; every other input and every output is required.
    names = {n: tmp_path / n for n in (*PHASE_SPECS["phase1"].inputs, *PHASE_SPECS["phase1"].outputs)}
    assert PHASE_SPECS["phase1"].optional_inputs == {"backbone"}
    assert "backbone" not in PhasePaths.of("phase1", **{k: v for k, v in names.items() if k != "backbone"}).inputs
    assert all(not spec.optional_inputs for spec in PHASE_SPECS.values() if spec.name != "phase1")
