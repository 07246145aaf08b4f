"""Reported formats are the formats the final weights have, and sizes mean what they say:
the grid check behind every quantizer's bytes, the bitsandbytes 4-bit path counted like the
simulated one, checkpoint bytes (persistent state only) against in-memory bytes, and stacked
compressions priced by a format the final weights really are in."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from harness.measure.size import count_parameters, model_bytes, stored_parameter_count, weight_sparsity
from harness.methods.base import Compression, MethodContext
from harness.methods.compress import compressible_layers
from harness.methods.nf4 import BLOCK_SIZE, nf4_bits, quantize_nf4
from harness.methods.pipeline import Pipeline
from harness.methods.quantization import fake_quantize


def small_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(fc=nn.Linear(64, 32), act=nn.ReLU(), head=nn.Linear(32, 4)))


CONTEXT = MethodContext(task_type="image_cls", head_modules=("head",), total_steps=3, lr=1e-2)


# The grid check --------------------------------------------------------------------------


def test_distinct_values_are_counted_per_group_of_each_row():
    from harness.methods.quantization import most_distinct_per_group, on_grid

    values = torch.tensor([[1.0, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0], [0.0, 1.0, 0.0, 1.0, 7.0, 8.0, 9.0]])
    # groups of 4 columns: [1,1,2,3] -> 3, [5,5,5] -> 1, [0,1,0,1] -> 2, [7,8,9] -> 3
    assert most_distinct_per_group(values, 4) == 3
    assert most_distinct_per_group(values, 2) == 2  # [2,3], [0,1], [7,8]; the short last groups [5] and [9]
    assert most_distinct_per_group(values, 0) == 5  # a whole row as one group: 0, 1, 7, 8, 9
    assert on_grid(values, 2, 4) and not on_grid(values, 2, 0)


@pytest.mark.parametrize("bits, group_size", [(4, 16), (4, 0), (8, 32)])
def test_quantized_weights_are_on_their_grid_and_trained_ones_are_not(bits, group_size):
    from harness.methods.quantization import on_grid

    torch.manual_seed(0)
    weight = torch.randn(8, 96)
    quantized = fake_quantize(weight, bits, group_size)
    assert on_grid(quantized, bits, group_size)
    size = group_size or 96
    assert not on_grid(quantized + 1e-3 * torch.randn_like(quantized), bits, group_size) or size <= 2**bits


@pytest.mark.parametrize("spec", ["int4:group_size=16", "int8:group_size=16", "nf4"])
def test_weights_moved_off_the_grid_report_the_dense_size_and_no_kernel(spec):
    """A quantizer's bits and bytes hold only while its layers are on the grid; after an update
    (what training or a merged adapter does) the row gets the dense stored size instead."""
    pipeline = Pipeline.parse(spec)
    model = pipeline.apply(small_mlp(), CONTEXT)
    on = pipeline.compression(model)
    assert on.weight_bits is not None and on.compressed_bytes < model_bytes(model) / 2
    with torch.no_grad():
        model.fc.weight.add_(1e-3 * torch.randn_like(model.fc.weight))
    off = pipeline.compression(model)
    assert off == Compression(weight_bits=None, kernel=None, compressed_bytes=model_bytes(model))


# The bitsandbytes 4-bit path counted like the simulated one ----------------------------------


def _row_figures(pipeline, model) -> tuple[int, float, float]:
    """total_params, bits_per_parameter and weight_sparsity as the job computes them."""
    compression = pipeline.compression(model)
    return (
        count_parameters(model)[1],
        8 * compression.compressed_bytes / stored_parameter_count(model),
        weight_sparsity(model),
    )


def test_the_bitsandbytes_path_reports_the_simulated_paths_count_bits_and_sparsity(monkeypatch):
    pytest.importorskip("bitsandbytes")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes as bnb

    simulated = Pipeline.parse("nf4")
    simulated_model = simulated.apply(small_mlp(), CONTEXT)
    monkeypatch.setattr("harness.methods.nf4.runs_bitsandbytes_kernel", lambda layer: isinstance(layer, nn.Linear))
    real = Pipeline.parse("nf4")
    real_model = real.apply(small_mlp(), CONTEXT)
    assert isinstance(real_model.fc, bnb.nn.Linear4bit) and real_model.fc.weight.dtype == torch.uint8

    # The true counts: 64*32 + 32 in fc, 32*4 + 4 in the head.
    total = 64 * 32 + 32 + 32 * 4 + 4
    # fc's NF4 codes (double quantization) plus every other tensor in float32.
    stored_bytes = -(-nf4_bits(64 * 32) // 8) + 4 * (32 + 32 * 4 + 4)
    # Sparsity: fc's weights at NF4's zero level (index 7), the head's exact zeros (none).
    index, _ = quantize_nf4(small_mlp().fc.weight)
    zeros = int((index.reshape(-1)[: 64 * 32] == 7).sum())
    expected = (total, 8 * stored_bytes / total, zeros / (64 * 32 + 32 * 4))
    assert zeros > 0
    assert _row_figures(real, real_model) == pytest.approx(expected, rel=1e-12)
    assert _row_figures(simulated, simulated_model) == pytest.approx(expected, rel=1e-12)


# Checkpoint bytes and in-memory bytes -------------------------------------------------------


class WithScratch(nn.Module):
    """A linear layer with a regenerable (non-persistent) buffer, as NOLA keeps its bases."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.register_buffer("scratch", torch.zeros(100), persistent=False)


