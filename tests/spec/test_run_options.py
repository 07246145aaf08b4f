"""Run options are declared once (a RunSpec field with its Opt): ResolvedRun's fields, the flags
errors name and the identity come from the declarations. Suite options are given like run
options, checked by the suite that declares them, and configs written before suites declared
their options read back with the hashes they had."""

from __future__ import annotations

import hashlib
import json

import pytest
from pydantic import ValidationError

from harness.spec.options import Fill
from harness.spec.run import (
    IDENTITY_KEYS,
    LEGACY_SUITE_OPTIONS,
    RUN_FLAGS,
    RUN_OPTIONS,
    ResolvedRun,
    RunSpec,
    flag_of,
)
from tests.support import resolved

# The identity of version 2 as it was fixed, key by key.
IDENTITY_V2 = {
    "suite",
    "task",
    "method",
    "method_versions",
    "model_hub_id",
    "model_digest",
    "seed",
    "data_seed",
    "max_train_samples",
    "max_eval_samples",
    "epochs",
    "max_steps",
    "lr",
    "batch_size",
    "eval_batch_size",
    "max_length",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "precision",
    "lr_scheduler",
    "gradient_accumulation_steps",
    "gradient_checkpointing",
    "max_train_tokens",
    "packing",
    "train_data",
    "num_fewshot",
    "max_new_tokens",
    "device_type",
    "kernel_profile",
    "latency_warmup",
    "latency_repeats",
}


def test_every_field_but_the_suites_own_is_a_declared_option_and_a_resolved_field():
    assert set(RUN_OPTIONS) == set(RunSpec.model_fields) - {"suite_options"}
    for name, opt in RUN_OPTIONS.items():
        assert ResolvedRun.model_fields[name].annotation == opt.resolved, name
    assert (RUN_OPTIONS["lr"].fill, RUN_OPTIONS["epochs"].fill, RUN_OPTIONS["max_grad_norm"].fill) == (
        Fill.METHOD,
        Fill.SUITE,
        1.0,
    )


def test_the_identity_keys_are_those_of_version_2():
    assert len(IDENTITY_KEYS) == len(set(IDENTITY_KEYS)) == 32
    assert set(IDENTITY_KEYS) == IDENTITY_V2
    assert set(LEGACY_SUITE_OPTIONS) <= IDENTITY_V2


def test_errors_name_the_flag_an_option_is_given_by():
    assert RUN_FLAGS == {"gradient_accumulation_steps": "--grad-accum", "results_dir": "--results"}
    assert flag_of("lr") == "--lr" and flag_of("gradient_accumulation_steps") == "--grad-accum"
    assert flag_of("latency_warmup") == "--set latency_warmup"  # declared without a flag
    assert flag_of("num_fewshot") == "--num-fewshot"  # a suite's option: a flag of that suite


def test_suite_options_are_given_as_keys_like_run_options():
    spec = RunSpec(suite="gsm8k", method="lora", packing=True, num_fewshot=5)
    assert spec.suite_options == {"packing": True, "num_fewshot": 5}
    assert RunSpec(suite="gsm8k", method="lora", suite_options={"packing": True, "num_fewshot": 5}) == spec
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec  # the trip to a worker
    with pytest.raises(ValidationError, match="an option of gsm8k, lm-eval, not of suite 'glue'"):  # checked there too
        RunSpec.model_validate_json(spec.model_dump_json().replace('"gsm8k"', '"glue"'))
    assert spec.given() == {"suite": "gsm8k", "method": "lora", "packing": True, "num_fewshot": 5}


@pytest.mark.parametrize(
    "values, key, message",
    [
        (dict(suite="gsm8k", packing=1), "packing", "Input should be a valid boolean"),
        (dict(suite="gsm8k", num_fewshot=-1), "num_fewshot", "Input should be greater than or equal to 0"),
        (
            dict(suite="glue", num_fewshot=5),
            "num_fewshot",
            "an option of gsm8k, lm-eval, not of suite 'glue' (glue's options: none)",
        ),
        (
            dict(suite="GLUE", sead=1),
            "sead",
            "unknown setting for suite 'glue'; did you mean seed? (glue's options: none)",
        ),
        (
            dict(suite="gsm8k", packng=True),
            "packng",
            "unknown setting for suite 'gsm8k'; did you mean packing? "
            "(gsm8k's options: packing, train_data, train_on_prompt, num_fewshot, max_new_tokens, context_length, "
            "retention_tasks)",
        ),
    ],
)
def test_a_bad_suite_option_is_an_error_at_its_own_key(values, key, message):
    """Located at the key, as a sweep file names the line of a key."""
    with pytest.raises(ValidationError) as caught:
        RunSpec(**values)
    [error] = caught.value.errors()
    assert (error["loc"], error["msg"]) == ((key,), message)


def test_a_preset_fills_only_what_the_spec_does_not_set():
    spec = RunSpec(suite="gsm8k", num_fewshot=2, lr=3e-4)
    filled = spec.under({"num_fewshot": 5, "train_data": "acme/qa", "lr": 1e-4, "max_steps": 7})
    assert filled.suite_options == {"num_fewshot": 2, "train_data": "acme/qa"}
    assert (filled.lr, filled.max_steps) == (3e-4, 7)


def _legacy_config(run: ResolvedRun, **legacy) -> dict:
    """`run`'s config as the harness wrote it before suites declared their options."""
    config = json.loads(run.model_dump_json())
    del config["suite_options"], config["suite_options_changed"]
    return {**config, **LEGACY_SUITE_OPTIONS, **legacy}


def test_a_config_from_before_suite_options_reads_back_with_its_hash():
    glue = resolved()
    assert ResolvedRun.model_validate(_legacy_config(glue)).job_hash == glue.job_hash
    gsm8k = resolved(
        suite="gsm8k",
        task="gsm8k",
        suite_options={"packing": True, "train_data": None, "num_fewshot": 5, "max_new_tokens": 32},
    )
    old = ResolvedRun.model_validate(_legacy_config(gsm8k, packing=True, num_fewshot=5, max_new_tokens=32))
    assert old.suite_options == {"packing": True, "num_fewshot": 5, "max_new_tokens": 32}
    assert old.job_hash == gsm8k.job_hash
    # The legacy options are hashed under their own names, at their old defaults where a suite lacks them.
    assert {k: glue.identity()[k] for k in LEGACY_SUITE_OPTIONS} == LEGACY_SUITE_OPTIONS
    assert {k: gsm8k.identity()[k] for k in LEGACY_SUITE_OPTIONS} == {
        "packing": True,
        "train_data": None,
        "num_fewshot": 5,
        "max_new_tokens": 32,
    }


def test_a_suite_option_declared_later_is_hashed_only_away_from_its_default():
    base = resolved(suite_options={"new_option": 3})
    assert base.job_hash == resolved().job_hash
    changed = resolved(suite_options={"new_option": 4}, suite_options_changed={"new_option": 4})
    identity = {**resolved().identity(), "suite_options": {"new_option": 4}}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    assert changed.job_hash == hashlib.sha256(canonical.encode()).hexdigest()[:16] != base.job_hash
    # A legacy option away from its default is already hashed under its own name, not twice.
    packed = resolved(suite_options={"packing": True}, suite_options_changed={"packing": True})
    assert "suite_options" not in packed.identity() and packed.identity()["packing"] is True


def test_an_option_hashed_when_changed_enters_the_identity_only_then():
    assert "eval_backend" not in resolved().identity()
    vllm = resolved(eval_backend="vllm")
    assert vllm.identity()["eval_backend"] == "vllm" and vllm.job_hash != resolved().job_hash
