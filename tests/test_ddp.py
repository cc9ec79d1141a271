"""Multi-process (DDP) training on CPU with the gloo backend: 2 processes match 1 process."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY, phase1_paths, phase3_paths
from safetensors.torch import load_file
from test_explora import SMALL, phase4_paths

from streetvision.config import ConfigError, load_config
from streetvision.contracts.splits import Split
from streetvision.explora.train import CHECKPOINT_FILE
from streetvision.phases.phase1 import run_phase1
from streetvision.phases.phase3 import run_phase3
from streetvision.phases.phase4 import BACKBONE_FILE, HISTORY_FILE, run_phase4

# Augmentation and dropout draw different random numbers in each process, so they are off here: then the
# 2-process run computes the same gradients as the 1-process run up to float summation order. Tolerance:
# weights within 1e-4 (lr is 1e-3 per step) and logits within 1e-3.
SAME_MATH = ["training.augment.strength=0", "model.head_dropout=0.0", "training.multiview=single", "training.epochs=2"]


def _phase1(ingested, root, overrides):
    cfg = load_config(TINY + SAME_MATH + overrides)
    _, dirs, _, _ = ingested
    paths = phase1_paths(dirs, root)
    meta = run_phase1(cfg, paths).outputs
    return meta, [paths.output(name) for name in ("checkpoint", "val_select_logits", "val_calib_logits")]


def test_two_gloo_processes_match_one_process(ingested, tmp_path):
    one_meta, one = _phase1(ingested, tmp_path / "one", [])
    two_meta, two = _phase1(ingested, tmp_path / "two", ["training.num_processes=2", "training.device=cpu"])
    assert two_meta["checkpoint"]["summary"]["processes"] == 2
    assert one_meta["checkpoint"]["summary"]["processes"] == 1
    assert (two[0] / "_streetvision.json").is_file()

    a, b = load_file(str(one[0] / "model.safetensors")), load_file(str(two[0] / "model.safetensors"))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-4, f"weights differ by up to {worst}"
    tables = [pq.read_table(d / "predictions.parquet") for d in (one[2], two[2])]
    logits = [np.stack([t.column("logit_0").to_numpy(), t.column("logit_1").to_numpy()], 1) for t in tables]
    assert np.abs(logits[0] - logits[1]).max() <= 1e-3
    history = [json.loads((d[0] / "training_history.json").read_text()) for d in (one, two)]
    assert [round(r["train_loss"], 4) for r in history[0]] == [round(r["train_loss"], 4) for r in history[1]]
    assert a.keys() == b.keys()


def test_phase3_in_two_gloo_processes_matches_one_process(ingested, tmp_path):
    """The Gatekeeper tuning launches its workers as phase 1 does (training.num_processes)."""
    _, dirs, _, _ = ingested
    _, (checkpoint, _, _) = _phase1(ingested, tmp_path / "phase1", ["training.epochs=1"])

    def tune(root, overrides):
        cfg = load_config(TINY + SAME_MATH + ["gate.epochs=1", "gate.batch_size=32"] + overrides)
        return run_phase3(cfg, phase3_paths(dirs, checkpoint, root)).outputs

    one = tune(tmp_path / "one", [])
    two = tune(tmp_path / "two", ["training.num_processes=2", "training.device=cpu"])
    assert one["gate_checkpoint"]["summary"]["processes"] == 1
    assert two["gate_checkpoint"]["summary"]["processes"] == 2
    a = load_file(str(tmp_path / "one" / "gate_checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "gate_checkpoint" / "model.safetensors"))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-4, f"weights differ by up to {worst}"
    policies = [json.loads((tmp_path / run / "gate" / "policy.json").read_text()) for run in ("one", "two")]
    assert policies[0]["threshold"] == pytest.approx(policies[1]["threshold"], abs=1e-3)


def test_phase4_in_two_gloo_processes_matches_one_process(ingested, tmp_path):
    """ExPLoRA splits its global batch over the processes; every process draws the same views and masks, and the
    teacher's centres follow the global batch, so 2 processes train the same backbone as 1. KoLeo is off: its
    nearest neighbours are searched within each process's share, as in DINOv2."""
    _, dirs, _, _ = ingested

    def adapt(root, state, overrides):
        steps = ["explora.steps=3", "explora.koleo=false", "explora.checkpoint_every=2"]
        cfg = load_config(SMALL + steps + [f"training.resume_dir={state}"] + overrides)
        paths = phase4_paths(dirs[Split.TRAIN], dirs[Split.VAL_SELECT], root / "backbone")
        return run_phase4(cfg, paths).outputs["backbone"], root / "backbone"

    two_processes = ["training.num_processes=2", "training.device=cpu"]
    one_meta, one = adapt(tmp_path / "one", tmp_path / "one_state", [])
    two_meta, two = adapt(tmp_path / "two", tmp_path / "two_state", two_processes)
    assert one_meta["summary"]["processes"] == 1 and two_meta["summary"]["processes"] == 2
    assert (two / "_streetvision.json").is_file()
    a, b = load_file(str(one / BACKBONE_FILE)), load_file(str(two / BACKBONE_FILE))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-4, f"weights differ by up to {worst}"
    history = [json.loads((d / HISTORY_FILE).read_text()) for d in (one, two)]
    assert [h["step"] for h in history[1]] == [0, 1, 2]
    for key in ("loss", "dino", "ibot"):
        assert [h[key] for h in history[0]] == pytest.approx([h[key] for h in history[1]], abs=1e-4), key
    # The saved training states agree too: the teacher (an EMA of the student) and both centres.
    saved = (tmp_path / "one_state" / CHECKPOINT_FILE, tmp_path / "two_state" / CHECKPOINT_FILE)
    states = [torch.load(path, weights_only=True)["recipe"] for path in saved]
    for name in ("dino_center", "ibot_center"):
        torch.testing.assert_close(states[0][name], states[1][name], rtol=0, atol=1e-5)
    for name, weights in states[0]["teacher"].items():
        torch.testing.assert_close(weights, states[1]["teacher"][name], rtol=0, atol=1e-4)

    # A retried 2-process task resumes from its saved state (here: the finished run, so it trains no more).
    again_meta, again = adapt(tmp_path / "again", tmp_path / "two_state", two_processes)
    assert two_meta["summary"]["images_per_second"] and again_meta["summary"]["images_per_second"] is None
    assert json.loads((again / HISTORY_FILE).read_text()) == history[1]
    c = load_file(str(again / BACKBONE_FILE))
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_phase4_refuses_a_global_batch_too_small_for_its_processes(ingested, tmp_path):
    _, dirs, _, _ = ingested
    cfg = load_config(SMALL + ["training.num_processes=2", "training.device=cpu", "explora.batch_size=3"])
    with pytest.raises(ConfigError, match="explora.batch_size=3 is the global batch: 2 processes need at least 4"):
        run_phase4(cfg, phase4_paths(dirs[Split.TRAIN], dirs[Split.VAL_SELECT], tmp_path / "backbone"))
    assert not (tmp_path / "backbone").exists()  # refused before any output was started
