"""The training engine shared by phases 1, 3 and 4: its schedule and parameter groups, and phase 3 running in it
(gradient clipping, EMA, resume after an interruption)."""

import json
import math

import pytest
import torch
from conftest import TINY, phase3_paths
from safetensors.torch import load_file

from streetvision.config import load_config
from streetvision.contracts import CheckpointError
from streetvision.models import create_model
from streetvision.phases import phase3
from streetvision.training import engine


def test_warmup_cosine_rises_linearly_then_falls_to_its_end_value():
    values = [engine.warmup_cosine(step, 10, 2, start=2.0, end=0.5) for step in range(12)]
    assert values[:2] == [1.0, 2.0]  # (step + 1) / warmup of the peak
    assert all(a >= b for a, b in zip(values[1:], values[2:]))  # then never rises
    assert values[10] == values[11] == 0.5  # and stays at the end value past the total
    assert math.isclose(values[6], 0.5 + 1.5 * 0.5)  # half way through the cosine: the middle


def test_param_groups_exempt_norms_biases_and_tokens_from_weight_decay():
    model = create_model(load_config(TINY + ["model.depth=2"]).model)
    groups = engine.param_groups(model, lr=0.01, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed and all(not n.endswith(".bias") and "norm" not in n for n in decayed)
    assert {"cls_token", "pos_embed"}.isdisjoint(decayed)
    assert sum(len(g["params"]) for g in groups) == len(names)
    layered = engine.param_groups(model, 0.01, 0.05, layer_decay=0.5, split_head=True)
    assert {round(g["lr"], 6) for g in layered} == {0.00125, 0.0025, 0.005, 0.01}
    head = {id(p) for p in model.get_classifier().parameters()}
    assert all(g["is_head"] == all(id(p) in head for p in g["params"]) for g in layered)


def _phase3(trained, root, overrides, monkeypatch=None):
    """Runs phase 3; returns its gate checkpoint folder and, with `monkeypatch`, the weights the engine left after
    the last step: {"live": the trained module, "eval": what selection scored (the EMA when it is on)}."""
    _, dirs, out = trained
    cfg = load_config(TINY + ["gate.epochs=2", "gate.batch_size=32", "gate.lr=0.01"] + overrides)
    recipes = []
    if monkeypatch is not None:
        real_fit = phase3.fit

        def fit(recipe, *args):
            result = real_fit(recipe, *args)
            recipes.append({"live": engine.cpu_state(recipe.model), "eval": recipe.weights()})
            return result

        monkeypatch.setattr(phase3, "fit", fit)
    phase3.run_phase3(cfg, phase3_paths(dirs, out["checkpoint"], root))
    return root / "gate_checkpoint", (recipes[-1] if recipes else None)


def test_phase3_clips_gradients_with_training_grad_clip_norm(trained, tmp_path, monkeypatch):
    norms = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        norms.append((max_norm, float(real(params, max_norm, *args, **kwargs))))
        # The norm after clipping is at most max_norm.
        assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])) <= max_norm * (1 + 1e-5)
        return torch.tensor(norms[-1][1])

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    _phase3(trained, tmp_path / "clipped", ["training.grad_clip_norm=0.01"])
    assert len(norms) == 6  # 88 TRAIN images in batches of 32: 3 steps per epoch, 2 epochs
    assert all(limit == 0.01 for limit, _ in norms) and any(before > 0.01 for _, before in norms)
    norms.clear()
    _phase3(trained, tmp_path / "unclipped", ["training.grad_clip_norm=0"])
    assert norms == []


def test_phase3_evaluates_the_ema_weights_when_training_ema_decay_is_set(trained, tmp_path, monkeypatch):
    _, plain = _phase3(trained, tmp_path / "live", [], monkeypatch)
    _, averaged = _phase3(trained, tmp_path / "ema", ["training.ema_decay=0.5"], monkeypatch)
    assert all(torch.equal(v, plain["eval"][k]) for k, v in plain["live"].items())
    assert any(not torch.equal(v, averaged["eval"][k]) for k, v in averaged["live"].items())


