"""GaLore (Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
Projection", ICML 2024) through the authors' package `galore-torch` (GaLoreAdamW).

Full-parameter training: the gradient G (m x n) of each targeted weight matrix is
projected onto a rank-r subspace taken from its SVD, recomputed every `update_proj_gap`
steps; Adam's moments live in that subspace (m x r when m >= n, else r x n, for the
default proj_type "std") and the normalised update is projected back and scaled by
`scale`. Targets default to the linear layers of the attention and MLP blocks, i.e. every
nn.Linear inside the transformer layers (for BERT: query, key, value, attention.output.dense,
intermediate.dense, output.dense, the authors' run_glue.py list). Every other parameter
(embeddings, biases, norms, pooler, head) is plain AdamW in the same optimizer.

Defaults are the authors' fine-tuning recipe, the README's "Fine-Tuning RoBERTa on GLUE"
command (github.com/jiaweizzhao/GaLore): rank 4 (`--lora_r 4`), scale 4 (`--galore_scale 4`),
update_proj_gap 500, lr 3e-5 (batch 16, 30 epochs there; those are run settings here). The
harness only fine-tunes, so the paper's pre-training values (scale 0.25, gap 200, rank 128+)
are not used on any suite; the authors publish no other fine-tuning recipe, so causal-LM and
image suites get the same one. As in the authors' run_glue.py, every parameter that is not
projected trains in the same GaLoreAdamW at the same learning rate (there: one group, no
weight decay, since the script passes none); here the run's weight decay applies, with
biases and norms exempt as in every harness method (GLUE's 0.01 moves a weight by 3e-7 per
step at lr 3e-5). galore-torch 1.0 runs on torch 2.13 CPU as is; see `_GaLoreAdamW` for the
one thing changed.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from harness.core.errors import HarnessError
from harness.methods.base import METHODS, Method
from harness.methods.lisa import transformer_layers
from harness.methods.optim import NO_DECAY
from harness.methods.peft_family import TargetedParams, check_rank, check_target_modules


class GaLoreParams(TargetedParams):
    # target_modules default: every linear layer in the transformer blocks
    # The authors' GLUE fine-tuning command (GaLore README, "Fine-Tuning RoBERTa on GLUE").
    rank: int = Field(4, gt=0, description="rank of the gradient projection")
    update_proj_gap: int = Field(
        500, gt=0, description="steps between recomputing the projection (SVD of the gradient)"
    )
    scale: float = Field(4.0, gt=0, description="scale of the projected-back update")
    proj_type: Literal["std", "reverse_std", "left", "right", "full"] = "std"


def _galore_adamw():
    from galore_torch import GaLoreAdamW

    class _GaLoreAdamW(GaLoreAdamW):
        """GaLoreAdamW whose projection matrices own their memory.

        galore-torch keeps the projection as a slice of the full SVD factor (U[:, :r] or
        Vh[:r]), which keeps the whole min(m,n)-wide factor alive: real memory would exceed
        the r-wide matrix the paper counts (and optimizer_state_bytes reports). Copy it.
        """

        @torch.no_grad()
        def step(self, closure=None):
            loss = super().step(closure)
            for state in self.state.values():
                proj = state.get("projector")
                if proj is None:
                    continue
                mats = proj.ortho_matrix if isinstance(proj.ortho_matrix, list) else [proj.ortho_matrix]
                mats = [
                    m.clone(memory_format=torch.contiguous_format)
                    if m.untyped_storage().nbytes() > m.numel() * m.element_size()
                    else m
                    for m in mats
                ]
                proj.ortho_matrix = mats if isinstance(proj.ortho_matrix, list) else mats[0]
            return loss

    return _GaLoreAdamW


@METHODS.register("galore")
class GaLore(Method):
    """GaLore: full-parameter training with Adam state in a low-rank projection of each weight's gradient (galore-torch)."""

    category = "full, low-rank optimizer state"
    trains_base_weights = True
    paper = "Zhao et al., GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection, ICML 2024"
    Params = GaLoreParams
    # The authors' GLUE fine-tuning command: --learning_rate 3e-5, for projected and other
    # parameters alike (an effective 1.2e-4 on the projected weights at scale 4).
    default_lr = 3e-5
    default_lr_source = "Zhao et al. 2024 (GaLore), official README GLUE fine-tuning command: --learning_rate 3e-5"
    version = 2  # fine-tuning recipe instead of pre-training values

    def apply(self, model, ctx):
        p = self.params
        check_target_modules(model, p.target_modules, self.name)
        prefix, _ = transformer_layers(model)
        targets = {
            name: m
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)
            and (
                any(name == t or name.endswith("." + t) for t in p.target_modules)
                if p.target_modules
                else name.startswith(prefix + ".")
            )
        }
        if not targets:
            raise HarnessError("method 'galore': no linear layer matches the target modules")
        check_rank(list(targets.items()), p.rank, self.name)
        self.projected = {id(m.weight) for m in targets.values()}
        self.names = {id(param): name for name, param in model.named_parameters()}
        for param in model.parameters():
            param.requires_grad = param.is_floating_point()  # full-parameter training
        return model

    def optimizer(self, params, ctx):

        p = self.params
        projected = [q for q in params if id(q) in self.projected]
        rest = [q for q in params if id(q) not in self.projected]
        no_decay = [q for q in rest if self.names.get(id(q), "").endswith(NO_DECAY)]
        decay = [q for q in rest if not self.names.get(id(q), "").endswith(NO_DECAY)]
        groups = [
            {
                "params": projected,
                "weight_decay": ctx.weight_decay,
                "rank": p.rank,
                "update_proj_gap": p.update_proj_gap,
                "scale": p.scale,
                "proj_type": p.proj_type,
            },
            {"params": decay, "weight_decay": ctx.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return _galore_adamw()([g for g in groups if g["params"]], lr=ctx.lr, no_deprecation_warning=True)
