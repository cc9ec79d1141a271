"""Run-time leakage checks in the phase functions: the local runner drops KFP types, so metadata decides."""

import json
import shutil

import pyarrow.parquet as pq
import pytest
from conftest import build_bundle, phase1_paths, reseal_record

from streetvision.contracts import IncompleteArtifactError, IntegrityError, LeakageViolationError, Split
from streetvision.contracts.metadata import METADATA_FILE, read_metadata
from streetvision.phases.evaluate import run_evaluate
from streetvision.phases.phase1 import run_phase1
from streetvision.phases.phase2 import run_phase2
from streetvision.phases.phase6 import run_phase6
from streetvision.phases.result import PhasePaths


def _evaluate_paths(root, dirs) -> PhasePaths:
    return PhasePaths.of("evaluate", bundle=root / "bundle", val_test=dirs[Split.VAL_TEST], evaluation=root / "eval")


def test_phase2_refuses_val_select_logits(trained, tmp_path):
    cfg, _, out = trained
    with pytest.raises(LeakageViolationError) as info:
        run_phase2(cfg, PhasePaths.of("phase2", val_calib_logits=out["val_select_logits"], policy=tmp_path / "policy"))
    assert "VAL_SELECT" in info.value.what and "val_calib_logits" in info.value.where
    assert "VAL_CALIB" in info.value.fix
    assert not (tmp_path / "policy").exists()  # nothing written before the check


def test_phase1_refuses_val_test_as_train(ingested, tmp_path):
    cfg, dirs, _, _ = ingested
    with pytest.raises(LeakageViolationError, match="VAL_TEST data was given to a step whose role is fit"):
        run_phase1(cfg, phase1_paths(dirs, tmp_path, train=dirs[Split.VAL_TEST]))
    with pytest.raises(LeakageViolationError, match="expected VAL_CALIB data, got VAL_SELECT"):
        run_phase1(cfg, phase1_paths(dirs, tmp_path, val_calib=dirs[Split.VAL_SELECT]))


def test_incomplete_input_is_refused(ingested, tmp_path):
    cfg, dirs, _, _ = ingested
    partial = tmp_path / "train"
    shutil.copytree(dirs[Split.TRAIN], partial)
    (partial / METADATA_FILE).unlink()  # as if ingest died while writing
    with pytest.raises(IncompleteArtifactError, match="no completion record"):
        run_phase1(cfg, phase1_paths(dirs, tmp_path, train=partial))


def test_edited_split_is_refused(ingested, tmp_path):
    cfg, dirs, _, _ = ingested
    edited = tmp_path / "val_calib"
    shutil.copytree(dirs[Split.VAL_CALIB], edited)
    table = pq.read_table(edited / "samples.parquet")
    pq.write_table(table.slice(1), edited / "samples.parquet")
    with pytest.raises(IntegrityError, match="samples.parquet"):
        run_phase1(cfg, phase1_paths(dirs, tmp_path, val_calib=edited))


def test_evaluate_refuses_a_bundle_touched_by_val_test(trained, ingested, tmp_path):
    cfg, dirs, out = trained
    build_bundle(cfg, dirs, out, tmp_path)
    # Forge a lineage in which VAL_TEST was used upstream: edited in place, the record no longer verifies ...
    record = tmp_path / "bundle" / METADATA_FILE
    meta = json.loads(record.read_text())
    meta["lineage"].append(
        {"phase": "phase2", "role": "policy_fitting", "split": "val_test", "fingerprint": "x", "count": 1}
    )
    record.write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="a field was edited"):
        run_evaluate(cfg, _evaluate_paths(tmp_path, dirs))
    # ... and written as a consistent record (as a hand-assembled artifact might be), its lineage is refused.
    reseal_record(tmp_path / "bundle", lineage=meta["lineage"])
    with pytest.raises(LeakageViolationError):
        run_evaluate(cfg, _evaluate_paths(tmp_path, dirs))


def test_phases_refuse_inputs_from_another_partition(trained, tmp_path):
    cfg, dirs, out = trained
    run_phase2(cfg, PhasePaths.of("phase2", val_calib_logits=out["val_calib_logits"], policy=tmp_path / "policy"))
    reseal_record(tmp_path / "policy", partition="another-ingest")
    with pytest.raises(LeakageViolationError, match="different"):
        run_phase6(
            cfg,
            PhasePaths.of(
                "phase6",
                checkpoint=out["checkpoint"],
                policy=tmp_path / "policy",
                val_calib=dirs[Split.VAL_CALIB],
                bundle=tmp_path / "bundle",
            ),
        )


def test_end_to_end_phase_functions_record_lineage(trained, tmp_path):
    cfg, dirs, out = trained
    build_bundle(cfg, dirs, out, tmp_path)
    result = run_evaluate(cfg, _evaluate_paths(tmp_path, dirs))
    lineage = [(e.phase, e.role, e.split) for e in read_metadata(tmp_path / "eval", "t").lineage]
    assert lineage == [
        ("phase1", "fit", "train"),
        ("phase1", "model_selection", "val_select"),
        ("phase1", "prediction", "val_calib"),
        ("phase2", "policy_fitting", "val_calib"),
        ("phase6", "policy_fitting", "val_calib"),
        ("evaluate", "final_evaluation", "val_test"),
    ]
    results = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert results["metrics"]["n"] == read_metadata(dirs[Split.VAL_TEST], "t").count
    assert "<img" in result.reports["report"]
    assert result.reports["report"] == (tmp_path / "eval" / "report.html").read_text()
