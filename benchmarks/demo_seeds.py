"""The main job across seeds: `streetvision run` (what `make demo` runs) once per seed, and the spread of its numbers.

    python benchmarks/demo_seeds.py [--seeds 0 1 2] [--out DIR] [OVERRIDE ...]

Each run is the whole pipeline on the bundled demo data with the KFP local runner, with `training.seed` and
`data.split.seed` set to the seed (the demo scenes stay the same; the split, the initialisation and the batch
order change). Prints per seed: VAL_TEST accuracy, MCC, AUROC, the share of VAL_TEST the policy answers, the
share of VAL_TEST's deployment renders it answers and the error among those, whether the blessing passed, and
the run's wall-clock seconds; then the spread (max - min) of each column over the seeds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

COLUMNS = ("accuracy", "mcc", "auroc", "coverage", "deployment_mix_coverage", "deployment_mix_answered_error")


def run_seed(seed: int, overrides: list[str], out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "streetvision", "run", "--output-dir", str(out)]
    command += [f"training.seed={seed}", f"data.split.seed={seed}", *overrides]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    (run_json,) = out.glob("*/run.json")
    run = json.loads(run_json.read_text())
    row = {k: run["evaluation"].get(k) for k in COLUMNS}
    row.update(blessed=run["evaluation"]["blessed"], seconds=run["seconds"])
    return row


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", help="where the run folders go (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="sv-demo-seeds-"))
    rows = {}
    for seed in args.seeds:
        rows[seed] = run_seed(seed, args.overrides, root / f"seed{seed}")
        print(f"seed {seed}: " + ", ".join(f"{k} {_cell(v)}" for k, v in rows[seed].items()), flush=True)
    header = ("seed", *COLUMNS, "blessed", "seconds")
    print("\n| " + " | ".join(h.replace("_", " ") for h in header) + " |")
    print("|---" * len(header) + "|")
    for seed, row in rows.items():
        print(f"| {seed} | " + " | ".join(_cell(row[k]) for k in header[1:]) + " |")
    spread = []
    for k in COLUMNS:
        values = [row[k] for row in rows.values() if row[k] is not None]
        spread.append(_cell(max(values) - min(values)) if values else "n/a")
    print("| spread (max - min) | " + " | ".join(spread) + " | | |")


if __name__ == "__main__":
    main()
