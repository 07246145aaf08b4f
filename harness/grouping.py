"""Which runs are repeats of one configuration: every setting the same but the seed.

A leaderboard line and a seed mean must never pool unlike runs (two learning rates, two
budgets, two precisions, a CPU and a GPU). The key is therefore built from the row's
`config` JSON (the resolved run as the job wrote it) minus the seed and the settings that say
where things were read or written rather than what ran, plus the device the row ran on
(the config holds the device as asked for, e.g. "auto"). A key the config gains later
splits groups rather than merging them: a new setting is never pooled by mistake.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

# Settings of a resolved run that do not change what ran: the seed (what a group varies),
# places the weights and data were read from or results written to, the preset's name (its
# settings are in the config themselves), the device as asked for (replaced by the row's),
# and the package version (the methods' own versions, in the config, stand for their code).
RUN_ONLY_KEYS = frozenset({
    "seed", "model_location", "model_source", "data_dir", "data_sources", "results_dir", "preset", "device",
    "harness_version",
})
# Without a readable config, the row's own columns that identify a configuration.
FALLBACK_COLUMNS = ("suite", "task", "method", "method_params", "model", "model_hub_id")


def device_type(device: Any) -> str | None:
    """'cuda' for 'cuda:1', 'cpu' for 'cpu'; None when unknown."""
    return None if not isinstance(device, str) or not device else device.split(":", 1)[0]


def settings(row: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that define a row's configuration, the seed left out (see the module doc)."""
    config = _config(row.get("config"))
    if config is None:
        values = {k: row.get(k) for k in FALLBACK_COLUMNS}
    else:
        values = {k: v for k, v in config.items() if k not in RUN_ONLY_KEYS}
    values["device_type"] = device_type(row.get("device"))
    values["device_name"] = row.get("device_name")
    return values


def group_key(row: Mapping[str, Any]) -> str:
    """A string equal for two rows exactly when they differ at most by seed and run-only settings."""
    return json.dumps(settings(row), sort_keys=True, separators=(",", ":"), default=str)


def _config(text: Any) -> dict | None:
    if not isinstance(text, str):
        return None
    try:
        config = json.loads(text)
    except ValueError:
        return None
    return config if isinstance(config, dict) else None
