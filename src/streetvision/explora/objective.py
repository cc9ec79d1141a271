"""DINOv2's self-supervised objective, as ExPLoRA continues it: DINO (image level), iBOT (masked patches)
and the KoLeo regulariser, with freshly initialised projection heads and multi-crop views.

Pure functions and two small modules; the training loop (`explora.train`) owns the schedules and the EMA.
Shapes: B images, K prototypes, D features. Losses are cross-entropies between the teacher's centred,
sharpened distribution and the student's distribution, exactly as in DINO/iBOT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """DINO head: 3-layer MLP to a bottleneck, L2 normalisation, then a weight-normalised prototype layer
    (norm fixed to 1, as DINOv2 trains it). Freshly initialised: timm ships no DINOv2 heads."""

    def __init__(self, in_dim: int, prototypes: int, hidden_dim: int, bottleneck_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.prototypes = nn.Parameter(torch.empty(prototypes, bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.prototypes, dim=-1))


def vit_tokens(
    vit: Any, images: torch.Tensor, masks: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class token, patch tokens) of a timm ViT, with masked patches replaced by `mask_token` (iBOT).

    Mirrors `VisionTransformer.forward_features`, adding the mask after the patch embedding as DINOv2 does.
    `masks` is (B, num_patches) bool."""
    x = vit.patch_embed(images)  # (B, H, W, C) with dynamic_img_size, else (B, N, C)
    if masks is not None:
        assert mask_token is not None, "masks need a mask_token"
        x = torch.where(masks.view(*x.shape[:-1], 1), mask_token.to(x.dtype).view(*([1] * (x.ndim - 1)), -1), x)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    x = vit.blocks(x)
    x = vit.norm(x)
    return x[:, 0], x[:, vit.num_prefix_tokens :]


def teacher_probabilities(logits: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """Centring and sharpening: what keeps the teacher from collapsing to one prototype or to uniform."""
    return F.softmax((logits.float() - center) / temperature, dim=-1)


@torch.no_grad()
def update_center(
    center: torch.Tensor,
    teacher_logits: torch.Tensor,
    momentum: float,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The centre moved towards the batch's mean logits. Under DDP `all_reduce` (a sum over the processes)
    makes that the global batch's mean, as DINOv2 does, so every process keeps the same centre."""
    flat = teacher_logits.float().reshape(-1, teacher_logits.shape[-1])
    total = torch.cat([flat.sum(dim=0), flat.new_tensor([flat.shape[0]])])
    if all_reduce is not None:
        total = all_reduce(total)
    return center * momentum + total[:-1] / total[-1] * (1.0 - momentum)


def dino_loss(
    student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor], student_temp: float
) -> torch.Tensor:
    """Cross-entropy of every student view against every teacher (global) view except itself.

    `student_logits[i]` for i < len(teacher_probs) are the global views the teacher also saw."""
    terms = []
    log_student = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_logits]
    for t_idx, q in enumerate(teacher_probs):
        for s_idx, log_p in enumerate(log_student):
            if s_idx == t_idx:
                continue
            terms.append(-(q * log_p).sum(dim=-1).mean())
    return torch.stack(terms).mean()


def ibot_loss(
    student_patch_logits: torch.Tensor,
    teacher_patch_probs: torch.Tensor,
    masks: torch.Tensor,
    student_temp: float,
    masked_patches: float | None = None,
) -> torch.Tensor:
    """Cross-entropy on masked patches only: the student sees the mask token, the teacher the real patch.

    Averaged over `masked_patches` (default: the masked patches of these images; under DDP, the global batch's,
    so the processes' losses sum to the global one)."""
    log_p = F.log_softmax(student_patch_logits.float() / student_temp, dim=-1)
    per_patch = -(teacher_patch_probs * log_p).sum(dim=-1)  # (B, N)
    weight = masks.float()
    count = weight.sum() if masked_patches is None else torch.tensor(masked_patches)
    return (per_patch * weight).sum() / count.clamp_min(1.0)


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate: push each feature away from its nearest neighbour in the batch."""
    x = F.normalize(features.float(), dim=-1)
    with torch.no_grad():
        sims = x @ x.t()
        sims.fill_diagonal_(-2.0)
        nearest = sims.argmax(dim=1)
    distances = F.pairwise_distance(x, x[nearest], eps=eps)
    return -torch.log(distances + eps).mean()


def random_patch_masks(
    batch: int,
    num_patches: int,
    ratio_range: tuple[float, float],
    probability: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, N) bool: a fraction `probability` of the images get a random `ratio_range` share of patches masked."""
    masks = torch.zeros(batch, num_patches, dtype=torch.bool)
    chosen = torch.rand(batch, generator=generator) < probability
    low, high = ratio_range
    for i in torch.nonzero(chosen).flatten().tolist():
        ratio = low + (high - low) * torch.rand(1, generator=generator).item()
        count = max(1, int(round(ratio * num_patches)))
        masks[i, torch.randperm(num_patches, generator=generator)[:count]] = True
    return masks


def build_multicrop(
    img_size: int, local_size: int, global_scale: tuple[float, float], local_scale: tuple[float, float]
) -> tuple[nn.Module, nn.Module]:
    """Per-sample GPU augmentations (kornia) for the global and the local views: DINO's photometric recipe."""
    import kornia.augmentation as K

    def views(size: int, scale: tuple[float, float], blur_p: float, solarize_p: float) -> nn.Module:
        kernel = max(3, (size // 10) | 1)  # odd, about 10 % of the view, like torchvision's DINO recipe
        return K.AugmentationSequential(
            K.RandomResizedCrop((size, size), scale=scale),
            K.RandomHorizontalFlip(),
            K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
            K.RandomGaussianBlur((kernel, kernel), sigma=(0.1, 2.0), p=blur_p),
            K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p),
        )

    return views(img_size, global_scale, 0.5, 0.1), views(local_size, local_scale, 0.5, 0.0)
