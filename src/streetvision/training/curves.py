"""Training curves as a self-contained HTML page (inline PNG, no network) for the KFP UI."""

from __future__ import annotations

import base64
import html
import io
import json

import matplotlib

matplotlib.use("Agg")  # headless: written inside pipeline tasks
import matplotlib.pyplot as plt  # noqa: E402


def curve_metrics(history: list[dict], metric: str) -> dict[str, float]:
    """Per-epoch scalars for a KFP Metrics artifact (Metrics holds scalars only: one per epoch and curve)."""
    out = {}
    for row in history:
        tag = f"{row['epoch'] + 1:03d}"
        out[f"epoch_{tag}_train_loss"] = float(row["train_loss"])
        out[f"epoch_{tag}_val_select_{metric}"] = float(row[f"val_select_{metric}"])
    return out


def curves_html(history: list[dict], metric: str, summary: dict) -> str:
    """Phase 1's training curves as one self-contained HTML page."""
    epochs = [row["epoch"] + 1 for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(epochs, [row["train_loss"] for row in history], marker="o")
    axes[0].set(title="TRAIN loss", xlabel="epoch")
    axes[1].plot(epochs, [row[f"val_select_{metric}"] for row in history], marker="o", color="#2ca02c")
    axes[1].set(title=f"VAL_SELECT {metric}", xlabel="epoch")
    axes[2].plot(epochs, [row["lr"] for row in history], marker="o", color="#d62728")
    axes[2].set(title="learning rate (end of epoch)", xlabel="epoch")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    image = base64.b64encode(buffer.getvalue()).decode()
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Phase 1 training curves</title></head><body>"
        "<h2>Phase 1 training curves</h2>"
        f"<img alt='training curves' src='data:image/png;base64,{image}'>"
        f"<h3>Summary</h3><pre>{html.escape(json.dumps(summary, indent=2))}</pre></body></html>"
    )
