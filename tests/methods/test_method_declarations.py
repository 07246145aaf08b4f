"""What methods declare instead of writing out: names from the registry, peft configs from
tables, the compression preamble from one base, and adapter scopes for the kernel profile."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from harness.core.errors import HarnessError
from harness.core.registry import Registry
from harness.measure.kernels import AdapterScope
from harness.methods.base import METHODS, Method, MethodContext
from harness.methods.pipeline import Pipeline
from harness.suites.base import SUITES
from tests.support import ctx

# Names --------------------------------------------------------------------------------


def test_the_registry_sets_each_entry_name():
    widgets: Registry[type] = Registry("widget", name_attribute="name")

    @widgets.register("alpha")
    class Alpha:
        name = ""

    @widgets.register("beta")
    class Beta(Alpha):  # inherits "alpha", registered as "beta": its own name wins
        pass

    assert (Alpha.name, Beta.name) == ("alpha", "beta")

    @widgets.register("gamma")
    class Gamma:
        name = "gamma"  # the same name, written out: accepted

    assert Gamma.name == "gamma"
    with pytest.raises(ValueError, match=r"widget 'delta' sets name='other'; leave it to the registry"):

        @widgets.register("delta")
        class Delta:
            name = "other"

    plain: Registry[type] = Registry("widget")  # no name_attribute: entries are left as they are

    @plain.register("epsilon")
    class Epsilon:
        name = "something else"

    assert Epsilon.name == "something else"


@pytest.mark.parametrize("registry", [METHODS, SUITES], ids=["methods", "suites"])
def test_every_entry_carries_its_registered_name(registry):
    assert len(registry.names()) > 3
    assert [(name, entry.name) for name, entry in registry] == [(name, name) for name in registry.names()]


# peft configs -------------------------------------------------------------------------

QV = ["query", "value"]  # peft's LoRA default for BERT


def _peft_cases():
    from peft import EvaConfig

    return [
        ("lora", "LoraConfig", dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=QV)),
        (
            "lora:r=4,alpha=8,dropout=0.1,target_modules=[query]",
            "LoraConfig",
            dict(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["query"]),
        ),
        ("dora:r=4", "LoraConfig", dict(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=QV, use_dora=True)),
        ("rslora", "LoraConfig", dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=QV, use_rslora=True)),
        (
            "olora",
            "LoraConfig",
            dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=QV, init_lora_weights="olora"),
        ),
        (
            "pissa",
            "LoraConfig",
            dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=QV, init_lora_weights="pissa"),
        ),
        (
            "eva",
            "LoraConfig",
            dict(
                r=8,
                lora_alpha=16,
                lora_dropout=0.0,
                target_modules=QV,
                init_lora_weights="eva",
                eva_config=EvaConfig(use_label_mask=False),
            ),
        ),
        (
            # 100 steps: tinit = int(0.2 * 100), tfinal = int(0.3 * 100)
            "adalora:init_r=6,target_r=4,alpha=8,dropout=0.1,tinit_frac=0.2,delta_t=5,beta1=0.8,beta2=0.9,"
            "orth_reg_weight=0.2,target_modules=[query]",
            "AdaLoraConfig",
            dict(
                init_r=6,
                target_r=4,
                lora_alpha=8,
                lora_dropout=0.1,
                tinit=20,
                tfinal=30,
                deltaT=5,
                beta1=0.8,
                beta2=0.9,
                orth_reg_weight=0.2,
                total_step=100,
                target_modules=["query"],
            ),
        ),
        (
            "ia3:target_modules=[key,value,dense],feedforward_modules=[dense]",
            "IA3Config",
            dict(target_modules=["key", "value", "dense"], feedforward_modules=["dense"]),
        ),
        (
            "vera:r=16,dropout=0.1,d_initial=0.2",
            "VeraConfig",
            dict(r=16, vera_dropout=0.1, d_initial=0.2, target_modules=None, projection_prng_key=7),
        ),
        (
            "loha:r=4,alpha=2,rank_dropout=0.1,module_dropout=0.2",
            "LoHaConfig",
            dict(r=4, alpha=2, rank_dropout=0.1, module_dropout=0.2, target_modules=None),
        ),
        ("lokr:r=2", "LoKrConfig", dict(r=2, alpha=8, rank_dropout=0.0, module_dropout=0.0, target_modules=None)),
        (
            "oft:block_size=16,coft=true,eps=0.0001,block_share=true",
            "OFTConfig",
            dict(r=0, oft_block_size=16, coft=True, eps=1e-4, block_share=True, target_modules=None),
        ),
        (
            "boft:block_size=8,n_butterfly_factor=2,dropout=0.1",
            "BOFTConfig",
            dict(boft_block_size=8, boft_n_butterfly_factor=2, boft_dropout=0.1, target_modules=None),
        ),
        ("hra:r=4,apply_gs=true", "HRAConfig", dict(r=4, apply_GS=True, target_modules=None)),
        ("road:variant=road_2,group_size=8", "RoadConfig", dict(variant="road_2", group_size=8, target_modules=None)),
        (
            "fourierft:n_frequency=50,scaling=10.0,random_loc_seed=3",
            "FourierFTConfig",
            dict(n_frequency=50, scaling=10.0, random_loc_seed=3, target_modules=None),
        ),
        (
            "randlora:r=4,alpha=80,dropout=0.1,sparse=true",
            "RandLoraConfig",
            dict(r=4, randlora_alpha=80, randlora_dropout=0.1, sparse=True, projection_prng_key=7, target_modules=None),
        ),
        (
            "vblora:r=2,num_vectors=16,vector_length=8,topk=3,dropout=0.1",
            "VBLoRAConfig",
            dict(r=2, num_vectors=16, vector_length=8, topk=3, vblora_dropout=0.1, target_modules=None),
        ),
        ("miss:r=8,dropout=0.1", "MissConfig", dict(r=8, miss_dropout=0.1, target_modules=None)),
        ("ln-tuning", "LNTuningConfig", dict(target_modules=["LayerNorm"])),  # every norm of the tiny BERT
        ("prompt-tuning:num_virtual_tokens=4", "PromptTuningConfig", dict(num_virtual_tokens=4)),
        (
            "prefix-tuning:num_virtual_tokens=4,projection=true",
            "PrefixTuningConfig",
            dict(num_virtual_tokens=4, prefix_projection=True),
        ),
    ]


def test_each_peft_config_is_built_from_its_parameters(model):
    """Every argument reaches peft under peft's name, with the value given (or the default)."""
    import peft

    context = ctx(100)
    context.seed = 7
    cases = _peft_cases()
    for spec, config_class, expected in cases:
        method = Pipeline.parse(spec).methods[0]
        built = method.peft_config(context, model)
        want = getattr(peft, config_class)(**expected, task_type="SEQ_CLS")
        assert type(built) is type(want) and built.to_dict() == want.to_dict(), spec
    assert {spec.split(":")[0] for spec, _, _ in cases} >= {
        name for name, cls in METHODS if hasattr(cls, "peft_config") and name not in ("corda", "lora-ga")
    }


