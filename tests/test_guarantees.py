"""The policies' promises, checked over many independent calibration draws from a known distribution.

Model: y ~ Bernoulli(1/2), z | y ~ N(+mu, 1) if y = 1 else N(-mu, 1). The Bayes posterior is
P(y = 1 | z) = sigmoid(2 mu z), and every accepted/selected set is {|z| >= c}, so the true risk of any fitted
policy is known in closed form (normal CDFs): no test-set noise in the verdict. A policy "holds" on a draw when
its true risk is <= the target; it must hold on >= 1 - delta of the draws. The allowed number of violations is
the 1 - 1e-6 quantile of Binomial(trials, delta), so a correct policy fails this test with probability < 1e-6.
"""

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit, logit
from scipy.stats import binom, norm

from streetvision.selective import accept_mask, clopper_pearson_upper, guarantee_text, scrc_policy, sgr_threshold

MU = 1.5  # base accuracy Phi(1.5) = 0.933: a 5 % risk target needs partial coverage
TRIALS = 300
N_CALIB = 1000


def _draw(rng, n):
    y = rng.integers(0, 2, n)
    z = rng.normal(np.where(y == 1, MU, -MU), 1.0)
    p1 = expit(2 * MU * z)
    return np.stack([1 - p1, p1], axis=1), y


def _cut(confidence_threshold: float) -> float:
    """|z| cut equivalent to max-probability >= t."""
    return max(0.0, float(logit(np.clip(confidence_threshold, 0.5, 1 - 1e-16))) / (2 * MU))


def true_selective_risk(threshold: float) -> float:
    """Error rate among samples with confidence >= threshold (symmetric in y; computed for y = 1)."""
    c = _cut(threshold)
    wrong, right = norm.cdf(-c - MU), norm.sf(c - MU)
    return wrong / (wrong + right)


def true_scrc_risk(selection_threshold: float, set_threshold: float) -> float:
    """P(y not in {k : p_k >= lambda} | selected), for the selection |z| >= c_tau (computed for y = 1)."""
    c = _cut(selection_threshold)
    selected = norm.cdf(-c - MU) + norm.sf(c - MU)
    if set_threshold <= 0:
        return 0.0
    z_lam = float(logit(min(set_threshold, 1 - 1e-16))) / (2 * MU)  # y = 1 is missed when z < z_lam
    miss = norm.cdf(min(z_lam, -c) - MU) + max(0.0, norm.cdf(z_lam - MU) - norm.cdf(c - MU))
    return miss / selected


