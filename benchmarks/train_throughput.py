"""Phase-1 training throughput: synthetic input vs the real path, and their ratio (goal on a GPU: >= 0.9).

(a) synthetic: normalised float tensors already on the device -> forward, loss, backward, AdamW step
    (what the plain-timm anchors measure);
(b) real:      a uint8 cache memory-mapped from disk -> background batch reads with JPEG re-compression (pinned)
    -> copy to the device -> the rest of augmentation on the device -> the same step, exactly as
    `streetvision.training.loop` trains. Two more columns time the readers alone and the device-side
    augmentation alone, to show which one holds (b) back when it falls short of (a).

One command, one short table. On a GPU the defaults are the deployment model (ViT-S/14 DINOv2 at 224, random
init, no download), bf16, batch 256, eager and torch.compile; it finishes in about two minutes. Without a GPU
it runs a tiny model of the same architecture on CPU.

    PYTHONPATH=src python benchmarks/train_throughput.py                    # GPU: ViT-S/14@224, eager + compiled
    PYTHONPATH=src python benchmarks/train_throughput.py --model vit_base_patch14_dinov2
    python benchmarks/train_throughput.py --device cpu                      # tiny model on CPU
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from streetvision.config import load_config  # noqa: E402
from streetvision.config.schema import AugmentConfig, ModelConfig, TrainingConfig  # noqa: E402
from streetvision.models import create_model, normalization  # noqa: E402
from streetvision.training.loop import Trainer, _Batches, epoch_batches  # noqa: E402

# The deployment challenges (the `training=gpu` preset) and the demo's light recipe (the defaults).
AUGMENTS = {
    "challenge": load_config(["training=gpu"]).training.augment,
    "light": AugmentConfig(),
    "none": AugmentConfig(strength=0.0),
}


def _parse(argv):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--device", default="cuda" if cuda else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--model", default="vit_small_patch14_dinov2", help="timm name (random init)")
    p.add_argument("--img-size", type=int, default=None, help="default 224 on GPU, 64 on CPU")
    p.add_argument(
        "--tiny",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="shrink to 4 blocks of width 192, patch 8 (default: on for CPU, off for GPU)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default 256 on GPU, 32 on CPU")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default bf16 on GPU, fp32 on CPU")
    p.add_argument(
        "--compile",
        choices=["off", "on", "both"],
        default=None,
        help="torch.compile the model (default: both on GPU, off on CPU)",
    )
    p.add_argument("--channels-last", action="store_true", help="channels-last model and input (CNN backbones)")
    p.add_argument("--augment", choices=list(AUGMENTS), default="challenge", help="augmentation of the real path")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default 30 GPU, 4 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 8 GPU, 1 CPU)")
    p.add_argument("--cache-images", type=int, default=None, help="images in the uint8 cache (default 2048 / 256)")
    args = p.parse_args(argv)
    gpu = args.device == "cuda"
    if gpu and not cuda:
        p.error("--device cuda but no CUDA device is visible; use --device cpu")
    defaults = dict(
        img_size=224 if gpu else 64,
        tiny=not gpu,
        batch_size=256 if gpu else 32,
        precision="bf16" if gpu else "fp32",
        compile="both" if gpu else "off",
        steps=30 if gpu else 4,
        warmup=8 if gpu else 1,
        cache_images=2048 if gpu else 256,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synthetic(trainer: Trainer, args, device) -> float:
    """Images/s of the bare step on tensors already on the device (no augmentation, no data movement)."""
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.batch_size,), device=device)
    amp = trainer.amp

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = trainer.step_fn(x)
        loss = F.cross_entropy(logits.float(), y)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        return loss.detach()

    for _ in range(args.warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    float(loss)
    _sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def _real(trainer: Trainer, images: np.ndarray, labels: np.ndarray, args, device) -> float:
    """Images/s through the training loop's own data path and step."""
    weights = np.ones(2)
    batches = []
    epoch = 0
    while len(batches) < args.warmup + args.steps:
        batches += epoch_batches(len(labels), 0, epoch, args.batch_size, 1)
        epoch += 1
    batches = [np.sort(b) for b in batches[: args.warmup + args.steps] if len(b) == args.batch_size]
    pending, start = None, None
    reader = _Batches(images, batches, pin=device.type == "cuda", prepare=trainer.host_prepare(0, 0))
    for i, (idx, batch) in enumerate(reader):
        if i == args.warmup:
            if pending is not None:
                float(pending)
            _sync(device)
            start = time.perf_counter()
        loss = trainer.step(batch, torch.from_numpy(labels[idx]), float(weights[labels[idx]].sum()))
        if pending is not None:
            float(pending)  # the loop checks each loss one step late, like this
        pending = loss
    float(pending)
    _sync(device)
    return (len(batches) - args.warmup) * args.batch_size / (time.perf_counter() - start)


