"""Phase 4 (ExPLoRA) throughput: self-supervised steps per second on synthetic uint8 images already in memory.

Measures the training loop alone (multi-crop on the device, student + EMA teacher, DINO + iBOT + KoLeo), with
the recipe's defaults at real size unless told otherwise: ViT-S/14 DINOv2 at 224 px (random init: no hub
here), LoRA rank 64 on attn.qkv of blocks 0-10, block 11 and the norms trained, DINOv2-size heads
(65536 prototypes), 2 global + 6 local 98 px views. Prints one line per setting, images/s counting source
images (each gives 8 views). Needs only torch, timm, peft, kornia, numpy (PYTHONPATH=src).

    PYTHONPATH=src python benchmarks/bench_explora.py --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from streetvision.config import load_config
from streetvision.explora.adapters import apply_adapters
from streetvision.explora.train import ExploraTrainer
from streetvision.models import normalization


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warm-up steps)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=vit_base explora.ibot=false")
    args = parser.parse_args()

    cfg = load_config(
        [
            "model=vit_small",
            "explora.prototypes=65536",
            "explora.hidden_dim=2048",
            "explora.bottleneck_dim=256",
            f"explora.batch_size={args.batch_size}",
            *args.overrides,
        ]
    )
    device = torch.device(args.device)
    amp = torch.bfloat16 if args.precision == "bf16" else None
    import timm

    from streetvision.phases.phase4 import backbone_spec

    spec = backbone_spec(cfg)
    torch.manual_seed(0)
    backbone = timm.create_model(spec["name"], pretrained=False, num_classes=0, dynamic_img_size=True, **spec["kwargs"])
    mean, std = normalization(backbone)
    peft_model, report = apply_adapters(backbone, cfg.explora)
    trainer = ExploraTrainer(peft_model, cfg.explora, cfg.model.img_size, mean, std, device, amp)
    size = cfg.model.img_size
    images = (np.random.default_rng(0).random((args.batch_size, size, size, 3)) * 255).astype(np.uint8)
    for _ in range(3):
        trainer.step(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        record = trainer.step(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    print(
        f"{cfg.model.name} {size}px {args.precision} batch {args.batch_size} "
        f"local {cfg.explora.local_crops}x{trainer.local_size}px ibot={cfg.explora.ibot} koleo={cfg.explora.koleo} "
        f"trainable {report['trainable_parameters']:,}/{report['backbone_parameters']:,}: "
        f"{args.batch_size * args.steps / seconds:.0f} images/s ({seconds / args.steps * 1000:.0f} ms/step), "
        f"peak {memory:.1f} GiB, loss {record['loss']:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
