"""ToMe: token merging for vision transformers.

Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman, Token Merging: Your ViT But Faster, ICLR 2023.
In every transformer layer, between the attention and the MLP, ToMe merges the r most similar
pairs of tokens, so the sequence shrinks by r tokens per layer and every later attention and MLP
really runs on fewer tokens (no training needed; fine-tuning afterwards recovers accuracy):

1. similarity: cosine similarity of the attention keys, averaged over heads (sec. 3, "Token
   similarity": the keys already summarise what each token contains);
2. bipartite soft matching (sec. 3, "Bipartite soft matching"): alternate tokens form sets A and
   B; each A token draws an edge to its most similar B token; the r most similar edges are
   merged, each A token folded into its B token. The class token (and DeiT's distillation token)
   is never merged;
3. merged tokens are averages weighted by their size s, the number of patches each stands for,
   and the sizes add up;
4. proportional attention (sec. 3, eq. 1): softmax(q k^T / sqrt(d) + log s), so a merged token
   draws as much attention as the patches it replaces.

No maintained PyPI package does ToMe for transformers' ViT (the authors' `tome` patches timm and
is installed from GitHub; `tomesd` is for Stable Diffusion), so the layer forward with merging
is written here. It calls the layer's own submodules (q_proj/k_proj/v_proj/o_proj, the MLP,
the layer norms), looked up at every call, so a LoRA step applied before or after
(`tome:r=8+lora`, `lora+tome`) wraps those projections and is used. It supports the ViT and
DeiT layers of transformers 5 (attention with q_proj/k_proj/v_proj/o_proj; 4.x named them
query/key/value and is refused with a one-line error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness.core.errors import HarnessError
from harness.methods.base import METHODS, Compression, MethodParams
from harness.methods.compress import CompressionMethod

NonNegative = Annotated[int, Field(ge=0)]
_LAYER_PARTS = ("layernorm_before", "layernorm_after", "mlp", "dropout", "attention")
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "num_attention_heads", "head_dim", "scaling")


# Merging --------------------------------------------------------------------------------


def bipartite_soft_matching(metric: torch.Tensor, r: int, protected: int = 1) -> tuple[torch.Tensor, ...]:
    """Which tokens merge: (kept A tokens, merged A tokens, their B destinations), as indices.

    `metric` is (batch, tokens, dim). A = even positions, B = odd positions; token 0 (the class
    token, in A) never leaves, nor, with protected=2, token 1 (DeiT's distillation token, first
    in B) receives. Kept A tokens stay in their original order, so the class token stays first.
    """
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        scores = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)  # (batch, |A|, |B|)
        scores[:, 0, :] = -math.inf
        if protected > 1:
            scores[:, :, 0] = -math.inf
        best, best_b = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)  # the most similar edges first
        merged = order[:, :r]
        kept = order[:, r:].sort(dim=-1).values
        return kept, merged, best_b.gather(-1, merged)


def merge_tokens(x: torch.Tensor, size: torch.Tensor | None, metric: torch.Tensor, r: int, protected: int = 1):
    """Merge r tokens of x (batch, tokens, dim) by bipartite soft matching on `metric`.

    Returns the merged tokens, each the size-weighted mean of the tokens it absorbed, and their
    sizes (batch, tokens - r, 1); `size` None means every token stands for one patch.
    """
    if size is None:
        size = torch.ones_like(x[..., :1])
    kept, merged, destination = bipartite_soft_matching(metric, r, protected)

    def fold(t: torch.Tensor) -> torch.Tensor:  # sums: A tokens into their B destinations
        a, b = t[:, ::2], t[:, 1::2]
        pick = lambda index: index[..., None].expand(-1, -1, t.shape[-1])  # noqa: E731
        b = b.scatter_add(1, pick(destination), a.gather(1, pick(merged)))
        a = a.gather(1, pick(kept))
        if protected > 1:  # keep [class, distillation, ...] at the front
            return torch.cat([a[:, :1], b[:, :1], a[:, 1:], b[:, 1:]], dim=1)
        return torch.cat([a, b], dim=1)

    total = fold(size)
    return fold(x * size) / total, total


def mergeable(tokens: int, protected: int) -> int:
    """At most half the unprotected tokens can merge in one layer (each needs a partner in B)."""
    return max(0, (tokens - protected) // 2)


# The merging layer ----------------------------------------------------------------------


@dataclass
class _MergeState:
    """Shared by the layers of one model during one forward: the token sizes so far."""

    protected: int
    proportional_attention: bool
    size: torch.Tensor | None = None


@dataclass
class _LayerPlan:
    r: int
    first: bool
    last: bool
    state: _MergeState


def _tome_forward(
    self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
) -> torch.Tensor:
    """A ViT layer (pre-norm attention, then MLP, each with dropout and a residual) that merges
    `r` tokens between the two, with proportional attention over the merged tokens' sizes."""
    plan: _LayerPlan = self._tome_plan
    state = plan.state
    if plan.first:
        state.size = None  # a new forward: every token is one patch again
    if attention_mask is not None:
        raise HarnessError("method 'tome': token merging does not support an attention mask")
    attention = self.attention
    x = hidden_states
    y = self.layernorm_before(x)
    batch, tokens, _ = y.shape
    heads = lambda t: t.view(batch, tokens, -1, attention.head_dim).transpose(1, 2)  # noqa: E731
    q, k, v = heads(attention.q_proj(y)), heads(attention.k_proj(y)), heads(attention.v_proj(y))
    bias = None
    if state.proportional_attention and state.size is not None:
        bias = state.size.log().to(q.dtype).view(batch, 1, 1, tokens)  # + log s on every key
    dropout = attention.attention_dropout if self.training else 0.0
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=attention.scaling)
    x = x + self.dropout(attention.o_proj(context.transpose(1, 2).reshape(batch, tokens, -1)))
    if plan.r:
        if plan.r > mergeable(tokens, state.protected):
            raise HarnessError(
                f"method 'tome': r={plan.r} is too many for a layer that sees {tokens} tokens "
                f"(at most {mergeable(tokens, state.protected)}); lower r"
            )
        x, state.size = merge_tokens(x, state.size, k.mean(dim=1), plan.r, state.protected)
    x = x + self.dropout(self.mlp(self.layernorm_after(x)))
    if plan.last:
        state.size = None  # hold no tensor of this forward after it
    return x


