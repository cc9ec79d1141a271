"""`streetvision submit`: compile the pipeline (or take a compiled YAML) and create a run on a Kubeflow
Pipelines server through `kfp.Client`.

Everything the run needs besides the YAML is explicit here — host, namespace, experiment, run name, pipeline
parameters, pipeline root, the service account pods run as, caching — and `--dry-run` prints exactly that
without contacting the server. Authentication: a bearer token read from an environment variable (never a
command-line argument, which other users can see in the process list), or, inside a cluster, the pod's
projected KFP service-account token.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from streetvision.config import Config, ConfigError, config_from_json, config_to_json
from streetvision.contracts.errors import ContractError
from streetvision_pipelines.inspect_spec import load_documents

TOKEN_ENV = "KFP_TOKEN"
HOST_ENV = "KF_PIPELINES_ENDPOINT"  # the variable kfp.Client itself reads
IN_CLUSTER_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
# Where Kubeflow projects the pipelines service-account token into a pod (kfp.client.KF_PIPELINES_SA_TOKEN_PATH).
IN_CLUSTER_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"


class SubmitError(ContractError):
    """A submission that cannot be sent as asked."""


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


_PARSERS = {
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
    if isinstance(values.get("config"), str):
        try:
            config_from_json(values["config"])  # a hand-written config gets the same checks as any other
        except ConfigError as exc:
            problems += [f"--param config: {p}" for p in exc.problems]
    if problems:
        raise SubmitError("; ".join(problems), f"pipeline parameters of {pipeline_file}",
                          "pass --param NAME=VALUE with the names and types the compiled YAML declares")
    return values


def default_run_name(pipeline_name: str) -> str:
    return f"{pipeline_name} {datetime.now(timezone.utc).strftime('%Y-%m-%d %H-%M-%S')} UTC"


def make_client(sub: Submission):
    """A kfp.Client for the submission: explicit host, namespace and credentials (no kube-config guessing)."""
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    if sub.in_cluster_token:
        if not Path(sub.in_cluster_token).is_file():
            raise SubmitError(f"no service-account token at {sub.in_cluster_token}", "--in-cluster",
                              "run inside a Kubeflow pod with the pipelines token projected, or use a token in "
                              f"${TOKEN_ENV}")
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


def config_argument(cfg: Config) -> dict[str, str]:
    """The run's `config` argument: the resolved config, sent explicitly so the run records it."""
    return {"config": config_to_json(cfg)}
