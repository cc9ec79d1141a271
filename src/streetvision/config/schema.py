"""Typed configuration: one pydantic model per group.

The defaults below are the config's defaults, and the only place they are written: ``Config()`` is what
``load_config()`` returns without overrides (the bundled demo, sized for a 2-core laptop). Presets
(``defaults/<group>/<name>.yaml``, e.g. ``training=gpu``) hold only what they change. Types are strict (no
``"1"`` for an int, no ``true`` for a number) and unknown keys are errors. A value's own range is a field
constraint. A rule across fields is a validator of the later field, reading the earlier ones it compares with
from ``info.data`` (so it runs even when other fields of its group fail, and every problem shows at once; it is
skipped when a field it reads failed). The loader turns pydantic's errors into one
:class:`~streetvision.config.loader.ConfigError`, one line per problem.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails

from streetvision.contracts.errors import ContractError
from streetvision.phase_graph import resolve_phases
from streetvision.registry import DEFAULT_PHASES, PHASE_NAMES, default_resources

# URI schemes KFP accepts for a pipeline root.
OBJECT_STORE_SCHEMES = ("gs://", "s3://", "minio://")

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]  # strictly between 0 and 1
Unit = Annotated[float, Field(ge=0.0, lt=1.0)]  # [0, 1): dropout, momentum, decay
UnitRange = list[float]  # [low, high] inside (0, 1] (crop scales, mask ratios): see ExploraConfig._unit_range


class Group(BaseModel):
    """A config group: strict types, no unknown keys, rules checked on defaults too."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)

    @classmethod
    def group_keys(cls) -> dict[str, FieldInfo]:
        """The group's keys and their fields: its model fields (ClusterConfig adds one key per phase)."""
        return dict(cls.model_fields)


def _checked(value, *problems: object):
    """`value`, or the first broken rule raised (a message; a rule that holds is falsy): pydantic names the field."""
    for problem in problems:
        if problem:
            raise ValueError(problem)
    return value


