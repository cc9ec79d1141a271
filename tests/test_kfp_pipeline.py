"""The KFP layer: typed wiring, compile of every phase selection, committed YAML freshness, plan, resources."""

import pytest
from kfp import dsl
from kfp.dsl.types.type_utils import InconsistentTypeException
from streetvision_components.phases import PHASE_FUNCTIONS
from streetvision_components.types import split_of_type
from streetvision_pipelines.factory import DEFAULT_PIPELINE_FILE, component_images, make_component
from streetvision_pipelines.inspect_spec import compile_to_documents, describe, load_documents
from streetvision_pipelines.lint import lint_documents

from streetvision.config import load_config
from streetvision.contracts import ContractError, check_access
from streetvision.phase_graph import resolve_phases
from streetvision.registry import CHECKPOINTING_PHASES, PHASE_READS


def test_component_signatures_read_only_what_their_role_allows():
    cfg = load_config()
    for phase in PHASE_FUNCTIONS:
        spec = make_component(phase, cfg).component_spec
        split_inputs = {
            name: split_of_type(inp.type.split("@")[0])
            for name, inp in (spec.inputs or {}).items()
            if split_of_type(inp.type.split("@")[0]) is not None
        }
        declared = {name: split for name, (_, split) in PHASE_READS[phase].items()}
        assert split_inputs == declared, phase
        for name, (role, split) in PHASE_READS[phase].items():
            check_access(role, split, f"{phase}.{name}")  # the table itself obeys the policy


def _wire(bad: str):
    """A pipeline definition with one deliberately wrong edge."""
    cfg = load_config()
    ops = {p: make_component(p, cfg) for p in PHASE_FUNCTIONS}

    @dsl.pipeline(name="miswired")
    def miswired(config: str = "{}"):
        ingest = ops["ingest"](config=config)
        p1 = ops["phase1"](
            config=config,
            train=ingest.outputs["val_test" if bad == "test_as_train" else "train"],
            val_select=ingest.outputs["val_select"],
            val_calib=ingest.outputs["val_calib"],
        )
        source = "val_select_logits" if bad == "select_logits_to_policy" else "val_calib_logits"
        ops["phase2"](config=config, val_calib_logits=p1.outputs[source])

    return miswired


@pytest.mark.parametrize("bad", ["select_logits_to_policy", "test_as_train"])
def test_wrong_split_wiring_fails_at_pipeline_definition(bad):
    with pytest.raises(InconsistentTypeException):
        _wire(bad)


def test_correct_wiring_is_accepted():
    _wire("none")


def test_phase_selection_adds_dependencies_and_refuses_ambiguity():
    assert resolve_phases(["all"])[0] == ["ingest", "phase1", "phase2", "phase6", "evaluate"]
    assert resolve_phases(["all", "phase4"])[0] == ["ingest", "phase4", "phase1", "phase2", "phase6", "evaluate"]
    phases, added = resolve_phases(["phase2"])
    assert phases == ["ingest", "phase1", "phase2"] and added == ["ingest", "phase1"]
    with pytest.raises(ContractError, match="exactly one policy phase"):
        resolve_phases(["phase6"])
    with pytest.raises(ContractError, match="unknown phase"):
        resolve_phases(["phase9"])


VALID_SELECTIONS = [
    ["ingest"],
    ["phase4"],
    ["phase4", "phase2", "phase6", "evaluate"],
    ["phase1"],
    ["phase1", "phase2"],
    ["phase2", "phase6"],
    ["phase1", "phase2", "phase6"],
    ["all"],
]


