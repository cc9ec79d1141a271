"""Phase 6: export the deployment bundle — weights, calibrator, exactly one policy, config, versions, hashes —
and sign it (streetvision.signing)."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import numpy as np

from streetvision import __version__
from streetvision import io as storage
from streetvision.config.loader import config_to_yaml
from streetvision.config.schema import Config
from streetvision.contracts.metadata import (
    ArtifactMetadata,
    check_same_partition,
    json_safe,
    prepare_output_dir,
    require_input,
    write_metadata,
)
from streetvision.contracts.validators import (
    BUNDLE_FILES,
    BUNDLE_MANIFEST,
    check_fitted_on,
    sha256_file,
    validate_bundle,
    validate_policy,
)
from streetvision.data.decode import image_validation
from streetvision.data.shards import SplitData, load_split
from streetvision.drift import save_reference
from streetvision.models import validate_checkpoint
from streetvision.phases.result import PhasePaths, PhaseResult
from streetvision.registry import PHASE_READS
from streetvision.signing import sign_bundle, verify_bundle_signature

PHASE = "phase6"


def _versions() -> dict:
    import safetensors
    import timm
    import torch

    return {
        "streetvision": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "safetensors": safetensors.__version__,
    }


def _drift_reference(cfg: Config, checkpoint_dir: Path, calibrator: dict, data: SplitData) -> dict:
    """Confidences and embeddings of VAL_CALIB under the bundle's weights and calibrator (for `drift`)."""
    from streetvision.calibration import calibrated_probabilities
    from streetvision.devices import task_device
    from streetvision.drift import build_reference, embeddings
    from streetvision.models import load_model_dir, predict_logits

    model = load_model_dir(checkpoint_dir)
    preprocessing = json.loads((checkpoint_dir / "preprocessing.json").read_text())
    device = str(task_device(cfg, PHASE))  # CPU unless cluster.phase6.gpus > 0
    images = np.asarray(data.images)
    model.to(device)
    logits = predict_logits(
        model, images, preprocessing["mean"], preprocessing["std"], cfg.evaluation.batch_size, device
    )
    confidence = calibrated_probabilities(calibrator, logits).max(axis=1)
    features = embeddings(model, images, preprocessing["mean"], preprocessing["std"], cfg.evaluation.batch_size, device)
    return build_reference(confidence, features, seed=cfg.evaluation.seed)


def run_phase6(cfg: Config, paths: PhasePaths) -> PhaseResult:
    """Export the deployment bundle: weights, calibrator, exactly one policy, the VAL_CALIB drift reference,
    and the sha256 of every file.

    Args:
        cfg: the run's config (``evaluation``: what the bundle records for deployment).
        paths: inputs ``checkpoint``, ``policy`` and ``val_calib``; output ``bundle``.

    Returns:
        The bundle's metadata (its lineage joins the checkpoint's and the policy's).

    Raises:
        LeakageViolationError: an input comes from a split (or lineage) this phase's role may not read.
        IntegrityError: an input is incomplete (no completion record) or altered since it was written.
        PolicyError: the policy file is malformed.
        BundleError: the policy or calibrator was not fitted on this checkpoint's logits.
    """
    checkpoint_dir, policy_dir, val_calib_dir = (
        paths.input("checkpoint"),
        paths.input("policy"),
        paths.input("val_calib"),
    )
    bundle_dir = paths.output("bundle")
    role, split = PHASE_READS[PHASE]["val_calib"]
    val_calib = load_split(val_calib_dir, split=split, role=role, phase=PHASE, input_name="val_calib")
    metas = {
        "checkpoint": require_input(checkpoint_dir, kind="checkpoint", phase=PHASE, input_name="checkpoint"),
        "policy": require_input(policy_dir, kind="policy", phase=PHASE, input_name="policy"),
        "val_calib": val_calib.meta,
    }
    partition = check_same_partition(metas, PHASE)
    validate_checkpoint(checkpoint_dir)
    policy = validate_policy(json.loads((policy_dir / "policy.json").read_text()), f"{PHASE} input 'policy'")
    calibrator = json.loads((policy_dir / "calibrator.json").read_text())
    # The policy and calibrator must have been fitted on logits of exactly these weights.
    weights = checkpoint_dir / "model.safetensors"
    check_fitted_on(policy, weights, "policy", f"{PHASE} inputs 'policy' ({policy_dir}) and 'checkpoint'")
    check_fitted_on(calibrator, weights, "calibrator", f"{PHASE} inputs 'policy' ({policy_dir}) and 'checkpoint'")
    reference = _drift_reference(cfg, checkpoint_dir, calibrator, val_calib)
    bundle_dir = prepare_output_dir(bundle_dir)
    save_reference(bundle_dir, reference)

    for name in ("model.safetensors", "model_config.json"):
        shutil.copyfile(checkpoint_dir / name, bundle_dir / name)
    # Deployment decodes and validates images exactly as ingest did for the data these weights and this policy
    # were fitted on (one pipeline run, one config): predict then refuses what ingest would have quarantined.
    preprocessing = json.loads((checkpoint_dir / "preprocessing.json").read_text())
    preprocessing["validation"] = image_validation(cfg.data)
    (bundle_dir / "preprocessing.json").write_text(json.dumps(preprocessing, indent=2))
    shutil.copyfile(policy_dir / "calibrator.json", bundle_dir / "calibrator.json")
    shutil.copyfile(policy_dir / "policy.json", bundle_dir / "policy.json")
    (bundle_dir / "config.yaml").write_text(config_to_yaml(cfg))
    (bundle_dir / "versions.json").write_text(json.dumps(_versions(), indent=2))
    manifest = {
        "format": "streetvision.bundle/v1",
        "policy_kind": policy["kind"],
        "guarantee": policy["guarantee"],
        "guarantee_numbers": {
            k: policy.get(k) for k in ("target_risk", "delta", "feasible", "risk_bound", "calib_coverage", "n_calib")
        },
        "calibrator": calibrator["kind"],
        "weights_sha256": sha256_file(weights),
        "files": {name: sha256_file(bundle_dir / name) for name in BUNDLE_FILES},
    }
    # Written last, atomically: a bundle without its manifest is incomplete and refused by every loader.
    storage.write_text(bundle_dir / BUNDLE_MANIFEST, json.dumps(json_safe(manifest), indent=2))
    validate_bundle(bundle_dir)
    # Signed last (every file above, the manifest included); checked against the trusted side of the identity
    # when it is configured here, so a key pair that does not match fails now rather than in evaluate.
    signature = sign_bundle(bundle_dir, cfg.signing)
    if signature and (cfg.signing.public_key or cfg.signing.certificate_chain or cfg.signing.sigstore_identity):
        verify_bundle_signature(bundle_dir, cfg.signing)

    lineage = list(
        dict.fromkeys(metas["checkpoint"].lineage + metas["policy"].lineage + [val_calib.meta.reads(PHASE, role)])
    )
    meta = ArtifactMetadata(
        kind="bundle",
        phase=PHASE,
        partition=partition,
        lineage=lineage,
        summary={
            "policy": policy["kind"],
            "feasible": policy["feasible"],
            "calib_coverage": round(policy["calib_coverage"], 4),
            "files": len(BUNDLE_FILES) + 1 + (signature is not None),  # + manifest (+ signature)
            "signed": signature is not None,
            "bytes": sum((bundle_dir / n).stat().st_size for n in BUNDLE_FILES),
        },
    )
    return PhaseResult(PHASE, {"bundle": write_metadata(bundle_dir, meta)})
