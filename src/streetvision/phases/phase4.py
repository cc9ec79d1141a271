"""Phase 4 (optional): ExPLoRA — adapt the DINOv2 backbone to the target domain before phase 1.

Reads TRAIN images (labels unused; the probes use them) and an optional unlabelled pool, never VAL_CALIB or
VAL_TEST; scores k-NN/linear probes on VAL_SELECT (model selection) before and after. Writes the adapted
backbone artifact:

    backbone.safetensors   merged plain timm weights, no classifier head (strict load into build_from_spec)
    model_config.json      the architecture (num_classes 0)
    adapter/               the adapter alone: PEFT `save_pretrained` layout (+ base_model_config.json)
    ssl_history.json       per-step losses and schedules
    ssl_curves.html        SSL curves and the probe table
    probe.json             probe accuracies before/after, trainable parameters
    _streetvision.json     completion record with lineage (TRAIN as fit, VAL_SELECT as model selection)

Phase 1 consumes it as its optional `backbone` input: `run_phase1` starts from it through
`phase1_config_from_backbone` and extends its outputs' lineage with `add_backbone_lineage`.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from streetvision.cluster_env import resume_root
from streetvision.config.loader import config_from_json, config_to_json
from streetvision.config.schema import Config
from streetvision.contracts.errors import CheckpointError, ConfigError, LeakageViolationError
from streetvision.contracts.metadata import (
    ArtifactMetadata,
    check_same_partition,
    prepare_output_dir,
    read_metadata,
    require_input,
    write_metadata,
)
from streetvision.contracts.splits import Role
from streetvision.data.shards import SplitData, load_split
from streetvision.devices import task_device
from streetvision.explora.adapters import apply_adapters, merge_adapters, save_adapter
from streetvision.explora.pool import load_pool, pixel_hashes
from streetvision.explora.probe import extract_features, probe_scores
from streetvision.explora.train import ExploraTrainer, ImagePool, run_fingerprint, train_ssl
from streetvision.models import ImageRows, build_from_spec, create_model, model_spec, normalization
from streetvision.phases.result import PhasePaths, PhaseResult
from streetvision.registry import PHASE_READS
from streetvision.training import distributed

logger = logging.getLogger(__name__)

PHASE = "phase4"
KIND = "backbone"
BACKBONE_FILE = "backbone.safetensors"
SPEC_FILE = "model_config.json"
ADAPTER_DIR = "adapter"
HISTORY_FILE = "ssl_history.json"
PROBE_FILE = "probe.json"
CURVES_FILE = "ssl_curves.html"
# Merged weights must reproduce the adapter-applied network; float32 round-off stays far below this.
MERGE_TOLERANCE = 1e-4


def backbone_spec(cfg: Config) -> dict:
    """The classifier's architecture without its head: what the adapted weights load into strictly."""
    spec = model_spec(cfg.model)
    spec["num_classes"] = 0
    return spec


def build_backbone(cfg: Config) -> torch.nn.Module:
    """The starting backbone as `model.weights` says (hub, local file or random), head removed, accepting
    any multiple of the patch size as input (local crops are smaller than the global views)."""
    import timm

    classifier: Any = create_model(cfg.model)  # the project's own loading rules (strict except the head)
    classifier.reset_classifier(0)
    spec = backbone_spec(cfg)
    backbone = timm.create_model(spec["name"], pretrained=False, num_classes=0, dynamic_img_size=True, **spec["kwargs"])
    backbone.load_state_dict(classifier.state_dict(), strict=True)
    return backbone


