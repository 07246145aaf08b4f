"""Kernel tables and adapter shares from torch.profiler (harness.measure.kernels), on tiny CPU models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from harness.measure.kernels import (
    ADAPTER_OP,
    ADAPTER_RANGE,
    BASE_RANGE,
    AdapterScope,
    categorise,
    profile_steps,
    summarise,
)
from harness.methods.peft_family import tuner_layer_scopes


@pytest.fixture(autouse=True)
def one_thread():
    # Timing shares on a shared 2-core machine: with one intra-op thread no operator waits
    # at an OpenMP barrier for a core another process holds.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "name, category",
    [
        ("aten::addmm", "matmul"),
        ("aten::mm", "matmul"),
        ("aten::native_layer_norm", "normalisation"),
        ("aten::native_layer_norm_backward", "normalisation"),
        ("aten::gelu", "elementwise"),
        ("aten::add_", "elementwise"),
        ("aten::threshold_backward", "elementwise"),
        ("aten::copy_", "memory copy"),
        ("aten::embedding", "memory copy"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("aten::_softmax", "attention"),
        ("aten::_log_softmax", "other"),  # the loss, not attention
        ("ampere_sgemm_128x64_tn", "matmul"),
        ("nvjet_tst_128x64_64x8_1x1_v_bz_coopA_TNN", "matmul"),
        ("fmha_cutlassF_f32_aligned_64x64_rf_sm80", "attention"),  # a CUTLASS kernel, but attention first
        ("Memcpy HtoD (Pageable -> Device)", "memory copy"),
        ("Memset (Device)", "memory copy"),
        (
            "void at::native::elementwise_kernel<128, 4, at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)>",
            "memory copy",
        ),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>", "elementwise"),
        ("aten::view", "other"),
        ("aten::sum", "other"),
    ],
)
def test_categorise(name, category):
    assert categorise(name) == category


def mlp(layers: int = 4, width: int = 512) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(width, width), nn.ReLU())])


def test_mlp_table_matches_key_averages():
    model, x = mlp(), torch.randn(64, 512)

    @torch.no_grad()
    def forward():
        model(x)

    prof = profile_steps(forward, "cpu", warmup=1, steps=3, repeats=2)
    assert prof.device_kind == "cpu" and prof.adapter_share is None  # no scopes given: not measured
    assert prof.notes == ["per operator call, least time over 6 steps"]  # CPU default: robust
    assert prof.top_category == "matmul"
    assert sum(row["share"] for row in prof.rows) == pytest.approx(1.0, abs=1e-6)
    assert sum(row["total_us"] for row in prof.rows) == pytest.approx(prof.total_us)
    assert [row["total_us"] for row in prof.rows] == sorted((row["total_us"] for row in prof.rows), reverse=True)
    calls = {row["name"]: row["calls"] for row in prof.rows}
    assert calls["aten::addmm"] == 4 * 3  # per step x steps
    assert calls["aten::relu"] == 4 * 3
    addmm = next(row for row in prof.rows if row["name"] == "aten::addmm")
    assert addmm["mean_us"] == pytest.approx(addmm["total_us"] / addmm["calls"])
    assert not any(row["name"].startswith(("ProfilerStep", "harness.")) for row in prof.rows)

    # The table is key_averages' self CPU time of the operators, wrappers left out.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
        for _ in range(2):
            with torch.profiler.record_function("wrapper"):
                forward()
    table = summarise(list(p.events()), cuda=False, measure_adapters=False)
    averages = {e.key: e for e in p.key_averages()}
    assert "wrapper" in averages and "wrapper" not in {row["name"] for row in table.rows}
    for row in table.rows:
        assert row["total_us"] == pytest.approx(averages[row["name"]].self_cpu_time_total, rel=1e-6, abs=1e-3)
        assert row["calls"] == averages[row["name"]].count


class SinAdapter(nn.Module):
    """A base Linear plus a branch whose ops (sin forward, cos in backward) appear nowhere else."""

    def __init__(self, width: int):
        super().__init__()
        self.base = nn.Linear(width, width)
        self.scale = nn.Parameter(torch.ones(width))
        self.base.requires_grad_(False)

    def forward(self, x):
        return self.base(x) + torch.sin(x) * self.scale


def test_attribution_forward_backward_and_excluded_base():
    torch.manual_seed(0)
    layer = SinAdapter(64)
    pre, head = nn.Linear(64, 64), nn.Linear(64, 64)  # trained before and after: gradients flow through the layer
    x = torch.randn(32, 64)

    def step():
        head(layer(pre(x))).sum().backward()

    prof = profile_steps(step, "cpu", warmup=1, steps=2, adapters=[AdapterScope(layer, (layer.base,))])
    assert (
        not layer._forward_hooks and not layer._forward_pre_hooks and not layer.base._forward_pre_hooks
    )  # hooks removed
    by = {}
    for row in prof.rows:
        by.setdefault(row["name"], set()).add(row["category"])
    assert by["aten::sin"] == {ADAPTER_OP}  # forward, inside the range
    assert by["aten::cos"] == {ADAPTER_OP}  # SinBackward0: backward, through the sequence number
    assert ADAPTER_OP not in by["aten::addmm"]  # the base layer and the head are the model's work
    assert ADAPTER_OP not in by["aten::mm"]  # the head's and pre's backward products
    assert by["aten::mul"] == {ADAPTER_OP}  # the branch's mul, and its backward (MulBackward0, SinBackward0)
    adapter_rows = sum(row["share"] for row in prof.rows if row["category"] == ADAPTER_OP)
    assert 0 < prof.adapter_share < 1 and prof.adapter_share == pytest.approx(adapter_rows)

    # Without the exclusion, the base product counts as adapter work too.
    whole = profile_steps(step, "cpu", warmup=0, steps=2, adapters=[layer])
    assert any(row["name"] == "aten::addmm" and row["category"] == ADAPTER_OP for row in whole.rows)


def test_handwritten_adapter_scope():
    from harness.methods.adapters import AdapterMethod, LowRankLinear, low_rank

    class Plain(LowRankLinear):  # the SoRA/DyLoRA layers without their gate or rank sampling
        def delta(self, x):
            return low_rank(x, self.lora_A, self.lora_B, self.scale)

    model = mlp(layers=2, width=128)
    model[0] = Plain(model[0], r=4, alpha=8)
    with torch.no_grad():
        model[0].lora_B.normal_()
    scopes = AdapterMethod().adapter_scopes(model)
    assert len(scopes) == 1 and scopes[0].module is model[0] and scopes[0].exclude == (model[0].base,)
    x = torch.randn(16, 128)

    def step():
        model(x).sum().backward()

    prof = profile_steps(step, "cpu", warmup=1, steps=2, adapters=scopes)
    assert 0 < prof.adapter_share < 1
    assert all(
        row["category"] != ADAPTER_OP for row in prof.rows if row["name"] == "aten::addmm"
    )  # base layers have bias
    assert any(row["category"] == ADAPTER_OP for row in prof.rows if row["name"] == "aten::mm")  # x @ A.T, h @ B.T


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    # Wide layers and a short batch (4 x 8 tokens): DoRA's per-forward weight norm over the
    # 128 x 128 weights then outweighs the LoRA branch clearly, not by a timing-noise margin.
    config = BertConfig(
        vocab_size=100,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=64,
    )
    model = BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, 100, (4, 8), generator=g), "labels": torch.randint(0, 2, (4,), generator=g)}
    return model, batch


def train_step(model, batch):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def robust_share(model, batch) -> float:
    # On CPU each operator call counts with its least time over the 4 x 2 steps: another
    # process taking the core only adds time, to whatever op was running, and a single hit
    # can swamp a 3 ms step.
    return profile_steps(
        train_step(model, batch), "cpu", warmup=2, steps=4, repeats=2, adapters=tuner_layer_scopes(model)
    ).adapter_share


def test_lora_and_dora_shares(tiny_bert):
    from peft import LoraConfig, get_peft_model

    base, batch = tiny_bert
    shares = {}
    for dora in (False, True):
        model = get_peft_model(
            copy.deepcopy(base), LoraConfig(r=8, target_modules=["query", "value"], use_dora=dora, task_type="SEQ_CLS")
        )
        model.train()
        scopes = tuner_layer_scopes(model)
        assert len(scopes) == 4  # query and value of 2 layers; the classifier's ModulesToSaveWrapper is not an adapter
        assert all(scope.exclude == (scope.module.base_layer,) for scope in scopes)
        shares[dora] = robust_share(model, batch)
    # DoRA adds a weight norm ||W + s B A|| per forward (and its products), on top of LoRA's work.
    assert 0 < shares[False] < shares[True] < 1, shares


def test_no_adapters_share_zero(tiny_bert):
    base, batch = tiny_bert
    model = copy.deepcopy(base).train()
    assert tuner_layer_scopes(model) == []
    assert profile_steps(train_step(model, batch), "cpu", warmup=1, steps=1, adapters=[]).adapter_share == 0.0


def test_ln_tuning_adds_no_adapter_time(tiny_bert):
    """LN tuning swaps each LayerNorm for a trained copy (held in a ModuleDict, whose
    members are hooked): no work on top of the model's own."""
    from peft import LNTuningConfig, get_peft_model

    base, batch = tiny_bert
    model = get_peft_model(
        copy.deepcopy(base), LNTuningConfig(target_modules=["LayerNorm"], task_type="SEQ_CLS")
    ).train()
    scopes = tuner_layer_scopes(model)
    assert len(scopes) == 5 and all(len(scope.exclude) == 2 for scope in scopes)  # embeddings + 2 per layer
    prof = profile_steps(train_step(model, batch), "cpu", warmup=1, steps=1, adapters=scopes)
    assert prof.adapter_share == 0.0
    assert any(row["category"] == "normalisation" for row in prof.rows)


