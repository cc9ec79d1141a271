"""VAL_TEST metrics of a deployed bundle, each with a bootstrap confidence interval.

Every metric is computed along the last axis, so one call scores a whole batch of bootstrap resamples
(`scipy.stats.bootstrap(..., vectorized=True)`): the cost of an interval set grows with n, not with n calls
of a per-sample function. Intervals are BCa up to `evaluation.bca_max_samples` images and percentile above
(BCa's acceleration needs a jackknife: n statistics of n - 1 images each, O(n^2)). The tests check each metric
against scikit-learn where it has one, the rest (ECE, AURC/E-AURC, coverage at a target accuracy) against
independent computations, and the intervals against scipy.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import bootstrap, rankdata

from streetvision.metrics.classification import expected_calibration_errors

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
# Elements (resamples x images) scored per vectorized call: bounds the bootstrap's memory at any n.
BATCH_ELEMENTS = 1 << 22


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 (a rate with nothing to count)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)


def _adaptive_sorted(gap: np.ndarray, bins: int) -> np.ndarray:
    """Equal-mass ECE from correct - confidence, ordered by confidence along the last axis."""
    n = gap.shape[-1]
    parts = min(bins, n)
    # np.array_split's bins: the first n % parts hold one more sample.
    sizes = np.full(parts, n // parts)
    sizes[: n % parts] += 1
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # A bin's |B|/N * |acc(B) - conf(B)| is |sum(correct - confidence)| over the bin, / N.
    return np.abs(np.add.reduceat(gap, starts, axis=-1)).sum(axis=-1) / n


def adaptive_calibration_errors(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> np.ndarray:
    """ECE with equal-mass bins (each bin holds about N/bins samples, sorted by confidence), along the last axis."""
    confidence = np.asarray(confidence, dtype=np.float64)
    order = np.argsort(confidence, axis=-1, kind="stable")
    return _adaptive_sorted(np.take_along_axis(np.asarray(correct, dtype=np.float64) - confidence, order, -1), bins)


def adaptive_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """`adaptive_calibration_errors` of one sample."""
    return float(adaptive_calibration_errors(confidence, correct, bins))


def _risk_coverage_sorted(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and selective risk of the k first samples, k = 1..N, for rows ordered most confident first."""
    errors = np.cumsum(~np.asarray(correct, dtype=bool), axis=-1)
    k = np.arange(1, correct.shape[-1] + 1)
    return k / correct.shape[-1], errors / k


def risk_coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and selective risk when accepting the k most confident samples, k = 1..N (along the last axis)."""
    order = np.argsort(-np.asarray(confidence), axis=-1, kind="stable")
    return _risk_coverage_sorted(np.take_along_axis(np.asarray(correct, dtype=bool), order, axis=-1))


def _aurc(risk: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    aurc = risk.mean(axis=-1)
    r = 1.0 - np.asarray(correct, dtype=np.float64).mean(axis=-1)
    optimal = np.where(r < 1.0, r + (1.0 - r) * np.log(np.where(r < 1.0, 1.0 - r, 1.0)), 1.0)
    return aurc, aurc - optimal


def aurc_scores(confidence: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    """(AURC, E-AURC): area under the risk-coverage curve, and its excess over the best possible ranking
    AURC* = r + (1 - r) ln(1 - r) for the overall error rate r (Geifman et al., 2019)."""
    _, risk = risk_coverage_curve(confidence, correct)
    aurc, e_aurc = _aurc(risk, correct)
    return float(aurc), float(e_aurc)


def _coverage_at(coverage: np.ndarray, risk: np.ndarray, target_accuracy: float) -> np.ndarray:
    return np.where(1.0 - risk >= target_accuracy - 1e-12, coverage, 0.0).max(axis=-1)


def coverage_at_accuracy(confidence: np.ndarray, correct: np.ndarray, target_accuracy: float) -> float:
    """The largest coverage whose most-confident images reach `target_accuracy` (0 when none does)."""
    coverage, risk = risk_coverage_curve(confidence, correct)
    return float(_coverage_at(coverage, risk, target_accuracy))


def _mcc(tp, fp, tn, fn) -> np.ndarray:
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return np.where(denominator > 0, _ratio(tp * tn - fp * fn, denominator), 0.0)  # sklearn's convention


def _auroc(labels: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Mann-Whitney form of the ROC area (ties count half), equal to roc_auc_score; NaN with one class."""
    n_pos = labels.sum(axis=-1)
    n_neg = labels.shape[-1] - n_pos
    ranks = rankdata(prob, axis=-1)
    return _ratio((ranks * labels).sum(axis=-1) - n_pos * (n_pos + 1) / 2, n_pos * n_neg)


