"""`streetvision submit`: compile the pipeline (or take a compiled YAML) and create a run on a Kubeflow
Pipelines server through `kfp.Client`.

Everything the run needs besides the YAML is explicit here — host, namespace, experiment, run name, pipeline
parameters, pipeline root, the service account pods run as, caching — and `--dry-run` prints exactly that
without contacting the server. Authentication: a bearer token read from an environment variable (never a
command-line argument, which other users can see in the process list), or, inside a cluster, the pod's
projected KFP service-account token.

A config sent with a compiled YAML (`--param config=...`) is checked against what the YAML was compiled
with, read from the YAML itself: a task reads the config at run time, but its phases, images, checkpoint
volume and retries were fixed at compile time, so a config that says otherwise would run other code than it
names, or write checkpoints off the volume a retry looks for them on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from streetvision_pipelines.factory import RetryPolicy, make_component
from streetvision_pipelines.inspect_spec import load_documents

from streetvision.config import Config, ConfigError, config_from_json, config_to_json, load_config
from streetvision.contracts.errors import ClusterError, ServerUnreachableError
from streetvision.phase_graph import resolve_phases
from streetvision.registry import CHECKPOINTING_PHASES, PHASE_NAMES

logger = logging.getLogger(__name__)

TOKEN_ENV = "KFP_TOKEN"
HOST_ENV = "KF_PIPELINES_ENDPOINT"  # the variable kfp.Client itself reads
IN_CLUSTER_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
# Where Kubeflow projects the pipelines service-account token into a pod (kfp.client.KF_PIPELINES_SA_TOKEN_PATH).
IN_CLUSTER_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"


class SubmitError(ConfigError):
    """A submission that cannot be sent as asked (a config or command-line problem)."""


@dataclass
class Submission:
    host: str
    namespace: str
    experiment: str
    run_name: str
    pipeline_file: Path
    arguments: dict[str, Any] = field(default_factory=dict)
    pipeline_root: str | None = None
    service_account: str | None = None
    enable_caching: bool | None = None
    token_env: str | None = TOKEN_ENV  # read a bearer token from this variable
    in_cluster_token: str | None = None  # or from this projected token file
    pipeline_source: str | None = None  # how to describe the YAML (e.g. "compiled from the config")

    def auth_description(self) -> str:
        if self.in_cluster_token:
            return f"in-cluster service-account token from {self.in_cluster_token}"
        token = os.environ.get(self.token_env or "", "")
        if token:
            return f"bearer token from ${self.token_env} ({len(token)} characters, not shown)"
        return f"none (${self.token_env} is not set)"

    def describe(self) -> dict:
        """What would be sent, for --dry-run and the log (never a token's value)."""
        spec = load_documents(self.pipeline_file.read_text())[0]
        shown = dict(self.arguments)
        if isinstance(shown.get("config"), str):
            shown["config"] = json.loads(shown["config"])  # sent as JSON text; shown parsed for reading
        return {
            "host": self.host,
            "namespace": self.namespace,
            "experiment": self.experiment,
            "run_name": self.run_name,
            "pipeline_file": self.pipeline_source or str(self.pipeline_file),
            "pipeline_name": spec.get("pipelineInfo", {}).get("name"),
            "pipeline_sha256": hashlib.sha256(self.pipeline_file.read_bytes()).hexdigest(),
            "pipeline_root": self.pipeline_root,
            "service_account": self.service_account,
            "enable_caching": self.enable_caching,
            "auth": self.auth_description(),
            "parameters": shown,
        }


def declared_parameters(pipeline_file: Path) -> dict[str, dict]:
    """The pipeline's own parameters (name -> definition), from the compiled YAML."""
    spec = load_documents(pipeline_file.read_text())[0]
    return spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})


def embedded_config(pipeline_file: Path) -> Config | None:
    """The resolved config a compiled StreetVision pipeline carries as its `config` default (None if absent)."""
    default = declared_parameters(pipeline_file).get("config", {}).get("defaultValue")
    return config_from_json(default) if isinstance(default, str) else None


_PARSERS: dict[str, Callable[[str], object]] = {
    "STRING": str,
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": float,
    "BOOLEAN": lambda raw: {"true": True, "false": False}[raw.lower()],
    "LIST": json.loads,
    "STRUCT": json.loads,
}


