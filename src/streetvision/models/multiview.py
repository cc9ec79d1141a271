"""Multi-view inference: 1 global view + a 3x3 grid of overlapping local views, scored in one batch.

A checkpoint whose ``model_config.json`` records ``multiview`` is loaded wrapped in
:class:`MultiViewClassifier`, so every caller of ``load_model_dir``/``predict_logits`` (phase 6, the bundle's
inference, evaluation) scores exactly as selection did. The cost is ~10x a single view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GRID = 3
AGGREGATIONS = ("mean_prob", "mean_logit", "max")


def make_views(x: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """(N, C, S, S) -> (V*N, C, S, S), view-major: the image itself, then grid x grid crops of half its
    side (overlapping by a quarter), each resized back to S."""
    n, _, height, width = x.shape
    ch, cw = height // 2, width // 2
    views = [x]
    for row in range(grid):
        for col in range(grid):
            top = round(row * (height - ch) / (grid - 1))
            left = round(col * (width - cw) / (grid - 1))
            crop = x[:, :, top : top + ch, left : left + cw]
            views.append(F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False))
    return torch.cat(views)


def aggregate(logits: torch.Tensor, n_views: int, how: str) -> torch.Tensor:
    """(V*N, 2) view-major logits -> (N, 2) logits whose softmax is the aggregated probability."""
    per_view = logits.float().reshape(n_views, -1, logits.shape[-1])
    if how == "mean_logit":
        return per_view.mean(0)
    if how == "mean_prob":
        return torch.log(per_view.softmax(-1).mean(0).clamp_min(1e-12))
    if how == "max":  # most roadwork-looking view decides: P(roadwork) = max over views
        p1 = per_view.softmax(-1)[..., 1].amax(0).clamp(1e-12, 1 - 1e-7)
        return torch.stack([torch.log1p(-p1), torch.log(p1)], dim=-1)
    raise ValueError(f"unknown multi-view aggregation {how!r}; expected one of {AGGREGATIONS}")


class MultiViewClassifier(nn.Module):
    def __init__(self, model: nn.Module, aggregation: str = "mean_prob", grid: int = GRID):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown multi-view aggregation {aggregation!r}; expected one of {AGGREGATIONS}")
        self.model, self.aggregation, self.grid = model, aggregation, grid
        # timm's resolve_data_config reads these (normalization of the wrapped model).
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})

    @property
    def n_views(self) -> int:
        return 1 + self.grid * self.grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return aggregate(self.model(make_views(x, self.grid)), self.n_views, self.aggregation)


def multiview_cost() -> int:
    return 1 + GRID * GRID


__all__ = ["AGGREGATIONS", "MultiViewClassifier", "aggregate", "make_views", "multiview_cost"]
