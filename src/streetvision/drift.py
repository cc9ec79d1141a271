"""Drift: does a new batch of images look like the data the bundle's policy was fitted on?

The bundle keeps a reference from VAL_CALIB (the policy's own data): the calibrated confidences, a sample of
the backbone's pooled embeddings, and their mean and covariance. A new folder of images is compared with
two tests, each with a p-value: Kolmogorov-Smirnov on the confidences (what the policy thresholds), and a
permutation test of the RBF-kernel MMD on the embeddings (what the model sees). The Fréchet distance between
the embedding Gaussians is reported beside them as a size of the shift, not as a test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg
from scipy.stats import ks_2samp, permutation_test

from streetvision.config.schema import SigningConfig
from streetvision.contracts.errors import DataError
from streetvision.models import to_model_input

REFERENCE_FILE = "drift_reference.npz"
MAX_REFERENCE_EMBEDDINGS = 1000  # keeps the bundle small and the permutation test fast


@torch.no_grad()
def embeddings(
    model: torch.nn.Module,
    images: np.ndarray,
    mean: list[float],
    std: list[float],
    batch_size: int = 128,
    device: str = "cpu",
) -> np.ndarray:
    """Pooled pre-logit features (N, D) of uint8 NHWC images: what the classifier head reads (for a multi-view
    model, of the whole frame: the global view)."""
    timm_model: Any = getattr(model, "model", model)  # MultiViewClassifier wraps the timm model
    timm_model.eval().to(device)
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
        features = timm_model.forward_features(to_model_input(batch, mean_t, std_t))
        out.append(timm_model.forward_head(features, pre_logits=True).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, timm_model.num_features), np.float32)


def build_reference(confidence: np.ndarray, features: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The reference statistics a bundle stores (from VAL_CALIB)."""
    if len(confidence) < 2 or len(features) != len(confidence):
        raise DataError(
            f"a drift reference needs >= 2 images with one embedding each, got {len(confidence)} "
            f"confidences and {len(features)} embeddings",
            "drift reference",
            "build it from the VAL_CALIB split the policy was fitted on",
        )
    keep = np.random.default_rng(seed).permutation(len(features))[:MAX_REFERENCE_EMBEDDINGS]
    return {
        "confidence": np.asarray(confidence, np.float32),
        "confidence_histogram": np.histogram(confidence, bins=20, range=(0.5, 1.0))[0],
        "embedding_sample": np.asarray(features[np.sort(keep)], np.float32),
        "embedding_mean": features.mean(axis=0),
        "embedding_cov": np.cov(features, rowvar=False),
    }


def save_reference(directory: str | Path, reference: dict[str, np.ndarray]) -> Path:
    path = Path(directory) / REFERENCE_FILE
    with open(path, "wb") as handle:  # np.savez on a path would append .npz to a temporary name
        np.savez(handle, **reference)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    return path


