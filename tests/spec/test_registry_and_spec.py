"""The generic registry and the method-string parser."""

from __future__ import annotations

import pytest

from harness.core.errors import HarnessError
from harness.core.registry import Registry
from harness.methods.base import METHODS
from harness.methods.pipeline import Pipeline
from harness.spec.method_spec import MethodStep, parse_pipeline


def test_registry_registers_lists_and_suggests():
    reg: Registry[type] = Registry("widget")

    @reg.register("alpha")
    class Alpha:
        """The first widget."""

    reg.register("beta")(int)
    assert reg.get("alpha") is Alpha and reg.names() == ["alpha", "beta"] and "beta" in reg
    with pytest.raises(HarnessError, match=r"unknown widget 'alpah'; did you mean alpha\?"):
        reg.get("alpah")
    with pytest.raises(HarnessError, match="known: alpha, beta"):
        reg.get("zzz")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("alpha")(float)


@pytest.mark.parametrize(
    "text, steps",
    [
        ("lora", [MethodStep("lora", {})]),
        ("LoRA:r=16,alpha=32", [MethodStep("lora", {"r": 16, "alpha": 32})]),
        ("lora:dropout=0.05,merge=true", [MethodStep("lora", {"dropout": 0.05, "merge": True})]),
        ("lora:target_modules=[query,value]", [MethodStep("lora", {"target_modules": ["query", "value"]})]),
        ("nf4+lora:r=16", [MethodStep("nf4", {}), MethodStep("lora", {"r": 16})]),
        ("wanda:sparsity=0.5+lora", [MethodStep("wanda", {"sparsity": 0.5}), MethodStep("lora", {})]),
    ],
)
def test_parse_pipeline(text, steps):
    assert parse_pipeline(text) == steps


@pytest.mark.parametrize("text", ["", "lora:r", "lora:r=1,r=2", "lora:target_modules=[a,b", "lo ra", "lora:=3"])
def test_parse_errors_are_harness_errors(text):
    with pytest.raises(HarnessError):
        parse_pipeline(text)


def test_canonical_spec_keeps_only_non_default_parameters():
    assert Pipeline.parse("lora").spec() == "lora"
    assert Pipeline.parse("lora:alpha=16,r=16").spec() == "lora:r=16"
    assert Pipeline.parse("lora:r=16,alpha=32").spec() == Pipeline.parse("lora:alpha=32,r=16").spec()


def test_adalora_rejects_target_above_initial_rank():
    with pytest.raises(HarnessError, match="target_r"):
        Pipeline.parse("adalora:init_r=4,target_r=8")


def test_methods_registry_lists_the_issue_methods():
    assert {"full", "bitfit", "lora", "dora", "adalora", "vera", "ia3"} <= set(METHODS.names())
