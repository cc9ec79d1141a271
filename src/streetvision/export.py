"""Export a bundle's model to ONNX, and a Triton Inference Server model repository around it.

The ONNX graph takes what the bundle's `predict` takes — uint8 RGB images (N, S, S, 3) at the bundle's
resolution — normalises them inside the graph and returns the raw logits (N, 2). The calibrator and the
policy stay plain JSON beside it (calibrator.json, policy.json, manifest.json): a client applies them
exactly as `streetvision.inference` does (`calibration.prob_roadwork`, `selective.accept_mask`). Export
loads the bundle through `Bundle.load`, so a tampered, unsigned or forged bundle, or one whose
policy/calibrator was fitted on other weights, is refused before anything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from streetvision import io as storage
from streetvision.config.schema import SigningConfig
from streetvision.contracts.errors import BundleError, ConfigError
from streetvision.contracts.validators import BUNDLE_MANIFEST, sha256_file
from streetvision.inference import Bundle
from streetvision.models import to_model_input

ONNX_INPUT = "images"
ONNX_OUTPUT = "logits"
DEFAULT_OPSET = 18


class _WithPreprocessing(torch.nn.Module):
    """uint8 NHWC in, logits out: the bundle's normalisation folded into the exported graph."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: torch.nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(to_model_input(images, self.mean, self.std))


def _check_output_folder(folder: Path, where: str) -> None:
    """`folder` is, or can become, a folder: no file in the way of it or of a folder above it."""
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise ConfigError(
                    f"{path} is a file, not a folder", where, "pass -o a folder (new or existing), not a file"
                )
            return


def export_onnx(
    bundle_dir: str | Path,
    out_path: str | Path,
    opset: int = DEFAULT_OPSET,
    trust: SigningConfig | None = None,
    allow_unsigned: bool = False,
) -> Path:
    """Write the bundle's model (with its preprocessing) as ONNX with a dynamic batch axis.

    Args:
        bundle_dir: the bundle folder.
        out_path: the .onnx file to write (atomically); its folder is created.
        opset: the ONNX opset.
        trust: who may have signed the bundle (see `Bundle.load`).
        allow_unsigned: accept an unsigned bundle.

    Returns:
        `out_path`. The model takes ``images`` (uint8, N x S x S x 3) and gives ``logits`` (N x 2).

    Raises:
        BundleError: the bundle does not verify (see `Bundle.load`).
        ConfigError: a file stands where the output folder should be, or no `trust` for a signed bundle.
    """
    out_path = Path(out_path)
    _check_output_folder(out_path.parent, f"export to {out_path}")
    # Closed, hashes, signature against `trust`, and "fitted on these weights" checked here.
    bundle = Bundle.load(bundle_dir, trust, allow_unsigned)
    size = bundle.preprocessing["img_size"]
    wrapped = _WithPreprocessing(bundle.model.cpu(), bundle.preprocessing["mean"], bundle.preprocessing["std"]).eval()
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def export(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(
                wrapped,
                (example,),
                str(tmp),
                input_names=[ONNX_INPUT],
                output_names=[ONNX_OUTPUT],
                dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
                opset_version=opset,
                dynamo=True,  # torch.export-based exporter (the TorchScript one is deprecated)
                external_data=False,  # one self-contained file (models here are far below protobuf's 2 GB)
                verbose=False,
            )

    storage.atomic_write(out_path, export)
    return out_path


def onnx_logits(onnx_path: str | Path, images: np.ndarray) -> np.ndarray:
    """Run the exported model with onnxruntime on CPU (what the parity test and a CPU server use)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run([ONNX_OUTPUT], {ONNX_INPUT: np.ascontiguousarray(images, dtype=np.uint8)})[0]


def triton_config(name: str, img_size: int, max_batch_size: int, gpu: bool) -> str:
    """config.pbtxt for the ONNX Runtime backend; the batch axis is implicit (max_batch_size > 0)."""
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{ONNX_INPUT}"
    data_type: TYPE_UINT8
    dims: [ {img_size}, {img_size}, 3 ]
  }}
]
output [
  {{
    name: "{ONNX_OUTPUT}"
    data_type: TYPE_FP32
    dims: [ 2 ]
  }}
]
dynamic_batching {{ }}
instance_group [
  {{
    count: 1
    kind: {kind}
  }}
]
"""


def export_triton(
    bundle_dir: str | Path,
    repository: str | Path,
    name: str = "streetvision_stage1",
    max_batch_size: int = 64,
    gpu: bool = True,
    trust: SigningConfig | None = None,
    allow_unsigned: bool = False,
) -> Path:
    """A Triton model repository: <repository>/<name>/{config.pbtxt, 1/model.onnx} plus the bundle's calibrator,
    policy and manifest (Triton ignores extra files), and a sha256 of every file written.

    Args:
        bundle_dir: the bundle folder.
        repository: the Triton model repository (created if missing).
        name: the model's name and folder.
        max_batch_size: Triton's max_batch_size.
        gpu: a GPU instance group (else CPU).
        trust: who may have signed the bundle (see `Bundle.load`).
        allow_unsigned: accept an unsigned bundle.

    Returns:
        The model's folder, <repository>/<name>.

    Raises:
        BundleError: the bundle does not verify, or <repository>/<name> already exists.
        ConfigError: a file stands where the repository should be, or no `trust` for a signed bundle.
    """
    bundle_dir = Path(bundle_dir)
    model_dir = Path(repository) / name
    _check_output_folder(model_dir, f"export to {repository}")
    if model_dir.exists():
        raise BundleError(
            f"{model_dir} already exists",
            f"export to {repository}",
            "choose another --name or remove the old model folder first",
        )
    onnx_path = export_onnx(bundle_dir, model_dir / "1" / "model.onnx", trust=trust, allow_unsigned=allow_unsigned)
    img_size = json.loads((bundle_dir / "preprocessing.json").read_text())["img_size"]
    storage.write_text(model_dir / "config.pbtxt", triton_config(name, img_size, max_batch_size, gpu))
    for file in ("calibrator.json", "policy.json", "preprocessing.json", BUNDLE_MANIFEST):
        shutil.copyfile(bundle_dir / file, model_dir / file)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    record = {
        "source_bundle_weights_sha256": sha256_file(bundle_dir / "model.safetensors"),
        "onnx": str(onnx_path.relative_to(model_dir)),
        "files": {str(p.relative_to(model_dir)): sha256_file(p) for p in files},
    }
    storage.write_text(model_dir / "export.json", json.dumps(record, indent=2))
    return model_dir