def load_reference(directory: str | Path) -> dict[str, np.ndarray]:
    path = Path(directory) / REFERENCE_FILE
    if not path.is_file():
        raise DataError(
            f"{REFERENCE_FILE} is missing",
            str(directory),
            "export the bundle again with this version; older bundles carry no drift reference",
        )
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(A + B - 2 (A B)^1/2), the distance between two Gaussians (as in FID)."""
    root = linalg.sqrtm(cov_a @ cov_b)
    root = root.real if np.iscomplexobj(root) else root
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * root))


def _mmd_statistic(pooled: np.ndarray, bandwidth: float):
    """MMD^2 (biased) with an RBF kernel between two groups of rows of `pooled`, given as index arrays
    (scipy's permutation test shuffles 1-D samples, so the rows travel as their indices)."""
    sq = np.sum(pooled**2, 1)
    gram = np.exp(-np.maximum(sq[:, None] + sq[None, :] - 2.0 * pooled @ pooled.T, 0.0) / (2.0 * bandwidth**2))

    def mmd(x: np.ndarray, y: np.ndarray) -> float:
        x, y = x.astype(np.int64), y.astype(np.int64)
        return float(gram[np.ix_(x, x)].mean() + gram[np.ix_(y, y)].mean() - 2.0 * gram[np.ix_(x, y)].mean())

    return mmd


@dataclass
class DriftResult:
    n_new: int
    n_reference: int
    ks_statistic: float
    ks_pvalue: float
    mmd: float
    mmd_pvalue: float
    frechet: float
    alpha: float
    errors: list[dict] = field(default_factory=list)  # files left out: {"path", "error", "fix"}

    @property
    def drifted(self) -> bool:
        # Two tests: Bonferroni keeps the chance of a false alarm at alpha.
        return min(self.ks_pvalue, self.mmd_pvalue) < self.alpha / 2

    def verdict(self) -> str:
        if self.drifted:
            return (
                f"DRIFT: the new images differ from the policy's calibration data (KS p={self.ks_pvalue:.3g}, "
                f"MMD p={self.mmd_pvalue:.3g}, alpha={self.alpha} over 2 tests). The policy's guarantee was "
                "fitted on other data and may not hold here; recalibrate on labelled data like these."
            )
        return (
            f"no drift detected (KS p={self.ks_pvalue:.3g}, MMD p={self.mmd_pvalue:.3g}, alpha={self.alpha} "
            "over 2 tests); absence of evidence, not proof of sameness, with small samples."
        )


def compare(
    reference: dict[str, np.ndarray],
    confidence: np.ndarray,
    features: np.ndarray,
    alpha: float = 0.05,
    permutations: int = 500,
    seed: int = 0,
) -> DriftResult:
    """Test new confidences and embeddings against a bundle's reference."""
    if len(confidence) < 2:
        raise DataError(
            f"{len(confidence)} image(s) to compare",
            "drift check",
            "give at least a few dozen images; the tests have no power below that",
        )
    ks = ks_2samp(confidence, reference["confidence"])
    sample = reference["embedding_sample"].astype(np.float64)
    new = np.asarray(features, np.float64)[:MAX_REFERENCE_EMBEDDINGS]
    pooled = np.concatenate([sample, new])
    # Median heuristic for the kernel width, from the pooled sample.
    distances = np.sqrt(np.maximum(np.sum((pooled[:, None, :200] - pooled[None, :, :200]) ** 2, -1), 0.0))
    bandwidth = float(np.median(distances[distances > 0])) if np.any(distances > 0) else 1.0
    groups = (np.arange(len(sample)), np.arange(len(sample), len(pooled)))
    test = permutation_test(
        groups,
        _mmd_statistic(pooled, bandwidth),
        permutation_type="independent",
        vectorized=False,
        n_resamples=permutations,
        alternative="greater",
        random_state=np.random.default_rng(seed),
    )
    cov = np.cov(features, rowvar=False) if len(features) > 1 else np.zeros_like(reference["embedding_cov"])
    frechet = frechet_distance(reference["embedding_mean"], reference["embedding_cov"], features.mean(axis=0), cov)
    return DriftResult(
        len(confidence),
        len(reference["confidence"]),
        float(ks.statistic),
        float(ks.pvalue),
        float(test.statistic),
        float(test.pvalue),
        frechet,
        alpha,
    )


def check_drift(
    bundle_dir: str | Path,
    paths: list[str | Path],
    alpha: float = 0.05,
    permutations: int = 500,
    trust: SigningConfig | None = None,
    allow_unsigned: bool = False,
) -> DriftResult:
    """Compare images (files or folders) with the reference stored in a bundle. A file that cannot be used is
    left out of the tests and reported in `errors` (its path, what is wrong, and the fix).

    Args:
        bundle_dir: the bundle folder; its VAL_CALIB reference is what the images are compared with.
        paths: image files, or folders searched recursively.
        alpha: the verdict's false-alarm rate (Bonferroni over the KS and MMD tests).
        permutations: MMD permutation resamples.
        trust: who may have signed the bundle (see `Bundle.load`).
        allow_unsigned: accept an unsigned bundle.

    Returns:
        The test statistics, p-values, Frechet distance and verdict (`DriftResult.drifted`), with `errors`.

    Raises:
        BundleError: the bundle does not verify (see `Bundle.load`).
        ConfigError: no `trust` for a signed bundle and `allow_unsigned` not set.
        DataError: fewer than two usable images.
    """
    from streetvision.inference import Bundle

    bundle = Bundle.load(bundle_dir, trust, allow_unsigned)
    reference = load_reference(bundle_dir)
    records, images = bundle.decode_paths(paths)
    errors = [record for record in records if "error" in record]
    if len(images) < 2:
        shown = "; ".join(f"{r['path']}: {r['error']}" for r in errors[:5])
        raise DataError(
            f"{len(images)} usable image(s) of {len(records)} to compare" + (f" (unusable: {shown})" if shown else ""),
            "drift check",
            "give at least a few dozen readable images; the tests have no power below that",
        )
    preds = bundle.predict(images)
    features = embeddings(bundle.model, images, bundle.preprocessing["mean"], bundle.preprocessing["std"])
    result = compare(reference, preds.confidence, features, alpha, permutations)
    result.errors = errors
    return result
