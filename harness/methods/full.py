"""Full fine-tuning: every parameter trains. The baseline every PEFT method is compared with."""

from harness.core.errors import HarnessError
from harness.methods.base import METHODS, Method


@METHODS.register("full")
class FullFineTuning(Method):
    """Full fine-tuning: every parameter is trained."""

    category = "full"
    paper = "Devlin et al., BERT, NAACL 2019 (fine-tuning protocol)"
    trains_base_weights = True
    # The largest rate of BERT's fine-tuning grid.
    default_lr = 5e-5
    default_lr_source = "Devlin et al. 2019 (BERT), Appendix A.3: fine-tuning learning rates {5e-5, 3e-5, 2e-5}"

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
