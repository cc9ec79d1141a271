"""Leakage lint over a compiled pipeline YAML: the third enforcement of the split rules.

KFP checks artifact types when a pipeline is *defined*; a YAML edited by hand (or produced by another tool)
skips that check, and the local runner drops the types altogether. This lint reads the YAML as a cluster
would and checks, for every task, every input artifact against the split policy in `streetvision.contracts`:

- the task's component is a known phase (from the function the executor runs), so its reads are known;
- each split-carrying input is one the phase declares (its `reads` in the phase registry), with the declared
  split, and its role may read that split (ROLE_SPLITS, via `check_access`);
- what is actually wired in (the producer task's output type) is the type the input declares and carries a
  split the role may read — this is what catches a re-wired edge or a split laundered through a generic
  `system.Artifact` input;
- VAL_TEST is read by one task at most;
- no task but a known phase produces split data or split logits: an importer task typed `system.TrainSplit`
  (or any split type) would make whatever lies at its URI pass as that split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streetvision_components.phases import PHASE_FUNCTIONS, PHASE_VARIANTS
from streetvision_components.types import split_of_type
from streetvision_pipelines.inspect_spec import load_documents

from streetvision.contracts import ConfigError, LeakageViolationError, Split, check_access
from streetvision.registry import PHASE_READS

# Function the executor runs (`--function_to_execute`) -> phase name in the split policy.
PHASE_BY_FUNCTION = {func.__name__: phase for phase, func in PHASE_FUNCTIONS.items()}
PHASE_BY_FUNCTION.update({f.__name__: phase for phase, fs in PHASE_VARIANTS.items() for f in fs.values()})


@dataclass
class Finding:
    task: str
    input: str | None
    what: str
    fix: str

    def __str__(self) -> str:
        where = f"task '{self.task}'" + (f", input '{self.input}'" if self.input else "")
        return f"{where}: {self.what}\n    fix: {self.fix}"


@dataclass
class LintReport:
    path: str
    tasks: int
    inputs_checked: int
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not self.findings


def _function_of(spec: dict, component: dict) -> str | None:
    executor = spec.get("deploymentSpec", {}).get("executors", {}).get(component.get("executorLabel", ""), {})
    args = executor.get("container", {}).get("args", [])
    for i, arg in enumerate(args[:-1]):
        if arg == "--function_to_execute":
            return args[i + 1]
    return None


def _split_outputs(component: dict) -> dict[str, str]:
    """Output name -> schema title, for the outputs of a component that carry a split."""
    outputs = component.get("outputDefinitions", {}).get("artifacts", {})
    titles = {key: art.get("artifactType", {}).get("schemaTitle", "") for key, art in outputs.items()}
    return {key: title for key, title in titles.items() if split_of_type(title) is not None}


def _importer_of(spec: dict, component: dict) -> dict | None:
    executor = spec.get("deploymentSpec", {}).get("executors", {}).get(component.get("executorLabel", ""), {})
    return executor.get("importer")


def _violation(role, split, where: str) -> str | None:
    try:
        check_access(role, split, where)
    except LeakageViolationError as exc:
        return f"{exc.what} ({exc.fix})"
    return None


def lint_documents(documents: list[dict], path: str = "<pipeline>") -> LintReport:
    spec = documents[0]
    components = spec.get("components", {})
    tasks = spec.get("root", {}).get("dag", {}).get("tasks", {})
    findings: list[Finding] = []
    checked = 0
    test_readers = []

    def output_type(task_name: str, key: str) -> str | None:
        producer = tasks.get(task_name, {})
        comp = components.get(producer.get("componentRef", {}).get("name", ""), {})
        art = comp.get("outputDefinitions", {}).get("artifacts", {}).get(key)
        return art["artifactType"]["schemaTitle"] if art else None

    for name in sorted(tasks):
        task = tasks[name]
        component = components.get(task.get("componentRef", {}).get("name", ""), {})
        function = _function_of(spec, component)
        phase = PHASE_BY_FUNCTION.get(function or "")
        declared_inputs = component.get("inputDefinitions", {}).get("artifacts", {})
        wired_inputs = task.get("inputs", {}).get("artifacts", {})
        if phase is None:
            importer = _importer_of(spec, component)
            for key, title in sorted(_split_outputs(component).items()):
                split = split_of_type(title)
                source = (
                    f"an importer task: it makes the artifact at "
                    f"{importer.get('artifactUri', {}).get('constant', 'a run-time URI')!r} pass as {split.name}"
                    if importer is not None
                    else f"{function!r}, which is not a known phase"
                )
                findings.append(
                    Finding(
                        name,
                        None,
                        f"produces {split.name} data (output '{key}', {title}) from {source}",
                        "split data and split logits come only from the ingest and phase tasks of the same "
                        "pipeline; remove the task and wire the producing phase's output instead",
                    )
                )
            if declared_inputs:
                findings.append(
                    Finding(
                        name,
                        None,
                        f"runs {function!r}, which is not a known phase, so what it "
                        "reads cannot be checked against the split policy",
                        f"use the components in components/phases.py ({', '.join(PHASE_BY_FUNCTION)})",
                    )
                )
            continue
        reads = PHASE_READS.get(phase, {})
        for input_name in sorted(set(declared_inputs) | set(wired_inputs)):
            checked += 1
            where = f"{path}: task {name} ({phase}).{input_name}"
            declared_title = declared_inputs.get(input_name, {}).get("artifactType", {}).get("schemaTitle")
            declared_split = split_of_type(declared_title or "")
            source = wired_inputs.get(input_name, {})
            producer = source.get("taskOutputArtifact", {})
            wired_title = output_type(producer["producerTask"], producer["outputArtifactKey"]) if producer else None
            wired_split = split_of_type(wired_title or "")

            role, expected = reads.get(input_name, (None, None))
            if role is not None and expected is not None:
                if declared_split != expected:
                    findings.append(
                        Finding(
                            name,
                            input_name,
                            f"declared as {declared_title}, but {phase} reads {expected.name} here (role {role.value})",
                            f"declare it as the {expected.name} type, as components/phases.py does",
                        )
                    )
                if declared_split is not None and (problem := _violation(role, declared_split, where)):
                    findings.append(Finding(name, input_name, problem, "restore the component's input type"))
            elif declared_split is not None:
                findings.append(
                    Finding(
                        name,
                        input_name,
                        f"reads {declared_split.name} data ({declared_title}), which {phase} has no declared role for",
                        "remove the input, or declare its role in the phase's `reads` in streetvision.registry",
                    )
                )

            if producer:
                if wired_title is None:
                    findings.append(
                        Finding(
                            name,
                            input_name,
                            f"wired to {producer['producerTask']}."
                            f"{producer['outputArtifactKey']}, which does not exist",
                            "wire it to an output of the producing task",
                        )
                    )
                elif declared_title and wired_title != declared_title:
                    findings.append(
                        Finding(
                            name,
                            input_name,
                            f"declared {declared_title} but wired to "
                            f"{producer['producerTask']}.{producer['outputArtifactKey']} "
                            f"({wired_title}): the type check KFP does at definition was bypassed",
                            "wire an output of the declared type",
                        )
                    )
                if wired_split is not None:
                    if role is not None and expected is not None and (problem := _violation(role, wired_split, where)):
                        findings.append(
                            Finding(
                                name,
                                input_name,
                                f"receives {wired_split.name} data: {problem}",
                                f"wire the {expected.name} output of the producing task",
                            )
                        )
                    elif role is None and declared_split is None:
                        findings.append(
                            Finding(
                                name,
                                input_name,
                                f"receives {wired_split.name} data through an "
                                f"input of type {declared_title} that carries no split",
                                "split data must enter a phase through its split-typed inputs",
                            )
                        )
                    if wired_split == Split.VAL_TEST:
                        test_readers.append(name)
            elif declared_split is not None and input_name in wired_inputs:
                findings.append(
                    Finding(
                        name,
                        input_name,
                        f"{declared_split.name} data arrives from outside the "
                        "pipeline (not from a task output), so its provenance cannot be checked",
                        "produce split data with the ingest task of the same pipeline",
                    )
                )
    if len(test_readers) > 1:
        findings.append(
            Finding(
                ", ".join(test_readers),
                None,
                f"VAL_TEST is read by {len(test_readers)} tasks; it may be touched once, by the final evaluation",
                "keep a single evaluate task reading VAL_TEST",
            )
        )
    return LintReport(path, len(tasks), checked, findings)


def lint_file(path: str | Path) -> LintReport:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pipeline file")
    try:
        documents = load_documents(path.read_text())
    except Exception as exc:  # yaml errors come in many classes
        raise ConfigError(
            f"cannot read {path} as YAML: {exc}", str(path), "pass a pipeline compiled by `streetvision compile`"
        ) from exc
    if not documents or "root" not in documents[0] or "components" not in documents[0]:
        raise ConfigError(
            f"{path} is not a compiled KFP pipeline (no root DAG / components)",
            str(path),
            "pass a pipeline compiled by `streetvision compile`",
        )
    return lint_documents(documents, str(path))
