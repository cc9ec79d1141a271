"""Every shipped config loads, compiles with the real KFP compiler and asks the cluster for what its tasks
need: both cluster overlays x both real models x every valid phase selection (as torchtune binds every
shipped recipe). GPU tasks get the accelerator, the GKE node pool and a memory-backed /dev/shm; CPU tasks get
no GPU and stay off the GPU nodes."""

import itertools
import json
from pathlib import Path

import pytest
from streetvision_pipelines.factory import GKE_ACCELERATORS
from streetvision_pipelines.inspect_spec import compile_to_documents
from streetvision_pipelines.lint import lint_documents

from streetvision.config import config_to_json, load_config
from streetvision.config.loader import preset_groups
from streetvision.config.schema import PHASE_NAMES
from streetvision.contracts import ContractError
from streetvision.phase_graph import resolve_phases

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("manifests/overlays/*/streetvision.yaml"))
MODELS = ["vit_small", "vit_base"]
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _valid_selections() -> list[list[str] | None]:
    """One selection per distinct pipeline the phase graph allows: the default (None: pipeline.phases as
    shipped), the `all ...` forms and the README's subset first, then the smallest subset of phases for each
    pipeline not yet seen."""
    selections = [
        None,
        ["all", "phase3"],
        ["all", "phase5"],
        ["all", "phase4"],
        ["all", "phase4", "phase5"],
        ["phase1", "phase2", "phase6"],
    ]
    seen = {tuple(resolve_phases(s or list(load_config().pipeline.phases))[0]) for s in selections}
    for size in range(1, len(PHASE_NAMES) + 1):
        for subset in itertools.combinations(PHASE_NAMES, size):
            try:
                phases = tuple(resolve_phases(list(subset))[0])
            except ContractError:  # a bundle without exactly one policy phase
                continue
            if phases not in seen:
                seen.add(phases)
                selections.append(list(subset))
    return selections


SELECTIONS = _valid_selections()


def _tasks(documents: list[dict]) -> dict[str, tuple[dict, dict]]:
    """Task display name -> (its container spec, its Kubernetes executor config), as the cluster reads them."""
    spec = documents[0]
    platform = next((d for d in documents[1:] if "platforms" in d), {})
    k8s = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    tasks = {}
    for task in spec["root"]["dag"]["tasks"].values():
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        tasks[task["taskInfo"]["name"]] = (spec["deploymentSpec"]["executors"][label]["container"], k8s.get(label, {}))
    return tasks


def test_the_selections_cover_the_named_ones_and_are_distinct():
    named = [s for s in SELECTIONS if s is None or "all" in s]
    assert len(named) == 5 and ["phase1", "phase2", "phase6"] in SELECTIONS and ["ingest"] in SELECTIONS
    resolved = [tuple(resolve_phases(s or ["all"])[0]) for s in SELECTIONS]
    assert len(resolved) == len(set(resolved)) > 20


@pytest.mark.parametrize("phases", SELECTIONS, ids=lambda s: "default" if s is None else "+".join(s))
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shipped_config_compiles_and_asks_for_what_each_task_needs(overlay, model, phases):
    overrides = [f"model={model}"] + ([f"pipeline.phases=[{', '.join(phases)}]"] if phases else [])
    cfg = load_config(overrides, ROOT / overlay)
    # The config itself: the overlay's node pool, the real model, the GPU recipe.
    assert cfg.cluster.accelerator == Path(overlay).parent.name
    assert cfg.model.weights == "hub" and cfg.model.img_size == 224 and cfg.model.depth is None
    assert cfg.training.precision == "bf16" and cfg.training.compile and cfg.training.ema_decay > 0

    docs = compile_to_documents(cfg)
    spec = docs[0]
    assert json.loads(spec["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]) == json.loads(
        config_to_json(cfg)
    )  # tasks receive this config
    assert lint_documents(docs).ok
    tasks = _tasks(docs)
    assert sorted(tasks) == sorted(resolve_phases(cfg.pipeline.phases)[0])
    node_pool = {"cloud.google.com/gke-accelerator": GKE_ACCELERATORS[cfg.cluster.accelerator]}
    for phase, (container, k8s) in tasks.items():
        gpus = cfg.cluster.resources_for(phase).gpus
        resources = container["resources"]
        if gpus:
            accelerator = resources["accelerator"]
            assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", str(gpus)), phase
            assert k8s["nodeSelector"]["labels"] == node_pool, phase
            assert GPU_TOLERATION in k8s["tolerations"], phase
            assert {
                "medium": "Memory",
                "mountPath": "/dev/shm",
                "sizeLimit": cfg.cluster.shm_size,
                "volumeName": "dshm",
            } in k8s["emptyDirMounts"], phase
        else:
            assert "accelerator" not in resources, phase
            assert "nodeSelector" not in k8s and "tolerations" not in k8s, phase


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_preset_combination_loads_over_the_overlay(overlay):
    groups = preset_groups()
    for choice in itertools.product(*([f"{group}={name}" for name in names] for group, names in groups.items())):
        cfg = load_config(list(choice), ROOT / overlay)
        assert cfg.cluster.accelerator == Path(overlay).parent.name, choice
