"""No adaptation: the model is evaluated as loaded (the zero-training reference point)."""

from harness.methods.base import METHODS, Method


@METHODS.register("none")
class NoAdaptation(Method):
    """No adaptation: the model is evaluated as loaded (every parameter frozen, nothing trains)."""

    category = "baseline"
    paper = "— (evaluation of the loaded checkpoint)"
    trains = False
    default_lr = 0.0  # never used: with no trainable parameter the training loop returns at once
    default_lr_source = "none: the method trains nothing"

    def apply(self, model, ctx):
        for param in model.parameters():
            param.requires_grad = False
        return model