def empirical_threshold(confidence, correct, target_risk):
    """The deliberately broken policy: the most permissive threshold whose *empirical* risk is <= target."""
    order = np.argsort(-confidence)
    risk = np.cumsum(~correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(risk <= target_risk)
    return float(confidence[order][ok[-1]]) if len(ok) else None


def _allowed_violations(delta: float) -> int:
    return int(binom.ppf(1 - 1e-6, TRIALS, delta))


def test_clopper_pearson_matches_an_independent_binomial_tail_inversion():
    """SGR's B*(k, m, delta): the b where P(Binomial(m, b) <= k) = delta, found by root finding."""
    for k, m, d in [(0, 50, 0.05), (3, 100, 0.05), (17, 400, 0.01), (40, 60, 0.2)]:
        reference = brentq(lambda b, k=k, m=m, d=d: binom.cdf(k, m, b) - d, 1e-12, 1 - 1e-12, xtol=1e-14)
        assert clopper_pearson_upper(k, m, d) == pytest.approx(reference, abs=1e-9)


def test_sgr_threshold_meets_its_target_and_the_empirical_threshold_does_not():
    rng = np.random.default_rng(0)
    target, delta = 0.05, 0.1
    sgr_violations = broken_violations = feasible = 0
    coverages = []
    for _ in range(TRIALS):
        probs, y = _draw(rng, N_CALIB)
        confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
        policy = sgr_threshold(confidence, correct, target, delta)
        if policy["feasible"]:
            feasible += 1
            sgr_violations += true_selective_risk(policy["threshold"]) > target
            coverages.append(policy["calib_coverage"])
        broken = empirical_threshold(confidence, correct, target)
        broken_violations += broken is not None and true_selective_risk(broken) > target
    assert feasible >= 0.95 * TRIALS  # the target is reachable here, and SGR does reach it
    assert np.mean(coverages) > 0.5  # ... at a useful coverage, not by accepting almost nothing
    assert sgr_violations <= _allowed_violations(delta)
    # The plain empirical threshold sits right at the target and overshoots about half the time.
    assert broken_violations >= 0.3 * TRIALS
    assert broken_violations > 3 * max(sgr_violations, 1)


def test_sgr_accept_mask_is_the_recorded_coverage():
    rng = np.random.default_rng(1)
    probs, y = _draw(rng, N_CALIB)
    confidence = probs.max(axis=1)
    policy = sgr_threshold(confidence, probs.argmax(axis=1) == y, 0.05, 0.1)
    assert accept_mask(confidence, policy).mean() == pytest.approx(policy["calib_coverage"])


def test_scrc_meets_its_target_and_empirical_risk_control_does_not():
    rng = np.random.default_rng(2)
    target, delta, rate = 0.05, 0.1, 0.7
    scrc_violations = broken_violations = feasible = 0
    for trial in range(TRIALS):
        probs, y = _draw(rng, N_CALIB)
        policy = scrc_policy(probs, y, target, delta, selection_rate=rate, selection_fraction=0.3, seed=trial)
        if policy["feasible"]:
            feasible += 1
            scrc_violations += true_scrc_risk(policy["selection_threshold"], policy["set_threshold"]) > target
        # Broken: the same selection, but the largest lambda whose *empirical* miss rate is <= target.
        tau = policy["selection_threshold"]
        selected = probs.max(axis=1) >= tau
        p_true = np.sort(probs[selected, y[selected]])
        miss_rate = np.arange(len(p_true)) / len(p_true)  # lambda = p_true[i] misses the i smaller ones
        ok = np.flatnonzero(miss_rate <= target)
        lam = float(p_true[ok[-1]]) if len(ok) else 0.0
        broken_violations += true_scrc_risk(tau, lam) > target
    assert feasible >= 0.95 * TRIALS
    assert scrc_violations <= _allowed_violations(delta)
    assert broken_violations >= 0.3 * TRIALS
    assert broken_violations > 3 * max(scrc_violations, 1)


def test_scrc_accepts_only_selected_singletons():
    rng = np.random.default_rng(3)
    probs, y = _draw(rng, N_CALIB)
    policy = scrc_policy(probs, y, 0.05, 0.1, selection_rate=0.7)
    conf = probs.max(axis=1)
    accepted = accept_mask(conf, policy)
    sets = probs >= policy["set_threshold"]
    assert (conf[accepted] >= policy["selection_threshold"]).all()
    assert (sets[accepted].sum(axis=1) == 1).all()
    assert not (accepted & (conf >= policy["selection_threshold"]) & (sets.sum(axis=1) != 1)).any()
    text = guarantee_text(policy)
    assert text.startswith("Among selected images") and f"{policy['set_threshold']:.4f}" in text


def test_scrc_on_a_hopeless_model_is_infeasible_and_accepts_nothing():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 60)
    p1 = rng.uniform(0.45, 0.55, 60)  # coin flips; 60 samples cannot certify a 1 % miss rate
    probs = np.stack([1 - p1, p1], axis=1)
    policy = scrc_policy(probs, y, 0.01, 0.05, selection_rate=0.5)
    assert not policy["feasible"] and policy["calib_coverage"] == 0.0
    assert not accept_mask(probs.max(axis=1), policy).any()


def reference_sgr(kappa, correct, r_star, delta):
    """Geifman & El-Yaniv (2017), Algorithm 1, written from the paper with a root-finding B* (no shared code)."""
    m = len(kappa)
    asc = np.sort(kappa)
    k = int(np.ceil(np.log2(m)))
    z_min, z_max = 1, m
    tested = []
    for _ in range(k):
        z = int(np.ceil((z_min + z_max) / 2))
        theta = asc[z - 1]
        accepted = kappa >= theta
        errors, n = int((~correct[accepted]).sum()), int(accepted.sum())
        # B*(r, delta/k, S): the largest b with P(Binomial(n, b) <= errors) >= delta / k.
        b_star = (
            1.0
            if errors >= n
            else brentq(lambda b, errors=errors, n=n: binom.cdf(errors, n, b) - delta / k, 1e-15, 1 - 1e-15, xtol=1e-15)
        )
        tested.append((float(theta), b_star))
        if b_star < r_star:
            z_max = z
        else:
            z_min = z
    return tested


@pytest.mark.parametrize("seed", range(5))
def test_sgr_matches_a_reference_implementation_of_the_paper(seed):
    rng = np.random.default_rng(100 + seed)
    probs, y = _draw(rng, int(rng.integers(200, 3000)))
    kappa, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    policy = sgr_threshold(kappa, correct, 0.05, 0.05)
    reference = reference_sgr(kappa, correct, 0.05, 0.05)
    ours = [(t["threshold"], t["bound"]) for t in policy["search"]]
    assert np.allclose(ours, reference, rtol=0, atol=1e-9)
    feasible = [(theta, b) for theta, b in reference if b < 0.05]
    assert policy["feasible"] == bool(feasible)
    if feasible:  # the most permissive certified threshold, with its bound
        assert np.allclose((policy["threshold"], policy["risk_bound"]), min(feasible), rtol=0, atol=1e-9)
