"""Linear probing (Alain and Bengio, Understanding Intermediate Layers Using Linear Classifier
Probes, 2016): train only the task head on the frozen model.

The baseline that says what the frozen features already hold; after a compression step
(`wanda:sparsity=0.5+linear-probe`) it measures compression alone, with just the head fitted,
against which a recovering adapter (`wanda:sparsity=0.5+lora`) is compared.
"""

from harness.core.errors import HarnessError
from harness.methods.base import METHODS, Method, freeze_all_but


@METHODS.register("linear-probe")
class LinearProbe(Method):
    """Linear probe: train only the task head on the frozen model."""

    category = "selective"
    paper = "Alain and Bengio, Understanding Intermediate Layers Using Linear Classifier Probes, 2016"
    default_lr = 1e-3
    default_lr_source = (
        "Kingma and Ba 2015 (Adam), Algorithm 1: default step size 0.001 (the probe has no rate of its own)"
    )

    def apply(self, model, ctx):
        if not ctx.head_modules:
            raise HarnessError(
                f"method 'linear-probe' trains a fresh task head, and {type(model).__name__} has none here"
            )
        freeze_all_but(model, keep=ctx.head_modules)
        return model