def test_model_bytes_are_the_state_dict_and_memory_bytes_add_non_persistent_buffers():
    from harness.measure.size import model_memory_bytes

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    params = 4 * 3 * 9 + 4 + 4 + 4  # conv weight and bias, batch-norm weight and bias
    stats = 4 + 4  # running mean and variance, float32
    assert model_bytes(net) == 4 * (params + stats) + 8  # + num_batches_tracked, int64: persistent
    assert model_memory_bytes(net) == model_bytes(net)
    scratch = WithScratch()
    assert model_bytes(scratch) == 4 * (8 * 4 + 4)
    assert model_memory_bytes(scratch) == 4 * (8 * 4 + 4 + 100)
    assert model_bytes(scratch) == sum(t.numel() * t.element_size() for t in scratch.state_dict().values())


def test_tied_weights_are_stored_once():
    from harness.measure.size import model_memory_bytes

    net = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 10, bias=False))
    net[1].weight = net[0].weight
    assert model_bytes(net) == model_memory_bytes(net) == 4 * 60


def test_a_dynamically_quantized_linear_is_stored_as_its_packed_int8_weight():
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = quantize_dynamic(small_mlp(), {"fc"}, dtype=torch.qint8)
    # fc: int8 weight, float32 bias, float32 scale, int64 zero point; the head in float32
    assert model_bytes(quantized) == 64 * 32 + 4 * 32 + 4 + 8 + 4 * (32 * 4 + 4)


