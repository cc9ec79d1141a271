"""The deployed inference path: load a bundle, score images, apply its calibrator and its one policy.

`evaluate` uses exactly this code, so reported numbers are the deployed model's numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streetvision.calibration import calibrated_probabilities
from streetvision.config.schema import SigningConfig
from streetvision.contracts.errors import BundleError, DataError
from streetvision.contracts.validators import validate_bundle
from streetvision.data.decode import QuarantineReason, decode_image, read_image_file
from streetvision.models import load_model_dir, predict_logits
from streetvision.selective import accept_mask
from streetvision.signing import verify_bundle_signature


@dataclass
class Predictions:
    logits: np.ndarray  # (N, 2) raw
    prob_roadwork: np.ndarray  # calibrated P(roadwork)
    prediction: np.ndarray  # argmax of the calibrated probabilities
    confidence: np.ndarray  # max calibrated probability, the policy's score
    accept: np.ndarray  # True: Stage 1 answers; False: defer to Stage 2


@dataclass
class Bundle:
    """A verified deployment bundle, ready to score: the model, its preprocessing, calibrator and one policy.

    Build it with `Bundle.load`; `predict` scores pixel arrays, `predict_paths` image files.
    """

    path: Path
    model: torch.nn.Module
    preprocessing: dict
    calibrator: dict
    policy: dict

    @classmethod
    def load(cls, path: str | Path, trust: SigningConfig | None = None, allow_unsigned: bool = False) -> Bundle:
        """Load a bundle after checking it: exactly its files, their hashes, one policy, and its signature
        against `trust` (the signer's public key, certificate chain or Sigstore identity). An unsigned bundle,
        or one loaded without `trust`, is refused unless `allow_unsigned`.

        Args:
            path: the bundle folder (phase 6's output).
            trust: who may have signed it (``signing`` config: key, certificate or Sigstore identity).
            allow_unsigned: accept a bundle without a signature, or without `trust` to check it against.

        Returns:
            The loaded bundle, its model on the CPU.

        Raises:
        BundleError: a file missing, added or altered (sha256), not exactly one policy, or a signature that does
            not verify (or none, unless `allow_unsigned`).
        ConfigError: no `trust` given for a signed bundle and `allow_unsigned` not set.
        """
        path = Path(path)
        validate_bundle(path)  # closed, hashes, required files, exactly one policy
        verify_bundle_signature(path, trust, allow_unsigned)
        read = lambda name: json.loads((path / name).read_text())  # noqa: E731
        preprocessing = read("preprocessing.json")
        if not {"min_image_size", "max_record_bytes"} <= set(preprocessing.get("validation", {})):
            raise BundleError(
                "preprocessing.json does not record the image validation its training data passed",
                f"bundle {path}",
                "re-export the bundle with this version (phase6), so predict validates images as ingest did",
            )
        return cls(path, load_model_dir(path), preprocessing, read("calibrator.json"), read("policy.json"))

    def predict(self, images: np.ndarray, batch_size: int = 128, device: str = "cpu") -> Predictions:
        """Score uint8 RGB images already at the bundle's resolution.

        Args:
            images: uint8 array (N, S, S, 3), S the bundle's ``img_size``.
            batch_size: images per forward pass.
            device: a torch device name, e.g. ``cpu`` or ``cuda``.

        Returns:
            Raw logits, calibrated P(roadwork), prediction, confidence and the policy's accept mask, per image.

        Raises:
            ValueError: `images` do not have the shape (N, S, S, 3).
        """
        size = self.preprocessing["img_size"]
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"expected images of shape (N, {size}, {size}, 3), got {images.shape}")
        self.model.to(device)
        logits = predict_logits(
            self.model, images, self.preprocessing["mean"], self.preprocessing["std"], batch_size, device
        )
        probs = calibrated_probabilities(self.calibrator, logits)
        confidence = probs.max(axis=1)
        return Predictions(logits, probs[:, 1], probs.argmax(axis=1), confidence, accept_mask(confidence, self.policy))

    def decode(self, data: bytes) -> np.ndarray:
        """One encoded image as the bundle scores it: decoded and validated exactly as ingest did for its
        training data (the same code and the settings the bundle records), at the bundle's size."""
        validation = self.preprocessing["validation"]
        return decode_image(data, self.preprocessing["img_size"], min_size=validation["min_image_size"]).pixels

    def decode_paths(self, paths: list[str | Path]) -> tuple[list[dict], np.ndarray]:
        """One record per image file (folders are expanded) and the decoded pixels of those without an `error`,
        in order. A file that cannot be read, or that ingest would quarantine, gets a record with its `error`
        (what) and `fix` instead of stopping the batch."""
        records: list[dict] = []
        pixels = []
        for path in expand_image_paths(paths):
            try:
                data = read_image_file(path, self.preprocessing["validation"]["max_record_bytes"])
                pixels.append(self.decode(data))
                records.append({"path": str(path)})
            except (QuarantineReason, OSError) as exc:
                error = str(exc) if isinstance(exc, QuarantineReason) else f"unreadable: {type(exc).__name__}: {exc}"
                min_size = self.preprocessing["validation"]["min_image_size"]
                fix = f"pass a readable 8-bit RGB JPEG/PNG/WebP image file, at least {min_size} px on each side"
                records.append({"path": str(path), "error": error, "fix": fix})
        size = self.preprocessing["img_size"]
        return records, np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)

    def predict_paths(self, paths: list[str | Path], batch_size: int = 128, device: str = "cpu") -> list[dict]:
        """One record per image file (folders are expanded): P(roadwork) in [0, 1] and accept/defer, or an
        `error` and its `fix` for a file that cannot be scored."""
        records, pixels = self.decode_paths(paths)
        if len(pixels):
            preds = self.predict(pixels, batch_size, device)
            good = [record for record in records if "error" not in record]
            for i, record in enumerate(good):
                record.update(
                    prob_roadwork=round(float(preds.prob_roadwork[i]), 6),
                    prediction=int(preds.prediction[i]),
                    decision="accept" if preds.accept[i] else "defer",
                )
        return records


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def expand_image_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given (a missing one too: it gets its own error record); folders become their image files
    (recursively, sorted). Nothing to score at all is an error."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    if not files:
        raise DataError(
            f"no image files in {[str(p) for p in paths]}",
            "images to score",
            f"pass image files, or folders holding {'/'.join(IMAGE_SUFFIXES)} files (searched recursively)",
        )
    return files


def predict(
    bundle_path: str | Path,
    paths: list[str | Path],
    batch_size: int = 128,
    device: str = "cpu",
    trust: SigningConfig | None = None,
    allow_unsigned: bool = False,
) -> list[dict]:
    """The deployment API: load only the bundle (closed, hash-checked, signature verified against `trust`) and
    score image files or folders.

    Args:
        bundle_path: the bundle folder.
        paths: image files, or folders searched recursively for .jpg/.jpeg/.png/.webp/.bmp files.
        batch_size: images per forward pass.
        device: a torch device name.
        trust: who may have signed the bundle (see `Bundle.load`).
        allow_unsigned: accept an unsigned bundle.

    Returns:
        One record per image, in order: ``path``, ``prob_roadwork``, ``prediction`` and ``decision`` (accept or
        defer), or ``path``, ``error`` and ``fix`` for a file that cannot be scored (the others still are).

    Raises:
        BundleError: the bundle does not verify (see `Bundle.load`).
        ConfigError: no `trust` given for a signed bundle and `allow_unsigned` not set.
        DataError: `paths` name no image file at all.
    """
    return Bundle.load(bundle_path, trust, allow_unsigned).predict_paths(paths, batch_size, device)
