"""Which phases a run contains: the user's selection plus what it cannot run without (kfp-free); the phases and
what each requires are declared in `streetvision.registry`."""

from __future__ import annotations

from streetvision.contracts.errors import ConfigError
from streetvision.registry import DEFAULT_PHASES, PHASE_NAMES, POLICY_PHASES, REQUIRES


def resolve_phases(requested: list[str]) -> tuple[list[str], list[str]]:
    """Return (phases in execution order, phases added as dependencies). Raise when the choice is ambiguous.

    Dependencies with a single possible provider are added; the bundle's policy phase must be chosen.
    `all` means the whole default pipeline (DEFAULT_PHASES) with its threshold policy (phase2), or with the
    policy phase named beside it (`all phase5`); the optional phase 4 joins when named too (`all phase4`).
    """
    chosen = set(requested)
    if "all" in chosen:
        chosen.discard("all")
        chosen |= {p for p in DEFAULT_PHASES if p not in POLICY_PHASES}
        if not chosen & set(POLICY_PHASES):
            chosen.add("phase2")
    unknown = chosen - set(PHASE_NAMES)
    if unknown:
        raise ConfigError(
            f"unknown phase(s) {sorted(unknown)}",
            "--phases / pipeline.phases",
            f"choose from {list(PHASE_NAMES)} or all",
        )
    needs_bundle = chosen & {"phase6", "evaluate"}
    policies = chosen & set(POLICY_PHASES)
    if needs_bundle and len(policies) != 1:
        found = sorted(policies) or "none"
        raise ConfigError(
            f"the bundle takes exactly one policy phase; selected: {found}",
            "--phases / pipeline.phases",
            f"add exactly one of {list(POLICY_PHASES)} (threshold, gate, SCRC; e.g. --phases phase1 phase2 phase6)",
        )
    stack = list(chosen)
    while stack:
        for dep in REQUIRES[stack.pop()]:
            if dep not in chosen:
                chosen.add(dep)
                stack.append(dep)
    ordered = [p for p in PHASE_NAMES if p in chosen]
    return ordered, [p for p in ordered if p not in requested and "all" not in requested]
