import json

import numpy as np
import pytest
from conftest import build_bundle

from streetvision.contracts import (
    BundleError,
    IncompleteArtifactError,
    LabelsError,
    LeakageViolationError,
    LogitsError,
    PolicyError,
    Role,
    Split,
    check_access,
)
from streetvision.contracts.metadata import (
    ArtifactMetadata,
    LineageEntry,
    check_lineage,
    check_same_partition,
    fingerprint_ids,
    read_metadata,
    require_input,
    write_metadata,
)
from streetvision.contracts.validators import (
    validate_labels,
    validate_logits,
    validate_policy,
)
from streetvision.registry import PHASE_READS


@pytest.mark.parametrize(
    "role,allowed_splits",
    [
        (Role.FIT, {Split.TRAIN}),
        (Role.MODEL_SELECTION, {Split.VAL_SELECT}),
        (Role.PREDICTION, {Split.VAL_SELECT, Split.VAL_CALIB}),
        (Role.POLICY_FITTING, {Split.VAL_CALIB}),
        (Role.FINAL_EVALUATION, {Split.VAL_TEST}),
    ],
)
def test_policy_table(role, allowed_splits):
    for split in Split:
        if split in allowed_splits:
            assert check_access(role, split, "test") is split
        else:
            with pytest.raises(LeakageViolationError):
                check_access(role, split, "test")


def test_only_evaluate_reads_val_test():
    readers = [
        (phase, name)
        for phase, reads in PHASE_READS.items()
        for name, (_, split) in reads.items()
        if split is Split.VAL_TEST
    ]
    assert readers == [("evaluate", "val_test")]


def test_leakage_error_says_what_where_and_how_to_fix():
    with pytest.raises(LeakageViolationError) as info:
        check_access(Role.POLICY_FITTING, "val_test", "phase2, input 'val_calib_logits'")
    err = info.value
    assert "VAL_TEST" in err.what and "policy_fitting" in err.what
    assert err.where == "phase2, input 'val_calib_logits'"
    assert "VAL_CALIB" in err.fix
    with pytest.raises(LeakageViolationError, match="no known split"):
        check_access(Role.FIT, None, "x")


def test_metadata_round_trip_and_incomplete_artifacts(tmp_path):
    with pytest.raises(IncompleteArtifactError, match="no completion record"):
        read_metadata(tmp_path, "somewhere")
    meta = ArtifactMetadata(
        kind="split",
        phase="ingest",
        split="train",
        count=2,
        fingerprint=fingerprint_ids(["a", "b"]),
        partition="p1",
        summary={"nan": float("nan")},
    )
    write_metadata(tmp_path, meta)
    back = read_metadata(tmp_path, "x")
    assert back.fingerprint == meta.fingerprint and back.partition == "p1"
    assert back.summary["nan"] is None  # JSON (and KFP metadata) have no NaN
    assert fingerprint_ids(["b", "a"]) == fingerprint_ids(["a", "b"]) != fingerprint_ids(["a"])


def test_require_input_checks_kind_and_role(tmp_path):
    write_metadata(tmp_path, ArtifactMetadata(kind="logits", phase="phase1", split="val_select", partition="p"))
    with pytest.raises(LeakageViolationError, match="expected a 'split' artifact"):
        require_input(tmp_path, kind="split", phase="phase1", input_name="train", role=Role.FIT)
    with pytest.raises(LeakageViolationError, match="VAL_SELECT data was given to a step whose role is policy_fitting"):
        require_input(tmp_path, kind="logits", phase="phase2", input_name="val_calib_logits", role=Role.POLICY_FITTING)


def test_lineage_and_partition_checks():
    good = [LineageEntry("phase1", "fit", "train", "f", 10)]
    check_lineage(good, "x")
    with pytest.raises(LeakageViolationError):
        check_lineage([LineageEntry("phase1", "fit", "val_calib", "f", 10)], "x")  # fit on VAL_CALIB
    with pytest.raises(LeakageViolationError, match="derived from VAL_TEST"):
        check_lineage([LineageEntry("evaluate", "final_evaluation", "val_test", "f", 3)], "x", forbid=[Split.VAL_TEST])
    a = ArtifactMetadata(kind="split", phase="ingest", partition="p1")
    b = ArtifactMetadata(kind="split", phase="ingest", partition="p2")
    assert check_same_partition({"a": a, "c": a}, "x") == "p1"
    with pytest.raises(LeakageViolationError, match="different"):
        check_same_partition({"a": a, "b": b}, "x")


def test_logits_validator():
    validate_logits(np.zeros((3, 2), np.float32), "x", expected_rows=3)
    with pytest.raises(LogitsError, match="shape"):
        validate_logits(np.zeros((3,)), "x")
    with pytest.raises(LogitsError, match="NaN or infinite"):
        validate_logits(np.array([[0.0, np.nan], [1.0, 2.0]]), "x")
    with pytest.raises(LogitsError, match="2 logit rows for 3 samples"):
        validate_logits(np.zeros((2, 2)), "x", expected_rows=3)
    with pytest.raises(LogitsError, match="dtype"):
        validate_logits(np.zeros((2, 2), np.int64), "x")


def test_labels_validator():
    assert validate_labels(np.array([0, 1, 1]), "x").tolist() == [0, 1, 1]
    with pytest.raises(LabelsError, match=r"outside \{0, 1\}"):
        validate_labels(np.array([0, 2]), "x")
    with pytest.raises(LabelsError, match="integers"):
        validate_labels(np.array([0.0, 1.0]), "x")


def _policy(**over):
    base = {
        "kind": "threshold",
        "target_risk": 0.05,
        "delta": 0.05,
        "threshold": 0.9,
        "feasible": True,
        "calib_coverage": 0.8,
        "risk_bound": 0.04,
        "n_calib": 100,
        "guarantee": "text",
        "weights_sha256": "0" * 64,
    }
    base.update(over)
    return base


def test_policy_validator():
    validate_policy(_policy(), "x")
    validate_policy(_policy(feasible=False, threshold=None, calib_coverage=0.0), "x")
    for bad, match in [
        (_policy(kind="vote"), "unknown policy kind"),
        (_policy(threshold=1.5), "threshold"),
        (_policy(feasible=False), "must accept nothing"),
        (_policy(delta=0.0), "delta"),
        ({k: v for k, v in _policy().items() if k != "risk_bound"}, "missing"),
    ]:
        with pytest.raises(PolicyError, match=match):
            validate_policy(bad, "x")


def test_bundle_validator_refuses_tampering_and_second_policy(trained, tmp_path):
    from streetvision.contracts.validators import validate_bundle

    cfg, dirs, out = trained
    bundle = build_bundle(cfg, dirs, out, tmp_path)
    validate_bundle(bundle)
    (bundle / "gate_policy.json").write_text(json.dumps(_policy()))
    with pytest.raises(BundleError, match="exactly one policy"):
        validate_bundle(bundle)
    (bundle / "gate_policy.json").unlink()
    policy = json.loads((bundle / "policy.json").read_text())
    policy["target_risk"] = 0.2
    (bundle / "policy.json").write_text(json.dumps(policy))
    with pytest.raises(BundleError, match="does not match its sha256"):
        validate_bundle(bundle)
