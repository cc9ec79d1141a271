"""Compare the three selective policies on one trained model: the VAL_CALIB guarantee each certifies and what
it does on VAL_TEST (through the bundle's own inference path, as `evaluate` does).

    python benchmarks/policies_on_demo.py [OVERRIDE ...] [--out DIR]

Runs ingest and phase 1 once (default config: the bundled demo), then phase 2 (threshold), phase 3 (gate) and
phase 5 (SCRC), a bundle from each, and `evaluate` on each bundle. Prints one line per policy. With --out
pointing at an earlier run's folder, its ingest and phase 1 are reused (so policy settings can be varied
cheaply; the data and model overrides must then be the same as before).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from streetvision_demo import with_demo_data

from streetvision.config import load_config
from streetvision.contracts import Split
from streetvision.contracts.metadata import METADATA_FILE
from streetvision.phases.evaluate import run_evaluate
from streetvision.phases.ingest import run_ingest
from streetvision.phases.phase1 import run_phase1
from streetvision.phases.phase2 import run_phase2
from streetvision.phases.phase3 import run_phase3
from streetvision.phases.phase5 import run_phase5
from streetvision.phases.phase6 import run_phase6
from streetvision.phases.result import PhasePaths
from streetvision.signing import with_own_signing_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--out", help="working folder (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="sv-policies-"))
    cfg = with_demo_data(load_config(args.overrides), root / "demo-cache")  # as `streetvision run` renders it
    cfg = with_own_signing_key(cfg, root / "signing")  # phase 6 signs, evaluate verifies
    dirs = {s: root / s.value for s in Split}
    ckpt, sel, cal = root / "checkpoint", root / "val_select_logits", root / "val_calib_logits"
    splits = {s.value: d for s, d in dirs.items()}
    if not (cal / METADATA_FILE).is_file():
        run_ingest(cfg, PhasePaths.of("ingest", **splits, data_report=root / "report"))
        started = time.time()
        fit_on = {k: splits[k] for k in ("train", "val_select", "val_calib")}
        run_phase1(cfg, PhasePaths.of("phase1", **fit_on, checkpoint=ckpt, val_select_logits=sel, val_calib_logits=cal))
        print(f"phase1: {time.time() - started:.0f} s")
    root = root / f"policies_risk{cfg.calibration.target_risk}_delta{cfg.calibration.delta}"
    fits = {
        "threshold": lambda: (
            run_phase2(cfg, PhasePaths.of("phase2", val_calib_logits=cal, policy=root / "threshold")),
            ckpt,
        ),
        "scrc": lambda: (run_phase5(cfg, PhasePaths.of("phase5", val_calib_logits=cal, policy=root / "scrc")), ckpt),
        "gate": lambda: (
            run_phase3(
                cfg,
                PhasePaths.of(
                    "phase3",
                    checkpoint=ckpt,
                    train=dirs[Split.TRAIN],
                    val_select=dirs[Split.VAL_SELECT],
                    val_calib=dirs[Split.VAL_CALIB],
                    gate_checkpoint=root / "gate_checkpoint",
                    policy=root / "gate",
                ),
            ),
            root / "gate_checkpoint",
        ),
    }
    rows = []
    for kind, fit in fits.items():
        started = time.time()
        _, weights = fit()
        seconds = time.time() - started
        bundle = root / f"bundle_{kind}"
        export = {"checkpoint": weights, "policy": root / kind, "val_calib": dirs[Split.VAL_CALIB], "bundle": bundle}
        run_phase6(cfg, PhasePaths.of("phase6", **export))
        evaluation = root / f"evaluation_{kind}"
        result = run_evaluate(
            cfg, PhasePaths.of("evaluate", bundle=bundle, val_test=dirs[Split.VAL_TEST], evaluation=evaluation)
        )
        policy = json.loads((root / kind / "policy.json").read_text())
        m = result.metrics
        rows.append((kind, policy, m, seconds))
    print(f"\ntarget: selective risk <= {cfg.calibration.target_risk} with probability >= {1 - cfg.calibration.delta}")
    for kind, policy, m, seconds in rows:
        print(
            f"{kind:9s} calibrator={policy['calibrator']:11s} feasible={policy['feasible']!s:5s} "
            f"VAL_CALIB coverage={policy['calib_coverage']:.3f} bound={policy['risk_bound']} | "
            f"VAL_TEST coverage={m['coverage']:.3f} selective_accuracy={m.get('selective_accuracy', float('nan')):.3f} "
            f"accuracy={m['accuracy']:.3f} aurc={m['aurc']:.4f} | fit {seconds:.1f} s"
        )
        print(f"          {policy['guarantee']}")


if __name__ == "__main__":
    main()
