"""Phase 2: fit the calibrator and the threshold policy on VAL_CALIB logits (and nothing else)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from streetvision import io as storage
from streetvision.calibration import calibrated_probabilities, fit_calibrator
from streetvision.config.schema import Config
from streetvision.contracts.errors import PolicyError
from streetvision.contracts.metadata import ArtifactMetadata, json_safe, prepare_output_dir, write_metadata
from streetvision.contracts.splits import Role
from streetvision.contracts.validators import validate_policy
from streetvision.data.shards import load_logits
from streetvision.metrics.classification import selective_metrics
from streetvision.phases.result import PhasePaths, PhaseResult
from streetvision.registry import PHASE_READS
from streetvision.selective import accept_mask, fit_threshold, guarantee_quantity, guarantee_text

logger = logging.getLogger(__name__)

PHASE = "phase2"


def logits_weights_sha256(meta: ArtifactMetadata, where: str) -> str:
    """The sha256 of the weights that computed these logits (phase 1 records it), so the policy can name them."""
    sha = meta.summary.get("weights_sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        raise PolicyError(
            "the logits do not record which weights computed them (summary.weights_sha256)",
            where,
            "regenerate the logits with phase1, which records the sha256 of the saved weights",
        )
    return sha


def fit_calibrator_from_config(cfg: Config, logits: np.ndarray, labels: np.ndarray, weights_sha256: str) -> dict:
    c = cfg.calibration
    calibrator = fit_calibrator(logits, labels, c.method, c.cv_folds, c.seed, c.histogram_bins)
    calibrator["weights_sha256"] = weights_sha256
    return calibrator


def fit_threshold_policy(
    cfg: Config, logits: np.ndarray, labels: np.ndarray, weights_sha256: str, kind: str = "threshold"
) -> tuple[dict, dict]:
    """Calibrator + certified threshold (calibration.threshold_method) on VAL_CALIB logits; used by phase 2 and,
    on the tuned model, by phase 3."""
    calibrator = fit_calibrator_from_config(cfg, logits, labels, weights_sha256)
    probs = calibrated_probabilities(calibrator, logits)
    confidence, pred = probs.max(axis=1), probs.argmax(axis=1)
    c = cfg.calibration
    policy = fit_threshold(confidence, pred == labels, c.target_risk, c.delta, c.threshold_method)
    policy["kind"] = kind
    policy["calibrator"] = calibrator["kind"]
    policy["weights_sha256"] = weights_sha256
    at_threshold = selective_metrics(labels, pred, accept_mask(confidence, policy))
    # Roadwork precision (PPV) among accepted VAL_CALIB images at t.
    policy["calib_roadwork_precision"] = at_threshold["roadwork_precision_accepted"]
    policy["guarantee"] = guarantee_text(policy)
    return calibrator, policy


def write_policy(policy_dir: Path, policy: dict, calibrator: dict, where: str) -> None:
    validate_policy(policy, where)
    (logger.info if policy["feasible"] else logger.warning)(policy["guarantee"])
    storage.write_text(policy_dir / "policy.json", json.dumps(json_safe(policy), indent=2))
    storage.write_text(policy_dir / "calibrator.json", json.dumps(json_safe(calibrator), indent=2))


def policy_summary(policy: dict, calibrator: dict) -> dict:
    """The numbers shown in the run summary (and on the KFP artifact) for any policy kind."""
    summary = {
        "policy": policy["kind"],
        "feasible": policy["feasible"],
        "threshold": policy.get("threshold"),
        "calib_coverage": round(policy["calib_coverage"], 4),
        "risk_bound": policy["risk_bound"],
        "target_risk": policy["target_risk"],
        # What a user reads (errors among answered images) beside what the guarantee bounds; the same for a
        # threshold, not for SCRC (its guarantee is about prediction sets of selected images).
        "guarantee_quantity": guarantee_quantity(policy),
        "answered_error_calib": policy["calib_accepted_error"] if policy["kind"] == "scrc" else policy["calib_risk"],
        "calibrator": calibrator["kind"],
        "guarantee": policy["guarantee"],
        "weights_sha256": policy["weights_sha256"],
    }
    if "temperature" in calibrator:
        summary["temperature"] = round(calibrator["temperature"], 4)
    return summary


def run_phase2(cfg: Config, paths: PhasePaths) -> PhaseResult:
    """Fit the calibrator and the confidence-threshold policy with its guarantee, on VAL_CALIB logits only.

    Args:
        cfg: the run's config (``calibration``).
        paths: input ``val_calib_logits``; output ``policy`` (policy.json and calibrator.json).

    Returns:
        The policy's metadata and its scalars.

    Raises:
        LeakageViolationError: an input comes from a split (or lineage) this phase's role may not read.
        IntegrityError: an input is incomplete (no completion record) or altered since it was written.
    """
    val_calib_logits_dir, policy_dir = paths.input("val_calib_logits"), paths.output("policy")
    role, split = PHASE_READS[PHASE]["val_calib_logits"]
    data = load_logits(val_calib_logits_dir, split=split, role=role, phase=PHASE, input_name="val_calib_logits")
    weights_sha256 = logits_weights_sha256(data.meta, f"{PHASE} input 'val_calib_logits' ({val_calib_logits_dir})")
    policy_dir = prepare_output_dir(policy_dir)

    calibrator, policy = fit_threshold_policy(cfg, data.logits, data.labels, weights_sha256)
    logger.info(
        f"calibrator: {calibrator['kind']} ({calibrator['selected_by']}), VAL_CALIB NLL "
        f"{calibrator['nll_before']:.4f} -> {calibrator['nll_after']:.4f}"
    )
    write_policy(policy_dir, policy, calibrator, f"{PHASE} output")
    meta = ArtifactMetadata(
        kind="policy",
        phase=PHASE,
        partition=data.meta.partition,
        lineage=data.meta.lineage + [data.meta.reads(PHASE, Role.POLICY_FITTING)],
        summary=policy_summary(policy, calibrator),
    )
    return PhaseResult(PHASE, {"policy": write_metadata(policy_dir, meta)})
