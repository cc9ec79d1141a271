"""Models through timm: creation from the typed config, weight loading, save/load of checkpoint dirs."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load, load_file, save_file

from streetvision import io as storage
from streetvision.config.schema import ModelConfig
from streetvision.contracts.errors import CheckpointError
from streetvision.contracts.validators import validate_location

NUM_CLASSES = 2
_ARCH_OVERRIDES = ("patch_size", "depth", "embed_dim", "num_heads")


# timm families built for one input size (position embeddings): they take `img_size`. Convolutional ones take any
# size and no such argument.
_SIZED_FAMILIES = (
    "vision_transformer",
    "vision_transformer_hybrid",
    "vision_transformer_relpos",
    "eva",
    "deit",
    "beit",
)


def takes_img_size(name: str) -> bool:
    import timm

    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1] in _SIZED_FAMILIES


def model_spec(cfg: ModelConfig) -> dict:
    """Everything needed to rebuild the architecture (no weights): stored beside every checkpoint."""
    kwargs: dict = {"img_size": cfg.img_size} if takes_img_size(cfg.name) else {}
    kwargs["drop_rate"] = cfg.head_dropout
    kwargs.update({k: getattr(cfg, k) for k in _ARCH_OVERRIDES if getattr(cfg, k) is not None})
    return {"name": cfg.name, "num_classes": NUM_CLASSES, "kwargs": kwargs}


def build_from_spec(spec: dict, pretrained: bool = False) -> torch.nn.Module:
    import timm

    return timm.create_model(spec["name"], pretrained=pretrained, num_classes=spec["num_classes"], **spec["kwargs"])


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A local file, or a gs:// object read into memory (no local copy is left behind)."""
    remote = storage.is_gcs(path)
    if str(path).endswith(".safetensors"):
        return load(storage.read_bytes(path)) if remote else load_file(str(path))
    source = io.BytesIO(storage.read_bytes(path)) if remote else str(path)
    state = torch.load(source, map_location="cpu", weights_only=True)
    # Common wrappers: {"model": sd}, {"state_dict": sd}.
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _weights_file(weights: str, where: str) -> str | Path:
    """The state-dict file behind model.weights: a file, an artifact directory (e.g. phase 4's adapted
    backbone or a phase-1 checkpoint), or a gs:// object."""
    validate_location(weights, where)
    if storage.is_gcs(weights):
        return weights
    path = Path(weights.removeprefix("file://"))
    if path.is_dir():
        for name in WEIGHT_FILES_IN_DIR:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(
            f"directory {path} holds none of {list(WEIGHT_FILES_IN_DIR)}",
            where,
            "point model.weights at a weights file or at an artifact directory that holds one",
        )
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist", where, "set model.weights to an existing file")
    return path


class ImageRows(Protocol):
    """uint8 NHWC images by row: an ndarray, or the shard cache's `ShardedImages` (rows across shard files)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> np.ndarray: ...


# Artifact directories that can serve as model.weights, in order of preference.
WEIGHT_FILES_IN_DIR = ("backbone.safetensors", "model.safetensors")


def _fit_to_model(state: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
    """timm's own checkpoint filter: resamples position embeddings (and patch embeddings) to this model's size."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = {k.removeprefix("module."): v for k, v in state.items()}
    return checkpoint_filter_fn(state, model)


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
    path = _weights_file(cfg.weights, where)
    model = build_from_spec(spec)
    fix = "use weights saved from the same timm architecture (any image size; a classifier head may be absent)"
    try:
        state = _read_state_dict(path)
        head_shapes = {k: v.shape for k, v in model.state_dict().items() if k.startswith("head.")}
        # A head for another number of classes is dropped (we train our own), not an error.
        state = {k: v for k, v in state.items() if not (k in head_shapes and v.shape != head_shapes[k])}
        result = model.load_state_dict(_fit_to_model(state, model), strict=False)
    except (RuntimeError, ValueError) as exc:  # tensor shape mismatches
        raise CheckpointError(
            f"weights do not fit {cfg.name}: {str(exc).splitlines()[-1].strip()}", where, fix
        ) from exc
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
    # Atomic: a preempted writer never leaves a truncated file under the final name.
    storage.atomic_write(out_dir / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    storage.write_text(out_dir / "model_config.json", json.dumps(spec, indent=2, sort_keys=True))


def load_model_dir(path: str | Path) -> torch.nn.Module:
    path = Path(path)
    spec = json.loads((path / "model_config.json").read_text())
    model = build_from_spec(spec)
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    if spec.get("multiview"):
        from streetvision.models.multiview import MultiViewClassifier

        model = MultiViewClassifier(model, spec["multiview"]["aggregation"])
    return model.eval()


def validate_checkpoint(path: str | Path) -> dict:
    """A checkpoint directory: its model config and a safetensors state dict that loads strictly."""
    root = Path(path)
    where = f"checkpoint {root}"
    for name in ("model.safetensors", "model_config.json"):
        if not (root / name).is_file():
            raise CheckpointError(f"missing {name}", where, "write checkpoints with streetvision.models.save_model_dir")
    try:
        load_model_dir(root)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"weights do not load into the recorded architecture: {str(exc).splitlines()[0]}",
            where,
            "the checkpoint and model_config.json disagree; regenerate the checkpoint with phase1",
        ) from exc
    return json.loads((root / "model_config.json").read_text())


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
    images: ImageRows,
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
