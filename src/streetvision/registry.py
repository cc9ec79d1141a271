"""The phases of the pipeline, each declared once (the TFX ComponentSpec idea).

One `PhaseSpec` per phase says what the phase is: what it requires, where each of its inputs comes from, the
role in which it reads each split-carrying input, the outputs it leaves behind (and their kind and split, as
their completion records say), its default resources, whether it checkpoints, and its library function.
Everything else is derived from this table: phase resolution (`phase_graph`), the config's phase names and
default resources, the split policy per phase (`PHASE_READS`, checked at run time and by the lint), the run
summary, the KFP components and the pipeline factory's wiring. Every library function has the shape
`run_x(cfg, paths: PhasePaths) -> PhaseResult` (streetvision.phases.result), both checked against these names.

Light to import (no torch, no kfp): library functions are named as dotted paths and imported when called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module

from streetvision.contracts.splits import Role, Split


@dataclass(frozen=True)
class Resources:
    """Default CPU, memory and GPUs of a phase's task (`cluster.<phase>` overrides them)."""

    cpu: str
    memory: str
    gpus: int = 0


@dataclass(frozen=True)
class OutputSpec:
    """An output with a completion record: its `kind` and (for split-carrying outputs) its `split`."""

    kind: str
    split: Split | None = None


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    # "module:function" of the library function that runs the phase (no KFP there).
    function: str
    # Name of the KFP component function in components/phases.py (its typed signature encodes the splits).
    component: str
    # Phases that must run too when this one is selected (added as dependencies).
    requires: tuple[str, ...]
    # Input name -> where it comes from, "phase.output", in order of preference; the first selected phase
    # provides it. An input none of whose providers is selected is left out (only a variant's inputs may be).
    inputs: dict[str, tuple[str, ...]]
    # The role each split-carrying input is read in (the split policy; components, run time and lint obey it).
    reads: dict[str, tuple[Role, Split]]
    # Output name -> what its completion record says; the run summary counts the phase done when all exist.
    outputs: dict[str, OutputSpec]
    resources: Resources
    # Names of the HTML report outputs (the KFP UI shows them); the phase returns one document for each.
    reports: tuple[str, ...] = ()
    # Part of the default run (`all`), or chosen explicitly.
    default: bool = True
    # Produces the bundle's selective policy (phase 6 takes exactly one).
    policy: bool = False
    # Writes resumable checkpoints: gets the checkpoint PVC and the run id on a cluster.
    checkpoints: bool = False
    # Feeding phase -> component function this phase runs as when that phase is selected too.
    variants: dict[str, str] = field(default_factory=dict)

    @property
    def optional_inputs(self) -> frozenset[str]:
        """Inputs only a variant reads: every provider is a phase that makes this one run as a variant."""
        return frozenset(
            name
            for name, providers in self.inputs.items()
            if all(provider.partition(".")[0] in self.variants for provider in providers)
        )

    def library_function(self):
        """The library function that runs this phase (imported now, so importing the registry stays light)."""
        module, _, name = self.function.partition(":")
        return getattr(import_module(module), name)


def _split_outputs(*splits: Split) -> dict[str, OutputSpec]:
    return {s.value: OutputSpec("split", s) for s in splits}


GPU_TASK = Resources(cpu="12", memory="96G", gpus=1)

