"""Typed configuration: one dataclass per group, validated as a whole.

The dataclass defaults below are the config's defaults, and the only place they are written: ``Config()``
is what ``load_config()`` returns without overrides (the bundled demo, sized for a 2-core laptop). Presets
(``defaults/<group>/<name>.yaml``, e.g. ``training=gpu``) hold only what they change. A group's optional
``check()`` returns its own value problems, named relative to the group (the loader prefixes the path), so
every problem can be reported at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from streetvision.phases.registry import DEFAULT_PHASES, PHASE_NAMES, default_resources


@dataclass
class ModelConfig:
    """A timm architecture, optionally shrunk (depth/width) for CPU demos and tests.

    The defaults are the demo's DINOv2-architecture ViT shrunk for CPU (random init, 64 px, 4 blocks of width
    192: the `demo_tiny` preset); `model=vit_small` and `model=vit_base` pick the real backbones at 224 px.
    """

    name: str = "vit_small_patch14_dinov2"
    # "none": random init; "hub": timm's pretrained weights for `name` (needs network);
    # anything else: a local .safetensors/.pt file with a state dict for this architecture.
    weights: str = "none"
    img_size: int = 64
    # Shrinking the architecture; null (None) keeps the architecture's own value.
    patch_size: int | None = 8
    depth: int | None = 4
    embed_dim: int | None = 192
    num_heads: int | None = 3
    head_dropout: float = 0.3

    def check(self) -> list[str]:
        problems = []
        if self.img_size < 16:
            problems.append(f"img_size: must be >= 16, got {self.img_size}")
        if self.patch_size is not None and self.img_size % self.patch_size:
            problems.append(f"img_size: {self.img_size} is not a multiple of model.patch_size={self.patch_size}")
        if self.embed_dim is not None and self.num_heads is not None and self.embed_dim % self.num_heads:
            problems.append(f"embed_dim: {self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.head_dropout < 1.0:
            problems.append(f"head_dropout: must be in [0, 1), got {self.head_dropout}")
        return problems


@dataclass
class DemoConfig:
    """Procedural street scenes generated at ingest (deterministic for a given seed)."""

    num_sequences: int = 420  # dashcam sequences; the frames of one sequence share a group id
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
                f"frames_min/frames_max: need 1 <= frames_min <= frames_max, got {self.frames_min}/{self.frames_max}"
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


SOURCE_KINDS = ("demo", "folder", "manifest", "parquet")


@dataclass
class SourceConfig:
    """One input source. `path` is local or gs://bucket/prefix.

    folder: <path>/<label name>/**/*.jpg|jpeg|png|webp; manifest: a CSV or JSONL file (path or uri, label,
    optional group_id, optional source); parquet: a .parquet file or a folder/prefix of them (image bytes
    column, label column, optional id/group/source columns); demo: the generated demo scenes.
    """

    kind: Literal["demo", "folder", "manifest", "parquet"] = "folder"
    path: str = ""
    # Prefix of this source's sample ids and group ids, and its default source tag (default: the kind).
    name: str = ""
    # Extra label spellings, beside 0/1 and data.label_names (e.g. folder names): mapped to 0 / 1.
    negative_labels: list[str] = field(default_factory=list)
    positive_labels: list[str] = field(default_factory=list)
    # parquet only (defaults match the NATIX roadwork dataset: an `image` struct with `bytes`, `label` 0/1).
    image_column: str = "image"
    label_column: str = "label"
    id_column: str = ""  # empty: <file name>/<row number>
    group_column: str = ""  # empty: each row is its own group (near-duplicate search still joins them)
    source_column: str = ""  # empty: the source name

    def display_name(self) -> str:
        return self.name or self.kind

    def check(self) -> list[str]:
        problems = []
        if self.kind != "demo" and not self.path:
            problems.append(f"path: required for a {self.kind} source (local path or gs://bucket/prefix)")
        if "/" in self.name or ":" in self.name:
            problems.append(f"name: must not contain '/' or ':', got {self.name!r}")
        overlap = set(self.negative_labels) & set(self.positive_labels)
        if overlap:
            problems.append(f"negative_labels/positive_labels: {sorted(overlap)} in both")
        return problems


@dataclass
class DedupeConfig:
    """Exact duplicates (same decoded pixels) and near duplicates (perceptual hash) join one group."""

    # Max Hamming distance between 64-bit pHashes that counts as a near duplicate; -1 turns the search off.
    near_duplicate_radius: int = 8
    # Exact duplicates whose labels disagree: quarantine all of them, or keep the majority label's records
    # (a tie quarantines all).
    label_conflict: Literal["quarantine", "majority"] = "quarantine"

    def check(self) -> list[str]:
        if not -1 <= self.near_duplicate_radius <= 16:
            return [f"near_duplicate_radius: must be in [-1, 16], got {self.near_duplicate_radius}"]
        return []


@dataclass
class DataConfig:
    # One source: "demo" (generated scenes), "manifest" (data.manifest), "folder" or "parquet" (data.path).
    # Several sources: "sources", listed in data.sources (each record is tagged with its source).
    source: Literal["demo", "manifest", "folder", "parquet", "sources"] = "demo"
    manifest: str = ""  # CSV/JSONL with path,label[,group_id,source] (local or gs://)
    path: str = ""  # the folder or parquet location (local or gs://bucket/prefix)
    sources: list[SourceConfig] = field(default_factory=list)  # [{kind: parquet, path: gs://b/natix, name: natix}, ...]
    label_names: list[str] = field(default_factory=lambda: ["no_roadwork", "roadwork"])
    min_image_size: int = 32  # smaller images are quarantined
    # Share of input records that may be quarantined before ingest fails the run.
    max_quarantine_fraction: float = 0.05
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)
    # Images per cache shard (at 224 px, 2048 images are ~300 MB).
    shard_images: int = 2048
    # Decode threads (0: all cores) and parallel reads from storage.
    workers: int = 0
    io_workers: int = 32
    # Thumbnails per class in the data report.
    report_thumbnails: int = 24
    demo: DemoConfig = field(default_factory=DemoConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def source_list(self) -> list[SourceConfig]:
        """The configured sources as a list, whichever form the config used."""
        if self.source == "sources":
            return list(self.sources)
        if self.source == "manifest":
            return [SourceConfig(kind="manifest", path=self.manifest)]
        if self.source in ("folder", "parquet"):
            return [SourceConfig(kind=self.source, path=self.path)]
        return [SourceConfig(kind="demo")]

    def check(self) -> list[str]:
        problems = []
        if self.source == "manifest" and not self.manifest:
            problems.append("manifest: required when data.source=manifest (a CSV or JSONL path, or gs:// URI)")
        if self.source in ("folder", "parquet") and not self.path:
            problems.append(f"path: required when data.source={self.source} (a folder or gs://bucket/prefix)")
        if self.source == "sources":
            if not self.sources:
                problems.append("sources: list at least one source when data.source=sources")
            names = [s.display_name() for s in self.sources]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                problems.append(f"sources: names {repeated} repeat; give each source a distinct name")
            for i, src in enumerate(self.sources):
                problems += [f"sources[{i}].{p}" for p in src.check()]
        elif self.sources:
            problems.append(f"sources: only read when data.source=sources, but data.source={self.source}")
        if len(self.label_names) != 2 or len(set(self.label_names)) != 2:
            problems.append(f"label_names: need two distinct names [negative, positive], got {self.label_names}")
        if not 0.0 <= self.max_quarantine_fraction <= 1.0:
            problems.append(f"max_quarantine_fraction: must be in [0, 1], got {self.max_quarantine_fraction}")
        for name in ("shard_images", "io_workers"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            problems.append(f"workers: must be >= 0 (0: all cores), got {self.workers}")
        if self.report_thumbnails < 0:
            problems.append(f"report_thumbnails: must be >= 0, got {self.report_thumbnails}")
        return problems


@dataclass
class AugmentConfig:
    """Per-sample training augmentation (``streetvision.training.augment``): JPEG re-compression in the threads
    that read batches, the rest on whole batches on the model's device.

    The defaults are the demo's light, CPU-cheap recipe (crops, horizontal flips, colour jitter); the
    `training=gpu` preset turns on the deployment challenges (the validators rotate, crop, flip, re-compress,
    blur, add noise and change colours). ``strength`` scales every probability and magnitude at once: 0 turns
    augmentation off, 1 uses the values below as written.
    """

    strength: float = 1.0
    rotation_degrees: float = 0.0
    crop_scale_min: float = 0.6  # RandomResizedCrop scale range is [crop_scale_min, 1]
    crop_ratio_max: float = 1.25  # ... and aspect-ratio range [1 / crop_ratio_max, crop_ratio_max]
    hflip_p: float = 0.5
    vflip_p: float = 0.0
    color_jitter_p: float = 0.5
    color_jitter: float = 0.2  # brightness, contrast and saturation factor
    color_jitter_hue: float = 0.02  # hue costs as much as the rest of the jitter on CPU
    jpeg_p: float = 0.0
    jpeg_quality_min: float = 50.0  # JPEG re-compression quality is drawn per sample from [jpeg_quality_min, 95]
    blur_p: float = 0.0
    noise_p: float = 0.0
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
    epochs: int = 20
    batch_size: int = 64  # global batch: split evenly over the processes of a multi-GPU run
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    grad_clip_norm: float = 1.0
    # Early stopping: epochs without improvement of the selection metric on VAL_SELECT.
    patience: int = 8
    selection_metric: Literal["mcc", "balanced_accuracy", "accuracy", "auroc"] = "mcc"
    # Weight the loss so both classes count equally (the data is ~4:1, deployment is 50/50).
    balance_classes: bool = True
    # Where tasks with GPUs (cluster.<phase>.gpus > 0) compute: auto = CUDA when visible, else CPU; cuda = fail
    # without a visible GPU. Tasks without GPUs (ingest, phase 2, 5, 6 by default) always run on CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16 on GPU; fp16 is refused (DINOv2 overflows it)
    num_threads: int = 0  # 0: let torch decide
    seed: int = 0
    # Learning rate of block i (of n) is lr * layer_decay ** (n - i); 1.0 turns it off (random init), 0.65-0.75
    # suits pretrained DINOv2 backbones.
    layer_decay: float = 1.0
    # Train only the head for this many epochs first (a warm start for pretrained backbones).
    freeze_backbone_epochs: int = 0
    # Exponential moving average of the weights; 0 turns it off (e.g. 0.999 for long GPU runs). When on,
    # selection and outputs use the EMA.
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
            problems.append("precision: fp16 is refused: DINOv2 activations overflow fp16; use bf16 on GPU or fp32")
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
    # auto: the lowest cross-validated NLL inside VAL_CALIB among the five methods.
    method: Literal["auto", "temperature", "platt", "isotonic", "histogram", "beta"] = "auto"
    cv_folds: int = 5
    histogram_bins: int = 10
    # Selective guarantee: accepted-set error <= target_risk with probability >= 1 - delta.
    target_risk: float = 0.05
    delta: float = 0.05
    # SCRC (phase 5): share of images selected by confidence, and share of VAL_CALIB used to set that cut.
    scrc_selection_rate: float = 0.8
    scrc_selection_fraction: float = 0.3
    seed: int = 0

    def check(self) -> list[str]:
        problems = []
        if not 0.0 < self.target_risk < 1.0:
            problems.append(f"target_risk: must be in (0, 1), got {self.target_risk}")
        if not 0.0 < self.delta < 1.0:
            problems.append(f"delta: must be in (0, 1), got {self.delta}")
        if self.cv_folds < 2:
            problems.append(f"cv_folds: must be >= 2, got {self.cv_folds}")
        if self.histogram_bins < 2:
            problems.append(f"histogram_bins: must be >= 2, got {self.histogram_bins}")
        for name in ("scrc_selection_rate", "scrc_selection_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                problems.append(f"{name}: must be in (0, 1), got {getattr(self, name)}")
        return problems


@dataclass
class GateConfig:
    """Phase 3: Gatekeeper fine-tuning (Rabanser et al., 2025) of the phase-1 model, then an SGR threshold."""

    # L = correct_weight * CE on correctly predicted samples + (1 - correct_weight) * KL(p || uniform) on the rest.
    correct_weight: float = 0.5
    epochs: int = 3
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 64
    # 0: the classifier head only; k: also the last k transformer blocks (and the final norm).
    unfreeze_blocks: int = 0
    seed: int = 0

    def check(self) -> list[str]:
        problems = []
        if not 0.0 <= self.correct_weight <= 1.0:
            problems.append(f"correct_weight: must be in [0, 1], got {self.correct_weight}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            problems.append(f"lr: must be > 0, got {self.lr}")
        if self.unfreeze_blocks < 0:
            problems.append(f"unfreeze_blocks: must be >= 0, got {self.unfreeze_blocks}")
        return problems


@dataclass
class BlessingConfig:
    """Pass/fail rules on VAL_TEST metrics; a cluster pipeline can gate publishing on the verdict.

    A bound left empty (null) is not checked. `judge: lower_bound` compares the lower end of each metric's
    bootstrap interval (upper end for ECE) instead of the point estimate: a stricter, honest-er verdict.
    """

    require_above_majority: bool = True
    min_accuracy: float | None = None
    min_mcc: float | None = None
    min_auroc: float | None = None
    max_ece: float | None = None
    min_coverage: float | None = None
    judge: Literal["point", "lower_bound"] = "point"


@dataclass
class EvaluationConfig:
    ece_bins: int = 15
    batch_size: int = 128
    # Confidence intervals on every VAL_TEST metric (scipy.stats.bootstrap).
    bootstrap_resamples: int = 1000
    bootstrap_method: Literal["BCa", "percentile", "basic"] = "BCa"
    confidence_level: float = 0.95
    # Deployment-style re-rendering of VAL_TEST (see streetvision.challenge.LEVELS); [] turns it off.
    challenge_levels: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    challenge_size: int = 224
    seed: int = 0
    blessing: BlessingConfig = field(default_factory=BlessingConfig)

    def check(self) -> list[str]:
        problems = [] if self.ece_bins >= 2 else [f"ece_bins: must be >= 2, got {self.ece_bins}"]
        if self.bootstrap_resamples < 50:
            problems.append(f"bootstrap_resamples: must be >= 50 for a usable interval, got {self.bootstrap_resamples}")
        if not 0.5 < self.confidence_level < 1.0:
            problems.append(f"confidence_level: must be in (0.5, 1), got {self.confidence_level}")
        bad_levels = [level for level in self.challenge_levels if level not in (0, 1, 2, 3)]
        if bad_levels:
            problems.append(f"challenge_levels: {bad_levels} not in 0..3")
        if self.challenge_size < 16:
            problems.append(f"challenge_size: must be >= 16, got {self.challenge_size}")
        return problems


@dataclass
class ExploraConfig:
    """Phase 4 (ExPLoRA): continue DINOv2's self-supervised objective on TRAIN (+ an unlabelled pool) with
    LoRA/DoRA on the attention projections and the last blocks unfrozen, before phase 1. Off unless phase4
    is selected. Device and precision come from `training` (same hardware as phase 1).

    Defaults are sized for the CPU demo; DINOv2's own heads use prototypes=65536, hidden_dim=2048,
    bottleneck_dim=256, and ExPLoRA trains for thousands of steps on GPU.
    """

    adapter: Literal["lora", "dora"] = "lora"
    rank: int = 64
    alpha: float = 64.0  # LoRA scale = alpha / rank
    dropout: float = 0.0
    # Linear layers inside each adapted block (timm fuses Q, K and V into `attn.qkv`).
    target_modules: list[str] = field(default_factory=lambda: ["attn.qkv"])
    unfreeze_last_blocks: int = 1
    unfreeze_norms: bool = True
    steps: int = 30
    batch_size: int = 32
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_steps: int = 5
    weight_decay: float = 0.04
    grad_clip_norm: float = 3.0
    # Multi-crop: 2 global views at model.img_size plus `local_crops` small views.
    global_crop_scale: list[float] = field(default_factory=lambda: [0.32, 1.0])
    local_crops: int = 4
    local_crop_size: int = 0  # px; 0: 7/16 of model.img_size, rounded down to a multiple of the patch size
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.32])
    # Fresh projection heads (DINOv2: 65536 / 2048 / 256).
    prototypes: int = 2048
    hidden_dim: int = 256
    bottleneck_dim: int = 128
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    teacher_temp_start: float = 0.04  # linear warm-up to teacher_temp
    teacher_temp_warmup_steps: int = 10
    center_momentum: float = 0.9
    ema_momentum: float = 0.994  # teacher EMA, cosine-scheduled to 1.0
    ibot: bool = True
    ibot_weight: float = 1.0
    ibot_mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])
    ibot_mask_probability: float = 0.5
    koleo: bool = True
    koleo_weight: float = 0.1
    # Unlabelled target-domain images: a local folder or gs:// prefix (searched recursively for JPEG/PNG/WebP);
    # "" for none.
    pool_source: str = ""
    pool_max_images: int = 0  # 0: all
    # Which network becomes the adapted backbone: the EMA teacher (DINOv2 evaluates the teacher) or the student.
    export: Literal["teacher", "student"] = "teacher"
    # Evidence: probes on frozen features, fitted on TRAIN and scored on VAL_SELECT, before and after.
    probe: Literal["knn", "linear", "both"] = "both"
    knn_k: int = 20
    log_every: int = 10
    checkpoint_every: int = 10  # steps between resumable checkpoints (cluster retries resume from the last)
    seed: int = 0

    def check(self) -> list[str]:
        problems = []
        for name in (
            "rank",
            "steps",
            "batch_size",
            "prototypes",
            "hidden_dim",
            "bottleneck_dim",
            "knn_k",
            "log_every",
            "checkpoint_every",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in (
            "unfreeze_last_blocks",
            "local_crops",
            "local_crop_size",
            "warmup_steps",
            "teacher_temp_warmup_steps",
            "pool_max_images",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 2 and self.koleo:
            problems.append("batch_size: KoLeo needs at least 2 images per batch (or set koleo=false)")
        if not self.target_modules:
            problems.append("target_modules: name at least one linear layer, e.g. [attn.qkv]")
        for name in ("global_crop_scale", "local_crop_scale", "ibot_mask_ratio"):
            pair = getattr(self, name)
            if len(pair) != 2 or not 0.0 < pair[0] <= pair[1] <= 1.0:
                problems.append(f"{name}: need [low, high] with 0 < low <= high <= 1, got {pair}")
        for name in ("lr", "student_temp", "teacher_temp", "teacher_temp_start"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}: must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr <= self.lr:
            problems.append(f"min_lr: must be in [0, lr={self.lr}], got {self.min_lr}")
        for name in ("center_momentum", "ema_momentum", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.ibot_mask_probability <= 1.0:
            problems.append(f"ibot_mask_probability: must be in [0, 1], got {self.ibot_mask_probability}")
        if "://" in self.pool_source and not self.pool_source.startswith("gs://"):
            problems.append(f"pool_source: a local folder or a gs:// prefix, got {self.pool_source!r}")
        return problems


@dataclass
class PipelineConfig:
    name: str = "streetvision-stage1"
    phases: list[str] = field(default_factory=lambda: list(DEFAULT_PHASES))

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


# URI schemes KFP accepts for a pipeline root.
OBJECT_STORE_SCHEMES = ("gs://", "s3://", "minio://")


@dataclass
class ClusterConfig:
    """Where compiled pipelines run. Ignored by the local runner."""

    accelerator: Literal["none", "h100", "a100"] = "h100"
    # The component images. "": the images built from this checkout, <image_registry>/stage1[-cpu]:<version>-
    # <content digest> (what `python images/build.py build` tags); set both to run other, pinned images.
    image_registry: str = "ghcr.io/streetvision"
    gpu_image: str = ""
    cpu_image: str = ""
    # The Kubernetes service account pipeline pods run as (manifests/base creates it and annotates it for
    # Workload Identity, so bucket access needs no key in the YAML or the repo). Used by `streetvision submit`.
    service_account: str = "streetvision-pipeline"
    # Where KFP keeps a run's artifacts, e.g. gs://bucket/pipeline-root; "" means the cluster's default.
    pipeline_root: str = ""
    # Stable per-run location for training checkpoints, so a retried task resumes: a PVC mounted at
    # checkpoint_root (checkpoint_pvc), or, with checkpoint_pvc "", a gs:// prefix. Each run writes under
    # <checkpoint_root>/<KFP run id>/<phase> (see streetvision.cluster_env).
    checkpoint_pvc: str = "streetvision-checkpoints"
    checkpoint_root: str = "/mnt/checkpoints"
    # A Kubernetes secret holding a GCP service-account key (`key.json`), for clusters without Workload
    # Identity; "" (the default) relies on the pod's identity.
    gcp_credentials_secret: str = ""
    # Retries of a failed (e.g. preempted) task; phase 1 resumes from its checkpoints.
    retries: int = 3
    retry_backoff: str = "120s"
    # Put GPU phases on spot (preemptible) nodes: GKE's cloud.google.com/gke-spot label and taint.
    spot: bool = False
    # /dev/shm for GPU phases (PyTorch data workers and NCCL need more than the container default of 64 MiB).
    shm_size: str = "16Gi"
    ingest: TaskResources = field(default_factory=lambda: TaskResources(**default_resources("ingest")))
    phase1: TaskResources = field(default_factory=lambda: TaskResources(**default_resources("phase1")))
    phase4: TaskResources = field(default_factory=lambda: TaskResources(**default_resources("phase4")))
    phase2: TaskResources = field(default_factory=lambda: TaskResources(**default_resources("phase2")))
    phase3: TaskResources = field(default_factory=lambda: TaskResources(**default_resources("phase3")))
    phase5: TaskResources = field(default_factory=lambda: TaskResources(**default_resources("phase5")))
    phase6: TaskResources = field(default_factory=lambda: TaskResources(**default_resources("phase6")))
    evaluate: TaskResources = field(default_factory=lambda: TaskResources(**default_resources("evaluate")))

    def resources_for(self, phase: str) -> TaskResources:
        return getattr(self, phase)

    def check(self) -> list[str]:
        problems = []
        for name in ("gpu_image", "cpu_image"):
            image = getattr(self, name)
            tag = image.rsplit("/", 1)[-1].partition(":")[2] if "@" not in image else "digest"
            if image and (not tag or tag == "latest"):
                problems.append(
                    f'{name}: pin an immutable tag or digest (e.g. ...:0.1.0-<digest>), or "" for '
                    f"the images built from this checkout; got {image!r}"
                )
        if self.pipeline_root and not self.pipeline_root.startswith(OBJECT_STORE_SCHEMES):
            problems.append(
                f'pipeline_root: must be an object-store URI ({", ".join(OBJECT_STORE_SCHEMES)}...) or "", '
                f"got {self.pipeline_root!r}"
            )
        if self.checkpoint_pvc and not self.checkpoint_root.startswith("/"):
            problems.append(
                f"checkpoint_root: with checkpoint_pvc set it is the PVC's mount path and must be absolute, "
                f'got {self.checkpoint_root!r} (or set checkpoint_pvc="" to use a gs:// prefix)'
            )
        if not self.checkpoint_pvc and self.checkpoint_root and not self.checkpoint_root.startswith("gs://"):
            problems.append(
                f'checkpoint_root: without checkpoint_pvc it must be a gs:// prefix (or "" for no resume '
                f"location), got {self.checkpoint_root!r}"
            )
        if self.retries < 0:
            problems.append(f"retries: must be >= 0, got {self.retries}")
        if not re.fullmatch(r"\d+[smh]", self.retry_backoff):
            problems.append(f"retry_backoff: a duration like 30s, 5m or 1h, got {self.retry_backoff!r}")
        if not re.fullmatch(r"\d+(Ki|Mi|Gi)", self.shm_size):
            problems.append(f"shm_size: a Kubernetes quantity like 512Mi or 16Gi, got {self.shm_size!r}")
        return problems


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    explora: ExploraConfig = field(default_factory=ExploraConfig)