def _number_as_text(value):
    """`cpu=4` reaches the config as the YAML int 4; a quantity is its text, so a plain number is read as one."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _positive_quantity(value: str) -> str:
    return _checked(value, float(value.rstrip("mKMGTPEi") or 0) <= 0 and f"must be more than 0, got {value!r}")


# Kubernetes resource quantities (resource.Quantity) that KFP's compiler also accepts: the compiler's
# set_cpu_*/set_memory_* refuse parts of the Kubernetes grammar (exponents, fractional bytes, "k"), and the
# cluster refuses "K", which the compiler lets through. A value outside both would pass here and crash later.
CpuQuantity = Annotated[
    str,
    BeforeValidator(_number_as_text),
    Field(pattern=r"^(\d+(\.\d+)?|\d+m)$", description="a Kubernetes CPU quantity like 2, 0.5 or 500m"),
    AfterValidator(_positive_quantity),
]
MemoryQuantity = Annotated[
    str,
    BeforeValidator(_number_as_text),
    Field(
        pattern=r"^\d+(Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$",
        description="a Kubernetes memory quantity: whole bytes, or a whole number with a suffix like 512Mi or 8G",
    ),
    AfterValidator(_positive_quantity),
]


def is_vit(model_name: str) -> bool:
    """Whether a timm model name is a vision transformer (the family phase 4 and the shrink keys need)."""
    return "vit" in model_name or model_name.startswith(("deit", "eva", "beit"))


class ModelConfig(Group):
    """A timm architecture, optionally shrunk (depth/width, ViTs only) for CPU demos and tests.

    The default is the from-scratch CPU recipe's model: timm's smallest ResNet-D (`test_resnet`: one block per
    stage, widths 32-96, 0.37M parameters), random init, 64 px. A small CNN learns from ~1,000 images in minutes
    on CPU, where a ViT from scratch does not (benchmarks/quality_vs_peers.py). `model=vit_tiny` picks a shrunk
    DINOv2-architecture ViT; `model=vit_small` and `model=vit_base` the real pretrained backbones at 224 px (the
    cluster overlays' choice).
    """

    name: str = "test_resnet"
    # "none": random init; "hub": timm's pretrained weights for `name` (needs network);
    # anything else: a local .safetensors/.pt file with a state dict for this architecture.
    weights: str = "none"
    img_size: int = Field(64, ge=16)
    # Shrinking a ViT; null (None) keeps the architecture's own value (and is the only value a CNN takes).
    patch_size: int | None = Field(None, gt=0)
    depth: int | None = Field(None, gt=0)
    embed_dim: int | None = Field(None, gt=0)
    num_heads: int | None = Field(None, gt=0)
    head_dropout: Unit = 0.3

    @field_validator("patch_size", "depth", "embed_dim", "num_heads")
    @classmethod
    def _vit_only(cls, value: int | None, info: ValidationInfo) -> int | None:
        name = info.data.get("name", "")
        return _checked(
            value,
            value is not None
            and not is_vit(name)
            and f"shrinks a ViT only; model.name={name} takes none (pick model=vit_tiny for the shrunk ViT)",
        )

    @field_validator("patch_size")
    @classmethod
    def _divides_img_size(cls, patch: int | None, info: ValidationInfo) -> int | None:
        img = info.data.get("img_size")
        return _checked(patch, patch and img and img % patch and f"{patch} does not divide model.img_size={img}")

    @field_validator("num_heads")
    @classmethod
    def _divides_embed_dim(cls, heads: int | None, info: ValidationInfo) -> int | None:
        dim = info.data.get("embed_dim")
        return _checked(heads, heads and dim and dim % heads and f"{heads} does not divide model.embed_dim={dim}")


class DemoConfig(Group):
    """Procedural street scenes generated at ingest (deterministic for a given seed)."""

    # Dashcam sequences; the frames of one sequence share a group id. 1,000 short ones (1-3 frames, about
    # 2,000 frames), what the main job's 5 minutes on 2 cores allow: many short sequences, so VAL_TEST accuracy
    # moves less with the split (seeds 0-2: 600 of 2-6 frames varied 0.037; seeds 0-4: 1,000 of 1-3 frames
    # 0.025, 1,200 of 1-3 frames 0.012 but too close to the budget). 1 % flipped labels: with 2 %, the flips
    # were about half of the errors among the most confident VAL_CALIB renders, and two runs in seven certified
    # nothing at the default target, one of them the most accurate (benchmarks/demo_seeds.py).
    num_sequences: int = Field(1000, ge=8, description="need at least 8 for four splits")
    frames_min: int = Field(1, ge=1)
    frames_max: int = Field(3, ge=1)
    roadwork_fraction: Fraction = 0.8
    label_noise: float = Field(0.01, ge=0.0, lt=0.5)
    width: int = Field(160, ge=32)
    height: int = Field(120, ge=32)
    jpeg_quality: int = Field(90, ge=1, le=100)
    seed: int = Field(0, ge=0)  # numpy's generators take non-negative seeds

    @field_validator("frames_max")
    @classmethod
    def _at_least_frames_min(cls, frames_max: int, info: ValidationInfo) -> int:
        low = info.data.get("frames_min", frames_max)
        return _checked(frames_max, low > frames_max and f"need frames_min <= frames_max, got {low}/{frames_max}")


class SplitConfig(Group):
    """Group-aware split, balanced per class (streetvision.data.splits.assign_splits): groups in a seeded hash
    order, boundaries at the target counts."""

    train: float = Field(0.7, gt=0.0, le=1.0)
    val_select: float = Field(0.1, gt=0.0, le=1.0)
    val_calib: float = Field(0.1, gt=0.0, le=1.0)
    val_test: float = Field(0.1, gt=0.0, le=1.0)
    seed: int = 0
    # Floors in images: on small data VAL_SELECT and VAL_CALIB grow to these (taken from TRAIN, which keeps at
    # least min_train_fraction). Model selection on ~150 images is noise, and a 5 % risk target needs ~60-100
    # error-free accepted VAL_CALIB images before any threshold can be certified.
    min_val_select: int = Field(250, ge=0)
    min_val_calib: int = Field(300, ge=0)
    min_train_fraction: float = Field(0.5, gt=0.0, le=1.0)
    # balanced: shares and class ratios on target up to one group per boundary; adding data may move a few old
    # groups next to a boundary. stable: a fixed cut of the seeded hash, so adding data never moves an old group
    # (with the floors at 0: floors make the shares depend on the data size), shares within sampling noise.
    assignment: Literal["balanced", "stable"] = "balanced"
    # A group holding more than this share of the images is placed first, into the split furthest below its
    # target, and the data report warns about it (a near-duplicate group that big is suspicious).
    large_group_fraction: Fraction = 0.01

    def fractions(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in ("train", "val_select", "val_calib", "val_test")}

    @field_validator("val_test")
    @classmethod
    def _fractions_sum_to_one(cls, val_test: float, info: ValidationInfo) -> float:
        others = [info.data.get(k) for k in ("train", "val_select", "val_calib")]
        total = None if None in others else sum(float(v) for v in others if v is not None) + val_test
        return _checked(
            val_test,
            total and abs(total - 1.0) > 1e-6 and f"train+val_select+val_calib+val_test must sum to 1, got {total:.6f}",
        )


class SourceConfig(Group):
    """One input source. `path` is local or gs://bucket/prefix.

    folder: <path>/<label name>/**/*.jpg|jpeg|png|webp; manifest: a CSV or JSONL file (path or uri, label,
    optional group_id, optional source); parquet: a .parquet file or a folder/prefix of them (image bytes
    column, label column, optional id/group/source columns); demo: the generated demo scenes.
    """

    kind: Literal["demo", "folder", "manifest", "parquet"] = "folder"
    path: str = ""
    # Prefix of this source's sample ids and group ids, and its default source tag (default: the kind).
    name: str = Field("", pattern=r"^[^/:]*$", description="must not contain '/' or ':'")
    # Extra label spellings, beside 0/1 and data.label_names (e.g. folder names): mapped to 0 / 1.
    negative_labels: list[str] = []
    positive_labels: list[str] = []
    # parquet only (defaults match the NATIX roadwork dataset: an `image` struct with `bytes`, `label` 0/1).
    image_column: str = "image"
    label_column: str = "label"
    id_column: str = ""  # empty: <file name>/<row number>
    group_column: str = ""  # empty: each row is its own group (near-duplicate search still joins them)
    source_column: str = ""  # empty: the source name

    def display_name(self) -> str:
        return self.name or self.kind

    @field_validator("path")
    @classmethod
    def _required(cls, path: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind", "demo")
        return _checked(
            path, kind != "demo" and not path and f"required for a {kind} source (local path or gs://bucket/prefix)"
        )

    @field_validator("positive_labels")
    @classmethod
    def _not_negative(cls, positive: list[str], info: ValidationInfo) -> list[str]:
        overlap = sorted(set(positive) & set(info.data.get("negative_labels", [])))
        return _checked(positive, overlap and f"{overlap} also in negative_labels")


class DedupeConfig(Group):
    """Exact duplicates (same decoded pixels) and near duplicates (perceptual hash) join one group."""

    # Max Hamming distance between 64-bit pHashes that counts as a near duplicate; -1 turns the search off.
    near_duplicate_radius: int = Field(8, ge=-1, le=16)
    # Exact duplicates whose labels disagree: quarantine all of them, or keep the majority label's records
    # (a tie quarantines all).
    label_conflict: Literal["quarantine", "majority"] = "quarantine"


class DataConfig(Group):
    # One source: "demo" (generated scenes), "manifest" (data.manifest), "folder" or "parquet" (data.path).
    # Several sources: "sources", listed in data.sources (each record is tagged with its source).
    source: Literal["demo", "manifest", "folder", "parquet", "sources"] = "demo"
    manifest: str = ""  # CSV/JSONL with path,label[,group_id,source] (local or gs://)
    path: str = ""  # the folder or parquet location (local or gs://bucket/prefix)
    sources: list[SourceConfig] = []  # [{kind: parquet, path: gs://b/natix, name: natix}, ...]
    label_names: list[str] = ["no_roadwork", "roadwork"]
    min_image_size: int = Field(32, ge=1)  # smaller images are quarantined
    # A record's file is read up to this many bytes; a larger one is quarantined (too_large) unread, so a
    # device file or a runaway download cannot fill memory. 64 MiB holds any camera JPEG or PNG.
    max_record_bytes: int = Field(64 * 1024 * 1024, ge=1)
    # Manifest paths must stay under the manifest's folder (no ../, no absolute path, no symlink out of it),
    # so a manifest cannot make ingest read arbitrary files; true lifts that confinement.
    allow_outside_paths: bool = False
    # Share of input records that may be quarantined before ingest fails the run.
    max_quarantine_fraction: Probability = 0.05
    dedupe: DedupeConfig = DedupeConfig()
    # Images per cache shard (at 224 px, 2048 images are ~300 MB).
    shard_images: int = Field(2048, ge=1)
    # Decode threads (0: all cores) and parallel reads from storage.
    workers: int = Field(0, ge=0)
    io_workers: int = Field(32, ge=1)
    # Thumbnails per class in the data report.
    report_thumbnails: int = Field(24, ge=0)
    demo: DemoConfig = DemoConfig()
    split: SplitConfig = SplitConfig()

    def source_list(self) -> list[SourceConfig]:
        """The configured sources as a list, whichever form the config used."""
        if self.source == "sources":
            return list(self.sources)
        if self.source == "manifest":
            return [SourceConfig(kind="manifest", path=self.manifest)]
        if self.source in ("folder", "parquet"):
            return [SourceConfig(kind=self.source, path=self.path)]
        return [SourceConfig(kind="demo")]

    def uses_demo(self) -> bool:
        """Whether a source is the demo scenes, which the `streetvision_demo` package renders before a run."""
        return any(src.kind == "demo" for src in self.source_list())

    @field_validator("manifest")
    @classmethod
    def _manifest_required(cls, manifest: str, info: ValidationInfo) -> str:
        needed = info.data.get("source") == "manifest" and not manifest
        return _checked(manifest, needed and "required when data.source=manifest (a CSV or JSONL path, or gs:// URI)")

    @field_validator("path")
    @classmethod
    def _path_required(cls, path: str, info: ValidationInfo) -> str:
        source = info.data.get("source")
        return _checked(
            path,
            source in ("folder", "parquet")
            and not path
            and f"required when data.source={source} (a folder or gs://bucket/prefix)",
        )

    @field_validator("sources")
    @classmethod
    def _sources_when_listed(cls, sources: list[SourceConfig], info: ValidationInfo) -> list[SourceConfig]:
        source, names = info.data.get("source"), [s.display_name() for s in sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        return _checked(
            sources,
            source == "sources" and not sources and "list at least one source when data.source=sources",
            repeated and f"names {repeated} repeat; give each source a distinct name",
            source != "sources" and sources and f"only read when data.source=sources, but data.source={source}",
        )

    @field_validator("label_names")
    @classmethod
    def _two_distinct(cls, names: list[str]) -> list[str]:
        return _checked(
            names,
            (len(set(names)) != 2 or len(names) != 2) and f"need two distinct names [negative, positive], got {names}",
        )


class AugmentConfig(Group):
    """Per-sample training augmentation (``streetvision.training.augment``): JPEG re-compression in the threads
    that read batches, the rest on whole batches on the model's device.

    The defaults are the deployment challenges (the validators rotate, crop, flip, re-compress, blur, add noise
    and change colours; streetvision.challenge), for every recipe: the policy is certified on VAL_CALIB rendered
    that way, and a model that never saw such renders is confidently wrong on some of them (on the demo, the
    answered share of the deployment mix went from 0.24 to 0.54 with them, seed 0, before plain_share).
    ``strength`` scales every probability and magnitude at once: 0 turns augmentation off, 1 uses the values
    below as written; ``plain_share`` leaves a share of the samples plain.
    """

    strength: float = Field(1.0, ge=0.0)
    # Share of training samples left plain by every op but JPEG re-compression (which deployment's plain 224 px
    # JPEG, challenge level 0, applies too). Half: a model trained only on renders loses plain accuracy and
    # calibration, and half gains them back at the same deployment-mix coverage (load_digits, 3 seeds: plain
    # MCC 0.90 -> 0.99, ECE 0.043 -> 0.019, deployment coverage 0.73 -> 0.74).
    plain_share: Probability = 0.5
    rotation_degrees: float = Field(20.0, ge=0.0, le=180.0)
    crop_scale_min: float = Field(0.2, gt=0.0, le=1.0)  # RandomResizedCrop scale range is [crop_scale_min, 1]
    crop_ratio_max: float = Field(4 / 3, ge=1.0)  # ... and aspect-ratio range [1 / crop_ratio_max, crop_ratio_max]
    hflip_p: Probability = 0.5
    vflip_p: Probability = 0.5
    color_jitter_p: Probability = 0.5
    color_jitter: float = Field(0.2, ge=0.0)  # brightness, contrast and saturation factor
    color_jitter_hue: float = Field(0.0, ge=0.0, le=0.5)  # hue costs as much as the rest of the jitter on CPU
    jpeg_p: Probability = 0.3
    # JPEG re-compression quality is drawn per sample from [jpeg_quality_min, 95].
    jpeg_quality_min: float = Field(50.0, ge=1.0, le=95.0)
    blur_p: Probability = 0.2
    noise_p: Probability = 0.2
    noise_std: float = Field(0.03, ge=0.0)


class TrainingConfig(Group):
    epochs: int = Field(40, ge=1)  # the challenge augmentations need more epochs than plain images
    batch_size: int = Field(64, ge=1)  # global batch: split evenly over the processes of a multi-GPU run
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    label_smoothing: Unit = 0.1
    grad_clip_norm: float = Field(1.0, ge=0.0)  # 0: no clipping
    # Early stopping: epochs without improvement of the selection metric on VAL_SELECT. As long as the CPU
    # schedule: under augmentation that metric stalls for 10+ epochs before it climbs again, and stopping after
    # 8 cut most load_digits runs short (the best epoch is still the one kept).
    patience: int = Field(40, ge=1)
    selection_metric: Literal["mcc", "balanced_accuracy", "accuracy", "auroc"] = "mcc"
    # Weight the loss so both classes count equally (the data is ~4:1, deployment is 50/50).
    balance_classes: bool = True
    # Where tasks with GPUs (cluster.<phase>.gpus > 0) compute: auto = CUDA when visible, else CPU; cuda = fail
    # without a visible GPU. Tasks without GPUs (ingest, phase 2, 5, 6 by default) always run on CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16 on GPU; fp16 is refused (DINOv2 overflows it)
    num_threads: int = Field(0, ge=0)  # 0: let torch decide
    seed: int = 0
    # Learning rate of block i (of n) is lr * layer_decay ** (n - i); 1.0 turns it off (random init), 0.65-0.75
    # suits pretrained DINOv2 backbones.
    layer_decay: float = Field(1.0, gt=0.0, le=1.0)
    # Train only the head for this many epochs first (a warm start for pretrained backbones).
    freeze_backbone_epochs: int = Field(0, ge=0)
    # Exponential moving average of the weights; 0 turns it off (e.g. 0.999 for long GPU runs). When on,
    # selection and outputs use the EMA.
    ema_decay: Unit = 0.0
    compile: bool = False  # torch.compile the model (GPU; compile time is paid once per run)
    # Bit-identical results on CPU (and a resumed run equal to an uninterrupted one); slower on GPU.
    deterministic: bool = False
    # Deployment P(roadwork). The head bias is shifted from the prior the loss trained for to this one.
    deployment_prior: Fraction = 0.5
    prior_correction: bool = True
    # Multi-view inference (1 global view + a 3x3 grid of local views, ~10x cost): "select" compares it
    # with single-view on VAL_SELECT and keeps the better; "single"/"multi" force a choice.
    multiview: Literal["select", "single", "multi"] = "select"
    multiview_aggregation: Literal["mean_prob", "mean_logit", "max"] = "mean_prob"
    # Preemption: training state is saved here every epoch and every checkpoint_every_minutes (0: every
    # step), under a key of this config and the input data, and a restarted task resumes from it. A
    # local/PVC path or gs://bucket/prefix; "" saves nothing (a restart starts over).
    resume_dir: str = ""
    checkpoint_every_minutes: float = Field(10.0, ge=0.0)
    log_every_seconds: float = Field(30.0, ge=0.0)  # periodic progress line within an epoch
    # Processes (one per GPU) for data-parallel training on one node; 0: one per visible GPU.
    num_processes: int = Field(1, ge=0)
    augment: AugmentConfig = AugmentConfig()

    @field_validator("precision")
    @classmethod
    def _no_fp16(cls, value: str) -> str:
        return _checked(
            value, value == "fp16" and "fp16 is refused: DINOv2 activations overflow fp16; use bf16 on GPU or fp32"
        )

    @field_validator("num_processes")
    @classmethod
    def _splits_batch(cls, processes: int, info: ValidationInfo) -> int:
        batch = info.data.get("batch_size", processes)
        return _checked(
            processes,
            processes > 1
            and batch % processes
            and f"batch_size {batch} does not split evenly over num_processes={processes}",
        )


class CalibrationConfig(Group):
    # auto: the lowest cross-validated NLL inside VAL_CALIB among the five methods.
    method: Literal["auto", "temperature", "platt", "isotonic", "histogram", "beta"] = "auto"
    cv_folds: int = Field(5, ge=2)
    histogram_bins: int = Field(10, ge=2)
    # true: the calibrator sets how sure the model is, never which class it predicts; an image it would move
    # across 0.5 against the model's decision gets the lowest confidence (deferred by every threshold).
    # false: the calibrated probability decides the class too (streetvision.calibration).
    keep_decision: bool = True
    # Selective guarantee: accepted-set error <= target_risk with probability >= 1 - delta.
    target_risk: Fraction = 0.05
    delta: Fraction = 0.05
    # How the threshold is certified: "ltt" (Learn-then-Test: two fixed sequences, each test at delta / 2)
    # or "sgr" (binary search, Bonferroni over its ceil(log2 n) tests). ltt needs fewer error-free images: 72
    # against 99 for 5 % at delta 0.05 (streetvision.selective.min_error_free_accepted).
    threshold_method: Literal["ltt", "sgr"] = "ltt"
    # What the calibrator and policy are fitted on, i.e. the distribution the guarantee is about. "deployment":
    # VAL_CALIB rendered as deployment sends images (evaluation.challenge_levels, each level equally likely,
    # at evaluation.challenge_size px JPEG); "plain": VAL_CALIB as ingest cached it; "auto": deployment when
    # evaluation.challenge_levels lists any level, else plain.
    fit_on: Literal["auto", "deployment", "plain"] = "auto"
    # Deployment renders per VAL_CALIB image. All of them fit the calibrator; the certificate uses one per image,
    # since renders of one image are not independent draws.
    renders_per_image: int = Field(2, ge=1)
    # SCRC (phase 5): share of images selected by confidence, and share of VAL_CALIB used to set that cut.
    scrc_selection_rate: Fraction = 0.8
    scrc_selection_fraction: Fraction = 0.3
    seed: int = 0


class GateConfig(Group):
    """Phase 3: Gatekeeper fine-tuning (Rabanser et al., 2025) of the phase-1 model, then an SGR threshold."""

    # L = correct_weight * CE on correctly predicted samples + (1 - correct_weight) * KL(p || uniform) on the rest.
    correct_weight: Probability = 0.5
    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(64, ge=1)
    # 0: the classifier head only; k: also the last k transformer blocks (and the final norm).
    unfreeze_blocks: int = Field(0, ge=0)
    seed: int = 0


class BlessingConfig(Group):
    """Pass/fail rules on VAL_TEST metrics; a cluster pipeline can gate publishing on the verdict.

    A bound left empty (null) is not checked. `judge: lower_bound` compares the lower end of each metric's
    bootstrap interval (upper end for ECE) instead of the point estimate: a stricter, honest-er verdict.
    """

    require_above_majority: bool = True
    # A policy that accepts nothing on VAL_TEST (infeasible, or a threshold no image reaches) fails the blessing:
    # Stage 1 would answer nothing. false: judge the model alone.
    require_answers: bool = True
    min_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    min_mcc: float | None = Field(None, ge=-1.0, le=1.0)
    min_auroc: float | None = Field(None, ge=0.0, le=1.0)
    max_ece: float | None = Field(None, ge=0.0, le=1.0)
    min_coverage: float | None = Field(None, ge=0.0, le=1.0)
    judge: Literal["point", "lower_bound"] = "point"


class EvaluationConfig(Group):
    ece_bins: int = Field(15, ge=2)
    batch_size: int = Field(128, ge=1)
    # Confidence intervals on every VAL_TEST metric (scipy.stats.bootstrap).
    bootstrap_resamples: int = Field(1000, ge=50, description="for a usable interval")
    bootstrap_method: Literal["BCa", "percentile", "basic"] = "BCa"
    # BCa's bias correction needs a jackknife, n statistics of n - 1 images each, so its cost grows as n^2 (about
    # a minute per interval set at 20k images, hours at 200k); above this many images the percentile interval of
    # the same resamples is used, whose coverage error shrinks with n and is negligible at such sizes.
    bca_max_samples: int = Field(10_000, ge=0)
    confidence_level: float = Field(0.95, gt=0.5, lt=1.0)
    # Deployment-style re-rendering of VAL_TEST (see streetvision.challenge.LEVELS); [] turns it off.
    challenge_levels: list[Annotated[int, Field(ge=0, le=3)]] = [0, 1, 2, 3]
    challenge_size: int = Field(224, ge=16)
    seed: int = 0
    blessing: BlessingConfig = BlessingConfig()


class ExploraConfig(Group):
    """Phase 4 (ExPLoRA): continue DINOv2's self-supervised objective on TRAIN (+ an unlabelled pool) with
    LoRA/DoRA on the attention projections and the last blocks unfrozen, before phase 1. Off unless phase4
    is selected. Device and precision come from `training` (same hardware as phase 1).

    Defaults are sized for the CPU demo; DINOv2's own heads use prototypes=65536, hidden_dim=2048,
    bottleneck_dim=256, and ExPLoRA trains for thousands of steps on GPU.
    """

    adapter: Literal["lora", "dora"] = "lora"
    rank: int = Field(64, ge=1)
    alpha: float = Field(64.0, gt=0.0)  # LoRA scale = alpha / rank
    dropout: Unit = 0.0
    # Linear layers inside each adapted block (timm fuses Q, K and V into `attn.qkv`).
    target_modules: list[str] = ["attn.qkv"]
    unfreeze_last_blocks: int = Field(1, ge=0)
    unfreeze_norms: bool = True
    steps: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0.0)
    min_lr: float = Field(1e-6, ge=0.0)
    warmup_steps: int = Field(5, ge=0)
    weight_decay: float = Field(0.04, ge=0.0)
    grad_clip_norm: float = Field(3.0, ge=0.0)  # 0: no clipping
    # Multi-crop: 2 global views at model.img_size plus `local_crops` small views.
    global_crop_scale: UnitRange = [0.32, 1.0]
    local_crops: int = Field(4, ge=0)
    local_crop_size: int = Field(0, ge=0)  # px; 0: 7/16 of model.img_size, rounded down to a multiple of the patch
    local_crop_scale: UnitRange = [0.05, 0.32]
    # Fresh projection heads (DINOv2: 65536 / 2048 / 256).
    prototypes: int = Field(2048, ge=1)
    hidden_dim: int = Field(256, ge=1)
    bottleneck_dim: int = Field(128, ge=1)
    student_temp: float = Field(0.1, gt=0.0)
    teacher_temp: float = Field(0.07, gt=0.0)
    teacher_temp_start: float = Field(0.04, gt=0.0)  # linear warm-up to teacher_temp
    teacher_temp_warmup_steps: int = Field(10, ge=0)
    center_momentum: Unit = 0.9
    ema_momentum: Unit = 0.994  # teacher EMA, cosine-scheduled to 1.0
    ibot: bool = True
    ibot_weight: float = Field(1.0, ge=0.0)
    ibot_mask_ratio: UnitRange = [0.1, 0.5]
    ibot_mask_probability: Probability = 0.5
    koleo: bool = True
    koleo_weight: float = Field(0.1, ge=0.0)
    # Unlabelled target-domain images: a local folder or gs:// prefix (searched recursively for JPEG/PNG/WebP);
    # "" for none.
    pool_source: str = ""
    pool_max_images: int = Field(0, ge=0)  # 0: all
    # Which network becomes the adapted backbone: the EMA teacher (DINOv2 evaluates the teacher) or the student.
    export: Literal["teacher", "student"] = "teacher"
    # Evidence: probes on frozen features, fitted on TRAIN and scored on VAL_SELECT, before and after.
    probe: Literal["knn", "linear", "both"] = "both"
    knn_k: int = Field(20, ge=1)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(
        10, ge=1
    )  # steps between resumable checkpoints (cluster retries resume from the last)
    seed: int = 0

    @field_validator("global_crop_scale", "local_crop_scale", "ibot_mask_ratio")
    @classmethod
    def _unit_range(cls, pair: list[float]) -> list[float]:
        return _checked(
            pair,
            (len(pair) != 2 or not 0.0 < pair[0] <= pair[1] <= 1.0)
            and f"need [low, high] with 0 < low <= high <= 1, got {pair}",
        )

    @field_validator("pool_source")
    @classmethod
    def _local_or_gcs(cls, value: str) -> str:
        return _checked(
            value,
            "://" in value and not value.startswith("gs://") and f"a local folder or a gs:// prefix, got {value!r}",
        )

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, modules: list[str]) -> list[str]:
        return _checked(modules, not modules and "name at least one linear layer, e.g. [attn.qkv]")

    @field_validator("min_lr")
    @classmethod
    def _below_lr(cls, min_lr: float, info: ValidationInfo) -> float:
        lr = info.data.get("lr", min_lr)
        return _checked(min_lr, min_lr > lr and f"must be in [0, lr={lr}], got {min_lr}")

    @field_validator("koleo")
    @classmethod
    def _koleo_batch(cls, koleo: bool, info: ValidationInfo) -> bool:
        small = koleo and info.data.get("batch_size", 2) < 2
        return _checked(
            koleo, small and "KoLeo needs at least 2 images per batch (explora.batch_size), or set koleo=false"
        )


class PipelineConfig(Group):
    name: str = "streetvision-stage1"
    phases: list[str] = list(DEFAULT_PHASES)

    @field_validator("phases")
    @classmethod
    def _a_plan(cls, phases: list[str]) -> list[str]:
        """The phases resolve to a plan (dependencies added, exactly one policy for a bundle), checked here so a
        bad choice is a config error before anything runs."""
        unknown = [p for p in phases if p not in PHASE_NAMES and p != "all"]
        _checked(
            phases,
            not phases and f"name at least one phase, e.g. [phase1] or [all]; available: {list(PHASE_NAMES)}",
            unknown and f"unknown phase(s) {unknown}; available: {list(PHASE_NAMES)} or all",
        )
        try:
            resolve_phases(phases)
        except ContractError as exc:
            raise ValueError(f"{exc.what}; {exc.fix}") from None
        return phases


class TaskResources(Group):
    cpu: CpuQuantity = "2"
    memory: MemoryQuantity = "8G"
    gpus: int = Field(0, ge=0)


class ClusterConfig(Group):
    """Where compiled pipelines run, and each phase's task resources. Ignored by the local runner."""

    model_config = ConfigDict(extra="allow")  # only phase keys: see _phase_resources

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
    retries: int = Field(3, ge=0)
    retry_backoff: str = Field("120s", pattern=r"^\d+[smh]$", description="a duration like 30s, 5m or 1h")
    # Put GPU phases on spot (preemptible) nodes: GKE's cloud.google.com/gke-spot label and taint.
    spot: bool = False
    # /dev/shm for GPU phases (PyTorch data workers and NCCL need more than the container default of 64 MiB).
    shm_size: str = Field("16Gi", pattern=r"^\d+(Ki|Mi|Gi)$", description="a Kubernetes quantity like 512Mi or 16Gi")
    # One key per phase of the registry, `cluster.<phase>: {cpu, memory, gpus}`, each defaulting to its phase's
    # registry resources (a key given in part takes the rest from there); any other key is an unknown key.
    __pydantic_extra__: dict[str, TaskResources] = Field(init=False)

    @classmethod
    def group_keys(cls) -> dict[str, FieldInfo]:
        return {**cls.model_fields, **{phase: FieldInfo.from_annotation(TaskResources) for phase in PHASE_NAMES}}

    def resources_for(self, phase: str) -> TaskResources:
        return self.__pydantic_extra__[phase]

    @model_validator(mode="wrap")
    @classmethod
    def _phase_resources(cls, data: Any, handler: ModelWrapValidatorHandler[ClusterConfig]) -> ClusterConfig:
        """The phase keys filled in from the registry; an unknown key reported with every other problem."""
        if not isinstance(data, dict):
            return handler(data)
        unknown = [key for key in data if key not in cls.group_keys()]
        filled = {key: value for key, value in data.items() if key in cls.model_fields}
        for phase in PHASE_NAMES:
            value = data.get(phase, {})
            filled[phase] = {**default_resources(phase), **value} if isinstance(value, dict) else value
        problems = [InitErrorDetails(type="extra_forbidden", loc=(key,), input=data[key]) for key in unknown]
        try:
            cluster = handler(filled)
        except ValidationError as exc:
            problems = [
                InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"], ctx=e.get("ctx", {}))
                for e in exc.errors()
            ] + problems
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return cluster

    @field_validator("gpu_image", "cpu_image")
    @classmethod
    def _pinned(cls, image: str) -> str:
        tag = image.rsplit("/", 1)[-1].partition(":")[2] if "@" not in image else "digest"
        return _checked(
            image,
            image
            and (not tag or tag == "latest")
            and f'pin an immutable tag or digest (e.g. ...:0.1.0-<digest>), or "" for the images built from this '
            f"checkout; got {image!r}",
        )

    @field_validator("pipeline_root")
    @classmethod
    def _object_store(cls, root: str) -> str:
        schemes = ", ".join(OBJECT_STORE_SCHEMES)
        return _checked(
            root,
            root
            and not root.startswith(OBJECT_STORE_SCHEMES)
            and f'must be an object-store URI ({schemes}...) or "", got {root!r}',
        )

    @field_validator("checkpoint_root")
    @classmethod
    def _fits_pvc(cls, root: str, info: ValidationInfo) -> str:
        pvc = info.data.get("checkpoint_pvc")
        return _checked(
            root,
            pvc
            and not root.startswith("/")
            and f"with checkpoint_pvc set it is the PVC's mount path and must be absolute, got {root!r} (or set "
            'checkpoint_pvc="" to use a gs:// prefix)',
            pvc == ""
            and root
            and not root.startswith("gs://")
            and f'without checkpoint_pvc it must be a gs:// prefix (or "" for no resume location), got {root!r}',
        )


class SigningConfig(Group):
    """Who signs the bundle (phase 6, with OpenSSF model-signing) and whom evaluate trusts.

    `key`: an elliptic-curve key pair (offline). A local run with no private_key makes one per run folder.
    `certificate`: a private key with its signing certificate; verified against certificate_chain.
    `sigstore`: keyless Sigstore signing (needs network and an OIDC identity).
    `none`: an unsigned bundle; evaluate accepts it only because this says so (predict needs --allow-unsigned).
    """

    method: Literal["key", "certificate", "sigstore", "none"] = "key"
    private_key: str = ""  # PEM file (key, certificate)
    public_key: str = ""  # PEM file the signature is verified with (key)
    signing_certificate: str = ""  # PEM file (certificate)
    certificate_chain: list[str] = []  # PEM files: the roots a certificate signature must chain to
    sigstore_identity: str = ""  # the expected signer, e.g. a workload identity or an e-mail (sigstore)
    sigstore_issuer: str = ""  # its OIDC issuer, e.g. https://accounts.google.com (sigstore)
    # On a cluster: a Kubernetes secret holding the private key (and certificate), mounted read-only into the
    # phase-6 task at the folder of private_key; and a ConfigMap holding public_key / certificate_chain,
    # mounted into phase 6 and evaluate at the folder of public_key (or of the first chain file). Both are made
    # out of band (README, "Signed bundles"); "" mounts nothing.
    key_secret: str = ""
    trust_config_map: str = ""

    @field_validator("key_secret", "trust_config_map")
    @classmethod
    def _mounted_at_absolute_paths(cls, name: str, info: ValidationInfo) -> str:
        if info.field_name == "key_secret":
            paths, keys = [info.data.get("private_key", "")], "private_key"
        else:
            paths, keys = [info.data.get("public_key", "")] + list(info.data.get("certificate_chain", [])), "public_key"
        paths = [p for p in paths if p]
        relative = [p for p in paths if not p.startswith("/")]
        folder = lambda path: path.rpartition("/")[0]  # noqa: E731
        key_folder = folder(info.data.get("private_key", "") or "")
        return _checked(
            name,
            name and not paths and f"is mounted at the folder of signing.{keys}, which is not set",
            name
            and relative
            and f"is mounted at the folder of {relative[0]!r}, which must be an absolute path inside the task",
            name
            and paths
            and info.field_name == "trust_config_map"
            and info.data.get("key_secret")
            and folder(paths[0]) == key_folder
            and f"would be mounted at {key_folder}, where signing.key_secret is: put the public key in another folder",
        )


class Config(Group):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    gate: GateConfig = GateConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    pipeline: PipelineConfig = PipelineConfig()
    cluster: ClusterConfig = ClusterConfig()
    explora: ExploraConfig = ExploraConfig()
    signing: SigningConfig = SigningConfig()

    def calibration_levels(self) -> list[int]:
        """The challenge levels VAL_CALIB is rendered at for the calibrator and policy ([]: plain VAL_CALIB)."""
        fit_on = self.calibration.fit_on
        if fit_on == "plain" or (fit_on == "auto" and not self.evaluation.challenge_levels):
            return []
        return sorted(set(self.evaluation.challenge_levels))

    @field_validator("pipeline")
    @classmethod
    def _phase4_adapts_a_vit(cls, pipeline: PipelineConfig, info: ValidationInfo) -> PipelineConfig:
        model = info.data.get("model")
        try:
            phases = resolve_phases(pipeline.phases)[0]
        except ContractError:  # reported by PipelineConfig itself
            return pipeline
        return _checked(
            pipeline,
            model is not None
            and "phase4" in phases
            and not is_vit(model.name)
            and f"phase4 (ExPLoRA) adapts a ViT's attention with LoRA; model.name={model.name} is not a ViT: pick "
            "model=vit_tiny (CPU) or model=vit_small / vit_base (pretrained DINOv2), or leave phase4 out",
        )

    @field_validator("evaluation")
    @classmethod
    def _deployment_mix_is_listed(cls, evaluation: EvaluationConfig, info: ValidationInfo) -> EvaluationConfig:
        calibration = info.data.get("calibration")
        return _checked(
            evaluation,
            calibration is not None
            and calibration.fit_on == "deployment"
            and not evaluation.challenge_levels
            and "calibration.fit_on=deployment renders VAL_CALIB at evaluation.challenge_levels, which is empty: "
            "list the levels deployment sends, or set calibration.fit_on=plain",
        )
