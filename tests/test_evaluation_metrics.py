"""VAL_TEST metrics against scikit-learn/scipy and brute-force definitions, on inputs made here at random."""

import warnings

import numpy as np
import pytest
from scipy.stats import bootstrap
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    log_loss,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)

from streetvision.metrics.evaluation import (
    INTERVAL_METRICS,
    adaptive_calibration_error,
    aurc_scores,
    batch_metrics,
    bootstrap_intervals,
    coverage_at_accuracy,
    evaluation_metrics,
)


def _sample(seed: int, n: int = 300, positive_rate: float = 0.8, ties: bool = False):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < positive_rate).astype(np.int64)
    prob = np.clip(0.5 + (labels - 0.5) * rng.uniform(-0.4, 1.0, n), 0.0, 1.0)
    if ties:
        prob = np.round(prob, 1)
    accept = np.maximum(prob, 1 - prob) >= 0.8
    return labels, prob, accept


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False)])
def test_metrics_agree_with_scikit_learn(seed, ties):
    labels, prob, accept = _sample(seed, ties=ties)
    pred = (prob >= 0.5).astype(int)
    m = evaluation_metrics(labels, prob, accept, target_accuracy=0.95)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(labels, pred))
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, prob))
    assert m["brier"] == pytest.approx(brier_score_loss(labels, prob))
    assert m["nll"] == pytest.approx(log_loss(labels, np.stack([1 - prob, prob], axis=1)), rel=1e-9)
    assert m["roadwork_precision"] == pytest.approx(precision_score(labels, pred))
    assert m["roadwork_recall"] == pytest.approx(recall_score(labels, pred))
    # The deployment score at a 50/50 prior: every image weighted 0.5 / (its class's share).
    weights = np.where(labels == 1, 0.5 / labels.mean(), 0.5 / (1 - labels.mean()))
    expected = (
        0.5 * matthews_corrcoef(labels, pred, sample_weight=weights)
        + 0.5 * accuracy_score(labels, pred, sample_weight=weights)
    ) ** 3
    assert m["deployment_score"] == pytest.approx(expected)
    assert m["coverage"] == pytest.approx(accept.mean())
    assert m["selective_accuracy"] == pytest.approx((pred == labels)[accept].mean())
    assert m["majority_rate"] == pytest.approx(max(labels.mean(), 1 - labels.mean()))


def test_deployment_score_ignores_the_class_imbalance():
    # Predicting the majority class everywhere: 80 % accuracy, but at the 50/50 prior accuracy 0.5, MCC 0.
    labels = np.array([1] * 80 + [0] * 20)
    m = evaluation_metrics(labels, np.full(100, 0.9), np.zeros(100, bool), 0.95)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["deployment_score"] == pytest.approx(0.25**3)


def test_ece_matches_scikit_learn_calibration_curve():
    labels, prob, _ = _sample(3, n=2000)
    confidence = np.maximum(prob, 1 - prob) * 0.999 + 1e-4  # off the bin edges, where conventions differ
    correct = ((prob >= 0.5) == labels).astype(int)
    m = evaluation_metrics(
        labels, np.where(prob >= 0.5, confidence, 1 - confidence), np.zeros(2000, bool), 0.9, ece_bins=10
    )
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=10, strategy="uniform")
    counts = np.histogram(confidence, bins=np.linspace(0, 1, 11))[0]
    expected = np.sum(counts[counts > 0] / len(confidence) * np.abs(prob_true - prob_pred))
    assert m["ece"] == pytest.approx(expected)


def test_adaptive_ece_extremes():
    rng = np.random.default_rng(4)
    confidence, correct = rng.uniform(0.5, 1, 500), rng.random(500) < 0.8
    assert adaptive_calibration_error(confidence, correct, bins=1) == pytest.approx(
        abs(correct.mean() - confidence.mean())
    )
    assert adaptive_calibration_error(confidence, correct, bins=500) == pytest.approx(
        np.mean(np.abs(correct - confidence))
    )


def test_aurc_and_coverage_at_accuracy_by_brute_force():
    rng = np.random.default_rng(5)
    confidence, correct = rng.random(200), rng.random(200) < 0.85
    order = np.argsort(-confidence)
    risks = [1 - correct[order[:k]].mean() for k in range(1, 201)]
    aurc, e_aurc = aurc_scores(confidence, correct)
    assert aurc == pytest.approx(np.mean(risks))
    reached = [k / 200 for k in range(1, 201) if 1 - risks[k - 1] >= 0.8]
    assert coverage_at_accuracy(confidence, correct, 0.8) == pytest.approx(max(reached))
    assert coverage_at_accuracy(confidence, np.zeros(200, bool), 0.9) == 0.0
    # A ranking that puts every error last is (close to) the best possible: E-AURC ~ 0; a random one is worse.
    perfect = np.where(correct, 1.0 + rng.random(200), rng.random(200))
    assert abs(aurc_scores(perfect, correct)[1]) < 0.01
    assert e_aurc > 0.03


