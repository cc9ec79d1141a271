import math

import numpy as np
import pytest
from scipy.stats import beta
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss, matthews_corrcoef, roc_auc_score

from streetvision.calibration import fit_calibrator
from streetvision.metrics.classification import (
    classification_metrics,
    expected_calibration_error,
    probabilities,
    selection_score,
)
from streetvision.selective import accept_mask, clopper_pearson_upper, sgr_threshold


def test_ece_matches_a_reference_built_from_sklearn_calibration_curve():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 5000)
    correct = rng.uniform(size=5000) < confidence**2  # miscalibrated on purpose
    ours = expected_calibration_error(confidence, correct, bins=10)
    frac, mean_conf = calibration_curve(correct, confidence, n_bins=10, strategy="uniform")
    counts = np.histogram(confidence, bins=np.linspace(0, 1, 11))[0]
    counts = counts[counts > 0]
    reference = float(np.sum(counts / counts.sum() * np.abs(frac - mean_conf)))
    assert ours == pytest.approx(reference, abs=1e-12)
    assert expected_calibration_error(np.full(10, 0.7), np.arange(10) < 7, bins=15) == pytest.approx(0.0)


def test_classification_metrics_agree_with_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    logits = rng.normal(size=(400, 2)) + np.stack([1 - labels, labels], axis=1)
    probs = probabilities(logits)
    m = classification_metrics(labels, probs)
    assert m["mcc"] == pytest.approx(matthews_corrcoef(labels, probs.argmax(1)))
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    assert m["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels))
    assert selection_score("auroc", labels, logits) == pytest.approx(m["auroc"])


def test_temperature_scaling_finds_the_nll_minimum():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 2000)
    logits = 4.0 * (rng.normal(size=(2000, 2)) + 0.8 * np.stack([1 - labels, labels], axis=1))  # overconfident
    fitted = fit_calibrator(logits, labels, method="temperature")
    grid = np.exp(np.linspace(-2, 3, 2001))
    best = grid[np.argmin([log_loss(labels, probabilities(logits, t)) for t in grid])]
    assert fitted["temperature"] == pytest.approx(best, rel=0.01)
    assert fitted["temperature"] > 1.5  # overconfident logits get softened
    assert fitted["nll_after"] == pytest.approx(log_loss(labels, probabilities(logits, fitted["temperature"])))
    assert fitted["nll_after"] < fitted["nll_before"]


def test_clopper_pearson_matches_scipy_beta():
    assert clopper_pearson_upper(3, 100, 0.05) == pytest.approx(beta.ppf(0.95, 4, 97))
    assert clopper_pearson_upper(0, 0, 0.05) == 1.0
    assert clopper_pearson_upper(0, 60, 0.05) == pytest.approx(1 - 0.05 ** (1 / 60))


def _draw(rng, n):
    """Confidence in [0.5, 1] and correctness with P(correct | c) = c (a calibrated model)."""
    confidence = rng.uniform(0.5, 1.0, n)
    return confidence, rng.uniform(size=n) < confidence


def test_sgr_policy_fields_and_bound():
    rng = np.random.default_rng(3)
    conf, correct = _draw(rng, 2000)
    policy = sgr_threshold(conf, correct, target_risk=0.1, delta=0.05)
    assert policy["feasible"] and policy["tests"] == math.ceil(math.log2(2000))
    accepted = accept_mask(conf, policy)
    assert accepted.mean() == pytest.approx(policy["calib_coverage"])
    errors = int((~correct[accepted]).sum())
    assert policy["risk_bound"] == pytest.approx(
        beta.ppf(1 - 0.05 / policy["tests"], errors + 1, accepted.sum() - errors)
    )
    assert policy["risk_bound"] <= 0.1 and policy["calib_risk"] <= policy["risk_bound"]


def test_sgr_guarantee_holds_on_fresh_data():
    """Over many calibration draws, the accepted-set risk on new data exceeds the target at most ~delta of the time."""
    rng = np.random.default_rng(4)
    target, delta, violations, trials = 0.1, 0.1, 0, 200
    for _ in range(trials):
        policy = sgr_threshold(*_draw(rng, 300), target_risk=target, delta=delta)
        if not policy["feasible"]:
            continue
        t = policy["threshold"]
        true_risk = 1.0 - (1.0 + t) / 2.0  # E[1 - c | c >= t] with c ~ U(t, 1)
        violations += true_risk > target
    assert violations / trials <= delta


def test_infeasible_target_accepts_nothing():
    rng = np.random.default_rng(5)
    conf = rng.uniform(0.5, 1.0, 50)
    correct = rng.uniform(size=50) < 0.6  # 40 % errors whatever the confidence
    policy = sgr_threshold(conf, correct, target_risk=0.01, delta=0.05)
    assert not policy["feasible"] and policy["threshold"] is None and policy["calib_coverage"] == 0.0
    assert not accept_mask(conf, policy).any()
