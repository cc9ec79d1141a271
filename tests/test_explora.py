"""Phase 4 (ExPLoRA): the adapter recipe, the objective against references, merge exactness, loss decrease on
the demo data, resume after an interruption, the split rules, and phase 1 consuming the adapted backbone.

Tiny everything: 32 px, depth 2, width 48, a few steps of 8 images."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY, phase1_paths
from PIL import Image
from safetensors.torch import load_file
from scipy.spatial import cKDTree
from scipy.special import log_softmax, softmax

from streetvision.config import ConfigError, load_config
from streetvision.contracts import LeakageViolationError, Role, Split
from streetvision.contracts.metadata import METADATA_FILE, read_metadata
from streetvision.data.shards import load_split
from streetvision.explora import objective
from streetvision.explora import train as explora_train
from streetvision.explora.adapters import apply_adapters, merge_adapters
from streetvision.explora.train import CHECKPOINT_FILE, ExploraTrainer, ImagePool, train_ssl
from streetvision.models import build_from_spec, create_model, normalization
from streetvision.phases.phase4 import (
    ADAPTER_DIR,
    BACKBONE_FILE,
    backbone_spec,
    build_backbone,
    load_backbone,
    phase1_config_from_backbone,
    run_phase4,
)
from streetvision.phases.result import PhasePaths

SMALL = TINY + [
    "model.depth=2",
    "explora.rank=4",
    "explora.batch_size=8",
    "explora.local_crops=2",
    "explora.prototypes=64",
    "explora.hidden_dim=32",
    "explora.bottleneck_dim=16",
    "explora.lr=0.001",
    "explora.warmup_steps=0",
    "explora.teacher_temp_warmup_steps=0",
    "explora.log_every=2",
    "explora.knn_k=5",
]


def phase4_paths(train, val_select, backbone) -> PhasePaths:
    return PhasePaths.of("phase4", train=train, val_select=val_select, backbone=backbone)


def small_cfg(*extra):
    return load_config(SMALL + list(extra))


def trainer_for(cfg):
    torch.manual_seed(0)  # the random-init backbone (run_phase4 seeds the same way)
    backbone = build_backbone(cfg)
    mean, std = normalization(backbone)
    peft_model, report = apply_adapters(backbone, cfg.explora)
    return ExploraTrainer(peft_model, cfg.explora, cfg.model.img_size, mean, std, torch.device("cpu"), None), report


def test_adapter_recipe_trains_only_lora_last_block_and_norms():
    cfg = small_cfg("model.depth=3", "explora.unfreeze_last_blocks=1")
    backbone = build_backbone(cfg)
    expected_full = sum(p.numel() for p in backbone.blocks[2].parameters())
    expected_full += sum(
        p.numel() for i in (0, 1) for n in ("norm1", "norm2") for p in getattr(backbone.blocks[i], n).parameters()
    )
    expected_full += sum(p.numel() for p in backbone.norm.parameters())
    peft_model, report = apply_adapters(backbone, cfg.explora)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    lora = [n for n in trainable if ".lora_" in n]
    assert sorted({n.split(".lora_")[0].removeprefix("base_model.model.") for n in lora}) == [
        "blocks.0.attn.qkv",
        "blocks.1.attn.qkv",
    ]
    others = [n for n in trainable if ".lora_" not in n]
    assert all(".modules_to_save." in n for n in others)  # copies PEFT trains; the originals stay frozen
    assert not any(
        "patch_embed" in n or "pos_embed" in n or "cls_token" in n or "mlp" in n and "blocks.2" not in n
        for n in trainable
    )
    assert report["trainable_full"] == expected_full
    assert report["trainable_lora"] == 2 * 4 * (48 + 3 * 48)  # A (r x in) + B (out x r) per adapted qkv
    assert report["unfrozen_blocks"] == ["blocks.2"]
    with pytest.raises(Exception, match="unfreeze fewer blocks"):
        apply_adapters(
            build_backbone(cfg), load_config(SMALL + ["model.depth=3", "explora.unfreeze_last_blocks=3"]).explora
        )


@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_merged_backbone_loads_strictly_and_equals_adapter_outputs(adapter, tmp_path):
    from safetensors.torch import save_file

    cfg = small_cfg(f"explora.adapter={adapter}")
    peft_model, _ = apply_adapters(build_backbone(cfg), cfg.explora)
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA's B starts at zero: move every trainable weight so the merge has work to do
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    merged = merge_adapters(peft_model)
    save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, str(tmp_path / "b.safetensors"))
    fresh = build_from_spec(backbone_spec(cfg))  # a plain timm model, no PEFT, no dynamic size
    fresh.load_state_dict(load_file(str(tmp_path / "b.safetensors")), strict=True)
    assert not any(k.startswith("head.") for k in fresh.state_dict())
    x = torch.randn(4, 3, 32, 32)
    peft_model.eval()
    fresh.eval()
    with torch.no_grad():
        adapted, plain = peft_model(x), fresh(x)
        untouched = build_from_spec(backbone_spec(cfg)).eval()
        untouched.load_state_dict(build_backbone(cfg).state_dict())
    assert torch.allclose(adapted, plain, atol=1e-5, rtol=0)
    assert not torch.allclose(untouched(x), plain, atol=1e-3)  # the merge did change the weights


def test_objective_matches_scipy_references():
    rng = np.random.default_rng(0)
    teacher_logits = rng.normal(size=(2, 5, 16)).astype(np.float32)
    student_logits = rng.normal(size=(4, 5, 16)).astype(np.float32)
    center = rng.normal(size=16).astype(np.float32) * 0.1
    q = softmax((teacher_logits - center) / 0.04, axis=-1)
    ours_q = objective.teacher_probabilities(torch.from_numpy(teacher_logits), torch.from_numpy(center), 0.04)
    np.testing.assert_allclose(ours_q.numpy(), q, rtol=1e-5, atol=1e-6)
    log_p = log_softmax(student_logits / 0.1, axis=-1)
    terms = [-(q[t] * log_p[s]).sum(-1).mean() for t in range(2) for s in range(4) if s != t]
    ours = objective.dino_loss([torch.from_numpy(s) for s in student_logits], list(ours_q), 0.1)
    assert ours.item() == pytest.approx(np.mean(terms), rel=1e-5)

    features = rng.normal(size=(12, 8))
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    distances, _ = cKDTree(unit).query(unit, k=2)  # nearest other point
    koleo = objective.koleo_loss(torch.from_numpy(features))
    assert koleo.item() == pytest.approx(-np.log(distances[:, 1] + 1e-8).mean(), rel=1e-4)

    masks = torch.tensor([[True, False, True], [False, False, False]])
    patch_logits = torch.from_numpy(rng.normal(size=(2, 3, 16)).astype(np.float32))
    patch_q = torch.softmax(torch.from_numpy(rng.normal(size=(2, 3, 16)).astype(np.float32)), -1)
    expected = -(patch_q * torch.log_softmax(patch_logits / 0.1, -1)).sum(-1)[masks].mean()
    assert objective.ibot_loss(patch_logits, patch_q, masks, 0.1).item() == pytest.approx(expected.item(), rel=1e-5)

    centred = objective.update_center(torch.zeros(16), torch.from_numpy(teacher_logits), 0.9)
    np.testing.assert_allclose(centred.numpy(), 0.1 * teacher_logits.reshape(-1, 16).mean(0), rtol=1e-5, atol=1e-7)


def test_ssl_loss_decreases_on_demo_data(ingested):
    _, dirs, _, _ = ingested
    train = load_split(dirs[Split.TRAIN], split=Split.TRAIN, role=Role.FIT, phase="test", input_name="train")
    cfg = small_cfg("explora.steps=6", "explora.warmup_steps=3", "explora.checkpoint_every=100")
    trainer, _ = trainer_for(cfg)
    train_ssl(trainer, ImagePool([train.images]), None, "fp")
    losses = [h["loss"] for h in trainer.history]
    assert len(losses) == 6 and all(np.isfinite(losses))
    # From a random init the teacher's centring first flattens it (step 1 rises); then the objective falls.
    assert np.mean(losses[-2:]) < min(losses[0], np.mean(losses[:2])), losses
    assert {"dino", "ibot", "koleo", "lr", "momentum", "teacher_temp"} <= set(trainer.history[0])


def test_resume_after_interruption_repeats_the_uninterrupted_run(ingested, tmp_path, monkeypatch):
    _, dirs, _, _ = ingested
    train = load_split(dirs[Split.TRAIN], split=Split.TRAIN, role=Role.FIT, phase="test", input_name="train")
    pool = ImagePool([train.images])
    cfg = small_cfg(
        "explora.steps=3", "explora.checkpoint_every=2", "explora.batch_size=4", "explora.ibot_mask_probability=1.0"
    )

    straight, _ = trainer_for(cfg)
    train_ssl(straight, pool, tmp_path / "straight", "fp")

    calls = {"n": 0}
    real_step = explora_train.ssl_step

    def preempted(trainer, batch):
        if calls["n"] == 2:
            raise KeyboardInterrupt("node preempted")
        calls["n"] += 1
        return real_step(trainer, batch)

    monkeypatch.setattr(explora_train, "ssl_step", preempted)
    first, _ = trainer_for(cfg)
    with pytest.raises(KeyboardInterrupt):
        train_ssl(first, pool, tmp_path / "resumed", "fp")
    assert torch.load(tmp_path / "resumed" / CHECKPOINT_FILE, weights_only=True)["global_step"] == 2
    assert not list((tmp_path / "resumed").glob("*.tmp"))  # atomic: no half-written file left behind
    monkeypatch.setattr(explora_train, "ssl_step", real_step)

    resumed, _ = trainer_for(cfg)
    train_ssl(resumed, pool, tmp_path / "resumed", "fp")
    assert [h["step"] for h in resumed.history] == [0, 1, 2]
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-6)
    a, b = resumed.state_dict(), straight.state_dict()
    for name in a["student"]:
        torch.testing.assert_close(a["student"][name], b["student"][name], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a["teacher"][name], b["teacher"][name], rtol=1e-6, atol=1e-7)

    # A checkpoint of another config or dataset is never resumed.
    assert explora_train.load_checkpoint(tmp_path / "resumed", "fp")["global_step"] == 3
    assert explora_train.load_checkpoint(tmp_path / "resumed", "another-fingerprint") is None


def test_phase4_refuses_val_splits_at_run_time(ingested, tmp_path):
    _, dirs, _, _ = ingested
    cfg = small_cfg()
    for bad in (Split.VAL_SELECT, Split.VAL_CALIB, Split.VAL_TEST):
        with pytest.raises(LeakageViolationError, match="role is fit"):
            run_phase4(cfg, phase4_paths(dirs[bad], dirs[Split.VAL_SELECT], tmp_path / "b"))
    for bad in (Split.VAL_CALIB, Split.VAL_TEST):
        with pytest.raises(LeakageViolationError, match="role is model_selection"):
            run_phase4(cfg, phase4_paths(dirs[Split.TRAIN], dirs[bad], tmp_path / "b"))
    # The unlabelled pool: a split artifact must be TRAIN; a VAL_SELECT image among pool files is found.
    for bad in (Split.VAL_SELECT, Split.VAL_TEST):
        with pytest.raises(LeakageViolationError):
            run_phase4(
                small_cfg(f"explora.pool_source={dirs[bad]}"),
                phase4_paths(dirs[Split.TRAIN], dirs[Split.VAL_SELECT], tmp_path / "b"),
            )
    select = load_split(
        dirs[Split.VAL_SELECT], split=Split.VAL_SELECT, role=Role.MODEL_SELECTION, phase="test", input_name="val_select"
    )
    pool = tmp_path / "pool"
    pool.mkdir()
    Image.fromarray(np.array(select.images[0])).save(pool / "street_0001.png")
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(pool / "street_0002.png")
    with pytest.raises(LeakageViolationError, match="identical to VAL_SELECT"):
        run_phase4(
            small_cfg(f"explora.pool_source={pool}"),
            phase4_paths(dirs[Split.TRAIN], dirs[Split.VAL_SELECT], tmp_path / "b"),
        )
    assert not (tmp_path / "b").exists()  # refused before any output was started


def test_config_rejects_bad_explora_values():
    with pytest.raises(ConfigError) as info:
        load_config(
            [
                "explora.adapter=ia3",
                "explora.rank=0",
                "explora.local_crop_scale=[0.5, 0.1]",
                "explora.pool_source=s3://bucket/pool",
                "explora.ema_momentum=1.5",
            ]
        )
    text = str(info.value)
    for key in ("adapter", "rank", "local_crop_scale", "pool_source", "ema_momentum"):
        assert f"explora.{key}" in text
    assert "phase4" not in load_config().pipeline.phases  # off by default


def test_phase4_end_to_end_then_phase1_trains_from_it(ingested, tmp_path):
    from streetvision.phases.phase1 import run_phase1
    from streetvision.registry import PHASE_SPECS
    from streetvision.run_summary import HEADLINE, output_name

    _, dirs, _, _ = ingested
    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(pool / f"unlabelled_{i}.jpg")
    resume = tmp_path / "ckpt"
    cfg = small_cfg(
        "explora.steps=3", "explora.checkpoint_every=2", f"explora.pool_source={pool}", f"training.resume_dir={resume}"
    )
    out = tmp_path / "backbone"
    result = run_phase4(cfg, phase4_paths(dirs[Split.TRAIN], dirs[Split.VAL_SELECT], out))
    assert (resume / CHECKPOINT_FILE).is_file()  # training state under training.resume_dir
    meta = read_metadata(out, "test")
    assert meta.kind == "backbone" and meta.phase == "phase4"
    assert [(e.phase, e.role, e.split) for e in meta.lineage] == [
        ("phase4", "fit", "train"),
        ("phase4", "model_selection", "val_select"),
    ]
    summary = meta.summary
    for key in (
        "knn_accuracy_before",
        "knn_accuracy_after",
        "linear_accuracy_before",
        "linear_accuracy_after",
        "trainable_parameters",
        "images_per_second",
    ):
        assert summary[key] is not None, key
    assert summary["pool_images"] == 4 and summary["steps"] == 3
    assert summary["merge_max_abs_error"] <= 1e-5
    assert set(HEADLINE["backbone"]) <= set(summary) and list(PHASE_SPECS["phase4"].outputs) == ["backbone"]
    assert output_name(json.loads((out / METADATA_FILE).read_text())) == "backbone"
    assert (out / ADAPTER_DIR / "adapter_config.json").is_file()
    assert (out / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    assert json.loads((out / "probe.json").read_text())["scored_on"] == "val_select"
    assert "<img" in result.reports["ssl_curves"]
    assert result.reports["ssl_curves"] == (out / "ssl_curves.html").read_text()
    assert result.metrics["steps"] == 3.0
    backbone = load_backbone(out)  # strict keys into a fresh timm model

    # Phase 1 from the adapted backbone: weights loaded (head fresh), lineage shows TRAIN adaptation.
    p1_cfg = phase1_config_from_backbone(cfg, out, dirs[Split.TRAIN])
    assert p1_cfg.model.weights == str(out / BACKBONE_FILE) and cfg.model.weights == "none"
    classifier = create_model(p1_cfg.model)
    for key, value in backbone.state_dict().items():
        assert torch.equal(classifier.state_dict()[key], value), key
    # The adapted variant: phase 1 given the backbone sets the weights itself and extends the lineage.
    paths = phase1_paths(dirs, tmp_path / "phase1", backbone=out)
    updated = run_phase1(cfg, paths).outputs
    assert updated["checkpoint"]["summary"]["backbone"] == f"phase4 {cfg.explora.adapter}"
    for name, path in paths.outputs.items():
        lineage = [(e["phase"], e["role"], e["split"]) for e in updated[name]["lineage"]]
        assert ("phase4", "fit", "train") in lineage and ("phase1", "fit", "train") in lineage
        assert read_metadata(path, "test").lineage == read_metadata(path, "test").lineage  # readable record
        assert ("phase4", "fit", "train") in [(e.phase, e.role, e.split) for e in read_metadata(path, "test").lineage]

    with pytest.raises(Exception, match="same model"):
        phase1_config_from_backbone(small_cfg("model.embed_dim=64"), out, dirs[Split.TRAIN])


def test_bf16_autocast_step_runs_and_stays_finite():
    # The GPU path (training.precision=bf16) exercised on CPU, where torch.autocast supports bfloat16 too.
    cfg = small_cfg("explora.steps=2")
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    mean, std = normalization(backbone)
    peft_model, _ = apply_adapters(backbone, cfg.explora)
    trainer = ExploraTrainer(peft_model, cfg.explora, 32, mean, std, torch.device("cpu"), torch.bfloat16)
    images = (np.random.default_rng(0).random((8, 32, 32, 3)) * 255).astype(np.uint8)
    records = [trainer.step(images) for _ in range(2)]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert all(p.dtype == torch.float32 for p in trainer.student.parameters())  # master weights stay fp32


def test_pool_from_a_gcs_prefix_and_val_images_in_it_refused(tmp_path, monkeypatch):
    import io

    from test_gcs import Emulator  # fake-gcs-server, as the storage tests run it

    from streetvision import io as storage
    from streetvision.explora.pool import load_pool, pixel_hashes

    (tmp_path / "gcs").mkdir()
    server = Emulator(tmp_path / "gcs")
    server.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        storage.gcs_client().create_bucket("explora-pool")
        rng = np.random.default_rng(5)
        for i in range(3):
            buffer = io.BytesIO()
            Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(buffer, format="JPEG")
            storage.write_bytes(f"gs://explora-pool/street/day{i}/img.jpg", buffer.getvalue())
        storage.write_bytes("gs://explora-pool/street/notes.txt", b"not an image")
        pool, report = load_pool("gs://explora-pool/street", 32, 16, 0, "test", forbidden_hashes=set())
        assert pool.shape == (3, 32, 32, 3) and report["pool_images"] == 3
        assert load_pool("gs://explora-pool/street", 32, 16, 2, "test", set())[1]["pool_images"] == 2
        with pytest.raises(LeakageViolationError, match="identical to VAL_SELECT"):
            load_pool("gs://explora-pool/street", 32, 16, 0, "test", forbidden_hashes=pixel_hashes(pool[1:2]))
    finally:
        server.stop()
