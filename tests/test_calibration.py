"""Calibrators: each checked against scikit-learn/scipy, selection by cross-validated NLL, JSON round trip."""

import json

import numpy as np
import pytest
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from streetvision.calibration import (
    METHODS,
    calibrated_probabilities,
    cross_validated_nll,
    fit_calibrator,
    prob_roadwork,
)


def _logits(z: np.ndarray) -> np.ndarray:
    """Two-class logits with margin z (the split between the two logits is arbitrary)."""
    return np.stack([-z / 2 + 0.3, z / 2 + 0.3], axis=1)


def _draw(rng, n, scale=3.0, shift=0.0):
    """Labels 50/50; the true P(y=1 | z) = sigmoid(z); the model reports scale*z + shift (miscalibrated)."""
    z_true = rng.normal(0, 2.0, n)
    labels = (rng.uniform(size=n) < expit(z_true)).astype(np.int64)
    return _logits(scale * z_true + shift), labels, z_true


def test_platt_matches_sklearn_logistic_regression():
    rng = np.random.default_rng(0)
    logits, labels, _ = _draw(rng, 3000, scale=3.0, shift=1.0)
    cal = fit_calibrator(logits, labels, "platt", keep_decision=False)  # the fitted map alone
    z = logits[:, 1] - logits[:, 0]
    ref = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], labels)
    assert prob_roadwork(cal, logits) == pytest.approx(ref.predict_proba(z[:, None])[:, 1], abs=1e-6)
    # Over-confident by 3x and shifted by 1: the fit undoes it.
    assert cal["a"] == pytest.approx(1 / 3, rel=0.15) and cal["b"] == pytest.approx(-1 / 3, abs=0.15)


def test_isotonic_matches_sklearn_isotonic_regression():
    rng = np.random.default_rng(1)
    logits, labels, _ = _draw(rng, 2000)
    cal = fit_calibrator(logits, labels, "isotonic", keep_decision=False)
    z = logits[:, 1] - logits[:, 0]
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(z, labels)
    z_new = np.linspace(z.min() - 5, z.max() + 5, 500)
    assert prob_roadwork(cal, _logits(z_new)) == pytest.approx(ref.predict(z_new), abs=1e-12)


def test_temperature_is_the_nll_minimum_and_beta_is_monotone():
    rng = np.random.default_rng(2)
    logits, labels, _ = _draw(rng, 3000, scale=3.0)
    cal = fit_calibrator(logits, labels, "temperature")
    z = logits[:, 1] - logits[:, 0]
    grid = np.exp(np.linspace(-1, 3, 4001))
    sign = np.where(labels == 1, 1.0, -1.0)
    nll = np.logaddexp(0.0, -sign[None, :] * z[None, :] / grid[:, None]).mean(axis=1)  # -log sigmoid, per T
    best = grid[np.argmin(nll)]
    assert nll.min() == pytest.approx(log_loss(labels, expit(z / best)), rel=1e-9)
    assert cal["temperature"] == pytest.approx(best, rel=0.005)
    assert cal["temperature"] == pytest.approx(3.0, rel=0.15)
    beta_cal = fit_calibrator(logits, labels, "beta")
    assert beta_cal["a"] >= 0 and beta_cal["b"] >= 0
    p = prob_roadwork(beta_cal, _logits(np.linspace(-20, 20, 401)))
    assert (np.diff(p) >= -1e-12).all()


