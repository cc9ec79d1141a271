"""Evaluate's deployment-style challenge, blessing, report and the `report` command."""

import copy
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import build_bundle
from PIL import Image

from streetvision.challenge import render_challenge
from streetvision.cli import main
from streetvision.config import load_config
from streetvision.contracts import Split
from streetvision.phases.evaluate import bless, run_evaluate
from streetvision.phases.result import PhasePaths


def _images(n=6, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_challenge_renders_deterministic_224px_jpegs_that_change_with_the_level():
    images = _images()
    plain = render_challenge(images, level=0)
    assert render_challenge(images, level=0) == plain
    decoded = [Image.open(io.BytesIO(data)) for data in plain]
    assert all(img.format == "JPEG" and img.size == (224, 224) for img in decoded)
    hard = render_challenge(images, level=3, seed=1)
    assert render_challenge(images, level=3, seed=1) == hard  # seeded: every bundle sees the same challenge
    assert render_challenge(images, level=3, seed=2) != hard
    assert hard != plain
    with pytest.raises(ValueError, match="challenge level 4"):
        render_challenge(images, level=4)


def test_blessing_checks_each_configured_bound_on_point_or_interval():
    cfg = load_config(["evaluation.blessing.min_mcc=0.5", "evaluation.blessing.max_ece=0.1"])
    point = {"accuracy": 0.9, "majority_rate": 0.8, "mcc": 0.6, "ece": 0.05, "auroc": 0.9, "coverage": 0.5}
    intervals = {"accuracy": (0.78, 0.95), "mcc": (0.4, 0.7), "ece": (0.03, 0.12)}
    verdict = bless(point, intervals, cfg.evaluation.blessing)
    assert verdict["passed"] and len(verdict["checks"]) == 4  # answers, above majority, mcc, ece
    cfg.evaluation.blessing.judge = "lower_bound"
    cautious = bless(point, intervals, cfg.evaluation.blessing)
    assert not cautious["passed"]
    # Coverage 0.5 > 0 answers; 0.78 <= 0.8, 0.4 < 0.5, 0.12 > 0.1.
    assert [c["passed"] for c in cautious["checks"]] == [True, False, False, False]


def test_default_blessing_fails_a_policy_that_answers_nothing_and_says_why():
    point = {"accuracy": 0.9, "majority_rate": 0.8, "coverage": 0.0}
    verdict = bless(point, {}, load_config([]).evaluation.blessing)
    assert not verdict["passed"]
    failed = [c for c in verdict["checks"] if not c["passed"]]
    assert len(failed) == 1 and "sends every image to Stage 2" in failed[0]["rule"]
    assert "evaluation.blessing.require_answers=false" in failed[0]["rule"]
    opted_out = bless(point, {}, load_config(["evaluation.blessing.require_answers=false"]).evaluation.blessing)
    assert opted_out["passed"]


def test_evaluate_writes_intervals_challenge_blessing_and_the_report_command_finds_it(trained, tmp_path, capsys):
    cfg, dirs, out = trained
    cfg = copy.deepcopy(cfg)  # the fixture's config is shared
    cfg.evaluation.blessing.min_accuracy = 1.01  # unreachable: the verdict must say FAILED
    build_bundle(cfg, dirs, out, tmp_path)
    paths = PhasePaths.of(
        "evaluate", bundle=tmp_path / "bundle", val_test=dirs[Split.VAL_TEST], evaluation=tmp_path / "eval"
    )
    result = run_evaluate(cfg, paths)
    assert result.parameters["blessed"] is False
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    low, high = saved["intervals"]["accuracy"]
    assert low <= saved["metrics"]["accuracy"] <= high
    assert [entry["level"] for entry in saved["challenge"]] == [0, 3]
    above_majority = saved["metrics"]["accuracy"] > saved["metrics"]["majority_rate"]
    answers = saved["answers"]
    assert [c["passed"] for c in saved["blessing"]["checks"]] == [answers["answered"] > 0, above_majority, False]
    # Errors among answered images, next to the guarantee's own quantity (the same one for a threshold policy).
    rows = pq.read_table(tmp_path / "eval" / "predictions.parquet").to_pydict()
    accept = np.array(rows["accept"])
    wrong = np.array(rows["prediction"]) != np.array(rows["label"])
    assert answers["answered"] == accept.sum()
    if accept.any():
        assert answers["answered_error"] == pytest.approx(wrong[accept].mean()) == answers["guarantee_value"]
    assert all("answers" in entry for entry in saved["challenge"])
    assert {t["metric"] for t in saved["seed_targets"]} >= {"accuracy", "ece", "auroc"}
    page = result.reports["report"]
    for text in (
        "Blessing: FAILED",
        "Challenge levels",
        "Against the seed",
        "bootstrap interval",
        "error among answered",
    ):
        assert text in page
    assert page.count("<img") == 5
    assert "accuracy_ci_low" in result.metrics and "challenge_level3_accuracy" in result.metrics
    assert result.classification is not None and len(result.classification.fpr) == len(result.classification.tpr)

    assert main(["report", str(tmp_path / "eval"), "--no-open"]) == 0
    assert str(tmp_path / "eval" / "report.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nowhere"), "--no-open"]) == 2
    assert "no evaluation report" in capsys.readouterr().err


def test_slices_by_source_tag_and_original_size_bucket():
    from types import SimpleNamespace

    from streetvision.phases.evaluate import _slice_masks

    sizes = np.array([[200, 150]] * 12 + [[1920, 1080]] * 8)
    test = SimpleNamespace(sources=["real"] * 5 + ["synthetic"] * 15, original_sizes=sizes)
    slices = dict(_slice_masks(test))
    assert list(slices) == ["source=real", "source=synthetic", "original size <= 256 px", "original size > 1280 px"]
    assert slices["source=real"].sum() == 5 and slices["original size > 1280 px"].sum() == 8
    # One source and one size bucket: nothing to compare, no slice rows.
    assert _slice_masks(SimpleNamespace(sources=["demo"] * 20, original_sizes=sizes[:12].repeat(2, 0)[:20])) == []
