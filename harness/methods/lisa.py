"""LISA (Pan et al., "LISA: Layerwise Importance Sampling for Memory-Efficient Large
Language Model Fine-Tuning", NeurIPS 2024): full-parameter training of a few layers at
a time.

Everything outside the transformer's layer list (embeddings, pooler or final norm, task
head) always trains; of the layers, `n_layers` (the paper's gamma) chosen uniformly at
random train, and a new set is drawn every `interval` steps (the paper's sampling period
K). Both defaults are the authors' reference script, LMFlow `scripts/run_finetune_with_lisa.sh`
(github.com/OptimalScale/LMFlow): `lisa_activated_layers=1`, `lisa_interval_steps=20`.

The training loop builds its optimizer once, from the parameters trainable at the start,
so LISA brings its own AdamW over every candidate parameter and switches layers by
toggling `requires_grad`: a frozen layer gets no gradient, and AdamW skips parameters
whose gradient is None. When a layer is switched off its AdamW moments are dropped, so
optimizer state covers only the active layers, as in the paper's memory accounting (a
layer sampled again restarts with fresh moments, like the paper's per-period AdamW run).
"""

from __future__ import annotations

import random

import torch
from pydantic import Field

from harness.core.errors import HarnessError
from harness.methods.base import METHODS, Method, MethodParams
from harness.methods.full import FullFineTuning
from harness.methods.optim import default_optimizer


def transformer_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The model's block list: the first ModuleList as long as config.num_hidden_layers
    (bert.encoder.layer, model.layers, ...)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and n is not None and len(module) == n:
            return name, module
    raise HarnessError(f"cannot find the transformer layer list (a ModuleList of config.num_hidden_layers={n} blocks)")


class LisaParams(MethodParams):
    # LMFlow scripts/run_finetune_with_lisa.sh: lisa_activated_layers=1, lisa_interval_steps=20
    n_layers: int = Field(1, description="layers trained at a time (the paper's gamma)")
    interval: int = Field(20, gt=0, description="steps between resampling the trained layers (the paper's K)")


@METHODS.register("lisa")
class LISA(Method):
    """LISA: embeddings and head always train; a few randomly sampled layers at a time, resampled every K steps."""

    category = "selective"
    trains_base_weights = True  # whole layers of the model's own weights
    paper = "Pan et al., LISA: Layerwise Importance Sampling for Memory-Efficient Large Language Model Fine-Tuning, NeurIPS 2024"
    Params = LisaParams
    # LISA updates whole layers of the model's own weights, as full fine-tuning does: it takes
    # full fine-tuning's rate, so that the two differ only in which layers train.
    default_lr = FullFineTuning.default_lr
    default_lr_source = f"inherits full fine-tuning's rate: {FullFineTuning.default_lr_source}"
    version = 2  # gamma 1, as the authors' script

    def apply(self, model, ctx):
        _, layers = transformer_layers(model)
        n = self.params.n_layers
        if not 1 <= n <= len(layers):
            raise HarnessError(f"method 'lisa': n_layers={n} must be between 1 and the model's {len(layers)} layers")
        self.layer_params = [[p for p in layer.parameters() if p.is_floating_point()] for layer in layers]
        in_layers = {id(p) for params in self.layer_params for p in params}
        # Every floating-point parameter is a candidate; the names choose weight decay.
        self.named = [(name, p) for name, p in model.named_parameters() if p.is_floating_point()]
        for name, p in self.named:
            if id(p) not in in_layers:
                p.requires_grad = True  # embeddings, pooler/final norm, head: always on
        self.rng = random.Random(ctx.seed)  # own stream: sampling is reproducible from the seed alone
        self._optimizer: torch.optim.Optimizer | None = None
        self.active: tuple[int, ...] = ()
        self.ever_active: set[int] = set()
        self._resample()
        return model

    def _resample(self) -> None:
        self.active = tuple(sorted(self.rng.sample(range(len(self.layer_params)), self.params.n_layers)))
        self.ever_active.update(self.active)
        for i, params in enumerate(self.layer_params):
            on = i in self.active
            for p in params:
                p.requires_grad = on
                if not on and self._optimizer is not None:
                    self._optimizer.state.pop(p, None)  # drop the moments of a layer switched off

    def optimizer(self, params, ctx):

        # Over every candidate, frozen ones included: the loop clips over the optimizer's own
        # parameters, so layers sampled later are clipped too (their grad is None while frozen).
        self._optimizer = default_optimizer(self.named, ctx.lr, ctx.weight_decay)
        return self._optimizer

    def on_step(self, step, model):
        # Called after step `step` (0-based): the next step, step + 1, starts a new period
        # when it is a multiple of K. The gradients still held by layers switched off here
        # are cleared by the loop's zero_grad, since every candidate is in the optimizer.
        if (step + 1) % self.params.interval == 0:
            self._resample()

    def finalize(self, model):
        # After training, mark as trainable what training changed: every layer ever sampled
        # plus the always-on parameters, so adapter_bytes counts the weights to ship.
        for i, params in enumerate(self.layer_params):
            for p in params:
                p.requires_grad = i in self.ever_active
        return model
