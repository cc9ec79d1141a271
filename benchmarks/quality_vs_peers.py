"""Quality on small real images: the pipeline's default recipe against simple peers, on the same split.

    python benchmarks/quality_vs_peers.py [--seeds 0 1 2] [--out DIR] [--positive-digits 0 1 2] [OVERRIDE ...]

Data: scikit-learn's bundled `load_digits` (1,797 real 8x8 scans of handwritten digits, no download), upscaled
(bicubic) to 96 px RGB JPEGs in a folder source; label 1 ("roadwork") = digits {0, 1, 2} (537 images, 29.9 %),
label 0 = the rest. Per seed (`data.split.seed` and `training.seed`), the pipeline runs from that folder with the
default config plus the overrides given: ingest -> phase 1 -> phase 2 -> phase 6 -> evaluate, in-process, twice
on the same split: as configured (by default the calibrator and policy are fitted on VAL_CALIB's deployment
renders, challenge levels 0-3), and with `evaluation.challenge_levels=[]` (fitted on plain VAL_CALIB, as the
peers are).

Peers, fitted on the same TRAIN split of that run (the same decoded cache), calibrated and given a policy on the
same VAL_CALIB with the pipeline's own calibrator and threshold policy, scored on the same VAL_TEST:
- LogisticRegression and MLPClassifier(128) (scikit-learn) on 16x16 grey downsampled pixels, standardised;
- the same timm model as `model.*`, trained plainly with timm's factories at `timm/train.py`'s defaults (SGD
  momentum 0.9, lr 0.1 x batch/256, weight decay 2e-5, cosine schedule with 5 warm-up epochs from 1e-5),
  cross entropy, no augmentation, the last epoch's weights, for `training.epochs` epochs.

Columns: accuracy, MCC, AUROC, ECE (calibrated probabilities, 15 bins), certified coverage on (plain) VAL_TEST at
the policy fitted at the config's target (calibration.target_risk, delta), the share of VAL_TEST's deployment
renders answered where the policy was certified for them; mean ± standard deviation over seeds, and seconds
(the pipeline's phase 1; a peer's fit).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from streetvision.calibration import calibrated_probabilities
from streetvision.config import load_config
from streetvision.contracts import Role, Split
from streetvision.data.shards import load_split
from streetvision.metrics.classification import classification_metrics
from streetvision.models import create_model, normalization, predict_logits, to_model_input
from streetvision.phases.evaluate import run_evaluate
from streetvision.phases.ingest import run_ingest
from streetvision.phases.phase1 import run_phase1
from streetvision.phases.phase2 import calibration_inputs, fit_threshold_policy, run_phase2
from streetvision.phases.phase6 import run_phase6
from streetvision.phases.result import PhasePaths
from streetvision.selective import accept_mask
from streetvision.signing import with_own_signing_key

POSITIVE_DIGITS = (0, 1, 2)
COLUMNS = ("accuracy", "mcc", "auroc", "ece", "coverage")


def write_digits_folder(root: Path, size: int = 96, positive: tuple[int, ...] = POSITIVE_DIGITS) -> Path:
    """load_digits as a folder source: <root>/<label name>/<index>.jpg."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for name in ("no_roadwork", "roadwork"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (pixels, digit) in enumerate(zip(digits.images, digits.target)):
        grey = Image.fromarray(np.uint8(np.round(pixels * 255.0 / 16.0))).resize((size, size), Image.BICUBIC)
        label = "roadwork" if digit in positive else "no_roadwork"
        grey.convert("RGB").save(root / label / f"{i:04d}.jpg", quality=95)
    return root


# What each peer does with each split, as the pipeline's phases do.
_ROLES = {Split.TRAIN: Role.FIT, Split.VAL_CALIB: Role.POLICY_FITTING, Split.VAL_TEST: Role.FINAL_EVALUATION}


def _load(path: Path, split: Split):
    return load_split(path, split=split, role=_ROLES[split], phase="benchmark", input_name=split.value)


