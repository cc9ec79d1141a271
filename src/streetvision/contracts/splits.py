"""The split policy: which role may read which split (which phase reads what in which role is declared per
phase in ``streetvision.registry``).

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