_MERGING_CLASSES: dict[type, type] = {}


def _merging_class(base: type) -> type:
    """A subclass of the layer's own class with the merging forward: isinstance checks, the
    parameters and their names stay the same."""
    if base not in _MERGING_CLASSES:
        _MERGING_CLASSES[base] = type(
            f"ToMe{base.__name__}", (base,), {"forward": _tome_forward, "__module__": __name__}
        )
    return _MERGING_CLASSES[base]


def _is_vit_layer(module: nn.Module) -> bool:
    attention = getattr(module, "attention", None)
    return all(hasattr(module, p) for p in _LAYER_PARTS) and all(hasattr(attention, p) for p in _ATTENTION_PARTS)


def find_vit(model: nn.Module) -> tuple[nn.Module, nn.ModuleList] | None:
    """The (embeddings, layers) of the model's ViT backbone, wherever it is wrapped; None if it has none."""
    for module in model.modules():
        embeddings, layers = getattr(module, "embeddings", None), getattr(module, "layers", None)
        patches = getattr(getattr(embeddings, "patch_embeddings", None), "num_patches", None)
        if patches and isinstance(layers, nn.ModuleList) and len(layers) and all(map(_is_vit_layer, layers)):
            return embeddings, layers
        legacy = getattr(getattr(module, "encoder", None), "layer", None)
        if (
            patches
            and isinstance(legacy, nn.ModuleList)
            and hasattr(getattr(legacy[0], "attention", None), "attention")
        ):
            raise HarnessError(
                "method 'tome': this ViT has transformers 4.x layers (attention.attention.query); token merging "
                "supports the transformers>=5 layout (attention.q_proj): upgrade transformers"
            )
    return None


# The method ------------------------------------------------------------------------------


class ToMeParams(MethodParams):
    r: NonNegative | list[NonNegative] = Field(
        8, description="tokens merged in each layer: one number for every layer, or a list with one per layer"
    )
    proportional_attention: bool = Field(True, description="add log(token size) to the attention logits (paper, eq. 1)")


@METHODS.register("tome")
class ToMe(CompressionMethod):
    """ToMe: merge r similar tokens in every ViT layer (bipartite matching on keys, size-weighted, proportional attention)."""

    category = "token merging"
    paper = "Bolya et al., Token Merging: Your ViT But Faster, ICLR 2023"
    Params = ToMeParams
    default_lr = 0.0  # merging alone trains nothing; a later adaptation step brings its own rate
    default_lr_source = "none: token merging trains nothing; a later adaptation step brings its own rate"
    # The layers share one merge state, reset at the first and last layer; recomputing a layer
    # in the backward pass replays it with another state and saves other tensors.
    supports_gradient_checkpointing = False

    def targets(self, model, ctx=None) -> tuple:
        """The ViT's embeddings and layers, r per layer, and the protected tokens; bad input raises."""
        found = find_vit(model)
        if found is None:
            raise HarnessError(
                f"method 'tome': token merging needs a vision transformer (transformers ViT/DeiT layers); "
                f"the model ({type(model).__name__}) has none"
            )
        embeddings, layers = found
        schedule = self.schedule(len(layers))
        protected = 1 + (getattr(embeddings, "distillation_token", None) is not None)
        tokens = self.token_counts(embeddings.patch_embeddings.num_patches + protected, protected, schedule)
        return embeddings, layers, schedule, protected, tokens

    def preflight(self, model, ctx):
        self.targets(model, ctx)

    def compress(self, model, plan, ctx):
        embeddings, layers, schedule, protected, self.tokens = plan
        state = _MergeState(protected, self.params.proportional_attention)
        for i, (layer, r) in enumerate(zip(layers, schedule)):
            if type(layer) not in _MERGING_CLASSES.values():
                layer.__class__ = _merging_class(type(layer))
            layer._tome_plan = _LayerPlan(r, first=i == 0, last=i == len(layers) - 1, state=state)

    def schedule(self, n_layers: int) -> list[int]:
        r = self.params.r
        if isinstance(r, int):
            return [r] * n_layers
        if len(r) != n_layers:
            raise HarnessError(
                f"method 'tome': r lists {len(r)} values but the model has {n_layers} layers; give one per layer"
            )
        return list(r)

    @staticmethod
    def token_counts(tokens: int, protected: int, schedule: list[int]) -> list[int]:
        """Tokens entering each layer, then leaving the last; an r above what a layer can merge is bad input."""
        counts = [tokens]
        for i, r in enumerate(schedule):
            if r > mergeable(counts[-1], protected):
                raise HarnessError(
                    f"method 'tome': r={r} is too large at layer {i}, which sees {counts[-1]} tokens and can merge "
                    f"at most {mergeable(counts[-1], protected)}; lower r (or give a per-layer list)"
                )
            counts.append(counts[-1] - r)
        return counts

    def compression(self, model):
        # The weights are untouched (stored size = model size); what shrinks is the sequence, and
        # the measured latency is the merged model's own: a real reduction, not a simulation.
        return Compression(weight_bits=None, kernel="real", compressed_bytes=None)