def test_phase3_interrupted_then_resumed_equals_the_uninterrupted_run(trained, tmp_path, monkeypatch):
    resumable = [f"training.resume_dir={tmp_path / 'resume'}", "training.checkpoint_every_minutes=0"]
    plain_dir, plain = _phase3(trained, tmp_path / "plain", [], monkeypatch)

    calls = {"n": 0}
    real_step = phase3.GateRecipe.step

    def preempted(self, index):
        if calls["n"] == 4:  # epoch 2, before its 2nd step
            raise KeyboardInterrupt("node preempted")
        calls["n"] += 1
        return real_step(self, index)

    monkeypatch.setattr(phase3.GateRecipe, "step", preempted)
    with pytest.raises(KeyboardInterrupt):
        _phase3(trained, tmp_path / "resumed", resumable)
    [state_dir] = (tmp_path / "resume").iterdir()
    assert state_dir.name.startswith("phase3-")
    state = torch.load(state_dir / phase3.STATE_FILE, weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 4)

    monkeypatch.setattr(phase3.GateRecipe, "step", real_step)
    logs = []
    # The library logger does not propagate to the root logger (its one console handler prints), so listen on it.
    monkeypatch.setattr(engine.logger, "info", lambda msg, *args, **kwargs: logs.append(msg % args if args else msg))
    resumed_dir, resumed = _phase3(trained, tmp_path / "resumed", resumable, monkeypatch)
    assert any("resuming from" in line and "epoch 2, step 1 of 3" in line for line in logs), logs

    # The tuned weights after the last step, and the selected ones that were saved.
    a, b = plain["live"], resumed["live"]
    start = load_file(str(trained[2]["checkpoint"] / "model.safetensors"))
    assert any(not torch.equal(start[k], a[k]) for k in start), "the gate did not train: nothing to compare"
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed gate weights differ from the uninterrupted run"
    saved = [load_file(str(d / "model.safetensors")) for d in (plain_dir, resumed_dir)]
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])
    history = [json.loads((d / "gate_history.json").read_text()) for d in (plain_dir, resumed_dir)]
    assert history[0] == history[1] and [row["epoch"] for row in history[0]] == [0, 1, 2]


class _RunsCode:
    """A crafted training state: unpickling it calls exec, which writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_a_crafted_training_state_is_refused_and_runs_nothing(tmp_path):
    store = engine.Checkpoints(str(tmp_path / "shared"), "train_state.pt", "phase1")
    marker = tmp_path / "marker"
    store.save({"epoch": 1, "payload": torch.zeros(2)})  # a real state loads ...
    assert store.load()["epoch"] == 1
    crafted = tmp_path / "crafted.pt"
    torch.save({"epoch": 1, "payload": _RunsCode(marker)}, crafted)
    torch.load(crafted, weights_only=False)  # the file does run code with the unrestricted unpickler
    assert marker.read_text() == "ran"
    marker.unlink()
    (tmp_path / "shared" / "train_state.pt").write_bytes(crafted.read_bytes())
    with pytest.raises(CheckpointError, match="refused because loading them could run code") as info:
        store.load()
    assert "train_state.pt" in str(info.value) and "delete" in info.value.fix
    assert not marker.exists()


def test_training_state_is_saved_as_tensors_and_plain_data(tmp_path):
    import numpy as np

    store = engine.Checkpoints(str(tmp_path), "s.pt", "phase1")
    store.save({"score": np.float64(0.5), "ids": np.arange(3), "steps": {0: (1, 2)}})
    state = store.load()
    assert state["score"] == 0.5 and type(state["score"]) is float and torch.equal(state["ids"], torch.arange(3))
    assert state["steps"] == {0: (1, 2)}  # int keys (optimizer state) survive
    with pytest.raises(TypeError, match=r"state\['bad'\] is a object"):
        store.save({"bad": object()})
