"""Full fine-tuning: every parameter trains. The baseline every PEFT method is measured against."""

from harness.core.errors import HarnessError
from harness.methods.base import METHODS, Method


@METHODS.register("full")
class FullFineTuning(Method):
    """Full fine-tuning: every parameter is trained."""

    category = "full"
    paper = "Devlin et al., BERT, NAACL 2019 (fine-tuning protocol)"
    trains_base_weights = True
    # BERT's fine-tuning grid is {2,3,4,5}e-5; 5e-5 converges within the 3-epoch default budget.
    default_lr = 5e-5

    def apply(self, model, ctx):
        # Integer weights (bitsandbytes' packed NF4 codes, quantized layers) have no gradient.
        frozen = [(name, p.dtype) for name, p in model.named_parameters() if not p.is_floating_point()]
        if frozen:
            name, dtype = frozen[0]
            raise HarnessError(
                f"method 'full': {len(frozen)} weights are quantized ({name} is {dtype}) and cannot be trained; "
                f"put the quantizer after training (full+nf4)"
            )
        for param in model.parameters():
            param.requires_grad = True
        return model
