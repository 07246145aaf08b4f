"""Which model a run uses, as resolution found it: pure data, so that run specs can hold it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user asked for
    hub_id: str  # the hub identity of the weights (for comparing runs)
    location: str  # what from_pretrained is given: a local directory or a hub id (or a checkpoint file)
    # "package", "path", "hub", "checkpoint" (a .pth file), "random-init" (built here, no weights)
    # or "unavailable" (a local-only alias)
    source: str