# In execution order.
PHASES: tuple[PhaseSpec, ...] = (
    PhaseSpec(
        name="ingest",
        function="streetvision.phases.ingest:run_ingest",
        component="ingest",
        requires=(),
        inputs={},
        reads={},
        outputs={
            **_split_outputs(Split.TRAIN, Split.VAL_SELECT, Split.VAL_CALIB, Split.VAL_TEST),
            "data_report": OutputSpec("data_report"),
        },
        resources=Resources(cpu="8", memory="32G"),
        reports=("data_report_html",),
    ),
    PhaseSpec(
        name="phase4",
        function="streetvision.phases.phase4:run_phase4",
        component="phase4_explora",
        requires=("ingest",),
        inputs={"train": ("ingest.train",), "val_select": ("ingest.val_select",)},
        # ExPLoRA adapts the backbone on TRAIN images (labels unused); its probe fits on TRAIN features and
        # scores VAL_SELECT, the model-selection split (the evidence whether adaptation helped).
        reads={
            "train": (Role.FIT, Split.TRAIN),
            "val_select": (Role.MODEL_SELECTION, Split.VAL_SELECT),
        },
        outputs={"backbone": OutputSpec("backbone")},
        resources=GPU_TASK,
        reports=("ssl_curves",),
        default=False,
        checkpoints=True,
    ),
    PhaseSpec(
        name="phase1",
        function="streetvision.phases.phase1:run_phase1",
        component="phase1_train",
        requires=("ingest",),
        inputs={
            "train": ("ingest.train",),
            "val_select": ("ingest.val_select",),
            "val_calib": ("ingest.val_calib",),
            "backbone": ("phase4.backbone",),  # only in the variant that trains from the adapted backbone
        },
        reads={
            "train": (Role.FIT, Split.TRAIN),
            "val_select": (Role.MODEL_SELECTION, Split.VAL_SELECT),
            "val_calib": (Role.PREDICTION, Split.VAL_CALIB),
        },
        outputs={
            "checkpoint": OutputSpec("checkpoint"),
            "val_select_logits": OutputSpec("logits", Split.VAL_SELECT),
            "val_calib_logits": OutputSpec("logits", Split.VAL_CALIB),
        },
        resources=GPU_TASK,
        reports=("training_curves",),
        checkpoints=True,
        variants={"phase4": "phase1_train_adapted"},
    ),
    PhaseSpec(
        name="phase2",
        function="streetvision.phases.phase2:run_phase2",
        component="phase2_threshold",
        requires=("phase1",),
        inputs={"val_calib_logits": ("phase1.val_calib_logits",)},
        reads={"val_calib_logits": (Role.POLICY_FITTING, Split.VAL_CALIB)},
        outputs={"policy": OutputSpec("policy")},
        resources=Resources(cpu="2", memory="4G"),
        policy=True,
    ),
    PhaseSpec(
        name="phase3",
        function="streetvision.phases.phase3:run_phase3",
        component="phase3_gate",
        requires=("ingest", "phase1"),
        inputs={
            "checkpoint": ("phase1.checkpoint",),
            "train": ("ingest.train",),
            "val_select": ("ingest.val_select",),
            "val_calib": ("ingest.val_calib",),
        },
        # Gatekeeper: fine-tune on TRAIN, pick the epoch by AURC on VAL_SELECT, fit the threshold on VAL_CALIB.
        reads={
            "train": (Role.FIT, Split.TRAIN),
            "val_select": (Role.MODEL_SELECTION, Split.VAL_SELECT),
            "val_calib": (Role.POLICY_FITTING, Split.VAL_CALIB),
        },
        outputs={"gate_checkpoint": OutputSpec("checkpoint"), "policy": OutputSpec("policy")},
        resources=GPU_TASK,
        checkpoints=True,
        default=False,
        policy=True,
    ),
    PhaseSpec(
        name="phase5",
        function="streetvision.phases.phase5:run_phase5",
        component="phase5_scrc",
        requires=("phase1",),
        inputs={"val_calib_logits": ("phase1.val_calib_logits",)},
        reads={"val_calib_logits": (Role.POLICY_FITTING, Split.VAL_CALIB)},
        outputs={"policy": OutputSpec("policy")},
        resources=Resources(cpu="2", memory="4G"),
        default=False,
        policy=True,
    ),
    PhaseSpec(
        name="phase6",
        function="streetvision.phases.phase6:run_phase6",
        component="phase6_export",
        requires=("phase1",),
        inputs={
            # The gate policy was fitted on the tuned weights, so the bundle takes those weights.
            "checkpoint": ("phase3.gate_checkpoint", "phase1.checkpoint"),
            # Exactly one policy phase is selected when a bundle is built (resolve_phases checks).
            "policy": ("phase2.policy", "phase3.policy", "phase5.policy"),
            "val_calib": ("ingest.val_calib",),
        },
        # The bundle's drift reference: confidences and embeddings of the data the policy was fitted on.
        reads={"val_calib": (Role.POLICY_FITTING, Split.VAL_CALIB)},
        outputs={"bundle": OutputSpec("bundle")},
        resources=Resources(cpu="2", memory="8G"),
    ),
    PhaseSpec(
        name="evaluate",
        function="streetvision.phases.evaluate:run_evaluate",
        component="evaluate",
        requires=("ingest", "phase6"),
        inputs={"bundle": ("phase6.bundle",), "val_test": ("ingest.val_test",)},
        reads={"val_test": (Role.FINAL_EVALUATION, Split.VAL_TEST)},
        outputs={"evaluation": OutputSpec("evaluation", Split.VAL_TEST)},
        resources=Resources(cpu="8", memory="32G", gpus=1),
        reports=("report",),
    ),
)

PHASE_SPECS: dict[str, PhaseSpec] = {spec.name: spec for spec in PHASES}

# Derived tables, for the places that need only one fact.
PHASE_NAMES: tuple[str, ...] = tuple(PHASE_SPECS)
DEFAULT_PHASES: tuple[str, ...] = tuple(s.name for s in PHASES if s.default)
POLICY_PHASES: tuple[str, ...] = tuple(s.name for s in PHASES if s.policy)
CHECKPOINTING_PHASES: frozenset[str] = frozenset(s.name for s in PHASES if s.checkpoints)
REQUIRES: dict[str, tuple[str, ...]] = {s.name: s.requires for s in PHASES}
PHASE_READS: dict[str, dict[str, tuple[Role, Split]]] = {s.name: s.reads for s in PHASES}


def default_resources(phase: str) -> dict:
    """The phase's default task resources as the config's `cluster.<phase>` fields."""
    res = PHASE_SPECS[phase].resources
    return {"cpu": res.cpu, "memory": res.memory, "gpus": res.gpus}
