"""Models through timm: creation from the typed config, weight loading, save/load of checkpoint dirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from streetvision.config.schema import ModelConfig
from streetvision.contracts.errors import CheckpointError

NUM_CLASSES = 2
_ARCH_OVERRIDES = ("patch_size", "depth", "embed_dim", "num_heads")


def model_spec(cfg: ModelConfig) -> dict:
    """Everything needed to rebuild the architecture (no weights): stored beside every checkpoint."""
    kwargs = {"img_size": cfg.img_size, "drop_rate": cfg.head_dropout}
    kwargs.update({k: getattr(cfg, k) for k in _ARCH_OVERRIDES if getattr(cfg, k) is not None})
    return {"name": cfg.name, "num_classes": NUM_CLASSES, "kwargs": kwargs}


def build_from_spec(spec: dict, pretrained: bool = False) -> torch.nn.Module:
    import timm

    return timm.create_model(spec["name"], pretrained=pretrained, num_classes=spec["num_classes"], **spec["kwargs"])


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    # Common wrappers: {"model": sd}, {"state_dict": sd}.
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def create_model(cfg: ModelConfig) -> torch.nn.Module:
    """Build the classifier; never falls back silently to random weights when weights were asked for."""
    spec = model_spec(cfg)
    where = f"model.weights={cfg.weights!r} for {cfg.name}"
    if cfg.weights == "none":
        return build_from_spec(spec)
    if cfg.weights == "hub":
        try:
            return build_from_spec(spec, pretrained=True)
        except Exception as exc:  # hub errors come in many types (network, auth, missing file)
            raise CheckpointError(
                f"pretrained weights could not be loaded from the hub: {type(exc).__name__}: {exc}",
                where,
                "connect to the hub, or download the weights once and set model.weights to the local file path",
            ) from exc
    path = Path(cfg.weights)
    if cfg.weights.startswith(("gs://", "s3://", "http://", "https://")):
        raise CheckpointError(
            "remote weight paths are not read by this version",
            where,
            "copy the file locally (e.g. `gcloud storage cp`) and set model.weights to its local path",
        )
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist", where, "set model.weights to an existing file")
    model = build_from_spec(spec)
    fix = "use weights saved from the same timm architecture and size (a classifier head may be absent)"
    try:
        result = model.load_state_dict(_read_state_dict(path), strict=False)
    except RuntimeError as exc:  # tensor shape mismatches
        raise CheckpointError(f"weights do not fit {cfg.name}: {str(exc).splitlines()[-1].strip()}", where, fix) from exc
    head = {k for k in model.state_dict() if k.startswith("head.")}
    missing = [k for k in result.missing_keys if k not in head]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"weights do not match {cfg.name}: missing {missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}",
            where,
            fix,
        )
    return model


def save_model_dir(model: torch.nn.Module, spec: dict, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"))
    (out_dir / "model_config.json").write_text(json.dumps(spec, indent=2, sort_keys=True))


def load_model_dir(path: str | Path) -> torch.nn.Module:
    path = Path(path)
    spec = json.loads((path / "model_config.json").read_text())
    model = build_from_spec(spec)
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    return model.eval()


def normalization(model: torch.nn.Module) -> tuple[list[float], list[float]]:
    """Mean/std the architecture expects, as timm resolves them."""
    from timm.data import resolve_data_config

    data_cfg = resolve_data_config({}, model=model)
    return list(data_cfg["mean"]), list(data_cfg["std"])


def to_model_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW on the images' device."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    images: np.ndarray,
    mean: list[float],
    std: list[float],
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Logits (N, 2) float32 for uint8 NHWC images, in batches, in eval mode."""
    model.eval()
    device = torch.device(device)
    mean_t = torch.tensor(mean, device=device)
    std_t = torch.tensor(std, device=device)
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)  # copy: memmaps are read-only
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(to_model_input(batch, mean_t, std_t))
        out.append(logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)
