"""Selective classification with a guarantee: a confidence threshold certified on VAL_CALIB.

Accept a sample when its calibrated confidence is >= t. Two ways to choose t, both bounding the accepted-set
error by the one-sided Clopper-Pearson upper bound, and both promising: with probability >= 1 - delta over the
calibration draw, the error rate among accepted samples (from the distribution VAL_CALIB was drawn from) is
<= target risk.

- Learn-then-Test fixed-sequence testing (Angelopoulos et al., 2021; "ltt", the default): candidate
  thresholds are VAL_CALIB confidences at the accepted counts where one more error becomes allowed (no labels
  used to pick them), tested from the most confident down; a sequence stops at its first failure and keeps
  its last pass. Two sequences run, one from the top and one from the count where 3 errors are allowed, each
  at delta / 2 (Bonferroni), so one error among the most confident images does not end the search.
- SGR (Geifman & El-Yaniv, 2017; "sgr"): a binary search over the same sorted confidences, each of its
  ceil(log2 m) tests at delta / ceil(log2 m) (Bonferroni). It needs more error-free accepted images.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta, binom


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """One-sided (1 - delta) upper confidence bound on an error rate from `errors` out of `n`."""
    if n == 0:
        return 1.0
    if errors >= n:
        return 1.0
    return float(beta.ppf(1.0 - delta, errors + 1, n - errors))


def clopper_pearson_upper_array(errors: np.ndarray, n: np.ndarray, delta: float) -> np.ndarray:
    """`clopper_pearson_upper` for arrays of (errors, n) at once."""
    errors, n = np.asarray(errors, dtype=np.float64), np.asarray(n, dtype=np.float64)
    full = errors >= n  # includes n == 0
    bound = beta.ppf(1.0 - delta, errors + 1, np.where(full, 1.0, n - errors))
    return np.where(full, 1.0, bound)


THRESHOLD_METHODS = ("ltt", "sgr")


# Learn-then-Test runs two fixed sequences, each at delta / 2 (Bonferroni): one from the most confident images,
# one from the count where this many errors are allowed. The second survives an error among the most confident
# images (a flipped label, one hard render) that would end the first at its first test.
LTT_SECOND_START_ERRORS = 3
LTT_SEQUENCES = 2


def method_level(delta: float, method: str, n_calib: int = 0) -> float:
    """The level each of `method`'s tests is run at: delta / 2 for "ltt" (two sequences), delta / ceil(log2 n)
    for "sgr" (its binary search's tests)."""
    return delta / (sgr_tests(n_calib) if method == "sgr" else LTT_SEQUENCES)


def sgr_tests(n_calib: int) -> int:
    """How many thresholds SGR's binary search tests on n_calib samples (its Bonferroni factor)."""
    return max(1, math.ceil(math.log2(n_calib))) if n_calib > 1 else 1


def min_error_free_accepted(target_risk: float, delta: float, method: str = "ltt", n_calib: int = 0) -> int:
    """The fewest accepted VAL_CALIB images, all correct, whose Clopper-Pearson bound certifies `target_risk`.

    The smallest k with upper bound(0 errors of k) <= target_risk at the method's test level (`method_level`). A
    VAL_CALIB smaller than this can never certify the target, whatever the model: e.g. 72 images for 5 % at
    delta = 0.05 with ltt, 99 with sgr on 129-256 images (8 tests).
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; use one of {THRESHOLD_METHODS}")
    level = method_level(delta, method, n_calib)
    # Closed form of 1 - level ** (1 / k) <= target_risk, then checked against the bound itself (float edges).
    k = max(1, math.ceil(math.log(level) / math.log1p(-target_risk)))
    while clopper_pearson_upper(0, k, level) > target_risk:
        k += 1
    while k > 1 and clopper_pearson_upper(0, k - 1, level) <= target_risk:
        k -= 1
    return k


def min_val_calib_size(target_risk: float, delta: float, method: str = "ltt") -> int:
    """The smallest VAL_CALIB that can certify `target_risk` at all (every image accepted and correct).

    For "ltt" this is `min_error_free_accepted`; for "sgr" the images needed grow with VAL_CALIB itself (its
    Bonferroni factor is ceil(log2 n)), so it is the smallest n that meets its own requirement.
    """
    n = min_error_free_accepted(target_risk, delta, method, 0)
    while n < min_error_free_accepted(target_risk, delta, method, n):
        n += 1
    return n


def reachable_target(n_calib: int, delta: float, method: str = "ltt") -> float:
    """The smallest target risk `n_calib` error-free accepted images can certify (nothing smaller ever passes)."""
    level = method_level(delta, method, n_calib)
    return clopper_pearson_upper(0, n_calib, level)


def calibration_size_check(
    n_calib: int, target_risk: float, delta: float, method: str, val_calib_fraction: float, n_placed: int
) -> dict:
    """Whether a VAL_CALIB of `n_calib` images (of `n_placed` split) can reach the target, with a message that
    says so, and when it cannot, which data.split.val_calib fraction or calibration.target_risk would."""
    need = min_error_free_accepted(target_risk, delta, method, n_calib)
    check = {
        "val_calib_images": n_calib,
        "min_error_free_accepted": need,
        "threshold_method": method,
        "target_risk": target_risk,
        "delta": delta,
        "reachable": n_calib >= need,
    }
    message = (
        f"VAL_CALIB holds {n_calib} images; certifying error <= {target_risk:.1%} among accepted images at "
        f"delta={delta} ({method}) needs at least {need} accepted VAL_CALIB images without one error (each error "
        "raises that number)"
    )
    if check["reachable"]:
        check["message"] = message + "."
        return check
    fixes = []
    size = min_val_calib_size(target_risk, delta, method)
    if n_placed and size < n_placed:
        fraction = math.ceil(size / n_placed * 100) / 100
        fixes.append(
            f"data.split.val_calib >= {fraction:.2f} (now {val_calib_fraction:.2f}; {size} of {n_placed} images)"
        )
        check["val_calib_fraction_needed"] = fraction
    else:
        fixes.append(f"more data ({size} VAL_CALIB images at least)")
    loosest = math.ceil(reachable_target(n_calib, delta, method) * 1000) / 1000
    if loosest < 1:
        fixes.append(f"calibration.target_risk >= {loosest:.3f}")
        check["target_risk_reachable"] = loosest
    if method == "sgr":
        fixes.append(f"calibration.threshold_method=ltt (needs {min_error_free_accepted(target_risk, delta)})")
    check["message"] = (
        f"{message}: this split can never reach the target, every image would go to Stage 2. Set {' or '.join(fixes)}."
    )
    return check


def fit_threshold(
    confidence: np.ndarray, correct: np.ndarray, target_risk: float, delta: float, method: str = "ltt"
) -> dict:
    """The certified threshold policy by `method` ("ltt" or "sgr")."""
    if method == "ltt":
        return ltt_threshold(confidence, correct, target_risk, delta)
    if method == "sgr":
        return sgr_threshold(confidence, correct, target_risk, delta)
    raise ValueError(f"unknown threshold method {method!r}; use one of {THRESHOLD_METHODS}")


def allowed_errors(counts: np.ndarray, target_risk: float, delta: float) -> np.ndarray:
    """The most errors among `counts` accepted images whose Clopper-Pearson bound still certifies the target
    (-1 where even none would not)."""
    counts = np.asarray(counts, dtype=np.int64)
    # P(Binomial(k, alpha) <= j) <= delta is the bound's own condition; its quantile, then exact by the bound.
    j = binom.ppf(delta, counts, target_risk).astype(np.int64) - 1
    j += clopper_pearson_upper_array(j + 1, counts, delta) <= target_risk
    j -= (j >= 0) & (clopper_pearson_upper_array(np.maximum(j, 0), counts, delta) > target_risk)
    return np.maximum(j, -1)


def ltt_test_counts(m: int, target_risk: float, delta: float) -> np.ndarray:
    """The accepted counts Learn-then-Test tests, in order: each count where one more error becomes allowed.

    k_0 = min_error_free_accepted (0 errors allowed), k_1 the fewest images that may hold 1 error, and so on
    up to m. Between k_j and k_(j+1) the allowance stays j while errors can only grow, so a test there passes
    only if the test at k_j does: the sequence keeps the easiest test of each allowance and skips the rest,
    where an error that arrives a little early would otherwise end the whole sequence. Uses m only, no labels.
    """
    if m < 1:
        return np.zeros(0, np.int64)
    counts = np.arange(1, m + 1)
    allowed = allowed_errors(counts, target_risk, delta)
    steps = np.flatnonzero(allowed[1:] > allowed[:-1]) + 1
    return counts[np.r_[[0] if allowed[0] >= 0 else [], steps].astype(np.int64)]


def ltt_threshold(confidence: np.ndarray, correct: np.ndarray, target_risk: float, delta: float) -> dict:
    """Learn-then-Test threshold from two fixed sequences; threshold None when neither passes a test.

    Each sequence tests thresholds at `ltt_test_counts` (the k-th highest VAL_CALIB confidence, with its ties:
    confidence >= threshold accepts them together), most confident first, each test the one-sided
    Clopper-Pearson bound at delta / 2, and stops at its first failure. The first starts at the top, the second
    at the count where LTT_SECOND_START_ERRORS errors are allowed. By Bonferroni over the two, every threshold
    either certifies holds at delta together; the policy takes the one that accepts most. The order and both
    starts use the confidences and sizes only, never the labels.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    m = len(confidence)
    level = method_level(delta, "ltt")
    order = np.argsort(-confidence, kind="stable")
    conf_sorted, cum_errors = confidence[order], np.cumsum(~correct[order])
    # One candidate per distinct confidence: ties are accepted together (confidence >= threshold).
    tie_ends = np.flatnonzero(np.r_[conf_sorted[1:] != conf_sorted[:-1], True]) if m else np.zeros(0, int)
    counts = ltt_test_counts(m, target_risk, level)
    ends_all = tie_ends[np.searchsorted(tie_ends, counts - 1)] if len(counts) else counts
    # Both sequences walk the same candidates (the second from the one where its allowance starts), so every
    # bound is computed once.
    ends = np.unique(ends_all)
    accepted, errors = ends + 1, cum_errors[ends]
    fails = clopper_pearson_upper_array(errors, accepted, level) > target_risk
    starts = [0]
    if len(ends_all) > LTT_SECOND_START_ERRORS:
        starts.append(int(np.searchsorted(ends, ends_all[LTT_SECOND_START_ERRORS])))
    tests, best, first_stop, reached = 0, -1, None, -1
    for start in starts:
        if start <= reached:  # the first sequence already ran these tests: the second would stop where it did
            continue
        failed = np.flatnonzero(fails[start:])
        stop = start + int(failed[0]) if len(failed) else len(ends)
        tests += stop - start + (1 if len(failed) else 0)
        if stop > start:
            best = max(best, int(ends[stop - 1]))
        if start == 0 and len(failed):
            bound = clopper_pearson_upper(int(errors[stop]), int(accepted[stop]), level)
            first_stop = {
                "threshold": float(conf_sorted[ends[stop]]),
                "accepted": int(accepted[stop]),
                "errors": int(errors[stop]),
                "bound": float(bound),
            }
        reached = stop
    policy = {
        "kind": "threshold",
        "method": "ltt",
        "score": "max calibrated probability",
        "target_risk": target_risk,
        "delta": delta,
        "n_calib": m,
        "min_error_free_accepted": min_error_free_accepted(target_risk, delta, "ltt"),
        "tests": tests,
        "stopped_at": first_stop,  # where the sequence from the top stopped
    }
    if best < 0:
        policy.update(feasible=False, threshold=None, calib_coverage=0.0, calib_risk=None, risk_bound=None)
        return policy
    n_accepted, n_errors = best + 1, int(cum_errors[best])
    policy.update(
        feasible=True,
        threshold=float(conf_sorted[best]),
        calib_coverage=float(n_accepted / m),
        calib_risk=float(n_errors / n_accepted),
        risk_bound=float(clopper_pearson_upper(n_errors, n_accepted, level)),
    )
    return policy


def sgr_threshold(confidence: np.ndarray, correct: np.ndarray, target_risk: float, delta: float) -> dict:
    """Fit the SGR threshold. Returns the policy fields (threshold None when no tested t meets the target)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    m = len(confidence)
    order = np.argsort(-confidence, kind="stable")
    conf_sorted, errors_sorted = confidence[order], ~correct[order]
    cum_errors = np.cumsum(errors_sorted)
    tests = sgr_tests(m)
    delta_each = delta / tests

    def evaluate(n_accept: int) -> tuple[float, int, float]:
        threshold = conf_sorted[n_accept - 1]
        # Ties: everything with confidence >= threshold is accepted.
        n = int(np.searchsorted(-conf_sorted, -threshold, side="right"))
        errors = int(cum_errors[n - 1])
        return float(threshold), n, clopper_pearson_upper(errors, n, delta_each)

    # Algorithm 1 of the paper, index for index: confidences sorted ascending, z_min = 1, z_max = m,
    # z = ceil((z_min + z_max) / 2), theta = kappa(x_z); bound < target -> z_max = z (accept more), else
    # z_min = z. The paper outputs the last tested theta with its bound; when that one misses the target we
    # keep the last tested theta that met it (the most permissive such), and when none did, accept nothing.
    conf_ascending = conf_sorted[::-1]
    z_min, z_max = 1, m
    best = None
    trail = []
    for _ in range(tests):
        z = math.ceil((z_min + z_max) / 2)
        threshold, n, bound = evaluate(m - int(np.searchsorted(conf_ascending, conf_ascending[z - 1], side="left")))
        trail.append({"threshold": threshold, "accepted": n, "bound": bound})
        if bound < target_risk:
            best = (threshold, n, bound)
            z_max = z
        else:
            z_min = z
    policy = {
        "kind": "threshold",
        "method": "sgr",
        "score": "max calibrated probability",
        "target_risk": target_risk,
        "delta": delta,
        "n_calib": m,
        "min_error_free_accepted": min_error_free_accepted(target_risk, delta, "sgr", m),
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
    """The deployed decision from the calibrated confidence (max class probability).

    threshold / gate: accept when confidence >= t. SCRC: accept when the sample is selected (confidence >=
    the selection threshold) and its prediction set is a singleton. An infeasible policy accepts nothing.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    if not policy["feasible"]:
        return np.zeros(len(confidence), dtype=bool)
    if policy["kind"] == "scrc":
        return (confidence >= policy["selection_threshold"]) & (scrc_set_size(confidence, policy["set_threshold"]) == 1)
    return confidence >= policy["threshold"]


def _test_words(policy: dict) -> str:
    """How the threshold was certified, in words (the two methods differ in their multiplicity correction)."""
    if policy.get("method") == "ltt":
        return (
            f"Learn-then-Test: two fixed sequences (from the most confident images, and from where "
            f"{LTT_SECOND_START_ERRORS} errors are allowed), {policy['tests']} thresholds tested, each at delta / 2"
        )
    return f"SGR, Bonferroni over {policy['tests']} tests"


def guarantee_quantity(policy: dict) -> str:
    """What the policy's certificate bounds, in words (for threshold policies it is the answered-image error)."""
    if policy["kind"] == "scrc":
        return "prediction-set miss rate among selected images"
    return "error rate among accepted (answered) images"


def policy_outcomes(policy: dict, probs: np.ndarray, labels: np.ndarray) -> dict:
    """On labelled images: what a user reads (the error among *answered* images) beside the quantity the
    guarantee bounds, which for SCRC is not the same thing. Probabilities are calibrated, shape (N, 2)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence = probs.max(axis=1)
    answered = accept_mask(confidence, policy)
    wrong = probs.argmax(axis=1) != labels
    out = {
        "images": int(len(labels)),
        "answered": int(answered.sum()),
        "coverage": float(answered.mean()) if len(labels) else 0.0,
        "answered_error": float(wrong[answered].mean()) if answered.any() else None,
        "guarantee_quantity": guarantee_quantity(policy),
        "promised": policy["target_risk"] if policy["feasible"] else None,
    }
    if policy["kind"] == "scrc":
        selected = confidence >= policy["selection_threshold"] if policy["feasible"] else np.zeros(len(labels), bool)
        missed = probs[np.arange(len(labels)), labels] < (policy["set_threshold"] or 0.0)
        out["selected"] = int(selected.sum())
        out["guarantee_value"] = float(missed[selected].mean()) if selected.any() else None
    else:
        out["guarantee_value"] = out["answered_error"]
    return out


def pooled_outcomes(parts: list[dict]) -> dict:
    """`policy_outcomes` of several renders of one image set pooled: the mixture that draws each part equally
    often (every part scores all images once), e.g. deployment's mix of challenge levels."""
    images = sum(p["images"] for p in parts)
    answered = sum(p["answered"] for p in parts)
    wrong = sum((p["answered_error"] or 0.0) * p["answered"] for p in parts)
    pooled = {
        **parts[0],
        "images": images,
        "answered": answered,
        "coverage": answered / images if images else 0.0,
        "answered_error": wrong / answered if answered else None,
    }
    if "selected" in parts[0]:  # SCRC: the miss rate among selected images, pooled the same way
        selected = sum(p["selected"] for p in parts)
        missed = sum((p["guarantee_value"] or 0.0) * p["selected"] for p in parts)
        pooled.update(selected=selected, guarantee_value=missed / selected if selected else None)
    else:
        pooled["guarantee_value"] = pooled["answered_error"]
    return pooled


def guarantee_text(policy: dict) -> str:
    if policy["kind"] == "scrc":
        return scrc_guarantee_text(policy)
    drawn = policy.get("distribution", "images drawn like VAL_CALIB")
    if not policy["feasible"]:
        return (
            f"No threshold meets the target: selective accuracy >= {1 - policy['target_risk']:.1%} could not be "
            f"certified at confidence {1 - policy['delta']:.0%} from {policy['n_calib']} VAL_CALIB samples, for "
            f"{drawn} ({_test_words(policy)}; certifying it needs at least {policy['min_error_free_accepted']} "
            "accepted VAL_CALIB images without one error). The policy accepts nothing (every image goes to "
            "Stage 2). More VAL_CALIB data (data.split.val_calib), a stronger model or a looser "
            "calibration.target_risk can make it feasible."
        )
    return (
        f"Among accepted images, accuracy >= {1 - policy['target_risk']:.1%} with probability >= "
        f"{1 - policy['delta']:.0%} over the VAL_CALIB draw, for {drawn} ({_test_words(policy)}; "
        f"Clopper-Pearson bound {policy['risk_bound']:.3f} on the error), at VAL_CALIB coverage "
        f"{policy['calib_coverage']:.1%} (accept when calibrated confidence >= {policy['threshold']:.4f})."
    )


# --- SCRC-I: selective conformal risk control, calibration-only variant (Xu, Guo, Wei, arXiv 2512.12844) ---
#
# Stage 1 selects a sample when its confidence is >= tau, tau set on one part of VAL_CALIB so that a target
# share of samples is selected. Stage 2 controls the risk of prediction sets C(x) = {y : p_y(x) >= lambda} on
# the selected samples of the other part: the miss rate P(Y not in C(X) | selected) is monotone in lambda, so
# lambda is raised along a fixed sequence while the one-sided Clopper-Pearson bound at level delta stays <=
# target (Learn-then-Test fixed-sequence testing: no multiplicity correction is needed for a monotone risk).
# Splitting VAL_CALIB makes tau independent of the samples that certify lambda, so the selected samples of
# the second part are i.i.d. draws of the selected population and the bound holds with probability >= 1 -
# delta over the calibration draw. Deployment answers only selected singletons; everything else is deferred.


def scrc_set_size(confidence: np.ndarray, set_threshold: float) -> np.ndarray:
    """Size of {y : p_y >= lambda} for two classes whose larger probability is `confidence`."""
    confidence = np.asarray(confidence, dtype=np.float64)
    return (confidence >= set_threshold).astype(int) + ((1.0 - confidence) >= set_threshold).astype(int)


def scrc_policy(
    probs: np.ndarray,
    labels: np.ndarray,
    target_risk: float,
    delta: float,
    selection_rate: float,
    selection_fraction: float = 0.3,
    seed: int = 0,
) -> dict:
    """Fit SCRC-I on calibrated probabilities (N, 2) of VAL_CALIB. Infeasible: accepts nothing, says why."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    confidence = probs.max(axis=1)
    order = np.random.default_rng(seed).permutation(n)
    n_select = max(1, int(round(selection_fraction * n)))
    part_a, part_b = order[:n_select], order[n_select:]
    policy = {
        "kind": "scrc",
        "variant": "SCRC-I (calibration data only, split)",
        "score": "max calibrated probability",
        "target_risk": target_risk,
        "delta": delta,
        "target_selection_rate": selection_rate,
        "n_calib": n,
        "n_selection_part": int(len(part_a)),
        "n_risk_part": int(len(part_b)),
    }
    conf_a = np.sort(confidence[part_a])[::-1]
    k = max(1, math.ceil(selection_rate * len(conf_a)))
    tau = float(conf_a[k - 1])
    selected_b = part_b[confidence[part_b] >= tau]
    n_sel = int(len(selected_b))
    # p_y of the true label for each selected sample: the set misses y exactly when p_y < lambda.
    p_true = probs[selected_b, labels[selected_b]]
    best = None
    # Candidate lambdas: 0 (both labels always in the set), then every observed p_true value in increasing order.
    candidates = np.concatenate([[0.0], np.unique(p_true)]) if n_sel else np.array([0.0])
    p_sorted = np.sort(p_true)
    tested = 0
    for lam in candidates:
        misses = int(np.searchsorted(p_sorted, lam, side="left"))  # count of p_true < lam
        bound = clopper_pearson_upper(misses, n_sel, delta)
        tested += 1
        if bound > target_risk:
            break
        best = (float(lam), misses, bound)
    policy.update(selection_threshold=tau, calib_selected_rate=n_sel / max(1, len(part_b)), tests=tested)
    if best is None:
        policy.update(
            feasible=False,
            set_threshold=None,
            threshold=None,
            calib_coverage=0.0,
            calib_risk=None,
            risk_bound=None,
            calib_accepted_error=None,
        )
        return policy
    lam, misses, bound = best
    policy.update(feasible=True, set_threshold=lam, threshold=None, risk_bound=bound, calib_risk=misses / n_sel)
    accepted_b = accept_mask(confidence[part_b], policy)
    wrong = probs[part_b].argmax(axis=1) != labels[part_b]
    policy["calib_coverage"] = float(accepted_b.mean())
    policy["calib_singleton_rate"] = float((scrc_set_size(confidence[selected_b], lam) == 1).mean())
    policy["calib_accepted_error"] = float(wrong[accepted_b].mean()) if accepted_b.any() else None
    return policy


def scrc_guarantee_text(policy: dict) -> str:
    if not policy["feasible"]:
        return (
            f"No SCRC policy meets the target: a prediction-set miss rate <= {policy['target_risk']:.1%} among "
            f"selected images could not be certified at confidence {1 - policy['delta']:.0%} from "
            f"{policy['n_risk_part']} VAL_CALIB samples ({policy['calib_selected_rate']:.1%} selected), for "
            f"{policy.get('distribution', 'images drawn like VAL_CALIB')}. The policy "
            "accepts nothing (every image goes to Stage 2). More VAL_CALIB data, a higher "
            "calibration.scrc_selection_rate or a looser calibration.target_risk can make it feasible."
        )
    return (
        f"Among selected images (calibrated confidence >= {policy['selection_threshold']:.4f}, "
        f"{policy['calib_selected_rate']:.1%} of VAL_CALIB), the prediction set {{y : p_y >= "
        f"{policy['set_threshold']:.4f}}} misses the true label for at most {policy['target_risk']:.1%} of images, "
        f"with probability >= {1 - policy['delta']:.0%} over the VAL_CALIB draw, for "
        f"{policy.get('distribution', 'images drawn like VAL_CALIB')} (SCRC-I, Clopper-Pearson bound "
        f"{policy['risk_bound']:.3f}, fixed-sequence test). Stage 1 answers only selected singletons, and each "
        f"wrong answer is a miss, so wrong answers are at most {policy['target_risk']:.1%} of *selected* images: "
        f"among *answered* images the error can reach {policy['target_risk']:.1%} / (share of selected images "
        f"answered), about {_answered_bound(policy)} at VAL_CALIB's share of {policy['calib_singleton_rate']:.1%} "
        f"(an estimate; that share is not certified). It answered {policy['calib_coverage']:.1%} of VAL_CALIB "
        f"(the rest goes to Stage 2), with error {_rate(policy['calib_accepted_error'])} among those answers."
    )


def _answered_bound(policy: dict) -> str:
    share = policy["calib_singleton_rate"]
    return f"{min(1.0, policy['target_risk'] / share):.1%}" if share else "100%"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
