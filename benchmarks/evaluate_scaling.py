"""How evaluate's bootstrap intervals scale with the size of VAL_TEST, on synthetic logits.

    python benchmarks/evaluate_scaling.py [--sizes 2000 20000 200000] [--resamples 1000]

Prints, per n, the seconds (wall, and CPU: the comparable number on a busy machine) for one interval set
(every metric of INTERVAL_METRICS, as evaluate computes it for VAL_TEST, each challenge level and each slice)
with the config's defaults: BCa up to evaluation.bca_max_samples images, percentile above.
`--bca-max-samples` changes that size, e.g. to time BCa at 20k (its jackknife is n statistics of n - 1
images: the cost grows as n^2).
"""

import argparse
import time

import numpy as np
from scipy.special import expit

from streetvision.config.schema import EvaluationConfig
from streetvision.metrics.evaluation import bootstrap_intervals


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels at the data's ~80 % roadwork, logits that separate them (AUROC ~0.9), a 0.9-confidence policy."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.8).astype(np.int64)
    logits = rng.normal(1.8 * (2 * labels - 1), 1.5)
    prob = expit(logits)
    return labels, prob, np.maximum(prob, 1 - prob) >= 0.9


def main() -> None:
    defaults = EvaluationConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 20_000, 200_000])
    parser.add_argument("--resamples", type=int, default=defaults.bootstrap_resamples)
    parser.add_argument("--bca-max-samples", type=int, default=defaults.bca_max_samples)
    args = parser.parse_args()
    print(
        f"{args.resamples} resamples, {defaults.bootstrap_method} up to {args.bca_max_samples} images, percentile above"
    )
    for n in args.sizes:
        labels, prob, accept = synthetic(n)
        started, cpu_started = time.perf_counter(), time.process_time()
        intervals = bootstrap_intervals(
            labels,
            prob,
            accept,
            target_accuracy=0.95,
            ece_bins=defaults.ece_bins,
            resamples=args.resamples,
            confidence_level=defaults.confidence_level,
            method=defaults.bootstrap_method,
            seed=defaults.seed,
            bca_max_samples=args.bca_max_samples,
        )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        method = defaults.bootstrap_method if n <= args.bca_max_samples else "percentile"
        low, high = intervals["auroc"]
        print(
            f"n={n:>7}: {seconds:7.1f} s ({cpu:.1f} s CPU) for {len(intervals)} intervals ({method}); "
            f"AUROC in [{low:.4f}, {high:.4f}]"
        )


if __name__ == "__main__":
    main()
