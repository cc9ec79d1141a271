"""Shared fixtures: tiny configs and a small ingested demo dataset (CPU only, offline)."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from streetvision.config import load_config
from streetvision.config.schema import SigningConfig
from streetvision.contracts import Split
from streetvision.phases.result import PhasePaths
from streetvision.signing import generate_key_pair

# Keep CPU tests predictable on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# The demo renderer is a distribution of its own (demo/, installed by `make test`); the tests, and the
# `streetvision run` processes they start, import it from this checkout whether or not it is installed.
DEMO_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1] / "demo")
sys.path.insert(0, DEMO_PACKAGE_ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (DEMO_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)

# One EC key pair for the session: phase 6 signs with it, tests verify with TRUST (or --public-key PUBLIC_KEY).
_KEYS = Path(tempfile.mkdtemp(prefix="streetvision-test-keys-"))
atexit.register(shutil.rmtree, _KEYS, True)
PRIVATE_KEY, PUBLIC_KEY = generate_key_pair(_KEYS)
TRUST = SigningConfig(method="key", public_key=str(PUBLIC_KEY))

TINY = [
    "model=vit_tiny",  # the shrunk ViT family, shrunk further below (the default CNN has no depth/width knobs)
    "data.demo.num_sequences=80",
    "data.demo.frames_min=1",
    "data.demo.frames_max=2",
    "data.demo.roadwork_fraction=0.6",
    # No absolute floors on the tiny set: its tests count TRAIN batches at the 70/10/10/10 fractions.
    "data.split.min_val_select=0",
    "data.split.min_val_calib=0",
    "model.img_size=32",
    "model.patch_size=8",
    "model.depth=1",
    "model.embed_dim=48",
    "model.num_heads=2",
    "training.epochs=1",
    "training.batch_size=32",
    "calibration.target_risk=0.5",
    "evaluation.bootstrap_resamples=200",
    "evaluation.challenge_levels=[0, 3]",
    f"signing.private_key={PRIVATE_KEY}",
    f"signing.public_key={PUBLIC_KEY}",
]


@pytest.fixture
def tiny_cfg():
    return load_config(TINY)


def split_dirs(root: Path) -> dict[Split, Path]:
    return {split: root / split.value for split in Split}


def with_demo(cfg, cache_root: Path):
    """`cfg` reading the demo scenes as `streetvision run` does: rendered into a folder, read as a manifest."""
    from streetvision_demo import with_demo_data

    return with_demo_data(cfg, cache_root)


def ingest_paths(root: Path) -> PhasePaths:
    """Ingest's outputs: the four splits (as `split_dirs`) and the data report under root."""
    return PhasePaths.of("ingest", **{s.value: p for s, p in split_dirs(root).items()}, data_report=root / "report")


PHASE1_OUTPUTS = ("checkpoint", "val_select_logits", "val_calib_logits")


def phase1_paths(dirs: dict[Split, Path], root: Path, **replaced) -> PhasePaths:
    """Phase 1 on the ingested splits (any input replaced by `replaced`), its outputs under root."""
    splits = {s.value: dirs[s] for s in (Split.TRAIN, Split.VAL_SELECT, Split.VAL_CALIB)}
    return PhasePaths.of("phase1", **{**splits, **{n: root / n for n in PHASE1_OUTPUTS}, **replaced})


@pytest.fixture(scope="session")
def ingested(tmp_path_factory):
    """One ingest of a small demo set, shared by the tests that only read it."""
    from streetvision.phases.ingest import run_ingest

    root = tmp_path_factory.mktemp("ingested")
    cfg = with_demo(load_config(TINY), root / "demo")
    meta = run_ingest(cfg, ingest_paths(root)).outputs
    return cfg, split_dirs(root), root / "report", meta


@pytest.fixture(scope="session")
def trained(ingested, tmp_path_factory):
    """Phase 1 on the shared ingest: checkpoint and logits dirs."""
    from streetvision.phases.phase1 import run_phase1

    cfg, dirs, _, _ = ingested
    root = tmp_path_factory.mktemp("trained")
    paths = phase1_paths(dirs, root)
    run_phase1(cfg, paths)
    return cfg, dirs, {name: paths.output(name) for name in PHASE1_OUTPUTS}


def reseal_record(path: Path, **fields) -> None:
    """Rewrite an artifact's completion record over its files as they are now, with `fields` changed: what a
    hand-assembled artifact looks like. It verifies, so what must catch it is the check after integrity."""
    import json

    from streetvision.contracts.metadata import METADATA_FILE, ArtifactMetadata, write_metadata

    data = json.loads((path / METADATA_FILE).read_text())
    data = {k: v for k, v in {**data, **fields}.items() if k not in ("contents", "digest")}
    write_metadata(path, ArtifactMetadata.from_dict(data))


def phase3_paths(dirs: dict[Split, Path], checkpoint: Path, root: Path) -> PhasePaths:
    """Phase 3 tuning `checkpoint` on the ingested splits; its gate checkpoint and policy (root/gate) under root."""
    splits = {s.value: dirs[s] for s in (Split.TRAIN, Split.VAL_SELECT, Split.VAL_CALIB)}
    outputs = {"gate_checkpoint": root / "gate_checkpoint", "policy": root / "gate"}
    return PhasePaths.of("phase3", checkpoint=checkpoint, **splits, **outputs)


def build_bundle(cfg, dirs, out, root: Path, policy_phase: str = "phase2") -> Path:
    """A policy fitted by `policy_phase` (phase 2's threshold, or phase 5) on the `trained` fixture's VAL_CALIB
    logits in root/policy, and phase 6's bundle of it in root/bundle; returns the bundle."""
    from streetvision.phases.phase6 import run_phase6
    from streetvision.registry import PHASE_SPECS

    fit_policy = PHASE_SPECS[policy_phase].library_function()
    fit_policy(cfg, PhasePaths.of(policy_phase, val_calib_logits=out["val_calib_logits"], policy=root / "policy"))
    bundle = PhasePaths.of(
        "phase6",
        checkpoint=out["checkpoint"],
        policy=root / "policy",
        val_calib=dirs[Split.VAL_CALIB],
        bundle=root / "bundle",
    )
    run_phase6(cfg, bundle)
    return root / "bundle"


def png_rgb16(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
    """A 16-bit-per-sample RGB PNG (PIL writes no such file; the format is simple enough to write here)."""
    import struct
    import zlib

    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 65536, (height, width, 3)).astype(">u2")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # bit depth 16, colour type 2 (RGB)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