def test_bootstrap_matches_scipy_and_handles_degenerate_metrics():
    labels, prob, _ = _sample(6, n=150)
    nothing = np.zeros(150, bool)
    intervals = bootstrap_intervals(labels, prob, nothing, 0.95, resamples=300, seed=7)
    assert set(intervals) == set(INTERVAL_METRICS)
    # Accuracy is a mean of per-image correctness: scipy on that vector with the same draws gives the same interval.
    correct = ((prob >= 0.5) == labels).astype(float)
    direct = bootstrap((correct,), np.mean, n_resamples=300, method="BCa", random_state=np.random.default_rng(7))
    assert intervals["accuracy"] == pytest.approx((direct.confidence_interval.low, direct.confidence_interval.high))
    point = evaluation_metrics(labels, prob, nothing, 0.95)
    for name in ("accuracy", "mcc", "auroc", "brier"):
        low, high = intervals[name]
        assert low <= point[name] <= high and high > low
    assert intervals["coverage"] == (0.0, 0.0)  # nothing is ever accepted: a degenerate, not a missing, interval
    assert all(np.isnan(intervals["selective_accuracy"]))  # undefined on every resample
    again = bootstrap_intervals(labels, prob, nothing, 0.95, resamples=300, seed=7)
    assert str(again) == str(intervals)  # same seed, same intervals (str: NaN != NaN)


def test_batched_metrics_equal_the_metrics_of_each_row():
    rows = [_sample(seed, n=120, ties=seed % 2 == 1) for seed in range(8)]
    labels, prob, accept = (np.stack(column) for column in zip(*rows, strict=True))
    labels[3] = 1  # one class only: AUROC, MCC and the negative recall are undefined or 0 by convention
    accept[4] = False  # nothing accepted: selective accuracy is NaN
    batched = batch_metrics(labels, prob, accept, 0.9, ece_bins=10)
    for i in range(len(rows)):
        one = evaluation_metrics(labels[i], prob[i], accept[i], 0.9, ece_bins=10)
        for name, value in one.items():
            assert batched[name][i] == pytest.approx(value, nan_ok=True), (i, name)
    assert np.isnan(batched["auroc"][3]) and np.isnan(batched["selective_accuracy"][4])
    pred = (prob[3] >= 0.5).astype(int)
    assert batched["mcc"][3] == pytest.approx(matthews_corrcoef(labels[3], pred))
    assert batched["auroc"][5] == pytest.approx(roc_auc_score(labels[5], prob[5]))


@pytest.mark.parametrize("method", ["BCa", "percentile"])
def test_vectorized_intervals_equal_scipys_per_resample_intervals(method):
    """The batched statistic gives scipy's own interval: same draws, computed one resample at a time."""
    labels, prob, accept = _sample(8, n=90)
    intervals = bootstrap_intervals(labels, prob, accept, 0.9, resamples=200, method=method, seed=3)

    def one_at_a_time(index):
        values = evaluation_metrics(labels[index], prob[index], accept[index], 0.9)
        return np.array([values[name] for name in INTERVAL_METRICS])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = bootstrap(
            (np.arange(90),),
            one_at_a_time,
            vectorized=False,
            n_resamples=200,
            method=method,
            random_state=np.random.default_rng(3),
        )
    for row, name in enumerate(INTERVAL_METRICS):
        expected = (direct.confidence_interval.low[row], direct.confidence_interval.high[row])
        if np.all(np.isfinite(expected)):
            assert intervals[name] == pytest.approx(expected), name


def test_above_the_bca_size_the_percentile_interval_is_used():
    labels, prob, accept = _sample(9, n=400)
    kwargs = dict(resamples=200, seed=1)
    switched = bootstrap_intervals(labels, prob, accept, 0.9, bca_max_samples=399, **kwargs)
    assert switched == bootstrap_intervals(labels, prob, accept, 0.9, method="percentile", **kwargs)
    assert switched != bootstrap_intervals(labels, prob, accept, 0.9, bca_max_samples=400, **kwargs)