def batch_metrics(
    labels: np.ndarray, prob_roadwork: np.ndarray, accept: np.ndarray, target_accuracy: float, ece_bins: int = 15
) -> dict[str, np.ndarray]:
    """`evaluation_metrics` of every row at once: inputs (..., N), each value an array of shape (...)."""
    labels = np.asarray(labels, dtype=np.int64)
    prob = np.clip(np.asarray(prob_roadwork, dtype=np.float64), 0.0, 1.0)
    accept = np.asarray(accept, dtype=bool)
    n = labels.shape[-1]
    pred = prob >= 0.5
    confidence = np.maximum(prob, 1.0 - prob)
    positive = labels == 1
    correct = pred == positive
    tp, fp = (positive & pred).sum(axis=-1), (~positive & pred).sum(axis=-1)
    fn, tn = (positive & ~pred).sum(axis=-1), (~positive & ~pred).sum(axis=-1)
    recall_pos, recall_neg = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    # The validators' score (0.5 MCC + 0.5 accuracy)^3 at the 50/50 prior deployment sends: each class carries
    # half the weight, since VAL_TEST keeps the training data's imbalance.
    pos_rate = positive.mean(axis=-1)
    w_pos = np.where(pos_rate > 0, 0.5 / np.where(pos_rate > 0, pos_rate, 1.0), 0.0)
    w_neg = np.where(pos_rate < 1, 0.5 / np.where(pos_rate < 1, 1.0 - pos_rate, 1.0), 0.0)
    prior_mcc = _mcc(tp * w_pos, fp * w_neg, tn * w_neg, fn * w_pos)
    prior_accuracy = (tp * w_pos + tn * w_neg) / (n * (w_pos * pos_rate + w_neg * (1.0 - pos_rate)))
    # One sort serves every curve: most confident first for risk-coverage, reversed for equal-mass bins.
    order = np.argsort(-confidence, axis=-1, kind="stable")
    correct_sorted = np.take_along_axis(correct, order, axis=-1)
    coverage_k, risk = _risk_coverage_sorted(correct_sorted)
    gap_ascending = np.flip(correct_sorted - np.take_along_axis(confidence, order, axis=-1), axis=-1)
    aurc, e_aurc = _aurc(risk, correct)
    p_true = np.where(positive, prob, 1.0 - prob)
    n_accepted = accept.sum(axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # both recalls NaN: balanced accuracy is NaN too
        balanced = np.nanmean(np.stack([recall_pos, recall_neg]), axis=0)
    return {
        "n": np.full(labels.shape[:-1], n),
        "majority_rate": np.maximum(pos_rate, 1.0 - pos_rate),
        "accuracy": correct.mean(axis=-1),
        "balanced_accuracy": balanced,
        "mcc": _mcc(tp, fp, tn, fn),
        "auroc": _auroc(labels, prob),
        "ece": expected_calibration_errors(confidence, correct, ece_bins),
        "ece_adaptive": _adaptive_sorted(gap_ascending, ece_bins),
        "brier": ((prob - positive) ** 2).mean(axis=-1),
        "nll": -np.log(np.clip(p_true, np.finfo(np.float64).eps, 1.0)).mean(axis=-1),
        "aurc": aurc,
        "e_aurc": e_aurc,
        "accepted": n_accepted,
        "coverage": accept.mean(axis=-1),
        "selective_accuracy": _ratio((correct & accept).sum(axis=-1), n_accepted),
        "coverage_at_target_accuracy": _coverage_at(coverage_k, risk, target_accuracy),
        "roadwork_precision": _ratio(tp, tp + fp),
        "roadwork_recall": recall_pos,
        "deployment_score": (0.5 * prior_mcc + 0.5 * prior_accuracy) ** 3,
    }


def evaluation_metrics(
    labels: np.ndarray,
    prob_roadwork: np.ndarray,
    accept: np.ndarray,
    target_accuracy: float,
    ece_bins: int = 15,
) -> dict[str, float]:
    """Every VAL_TEST number of the report, from calibrated P(roadwork), the policy's accept mask and labels.

    Written with numpy from confusion counts, sorts and ranks (see `batch_metrics`) because the bootstrap scores
    thousands of resamples; tests check every value against scikit-learn.
    """
    values = batch_metrics(labels, prob_roadwork, accept, target_accuracy, ece_bins)
    return {k: int(v) if k in ("n", "accepted") else float(v) for k, v in values.items()}


def interval_method(method: str, n: int, bca_max_samples: int | None) -> str:
    """The interval an n-image sample gets: `method`, except percentile for BCa above `bca_max_samples`."""
    return "percentile" if method == "BCa" and bca_max_samples is not None and n > bca_max_samples else method


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
    bca_max_samples: int | None = None,
) -> dict[str, tuple[float, float]]:
    """A (low, high) interval per metric in INTERVAL_METRICS, resampling images with replacement.

    BCa is replaced by the percentile interval above `bca_max_samples` images (None: never): see the module.
    A metric that is undefined on some resamples (AUROC with one class, selective accuracy with nothing
    accepted) gets NaN bounds rather than an interval computed from the defined part only; one that is
    constant on every resample (coverage 0 under an infeasible policy) gets the degenerate interval.
    """
    labels, prob, accept = np.asarray(labels), np.asarray(prob_roadwork), np.asarray(accept, dtype=bool)
    method = interval_method(method, len(labels), bca_max_samples)

    def statistic(index: np.ndarray, axis: int = -1) -> np.ndarray:
        values = batch_metrics(labels[index], prob[index], accept[index], target_accuracy, ece_bins)
        return np.stack([np.asarray(values[name], dtype=np.float64) for name in INTERVAL_METRICS])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate or NaN bootstrap distributions are handled below
        result = bootstrap(
            (np.arange(len(labels)),),
            statistic,
            vectorized=True,
            batch=max(1, BATCH_ELEMENTS // max(1, len(labels))),
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
