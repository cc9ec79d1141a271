"""The ExPLoRA parameter recipe on a timm ViT, through PEFT.

Fully trainable: the last `unfreeze_last_blocks` blocks (PEFT `modules_to_save`, so the saved adapter holds
them too and is complete on its own) and, optionally, every norm layer. LoRA (or DoRA, PEFT's `use_dora`) on
the named projections of every other block. Everything else stays frozen. timm fuses the query, key and
value projections into one `attn.qkv` linear layer, so LoRA on `qkv` adapts all three (the paper adapts Q
and V; PEFT cannot split a fused layer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from streetvision.config.schema import ExploraConfig
from streetvision.contracts.errors import ConfigError, TrainingError

# Norm layers of a timm DINOv2 ViT: per block norm1/norm2, and the final norm.
_BLOCK_NORMS = ("norm1", "norm2")


def _block_names(model: nn.Module) -> list[str]:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
        raise ConfigError(
            f"{type(model).__name__} has no `blocks` sequence of transformer blocks",
            "explora adapters",
            "use a timm VisionTransformer (e.g. vit_small_patch14_dinov2) for phase 4",
        )
    return [f"blocks.{i}" for i in range(len(blocks))]


def adapter_plan(model: nn.Module, cfg: ExploraConfig) -> dict[str, list[str]]:
    """Which modules get LoRA and which are fully trained, by name (checked against the model)."""
    blocks = _block_names(model)
    n_unfrozen = cfg.unfreeze_last_blocks
    if not 0 <= n_unfrozen <= len(blocks):
        raise ConfigError(
            f"explora.unfreeze_last_blocks={n_unfrozen}, but the model has {len(blocks)} blocks",
            "explora config",
            f"set explora.unfreeze_last_blocks between 0 and {len(blocks)}",
        )
    adapted = blocks[: len(blocks) - n_unfrozen]
    unfrozen = blocks[len(blocks) - n_unfrozen :]
    modules = dict(model.named_modules())
    lora_targets = [f"{b}.{t}" for b in adapted for t in cfg.target_modules]
    missing = [name for name in lora_targets if not isinstance(modules.get(name), nn.Linear)]
    if missing:
        raise ConfigError(
            f"explora.target_modules {cfg.target_modules} name no linear layer at {missing[:3]}",
            "explora config",
            "name linear layers inside a timm ViT block: attn.qkv, attn.proj, mlp.fc1, mlp.fc2",
        )
    norms = []
    if cfg.unfreeze_norms:
        norms = [f"{b}.{n}" for b in adapted for n in _BLOCK_NORMS if f"{b}.{n}" in modules]
        if isinstance(modules.get("norm"), nn.LayerNorm):
            norms.append("norm")
    return {"lora": lora_targets, "full": unfrozen + norms}


def apply_adapters(model: nn.Module, cfg: ExploraConfig) -> tuple[nn.Module, dict]:
    """Wrap `model` (in place) with PEFT; return the PEFT model and a report of trainable parameters."""
    from peft import LoraConfig, get_peft_model

    plan = adapter_plan(model, cfg)
    if not plan["lora"]:
        raise ConfigError(
            "explora.unfreeze_last_blocks covers every block, so no block is left for the adapter",
            "explora config",
            "unfreeze fewer blocks (ExPLoRA unfreezes 1-2 of 12)",
        )
    total = sum(p.numel() for p in model.parameters())
    peft_cfg = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft annotates int; it only divides by it
        lora_dropout=cfg.dropout,
        target_modules=plan["lora"],
        modules_to_save=plan["full"] or None,
        use_dora=cfg.adapter == "dora",
        bias="none",
    )
    peft_model = get_peft_model(model, peft_cfg)
    wrapped = {
        name.removeprefix("base_model.model.")
        for name, module in peft_model.named_modules()
        if type(module).__name__ == "ModulesToSaveWrapper" and any(True for _ in module.parameters())
    }
    if wrapped != set(plan["full"]):
        raise TrainingError(
            f"PEFT trained modules {sorted(wrapped)} differ from the plan {sorted(plan['full'])}",
            "explora adapters",
            "this timm/PEFT combination names modules differently; report it with both versions",
        )
    trainable = {"lora": 0, "full": 0}
    for name, param in peft_model.named_parameters():
        if param.requires_grad:
            trainable["lora" if ".lora_" in name else "full"] += param.numel()
    report = {
        "adapter": cfg.adapter,
        "rank": cfg.rank,
        "lora_modules": len(plan["lora"]),
        "unfrozen_blocks": [n for n in plan["full"] if n.startswith("blocks.") and n.count(".") == 1],
        "norms_unfrozen": cfg.unfreeze_norms,
        "backbone_parameters": total,
        "trainable_lora": trainable["lora"],
        "trainable_full": trainable["full"],
        "trainable_parameters": trainable["lora"] + trainable["full"],
        "trainable_fraction": (trainable["lora"] + trainable["full"]) / total,
    }
    return peft_model, report


def merge_adapters(peft_model: Any) -> nn.Module:
    """A plain timm model with LoRA merged into the base weights and the trained modules in place.

    Merges a copy, so the PEFT model (and its adapter) stays usable."""
    import copy

    return copy.deepcopy(peft_model).merge_and_unload().eval()


def save_adapter(peft_model: Any, out_dir: Path, base_spec: dict) -> None:
    """PEFT's own layout (`adapter_config.json`, `adapter_model.safetensors`) plus the base architecture."""
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))
    (out_dir / "base_model_config.json").write_text(json.dumps(base_spec, indent=2, sort_keys=True))
