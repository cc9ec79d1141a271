"""Evidence whether adaptation helped: k-NN and linear probes on frozen backbone features.

Both probes are fitted on TRAIN features and scored on VAL_SELECT (the model-selection split), before and
after adaptation, with scikit-learn. Accuracy is reported beside balanced accuracy and the majority-class
rate, because the data is imbalanced and an accuracy below the majority rate means nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from streetvision.models import ImageRows, to_model_input


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: ImageRows,
    mean: list[float],
    std: list[float],
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Pooled features (the class token for DINOv2) of a head-less timm model, float32 (N, D)."""
    model.eval().to(device)
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out.append(model(to_model_input(batch, mean_t, std_t)).float().cpu().numpy())
    return np.concatenate(out)


def probe_scores(
    train_x: np.ndarray,
    train_y: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    kind: str,
    knn_k: int,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy and balanced accuracy of the chosen probes (fit on the first set, score on the second)."""
    probes = {}
    if kind in ("knn", "both"):
        k = min(knn_k, len(train_y))
        # Cosine distance on the features and distance-weighted votes, as DINO's k-NN evaluation does.
        probes["knn"] = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")
    if kind in ("linear", "both"):
        probes["linear"] = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
        )
    scores = {}
    for name, probe in probes.items():
        predicted = probe.fit(train_x, train_y).predict(eval_x)
        scores[f"{name}_accuracy"] = float(accuracy_score(eval_y, predicted))
        scores[f"{name}_balanced_accuracy"] = float(balanced_accuracy_score(eval_y, predicted))
    scores["majority_rate"] = float(max(np.mean(eval_y), 1 - np.mean(eval_y)))
    return scores
