"""Full fine-tuning: every parameter trains. The baseline every PEFT method is measured against."""

from harness.method import METHODS, Method


@METHODS.register("full")
class FullFineTuning(Method):
    """Full fine-tuning: every parameter is trained."""

    name = "full"
    category = "full"
    paper = "Devlin et al., BERT, NAACL 2019 (fine-tuning protocol)"
    # BERT's fine-tuning grid is {2,3,4,5}e-5; 5e-5 converges within the 3-epoch default budget.
    default_lr = 5e-5

    def apply(self, model, ctx):
        for param in model.parameters():
            param.requires_grad = True
        return model
