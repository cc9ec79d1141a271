"""VAL_TEST metrics of a deployed bundle, each with a bootstrap confidence interval.

Intervals come from `scipy.stats.bootstrap` (BCa by default) over resampled VAL_TEST images. The tests check
each metric against scikit-learn where it has one, and the rest (ECE, AURC/E-AURC, coverage at a target
accuracy) against independent computations.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import bootstrap, rankdata

from streetvision.metrics.classification import expected_calibration_error

# Metrics that get an interval; the rest (counts, the majority rate) describe the sample itself.
INTERVAL_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "mcc",
    "auroc",
    "ece",
    "ece_adaptive",
    "brier",
    "nll",
    "aurc",
    "e_aurc",
    "coverage",
    "selective_accuracy",
    "coverage_at_target_accuracy",
    "roadwork_precision",
    "roadwork_recall",
    "deployment_score",
)


def adaptive_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-mass bins (each bin holds about N/bins samples, sorted by confidence)."""
    order = np.argsort(np.asarray(confidence, dtype=np.float64), kind="stable")
    confidence = np.asarray(confidence, dtype=np.float64)[order]
    correct = np.asarray(correct, dtype=np.float64)[order]
    total = 0.0
    for part in np.array_split(np.arange(len(order)), min(bins, len(order))):
        total += len(part) / len(order) * abs(correct[part].mean() - confidence[part].mean())
    return float(total)


