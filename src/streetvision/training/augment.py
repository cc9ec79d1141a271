"""Training augmentation matching the deployment challenges, per sample, on whole batches.

Every parameter is drawn per sample, but the work is a fixed handful of batched ops (a chain of kornia
augmenters, one per op, held ViT-S training on an H200 to 58 % of its synthetic-input speed):

1. JPEG re-compression with a real encoder (libjpeg through torchvision) on the host, in the threads that read
   uint8 batches from the cache ahead of the step. A JPEG codec on the device would stall every step (nvJPEG
   round-trips through host memory) or cost more than the step (kornia's differentiable approximation), so
   this op comes first rather than last; its draws come from a generator seeded per batch.
2. On the model's device, from the float batch: random resized crop, rotation and both flips composed into one
   affine matrix per sample and applied in one ``grid_sample`` (one resampling instead of two);
3. brightness, contrast, saturation and hue (torchvision's ColorJitter factors) on the samples drawn;
4. Gaussian blur (kornia, per-sample sigma) and Gaussian noise on the samples drawn.

The same code runs on CPU and GPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streetvision.config.schema import AugmentConfig

_BLUR_KERNEL = (5, 5)
_BLUR_SIGMA = (0.1, 1.5)
# Draws (columns 0-15 of forward's) under which every op is skipped: crop area 1, aspect 1, centre 0, no
# rotation, no flip, no jitter, blur or noise (each op fires where its draw is below its probability, at most 1).
_NO_OP_DRAWS = torch.tensor([1.0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0] + [1.0] * 8)
_JPEG_STREAM = 0x4A504547  # keeps the JPEG draws apart from other generators seeded with the same numbers


class BatchAugment(nn.Module):
    """Per-sample challenge augmentation: ``recompress`` on uint8 host batches, then the module itself on the
    float batch (N, 3, S, S) in [0, 1] on the device, to (N, 3, img_size, img_size). Strength 0 changes nothing.

    Device-side draws come from torch's generators (choices and magnitudes on the host, noise on the batch's
    device), a fixed number per batch, so a seeded or resumed run augments identically.
    """

    def __init__(self, img_size: int, cfg: AugmentConfig):
        super().__init__()
        s = cfg.strength
        self.enabled = s > 0
        self.img_size = img_size
        self.hflip_p = cfg.hflip_p
        self.vflip_p = min(1.0, cfg.vflip_p * s)
        self.rotation_p = min(1.0, 0.5 * s) if cfg.rotation_degrees > 0 else 0.0
        self.rotation_rad = math.radians(cfg.rotation_degrees * s)
        self.crop_scale_min = max(0.01, 1.0 - (1.0 - cfg.crop_scale_min) * s)
        self.log_ratio_max = math.log(cfg.crop_ratio_max)
        self.jitter_p = min(1.0, cfg.color_jitter_p * s) if cfg.color_jitter > 0 else 0.0
        self.jitter = cfg.color_jitter * s
        self.hue = cfg.color_jitter_hue * s
        self.blur_p = min(1.0, cfg.blur_p * s)
        self.noise_p = min(1.0, cfg.noise_p * s) if cfg.noise_std > 0 else 0.0
        self.noise_std = cfg.noise_std * s
        self.jpeg_p = min(1.0, cfg.jpeg_p * s)
        self.jpeg_quality_min = round(cfg.jpeg_quality_min)
        self.plain_share = cfg.plain_share

    def recompress(self, batch: torch.Tensor, seed: list[int]) -> torch.Tensor:
        """JPEG-encode and decode, in place, the samples of a uint8 host batch (N, H, W, 3) drawn with
        probability jpeg_p, each at a quality drawn from [jpeg_quality_min, 95]; `seed` names the batch (run
        seed, epoch, batch, process), so the draws do not depend on which thread reads which batch."""
        if self.jpeg_p <= 0:
            return batch
        from torchvision.io import decode_jpeg, encode_jpeg

        rng = np.random.default_rng([*seed, _JPEG_STREAM])
        picked = rng.random(len(batch)) < self.jpeg_p
        qualities = rng.integers(self.jpeg_quality_min, 96, len(batch))
        # torchvision's codecs (deprecated in 0.29 for TorchCodec, which needs a system FFmpeg; pytest is told to
        # ignore that) release the GIL, so the reader threads encode in parallel.
        for i in np.flatnonzero(picked):
            encoded = encode_jpeg(batch[i].permute(2, 0, 1).contiguous(), quality=int(qualities[i]))
            batch[i] = decode_jpeg(encoded).permute(1, 2, 0)
        return batch

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        # Every choice and magnitude is drawn on the host (torch's CPU generator), so which samples an op
        # touches is known without waiting for the device; only the noise itself is drawn on the device.
        draws = torch.rand(x.shape[0], 17)
        # The plain share skips every device-side op: draws that pick no op, a full centred crop, no rotation.
        draws[draws[:, 16] < self.plain_share, :16] = _NO_OP_DRAWS
        x = self.geometry(x, draws[:, :8])
        if self.jitter_p > 0:
            x = self.colour(x, draws[:, 8:13])
        if self.blur_p > 0:
            chosen = _indices(draws[:, 13] < self.blur_p, x.device)
            if chosen is not None:
                from kornia.filters import gaussian_blur2d

                sigma = _BLUR_SIGMA[0] + (_BLUR_SIGMA[1] - _BLUR_SIGMA[0]) * draws[:, 14:15].expand(-1, 2)
                x[chosen] = gaussian_blur2d(x[chosen], _BLUR_KERNEL, _to(sigma, x)[chosen])
        if self.noise_p > 0:
            chosen = _indices(draws[:, 15] < self.noise_p, x.device)
            if chosen is not None:
                x[chosen] += torch.randn((len(chosen), *x.shape[1:]), device=x.device, dtype=x.dtype) * self.noise_std
        return x.clamp_(0.0, 1.0)  # noise and jitter can leave [0, 1]; deployed images are uint8

    def affine(self, draws: torch.Tensor) -> torch.Tensor:
        """(n, 2, 3) matrices mapping output to input coordinates in [-1, 1] from (n, 8) uniform draws: crop,
        then rotation and flips of the crop. The crop follows RandomResizedCrop (area share in
        [crop_scale_min, 1], log-uniform aspect ratio), clamped to the image where a draw does not fit
        instead of redrawn."""
        u = draws
        area = self.crop_scale_min + (1.0 - self.crop_scale_min) * u[:, 0]
        ratio = torch.exp((2 * u[:, 1] - 1) * self.log_ratio_max)
        half_w = torch.sqrt(area * ratio).clamp(max=1.0)  # half-sizes in [-1, 1] units = side fractions
        half_h = torch.sqrt(area / ratio).clamp(max=1.0)
        centre_x = (2 * u[:, 2] - 1) * (1 - half_w)
        centre_y = (2 * u[:, 3] - 1) * (1 - half_h)
        angle = (2 * u[:, 4] - 1) * self.rotation_rad * (u[:, 5] < self.rotation_p).float()
        flip_x = 1 - 2 * (u[:, 6] < self.hflip_p).float()
        flip_y = 1 - 2 * (u[:, 7] < self.vflip_p).float()
        cos, sin = torch.cos(angle), torch.sin(angle)
        # input = centre + diag(half_w, half_h) @ rotation @ diag(flip_x, flip_y) @ output
        return torch.stack(
            [
                torch.stack([half_w * cos * flip_x, -half_w * sin * flip_y, centre_x], dim=1),
                torch.stack([half_h * sin * flip_x, half_h * cos * flip_y, centre_y], dim=1),
            ],
            dim=1,
        )

    def geometry(self, x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        grid = F.affine_grid(_to(self.affine(draws), x), [n, c, self.img_size, self.img_size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def colour(self, x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """torchvision's ColorJitter (brightness, contrast, saturation factors each in [1 - j, 1 + j], then hue),
        in that fixed order, on the samples drawn, from (n, 5) draws."""
        chosen = _indices(draws[:, 0] < self.jitter_p, x.device)
        if chosen is None:
            return x
        factors = _to(1 + (2 * draws[:, 1:4] - 1) * self.jitter, x)[chosen].view(-1, 3, 1, 1, 1)
        y = (x[chosen] * factors[:, 0]).clamp_(0.0, 1.0)
        mean = _grey(y).mean(dim=(-2, -1), keepdim=True)
        y = ((y - mean) * factors[:, 1] + mean).clamp_(0.0, 1.0)
        grey = _grey(y)
        y = ((y - grey) * factors[:, 2] + grey).clamp_(0.0, 1.0)
        if self.hue > 0:
            from kornia.enhance import adjust_hue

            y = adjust_hue(y, _to((2 * draws[:, 4] - 1) * (self.hue * 2 * math.pi), x)[chosen])
        x[chosen] = y
        return x


def _indices(picked: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """Device indices of the samples picked (a host bool per sample), or None when there are none."""
    idx = picked.nonzero().squeeze(1)
    return idx.to(device, non_blocking=True) if idx.numel() else None


def _to(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.to(device=x.device, dtype=x.dtype, non_blocking=True)


def _grey(x: torch.Tensor) -> torch.Tensor:
    # ITU-R 601 luma, as torchvision and kornia convert RGB to greyscale.
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
