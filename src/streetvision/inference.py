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
from streetvision.contracts.validators import validate_bundle
from streetvision.data.decode import decode_image
from streetvision.models import load_model_dir, predict_logits
from streetvision.selective import accept_mask


@dataclass
class Predictions:
    logits: np.ndarray  # (N, 2) raw
    prob_roadwork: np.ndarray  # calibrated P(roadwork)
    prediction: np.ndarray  # argmax of the calibrated probabilities
    confidence: np.ndarray  # max calibrated probability, the policy's score
    accept: np.ndarray  # True: Stage 1 answers; False: defer to Stage 2


@dataclass
class Bundle:
    path: Path
    model: torch.nn.Module
    preprocessing: dict
    calibrator: dict
    policy: dict

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        path = Path(path)
        validate_bundle(path)  # hashes, required files, exactly one policy
        read = lambda name: json.loads((path / name).read_text())  # noqa: E731
        return cls(path, load_model_dir(path), read("preprocessing.json"), read("calibrator.json"), read("policy.json"))

    def predict(self, images: np.ndarray, batch_size: int = 128, device: str = "cpu") -> Predictions:
        """Score uint8 RGB images already at the bundle's resolution (N, S, S, 3)."""
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
        """One encoded image as the bundle scores it: decoded exactly as ingest decodes, at the bundle's size."""
        return decode_image(data, self.preprocessing["img_size"], min_size=1).pixels

    def predict_paths(self, paths: list[str | Path], batch_size: int = 128, device: str = "cpu") -> list[dict]:
        """One record per image file (folders are expanded): P(roadwork) in [0, 1] and accept/defer.

        An unreadable image gets a record with an `error` (what and how to fix) instead of stopping the batch.
        """
        files = expand_image_paths(paths)
        records: list[dict] = []
        good, pixels = [], []
        for path in files:
            try:
                pixels.append(self.decode(path.read_bytes()))
                good.append(len(records))
                records.append({"path": str(path)})
            except Exception as exc:  # decoders raise many types; the record says which file and why
                records.append(
                    {
                        "path": str(path),
                        "error": f"{type(exc).__name__}: {exc}",
                        "fix": "pass a readable JPEG/PNG/WebP image file",
                    }
                )
        if pixels:
            preds = self.predict(np.stack(pixels), batch_size, device)
            for i, index in enumerate(good):
                records[index].update(
                    prob_roadwork=round(float(preds.prob_roadwork[i]), 6),
                    prediction=int(preds.prediction[i]),
                    decision="accept" if preds.accept[i] else "defer",
                )
        return records


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def expand_image_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders become their image files (recursively, sorted)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} is neither an image file nor a folder; check the path")
    return files


def predict(bundle_path: str | Path, paths: list[str | Path], batch_size: int = 128, device: str = "cpu") -> list[dict]:
    """The deployment API: load only the bundle (hash-checked) and score image files or folders."""
    return Bundle.load(bundle_path).predict_paths(paths, batch_size, device)