def test_steps_that_differ_fall_back_to_sums():
    model, x = mlp(layers=2, width=64), torch.randn(8, 64)
    calls = {"n": 0}

    @torch.no_grad()
    def forward():  # odd steps run one more operator
        calls["n"] += 1
        y = model(x)
        if calls["n"] % 2:
            torch.tanh(y)

    prof = profile_steps(forward, "cpu", warmup=0, steps=2, repeats=2, adapters=[])
    assert any("different operators" in note for note in prof.notes)
    counts = {row["name"]: row["calls"] for row in prof.rows}
    assert counts["aten::addmm"] == 2 * 2 and counts["aten::tanh"] == 1
    assert sum(row["share"] for row in prof.rows) == pytest.approx(1.0)


def test_to_table():
    model, x = mlp(layers=2, width=64), torch.randn(8, 64)
    prof = profile_steps(lambda: model(x), "cpu", warmup=0, steps=1, adapters=[])
    assert prof.adapter_share == 0.0
    table = prof.to_table("abc123", "inference")
    assert table.column_names == [
        "job_hash",
        "phase",
        "rank",
        "name",
        "category",
        "calls",
        "total_us",
        "mean_us",
        "share",
    ]
    assert table.num_rows == len(prof.rows)
    assert set(table["job_hash"].to_pylist()) == {"abc123"} and set(table["phase"].to_pylist()) == {"inference"}
    assert table["rank"].to_pylist() == list(range(1, table.num_rows + 1))
    assert str(table.schema.field("calls").type) == "int64" and str(table.schema.field("share").type) == "double"
    with pytest.raises(ValueError):
        prof.to_table("abc123", "eval")