def risk_coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and selective risk when accepting the k most confident samples, k = 1..N."""
    order = np.argsort(-np.asarray(confidence), kind="stable")
    errors = np.cumsum(~np.asarray(correct, dtype=bool)[order])
    k = np.arange(1, len(order) + 1)
    return k / len(order), errors / k


def aurc_scores(confidence: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    """(AURC, E-AURC): area under the risk-coverage curve, and its excess over the best possible ranking
    AURC* = r + (1 - r) ln(1 - r) for the overall error rate r (Geifman et al., 2019)."""
    _, risk = risk_coverage_curve(confidence, correct)
    aurc = float(risk.mean())
    r = 1.0 - float(np.mean(correct))
    optimal = r + (1.0 - r) * np.log(1.0 - r) if r < 1.0 else 1.0
    return aurc, aurc - float(optimal)


def coverage_at_accuracy(confidence: np.ndarray, correct: np.ndarray, target_accuracy: float) -> float:
    """The largest coverage whose most-confident images reach `target_accuracy` (0 when none does)."""
    coverage, risk = risk_coverage_curve(confidence, correct)
    reached = coverage[1.0 - risk >= target_accuracy - 1e-12]
    return float(reached.max()) if len(reached) else 0.0


def _mcc(tp: float, fp: float, tn: float, fn: float) -> float:
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator > 0 else 0.0  # sklearn's convention


def _auroc(labels: np.ndarray, prob: np.ndarray) -> float:
    """Mann-Whitney form of the ROC area (ties count half), equal to roc_auc_score."""
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(prob)
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluation_metrics(
    labels: np.ndarray,
    prob_roadwork: np.ndarray,
    accept: np.ndarray,
    target_accuracy: float,
    ece_bins: int = 15,
) -> dict[str, float]:
    """Every VAL_TEST number of the report, from calibrated P(roadwork), the policy's accept mask and labels.

    Written with numpy from confusion counts and ranks because the bootstrap calls it thousands of times
    (scikit-learn's input checks made that 20x slower); tests check every value against scikit-learn.
    """
    labels = np.asarray(labels, dtype=np.int64)
    prob = np.clip(np.asarray(prob_roadwork, dtype=np.float64), 0.0, 1.0)
    accept = np.asarray(accept, dtype=bool)
    pred = (prob >= 0.5).astype(np.int64)
    confidence = np.maximum(prob, 1.0 - prob)
    correct = pred == labels
    positive, predicted = labels == 1, pred == 1
    tp, fp = float(np.sum(positive & predicted)), float(np.sum(~positive & predicted))
    fn, tn = float(np.sum(positive & ~predicted)), float(np.sum(~positive & ~predicted))
    recalls = [tp / (tp + fn) if tp + fn else np.nan, tn / (tn + fp) if tn + fp else np.nan]
    # The validators' score (0.5 MCC + 0.5 accuracy)^3 at the 50/50 prior deployment sends: each class carries
    # half the weight, since VAL_TEST keeps the training data's imbalance.
    w_pos = 0.5 / positive.mean() if positive.any() else 0.0
    w_neg = 0.5 / (~positive).mean() if (~positive).any() else 0.0
    prior_mcc = _mcc(tp * w_pos, fp * w_neg, tn * w_neg, fn * w_pos)
    prior_accuracy = (tp * w_pos + tn * w_neg) / (len(labels) * (w_pos * positive.mean() + w_neg * (~positive).mean()))
    aurc, e_aurc = aurc_scores(confidence, correct)
    p_true = np.where(positive, prob, 1.0 - prob)
    n_accepted = int(accept.sum())
    return {
        "n": int(len(labels)),
        "majority_rate": float(max(np.mean(positive), np.mean(~positive))),
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(np.nanmean(recalls)),
        "mcc": _mcc(tp, fp, tn, fn),
        "auroc": _auroc(labels, prob),
        "ece": expected_calibration_error(confidence, correct, ece_bins),
        "ece_adaptive": adaptive_calibration_error(confidence, correct, ece_bins),
        "brier": float(np.mean((prob - positive) ** 2)),
        "nll": float(-np.mean(np.log(np.clip(p_true, np.finfo(np.float64).eps, 1.0)))),
        "aurc": aurc,
        "e_aurc": e_aurc,
        "accepted": n_accepted,
        "coverage": float(accept.mean()) if len(accept) else 0.0,
        "selective_accuracy": float(correct[accept].mean()) if n_accepted else float("nan"),
        "coverage_at_target_accuracy": coverage_at_accuracy(confidence, correct, target_accuracy),
        "roadwork_precision": tp / (tp + fp) if tp + fp else float("nan"),
        "roadwork_recall": recalls[0],
        "deployment_score": float((0.5 * prior_mcc + 0.5 * prior_accuracy) ** 3),
    }


def bootstrap_intervals(
    labels: np.ndarray,
    prob_roadwork: np.ndarray,
    accept: np.ndarray,
    target_accuracy: float,
    ece_bins: int = 15,
    resamples: int = 1000,
    confidence_level: float = 0.95,
    method: str = "BCa",
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """A (low, high) interval per metric in INTERVAL_METRICS, resampling images with replacement.

    A metric that is undefined on some resamples (AUROC with one class, selective accuracy with nothing
    accepted) gets NaN bounds rather than an interval computed from the defined part only; one that is
    constant on every resample (coverage 0 under an infeasible policy) gets the degenerate interval.
    """
    labels, prob, accept = np.asarray(labels), np.asarray(prob_roadwork), np.asarray(accept, dtype=bool)

    def statistic(index: np.ndarray) -> np.ndarray:
        values = evaluation_metrics(labels[index], prob[index], accept[index], target_accuracy, ece_bins)
        return np.array([values[name] for name in INTERVAL_METRICS], dtype=np.float64)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate or NaN bootstrap distributions are handled below
        result = bootstrap(
            (np.arange(len(labels)),),
            statistic,
            vectorized=False,
            n_resamples=resamples,
            confidence_level=confidence_level,
            method=method,
            random_state=np.random.default_rng(seed),
        )
    distribution = np.atleast_2d(result.bootstrap_distribution)
    intervals = {}
    for row, name in enumerate(INTERVAL_METRICS):
        values = distribution[row]
        if np.all(np.isfinite(values)) and np.ptp(values) == 0.0:
            intervals[name] = (float(values[0]), float(values[0]))
        else:
            low, high = result.confidence_interval.low[row], result.confidence_interval.high[row]
            if not (np.isfinite(low) and np.isfinite(high)) and np.all(np.isfinite(values)):
                # BCa's acceleration is undefined when most resamples sit on a bound (e.g. a coverage of 1.0);
                # the percentile interval of the same resamples is still well defined.
                tail = (1.0 - confidence_level) / 2.0 * 100.0
                low, high = np.percentile(values, [tail, 100.0 - tail])
            intervals[name] = (float(low), float(high))
    return intervals
