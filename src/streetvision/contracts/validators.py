"""Fail-fast validators for the things phases hand each other. Each raises a named ContractError."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from streetvision import io as storage
from streetvision.contracts.errors import BundleError, CheckpointError, LabelsError, LogitsError, PolicyError
from streetvision.contracts.metadata import METADATA_FILE

NUM_CLASSES = 2
POLICY_KINDS = ("threshold", "gate", "scrc")
# Fields every policy kind carries (evaluate and the report read these), and the kind-specific ones.
POLICY_FIELDS = (
    "target_risk",
    "delta",
    "feasible",
    "calib_coverage",
    "risk_bound",
    "n_calib",
    "guarantee",
    "weights_sha256",
)
POLICY_KIND_FIELDS = {
    "threshold": ("threshold",),
    "gate": ("threshold",),
    "scrc": ("selection_threshold", "set_threshold", "target_selection_rate"),
}
BUNDLE_FILES = (
    "model.safetensors",
    "model_config.json",
    "preprocessing.json",
    "calibrator.json",
    "policy.json",
    "config.yaml",
    "versions.json",
    "drift_reference.npz",
)
BUNDLE_MANIFEST = "manifest.json"
SIGNATURE_FILE = "bundle.sig"  # OpenSSF model-signing's signature of every other file (streetvision.signing)
# In a bundle folder but outside its signature: the signature, and the completion record written after it.
UNSIGNED_FILES = (SIGNATURE_FILE, METADATA_FILE)


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
    """A selective policy: its kind, its guarantee parameters, its thresholds and the weights it was fitted for."""
    if not isinstance(policy, dict):
        raise PolicyError(f"policy is a {type(policy).__name__}, expected a mapping", where, "regenerate the policy")
    kind = policy.get("kind")
    if kind not in POLICY_KINDS:
        raise PolicyError(f"unknown policy kind {kind!r}", where, f"use one of {list(POLICY_KINDS)}")
    missing = [k for k in POLICY_FIELDS + POLICY_KIND_FIELDS[kind] if k not in policy]
    if missing:
        raise PolicyError(f"{kind} policy is missing {missing}", where, "regenerate it with its policy phase")
    for key in ("target_risk", "delta"):
        if not 0 < float(policy[key]) < 1:
            raise PolicyError(f"{key}={policy[key]} is outside (0, 1)", where, "fix calibration.* in the config")
    thresholds = ("threshold",) if kind != "scrc" else ("selection_threshold", "set_threshold")
    for key in thresholds:
        value = policy[key]
        if policy["feasible"] and (value is None or not 0.0 <= float(value) <= 1.0):
            raise PolicyError(
                f"feasible policy has {key} {value!r}, expected a probability in [0, 1]",
                where,
                "regenerate the policy with its policy phase",
            )
    if not policy["feasible"] and policy[thresholds[-1]] is not None:
        raise PolicyError(
            "infeasible policy carries a threshold; it must accept nothing",
            where,
            "regenerate the policy with its policy phase",
        )
    if not 0.0 <= float(policy["calib_coverage"]) <= 1.0:
        raise PolicyError(f"calib_coverage={policy['calib_coverage']} outside [0, 1]", where, "regenerate it")
    if not (isinstance(policy["weights_sha256"], str) and len(policy["weights_sha256"]) == 64):
        raise PolicyError(
            "policy does not record the sha256 of the weights whose logits it was fitted on",
            where,
            "regenerate it with its policy phase from logits that carry weights_sha256",
        )
    return policy


def check_fitted_on(record: dict, weights_path: Path, what: str, where: str) -> None:
    """Refuse a policy/calibrator fitted on logits of other weights than the ones beside it."""
    actual = sha256_file(weights_path)
    recorded = record.get("weights_sha256")
    if recorded != actual:
        raise BundleError(
            f"the {what} was fitted on logits of weights {str(recorded)[:12]}..., but the weights here are "
            f"{actual[:12]}... (e.g. last-epoch or EMA logits beside best-epoch weights)",
            where,
            "fit the policy on logits computed by exactly the weights you export (rerun the policy phase on "
            "this checkpoint's logits)",
        )


def validate_location(uri: str, where: str) -> str:
    """`uri` when the IO module can serve it (a local path or gs://); never a silent local fallback for s3:// etc."""
    scheme = storage.unsupported_scheme(uri)
    if scheme:
        raise CheckpointError(
            f"no storage backend for {scheme}:// paths ({uri})",
            where,
            "use a local or mounted (PVC) path, or a gs://bucket/prefix",
        )
    return uri


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_bundle(path: str | Path) -> dict:
    """A bundle: every required file and nothing else, exactly one policy, each file matching its recorded sha256.

    The signature is checked by `streetvision.signing.verify_bundle_signature` (through `Bundle.load`)."""
    root = Path(path)
    where = f"bundle {root}"
    if not (root / BUNDLE_MANIFEST).is_file():
        raise BundleError(f"no {BUNDLE_MANIFEST}", where, "export the bundle with phase6; do not assemble it by hand")
    try:
        manifest = json.loads((root / BUNDLE_MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(
            f"{BUNDLE_MANIFEST} is not valid JSON ({exc})",
            where,
            "the bundle was truncated or edited; re-export it with phase6",
        ) from exc
    recorded = manifest.get("files", {})
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
    # Closed: the bundle's files and nothing else (a stray weights file or code beside them could be picked up).
    allowed = {*BUNDLE_FILES, BUNDLE_MANIFEST, *UNSIGNED_FILES}
    present = {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}
    extra = sorted(present - allowed) + sorted(set(recorded) - set(BUNDLE_FILES))
    if extra:
        raise BundleError(
            f"unexpected files {sorted(set(extra))}: a bundle holds exactly {list(BUNDLE_FILES)} and its manifest",
            where,
            "remove them, or re-export the bundle with phase6; never add files to an exported bundle",
        )
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
    policy = validate_policy(json.loads((root / "policy.json").read_text()), f"{where}/policy.json")
    check_fitted_on(policy, root / "model.safetensors", "policy", f"{where}/policy.json")
    check_fitted_on(
        json.loads((root / "calibrator.json").read_text()),
        root / "model.safetensors",
        "calibrator",
        f"{where}/calibrator.json",
    )
    return manifest
