"""Classification and calibration metrics. scikit-learn computes what it has; ECE is ours (checked in tests)."""

from __future__ import annotations

import numpy as np
from scipy.special import softmax
from sklearn.metrics import accuracy_score, balanced_accuracy_score, matthews_corrcoef, roc_auc_score


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax class probabilities (N, 2) of logits divided by a temperature."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def expected_calibration_errors(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> np.ndarray:
    """Top-label ECE with equal-width confidence bins, sum_b |B|/N * |acc(B) - conf(B)|, along the last axis
    (one value per row: the bootstrap scores many resamples at once)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    gap = np.asarray(correct, dtype=np.float64) - confidence
    # Bin b holds (edges[b], edges[b+1]]; confidence 0 falls in the first bin.
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    n = confidence.shape[-1]
    rows = int(np.prod(confidence.shape[:-1], dtype=np.int64))
    flat = (index.reshape(rows, n) + bins * np.arange(rows)[:, None]).ravel()
    # A bin's |B|/N * |acc(B) - conf(B)| is |sum(correct - confidence)| over the bin, / N.
    sums = np.bincount(flat, weights=gap.reshape(-1), minlength=rows * bins).reshape(rows, bins)
    return (np.abs(sums).sum(axis=-1) / n).reshape(confidence.shape[:-1])


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """`expected_calibration_errors` of one sample."""
    return float(expected_calibration_errors(confidence, correct, bins))


def classification_metrics(labels: np.ndarray, probs: np.ndarray, ece_bins: int = 15) -> dict[str, float]:
    """Metrics at the argmax decision (the 0.5 cut for two classes) plus ranking and calibration."""
    labels = np.asarray(labels)
    pred = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    both = len(np.unique(labels)) == 2
    majority = max(np.mean(labels == 0), np.mean(labels == 1))
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "mcc": float(matthews_corrcoef(labels, pred)),
        "auroc": float(roc_auc_score(labels, probs[:, 1])) if both else float("nan"),
        "ece": expected_calibration_error(confidence, pred == labels, ece_bins),
        "majority_rate": float(majority),
    }


def selection_score(metric: str, labels: np.ndarray, logits: np.ndarray) -> float:
    """The model-selection score on VAL_SELECT (higher is better)."""
    probs = probabilities(logits)
    if metric == "auroc":
        return float(roc_auc_score(labels, probs[:, 1]))
    pred = probs.argmax(axis=1)
    scorer = {"mcc": matthews_corrcoef, "balanced_accuracy": balanced_accuracy_score, "accuracy": accuracy_score}
    return float(scorer[metric](labels, pred))


def selective_metrics(labels: np.ndarray, pred: np.ndarray, accept: np.ndarray) -> dict[str, float]:
    """Coverage and accuracy on the accepted samples (NaN accuracy when nothing is accepted)."""
    accept = np.asarray(accept, dtype=bool)
    n_acc = int(accept.sum())
    correct = (np.asarray(pred) == np.asarray(labels))[accept]
    positives = accept & (np.asarray(pred) == 1)
    return {
        "coverage": float(accept.mean()) if len(accept) else 0.0,
        "accepted": n_acc,
        "selective_accuracy": float(correct.mean()) if n_acc else float("nan"),
        "roadwork_precision_accepted": float((np.asarray(labels)[positives] == 1).mean())
        if positives.any()
        else float("nan"),
    }
