"""Calibrators fitted on VAL_CALIB logits. Temperature scaling: one scalar, fitted by minimising the NLL."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> dict:
    """The temperature T > 0 minimising the NLL of softmax(logits / T); searched on log T in [-4, 4]."""
    result = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=(-4.0, 4.0),
                             method="bounded", options={"xatol": 1e-5})
    temperature = float(np.exp(result.x))
    return {
        "kind": "temperature",
        "temperature": temperature,
        "nll_before": nll(logits, labels, 1.0),
        "nll_after": nll(logits, labels, temperature),
        "n_calib": int(len(labels)),
    }