def test_cuda_events_linked_to_operators():
    """The CUDA path on made-up events: kernels timed on the device, attributed through the
    operator that launched them; GPU-side annotations are not kernels."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    def event(id, name, start, end, device=DeviceType.CPU, linked=0, annotation=False, parent=None):
        e = FunctionEvent(
            id=id,
            name=name,
            thread=1,
            start_us=start,
            end_us=end,
            device_type=device,
            is_user_annotation=annotation,
            linked_correlation_id=linked,
            use_device="cuda",
        )
        if parent is not None:
            e.set_cpu_parent(parent)
            parent.append_cpu_child(e)
        return e

    base_range = event(1, BASE_RANGE, 0, 10, annotation=True)
    addmm = event(2, "aten::addmm", 1, 9, parent=base_range)
    adapter_range = event(3, ADAPTER_RANGE, 10, 20, annotation=True)
    mm = event(4, "aten::mm", 11, 19, parent=adapter_range)
    events = [
        base_range,
        addmm,
        adapter_range,
        mm,
        event(5, "ampere_sgemm_128x64_tn", 100, 130, DeviceType.CUDA, linked=2),
        event(6, "ampere_sgemm_32x32_nn", 130, 140, DeviceType.CUDA, linked=4),
        event(7, "Memcpy HtoD (Pageable -> Device)", 140, 150, DeviceType.CUDA, linked=0),
        event(8, ADAPTER_RANGE, 130, 140, DeviceType.CUDA, annotation=True),  # gpu_user_annotation
    ]
    prof = summarise(events, cuda=True)
    assert prof.device_kind == "cuda" and prof.total_us == pytest.approx(50)
    assert {row["name"]: row["category"] for row in prof.rows} == {
        "ampere_sgemm_128x64_tn": "matmul",
        "ampere_sgemm_32x32_nn": ADAPTER_OP,
        "Memcpy HtoD (Pageable -> Device)": "memory copy",
    }
    assert prof.adapter_share == pytest.approx(10 / 50)
    assert prof.top_category == "matmul"
