"""What suites declare for themselves, through resolve(): their options (a new one at its default
keeps every job hash, away from it makes another job) and their model aliases (one registry,
filled by the suites, the same hub ids as the central table they replace)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.core.errors import HarnessError
from harness.data.models import MODELS
from harness.data.resolve import resolve_model
from harness.engine.resolve import resolve
from harness.spec.options import SuiteOptions
from harness.spec.run import RunSpec
from harness.suites.base import SUITES


def _spec(tiny_model, tiny_glue, tmp_path, **values) -> RunSpec:
    return RunSpec(
        suite="glue",
        task="sst2",
        method="lora",
        model=str(tiny_model),
        data_dir=str(tiny_glue),
        results_dir=str(tmp_path / "results"),
        device="cpu",
        **values,
    )


def test_a_new_suite_option_keeps_the_hash_at_its_default_and_changes_it_away(
    tiny_model, tiny_glue, tmp_path, monkeypatch
):
    before = resolve(_spec(tiny_model, tiny_glue, tmp_path))[0]
    assert before.suite_options == {}

    class Options(SuiteOptions):
        new_option: int = 3

    monkeypatch.setattr(SUITES.get("glue"), "Options", Options)
    after = resolve(_spec(tiny_model, tiny_glue, tmp_path))[0]
    assert after.suite_options == {"new_option": 3}  # the row's config shows it
    assert after.job_hash == before.job_hash
    assert resolve(_spec(tiny_model, tiny_glue, tmp_path, new_option=3))[0].job_hash == before.job_hash
    changed = resolve(_spec(tiny_model, tiny_glue, tmp_path, new_option=4))[0]
    assert changed.identity() == {**before.identity(), "suite_options": {"new_option": 4}}
    assert changed.job_hash != before.job_hash


def test_resolve_checks_the_suite_options_of_a_spec_made_without_validation(tiny_model, tiny_glue, tmp_path):
    spec = _spec(tiny_model, tiny_glue, tmp_path)
    smuggled = RunSpec.model_construct(**{**dict(spec), "suite_options": {"packing": True}})
    with pytest.raises(HarnessError, match=r"^--packing=True: an option of gsm8k, lm-eval, not of suite 'glue'"):
        resolve(smuggled)


def test_the_preset_fills_a_suite_option(tiny_llama, tiny_gsm8k, tmp_path):
    spec = RunSpec(suite="gsm8k", preset="peft-metamathqa", max_steps=3)
    filled = SUITES.get("gsm8k").get_preset("peft-metamathqa").fill(spec)
    assert filled.suite_options == {"train_data": "meta-math/MetaMathQA"} and filled.max_steps == 3


# The aliases of the central table the suites' declarations replace: alias -> (hub id, suite).
ALIASES = {
    "minilm-l6": ("sentence-transformers/all-MiniLM-L6-v2", "glue"),
    "roberta-base": ("FacebookAI/roberta-base", "glue"),
    "roberta-large": ("FacebookAI/roberta-large", "glue"),
    "deberta-v3-base": ("microsoft/deberta-v3-base", "glue"),
    "bert-base": ("google-bert/bert-base-uncased", "glue"),
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "lm-eval"),
    "smollm2-360m": ("HuggingFaceTB/SmolLM2-360M-Instruct", "lm-eval"),
    "llama-3.2-1b": ("meta-llama/Llama-3.2-1B", "lm-eval"),
    "llama-3.2-3b": ("meta-llama/Llama-3.2-3B", "lm-eval"),
    "resnet20-cifar10": ("resnet20-cifar10", "cifar"),
    "vit-base": ("google/vit-base-patch16-224", "imagenet"),
    "deit-tiny": ("facebook/deit-tiny-patch16-224", "imagenet"),
    "deit-small": ("facebook/deit-small-patch16-224", "imagenet"),
    "resnet-50": ("microsoft/resnet-50", "imagenet"),
    "resnet-18": ("microsoft/resnet-18", "imagenet"),
    "vit-tiny": ("random-init:vit-tiny", "imagenet"),
    "vit-tiny-6": ("random-init:vit-tiny-6", "imagenet"),
    "resnet-tiny": ("random-init:resnet-tiny", "imagenet"),
}


@pytest.mark.parametrize("alias", list(ALIASES))
def test_every_alias_resolves_through_the_registry_to_its_hub_id(alias):
    hub_id, suite = ALIASES[alias]
    model = MODELS.get(alias)
    assert model.hub_id == hub_id
    assert vars(SUITES.get(suite))["model_aliases"][alias] is model  # declared by the suite that uses it
    ref = resolve_model(alias)
    # A packaged GGUF copy is named by its file beside the hub id: its weights are not the hub's.
    assert ref.hub_id == (f"{hub_id}:{model.gguf_file}" if ref.source == "package" and model.gguf_file else hub_id)


def test_resolving_an_alias_loads_the_suites_that_declare_them():
    code = (
        "import sys; from harness.data.resolve import resolve_model; "
        "print(resolve_model('roberta-base').hub_id, 'harness.suites.glue' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["FacebookAI/roberta-base", "True"]


def test_an_unknown_alias_names_the_close_ones():
    with pytest.raises(HarnessError, match=r"unknown model 'roberta-bas'.*did you mean roberta-base"):
        resolve_model("roberta-bas")
