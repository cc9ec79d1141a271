"""Training augmentation matching the deployment challenges, per sample, on whole batches (kornia).

Runs on the model's device from the uint8 cache: the same code on CPU and GPU.
"""

from __future__ import annotations

from torch import nn

from streetvision.config.schema import AugmentConfig


def build_augmentation(img_size: int, cfg: AugmentConfig) -> nn.Module:
    """A kornia pipeline for float images in [0, 1] (N, 3, S, S); identity when strength is 0."""
    if cfg.strength <= 0:
        return nn.Identity()
    import kornia.augmentation as K

    s = cfg.strength
    p = lambda value: min(1.0, value * s)  # noqa: E731
    # Ops with nothing to do are left out (they would still draw random numbers). The demo's light recipe
    # (hflip, crop, jitter) comes first, in its original order, so it draws exactly as it always did.
    ops: list[nn.Module] = []
    if cfg.hflip_p > 0:
        ops.append(K.RandomHorizontalFlip(p=cfg.hflip_p))
    crop_min = max(0.01, 1.0 - (1.0 - cfg.crop_scale_min) * s)
    ops.append(K.RandomResizedCrop((img_size, img_size), scale=(crop_min, 1.0),
                                   ratio=(1.0 / cfg.crop_ratio_max, cfg.crop_ratio_max)))
    if cfg.color_jitter > 0 and cfg.color_jitter_p > 0:
        j = cfg.color_jitter * s
        ops.append(K.ColorJitter(j, j, j, cfg.color_jitter_hue * s, p=p(cfg.color_jitter_p)))
    if cfg.rotation_degrees > 0:
        ops.append(K.RandomRotation(cfg.rotation_degrees * s, p=p(0.5)))
    if cfg.vflip_p > 0:
        ops.append(K.RandomVerticalFlip(p=p(cfg.vflip_p)))
    if cfg.jpeg_p > 0:
        ops.append(K.RandomJPEG(jpeg_quality=(cfg.jpeg_quality_min, 95.0), p=p(cfg.jpeg_p)))
    if cfg.blur_p > 0:
        ops.append(K.RandomGaussianBlur((5, 5), (0.1, 1.5), p=p(cfg.blur_p)))
    if cfg.noise_p > 0 and cfg.noise_std > 0:
        ops.append(K.RandomGaussianNoise(std=cfg.noise_std * s, p=p(cfg.noise_p)))
    return nn.Sequential(K.AugmentationSequential(*ops), _Clamp())


class _Clamp(nn.Module):
    # Noise and jitter can leave [0, 1]; the deployed images are uint8.
    def forward(self, x):
        return x.clamp_(0.0, 1.0)
