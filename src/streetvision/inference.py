"""The deployed inference path: load a bundle, score images, apply its calibrator and its one policy.

`evaluate` uses exactly this code, so reported numbers are the deployed model's numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streetvision.contracts.validators import validate_bundle
from streetvision.data.decode import decode_image
from streetvision.metrics.classification import probabilities
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
        logits = predict_logits(self.model, images, self.preprocessing["mean"], self.preprocessing["std"],
                                batch_size, device)
        probs = probabilities(logits, self.calibrator["temperature"])
        confidence = probs.max(axis=1)
        return Predictions(logits, probs[:, 1], probs.argmax(axis=1), confidence, accept_mask(confidence, self.policy))

    def predict_files(self, paths: list[str | Path], batch_size: int = 128) -> Predictions:
        """Decode image files exactly as ingest does and score them."""
        size = self.preprocessing["img_size"]
        images = np.stack([decode_image(Path(p).read_bytes(), size, min_size=1).pixels for p in paths])
        return self.predict(images, batch_size)
