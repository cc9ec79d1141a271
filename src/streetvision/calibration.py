"""Calibrators fitted on VAL_CALIB logits: temperature, Platt, isotonic, histogram binning, beta.

Every calibrator maps the two raw logits of a sample to a calibrated P(roadwork). They work on the logit
margin z = logit_roadwork - logit_other (for two classes softmax(l / T)[1] = sigmoid(z / T)), are fitted
with scikit-learn / scipy, and are stored as plain JSON (no pickles), so a bundle can be read without
trusting code. `fit_calibrator(method="auto")` chooses the method with the lowest cross-validated NLL
inside VAL_CALIB (stratified k-fold), then refits it on all of VAL_CALIB.

With `keep_decision` (the default), a calibrator says how sure the model is, never which class it predicts:
where the fitted map would move an image across 0.5 against the model's own decision (z > 0: roadwork, the
cut phase 1 chose on VAL_SELECT), its probability stays just on the model's side of 0.5, so its confidence is
the lowest there is and every threshold defers it. A calibrator fitted on deployment renders otherwise shifts
the cut towards what the renders need, which costs accuracy on the images deployment sends unchanged.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

from streetvision.contracts.errors import PolicyError

METHODS = ("temperature", "platt", "isotonic", "histogram", "beta")
# Probabilities are kept inside [EPS, 1 - EPS] so NLL stays finite and beta's log features exist.
EPS = 1e-6
# The smallest P(roadwork) that still predicts roadwork: argmax of [1 - p, p] at p = 0.5 is "other".
_ABOVE_HALF = float(np.nextafter(0.5, 1.0))


def margin(logits: np.ndarray) -> np.ndarray:
    """z = logit_roadwork - logit_other, the only thing a two-class softmax depends on."""
    logits = np.asarray(logits, dtype=np.float64)
    return logits[:, 1] - logits[:, 0]


def _fit_temperature(z: np.ndarray, labels: np.ndarray) -> dict:
    """The T > 0 minimising the NLL of sigmoid(z / T); searched on log T in [-4, 4] (bounded Brent)."""
    sign = np.where(labels == 1, 1.0, -1.0)

    def loss(log_t: float) -> float:
        return float(-log_expit(sign * z / np.exp(log_t)).mean())

    result = minimize_scalar(loss, bounds=(-4.0, 4.0), method="bounded", options={"xatol": 1e-5})
    return {"temperature": float(np.exp(result.x))}


def _logistic(features: np.ndarray, labels: np.ndarray) -> LogisticRegression:
    # Essentially unregularised maximum likelihood (Platt / beta calibration are plain MLE fits).
    return LogisticRegression(C=1e6, max_iter=1000).fit(features, labels)


def _fit_platt(z: np.ndarray, labels: np.ndarray) -> dict:
    model = _logistic(z[:, None], labels)
    return {"a": float(model.coef_[0, 0]), "b": float(model.intercept_[0])}


def _beta_features(z: np.ndarray) -> np.ndarray:
    # Beta calibration (Kull et al., 2017) on p = sigmoid(z): logit q = a ln p - b ln(1 - p) + c.
    p = np.clip(expit(z), EPS, 1 - EPS)
    return np.stack([np.log(p), -np.log1p(-p)], axis=1)


def _fit_beta(z: np.ndarray, labels: np.ndarray) -> dict:
    features = _beta_features(z)
    model = _logistic(features, labels)
    a, b = model.coef_[0]
    # a, b >= 0 keeps the map monotone; as in the paper, refit without a feature whose weight came out negative.
    if a < 0 or b < 0:
        keep = 1 if a < 0 else 0
        model = _logistic(features[:, [keep]], labels)
        coef = max(float(model.coef_[0, 0]), 0.0)
        a, b = (0.0, coef) if keep == 1 else (coef, 0.0)
    return {"a": float(a), "b": float(b), "c": float(model.intercept_[0])}


def _fit_isotonic(z: np.ndarray, labels: np.ndarray) -> dict:
    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(z, labels)
    # sklearn predicts by linear interpolation between these points (np.interp), clipped at the ends.
    return {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}


def _fit_histogram(z: np.ndarray, labels: np.ndarray, bins: int) -> dict:
    """Equal-mass bins of z; each bin predicts its (Laplace-smoothed) positive rate."""
    inner = np.unique(np.quantile(z, np.linspace(0, 1, bins + 1)[1:-1]))
    index = np.searchsorted(inner, z, side="right")
    positives = np.bincount(index, weights=labels, minlength=len(inner) + 1)
    counts = np.bincount(index, minlength=len(inner) + 1)
    return {"edges": inner.tolist(), "values": ((positives + 1) / (counts + 2)).tolist()}


def _fit(method: str, z: np.ndarray, labels: np.ndarray, histogram_bins: int, keep_decision: bool) -> dict:
    if method == "temperature":
        params = _fit_temperature(z, labels)
    elif method == "platt":
        params = _fit_platt(z, labels)
    elif method == "isotonic":
        params = _fit_isotonic(z, labels)
    elif method == "histogram":
        params = _fit_histogram(z, labels, histogram_bins)
    elif method == "beta":
        params = _fit_beta(z, labels)
    else:
        raise PolicyError(
            f"unknown calibration method {method!r}", "calibration.method", f"use one of {METHODS} or auto"
        )
    return {"kind": method, **params, "keep_decision": keep_decision}


def prob_roadwork(calibrator: dict, logits: np.ndarray) -> np.ndarray:
    """Calibrated P(roadwork) in [0, 1] for raw logits (N, 2)."""
    z = margin(logits)
    kind = calibrator["kind"]
    if kind == "temperature":
        p = expit(z / calibrator["temperature"])
    elif kind == "platt":
        p = expit(calibrator["a"] * z + calibrator["b"])
    elif kind == "isotonic":
        p = np.interp(z, calibrator["x"], calibrator["y"])
    elif kind == "histogram":
        p = np.asarray(calibrator["values"])[np.searchsorted(calibrator["edges"], z, side="right")]
    elif kind == "beta":
        p = expit(_beta_features(z) @ np.array([calibrator["a"], calibrator["b"]]) + calibrator["c"])
    else:
        raise PolicyError(f"unknown calibrator kind {kind!r}", "calibrator.json", f"use one of {METHODS}")
    p = np.asarray(p, dtype=np.float64)
    if calibrator.get("keep_decision", False):  # calibrators written before the key existed did not keep it
        p = np.where(z > 0, np.maximum(p, _ABOVE_HALF), np.minimum(p, 0.5))
    return p


def calibrated_probabilities(calibrator: dict, logits: np.ndarray) -> np.ndarray:
    """(N, 2) calibrated class probabilities [P(other), P(roadwork)]."""
    p = prob_roadwork(calibrator, logits)
    return np.stack([1.0 - p, p], axis=1)


def _nll(labels: np.ndarray, p: np.ndarray) -> float:
    return float(log_loss(labels, np.clip(p, EPS, 1 - EPS), labels=[0, 1]))


def cross_validated_nll(
    method: str,
    logits: np.ndarray,
    labels: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    histogram_bins: int = 10,
    keep_decision: bool = True,
) -> float:
    """Mean held-out NLL over stratified folds of VAL_CALIB (folds shrink to the rarer class's count)."""
    labels = np.asarray(labels)
    z = margin(logits)
    folds = min(folds, int(np.bincount(labels, minlength=2).min()))
    if folds < 2:
        return float("nan")
    losses = []
    for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(z, labels):
        calibrator = _fit(method, z[train], labels[train], histogram_bins, keep_decision)
        losses.append(_nll(labels[held], prob_roadwork(calibrator, np.asarray(logits)[held])))
    return float(np.mean(losses))


def fit_calibrator(
    logits: np.ndarray,
    labels: np.ndarray,
    method: str = "auto",
    folds: int = 5,
    seed: int = 0,
    histogram_bins: int = 10,
    keep_decision: bool = True,
) -> dict:
    """Fit one calibrator on VAL_CALIB logits; "auto" picks the lowest cross-validated NLL among METHODS."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    z = margin(logits)
    cv = {}
    if method == "auto":
        cv = {m: cross_validated_nll(m, logits, labels, folds, seed, histogram_bins, keep_decision) for m in METHODS}
        finite = {m: v for m, v in cv.items() if np.isfinite(v)}
        # Too few samples of a class to cross-validate: temperature scaling (one parameter) is the safe choice.
        method = min(finite, key=lambda m: finite[m]) if finite else "temperature"
    calibrator = _fit(method, z, labels, histogram_bins, keep_decision)
    calibrator.update(
        n_calib=int(len(labels)),
        nll_before=_nll(labels, expit(z)),
        nll_after=_nll(labels, prob_roadwork(calibrator, logits)),
        selected_by="cross-validated NLL on VAL_CALIB" if cv else "config",
        cv_nll={m: (round(v, 6) if np.isfinite(v) else None) for m, v in cv.items()},
    )
    return calibrator
