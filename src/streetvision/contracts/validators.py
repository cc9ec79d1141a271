"""Fail-fast validators for the things phases hand each other. Each raises a named ContractError."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from streetvision.contracts.errors import BundleError, CheckpointError, LabelsError, LogitsError, PolicyError

NUM_CLASSES = 2
POLICY_KINDS = ("threshold",)
BUNDLE_FILES = (
    "model.safetensors",
    "model_config.json",
    "preprocessing.json",
    "calibrator.json",
    "policy.json",
    "config.yaml",
    "versions.json",
)
BUNDLE_MANIFEST = "manifest.json"


def validate_logits(logits: np.ndarray, where: str, expected_rows: int | None = None) -> np.ndarray:
    """Logits: finite floats of shape (N, 2), N > 0 (and N == expected_rows when given)."""
    arr = np.asarray(logits)
    if arr.ndim != 2 or arr.shape[1] != NUM_CLASSES:
        raise LogitsError(
            f"logits have shape {arr.shape}, expected (N, {NUM_CLASSES})",
            where,
            "write one row of two class logits per sample (negative, positive)",
        )
    if arr.shape[0] == 0:
        raise LogitsError("logits are empty", where, "the split has no samples; check the ingest data report")
    if expected_rows is not None and arr.shape[0] != expected_rows:
        raise LogitsError(
            f"{arr.shape[0]} logit rows for {expected_rows} samples",
            where,
            "logits and sample ids must align one to one; regenerate the logits",
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise LogitsError(f"logits have dtype {arr.dtype}, expected a float type", where, "store raw float logits")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise LogitsError(
            f"{int(bad.sum())} row(s) of logits are NaN or infinite (first rows: {rows})",
            where,
            "the model diverged or a sample is corrupt; inspect those samples and the training log",
        )
    return arr


def validate_probabilities(probs: np.ndarray, where: str) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr > 1).any():
        raise LogitsError(
            "probabilities outside [0, 1] or not finite",
            where,
            "probabilities must come from a softmax/sigmoid of finite logits",
        )
    return arr


def validate_labels(labels: np.ndarray, where: str, expected_rows: int | None = None) -> np.ndarray:
    """Labels: integers in {0, 1}, one per sample."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise LabelsError(f"labels have shape {arr.shape}, expected (N,)", where, "store one label per sample")
    if expected_rows is not None and arr.shape[0] != expected_rows:
        raise LabelsError(
            f"{arr.shape[0]} labels for {expected_rows} samples", where, "labels and samples must align one to one"
        )
    if not np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.bool_):
        raise LabelsError(f"labels have dtype {arr.dtype}, expected integers", where, "store labels as 0/1 integers")
    unknown = sorted(set(np.unique(arr).tolist()) - {0, 1})
    if unknown:
        raise LabelsError(
            f"labels outside {{0, 1}}: {unknown[:5]}",
            where,
            "map label names to 0 (no roadwork) and 1 (roadwork) in data.label_names",
        )
    return arr.astype(np.int64)


def validate_policy(policy: dict, where: str) -> dict:
    """A selective policy: its kind, its guarantee parameters and its threshold are all present and sane."""
    if not isinstance(policy, dict):
        raise PolicyError(f"policy is a {type(policy).__name__}, expected a mapping", where, "regenerate the policy")
    kind = policy.get("kind")
    if kind not in POLICY_KINDS:
        raise PolicyError(f"unknown policy kind {kind!r}", where, f"use one of {list(POLICY_KINDS)}")
    required = ("target_risk", "delta", "threshold", "feasible", "calib_coverage", "risk_bound", "n_calib")
    missing = [k for k in required if k not in policy]
    if missing:
        raise PolicyError(f"policy is missing {missing}", where, "regenerate it with phase2")
    for key in ("target_risk", "delta"):
        if not 0 < float(policy[key]) < 1:
            raise PolicyError(f"{key}={policy[key]} is outside (0, 1)", where, "fix calibration.* in the config")
    threshold = policy["threshold"]
    if policy["feasible"]:
        if threshold is None or not 0.0 <= float(threshold) <= 1.0:
            raise PolicyError(
                f"feasible policy has threshold {threshold!r}, expected a confidence in [0, 1]",
                where,
                "regenerate the policy with phase2",
            )
    elif threshold is not None:
        raise PolicyError(
            "infeasible policy carries a threshold; it must accept nothing",
            where,
            "regenerate the policy with phase2",
        )
    if not 0.0 <= float(policy["calib_coverage"]) <= 1.0:
        raise PolicyError(f"calib_coverage={policy['calib_coverage']} outside [0, 1]", where, "regenerate it")
    return policy


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_bundle(path: str | Path) -> dict:
    """A bundle: every required file, exactly one policy, and each file matching its recorded sha256."""
    root = Path(path)
    where = f"bundle {root}"
    if not (root / BUNDLE_MANIFEST).is_file():
        raise BundleError(f"no {BUNDLE_MANIFEST}", where, "export the bundle with phase6; do not assemble it by hand")
    manifest = json.loads((root / BUNDLE_MANIFEST).read_text())
    missing = [name for name in BUNDLE_FILES if not (root / name).is_file()]
    if missing:
        raise BundleError(f"missing files {missing}", where, "re-export the bundle with phase6")
    policies = sorted(p.name for p in root.glob("*.json") if "policy" in p.name)
    if policies != ["policy.json"]:
        raise BundleError(
            f"a bundle holds exactly one policy; found {policies or 'none'}",
            where,
            "export with exactly one policy phase (threshold, gate or SCRC) selected",
        )
    recorded = manifest.get("files", {})
    for name in BUNDLE_FILES:
        if name not in recorded:
            raise BundleError(f"{name} is not in the manifest", where, "re-export the bundle with phase6")
        actual = sha256_file(root / name)
        if actual != recorded[name]:
            raise BundleError(
                f"{name} does not match its sha256 in the manifest (changed after export)",
                where,
                "re-export the bundle; never edit files of an exported bundle",
            )
    validate_policy(json.loads((root / "policy.json").read_text()), f"{where}/policy.json")
    return manifest


def validate_checkpoint(path: str | Path) -> dict:
    """A checkpoint directory: its model config and a safetensors state dict that loads strictly."""
    from streetvision.models import load_model_dir  # torch is imported only when a checkpoint is checked

    root = Path(path)
    where = f"checkpoint {root}"
    for name in ("model.safetensors", "model_config.json"):
        if not (root / name).is_file():
            raise CheckpointError(f"missing {name}", where, "write checkpoints with streetvision.models.save_model_dir")
    try:
        load_model_dir(root)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"weights do not load into the recorded architecture: {str(exc).splitlines()[0]}",
            where,
            "the checkpoint and model_config.json disagree; regenerate the checkpoint with phase1",
        ) from exc
    return json.loads((root / "model_config.json").read_text())