@pytest.mark.parametrize("phases", VALID_SELECTIONS, ids=lambda p: "+".join(p))
@pytest.mark.parametrize("accelerator", ["h100", "a100", "none"])
def test_every_phase_selection_compiles(phases, accelerator):
    vit = ["model=vit_tiny"] if "phase4" in phases else []  # phase 4 adapts a ViT (a CNN is a config error)
    cfg = load_config([f"pipeline.phases=[{', '.join(phases)}]", f"cluster.accelerator={accelerator}", *vit])
    expected, _ = resolve_phases(phases)
    docs = compile_to_documents(cfg)
    plans = describe(docs)
    assert [p.display_name for p in plans] == expected
    report = lint_documents(docs)
    assert report.ok, [str(f) for f in report.findings]
    for plan in plans:
        gpus = cfg.cluster.resources_for(plan.display_name).gpus
        accel = plan.resources.get("accelerator", {})
        if gpus and accelerator != "none":
            assert accel.get("resourceType") == "nvidia.com/gpu" and accel.get("resourceCount") == str(gpus)
            label = {"h100": "nvidia-h100-80gb", "a100": "nvidia-a100-80gb"}[accelerator]
            assert plan.node_selector == {"cloud.google.com/gke-accelerator": label}
            assert plan.image == component_images(cfg)["gpu"]
        else:
            assert not accel and not plan.node_selector
        assert plan.resources["resourceCpuLimit"] == cfg.cluster.resources_for(plan.display_name).cpu


def _executors(documents: list[dict]) -> dict[str, dict]:
    """Task display name -> its container spec and Kubernetes platform config, as the cluster reads them."""
    spec = documents[0]
    platform = next((d for d in documents[1:] if "platforms" in d), {})
    k8s = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    out = {}
    for task in spec["root"]["dag"]["tasks"].values():
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        out[task["taskInfo"]["name"]] = {
            "task": task,
            "container": spec["deploymentSpec"]["executors"][label]["container"],
            "k8s": k8s.get(label, {}),
        }
    return out