def parse_parameters(items: list[str], pipeline_file: Path) -> dict[str, Any]:
    """NAME=VALUE pairs, typed by the pipeline's declarations; every problem is reported at once."""
    declared = declared_parameters(pipeline_file)
    values, problems = {}, []
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep:
            problems.append(f"--param {item!r}: expected NAME=VALUE")
        elif name not in declared:
            problems.append(f"--param {name}: the pipeline has no such parameter (it has: {', '.join(declared)})")
        else:
            kind = declared[name].get("parameterType", "STRING")
            try:
                values[name] = _PARSERS.get(kind, str)(raw)
            except (ValueError, KeyError):
                problems.append(f"--param {name}: {raw!r} is not a valid {kind}")
    if isinstance(raw_config := values.get("config"), str):
        try:
            config_from_json(raw_config)  # a hand-written config gets the same checks as any other
        except ConfigError as exc:
            problems += [f"--param config: {p}" for p in exc.problems]
    if problems:
        raise SubmitError(
            "; ".join(problems),
            f"pipeline parameters of {pipeline_file}",
            "pass --param NAME=VALUE with the names and types the compiled YAML declares",
        )
    return values


def default_run_name(pipeline_name: str) -> str:
    return f"{pipeline_name} {datetime.now(timezone.utc).strftime('%Y-%m-%d %H-%M-%S')} UTC"


def make_client(sub: Submission):
    """A kfp.Client for the submission: explicit host, namespace and credentials (no kube-config guessing)."""
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    if sub.in_cluster_token:
        if not Path(sub.in_cluster_token).is_file():
            raise SubmitError(
                f"no service-account token at {sub.in_cluster_token}",
                "--in-cluster",
                f"run inside a Kubeflow pod with the pipelines token projected, or use a token in ${TOKEN_ENV}",
            )
        credentials = ServiceAccountTokenVolumeCredentials(path=sub.in_cluster_token)
        return kfp.Client(host=sub.host, namespace=sub.namespace, credentials=credentials)
    token = os.environ.get(sub.token_env or "") or None
    return kfp.Client(host=sub.host, namespace=sub.namespace, existing_token=token)


def submit(sub: Submission, client=None) -> str:
    """Create the run (and the experiment if it does not exist yet); returns the run id."""
    client = client or make_client(sub)
    result = client.create_run_from_pipeline_package(
        str(sub.pipeline_file),
        arguments=sub.arguments,
        run_name=sub.run_name,
        experiment_name=sub.experiment,
        namespace=sub.namespace,
        pipeline_root=sub.pipeline_root,
        enable_caching=sub.enable_caching,
        service_account=sub.service_account,
    )
    return result.run_id


@dataclass
class SubmitOptions:
    """What a submission is asked for besides the config (the `streetvision submit` options, whose defaults
    are the command line's)."""

    namespace: str  # the Kubeflow profile the run executes in
    token_env: str  # the environment variable holding a bearer token
    pipeline_file: str | None = None  # a compiled YAML to submit as it is, instead of compiling the config
    params: list[str] = field(default_factory=list)  # NAME=VALUE pipeline parameters
    host: str | None = None  # default: $KF_PIPELINES_ENDPOINT, or the in-cluster API with in_cluster
    experiment: str | None = None  # default: pipeline.name
    run_name: str | None = None  # default: the pipeline name and the UTC time
    pipeline_root: str | None = None  # default: cluster.pipeline_root
    service_account: str | None = None  # default: cluster.service_account
    no_cache: bool = False
    in_cluster: bool = False
    dry_run: bool = False


