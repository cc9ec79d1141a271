"""The pipeline factory: `build_pipeline(cfg)` returns a KFP pipeline with only the selected phases.

Phases are chosen at compile time (no dsl.If): the local runner's control-flow support is young, and a
compiled YAML that shows exactly what runs is easier to review. Tasks are wired by artifact type, so a
mis-wired split fails here, when the pipeline is defined.
"""

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kfp import compiler, dsl, kubernetes
from streetvision_components.phases import PHASE_FUNCTIONS, PHASE_VARIANTS
from streetvision_pipelines import images

from streetvision.cluster_env import RUN_ID_ENV, RUN_ID_FIELD_PATH
from streetvision.config import Config, config_to_json
from streetvision.phase_graph import resolve_phases
from streetvision.registry import CHECKPOINTING_PHASES, PHASE_SPECS

# GKE node labels for each accelerator choice (cloud.google.com/gke-accelerator).
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
GKE_ACCELERATORS = {"h100": "nvidia-h100-80gb", "a100": "nvidia-a100-80gb"}

DEFAULT_PIPELINE_FILE = Path(__file__).with_name("streetvision_stage1.yaml")

# GKE spot node pools carry this label (and, when configured, a taint of the same key).
GKE_SPOT_LABEL = "cloud.google.com/gke-spot"
# Where a cluster.gcp_credentials_secret is mounted; the secret holds the key as `key.json`.
GCP_CREDENTIALS_DIR = "/var/secrets/google"


def component_images(cfg: Config) -> dict[str, str]:
    """{"gpu": image, "cpu": image}: the configured ones, or ("") the tags of the images built from this
    checkout (pipelines/images.py), so a compiled pipeline names exactly the images of its own source."""
    gpu, cpu = cfg.cluster.gpu_image, cfg.cluster.cpu_image
    if not (gpu and cpu):
        tags = images.image_tags(cfg.cluster.image_registry)
        gpu, cpu = gpu or tags[images.GPU_IMAGE], cpu or tags[images.CPU_IMAGE]
    return {"gpu": gpu, "cpu": cpu}


