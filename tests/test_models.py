import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from streetvision.config import load_config
from streetvision.contracts import CheckpointError
from streetvision.models import (
    create_model,
    load_model_dir,
    model_spec,
    predict_logits,
    save_model_dir,
    validate_checkpoint,
)

TINY_MODEL = [
    "model=vit_tiny",
    "model.img_size=32",
    "model.patch_size=8",
    "model.depth=1",
    "model.embed_dim=48",
    "model.num_heads=2",
]


def test_tiny_dinov2_architecture_from_config():
    cfg = load_config(TINY_MODEL).model
    model = create_model(cfg)
    assert type(model).__name__ == "VisionTransformer" and len(model.blocks) == 1
    logits = predict_logits(model, np.zeros((3, 32, 32, 3), np.uint8), [0.5] * 3, [0.5] * 3)
    assert logits.shape == (3, 2) and np.isfinite(logits).all()


@pytest.mark.parametrize("name", ["vit_small_patch14_reg4_dinov2", "vit_base_patch14_dinov2"])
def test_other_dinov2_backbones_build_shrunk(name):
    model = create_model(load_config([*TINY_MODEL, f"model.name={name}"]).model)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2)
    assert (getattr(model, "reg_token", None) is not None) == ("reg4" in name)


def test_local_weights_load_and_mismatches_are_refused(tmp_path):
    cfg = load_config(TINY_MODEL).model
    source = create_model(cfg)
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    save_file(backbone, str(tmp_path / "backbone.safetensors"))
    torch.save({"model": source.state_dict()}, tmp_path / "full.pt")
    for name in ("backbone.safetensors", "full.pt"):
        cfg.weights = str(tmp_path / name)
        loaded = create_model(cfg)
        assert torch.equal(loaded.patch_embed.proj.weight, source.patch_embed.proj.weight)
    bigger = load_config([*TINY_MODEL, "model.embed_dim=64"]).model
    bigger.weights = str(tmp_path / "backbone.safetensors")
    with pytest.raises(CheckpointError, match="do not fit"):
        create_model(bigger)
    cfg.weights = str(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model(cfg)
    cfg.weights = "s3://bucket/weights.safetensors"  # the IO module serves local paths and gs:// only
    with pytest.raises(CheckpointError, match="no storage backend for s3://"):
        create_model(cfg)


def test_weights_from_artifact_dirs_remote_stores_and_other_sizes(tmp_path, monkeypatch):
    from streetvision import io as storage

    cfg = load_config(TINY_MODEL).model
    source = create_model(cfg)
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    (tmp_path / "adapted").mkdir()
    save_file(backbone, str(tmp_path / "adapted" / "backbone.safetensors"))  # e.g. phase 4's artifact
    cfg.weights = str(tmp_path / "adapted")
    assert torch.equal(create_model(cfg).blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    cfg.weights = str(tmp_path)
    with pytest.raises(CheckpointError, match="holds none of"):
        create_model(cfg)

    # gs:// is read through the IO module (here served from a local folder; tests/test_gcs.py uses the emulator).
    local_read = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri: local_read(tmp_path / str(uri).removeprefix("gs://")))
    cfg.weights = "gs://adapted/backbone.safetensors"
    assert torch.equal(create_model(cfg).patch_embed.proj.weight, source.patch_embed.proj.weight)

    # A checkpoint made at another image size: position embeddings are resampled, not refused.
    bigger = load_config([*TINY_MODEL, "model.img_size=48"]).model
    bigger.weights = str(tmp_path / "adapted" / "backbone.safetensors")
    model = create_model(bigger)
    assert model.pos_embed.shape[1] != source.pos_embed.shape[1]
    assert torch.equal(model.patch_embed.proj.weight, source.patch_embed.proj.weight)


def test_unreachable_hub_weights_are_an_error_not_random_init(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at call time; no network wait
    cfg = load_config([*TINY_MODEL, "model.weights=hub"]).model
    with pytest.raises(CheckpointError, match="could not be loaded from the hub"):
        create_model(cfg)


def test_checkpoint_dir_round_trip_and_validation(tmp_path):
    cfg = load_config(TINY_MODEL).model
    model = create_model(cfg).eval()
    save_model_dir(model, model_spec(cfg), tmp_path)
    again = load_model_dir(tmp_path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), again(x))
    assert validate_checkpoint(tmp_path)["name"] == cfg.name
    (tmp_path / "model_config.json").write_text(
        (tmp_path / "model_config.json").read_text().replace('"depth": 1', '"depth": 2')
    )
    with pytest.raises(CheckpointError, match="do not load"):
        validate_checkpoint(tmp_path)
