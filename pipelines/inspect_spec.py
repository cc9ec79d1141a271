"""Read a compiled pipeline (the YAML KFP runs) back into a list of tasks: order, typed inputs/outputs with
their split, image and resources. `streetvision plan` prints it, so the plan is what compile produced."""

import io
from dataclasses import dataclass, field

import yaml
from kfp import compiler
from streetvision_components.types import split_of_type
from streetvision_pipelines.factory import build_pipeline

from streetvision.config import Config


@dataclass
class ArtifactRef:
    name: str
    type: str
    split: str | None
    producer: str | None = None  # "task.output" for inputs


@dataclass
class TaskPlan:
    name: str
    display_name: str
    inputs: list[ArtifactRef] = field(default_factory=list)
    outputs: list[ArtifactRef] = field(default_factory=list)
    image: str = ""
    resources: dict = field(default_factory=dict)
    node_selector: dict = field(default_factory=dict)


def compile_to_documents(cfg: Config) -> list[dict]:
    """Compile in memory; KFP writes the pipeline spec and (with kfp-kubernetes) a platform spec document."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(build_pipeline(cfg), str(path))
        return load_documents(path.read_text())


def load_documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(io.StringIO(text)) if doc]


def _topological(tasks: dict) -> list[str]:
    order, done = [], set()

    def visit(name: str) -> None:
        if name in done:
            return
        for dep in sorted(tasks[name].get("dependentTasks", [])):
            visit(dep)
        done.add(name)
        order.append(name)

    for name in sorted(tasks):
        visit(name)
    return order


def describe(documents: list[dict]) -> list[TaskPlan]:
    spec = documents[0]
    platform = next((d for d in documents[1:] if "platforms" in d), {})
    k8s_execs = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    executors = spec["deploymentSpec"]["executors"]
    tasks = spec["root"]["dag"]["tasks"]
    plans = []
    for name in _topological(tasks):
        task = tasks[name]
        component = spec["components"][task["componentRef"]["name"]]
        executor_label = component["executorLabel"]
        container = executors[executor_label]["container"]
        plan = TaskPlan(
            name=name,
            display_name=task.get("taskInfo", {}).get("name", name),
            image=container.get("image", ""),
            resources=container.get("resources", {}),
            node_selector=k8s_execs.get(executor_label, {}).get("nodeSelector", {}).get("labels", {}),
        )
        wired = task.get("inputs", {}).get("artifacts", {})
        for art_name, art in component.get("inputDefinitions", {}).get("artifacts", {}).items():
            title = art["artifactType"]["schemaTitle"]
            source = wired.get(art_name, {}).get("taskOutputArtifact", {})
            producer = f"{source['producerTask']}.{source['outputArtifactKey']}" if source else None
            split = split_of_type(title)
            plan.inputs.append(ArtifactRef(art_name, title, split.value if split else None, producer))
        for art_name, art in component.get("outputDefinitions", {}).get("artifacts", {}).items():
            title = art["artifactType"]["schemaTitle"]
            split = split_of_type(title)
            plan.outputs.append(ArtifactRef(art_name, title, split.value if split else None))
        plans.append(plan)
    return plans


def format_resources(plan: TaskPlan) -> str:
    res = plan.resources
    parts = []
    if "cpuLimit" in res or "resourceCpuLimit" in res:
        parts.append(f"cpu {res.get('resourceCpuLimit', res.get('cpuLimit'))}")
    if "memoryLimit" in res or "resourceMemoryLimit" in res:
        parts.append(f"mem {res.get('resourceMemoryLimit', res.get('memoryLimit'))}")
    accel = res.get("accelerator", {})
    if accel:
        count = accel.get("resourceCount", accel.get("count"))
        parts.append(f"gpu {accel.get('resourceType', accel.get('type'))} x{count}")
    if plan.node_selector:
        parts.append(", ".join(f"{k}={v}" for k, v in plan.node_selector.items()))
    return "; ".join(parts) or "defaults"
