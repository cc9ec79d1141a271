"""Selective classification with a guarantee: the SGR threshold (Geifman & El-Yaniv, 2017).

Accept a sample when its calibrated confidence is >= t. SGR binary-searches t over the sorted VAL_CALIB
confidences; each tested t bounds the accepted-set error by the one-sided Clopper-Pearson upper bound at
delta / k (k = number of tests, a Bonferroni correction), and the most permissive t whose bound is <= the
target risk is kept. Then: with probability >= 1 - delta over the calibration draw, the error rate among
accepted samples (from the same distribution) is <= target risk.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """One-sided (1 - delta) upper confidence bound on an error rate from `errors` out of `n`."""
    if n == 0:
        return 1.0
    if errors >= n:
        return 1.0
    return float(beta.ppf(1.0 - delta, errors + 1, n - errors))


def sgr_threshold(confidence: np.ndarray, correct: np.ndarray, target_risk: float, delta: float) -> dict:
    """Fit the SGR threshold. Returns the policy fields (threshold None when no tested t meets the target)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    m = len(confidence)
    order = np.argsort(-confidence, kind="stable")
    conf_sorted, errors_sorted = confidence[order], ~correct[order]
    cum_errors = np.cumsum(errors_sorted)
    tests = max(1, math.ceil(math.log2(m))) if m > 1 else 1
    delta_each = delta / tests

    def evaluate(n_accept: int) -> tuple[float, int, float]:
        threshold = conf_sorted[n_accept - 1]
        # Ties: everything with confidence >= threshold is accepted.
        n = int(np.searchsorted(-conf_sorted, -threshold, side="right"))
        errors = int(cum_errors[n - 1])
        return float(threshold), n, clopper_pearson_upper(errors, n, delta_each)

    lo, hi = 1, m  # candidate accepted counts, most conservative .. most permissive
    best = None
    trail = []
    for _ in range(tests):
        if lo > hi:
            break
        mid = (lo + hi + 1) // 2
        threshold, n, bound = evaluate(mid)
        trail.append({"threshold": threshold, "accepted": n, "bound": bound})
        if bound <= target_risk:
            best = (threshold, n, bound)
            lo = mid + 1  # feasible: try accepting more
        else:
            hi = mid - 1
    policy = {
        "kind": "threshold",
        "score": "max calibrated probability",
        "target_risk": target_risk,
        "delta": delta,
        "n_calib": m,
        "tests": tests,
        "search": trail,
    }
    if best is None:
        policy.update(feasible=False, threshold=None, calib_coverage=0.0, calib_risk=None, risk_bound=None)
        return policy
    threshold, n, bound = best
    policy.update(
        feasible=True,
        threshold=threshold,
        calib_coverage=n / m,
        calib_risk=float(cum_errors[n - 1] / n),
        risk_bound=bound,
    )
    return policy


def accept_mask(confidence: np.ndarray, policy: dict) -> np.ndarray:
    """The deployed decision: accept when the policy is feasible and confidence >= its threshold."""
    if not policy["feasible"]:
        return np.zeros(len(confidence), dtype=bool)
    return np.asarray(confidence) >= policy["threshold"]


def guarantee_text(policy: dict) -> str:
    if not policy["feasible"]:
        return (
            f"No threshold meets the target: selective accuracy >= {1 - policy['target_risk']:.1%} could not be "
            f"certified at confidence {1 - policy['delta']:.0%} from {policy['n_calib']} VAL_CALIB samples. "
            "The policy accepts nothing (every image goes to Stage 2). More VAL_CALIB data, a stronger model or a "
            "looser calibration.target_risk can make it feasible."
        )
    return (
        f"Among accepted images, accuracy >= {1 - policy['target_risk']:.1%} with probability >= "
        f"{1 - policy['delta']:.0%} over the VAL_CALIB draw (SGR, Clopper-Pearson bound "
        f"{policy['risk_bound']:.3f} on the error, Bonferroni over {policy['tests']} tests), at VAL_CALIB coverage "
        f"{policy['calib_coverage']:.1%} (accept when calibrated confidence >= {policy['threshold']:.4f})."
    )
