"""Phase 5: SCRC-I policy (selective conformal risk control) on VAL_CALIB logits (and nothing else)."""

from __future__ import annotations

import logging

from streetvision.calibration import calibrated_probabilities
from streetvision.config.schema import Config
from streetvision.contracts.metadata import ArtifactMetadata, prepare_output_dir, write_metadata
from streetvision.contracts.splits import Role
from streetvision.data.shards import load_logits
from streetvision.phases.phase2 import (
    calibration_inputs,
    fit_calibrator_from_config,
    logits_weights_sha256,
    policy_summary,
    write_policy,
)
from streetvision.phases.result import PhasePaths, PhaseResult
from streetvision.registry import PHASE_READS
from streetvision.selective import guarantee_text, scrc_policy

logger = logging.getLogger(__name__)

PHASE = "phase5"


def run_phase5(cfg: Config, paths: PhasePaths) -> PhaseResult:
    """Fit the SCRC policy (selection, then conformal risk control of prediction sets) on VAL_CALIB logits only.

    Args:
        cfg: the run's config (``calibration``).
        paths: input ``val_calib_logits``; output ``policy``.

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

    c = cfg.calibration
    calibrator = fit_calibrator_from_config(cfg, inputs.fit_logits, inputs.fit_labels, weights_sha256)
    logger.info(f"calibrator: {calibrator['kind']} ({calibrator['selected_by']})")
    probs = calibrated_probabilities(calibrator, inputs.certify_logits)
    policy = scrc_policy(
        probs, inputs.certify_labels, c.target_risk, c.delta, c.scrc_selection_rate, c.scrc_selection_fraction, c.seed
    )
    policy["distribution"], policy["calibration_levels"] = inputs.distribution, inputs.levels
    policy["calibrator"] = calibrator["kind"]
    policy["weights_sha256"] = weights_sha256
    policy["guarantee"] = guarantee_text(policy)
    write_policy(policy_dir, policy, calibrator, f"{PHASE} output")
    summary = policy_summary(policy, calibrator)
    summary.update(selection_threshold=policy["selection_threshold"], set_threshold=policy["set_threshold"])
    meta = ArtifactMetadata(
        kind="policy",
        phase=PHASE,
        partition=data.meta.partition,
        lineage=data.meta.lineage + [data.meta.reads(PHASE, Role.POLICY_FITTING)],
        summary=summary,
    )
    return PhaseResult(PHASE, {"policy": write_metadata(policy_dir, meta)})