def prepare_submission(cfg: Config | None, options: SubmitOptions, workdir: Path) -> Submission:
    """The run to create: `cfg` compiled into `workdir` (or `options.pipeline_file` as compiled, with `cfg` None),
    its parameters typed and checked against the YAML, host and defaults resolved.

    Args:
        cfg: the resolved config to compile, or None to submit `options.pipeline_file`.
        options: the submission's other settings.
        workdir: where the compiled YAML is written; it must outlive the submission.

    Returns:
        The submission, not yet sent (`send_submission` sends it; `Submission.describe` shows it).

    Raises:
        SubmitError: a parameter the YAML does not declare or cannot take, a runtime config that contradicts
            the compiled YAML, or no host (unless a dry run).
        FileNotFoundError: `options.pipeline_file` does not exist.
    """
    from streetvision_pipelines.factory import compile_pipeline

    if cfg is None:
        if not options.pipeline_file or not Path(options.pipeline_file).is_file():
            raise FileNotFoundError(f"--pipeline-file {options.pipeline_file}: no such file")
        pipeline_file = Path(options.pipeline_file)
        cfg = embedded_config(pipeline_file) or load_config()
        arguments: dict[str, Any] = {}
    else:
        pipeline_file = compile_pipeline(cfg, workdir / "pipeline.yaml")
        arguments = config_argument(cfg)
    runtime_params = parse_parameters(options.params, pipeline_file)
    if isinstance(runtime_params.get("config"), str):  # before any request, and before a dry run shows it
        cfg = config_from_json(runtime_params["config"])
        check_runtime_config(pipeline_file, cfg, compiled_here=not options.pipeline_file)
    arguments.update(runtime_params)
    if cfg.data.uses_demo():
        logger.warning(
            "data.source=demo: the images do not carry the demo renderer, so ingest will fail on the cluster; "
            "render the scenes with `python -m streetvision_demo OUT_DIR`, copy them to a bucket and pass "
            "data.source=manifest data.manifest=gs://.../manifest.csv"
        )
    host = options.host or os.environ.get(HOST_ENV) or (IN_CLUSTER_HOST if options.in_cluster else None)
    if not host and not options.dry_run:
        raise SubmitError(
            "no Kubeflow Pipelines host given",
            "streetvision submit",
            f"pass --host https://KFP_HOST (or set ${HOST_ENV}; inside the cluster use --in-cluster)",
        )
    return Submission(
        host=host or "",
        namespace=options.namespace,
        experiment=options.experiment or cfg.pipeline.name,
        run_name=options.run_name or default_run_name(cfg.pipeline.name),
        pipeline_file=pipeline_file,
        arguments=arguments,
        pipeline_root=options.pipeline_root or cfg.cluster.pipeline_root or None,
        service_account=options.service_account or cfg.cluster.service_account or None,
        enable_caching=False if options.no_cache else None,
        token_env=options.token_env,
        in_cluster_token=IN_CLUSTER_TOKEN_PATH if options.in_cluster else None,
        pipeline_source=None if options.pipeline_file else "compiled from the config (streetvision compile)",
    )


def send_submission(sub: Submission) -> str:
    """Create the run; returns its id.

    Raises:
        ClusterError: the server refused the request (authentication, namespace, a malformed pipeline).
        ServerUnreachableError: the server could not be reached.
    """
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return submit(sub)
    except ApiException as exc:
        raise ClusterError(
            f"the server refused the request: {exc}",
            sub.host,
            "check --namespace and the token (or rerun with --dry-run to see the request)",
        ) from exc
    except (HTTPError, OSError) as exc:
        raise ServerUnreachableError(
            f"the server could not be reached: {exc}",
            sub.host,
            "check --host and the network path to it (or rerun with --dry-run to see the request)",
        ) from exc


def config_argument(cfg: Config) -> dict[str, str]:
    """The run's `config` argument: the resolved config, sent explicitly so the run records it."""
    return {"config": config_to_json(cfg)}


@dataclass(frozen=True)
class CompiledTask:
    """What a compiled YAML fixed for one phase's task, as a cluster reads it."""

    image: str
    checkpoint_pvc: str  # the PVC mounted for checkpoints, "" when none
    checkpoint_mount: str  # where it is mounted, "" when none
    retries: int  # retryPolicy.maxRetryCount (0: none)
    retry_backoff: str  # retryPolicy.backoffDuration ("" without retries)


def compiled_tasks(documents: list[dict]) -> dict[str, CompiledTask]:
    """Phase (the task's display name) -> its image (the executor's container), checkpoint mount (the
    Kubernetes platform spec) and retry policy (the task)."""
    spec = documents[0]
    platform = next((d for d in documents[1:] if "platforms" in d), {})
    k8s = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    tasks = {}
    for name, task in spec.get("root", {}).get("dag", {}).get("tasks", {}).items():
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        mounts = k8s.get(label, {}).get("pvcMount", [])  # the factory mounts one PVC: the checkpoints'
        mount = mounts[0] if mounts else {}
        # kfp-kubernetes writes the PVC's name as `constant` and again under pvcNameParameter.
        pvc = mount.get("constant") or mount.get("pvcNameParameter", {}).get("runtimeValue", {}).get("constant")
        tasks[task.get("taskInfo", {}).get("name", name)] = CompiledTask(
            image=spec["deploymentSpec"]["executors"][label].get("container", {}).get("image", ""),
            checkpoint_pvc=pvc or "",
            checkpoint_mount=mount.get("mountPath", ""),
            retries=int(task.get("retryPolicy", {}).get("maxRetryCount", 0)),
            retry_backoff=task.get("retryPolicy", {}).get("backoffDuration", ""),
        )
    # In pipeline order (PHASE_NAMES), anything else after it.
    order = [p for p in PHASE_NAMES if p in tasks] + sorted(p for p in tasks if p not in PHASE_NAMES)
    return {p: tasks[p] for p in order}


@dataclass(frozen=True)
class Contradiction:
    key: str  # the config key
    compiled: str  # what the YAML has
    runtime: str  # what the runtime config says (or resolves to)

    def __str__(self) -> str:
        return f"{self.key}: the YAML has {self.compiled}, the config says {self.runtime}"