def test_histogram_binning_predicts_smoothed_bin_rates():
    rng = np.random.default_rng(3)
    logits, labels, _ = _draw(rng, 1000)
    cal = fit_calibrator(logits, labels, "histogram", histogram_bins=5, keep_decision=False)
    z = logits[:, 1] - logits[:, 0]
    p = prob_roadwork(cal, logits)
    assert len(np.unique(p)) <= 5
    edges = np.quantile(z, [0.2, 0.4, 0.6, 0.8])
    top = z > edges[-1]
    assert p[top][0] == pytest.approx((labels[top].sum() + 1) / (top.sum() + 2))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_improves_nll_of_miscalibrated_logits_and_round_trips_json(method):
    rng = np.random.default_rng(4)
    logits, labels, _ = _draw(rng, 2000, scale=4.0, shift=1.5)
    test_logits, test_labels, _ = _draw(rng, 4000, scale=4.0, shift=1.5)
    cal = json.loads(json.dumps(fit_calibrator(logits, labels, method, keep_decision=False)))  # as a bundle stores it
    probs = calibrated_probabilities(cal, test_logits)
    assert ((probs >= 0) & (probs <= 1)).all() and probs.sum(axis=1) == pytest.approx(1.0)
    raw = log_loss(test_labels, expit(test_logits[:, 1] - test_logits[:, 0]))
    assert log_loss(test_labels, np.clip(probs[:, 1], 1e-6, 1 - 1e-6)) < raw - 0.05


def test_auto_picks_the_lowest_cross_validated_nll():
    rng = np.random.default_rng(5)
    logits, labels, _ = _draw(rng, 1500, scale=3.0, shift=2.0)  # shifted: temperature alone cannot fix it
    cal = fit_calibrator(logits, labels, "auto", folds=5, seed=0)
    assert set(cal["cv_nll"]) == set(METHODS)
    assert cal["kind"] == min(cal["cv_nll"], key=cal["cv_nll"].get)
    assert cal["kind"] != "temperature"
    assert cal["cv_nll"]["platt"] == pytest.approx(cross_validated_nll("platt", logits, labels, 5, 0), abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_keep_decision_never_changes_the_models_class_and_defers_where_the_map_disagrees(method):
    rng = np.random.default_rng(6)
    logits, labels, _ = _draw(rng, 2000, scale=3.0, shift=2.0)  # shifted: the fitted maps move the 0.5 cut
    free = fit_calibrator(logits, labels, method, keep_decision=False)
    kept = json.loads(json.dumps(fit_calibrator(logits, labels, method, keep_decision=True)))
    z = logits[:, 1] - logits[:, 0]
    p_free, probs = prob_roadwork(free, logits), calibrated_probabilities(kept, logits)
    assert (probs.argmax(axis=1) == (z > 0)).all()  # the model's own decision, even where the map disagrees
    agree = (p_free > 0.5) == (z > 0)
    disagree = ~agree & (p_free != 0.5)
    # Temperature scaling keeps the sign of z, so it never disagrees; the other maps fit the shift.
    assert (disagree.sum() == 0) if method == "temperature" else (disagree.sum() > 20 and agree.sum() > 1000)
    assert probs[agree, 1] == pytest.approx(p_free[agree], abs=1e-12)  # where they agree, the fitted map
    assert probs[disagree].max(axis=1) == pytest.approx(0.5, abs=1e-12)  # else the lowest confidence
    assert probs.max(axis=1).min() >= 0.5


def test_auto_with_too_few_of_a_class_falls_back_to_temperature():
    logits = _logits(np.array([2.0, 1.0, 3.0, -1.0]))
    cal = fit_calibrator(logits, np.array([1, 1, 1, 0]), "auto")
    assert cal["kind"] == "temperature" and all(v is None for v in cal["cv_nll"].values())


def test_calibration_and_gate_config_are_checked_in_one_error():
    from streetvision.config import ConfigError, load_config

    assert load_config(["calibration.method=beta"]).calibration.method == "beta"
    with pytest.raises(ConfigError) as err:
        load_config(
            [
                "calibration.method=spline",
                "calibration.scrc_selection_rate=1.5",
                "gate.correct_weight=2",
                "gate.unfreeze_blocks=-1",
                "gate.epochs=0",
            ]
        )
    text = str(err.value)
    for expected in ("calibration.method", "scrc_selection_rate", "correct_weight", "unfreeze_blocks", "epochs"):
        assert expected in text