def make_component(phase: str, cfg: Config, function=None):
    """Wrap the phase's function (or a variant of it) as a lightweight component on the image its resources
    call for."""
    image = component_images(cfg)["gpu" if cfg.cluster.resources_for(phase).gpus > 0 else "cpu"]
    return dsl.component(function or PHASE_FUNCTIONS[phase], base_image=image, install_kfp_package=False)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed task is retried, and the wait before the first retry (doubling for each next one)."""

    retries: int
    backoff: str = "0s"  # a duration such as "120s"; "0s" retries at once

    @classmethod
    def for_cluster(cls, cfg: Config) -> "RetryPolicy":
        return cls(cfg.cluster.retries, cfg.cluster.retry_backoff)


def configure_task(
    task: dsl.PipelineTask, phase: str, cfg: Config, retry: RetryPolicy | None = None
) -> dsl.PipelineTask:
    """Requests/limits from config; GPU phases get the accelerator, its node selector and toleration."""
    res = cfg.cluster.resources_for(phase)
    task.set_display_name(phase)
    task.set_cpu_request(res.cpu).set_cpu_limit(res.cpu)
    task.set_memory_request(res.memory).set_memory_limit(res.memory)
    if res.gpus > 0 and cfg.cluster.accelerator != "none":
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(res.gpus)
        kubernetes.add_node_selector(task, GKE_ACCELERATOR_LABEL, GKE_ACCELERATORS[cfg.cluster.accelerator])
        kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        if cfg.cluster.spot:
            kubernetes.add_node_selector(task, GKE_SPOT_LABEL, "true")
            kubernetes.add_toleration(task, key=GKE_SPOT_LABEL, operator="Equal", value="true", effect="NoSchedule")
    if res.gpus > 0:
        # Data workers and NCCL share memory through /dev/shm; a container gets only 64 MiB by default.
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=cfg.cluster.shm_size
        )
    configure_storage(task, phase, cfg, retry)
    configure_signing(task, phase, cfg)
    return task


def configure_storage(
    task: dsl.PipelineTask, phase: str, cfg: Config, retry: RetryPolicy | None = None
) -> dsl.PipelineTask:
    """Retries (the cluster's unless `retry` is given), the checkpoint location of resumable phases, and
    (optionally) mounted GCP credentials.

    Nothing secret is written into the YAML: only the names of a PVC and a secret, and a downward-API
    reference to the run id. Bucket access normally comes from the pod's service account (Workload Identity).
    """
    if retry is None:
        retry = RetryPolicy.for_cluster(cfg)
    if retry.retries:
        task.set_retry(retry.retries, backoff_duration=retry.backoff, backoff_factor=2.0)
    if phase in CHECKPOINTING_PHASES:
        if cfg.cluster.checkpoint_pvc:
            kubernetes.mount_pvc(task, pvc_name=cfg.cluster.checkpoint_pvc, mount_path=cfg.cluster.checkpoint_root)
        kubernetes.use_field_path_as_env(task, env_name=RUN_ID_ENV, field_path=RUN_ID_FIELD_PATH)
    if cfg.cluster.gcp_credentials_secret:
        kubernetes.use_secret_as_volume(
            task, secret_name=cfg.cluster.gcp_credentials_secret, mount_path=GCP_CREDENTIALS_DIR
        )
        task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{GCP_CREDENTIALS_DIR}/key.json")
    return task


def configure_signing(task: dsl.PipelineTask, phase: str, cfg: Config) -> dsl.PipelineTask:
    """The phase that writes the bundle gets the signing key (signing.key_secret, read-only, at the folder of
    signing.private_key); it and every phase that reads a bundle get the trusted public key or certificate chain
    (signing.trust_config_map, at the folder of signing.public_key). Only the names are in the YAML."""
    spec = PHASE_SPECS[phase]
    signs = any(output.kind == "bundle" for output in spec.outputs.values())
    verifies = signs or "bundle" in spec.inputs
    signing = cfg.signing
    if signing.key_secret and signs:
        mount = PurePosixPath(signing.private_key or signing.signing_certificate).parent
        kubernetes.use_secret_as_volume(task, secret_name=signing.key_secret, mount_path=str(mount))
    if signing.trust_config_map and verifies:
        mount = PurePosixPath(signing.public_key or signing.certificate_chain[0]).parent
        kubernetes.use_config_map_as_volume(task, config_map_name=signing.trust_config_map, mount_path=str(mount))
    return task


def build_pipeline(cfg: Config, retry: RetryPolicy | None = None):
    """A KFP pipeline for `cfg`; its `config` parameter defaults to the resolved config (as JSON).

    Every task gets `retry`, by default the cluster's (cluster.retries, first waiting cluster.retry_backoff);
    local runs pass their own, since a local failure is rarely a preemption worth waiting out.
    """
    phases, _ = resolve_phases(cfg.pipeline.phases)
    ops = {}
    for phase in phases:
        # A phase fed by an optional one runs as its variant (phase 1 trains from phase 4's adapted backbone).
        feeders = [feeder for feeder in PHASE_SPECS[phase].variants if feeder in phases]
        variant = PHASE_VARIANTS[phase][feeders[0]] if feeders else None
        ops[phase] = make_component(phase, cfg, variant)
    default_config = config_to_json(cfg)

    @dsl.pipeline(
        name=cfg.pipeline.name,
        description="StreetVision Stage 1: ingest -> train -> calibrate + selective policy -> bundle -> evaluate",
        pipeline_root=cfg.cluster.pipeline_root or None,  # gs://... ; None: the cluster's default root
    )
    def stage1(config: str = default_config):
        # Wired from the registry: each input from the first selected phase that provides it, in phase order.
        tasks: dict[str, dsl.PipelineTask] = {}
        for phase in phases:
            inputs = {}
            for input_name, providers in PHASE_SPECS[phase].inputs.items():
                for provider in providers:
                    source, output = provider.split(".")
                    if source in tasks:
                        inputs[input_name] = tasks[source].outputs[output]
                        break
            tasks[phase] = configure_task(ops[phase](config=config, **inputs), phase, cfg, retry)

    return stage1


def compile_pipeline(cfg: Config, path: str | Path, retry: RetryPolicy | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cfg, retry), str(path))
    return path
