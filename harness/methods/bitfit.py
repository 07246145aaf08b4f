"""BitFit (Ben Zaken, Ravfogel, Goldberg, ACL 2022): train only the bias terms.

Written here because peft has no BitFit. The freshly initialised task head trains in
full, as in the paper's GLUE setup.
"""

from harness.core.errors import HarnessError
from harness.methods.base import METHODS, Method, freeze_all_but


@METHODS.register("bitfit")
class BitFit(Method):
    """BitFit: train only bias terms (plus the new task head)."""

    category = "selective"
    paper = "Ben Zaken et al., BitFit: Simple Parameter-efficient Fine-tuning, ACL 2022"
    default_lr = 1e-3
    default_lr_source = (
        "Ben Zaken et al. 2022 (BitFit), GLUE setup: learning rates searched in {1e-4, 4e-4, 7e-4, 1e-3}, the top one"
    )

    def apply(self, model, ctx):
        is_bias = lambda name, _: name.endswith(".bias") or name == "bias"  # noqa: E731
        if not any(is_bias(name, p) for name, p in model.named_parameters()):
            raise HarnessError(f"method 'bitfit': {type(model).__name__} has no bias terms to train")
        freeze_all_but(model, keep=ctx.head_modules, predicate=is_bias)
        return model
