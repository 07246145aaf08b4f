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

from harness.spec.run import LEGACY_SUITE_OPTIONS, RUN_OPTIONS, RunSpec

# Settings of a resolved run that do not change what ran: the seed (what a group varies),
# places the weights and data were read from or results written to, the preset's name (its
# settings are in the config themselves), the device as asked for (replaced by the row's),
# and the package version (the methods' own versions, in the config, stand for their code).
RUN_ONLY_KEYS = frozenset(
    {
        "seed",
        "model_location",
        "model_source",
        "data_dir",
        "data_sources",
        "results_dir",
        "preset",
        "device",
        "harness_version",
    }
)
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
        values = {k: v for k, v in _current_layout(config).items() if k not in RUN_ONLY_KEYS}
    values["device_type"] = device_type(row.get("device"))
    values["device_name"] = row.get("device_name")
    return values


def _current_layout(config: dict) -> dict:
    """A config in one layout whichever harness wrote it, so that repeats of one configuration
    group together across the change: suite options at the top level (older configs held the
    causal-LM ones there for every suite, at their defaults elsewhere), and an option hashed only
    when changed (eval_backend) left out at its default, as the job identity leaves it out."""
    values = dict(config)
    values.update(values.pop("suite_options", None) or {})
    values.pop("suite_options_changed", None)  # derived from the suite options
    for key, default in LEGACY_SUITE_OPTIONS.items():
        values.setdefault(key, default)
    for name, opt in RUN_OPTIONS.items():
        if opt.identity == "changed" and values.get(name, None) == RunSpec.model_fields[name].default:
            values.pop(name, None)
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


# Shown beside a configuration already (its method, model and device), so never named as what differs.
SHOWN_SETTINGS = frozenset({"suite", "task", "method", "method_params", "model", "model_hub_id", "device_name"})


def setting_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) else str(value)


def differing(settings_of: list[Mapping[str, Any]]) -> list[str | None]:
    """Per configuration, the settings that vary among the configurations of its method and
    model ('lr=0.0001'), so that two learning rates of one method read as two lines."""
    peers: dict[tuple, list[int]] = {}
    for i, mine in enumerate(settings_of):
        peers.setdefault((str(mine.get("method")), str(mine.get("model"))), []).append(i)
    texts: list[str | None] = [None] * len(settings_of)
    for members in peers.values():
        names = {k for i in members for k in settings_of[i]} - SHOWN_SETTINGS
        varying = sorted(k for k in names if len({setting_text(settings_of[i].get(k)) for i in members}) > 1)
        for i in members:
            texts[i] = " ".join(f"{k}={setting_text(settings_of[i].get(k))}" for k in varying) or None
    return texts
