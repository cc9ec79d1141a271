"""VAL_TEST re-rendered the way deployment sends images: 224x224 JPEGs with challenge augmentations.

The subnet's validators send 224 px JPEGs with random rotation, random resized crops and flips, and at higher
levels JPEG re-compression, blur, noise and colour changes. Level 0 is the plain 224 px JPEG; each level adds
to the one before. Rendering is seeded, so every evaluation of every bundle sees the same challenge images.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from streetvision.config.schema import Config
from streetvision.data.decode import decode_image
from streetvision.models import predict_logits

LEVELS = {
    0: "224 px JPEG, no augmentation",
    1: "+ rotation ±20°, random resized crop (scale 0.2-1), horizontal and vertical flips",
    2: "+ JPEG re-compression (quality 30-90) and brightness/contrast/saturation jitter",
    3: "+ Gaussian blur, Gaussian noise, stronger colour jitter with hue",
}


def challenge_augmentation(level: int, size: int) -> torch.nn.Module | None:
    """The kornia pipeline of one level (None for level 0); applied per sample to a float batch in [0, 1]."""
    import kornia.augmentation as K

    if level not in LEVELS:
        raise ValueError(f"challenge level {level} is not one of {sorted(LEVELS)}")
    if level == 0:
        return None
    steps: list[Any] = [  # kornia augmentations
        K.RandomRotation(20.0, p=1.0),
        K.RandomResizedCrop((size, size), scale=(0.2, 1.0)),
        K.RandomHorizontalFlip(),
        K.RandomVerticalFlip(),
    ]
    if level == 2:  # JPEG re-compression: see render_challenge
        steps.append(K.ColorJitter(0.2, 0.2, 0.2, 0.0, p=0.8))
    if level == 3:  # stronger colour, now with hue (kornia's hue shift is the slow part on CPU)
        steps += [
            K.ColorJitter(0.35, 0.35, 0.35, 0.05, p=0.8),
            K.RandomGaussianBlur((5, 5), (0.1, 2.0), p=0.5),
            K.RandomGaussianNoise(std=0.04, p=0.5),
        ]
    return K.AugmentationSequential(*steps)


def render_challenge(
    images: np.ndarray, level: int, size: int = 224, seed: int = 0, jpeg_quality: int = 90, batch_size: int = 64
) -> list[bytes]:
    """JPEG bytes of `images` (N, H, W, 3 uint8) resized to `size` and augmented at `level`."""
    augment = challenge_augmentation(level, size)
    # Re-compression with a real encoder (PIL), half of the images at a random quality, from level 2 on;
    # kornia's differentiable JPEG is 10x slower on CPU and only approximates one.
    rng = np.random.default_rng([seed, level])
    encoded: list[bytes] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1009 + level)
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.array(images[start : start + batch_size]))  # a writable copy of a memmap slice
            batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
            batch = torch.nn.functional.interpolate(
                batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            if augment is not None:
                batch = augment(batch.clamp_(0.0, 1.0))
            pixels = batch.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for image in pixels:
                picture = Image.fromarray(image)
                if level >= 2 and rng.random() < 0.5:
                    picture = Image.open(io.BytesIO(_jpeg(picture, int(rng.integers(30, 91))))).convert("RGB")
                encoded.append(_jpeg(picture, jpeg_quality))
    return encoded


def _jpeg(picture: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def render_as_deployed(images: np.ndarray, level: int, size: int, img_size: int, seed: int) -> np.ndarray:
    """`images` as a deployed bundle scores them: rendered at `level` to `size` px JPEG bytes, then decoded to
    the bundle's `img_size` by the decoder `Bundle.decode` (and ingest) use. Its size floor is not applied: a
    render is always `size` px, and the floor only refuses an image, it never changes pixels."""
    encoded = render_challenge(images, level, size, seed)
    return np.stack([decode_image(data, img_size, min_size=1).pixels for data in encoded])


def deployment_renders(
    images: np.ndarray, levels: list[int], renders: int, size: int, img_size: int, seed: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray, int]]:
    """Deployment's mix, one (render r, rows, pixels, level) group at a time: each render of each image draws
    its level uniformly from `levels` (the configured challenge levels, each equally likely), then its
    augmentation; the draws are seeded and use no labels. Pixels are decoded as a bundle decodes them."""
    images = np.asarray(images)
    drawn = deployment_levels(len(images), levels, renders, seed)
    for r in range(renders):
        for level in np.unique(drawn[:, r]):
            rows = np.flatnonzero(drawn[:, r] == level)
            yield r, rows, render_as_deployed(images[rows], int(level), size, img_size, seed * 7919 + r), int(level)


def deployment_levels(n: int, levels: list[int], renders: int, seed: int) -> np.ndarray:
    """The level (N, R) of each of R renders of N images, drawn uniformly from `levels`."""
    return np.random.default_rng([seed, n]).choice(np.asarray(levels, dtype=np.int64), size=(n, renders))


def deployment_render_logits(
    scorer: torch.nn.Module,
    images: np.ndarray,
    mean: list[float],
    std: list[float],
    levels: list[int],
    renders: int,
    size: int,
    img_size: int,
    seed: int,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, R, 2) of R deployment renders per image (`deployment_renders`) and their levels (N, R),
    scored with the fp32 inference function `Bundle.predict` uses."""
    logits = np.zeros((len(images), renders, 2), np.float32)
    drawn = np.zeros((len(images), renders), np.int64)
    for r, rows, pixels, level in deployment_renders(images, levels, renders, size, img_size, seed):
        logits[rows, r] = predict_logits(scorer, pixels, mean, std, batch_size, device)
        drawn[rows, r] = level
    return logits, drawn


def val_select_for_selection(cfg: Config, images: Any, labels: np.ndarray) -> tuple[Any, np.ndarray, str]:
    """The images, labels and a description of what the epoch is chosen on: plain VAL_SELECT followed by one
    deployment render of each image at the levels the policy is certified for (`Config.calibration_levels`);
    plain VAL_SELECT alone (`images` itself, any array-like) where the policy fits on plain images. Renders
    alone pick epochs that cope with renders but lose plain accuracy; plain alone picks them before they cope
    with renders."""
    levels = cfg.calibration_levels()
    if not levels:
        return images, labels, "plain VAL_SELECT"
    images = np.asarray(images)  # read once: the renders and the concatenation both use it
    pixels = np.zeros((len(images), cfg.model.img_size, cfg.model.img_size, 3), np.uint8)
    # Seeded apart from VAL_CALIB's renders (calibration.seed), though the images differ anyway.
    for _, rows, rendered, _ in deployment_renders(
        images, levels, 1, cfg.evaluation.challenge_size, cfg.model.img_size, cfg.calibration.seed + 1
    ):
        pixels[rows] = rendered
    described = f"plain VAL_SELECT and one render of each image at challenge levels {levels}"
    return np.concatenate([images, pixels]), np.concatenate([labels, labels]), described


def val_calib_renders(
    cfg: Config, scorer: torch.nn.Module, images: np.ndarray, mean: list[float], std: list[float], device
) -> tuple[np.ndarray, np.ndarray] | None:
    """VAL_CALIB's deployment renders for the policy phases (None when they fit on plain VAL_CALIB)."""
    levels = cfg.calibration_levels()
    if not levels:
        return None
    return deployment_render_logits(
        scorer,
        images,
        mean,
        std,
        levels,
        cfg.calibration.renders_per_image,
        cfg.evaluation.challenge_size,
        cfg.model.img_size,
        cfg.calibration.seed,
        cfg.evaluation.batch_size,
        device,
    )