# Compression --------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(8, 2)

    def forward(self, pixel_values, labels=None):
        return self.head(self.body(pixel_values))


COMPRESSIONS = {
    "magnitude": "prune",
    "two-four": "prune",
    "wanda:n_batches=2": "prune",
    "int8": "quantize",
    "int4:group_size=0": "quantize",
    "gptq:calibration_batches=2,group_size=0": "quantize",
    "nf4": "quantize",
    "svd:rank=2": "factorise",
}


def _image_ctx() -> MethodContext:
    g = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(4, 8, generator=g)} for _ in range(2)]
    return MethodContext(task_type="image_cls", head_modules=("head",), sample_batches=lambda n: iter(batches[:n]))


@pytest.mark.parametrize("spec", list(COMPRESSIONS))
def test_a_model_with_nothing_to_compress_is_refused(spec):
    name = spec.split(":")[0]
    with pytest.raises(
        HarnessError, match=rf"^method '{name}': the model has no linear or convolution layer to {COMPRESSIONS[spec]}$"
    ):
        Pipeline.parse(spec).apply(_Net(nn.LayerNorm(8)), _image_ctx())


@pytest.mark.parametrize("spec", list(COMPRESSIONS))
def test_compression_alone_trains_nothing(spec):
    torch.manual_seed(0)
    model = Pipeline.parse(spec).apply(_Net(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)), _image_ctx())
    assert [name for name, p in model.named_parameters() if p.requires_grad] == []


# Adapter scopes -----------------------------------------------------------------------


def test_peft_scopes_are_the_tuner_layers_less_their_base_layers(model):
    from peft.tuners.lora import LoraLayer

    wrapped = Pipeline.parse("lora:r=2").apply(model, ctx())
    scopes = Pipeline.parse("lora:r=2").adapter_scopes(wrapped)
    lora_layers = [m for m in wrapped.modules() if isinstance(m, LoraLayer)]
    assert len(lora_layers) == 2 * 2  # query and value of the tiny BERT's two blocks
    assert [s.module for s in scopes] == lora_layers  # in module order
    assert all(s.exclude == (s.module.base_layer,) for s in scopes)


def test_handwritten_scopes_are_the_wrappers_less_their_base_layers(model):
    from harness.methods.sora import SoraLinear

    pipeline = Pipeline.parse("sora:r=2")
    wrapped = pipeline.apply(model, ctx())
    scopes = pipeline.adapter_scopes(wrapped)
    wrappers = [m for m in wrapped.modules() if isinstance(m, SoraLinear)]
    assert len(wrappers) == 4 and [s.module for s in scopes] == wrappers
    assert all(s.exclude == (s.module.base,) for s in scopes)


def test_soft_prompt_scopes_are_the_prompt_encoders(model):
    pipeline = Pipeline.parse("prompt-tuning:num_virtual_tokens=2")
    wrapped = pipeline.apply(model, ctx())
    scopes = pipeline.adapter_scopes(wrapped)
    assert [(s.module, s.exclude) for s in scopes] == [(wrapped.prompt_encoder, ())]


def test_a_model_without_adapters_has_no_scopes(model):
    assert Pipeline.parse("int8").adapter_scopes(Pipeline.parse("int8").apply(model, ctx())) == []
    merged = Pipeline.parse("lora:r=2,merge=true")
    assert merged.adapter_scopes(merged.finalize(merged.apply(model, ctx()))) == []  # merged into the weights


class _Declares(Method):
    def __init__(self, name, scopes):
        super().__init__()
        self.name, self.scopes = name, scopes

    def adapter_scopes(self, model):
        return self.scopes


def test_the_pipeline_lists_each_module_once_outermost_first():
    model = nn.Sequential(OrderedDict(a=nn.Linear(2, 2), b=nn.Sequential(nn.Linear(2, 2)), c=nn.Linear(2, 2)))
    first = [AdapterScope(model.c), AdapterScope(model.b, (model.b[0],))]
    second = [AdapterScope(model.b), AdapterScope(model.a)]  # b again: the first declaration stands
    scopes = Pipeline([_Declares("one", first), _Declares("two", second)]).adapter_scopes(model)
    assert [(s.module, s.exclude) for s in scopes] == [(model.a, ()), (model.b, (model.b[0],)), (model.c, ())]
