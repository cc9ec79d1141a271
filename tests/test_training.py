"""The phase-1 recipe on tiny models: augmentation, optimizer groups, warm start, EMA, divergence, precision,
prior correction, multi-view selection, training outputs."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY, phase1_paths

from streetvision.config import ConfigError, load_config
from streetvision.contracts import ContractError, Split
from streetvision.contracts.splits import Role
from streetvision.data.shards import load_split
from streetvision.models import create_model, load_model_dir, normalization, predict_logits
from streetvision.models.multiview import MultiViewClassifier, aggregate, make_views
from streetvision.training.augment import BatchAugment
from streetvision.training.loop import (
    Trainer,
    TrainingDivergedError,
    _Batches,
    autocast_dtype,
    epoch_batches,
    train_classifier,
)


def _trainer(overrides, steps_per_epoch=4):
    cfg = load_config(TINY + overrides)
    model = create_model(cfg.model)
    mean, std = normalization(model)
    return Trainer(model, cfg.training, 32, mean, std, steps_per_epoch, np.ones(2), torch.device("cpu")), cfg


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)), torch.from_numpy(
        rng.integers(0, 2, n)
    )


def test_fp16_and_bad_recipe_values_are_refused_with_reasons():
    with pytest.raises(ConfigError) as info:
        load_config(
            [
                "training.precision=fp16",
                "training.layer_decay=0",
                "training.ema_decay=1.0",
                "training.augment.vflip_p=2",
                "training.num_processes=3",
            ]
        )
    text = str(info.value)
    assert "fp16 is refused: DINOv2 activations overflow fp16" in text
    assert "layer_decay" in text and "ema_decay" in text and "vflip_p" in text
    assert "does not split evenly over num_processes=3" in text
    with pytest.raises(ContractError, match="use bf16 on GPU or fp32"):
        autocast_dtype("fp16")
    assert autocast_dtype("bf16") is torch.bfloat16 and autocast_dtype("fp32") is None


def test_challenge_augmentation_is_per_sample_and_off_at_strength_zero():
    cfg = load_config(["training=gpu"]).training.augment
    assert cfg.rotation_degrees == 20 and cfg.crop_scale_min == 0.2 and cfg.vflip_p == 0.5 and cfg.jpeg_p > 0
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32).repeat(32, 1, 1, 1)  # one image, 32 times
    out = BatchAugment(32, cfg)(x.clone())
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    plain = (out == x).flatten(1).all(1)
    assert 4 <= int(plain.sum()) <= 28  # augment.plain_share (0.5) of them left as they were
    distinct = {tuple(o.flatten()[:64].tolist()) for o in out[~plain]}
    assert len(distinct) >= int((~plain).sum()) - 1, "augmentation parameters must be drawn per sample"
    cfg.strength = 0.0
    assert torch.equal(BatchAugment(32, cfg)(x.clone()), x)


def test_layer_decay_groups_and_frozen_backbone_warm_start():
    trainer, _ = _trainer(
        [
            "model.depth=2",
            "training.layer_decay=0.5",
            "training.freeze_backbone_epochs=1",
            "training.lr=0.01",
            "training.warmup_epochs=0",
            "training.epochs=3",
        ]
    )
    scales = {round(g["lr_scale"], 4) for g in trainer.optimizer.param_groups}
    assert scales == {0.125, 0.25, 0.5, 1.0}  # embeddings, block 0, block 1 (+ norm), head
    head = {id(p) for p in trainer.model.get_classifier().parameters()}
    assert all(g["is_head"] == all(id(p) in head for p in g["params"]) for g in trainer.optimizer.param_groups)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    x, y = _batch()
    trainer.step(x, y, float(len(y)))  # step 0 of 4: inside the frozen epoch
    after = trainer.model.state_dict()
    assert torch.equal(before["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"])
    assert not torch.equal(before["head.weight"], after["head.weight"])
    for _ in range(4):
        trainer.step(x, y, float(len(y)))
    assert not torch.equal(before["blocks.0.attn.qkv.weight"], trainer.model.state_dict()["blocks.0.attn.qkv.weight"])


def test_ema_tracks_the_weights_and_is_what_selection_uses():
    trainer, _ = _trainer(["training.ema_decay=0.5"])
    x, y = _batch()
    for _ in range(3):
        trainer.step(x, y, float(len(y)))
    ema, live = trainer.eval_model().state_dict(), trainer.model.state_dict()
    assert trainer.eval_model() is not trainer.model
    assert not torch.equal(ema["head.weight"], live["head.weight"])
    assert trainer.state()["ema"] is not None


def test_cnn_trains_channels_last_and_comes_back_in_the_default_layout():
    cfg = load_config(["model.img_size=32", "training.epochs=1", "training.batch_size=8"])  # the default CNN
    x, y = _batch(16)
    ids = [str(i) for i in range(16)]

    def kernels(module):  # 1x1 kernels are alike in both layouts
        return [p for p in module.parameters() if p.dim() == 4 and p.shape[-1] > 1]

    model = create_model(cfg.model)
    mean, std = normalization(model)
    trainer = Trainer(model, cfg.training, 32, mean, std, 2, np.ones(2), torch.device("cpu"))
    assert kernels(model) and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels(model))
    assert not any(p.is_contiguous() for p in kernels(model))
    trainer.step(x, y, float(len(y)))  # a step runs in that layout

    model = create_model(cfg.model)
    train_classifier(model, x.numpy(), y.numpy(), ids, x.numpy(), y.numpy(), mean, std, cfg.training)
    assert all(p.is_contiguous() for p in kernels(model))  # the layout a bundle loads its weights in
    reloaded = create_model(cfg.model)
    reloaded.load_state_dict(model.state_dict())
    logits = predict_logits(model, x.numpy(), mean, std)
    np.testing.assert_array_equal(logits, predict_logits(reloaded, x.numpy(), mean, std))


def test_nonfinite_loss_names_step_batch_and_last_good_state(tmp_path):
    cfg = load_config(TINY + ["training.epochs=2"])
    model = create_model(cfg.model)
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    mean, std = normalization(model)
    x, y = _batch(40)
    ids = [f"sample-{i}" for i in range(40)]
    with pytest.raises(TrainingDivergedError) as info:
        train_classifier(model, x.numpy(), y.numpy(), ids, x.numpy()[:8], y.numpy()[:8], mean, std, cfg.training)
    text = str(info.value)
    assert "loss is nan at epoch 1, step 0" in text and "sample-" in text and "last good training state" in text


def test_batch_readers_recompress_each_batch_from_its_own_seed(monkeypatch):
    trainer, cfg = _trainer(["training.augment.jpeg_p=0.5", "training.epochs=1"])
    x, y = _batch(40)
    batches = epoch_batches(40, cfg.training.seed, 0, 8, 1)

    def read(ahead):
        return [
            b
            for _, b in _Batches(
                x.numpy(),
                batches,
                pin=False,
                ahead=ahead,
                prepare=trainer.host_prepare(0, 0),
            )
        ]

    one, four = read(1), read(4)
    assert all(torch.equal(a, b) for a, b in zip(one, four)), "the draws must not depend on the reading thread"
    assert not all(torch.equal(a, x[idx]) for a, idx in zip(one, batches))  # something was re-compressed

    seeds = []
    original = BatchAugment.recompress
    monkeypatch.setattr(
        BatchAugment, "recompress", lambda self, batch, seed: seeds.append(seed) or original(self, batch, seed)
    )
    model = create_model(cfg.model)
    mean, std = normalization(model)
    ids = [f"sample-{i}" for i in range(40)]
    train_classifier(model, x.numpy(), y.numpy(), ids, x.numpy()[:8], y.numpy()[:8], mean, std, cfg.training)
    assert sorted(seeds) == [[cfg.training.seed, 0, b, 0] for b in range(2)]  # 40 samples, batches of 32


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a, b = epoch_batches(10, 0, 3, 4, 1), epoch_batches(10, 0, 3, 4, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and sorted(np.concatenate(a)) == list(range(10))
    assert [len(x) for x in epoch_batches(9, 0, 0, 4, 2)] == [4, 4]  # a last batch of 1 cannot feed 2 processes


def test_multiview_views_and_aggregations():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    views = make_views(x)
    assert views.shape == (20, 3, 8, 8) and torch.equal(views[:2], x)
    same = torch.tensor([[0.0, 1.0], [2.0, -1.0]]).repeat(10, 1)  # every view agrees
    for how in ("mean_prob", "mean_logit", "max"):
        assert torch.allclose(aggregate(same, 10, how).softmax(-1), same[:2].softmax(-1), atol=1e-5)
    p = torch.tensor([[0.0, 3.0]] + [[0.0, -3.0]] * 9)  # one view says roadwork
    assert aggregate(p, 10, "max").softmax(-1)[0, 1] > 0.9 > aggregate(p, 10, "mean_prob").softmax(-1)[0, 1]


def test_phase1_outputs_prior_correction_and_view_choice(ingested, tmp_path):
    from streetvision.phases.phase1 import run_phase1

    _, dirs, _, _ = ingested
    cfg = load_config(
        TINY
        + [
            "training.balance_classes=false",
            "training.multiview=multi",
            "training.multiview_aggregation=mean_logit",
            "training.ema_decay=0.9",
        ]
    )
    paths = phase1_paths(dirs, tmp_path)
    result = run_phase1(cfg, paths)
    outs = [paths.output(n) for n in ("checkpoint", "val_select_logits", "val_calib_logits")]
    ckpt = outs[0]
    summary = json.loads((ckpt / "training_summary.json").read_text())
    prior = summary["prior_correction"]
    train = _split(dirs, Split.TRAIN, Role.FIT)
    train_share = float(np.mean(train.labels == 1))
    assert prior["trained_prior"] == pytest.approx(train_share)
    assert prior["logit_shift"] == pytest.approx(-np.log(train_share / (1 - train_share)))
    assert summary["views"]["chosen"] == "multi" and summary["views"]["cost_factor"] == 10
    spec = json.loads((ckpt / "model_config.json").read_text())
    assert spec["multiview"] == {"grid": 3, "aggregation": "mean_logit"}
    model = load_model_dir(ckpt)  # what phase 6 and the bundle's inference load
    assert isinstance(model, MultiViewClassifier)
    prep = json.loads((ckpt / "preprocessing.json").read_text())
    data = _split(dirs, Split.VAL_SELECT, Role.MODEL_SELECTION)
    select = data.images[np.arange(len(data.images))]
    table = pq.read_table(outs[1] / "predictions.parquet")
    written = np.stack([table.column("logit_0").to_numpy(), table.column("logit_1").to_numpy()], 1)
    again = predict_logits(model, select, prep["mean"], prep["std"])
    assert np.allclose(written, again, atol=1e-4), "VAL_SELECT logits must be the deployed (multi-view) scores"
    assert (ckpt / "last.safetensors").is_file() and result.reports["training_curves"].count("<img") == 1
    metrics = result.metrics
    assert "epoch_001_train_loss" in metrics and metrics["epochs_run"] == 1
    assert result.outputs["checkpoint"]["summary"]["views"] == "multi"


def _split(dirs, split, role):
    return load_split(dirs[split], split=split, role=role, phase="phase1", input_name=split.value)