def _pixels(images: np.ndarray, side: int = 16) -> np.ndarray:
    """uint8 NHWC -> grey, area-downsampled to side x side, in [0, 1]."""
    grey = np.asarray(images, dtype=np.float32).mean(axis=3) / 255.0
    n, s, _ = grey.shape
    k = s // side
    return grey[:, : k * side, : k * side].reshape(n, side, k, side, k).mean(axis=(2, 4)).reshape(n, -1)


def _as_logits(p1: np.ndarray) -> np.ndarray:
    p1 = np.clip(p1, 1e-6, 1 - 1e-6)
    return np.stack([np.zeros_like(p1), np.log(p1 / (1 - p1))], axis=1)


def score_peer(cfg, calib_logits, calib_labels, test_logits, test_labels) -> dict:
    """The pipeline's calibrator and threshold policy fitted on the peer's VAL_CALIB logits; VAL_TEST metrics."""
    inputs = calibration_inputs(cfg, calib_logits, calib_labels, None, "benchmark peer")
    calibrator, policy = fit_threshold_policy(cfg, inputs, "peer")
    probs = calibrated_probabilities(calibrator, test_logits)
    metrics = classification_metrics(test_labels, probs, cfg.evaluation.ece_bins)
    metrics["coverage"] = float(accept_mask(probs.max(axis=1), policy).mean())
    return metrics


