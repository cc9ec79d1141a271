"""Phase 2: fit the calibrator and the threshold policy on VAL_CALIB logits (and nothing else)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
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
    calibrator = fit_calibrator(logits, labels, c.method, c.cv_folds, c.seed, c.histogram_bins, c.keep_decision)
    calibrator["weights_sha256"] = weights_sha256
    return calibrator


@dataclass
class CalibrationInputs:
    """VAL_CALIB as the policy phases use it: the logits the calibrator is fitted on, the logits (one row per
    image) the policy is certified on, and in words the distribution the guarantee then holds for."""

    fit_logits: np.ndarray
    fit_labels: np.ndarray
    certify_logits: np.ndarray
    certify_labels: np.ndarray
    distribution: str
    levels: list[int]


def calibration_inputs(
    cfg: Config,
    logits: np.ndarray,
    labels: np.ndarray,
    renders: tuple[np.ndarray, np.ndarray] | None,
    where: str,
) -> CalibrationInputs:
    """Plain VAL_CALIB, or its deployment renders when cfg.calibration_levels() lists levels (the default).

    Renders of one image share that image, so they are not independent draws, and a Clopper-Pearson bound over
    all of them would count one image several times. The certificate therefore uses one render per image (the
    first; its level and augmentation are drawn independently of the image and its label): n i.i.d. draws from
    the deployment mix, so the bound holds for it exactly. The calibrator is a fit, not a certificate, and uses
    every render: more renders give it more of deployment's variety.
    """
    levels = cfg.calibration_levels()
    if not levels:
        plain = "VAL_CALIB-like images as ingest caches them (not deployment's challenge renders)"
        return CalibrationInputs(logits, labels, logits, labels, plain, [])
    if renders is None:
        raise PolicyError(
            "the VAL_CALIB logits hold no deployment renders, but calibration.fit_on asks for the calibrator and "
            f"policy to be fitted on VAL_CALIB rendered at challenge levels {levels}",
            where,
            "rerun phase1 with this config (it renders VAL_CALIB at evaluation.challenge_levels), or set "
            "calibration.fit_on=plain",
        )
    render_logits, render_levels = renders
    found = sorted({int(v) for v in np.unique(render_levels)})
    if not set(found) <= set(levels):
        raise PolicyError(
            f"the VAL_CALIB renders are at challenge levels {found}, the config's deployment mix is {levels}",
            where,
            "rerun phase1 with this config so the renders follow evaluation.challenge_levels",
        )
    per_image = render_levels.shape[1]
    mix = (
        f"deployment inputs: VAL_CALIB-like images sent as {cfg.evaluation.challenge_size} px JPEGs at challenge "
        f"levels {levels}, each level equally likely (certified on one render per image; the calibrator saw "
        f"{per_image})"
    )
    return CalibrationInputs(
        render_logits.reshape(-1, 2), np.repeat(labels, per_image), render_logits[:, 0], labels, mix, levels
    )


def fit_threshold_policy(
    cfg: Config, inputs: CalibrationInputs, weights_sha256: str, kind: str = "threshold"
) -> tuple[dict, dict]:
    """Calibrator + certified threshold (calibration.threshold_method) on VAL_CALIB; used by phase 2 and, on the
    tuned model, by phase 3."""
    calibrator = fit_calibrator_from_config(cfg, inputs.fit_logits, inputs.fit_labels, weights_sha256)
    probs = calibrated_probabilities(calibrator, inputs.certify_logits)
    labels = inputs.certify_labels
    confidence, pred = probs.max(axis=1), probs.argmax(axis=1)
    c = cfg.calibration
    policy = fit_threshold(confidence, pred == labels, c.target_risk, c.delta, c.threshold_method)
    policy["kind"] = kind
    policy["calibrator"] = calibrator["kind"]
    policy["weights_sha256"] = weights_sha256
    policy["distribution"], policy["calibration_levels"] = inputs.distribution, inputs.levels
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
    where = f"{PHASE} input 'val_calib_logits' ({val_calib_logits_dir})"
    weights_sha256 = logits_weights_sha256(data.meta, where)
    inputs = calibration_inputs(cfg, data.logits, data.labels, data.renders, where)
    policy_dir = prepare_output_dir(policy_dir)

    calibrator, policy = fit_threshold_policy(cfg, inputs, weights_sha256)
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