def _readers_only(trainer: Trainer, images: np.ndarray, args, device) -> float:
    """Images/s of the batch readers alone (cache read, JPEG re-compression, pinning): what they can feed."""
    batches = [
        np.arange(i * args.batch_size, (i + 1) * args.batch_size) % len(images) for i in range(args.warmup + args.steps)
    ]
    start = time.perf_counter()
    for _ in _Batches(images, batches, pin=device.type == "cuda", prepare=trainer.host_prepare(1, 0)):
        pass
    return len(batches) * args.batch_size / (time.perf_counter() - start)


def _augment_only(trainer: Trainer, images: np.ndarray, args, device) -> float:
    """Images/s of the device side of augmentation alone, on batches already there: its share of each step."""
    batches = [
        torch.from_numpy(np.array(images[i * args.batch_size : (i + 1) * args.batch_size])).to(device)
        for i in range(min(4, len(images) // args.batch_size))
    ]
    run = lambda u8: trainer.augment(u8.permute(0, 3, 1, 2).float().div_(255.0))  # noqa: E731
    for i in range(args.warmup):
        run(batches[i % len(batches)])
    _sync(device)
    start = time.perf_counter()
    for i in range(args.steps):
        run(batches[i % len(batches)])
    _sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def _photo_like(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(n, size, size, 3) uint8 images with photo-like spectra (smooth areas, edges, fine texture), so JPEG
    re-compression costs what it costs on street images; uniform noise would make it several times dearer."""
    out = torch.zeros(n, 3, size, size)
    for cells, weight in ((max(2, size // 32), 0.6), (max(2, size // 8), 0.3), (max(2, size // 2), 0.1)):
        coarse = torch.from_numpy(rng.standard_normal((n, 3, cells, cells), dtype=np.float32))
        out += weight * F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (out * 60 + 128).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def main(argv=None) -> int:
    args = _parse(argv)
    if args.augment != "none":
        try:
            import kornia  # noqa: F401
        except ImportError:
            print(
                "kornia is not installed (the real path augments with it): `pip install kornia`, or pass "
                "--augment none to measure the data path without augmentation",
                file=sys.stderr,
            )
            return 2
    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    # The model defaults are the demo's shrunk ViT; None keeps the architecture's own size.
    tiny = (
        dict(patch_size=8, depth=4, embed_dim=192, num_heads=3)
        if args.tiny
        else dict(patch_size=None, depth=None, embed_dim=None, num_heads=None)
    )
    model_cfg = ModelConfig(name=args.model, weights="none", img_size=args.img_size, **tiny)
    n_cache = max(args.cache_images, args.batch_size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sv-bench-") as tmp:
        # The uint8 cache as ingest writes it (N, S, S, 3), read back memory-mapped like a split artifact.
        path = os.path.join(tmp, "images.npy")
        cache = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.uint8, shape=(n_cache, args.img_size, args.img_size, 3)
        )
        rng = np.random.default_rng(0)
        for start in range(0, n_cache, 256):
            cache[start : start + 256] = _photo_like(min(256, n_cache - start), args.img_size, rng)
        cache.flush()
        del cache
        images = np.load(path, mmap_mode="r")
        labels = rng.integers(0, 2, n_cache).astype(np.int64)
        modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
        for compiled in modes:
            model = create_model(model_cfg)
            if args.channels_last:
                model = model.to(memory_format=torch.channels_last)
            mean, std = normalization(model)
            cfg = TrainingConfig(
                batch_size=args.batch_size,
                precision=args.precision,
                compile=compiled,
                device=args.device,
                augment=AUGMENTS[args.augment],
            )
            trainer = Trainer(model, cfg, args.img_size, mean, std, 1000, np.ones(2), device)
            trainer.model.train()
            started = time.perf_counter()
            synthetic = _synthetic(trainer, args, device)  # also pays the compile, outside the timed steps
            real = _real(trainer, images, labels, args, device)
            readers = _readers_only(trainer, images, args, device)
            augment = _augment_only(trainer, images, args, device)
            rows.append(
                ("compiled" if compiled else "eager", synthetic, real, readers, augment, time.perf_counter() - started)
            )
            del trainer, model
            if device.type == "cuda":
                torch.cuda.empty_cache()

    name = args.model + (" (tiny: 4x192, patch 8)" if args.tiny else "")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"\n{name} @ {args.img_size}px, batch {args.batch_size}, {args.precision}, augment={args.augment}"
        f"{', channels-last' if args.channels_last else ''} on {gpu}"
    )
    print(
        f"{'mode':<9} {'(a) synthetic img/s':>20} {'(b) real path img/s':>20} {'ratio b/a':>10} "
        f"{'readers img/s':>14} {'device aug img/s':>17} {'row secs':>9}"
    )
    for mode, synthetic, real, readers, augment, seconds in rows:
        print(
            f"{mode:<9} {synthetic:>20,.0f} {real:>20,.0f} {real / synthetic:>10.2f} {readers:>14,.0f} "
            f"{augment:>17,.0f} {seconds:>9.0f}"
        )
    print(
        f"readers: {_Batches(images, [], pin=False).ahead} threads reading the cache and re-compressing JPEGs "
        "ahead of the step; device aug: the rest of augmentation, on batches already on the device"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