def test_nola_stores_its_coefficients_not_its_regenerable_bases(model):
    """NOLA's bases are drawn again from the seed: a checkpoint holds the base model plus two
    coefficient vectors per adapted layer, about what LoRA adds at the same targets."""
    import copy

    from harness.measure.size import model_memory_bytes
    from harness.methods.nola import NolaLinear

    ctx = MethodContext(task_type="seq_cls", head_modules=("classifier",), seed=0)
    base = model_bytes(model)
    lora = Pipeline.parse("lora:r=8,target_modules=[query,value]").apply(copy.deepcopy(model), ctx)
    nola = Pipeline.parse("nola:r=8,num_basis_a=256,num_basis_b=256,target_modules=[query,value]").apply(
        copy.deepcopy(model), ctx
    )
    layers = [m for m in nola.modules() if isinstance(m, NolaLinear)]
    assert len(layers) == 4
    assert model_bytes(nola) == base + 4 * 4 * (256 + 256)  # float32 coefficients only
    bases = sum(m.basis_a.numel() + m.basis_b.numel() for m in layers)
    # in memory the bases are there, as are BERT's own non-persistent buffers (position ids)
    assert model_memory_bytes(nola) - model_bytes(nola) == 4 * bases + model_memory_bytes(model) - base
    # LoRA r=8 on the same four 32x32 layers adds 8 * (32 + 32) = 512 weights per layer, as many
    # as these coefficients: the two stored sizes agree to a fraction of a percent.
    # (+ peft's trainable copy of the 32x2 classifier, beside the original)
    assert model_bytes(lora) - base == 4 * 4 * 8 * (32 + 32) + 4 * (32 * 2 + 2)
    assert abs(model_bytes(nola) - model_bytes(lora)) / model_bytes(lora) < 0.01


# Stacked compressions ----------------------------------------------------------------------


def test_stacked_compressions_report_the_smallest_format_the_final_weights_are_in():
    """int8 then Wanda: the final weights are on the int8 grid and half zero. Both formats hold;
    the row reports the smaller (int8 codes), not the last step's float bitmap format."""
    pipeline = Pipeline.parse("int8:group_size=16+magnitude:sparsity=0.5")
    model = pipeline.apply(small_mlp(), CONTEXT)
    layers = compressible_layers(model, ("head",))
    int8, pruning = (m.compression(model) for m in pipeline.methods)
    rest = 4 * (32 + 32 * 4 + 4)
    assert int8.compressed_bytes == rest + (64 * 32 * 8 + 32 * 4 * (16 + 8)) // 8
    nonzero = int((model.fc.weight != 0).sum())
    assert pruning.compressed_bytes == rest + 4 * nonzero + 64 * 32 // 8
    assert int8.compressed_bytes < pruning.compressed_bytes and len(layers) == 1
    combined = pipeline.compression(model)
    assert combined == Compression(
        weight_bits=int8.weight_bits, kernel="simulated", compressed_bytes=int8.compressed_bytes
    )

    sparse = Pipeline.parse("int8:group_size=16+magnitude:sparsity=0.9")
    sparse_model = sparse.apply(small_mlp(), CONTEXT)
    parts = [m.compression(sparse_model) for m in sparse.methods]
    assert parts[1].compressed_bytes < parts[0].compressed_bytes  # 10% of float32 values plus a bitmap win
    assert sparse.compression(sparse_model).compressed_bytes == parts[1].compressed_bytes
    assert sparse.compression(sparse_model).weight_bits is None  # the bitmap format has no bit width


def test_combine_prices_by_a_real_format_whatever_the_order():
    quantized = Compression(weight_bits=8.5, kernel="simulated", compressed_bytes=1000)
    pruned = Compression(weight_bits=None, kernel="simulated", compressed_bytes=2000)
    assert Compression.combine([quantized, pruned]) == quantized
    assert Compression.combine([pruned, quantized]) == quantized
    token_merging = Compression(kernel="real")
    assert Compression.combine([token_merging]) == token_merging
    off_grid = Compression(weight_bits=None, kernel=None, compressed_bytes=5000)
    assert Compression.combine([off_grid, token_merging]) == Compression(None, "real", 5000)
    assert math.isclose(Compression.combine([quantized, token_merging]).weight_bits, 8.5)


def test_nf4_blocks_are_64_consecutive_weights_of_the_flattened_tensor():
    from harness.methods.quantization import most_distinct_per_group

    pipeline = Pipeline.parse("nf4")
    model = pipeline.apply(small_mlp(), CONTEXT)
    flat = model.fc.weight.detach().reshape(1, -1)
    assert most_distinct_per_group(flat, BLOCK_SIZE) <= 16
    assert most_distinct_per_group(flat, 2 * BLOCK_SIZE) > 16  # two blocks' scales: more values
