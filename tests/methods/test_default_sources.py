"""Every method's default learning rate names where it comes from (a paper, its official code
or peft's example for the method), never a score the harness itself reported."""

from __future__ import annotations

import re

import pytest

from harness.methods.base import METHODS
from harness.methods.pipeline import Pipeline

# The project's own methods: other test modules register stand-ins (test_cli's test-explodes).
NAMES = sorted(name for name, cls in METHODS if cls.__module__.startswith("harness."))

# Words that would make a source a measurement of the harness's own runs.
HARNESS_MEASUREMENT = re.compile(r"measured|harness|we found|tuned|converge", re.IGNORECASE)


@pytest.mark.parametrize("name", NAMES)
def test_every_method_names_the_source_of_its_rate(name):
    method = METHODS.get(name)
    assert method.default_lr_source.strip(), f"{name} has no default_lr_source"
    assert not HARNESS_MEASUREMENT.search(method.default_lr_source), method.default_lr_source


@pytest.mark.parametrize("name", NAMES)
def test_a_method_that_trains_nothing_has_no_rate_and_says_so(name):
    method = METHODS.get(name)
    if not method.trains or method.compresses:
        assert (method.default_lr, method.default_lr_source.startswith("none:")) == (0.0, True)
    else:
        assert method.default_lr > 0 and not method.default_lr_source.startswith("none:")


def test_lora_takes_the_lora_papers_roberta_base_rate():
    # Hu et al. 2022, Table 9 (microsoft/LoRA examples/NLU/roberta_base_sst2.sh): 5e-4 for SST-2.
    lora = METHODS.get("lora")
    assert lora.default_lr == 5e-4
    assert "Hu et al. 2022" in lora.default_lr_source and "Table 9" in lora.default_lr_source


def test_variants_that_inherit_a_rate_say_whose_it_is():
    lora = METHODS.get("lora")
    for name in ("dora", "rslora", "pissa", "olora", "eva", "corda", "lora-ga", "dylora"):
        variant = METHODS.get(name)
        assert variant.default_lr == lora.default_lr, name
        assert variant.default_lr_source.startswith("inherits") and lora.default_lr_source in variant.default_lr_source
    full, lisa = METHODS.get("full"), METHODS.get("lisa")
    assert (lisa.default_lr, lisa.default_lr_source) == (
        full.default_lr,
        f"inherits full fine-tuning's rate: {full.default_lr_source}",
    )


@pytest.mark.parametrize(
    "spec,step",
    [("wanda:sparsity=0.5+lora", "lora"), ("lora+int8", "lora"), ("magnitude+ia3", "ia3"), ("svd:rank=4", "svd")],
)
def test_a_pipeline_reports_the_source_of_its_last_trained_step(spec, step):
    pipeline = Pipeline.parse(spec)
    method = METHODS.get(step)
    assert (pipeline.default_lr, pipeline.default_lr_source) == (method.default_lr, method.default_lr_source)


def test_a_pipeline_of_two_trained_steps_takes_the_second():
    pipeline = Pipeline.parse("ia3+lora")
    assert pipeline.default_lr_source == METHODS.get("lora").default_lr_source != METHODS.get("ia3").default_lr_source
