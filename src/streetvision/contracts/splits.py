"""The split policy: which role may read which split, and which phase reads what in which role.

Leakage makes every reported number a lie, so the rules are data here and enforced three times: by KFP
artifact types (components/), by run-time metadata checks (``require_access``), and by a lint over the
compiled pipeline.
"""

from __future__ import annotations

from enum import Enum

from streetvision.contracts.errors import LeakageViolationError


class Split(str, Enum):
    TRAIN = "train"
    VAL_SELECT = "val_select"
    VAL_CALIB = "val_calib"
    VAL_TEST = "val_test"


class Role(str, Enum):
    FIT = "fit"  # fitting weights
    MODEL_SELECTION = "model_selection"  # early stopping, checkpoint choice
    PREDICTION = "prediction"  # computing logits for a later phase; no decision uses the labels here
    POLICY_FITTING = "policy_fitting"  # calibrators, thresholds
    FINAL_EVALUATION = "final_evaluation"  # the reported numbers


ROLE_SPLITS: dict[Role, frozenset[Split]] = {
    Role.FIT: frozenset({Split.TRAIN}),
    Role.MODEL_SELECTION: frozenset({Split.VAL_SELECT}),
    Role.PREDICTION: frozenset({Split.VAL_SELECT, Split.VAL_CALIB}),
    Role.POLICY_FITTING: frozenset({Split.VAL_CALIB}),
    Role.FINAL_EVALUATION: frozenset({Split.VAL_TEST}),
}

# Which split-carrying input of each phase is read in which role. Component signatures and the compiled-
# pipeline lint are checked against this table in the tests.
PHASE_READS: dict[str, dict[str, tuple[Role, Split]]] = {
    "ingest": {},
    "phase1": {
        "train": (Role.FIT, Split.TRAIN),
        "val_select": (Role.MODEL_SELECTION, Split.VAL_SELECT),
        "val_calib": (Role.PREDICTION, Split.VAL_CALIB),
    },
    # ExPLoRA adapts the backbone on TRAIN images (labels unused); its probe fits on TRAIN features and
    # scores VAL_SELECT, the model-selection split (the evidence whether adaptation helped).
    "phase4": {
        "train": (Role.FIT, Split.TRAIN),
        "val_select": (Role.MODEL_SELECTION, Split.VAL_SELECT),
    },
    "phase2": {"val_calib_logits": (Role.POLICY_FITTING, Split.VAL_CALIB)},
    # Gatekeeper: fine-tune on TRAIN, pick the epoch by AURC on VAL_SELECT, fit the threshold on VAL_CALIB.
    "phase3": {
        "train": (Role.FIT, Split.TRAIN),
        "val_select": (Role.MODEL_SELECTION, Split.VAL_SELECT),
        "val_calib": (Role.POLICY_FITTING, Split.VAL_CALIB),
    },
    "phase5": {"val_calib_logits": (Role.POLICY_FITTING, Split.VAL_CALIB)},
    # The bundle's drift reference: confidences and embeddings of the data the policy was fitted on.
    "phase6": {"val_calib": (Role.POLICY_FITTING, Split.VAL_CALIB)},
    "evaluate": {"val_test": (Role.FINAL_EVALUATION, Split.VAL_TEST)},
}

_FIX_BY_ROLE = {
    Role.FIT: "fit weights on the TRAIN split only",
    Role.MODEL_SELECTION: "select models and checkpoints on VAL_SELECT only",
    Role.PREDICTION: "compute logits for VAL_SELECT or VAL_CALIB only; VAL_TEST is read by `evaluate` alone",
    Role.POLICY_FITTING: "fit calibrators and policies on VAL_CALIB logits only",
    Role.FINAL_EVALUATION: "evaluate on VAL_TEST only",
}


def allowed(role: Role, split: Split) -> bool:
    return split in ROLE_SPLITS[role]


def check_access(role: Role, split: Split | str | None, where: str) -> Split:
    """Raise LeakageViolationError unless `role` may read `split`; return the split."""
    try:
        split = Split(split)
    except ValueError:
        raise LeakageViolationError(
            f"input carries no known split (got {split!r}), so its provenance cannot be checked",
            where,
            "wire an artifact produced by `ingest` (or by a phase that read one); do not hand-build split data",
        ) from None
    if not allowed(role, split):
        permitted = ", ".join(s.name for s in sorted(ROLE_SPLITS[role], key=lambda s: s.value))
        raise LeakageViolationError(
            f"{split.name} data was given to a step whose role is {role.value}, which may read only {permitted}",
            where,
            _FIX_BY_ROLE[role],
        )
    return split