@pytest.mark.parametrize("accelerator", ["h100", "a100"])
def test_compiled_yaml_reads_as_the_cluster_needs(accelerator):
    """Per task, what a cluster acts on: image, requests/limits, GPUs and node pool, retries, volumes."""
    cfg = load_config([f"cluster.accelerator={accelerator}"])
    docs = compile_to_documents(cfg)
    assert lint_documents(docs).ok
    label = {"h100": "nvidia-h100-80gb", "a100": "nvidia-a100-80gb"}[accelerator]
    for phase, ex in _executors(docs).items():
        res = cfg.cluster.resources_for(phase)
        container, k8s = ex["container"], ex["k8s"]
        resources = container["resources"]
        assert (resources["resourceCpuRequest"], resources["resourceCpuLimit"]) == (res.cpu, res.cpu)
        assert (resources["resourceMemoryRequest"], resources["resourceMemoryLimit"]) == (res.memory, res.memory)
        assert ex["task"]["retryPolicy"]["maxRetryCount"] == cfg.cluster.retries
        assert ex["task"]["retryPolicy"]["backoffDuration"] == cfg.cluster.retry_backoff
        if res.gpus:
            assert container["image"] == component_images(cfg)["gpu"]
            accel = resources["accelerator"]  # KFP writes the current and the legacy field names
            assert (accel["resourceType"], accel["resourceCount"]) == ("nvidia.com/gpu", str(res.gpus))
            assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": label}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
            assert k8s["emptyDirMounts"] == [
                {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": cfg.cluster.shm_size, "volumeName": "dshm"}
            ]
        else:
            assert container["image"] == component_images(cfg)["cpu"]
            assert "accelerator" not in resources and "nodeSelector" not in k8s and "tolerations" not in k8s
        if phase in CHECKPOINTING_PHASES:  # resumable: the checkpoint PVC and the run id (stable across retries)
            assert k8s["pvcMount"][0]["constant"] == cfg.cluster.checkpoint_pvc
            assert k8s["pvcMount"][0]["mountPath"] == cfg.cluster.checkpoint_root
            assert k8s["fieldPathAsEnv"] == [
                {"name": "STREETVISION_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"}
            ]
        else:
            assert "pvcMount" not in k8s and "fieldPathAsEnv" not in k8s
        assert "secretAsVolume" not in k8s and "env" not in container  # credentials: the pod's identity


def test_spot_bucket_checkpoints_and_mounted_credentials_compile():
    cfg = load_config(
        [
            "cluster.spot=true",
            "cluster.checkpoint_pvc=",
            "cluster.checkpoint_root=gs://sv/ckpt",
            "cluster.gcp_credentials_secret=gcp-key",
            "cluster.pipeline_root=gs://sv/root",
            "cluster.retries=0",
        ]
    )
    docs = compile_to_documents(cfg)
    assert docs[0]["defaultPipelineRoot"] == "gs://sv/root"
    executors = _executors(docs)
    phase1 = executors["phase1"]
    assert phase1["k8s"]["nodeSelector"]["labels"]["cloud.google.com/gke-spot"] == "true"
    assert {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in phase1[
        "k8s"
    ]["tolerations"]
    assert "pvcMount" not in phase1["k8s"] and phase1["k8s"]["fieldPathAsEnv"]  # gs:// root: no volume needed
    for ex in executors.values():
        assert "retryPolicy" not in ex["task"]
        assert ex["k8s"]["secretAsVolume"][0]["secretName"] == "gcp-key"
        assert {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/google/key.json"} in ex["container"][
            "env"
        ]
    assert "gke-spot" not in str(executors["ingest"]["k8s"])  # CPU phases stay on regular nodes


def test_task_checkpoint_dir_is_per_run_and_phase(monkeypatch):
    from streetvision.cluster_env import RUN_ID_ENV, task_checkpoint_dir

    cfg = load_config()
    monkeypatch.delenv(RUN_ID_ENV, raising=False)
    assert task_checkpoint_dir(cfg, "phase1") is None  # local runs: no cluster location
    monkeypatch.setenv(RUN_ID_ENV, "1f2e-run")
    assert task_checkpoint_dir(cfg, "phase1") == "/mnt/checkpoints/1f2e-run/phase1"
    cfg = load_config(["cluster.checkpoint_pvc=", "cluster.checkpoint_root=gs://sv/ckpt/"])
    assert task_checkpoint_dir(cfg, "phase1") == "gs://sv/ckpt/1f2e-run/phase1"


def test_cluster_config_problems_are_reported_together():
    from streetvision.config import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(
            [
                "cluster.gpu_image=ghcr.io/x/stage1:latest",
                "cluster.pipeline_root=/local/dir",
                "cluster.checkpoint_root=relative",
                "cluster.retries=-1",
                "cluster.shm_size=lots",
            ]
        )
    text = str(info.value)
    for key in ("gpu_image", "pipeline_root", "checkpoint_root", "retries", "shm_size"):
        assert f"cluster.{key}" in text


def test_plan_shows_splits_and_producers():
    plans = {p.display_name: p for p in describe(compile_to_documents(load_config()))}
    phase1_inputs = {r.name: (r.split, r.producer) for r in plans["phase1"].inputs}
    assert phase1_inputs == {
        "train": ("train", "ingest.train"),
        "val_select": ("val_select", "ingest.val_select"),
        "val_calib": ("val_calib", "ingest.val_calib"),
    }
    assert {r.name: r.split for r in plans["evaluate"].inputs} == {"bundle": None, "val_test": "val_test"}


def _significant(text: str) -> list[str]:
    # The compiler writes `#` header comments with dict defaults in random order; everything else is stable.
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


def test_committed_default_pipeline_is_fresh(tmp_path):
    fresh = tmp_path / "fresh.yaml"
    from streetvision_pipelines.factory import compile_pipeline

    compile_pipeline(load_config(), fresh)
    assert DEFAULT_PIPELINE_FILE.is_file(), "run `make compile` to write the default pipeline YAML"
    assert _significant(DEFAULT_PIPELINE_FILE.read_text()) == _significant(fresh.read_text()), (
        "pipelines/streetvision_stage1.yaml is stale: run `make compile` and commit it (it names the image tags, "
        "which hash the library, the lock and the Dockerfile, so any change there needs it)"
    )


def test_compiled_default_carries_the_resolved_config_and_pinned_kfp():
    import json

    docs = load_documents(DEFAULT_PIPELINE_FILE.read_text())
    default = docs[0]["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]
    assert json.loads(default) == json.loads(
        __import__("streetvision.config", fromlist=["x"]).config_to_json(load_config())
    )
    assert docs[0]["sdkVersion"] == "kfp-2.17.3"


def test_components_are_lightweight_without_kfp_install():
    for phase in PHASE_FUNCTIONS:
        container = make_component(phase, load_config()).component_spec.implementation.container
        command = " ".join(container.command)
        assert "pip install" not in command and "kfp.dsl.executor_main" in command


# -- phase 4 (ExPLoRA) -----------------------------------------------------------------------------------


def test_phase4_variant_signature_reads_only_what_phase1_may():
    from streetvision_components.phases import PHASE_VARIANTS

    cfg = load_config()
    for phase, variants in PHASE_VARIANTS.items():
        for function in variants.values():
            spec = make_component(phase, cfg, function).component_spec
            split_inputs = {
                name: split_of_type(inp.type.split("@")[0])
                for name, inp in spec.inputs.items()
                if split_of_type(inp.type.split("@")[0]) is not None
            }
            assert split_inputs == {name: split for name, (_, split) in PHASE_READS[phase].items()}
            assert "system.AdaptedBackbone" in spec.inputs["backbone"].type


def _wire_phase4(bad: str):
    cfg = load_config()
    ops = {p: make_component(p, cfg) for p in ("ingest", "phase4")}

    @dsl.pipeline(name="miswired-phase4")
    def miswired(config: str = "{}"):
        ingest = ops["ingest"](config=config)
        ops["phase4"](
            config=config,
            train=ingest.outputs[
                {"val_calib_as_train": "val_calib", "val_select_as_train": "val_select"}.get(bad, "train")
            ],
            val_select=ingest.outputs["val_test" if bad == "val_test_as_val_select" else "val_select"],
        )

    return miswired


@pytest.mark.parametrize("bad", ["val_calib_as_train", "val_select_as_train", "val_test_as_val_select"])
def test_val_split_into_phase4_fails_at_pipeline_definition(bad):
    with pytest.raises(InconsistentTypeException):
        _wire_phase4(bad)
    _wire_phase4("none")


def test_plan_with_phase4_feeds_its_backbone_to_phase1():
    cfg = load_config(["pipeline.phases=[phase4, phase2, phase6, evaluate]", "model=vit_tiny"])
    docs = compile_to_documents(cfg)
    plans = describe(docs)
    order = [p.display_name for p in plans]
    assert order == ["ingest", "phase4", "phase1", "phase2", "phase6", "evaluate"]
    by_name = {p.display_name: p for p in plans}
    assert {r.name: (r.split, r.producer) for r in by_name["phase4"].inputs} == {
        "train": ("train", "ingest.train"),
        "val_select": ("val_select", "ingest.val_select"),
    }
    phase1_inputs = {r.name: r.producer for r in by_name["phase1"].inputs}
    assert phase1_inputs["backbone"].startswith("phase4") and phase1_inputs["backbone"].endswith(".backbone")
    assert lint_documents(docs).ok
    executors = _executors(docs)
    phase4 = executors["phase4"]  # resumable on a cluster: the checkpoint PVC and the run id
    assert phase4["k8s"]["pvcMount"][0]["constant"] == cfg.cluster.checkpoint_pvc
    assert phase4["k8s"]["fieldPathAsEnv"][0]["name"] == "STREETVISION_RUN_ID"
    assert "phase1_train_adapted" in " ".join(executors["phase1"]["container"]["args"])
    assert "phase1_train_adapted" not in str(compile_to_documents(load_config()))  # off by default


def test_cli_plan_shows_phase4_before_phase1(capsys):
    from streetvision.cli import main

    main(["plan", "--phases", "phase4", "phase1", "model=vit_tiny"])
    out = capsys.readouterr().out
    assert "ingest -> phase4 -> phase1" in out


def test_lint_catches_a_val_split_hand_wired_into_phase4():
    import copy

    docs = compile_to_documents(load_config(["pipeline.phases=[phase4, phase1]", "model=vit_tiny"]))
    assert lint_documents(docs).ok
    broken = copy.deepcopy(docs)
    tasks = broken[0]["root"]["dag"]["tasks"]
    phase4 = next(t for t in tasks.values() if t["taskInfo"]["name"] == "phase4")
    phase4["inputs"]["artifacts"]["train"]["taskOutputArtifact"]["outputArtifactKey"] = "val_calib"
    messages = "\n".join(str(f) for f in lint_documents(broken).findings)
    assert "VAL_CALIB data was given to a step whose role is fit" in messages