def _shown(value: str) -> str:
    return value if value else '"" (none)'


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def _seconds(duration: str) -> float:
    """'120s', '2m', '1h' (cluster.retry_backoff; the compiler writes every duration in seconds)."""
    return float(duration[:-1]) * _DURATION_UNITS[duration[-1]]


def runtime_contradictions(documents: list[dict], cfg: Config) -> list[Contradiction]:
    """The compile-time settings (phases, images, checkpoint PVC and root, retries) where `cfg` and the YAML
    differ."""
    tasks = compiled_tasks(documents)
    phases, _ = resolve_phases(cfg.pipeline.phases)
    found: list[Contradiction] = []
    if set(tasks) != set(phases):
        found.append(Contradiction("pipeline.phases", f"[{', '.join(tasks)}]", f"[{', '.join(phases)}]"))
    # Images: what the factory resolves the config to, per phase, against each task's executor image.
    differing: dict[tuple[str, str, str], list[str]] = {}
    for phase in [p for p in phases if p in tasks]:
        image = make_component(phase, cfg).component_spec.implementation.container.image
        if image != tasks[phase].image:
            key = "cluster.gpu_image" if cfg.cluster.resources_for(phase).gpus > 0 else "cluster.cpu_image"
            differing.setdefault((key, tasks[phase].image, image), []).append(phase)
    for (key, compiled, runtime), phases_on in differing.items():
        if not getattr(cfg.cluster, key.split(".")[1]):  # "": the factory named the images built from this checkout
            runtime += f' ({key} is "": the image of this checkout)'
        found.append(Contradiction(key, f"{compiled} ({', '.join(phases_on)})", runtime))
    # Checkpoints: the phases that resume read cluster.checkpoint_root at run time; with a PVC it must be where
    # the YAML mounts it, or a retried task writes to (and looks in) the container's own disk.
    resumable = [p for p in tasks if p in CHECKPOINTING_PHASES]
    mounts = {(tasks[p].checkpoint_pvc, tasks[p].checkpoint_mount) for p in resumable}
    for pvc, mount in sorted(mounts):
        on = ", ".join(p for p in resumable if (tasks[p].checkpoint_pvc, tasks[p].checkpoint_mount) == (pvc, mount))
        if pvc != cfg.cluster.checkpoint_pvc:
            found.append(
                Contradiction("cluster.checkpoint_pvc", f"{_shown(pvc)} ({on})", _shown(cfg.cluster.checkpoint_pvc))
            )
        if pvc and mount.rstrip("/") != cfg.cluster.checkpoint_root.rstrip("/"):
            found.append(
                Contradiction(
                    "cluster.checkpoint_root",
                    f"{mount} (the PVC's mount path in {on})",
                    _shown(cfg.cluster.checkpoint_root),
                )
            )
    # Retries: not read at run time, but a config naming other retries than the YAML's would mislead (e.g. one
    # that lowers them for debugging, which takes a recompile).
    retry = RetryPolicy.for_cluster(cfg)
    for retries, backoff in sorted({(t.retries, t.retry_backoff) for t in tasks.values()}):
        on = ", ".join(p for p, t in tasks.items() if (t.retries, t.retry_backoff) == (retries, backoff))
        if retries != retry.retries:
            found.append(Contradiction("cluster.retries", f"{retries} ({on})", str(retry.retries)))
        elif retries and _seconds(backoff) != _seconds(retry.backoff):
            found.append(Contradiction("cluster.retry_backoff", f"{backoff} ({on})", retry.backoff))
    return found


def check_runtime_config(pipeline_file: Path, cfg: Config, compiled_here: bool = False) -> None:
    """Refuse a runtime config that contradicts the compile-time settings of `pipeline_file`, naming every
    contradicting key with both values."""
    found = runtime_contradictions(load_documents(pipeline_file.read_text()), cfg)
    if not found:
        return
    listed = "\n".join(f"  - {c}" for c in found)
    if compiled_here:
        where, fix = (
            "--param config, against the pipeline compiled from the overrides",
            "leave out --param config (the config compiled from the overrides and --config is sent), or "
            "give these settings as overrides",
        )
    else:
        where = f"--param config, against --pipeline-file {pipeline_file}"
        fix = (
            f"compile the YAML from this config and submit that: save the config to a file (JSON is YAML) and "
            f"run `streetvision compile --config FILE -o {pipeline_file}`; or set these keys in the config to "
            "the YAML's values"
        )
    raise SubmitError(
        f"the runtime config contradicts what the YAML was compiled with ({len(found)} setting(s)):\n{listed}",
        where,
        fix,
    )
