"""Typed configuration: one dataclass per group, validated as a whole.

Defaults live in YAML files shipped with the package (``defaults/``); the dataclass defaults below mirror
them so a config can be built in code too. A group's optional ``check()`` returns its own value problems,
named relative to the group (the loader prefixes the path), so every problem can be reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PHASE_NAMES = ("ingest", "phase1", "phase2", "phase6", "evaluate")


@dataclass
class ModelConfig:
    """A timm architecture, optionally shrunk (depth/width) for CPU demos and tests."""

    name: str = "vit_small_patch14_dinov2"
    # "none": random init; "hub": timm's pretrained weights for `name` (needs network);
    # anything else: a local .safetensors/.pt file with a state dict for this architecture.
    weights: str = "none"
    img_size: int = 224
    patch_size: int | None = None
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    head_dropout: float = 0.3

    def check(self) -> list[str]:
        problems = []
        if self.img_size < 16:
            problems.append(f"img_size: must be >= 16, got {self.img_size}")
        if self.patch_size is not None and self.img_size % self.patch_size:
            problems.append(
                f"img_size: {self.img_size} is not a multiple of model.patch_size={self.patch_size}"
            )
        if self.embed_dim is not None and self.num_heads is not None and self.embed_dim % self.num_heads:
            problems.append(
                f"embed_dim: {self.embed_dim} is not divisible by num_heads={self.num_heads}"
            )
        if not 0.0 <= self.head_dropout < 1.0:
            problems.append(f"head_dropout: must be in [0, 1), got {self.head_dropout}")
        return problems


@dataclass
class DemoConfig:
    """Procedural street scenes generated at ingest (deterministic for a given seed)."""

    num_sequences: int = 420
    frames_min: int = 2
    frames_max: int = 6
    roadwork_fraction: float = 0.8
    label_noise: float = 0.02
    width: int = 160
    height: int = 120
    jpeg_quality: int = 90
    seed: int = 0

    def check(self) -> list[str]:
        problems = []
        if self.num_sequences < 8:
            problems.append(f"num_sequences: need at least 8 for four splits, got {self.num_sequences}")
        if not 1 <= self.frames_min <= self.frames_max:
            problems.append(
                f"frames_min/frames_max: need 1 <= frames_min <= frames_max, got "
                f"{self.frames_min}/{self.frames_max}"
            )
        if not 0.0 < self.roadwork_fraction < 1.0:
            problems.append(f"roadwork_fraction: must be in (0, 1), got {self.roadwork_fraction}")
        if not 0.0 <= self.label_noise < 0.5:
            problems.append(f"label_noise: must be in [0, 0.5), got {self.label_noise}")
        if min(self.width, self.height) < 32:
            problems.append(f"width/height: must be >= 32, got {self.width}x{self.height}")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality: must be in [1, 100], got {self.jpeg_quality}")
        return problems


@dataclass
class SplitConfig:
    """Group-aware split: a seeded hash of the group id picks the split."""

    train: float = 0.7
    val_select: float = 0.1
    val_calib: float = 0.1
    val_test: float = 0.1
    seed: int = 0

    def fractions(self) -> dict[str, float]:
        return {
            "train": self.train,
            "val_select": self.val_select,
            "val_calib": self.val_calib,
            "val_test": self.val_test,
        }

    def check(self) -> list[str]:
        problems = [f"{k}: must be > 0, got {v}" for k, v in self.fractions().items() if v <= 0]
        total = sum(self.fractions().values())
        if abs(total - 1.0) > 1e-6:
            problems.append(f"train+val_select+val_calib+val_test: fractions must sum to 1, got {total:.6f}")
        return problems


@dataclass
class DataConfig:
    # "demo": generate procedural scenes; "manifest": a CSV with columns path,label[,group_id,source].
    source: Literal["demo", "manifest"] = "demo"
    manifest: str = ""
    label_names: list[str] = field(default_factory=lambda: ["no_roadwork", "roadwork"])
    min_image_size: int = 32
    # Share of input records that may be quarantined before ingest fails the run.
    max_quarantine_fraction: float = 0.05
    demo: DemoConfig = field(default_factory=DemoConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def check(self) -> list[str]:
        problems = []
        if self.source == "manifest" and not self.manifest:
            problems.append("manifest: required when data.source=manifest (a CSV path)")
        if len(self.label_names) != 2 or len(set(self.label_names)) != 2:
            problems.append(f"label_names: need two distinct names [negative, positive], got {self.label_names}")
        if not 0.0 <= self.max_quarantine_fraction <= 1.0:
            problems.append(
                f"max_quarantine_fraction: must be in [0, 1], got {self.max_quarantine_fraction}"
            )
        return problems


@dataclass
class AugmentConfig:
    """Per-sample training augmentation, applied to whole batches on the model's device (kornia).

    The defaults are the deployment challenges (the validators rotate, crop, flip, re-compress, blur, add
    noise and change colours). ``strength`` scales every probability and magnitude at once: 0 turns
    augmentation off, 1 uses the values below as written.
    """

    strength: float = 1.0
    rotation_degrees: float = 20.0
    crop_scale_min: float = 0.2  # RandomResizedCrop scale range is [crop_scale_min, 1]
    crop_ratio_max: float = 4 / 3  # ... and aspect-ratio range [1 / crop_ratio_max, crop_ratio_max]
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    color_jitter_p: float = 0.5
    color_jitter: float = 0.2  # brightness, contrast and saturation factor
    color_jitter_hue: float = 0.0  # hue costs as much as the rest of the jitter on CPU
    jpeg_p: float = 0.3
    jpeg_quality_min: float = 50.0  # JPEG re-compression quality range is [jpeg_quality_min, 95]
    blur_p: float = 0.2
    noise_p: float = 0.2
    noise_std: float = 0.03

    def check(self) -> list[str]:
        problems = []
        if self.strength < 0:
            problems.append(f"strength: must be >= 0, got {self.strength}")
        for name in ("hflip_p", "vflip_p", "color_jitter_p", "jpeg_p", "blur_p", "noise_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name}: must be a probability in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            problems.append(f"crop_scale_min: must be in (0, 1], got {self.crop_scale_min}")
        if not 0.0 <= self.rotation_degrees <= 180.0:
            problems.append(f"rotation_degrees: must be in [0, 180], got {self.rotation_degrees}")
        if not 1.0 <= self.jpeg_quality_min <= 95.0:
            problems.append(f"jpeg_quality_min: must be in [1, 95], got {self.jpeg_quality_min}")
        if self.color_jitter < 0 or self.noise_std < 0:
            problems.append("color_jitter/noise_std: must be >= 0")
        if not 0.0 <= self.color_jitter_hue <= 0.5:
            problems.append(f"color_jitter_hue: must be in [0, 0.5], got {self.color_jitter_hue}")
        if self.crop_ratio_max < 1.0:
            problems.append(f"crop_ratio_max: must be >= 1, got {self.crop_ratio_max}")
        return problems


@dataclass
class TrainingConfig:
    epochs: int = 12
    batch_size: int = 64  # global batch: split evenly over the processes of a multi-GPU run
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    grad_clip_norm: float = 1.0
    # Early stopping: epochs without improvement of the selection metric on VAL_SELECT.
    patience: int = 5
    selection_metric: Literal["mcc", "balanced_accuracy", "accuracy", "auroc"] = "mcc"
    # Weight the loss so both classes count equally (the data is ~4:1, deployment is 50/50).
    balance_classes: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_threads: int = 0  # 0: let torch decide
    seed: int = 0
    # Learning rate of block i (of n) is lr * layer_decay ** (n - i); 1.0 turns it off (random init), 0.65-0.75
    # suits pretrained DINOv2 backbones.
    layer_decay: float = 1.0
    # Train only the head for this many epochs first (a warm start for pretrained backbones).
    freeze_backbone_epochs: int = 0
    # Exponential moving average of the weights; 0 turns it off. When on, selection and outputs use the EMA.
    ema_decay: float = 0.0
    compile: bool = False  # torch.compile the model (GPU; compile time is paid once per run)
    # Bit-identical results on CPU (and a resumed run equal to an uninterrupted one); slower on GPU.
    deterministic: bool = False
    # Deployment P(roadwork). The head bias is shifted from the prior the loss trained for to this one.
    deployment_prior: float = 0.5
    prior_correction: bool = True
    # Multi-view inference (1 global view + a 3x3 grid of local views, ~10x cost): "select" compares it
    # with single-view on VAL_SELECT and keeps the better; "single"/"multi" force a choice.
    multiview: Literal["select", "single", "multi"] = "select"
    multiview_aggregation: Literal["mean_prob", "mean_logit", "max"] = "mean_prob"
    # Preemption: training state is saved here every epoch and every checkpoint_every_minutes (0: every
    # step), under a key of this config and the input data, and a restarted task resumes from it. A
    # local/PVC path or gs://bucket/prefix; "" saves nothing (a restart starts over).
    resume_dir: str = ""
    checkpoint_every_minutes: float = 10.0
    log_every_seconds: float = 30.0  # periodic progress line within an epoch
    # Processes (one per GPU) for data-parallel training on one node; 0: one per visible GPU.
    num_processes: int = 1
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def check(self) -> list[str]:
        problems = []
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            problems.append(f"lr: must be > 0, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.precision == "fp16":
            problems.append(
                "precision: fp16 is refused: DINOv2 activations overflow fp16; use bf16 on GPU or fp32"
            )
        if not 0.0 < self.layer_decay <= 1.0:
            problems.append(f"layer_decay: must be in (0, 1], got {self.layer_decay}")
        if self.freeze_backbone_epochs < 0:
            problems.append(f"freeze_backbone_epochs: must be >= 0, got {self.freeze_backbone_epochs}")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay: must be in [0, 1) (0 turns EMA off), got {self.ema_decay}")
        if not 0.0 < self.deployment_prior < 1.0:
            problems.append(f"deployment_prior: must be in (0, 1), got {self.deployment_prior}")
        if self.checkpoint_every_minutes < 0 or self.log_every_seconds < 0:
            problems.append("checkpoint_every_minutes/log_every_seconds: must be >= 0")
        if self.num_processes < 0:
            problems.append(f"num_processes: must be >= 0 (0: one per GPU), got {self.num_processes}")
        elif self.num_processes > 1 and self.batch_size % self.num_processes:
            problems.append(
                f"batch_size: {self.batch_size} does not split evenly over num_processes={self.num_processes}"
            )
        return problems


@dataclass
class CalibrationConfig:
    method: Literal["temperature"] = "temperature"
    # Selective guarantee: accepted-set error <= target_risk with probability >= 1 - delta.
    target_risk: float = 0.05
    delta: float = 0.05

    def check(self) -> list[str]:
        problems = []
        if not 0.0 < self.target_risk < 1.0:
            problems.append(f"target_risk: must be in (0, 1), got {self.target_risk}")
        if not 0.0 < self.delta < 1.0:
            problems.append(f"delta: must be in (0, 1), got {self.delta}")
        return problems


@dataclass
class EvaluationConfig:
    ece_bins: int = 15
    batch_size: int = 128

    def check(self) -> list[str]:
        return [] if self.ece_bins >= 2 else [f"ece_bins: must be >= 2, got {self.ece_bins}"]


@dataclass
class PipelineConfig:
    name: str = "streetvision-stage1"
    phases: list[str] = field(default_factory=lambda: list(PHASE_NAMES))

    def check(self) -> list[str]:
        unknown = [p for p in self.phases if p not in PHASE_NAMES and p != "all"]
        if unknown:
            return [f"phases: unknown phase(s) {unknown}; available: {list(PHASE_NAMES)} or all"]
        return []


@dataclass
class TaskResources:
    cpu: str = "2"
    memory: str = "8G"
    gpus: int = 0

    def check(self) -> list[str]:
        return [] if self.gpus >= 0 else [f"gpus: must be >= 0, got {self.gpus}"]


@dataclass
class ClusterConfig:
    """Where compiled pipelines run. Ignored by the local runner."""

    accelerator: Literal["none", "h100", "a100"] = "h100"
    gpu_image: str = "ghcr.io/streetvision/stage1:0.1.0"
    cpu_image: str = "ghcr.io/streetvision/stage1-cpu:0.1.0"
    ingest: TaskResources = field(default_factory=lambda: TaskResources(cpu="8", memory="32G"))
    phase1: TaskResources = field(default_factory=lambda: TaskResources(cpu="12", memory="96G", gpus=1))
    phase2: TaskResources = field(default_factory=lambda: TaskResources(cpu="2", memory="4G"))
    phase6: TaskResources = field(default_factory=lambda: TaskResources(cpu="2", memory="8G"))
    evaluate: TaskResources = field(default_factory=lambda: TaskResources(cpu="8", memory="32G", gpus=1))

    def resources_for(self, phase: str) -> TaskResources:
        return getattr(self, phase)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