def _curves_html(history: list[dict], probes: dict, adapter: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [h["step"] + 1 for h in history]
    labels = {"loss": "total (weighted)", "dino": "DINO", "ibot": "iBOT", "koleo": "KoLeo (unweighted)"}
    for key, label in labels.items():
        if history and key in history[0]:
            axes[0].plot(steps, [h[key] for h in history], label=label)
    axes[0].set_xlabel("step")
    axes[0].set_title("self-supervised loss")
    axes[0].legend()
    axes[1].plot(steps, [h["lr"] for h in history], label="lr")
    axes[1].set_xlabel("step")
    axes[1].set_title("learning rate")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    png = base64.b64encode(buffer.getvalue()).decode()
    rows = "".join(
        f"<tr><td>{name}</td><td>{probes['before'].get(name, float('nan')):.4f}</td>"
        f"<td>{probes['after'].get(name, float('nan')):.4f}</td></tr>"
        for name in probes["after"]
    )
    trainable = f"{adapter['trainable_parameters']:,} of {adapter['backbone_parameters']:,}"
    return (
        "<html><head><meta charset='utf-8'><title>Phase 4: ExPLoRA</title></head><body>"
        "<h2>Phase 4: ExPLoRA self-supervised adaptation</h2>"
        f"<p>{ {'lora': 'LoRA', 'dora': 'DoRA'}[adapter['adapter']] } rank {adapter['rank']} "
        f"on {adapter['lora_modules']} layers, "
        f"fully trained: {', '.join(adapter['unfrozen_blocks']) or 'none'}"
        f"{' and norms' if adapter['norms_unfrozen'] else ''}; trainable backbone parameters {trainable}.</p>"
        f'<img alt="SSL curves" src="data:image/png;base64,{png}">'
        "<h3>Probes on frozen features (fit on TRAIN, scored on VAL_SELECT)</h3>"
        f"<table border='1' cellpadding='4'><tr><th>metric</th><th>before</th><th>after</th></tr>{rows}</table>"
        "</body></html>"
    )


def run_phase4(cfg: Config, paths: PhasePaths) -> PhaseResult:
    """Adapt the backbone; the result carries the SSL scalars (for KFP Metrics) and the curves page. Training
    state is kept under `training.resume_dir` or, on a cluster, the run's checkpoint location for phase 4. With
    ``training.num_processes`` > 1 the adaptation runs in one torchrun worker per GPU (DDP), as phase 1's
    training does (``explora.batch_size`` is the global batch); rank 0 probes and writes the outputs.

    Args:
        cfg: the run's config (``explora``, ``model``).
        paths: inputs ``train`` and ``val_select`` (the linear probe's score only); output ``backbone``.

    Returns:
        The backbone's metadata, the SSL and probe scalars and the curves page.

    Raises:
        LeakageViolationError: an input comes from a split (or lineage) this phase's role may not read.
        IntegrityError: an input is incomplete (no completion record) or altered since it was written.
        ConfigError: an ExPLoRA setting that does not fit the model (blocks, target modules, crop size), or
            the device or process count asked for is not available.
        TrainingDivergedError: the self-supervised loss became NaN or infinite (SSLDivergedError).
    """
    _, select, _ = _load_inputs(paths)  # checks roles and completeness before anything is written
    # Resolved before anything is written or any worker starts: a GPU task without a visible GPU fails here.
    device = task_device(cfg, PHASE)
    ecfg = cfg.explora
    processes = distributed.resolve_num_processes(cfg.training.num_processes, device.type, PHASE)
    if processes > 1 and ecfg.batch_size < 2 * processes:
        raise ConfigError(
            f"explora.batch_size={ecfg.batch_size} is the global batch: {processes} processes need at least "
            f"{2 * processes} images (two each)",
            f"{PHASE} with training.num_processes={cfg.training.num_processes}",
            "raise explora.batch_size or lower training.num_processes",
        )
    with tempfile.TemporaryDirectory(prefix=f"streetvision-{PHASE}-pool-") as scratch:
        pool_file, pool_report = "", {"pool_images": 0}
        if ecfg.pool_source:
            # Decoded and checked here, once (a VAL_SELECT image in it is refused before any output is started);
            # the training processes map the decoded array.
            pool, pool_report = load_pool(
                ecfg.pool_source,
                cfg.model.img_size,
                cfg.data.min_image_size,
                ecfg.pool_max_images,
                f"{PHASE}, explora.pool_source ({ecfg.pool_source})",
                forbidden_hashes=pixel_hashes(select.images),
            )
            pool_file = str(Path(scratch) / "pool.npy")
            np.save(pool_file, pool)
            del pool
        prepare_output_dir(paths.output("backbone"))
        job = {
            "config": config_to_json(cfg),
            "paths": {"inputs": dict(paths.inputs), "outputs": dict(paths.outputs)},
            "pool_file": pool_file,
            "pool_report": pool_report,
        }
        done = distributed.run_job(PHASE, processes, "streetvision.phases.phase4:_adapt_and_write", job)
    return PhaseResult(PHASE, {KIND: done[KIND]}, metrics=done["metrics"], reports={"ssl_curves": done["ssl_curves"]})


def _load_inputs(paths: PhasePaths) -> tuple[SplitData, SplitData, str]:
    """TRAIN and VAL_SELECT, each checked for its role, and their common partition."""
    reads = PHASE_READS[PHASE]
    inputs = {}
    for name in ("train", "val_select"):
        role, split = reads[name]
        inputs[name] = load_split(paths.input(name), split=split, role=role, phase=PHASE, input_name=name)
    partition = check_same_partition({k: v.meta for k, v in inputs.items()}, PHASE)
    return inputs["train"], inputs["val_select"], partition


def _adapt_and_write(
    config: str,
    paths: dict[str, dict[str, str]],
    pool_file: str,
    pool_report: dict[str, Any],
    result_path: str | None = None,
) -> dict:
    """Everything after the input checks; runs in every training process (DDP), rank 0 probes and writes the
    outputs. `pool_file`: the decoded unlabelled pool ("" for none)."""
    started = time.time()
    cfg = config_from_json(config)
    where = PhasePaths(PHASE, **paths)
    ecfg = cfg.explora
    train, select, partition = _load_inputs(where)
    rank = distributed.rank()
    arrays: list[ImageRows] = [train.images] + ([np.load(pool_file, mmap_mode="r")] if pool_file else [])
    images = ImagePool(arrays)
    out_dir = Path(where.output("backbone"))

    if cfg.training.num_threads > 0:
        torch.set_num_threads(cfg.training.num_threads)
    device = task_device(cfg, PHASE, distributed.local_rank())
    amp = torch.bfloat16 if cfg.training.precision == "bf16" else None
    torch.manual_seed(ecfg.seed)
    backbone = build_backbone(cfg)
    mean, std = normalization(backbone)
    spec = backbone_spec(cfg)
    batch = cfg.evaluation.batch_size

    def probe(model) -> dict[str, float]:
        train_x = extract_features(model, train.images, mean, std, batch, device, amp)
        select_x = extract_features(model, select.images, mean, std, batch, device, amp)
        return probe_scores(train_x, train.labels, select_x, select.labels, ecfg.probe, ecfg.knn_k, ecfg.seed)

    probes: dict[str, dict[str, float]] = {}
    if rank == 0:  # the probes score the starting and the adapted backbone once (they draw no random numbers)
        probes["before"] = probe(backbone)
        logger.info(f"probe before adaptation (TRAIN -> VAL_SELECT): {_fmt(probes['before'])}")

    peft_model, adapter = apply_adapters(backbone, ecfg)
    if rank == 0:
        logger.info(
            f"ExPLoRA: {ecfg.adapter} rank {ecfg.rank} on {adapter['lora_modules']} layers, fully trained "
            f"{adapter['unfrozen_blocks']}{' + norms' if ecfg.unfreeze_norms else ''}: "
            f"{adapter['trainable_parameters']:,} of {adapter['backbone_parameters']:,} backbone parameters "
            f"trainable ({100 * adapter['trainable_fraction']:.1f} %); {len(images)} images (TRAIN "
            f"{train.meta.count}, pool {pool_report['pool_images']}), {ecfg.steps} steps of {ecfg.batch_size}, "
            f"{distributed.world_size()} process(es)"
        )
    trainer = ExploraTrainer(peft_model, ecfg, cfg.model.img_size, mean, std, device, amp)
    head_params = sum(p.numel() for p in trainer.student.head.parameters())
    fingerprint = run_fingerprint(ecfg, spec, f"{train.meta.fingerprint}/{pool_report.get('pool_fingerprint')}")
    # A local/PVC folder or a gs:// prefix: a retried task resumes from the last saved step either way.
    throughput = train_ssl(trainer, images, resume_root(cfg, PHASE), fingerprint)
    distributed.barrier()
    if rank != 0:
        return {}

    exported = (trainer.teacher if ecfg.export == "teacher" else trainer.student).backbone
    merged = merge_adapters(exported).cpu()
    state = {k: v.detach().contiguous() for k, v in merged.state_dict().items()}
    save_file(state, str(out_dir / BACKBONE_FILE))
    (out_dir / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True))
    save_adapter(exported, out_dir / ADAPTER_DIR, spec)

    # Self-check before anyone relies on it: the saved file loads strictly into a fresh model of the same
    # architecture and reproduces the adapter-applied network.
    fresh = load_backbone(out_dir)
    check = torch.from_numpy(np.array(select.images[: min(8, len(select.images))]))
    merge_error = _max_feature_difference(fresh, exported.cpu(), check, mean, std)
    if merge_error > MERGE_TOLERANCE:
        raise CheckpointError(
            f"merged weights differ from the adapter-applied network by {merge_error:.2e}",
            f"{PHASE} output {out_dir}",
            "report this with the PEFT and timm versions",
        )
    probes["after"] = probe(fresh.to(device))
    logger.info(f"probe after adaptation (TRAIN -> VAL_SELECT): {_fmt(probes['after'])}")

    history = trainer.history
    (out_dir / HISTORY_FILE).write_text(json.dumps(history, indent=1))
    curves = _curves_html(history, probes, adapter)
    (out_dir / CURVES_FILE).write_text(curves)
    probe_record = {"probe": ecfg.probe, "fit_on": "train", "scored_on": "val_select", **probes}
    (out_dir / PROBE_FILE).write_text(json.dumps(probe_record, indent=2))

    first, last = history[0]["loss"], float(np.mean([h["loss"] for h in history[-max(1, len(history) // 10) :]]))
    summary = {
        "adapter": ecfg.adapter,
        "rank": ecfg.rank,
        "trainable_parameters": adapter["trainable_parameters"],
        "backbone_parameters": adapter["backbone_parameters"],
        "head_parameters": head_params,
        "steps": ecfg.steps,
        "ssl_loss_first": round(first, 4),
        "ssl_loss_last": round(last, 4),
        "images_per_second": round(throughput["images_per_second"], 1) if throughput["images_per_second"] else None,
        "pool_images": pool_report["pool_images"],
        "merge_max_abs_error": merge_error,
        "export": ecfg.export,
        "device": str(device),
        "processes": distributed.world_size(),
        "seconds": round(time.time() - started, 1),
    }
    for when in ("before", "after"):
        summary.update({f"{k}_{when}": round(v, 4) for k, v in probes[when].items() if k != "majority_rate"})
    summary["val_select_majority_rate"] = round(probes["after"]["majority_rate"], 4)
    meta = write_metadata(
        out_dir,
        ArtifactMetadata(
            kind=KIND,
            phase=PHASE,
            partition=partition,
            lineage=[train.meta.reads(PHASE, Role.FIT), select.meta.reads(PHASE, Role.MODEL_SELECTION)],
            summary=summary,
        ),
    )
    metrics = {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None
    }
    return distributed.hand_back({KIND: meta, "metrics": metrics, "ssl_curves": curves}, result_path)


def _fmt(scores: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items())


@torch.no_grad()
def _max_feature_difference(plain, peft_model, images_uint8, mean, std) -> float:
    from streetvision.models import to_model_input

    x = to_model_input(images_uint8, torch.tensor(mean), torch.tensor(std))
    plain.eval()
    peft_model.eval()
    return float((plain(x) - peft_model(x)).abs().max())


def load_backbone(backbone_dir: str | Path) -> torch.nn.Module:
    """The merged backbone in a fresh timm model of the recorded architecture, loaded with strict keys."""
    root = Path(backbone_dir)
    spec = json.loads((root / SPEC_FILE).read_text())
    model = build_from_spec(spec)
    model.load_state_dict(load_file(str(root / BACKBONE_FILE)), strict=True)
    return model.eval()


# -- phase 1 from an adapted backbone -------------------------------------------------------------------


def phase1_config_from_backbone(cfg: Config, backbone_dir: str | Path, train_dir: str | Path) -> Config:
    """The config phase 1 runs with: `model.weights` set to the adapted backbone, after checking the backbone
    is complete, comes from the same ingest partition as TRAIN, and has phase 1's architecture."""
    where = f"phase1, input 'backbone' ({backbone_dir})"
    meta = require_input(backbone_dir, kind=KIND, phase="phase1", input_name="backbone")
    train_meta = read_metadata(train_dir, f"phase1, input 'train' ({train_dir})")
    if meta.partition != train_meta.partition:
        raise LeakageViolationError(
            f"the backbone was adapted on ingest partition {meta.partition}, TRAIN is from {train_meta.partition}",
            where,
            "adapt the backbone (phase 4) on the TRAIN split of the same ingest run: images of another splitting "
            "may sit in this run's validation splits",
        )
    spec = json.loads((Path(backbone_dir) / SPEC_FILE).read_text())
    wanted = backbone_spec(cfg)
    same = lambda s: (s["name"], {k: v for k, v in s["kwargs"].items() if k != "drop_rate"})  # noqa: E731
    if same(spec) != same(wanted):
        raise CheckpointError(
            f"the backbone is {same(spec)}, phase 1 builds {same(wanted)}",
            where,
            "run phase 4 and phase 1 with the same model.* settings",
        )
    weights = Path(backbone_dir) / BACKBONE_FILE
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"weights": str(weights)})})


def add_backbone_lineage(backbone_dir: str | Path, output_dirs: Mapping[str, str | Path]) -> dict[str, dict]:
    """Append phase 4's reads to the lineage of phase 1's outputs (their completion records are rewritten
    atomically), so everything downstream shows that the backbone was adapted on TRAIN."""
    backbone = read_metadata(backbone_dir, f"phase1, input 'backbone' ({backbone_dir})")
    updated = {}
    for name, path in output_dirs.items():
        meta = read_metadata(path, f"phase1 output '{name}' ({path})")
        meta.lineage = list(backbone.lineage) + [e for e in meta.lineage if e not in backbone.lineage]
        meta.summary = {**meta.summary, "backbone": f"phase4 {backbone.summary.get('adapter', '')}".strip()}
        updated[name] = write_metadata(path, meta)
    return updated
