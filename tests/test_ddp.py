"""Multi-process (DDP) training on CPU with the gloo backend: 2 processes match 1 process."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY, phase1_paths, phase3_paths
from safetensors.torch import load_file

from streetvision.config import load_config
from streetvision.phases.phase1 import run_phase1
from streetvision.phases.phase3 import run_phase3

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
