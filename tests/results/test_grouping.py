"""Repeats of one configuration group together whichever harness version wrote their config."""

from __future__ import annotations

import json

from harness.results.grouping import group_key, settings
from tests.support import resolved


def _row(config: dict) -> dict:
    return {"config": json.dumps(config), "device": "cpu", "device_name": "cpu-x"}


def _written_before_suite_options(config: dict) -> dict:
    """The same run's config as a harness without suite options or evaluation backends wrote it:
    the causal-LM options at the top level for every suite, no eval_backend."""
    old = {k: v for k, v in config.items() if k not in ("suite_options", "suite_options_changed", "eval_backend")}
    old.update({"packing": False, "train_data": None, "num_fewshot": None, "max_new_tokens": None})
    old.update(config["suite_options"])
    return old


def test_a_config_written_before_suite_options_groups_with_todays():
    new = json.loads(resolved().model_dump_json())
    assert group_key(_row(_written_before_suite_options(new))) == group_key(_row(new))


def test_a_suite_option_set_on_a_new_row_groups_with_the_old_row_that_set_it():
    new = json.loads(resolved().model_dump_json())
    new["suite"] = "gsm8k"
    new["suite_options"] = {"packing": True, "train_data": None, "num_fewshot": 5, "max_new_tokens": 256}
    old = _written_before_suite_options(new)
    assert group_key(_row(old)) == group_key(_row(new))
    assert settings(_row(new))["num_fewshot"] == 5  # named like any setting where lines differ


def test_a_different_suite_option_or_backend_still_splits():
    base = json.loads(resolved().model_dump_json())
    fewshot = {**base, "suite_options": {"num_fewshot": 5}}
    vllm = {**base, "eval_backend": "vllm"}
    keys = {group_key(_row(c)) for c in (base, fewshot, vllm)}
    assert len(keys) == 3
