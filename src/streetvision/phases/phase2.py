"""Phase 2: fit the calibrator and the threshold policy on VAL_CALIB logits (and nothing else)."""

from __future__ import annotations

import json
from pathlib import Path

from streetvision.calibration import fit_temperature
from streetvision.config.schema import Config
from streetvision.contracts.metadata import ArtifactMetadata, prepare_output_dir, write_metadata
from streetvision.contracts.splits import PHASE_READS, Role
from streetvision.contracts.validators import validate_policy
from streetvision.data.shards import load_logits
from streetvision.metrics.classification import probabilities, selective_metrics
from streetvision.progress import log
from streetvision.selective import accept_mask, guarantee_text, sgr_threshold

PHASE = "phase2"


def run_phase2(cfg: Config, val_calib_logits_dir: str | Path, policy_dir: str | Path) -> dict[str, dict]:
    role, split = PHASE_READS[PHASE]["val_calib_logits"]
    data = load_logits(val_calib_logits_dir, split=split, role=role, phase=PHASE, input_name="val_calib_logits")
    policy_dir = prepare_output_dir(policy_dir)

    calibrator = fit_temperature(data.logits, data.labels)
    probs = probabilities(data.logits, calibrator["temperature"])
    confidence, pred = probs.max(axis=1), probs.argmax(axis=1)
    policy = sgr_threshold(confidence, pred == data.labels, cfg.calibration.target_risk, cfg.calibration.delta)
    at_threshold = selective_metrics(data.labels, pred, accept_mask(confidence, policy))
    policy["calib_roadwork_precision"] = at_threshold["roadwork_precision_accepted"]
    policy["guarantee"] = guarantee_text(policy)
    validate_policy(policy, f"{PHASE} output")
    if not policy["feasible"]:
        log(f"WARNING: {policy['guarantee']}")
    else:
        log(policy["guarantee"])

    (policy_dir / "policy.json").write_text(json.dumps(policy, indent=2))
    (policy_dir / "calibrator.json").write_text(json.dumps(calibrator, indent=2))
    meta = ArtifactMetadata(
        kind="policy",
        phase=PHASE,
        partition=data.meta.partition,
        lineage=data.meta.lineage + [data.meta.reads(PHASE, Role.POLICY_FITTING)],
        summary={
            "policy": "threshold",
            "feasible": policy["feasible"],
            "threshold": policy["threshold"],
            "calib_coverage": round(policy["calib_coverage"], 4),
            "risk_bound": policy["risk_bound"],
            "target_risk": policy["target_risk"],
            "temperature": round(calibrator["temperature"], 4),
            "guarantee": policy["guarantee"],
        },
    )
    return {"policy": write_metadata(policy_dir, meta)}