def timm_plain(cfg, train, calib, test) -> tuple[np.ndarray, np.ndarray]:
    """The same architecture trained with timm's optimizer and scheduler factories at timm/train.py's defaults."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    torch.manual_seed(cfg.training.seed)
    model = create_model(cfg.model)
    mean, std = normalization(model)
    mean_t, std_t = torch.tensor(mean), torch.tensor(std)
    batch, epochs = cfg.training.batch_size, cfg.training.epochs
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.1 * batch / 256, weight_decay=2e-5, momentum=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=epochs, warmup_epochs=5, warmup_lr=1e-5)
    images, labels = np.asarray(train.images), torch.from_numpy(train.labels)
    rng = np.random.default_rng(cfg.training.seed)
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(labels))
        for start in range(0, len(order), batch):
            idx = np.sort(order[start : start + batch])
            x = to_model_input(torch.from_numpy(images[idx]), mean_t, std_t)
            loss = torch.nn.functional.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step(epoch + 1)
    return (
        predict_logits(model, calib.images, mean, std, cfg.evaluation.batch_size),
        predict_logits(model, test.images, mean, std, cfg.evaluation.batch_size),
    )


def run_pipeline(cfg, dirs: dict[Split, Path], root: Path) -> dict:
    """Phase 1 -> phase 2 -> phase 6 -> evaluate on an ingested split; the VAL_TEST scalars and phase-1 seconds."""
    splits = {s.value: p for s, p in dirs.items()}
    started = time.time()
    ckpt, sel, cal = root / "checkpoint", root / "val_select_logits", root / "val_calib_logits"
    fit_on = {k: splits[k] for k in ("train", "val_select", "val_calib")}
    run_phase1(cfg, PhasePaths.of("phase1", **fit_on, checkpoint=ckpt, val_select_logits=sel, val_calib_logits=cal))
    seconds = time.time() - started
    run_phase2(cfg, PhasePaths.of("phase2", val_calib_logits=cal, policy=root / "policy"))
    export = dict(checkpoint=ckpt, policy=root / "policy", val_calib=dirs[Split.VAL_CALIB], bundle=root / "bundle")
    run_phase6(cfg, PhasePaths.of("phase6", **export))
    evaluation = PhasePaths.of(
        "evaluate", bundle=root / "bundle", val_test=dirs[Split.VAL_TEST], evaluation=root / "ev"
    )
    return run_evaluate(cfg, evaluation).metrics | {"seconds": seconds}


def run_seed(folder: Path, seed: int, overrides: list[str], root: Path) -> dict[str, dict]:
    base = ["data.source=folder", f"data.path={folder}", f"data.split.seed={seed}", f"training.seed={seed}"]
    # The default config fits calibrator and policy on VAL_CALIB's deployment renders (challenge levels 0-3);
    # peers are scored on plain images, so the pipeline is also run fitted on plain VAL_CALIB, like them.
    cfg = with_own_signing_key(load_config(base + overrides), root / "signing")
    plain = with_own_signing_key(load_config(base + ["evaluation.challenge_levels=[]"] + overrides), root / "signing")
    dirs = {s: root / s.value for s in Split}
    run_ingest(cfg, PhasePaths.of("ingest", **{s.value: p for s, p in dirs.items()}, data_report=root / "report"))
    rows = {}
    for name, config, folder in (
        ("pipeline, plain fit", plain, "plain"),
        ("pipeline (default: deployment fit)", cfg, "default"),
    ):
        scalars = run_pipeline(config, dirs, root / folder)
        rows[name] = {k: scalars[k] for k in COLUMNS} | {
            "seconds": scalars["seconds"],
            "deployment_coverage": scalars.get("deployment_mix_coverage", float("nan")),
        }
    cfg = plain  # the peers' calibrator and policy: fitted on plain VAL_CALIB

    train, calib, test = (_load(dirs[s], s) for s in (Split.TRAIN, Split.VAL_CALIB, Split.VAL_TEST))
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_calib, x_test = (_pixels(np.asarray(d.images)) for d in (train, calib, test))
    peers = {
        "LogisticRegression": LogisticRegression(max_iter=5000),
        "MLPClassifier(128)": MLPClassifier((128,), max_iter=1000, random_state=seed),
    }
    for name, estimator in peers.items():
        started = time.time()
        fitted = make_pipeline(StandardScaler(), estimator).fit(x_train, train.labels)
        seconds = time.time() - started
        calib_logits, test_logits = (_as_logits(fitted.predict_proba(x)[:, 1]) for x in (x_calib, x_test))
        rows[name] = score_peer(cfg, calib_logits, calib.labels, test_logits, test.labels) | {
            "seconds": seconds,
            "deployment_coverage": float("nan"),
        }
    started = time.time()
    calib_logits, test_logits = timm_plain(cfg, train, calib, test)
    seconds = time.time() - started
    rows[f"timm plain ({cfg.model.name})"] = score_peer(cfg, calib_logits, calib.labels, test_logits, test.labels) | {
        "seconds": seconds,
        "deployment_coverage": float("nan"),
    }
    split_sizes = {s.value: json.loads((dirs[s] / "_streetvision.json").read_text())["count"] for s in Split}
    print(f"seed {seed}: splits {split_sizes}", flush=True)
    for name, row in rows.items():
        line = " ".join(f"{k} {row[k]:.3f}" for k in (*COLUMNS, "deployment_coverage") if np.isfinite(row[k]))
        print(f"  {name:40s} {line} ({row['seconds']:.0f} s)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", help="working folder (default: a temporary one)")
    parser.add_argument(
        "--positive-digits",
        nargs="+",
        type=int,
        default=list(POSITIVE_DIGITS),
        help="the digits labelled 1 (default 0 1 2; e.g. 3 5 8 for a harder task)",
    )
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="sv-quality-"))
    folder = write_digits_folder(root / "digits", positive=tuple(args.positive_digits))
    per_seed = [run_seed(folder, seed, args.overrides, root / f"seed{seed}") for seed in args.seeds]
    print(f"\nload_digits, label 1 = digits {tuple(args.positive_digits)}; mean ± std over seeds {args.seeds}")
    columns = (*COLUMNS, "deployment_coverage", "seconds")
    print("| on VAL_TEST | " + " | ".join(c.replace("_", " ") for c in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name in per_seed[0]:
        cells = []
        for column in columns:
            values = np.array([rows[name][column] for rows in per_seed])
            if not np.isfinite(values).all():
                cells.append("–")
            elif column == "seconds":
                cells.append(f"{values.mean():.0f}")
            else:
                cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    (root / "results.json").write_text(json.dumps(per_seed, indent=2))


if __name__ == "__main__":
    main()
