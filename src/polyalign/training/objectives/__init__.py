"""Preference objectives: one module per base loss, and HDPO's extras composed on top of any of them
(`compose.preference_loss`).

A base loss module declares `REFERENCE_FREE` (it needs no reference model or log-probs), `NEEDS_UNPAIRED` (it
scores each side on its own against a reference point estimated on mismatched prompt-response pairs) and
`loss(batch: PairBatch, beta, offset, **knobs) -> BaseTerms`, a pure function. Its knobs are the variant's
params named `<loss>_<knob>` (`simpo_gamma` -> `gamma`). Registering one is the line below; `docs/extending.md`
walks through it. This module imports no torch, so that params validation stays light."""

from __future__ import annotations

import importlib
from types import ModuleType

# the registry: a loss's name (the variants' `loss`) -> the module that implements it
BASE_LOSSES: dict[str, str] = {name: f"{__name__}.{name}"
                               for name in ("sigmoid", "cdpo", "robust", "ipo", "simpo", "orpo", "kto")}


def base_loss(name: str) -> ModuleType:
    """The module of a registered base loss."""
    if name not in BASE_LOSSES:
        raise ValueError(f"unknown preference loss {name!r}; registered: {', '.join(BASE_LOSSES)}")
    return importlib.import_module(BASE_LOSSES[name])


def resolve_reference(loss: str, reference: str | None) -> str:
    """The reference a variant trains against: its own setting, or by default `precomputed` (`none` for a
    reference-free loss). A reference-free loss with a reference, or the reverse, is refused (ValueError)."""
    free = base_loss(loss).REFERENCE_FREE
    if reference is None:
        return "none" if free else "precomputed"
    if free and reference != "none":
        raise ValueError(f"loss {loss} is reference-free, so its reference must be none (or unset), not {reference}")
    if not free and reference == "none":
        raise ValueError(f"loss {loss} needs a reference (precomputed, frozen or lora), not none")
    return reference
