"""How often each policy breaks its promise over many calibration draws (the model of tests/test_guarantees.py).

    python benchmarks/guarantee_rates.py [--trials 300] [--n-calib 1000]

Prints, per policy, the share of draws whose true risk (closed form) exceeds the target, and the mean coverage.
A policy with a (1 - delta) guarantee must stay at or below delta; the plain empirical threshold does not.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_guarantees import _draw, empirical_threshold, true_scrc_risk, true_selective_risk  # noqa: E402

from streetvision.selective import scrc_policy, sgr_threshold  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--n-calib", type=int, default=1000)
    parser.add_argument("--target", type=float, default=0.05)
    parser.add_argument("--delta", type=float, default=0.1)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = {"SGR threshold": [], "empirical threshold (broken)": [], "SCRC-I": []}
    for trial in range(args.trials):
        probs, y = _draw(rng, args.n_calib)
        conf, correct = probs.max(axis=1), probs.argmax(axis=1) == y
        policy = sgr_threshold(conf, correct, args.target, args.delta)
        if policy["feasible"]:
            rows["SGR threshold"].append((true_selective_risk(policy["threshold"]), policy["calib_coverage"]))
        t = empirical_threshold(conf, correct, args.target)
        if t is not None:
            rows["empirical threshold (broken)"].append((true_selective_risk(t), float((conf >= t).mean())))
        policy = scrc_policy(probs, y, args.target, args.delta, selection_rate=0.7, seed=trial)
        if policy["feasible"]:
            risk = true_scrc_risk(policy["selection_threshold"], policy["set_threshold"])
            rows["SCRC-I"].append((risk, policy["calib_coverage"]))
    print(f"target risk {args.target}, delta {args.delta}, {args.trials} draws of {args.n_calib} calibration samples")
    for name, values in rows.items():
        risks, coverage = np.array(values).T
        print(
            f"{name:30s} feasible {len(values):4d}/{args.trials}  violations {np.mean(risks > args.target):.3f}  "
            f"mean true risk {risks.mean():.4f}  mean calib coverage {coverage.mean():.3f}"
        )


if __name__ == "__main__":
    main()
