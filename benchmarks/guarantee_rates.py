"""How often each policy breaks its promise over many calibration draws (the model of tests/test_guarantees.py).

    python benchmarks/guarantee_rates.py [--trials 1000] [--n-calib 100 300 1000]

Prints, per calibration size and policy, the share of draws whose true risk (closed form) exceeds the target,
and the mean coverage. A policy with a (1 - delta) guarantee must stay at or below delta; the plain empirical
threshold does not. LTT (fixed-sequence Learn-then-Test, the default) and SGR run on the same draws, so their
coverages compare directly.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_guarantees import _draw, empirical_threshold, true_scrc_risk, true_selective_risk  # noqa: E402

from streetvision.selective import fit_threshold, min_error_free_accepted, scrc_policy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--n-calib", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--target", type=float, default=0.05)
    parser.add_argument("--delta", type=float, default=0.1)
    args = parser.parse_args()
    print(f"target risk {args.target}, delta {args.delta}, {args.trials} draws per calibration size")
    for n_calib in args.n_calib:
        rng = np.random.default_rng(n_calib)
        rows: dict[str, list] = {
            "LTT threshold": [],
            "SGR threshold": [],
            "empirical threshold (broken)": [],
            "SCRC-I": [],
        }
        for trial in range(args.trials):
            probs, y = _draw(rng, n_calib)
            conf, correct = probs.max(axis=1), probs.argmax(axis=1) == y
            for name, method in (("LTT threshold", "ltt"), ("SGR threshold", "sgr")):
                policy = fit_threshold(conf, correct, args.target, args.delta, method)
                # An infeasible policy accepts nothing: it keeps its promise at coverage 0.
                risk = true_selective_risk(policy["threshold"]) if policy["feasible"] else 0.0
                rows[name].append((risk, policy["calib_coverage"], policy["feasible"]))
            t = empirical_threshold(conf, correct, args.target)
            if t is not None:
                rows["empirical threshold (broken)"].append((true_selective_risk(t), float((conf >= t).mean()), True))
            policy = scrc_policy(probs, y, args.target, args.delta, selection_rate=0.7, seed=trial)
            risk = true_scrc_risk(policy["selection_threshold"], policy["set_threshold"]) if policy["feasible"] else 0.0
            rows["SCRC-I"].append((risk, policy["calib_coverage"], policy["feasible"]))
        needs = {m: min_error_free_accepted(args.target, args.delta, m, n_calib) for m in ("ltt", "sgr")}
        print(f"\nn_calib {n_calib}: error-free accepted images needed: LTT {needs['ltt']}, SGR {needs['sgr']}")
        for name, values in rows.items():
            risks, coverage, feasible = np.array(values, dtype=float).T
            print(
                f"  {name:30s} feasible {int(feasible.sum()):5d}/{args.trials}  violations "
                f"{np.mean(risks > args.target):.3f}  mean true risk {risks.mean():.4f}  "
                f"mean calib coverage {coverage.mean():.3f}"
            )


if __name__ == "__main__":
    main()
