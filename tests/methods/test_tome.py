"""ToMe token merging: the merging math on a hand-made example, identity at r=0, r tokens fewer
per layer, bad r, LoRA on top, and a one-line error on a model without ViT layers."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.cli import main
from harness.core.errors import HarnessError
from harness.methods.base import MethodContext
from harness.methods.pipeline import Pipeline
from harness.methods.tome import merge_tokens
from tests.support import run_cifar

# 32x32 images in 8x8 patches: 16 patches + the class token = 17 tokens.
TINY_VIT = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=10,
)


@pytest.fixture()
def vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(**TINY_VIT)).eval()


@pytest.fixture()
def pixels():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _apply(spec: str, model):
    pipeline = Pipeline.parse(spec)
    return pipeline, pipeline.apply(model, MethodContext(task_type="image_cls", head_modules=("classifier",)))


def _layer_token_counts(model, layers, pixels) -> list[int]:
    counts: list[int] = []
    hooks = [layer.register_forward_hook(lambda mod, args, out: counts.append(out.shape[1])) for layer in layers]
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    for h in hooks:
        h.remove()
    assert torch.isfinite(logits).all()
    return counts


def test_two_tokens_with_identical_keys_merge_into_their_size_weighted_mean():
    # Tokens 0..3; A = {0 (class), 2}, B = {1, 3}. Token 2's key equals token 3's, so with r=1
    # token 2 folds into token 3; token 1's key equals the class token's, which must still stay.
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    x = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [10.0, 0.0], [2.0, 4.0]]])
    size = torch.tensor([[[1.0], [1.0], [1.0], [3.0]]])
    merged, new_size = merge_tokens(x, size, metric, r=1)
    # [kept A tokens (class first), then B tokens]: class, token 1, (1 * token 2 + 3 * token 3) / 4
    expected = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [(10.0 + 3 * 2.0) / 4, (0.0 + 3 * 4.0) / 4]]])
    assert torch.allclose(merged, expected)
    assert new_size.flatten().tolist() == [1.0, 1.0, 4.0]
    # Without sizes every token counts once: the plain mean.
    merged, new_size = merge_tokens(x, None, metric, r=1)
    assert torch.allclose(merged[0, 2], torch.tensor([6.0, 2.0])) and new_size.flatten().tolist() == [1.0, 1.0, 2.0]


def test_class_token_is_never_merged_and_sizes_add_up():
    torch.manual_seed(0)
    x, metric = torch.randn(4, 17, 8), torch.randn(4, 17, 8)
    metric[:, 0] = metric[:, 1]  # the class token looks exactly like a patch: still kept, alone
    merged, size = merge_tokens(x, None, metric, r=8)  # the most one layer of 17 tokens can merge
    assert merged.shape == (4, 9, 8) and torch.equal(merged[:, 0], x[:, 0])
    assert size[:, 0].flatten().tolist() == [1.0] * 4 and size.sum(dim=1).flatten().tolist() == [17.0] * 4
    # DeiT: the distillation token (position 1, first of B) also stays, second, and absorbs nothing.
    metric[:, 2] = metric[:, 1]
    merged, size = merge_tokens(x, None, metric, r=7, protected=2)
    assert torch.equal(merged[:, :2], x[:, :2]) and size[:, :2].flatten().tolist() == [1.0] * 8


def test_r0_is_the_unpatched_model(vit, pixels):
    with torch.no_grad():
        before = vit(pixel_values=pixels).logits
    _, patched = _apply("tome:r=0", copy.deepcopy(vit))
    with torch.no_grad():
        after = patched(pixel_values=pixels).logits
    assert torch.allclose(before, after, atol=1e-6)
    assert type(patched.vit.layers[0]).__name__ == "ToMeViTLayer"


def test_each_layer_runs_r_tokens_fewer(vit, pixels):
    pipeline, model = _apply("tome:r=3", vit)
    assert _layer_token_counts(model, model.vit.layers, pixels) == [14, 11]
    assert pipeline.methods[0].tokens == [17, 14, 11]
    assert not any(p.requires_grad for p in model.parameters())  # merging alone trains nothing
    assert pipeline.compression(model).kernel == "real"

    _, model = _apply("tome:r=[1,5],proportional_attention=false", copy.deepcopy(vit))
    assert _layer_token_counts(model, model.vit.layers, pixels) == [16, 11]


def test_r_too_large_or_a_list_of_the_wrong_length_is_bad_input(vit):
    with pytest.raises(HarnessError, match=r"r=8 is too large at layer 1, which sees 9 tokens and can merge at most 4"):
        _apply("tome:r=8", copy.deepcopy(vit))  # layer 0: 17 -> 9 tokens; layer 1 can merge only 4
    with pytest.raises(HarnessError, match="r lists 3 values but the model has 2 layers"):
        _apply("tome:r=[1,2,3]", copy.deepcopy(vit))
    with pytest.raises(
        HarnessError, match=r"^method 'tome': r\.constrained-int=-1: Input should be greater than or equal to 0"
    ):
        Pipeline.parse("tome:r=-1")


def test_lora_after_merging_wraps_the_projections_the_merging_layer_calls(vit, pixels):
    pipeline, model = _apply("tome:r=2+lora:r=4", vit)
    attention = model.base_model.model.vit.layers[0].attention
    assert hasattr(attention.q_proj, "lora_A") and hasattr(attention.v_proj, "lora_A")
    assert _layer_token_counts(model, model.base_model.model.vit.layers, pixels) == [15, 13]
    model.train()
    loss = model(pixel_values=pixels, labels=torch.tensor([0, 1, 2])).loss
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert any("lora_B" in n and "q_proj" in n for n in trained) and any("classifier" in n for n in trained)


def test_tome_on_resnet20_is_one_line_bad_input(tiny_ckpt, cifar_mirror, tmp_path, capsys):  # noqa: F811
    assert run_cifar(tiny_ckpt, cifar_mirror, tmp_path / "r", "--method", "tome", "--max-steps", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "token merging needs a vision transformer" in err
    assert not (tmp_path / "r").exists()
    assert main(["list", "methods"]) == 0 and "tome" in capsys.readouterr().out
