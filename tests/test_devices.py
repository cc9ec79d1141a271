"""The device rule: a task computes where its resources put it (cluster.<phase>.gpus), not where a training
setting says. CUDA visibility is set explicitly in each test, so the tests mean the same on a GPU machine."""

import pytest
import torch
from conftest import TINY, build_bundle, phase1_paths

from streetvision.config import load_config
from streetvision.config.schema import PHASE_NAMES
from streetvision.contracts import ContractError
from streetvision.devices import task_device
from streetvision.drift import REFERENCE_FILE
from streetvision.phases.phase1 import run_phase1


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda"])
def test_a_task_without_gpus_runs_on_cpu_whatever_training_device_says(device, with_cuda):
    cfg = load_config([f"training.device={device}"])
    cpu_phases = [p for p in PHASE_NAMES if cfg.cluster.resources_for(p).gpus == 0]
    assert {"ingest", "phase2", "phase5", "phase6"} <= set(cpu_phases)
    for phase in cpu_phases:
        assert task_device(cfg, phase) == torch.device("cpu"), phase


def test_a_gpu_task_follows_training_device(with_cuda):
    assert task_device(load_config(["training.device=auto"]), "phase1", local_rank=3) == torch.device("cuda", 3)
    assert task_device(load_config(["training.device=cuda"]), "evaluate") == torch.device("cuda", 0)
    assert task_device(load_config(["training.device=cpu"]), "phase1") == torch.device("cpu")


def test_auto_falls_back_to_cpu_without_a_visible_gpu(no_cuda):
    for phase in ("phase1", "phase3", "phase4", "evaluate"):
        assert task_device(load_config(["training.device=auto"]), phase) == torch.device("cpu")


def test_cuda_without_a_visible_gpu_names_the_phase_and_the_fix(no_cuda):
    with pytest.raises(ContractError) as info:
        task_device(load_config(["training.device=cuda"]), "phase3")
    assert "no CUDA device is visible" in info.value.what
    assert "phase3" in info.value.where and "cluster.phase3.gpus=1" in info.value.where
    assert "training.device=auto" in info.value.fix
    # The same phase given no GPUs is a CPU task: nothing to complain about.
    assert task_device(load_config(["training.device=cuda", "cluster.phase3.gpus=0"]), "phase3").type == "cpu"


def test_phase6_runs_on_cpu_with_training_device_cuda(trained, tmp_path, no_cuda):
    """Phase 6 has no GPUs (and the CPU image): its drift reference must not ask for CUDA."""
    _, dirs, out = trained
    cfg = load_config(TINY + ["training.device=cuda"])
    assert cfg.cluster.resources_for("phase6").gpus == 0
    bundle = build_bundle(cfg, dirs, out, tmp_path)
    assert (bundle / REFERENCE_FILE).is_file()  # computed on VAL_CALIB with the bundle's weights, on CPU


def test_phase1_with_training_device_cuda_fails_clearly_before_writing(ingested, tmp_path, no_cuda):
    _, dirs, _, _ = ingested
    cfg = load_config(TINY + ["training.device=cuda"])
    with pytest.raises(ContractError, match="no CUDA device is visible") as info:
        run_phase1(cfg, phase1_paths(dirs, tmp_path))
    assert "phase1" in info.value.where
    assert not (tmp_path / "checkpoint").exists()
