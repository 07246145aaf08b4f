"""Evaluation backends: the registry and its kinds, the choice a run gets (asked for, else the first
available in preference order), its place in the job identity and the row, and the torch path's
predictions against the model called by hand."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.core.errors import HarnessError
from harness.evaluation import vllm as vllm_backend
from harness.evaluation.base import EVAL_BACKENDS, ForwardBackend, GenerateBackend, choose, current, of_kind
from tests.support import tiny_run_args


@pytest.fixture()
def vllm_installed(monkeypatch):
    monkeypatch.setattr(vllm_backend, "installed", lambda: True)


def test_each_kind_has_the_harness_path_as_its_current_backend_and_vllm_first():
    assert {name: b.kind for name, b in EVAL_BACKENDS} == {
        "torch": "forward",
        "lm-eval-hf": "generate",
        "vllm": "generate",
    }
    assert [b.name for b in of_kind("generate")] == ["vllm", "lm-eval-hf"]
    assert current("forward").name == "torch" and current("generate").name == "lm-eval-hf"
    assert issubclass(EVAL_BACKENDS.get("torch"), ForwardBackend)
    assert all(issubclass(EVAL_BACKENDS.get(n), GenerateBackend) for n in ("lm-eval-hf", "vllm"))


@pytest.mark.parametrize(
    "installed, device_type, expected",
    [(True, "cuda", "vllm"), (True, "cpu", "lm-eval-hf"), (False, "cuda", "lm-eval-hf"), (False, "cpu", "lm-eval-hf")],
)
def test_the_automatic_choice_is_vllm_only_where_it_is_installed_and_the_device_is_cuda(
    monkeypatch, installed, device_type, expected
):
    monkeypatch.setattr(vllm_backend, "installed", lambda: installed)
    assert choose("generate", None, device_type).name == expected
    assert choose("forward", None, device_type).name == "torch"


@pytest.mark.parametrize(
    "installed, device_type, requested, message",
    [
        (True, "cpu", "vllm", r"^eval_backend='vllm' cannot run here: vLLM runs on CUDA GPUs .* device is cpu$"),
        (False, "cuda", "vllm", r"^eval_backend='vllm' cannot run here: vllm is not installed \(pip install"),
        (True, "cuda", "vlm", r"^eval_backend='vlm' is not an evaluation backend; for this suite: vllm, lm-eval-hf$"),
        (True, "cuda", "torch", r"^eval_backend='torch' evaluates forward passes .*: vllm, lm-eval-hf$"),
    ],
)
def test_an_explicit_backend_that_cannot_serve_is_one_line(monkeypatch, installed, device_type, requested, message):
    monkeypatch.setattr(vllm_backend, "installed", lambda: installed)
    with pytest.raises(HarnessError, match=message) as caught:
        choose("generate", requested, device_type)
    assert "\n" not in str(caught.value)


def test_an_asked_for_backend_that_can_run_is_the_one_given(vllm_installed):
    assert choose("generate", "vllm", "cuda").name == "vllm"
    assert choose("generate", "lm-eval-hf", "cuda").name == "lm-eval-hf"


# Identity -------------------------------------------------------------------------------------


def _gsm8k(tiny_llama, tiny_gsm8k, tmp_path, **values):
    from harness.engine.resolve import resolve
    from harness.spec.run import RunSpec

    spec = RunSpec(
        suite="gsm8k",
        method="lora",
        model=str(tiny_llama),
        data_dir=str(tiny_gsm8k),
        results_dir=str(tmp_path),
        **values,
    )
    return resolve(spec)[0]


def test_the_current_path_keeps_the_hash_and_another_backend_enters_the_identity(
    vllm_installed, tiny_llama, tiny_gsm8k, tmp_path
):
    plain = _gsm8k(tiny_llama, tiny_gsm8k, tmp_path, device="cpu")
    named = _gsm8k(tiny_llama, tiny_gsm8k, tmp_path, device="cpu", eval_backend="lm-eval-hf")
    assert plain.eval_backend is None and named.eval_backend is None
    assert "eval_backend" not in plain.identity() and named.job_hash == plain.job_hash
    # On CUDA with vllm installed the automatic choice is vLLM: a different experiment, a different hash.
    on_cuda = _gsm8k(tiny_llama, tiny_gsm8k, tmp_path, device="cuda")
    cuda_current = _gsm8k(tiny_llama, tiny_gsm8k, tmp_path, device="cuda", eval_backend="lm-eval-hf")
    assert on_cuda.eval_backend == "vllm" and on_cuda.identity()["eval_backend"] == "vllm"
    assert cuda_current.eval_backend is None
    assert on_cuda.identity() == {**cuda_current.identity(), "eval_backend": "vllm"}
    assert on_cuda.job_hash != cuda_current.job_hash


def test_asking_for_vllm_on_cpu_fails_at_resolve_in_one_line(vllm_installed, tiny_llama, tiny_gsm8k, tmp_path):
    with pytest.raises(HarnessError, match=r"^eval_backend='vllm' cannot run here: vLLM runs on CUDA") as caught:
        _gsm8k(tiny_llama, tiny_gsm8k, tmp_path, device="cpu", eval_backend="vllm")
    assert "\n" not in str(caught.value)


def test_asking_for_vllm_on_cpu_is_exit_2_naming_why(tiny_llama, tiny_gsm8k, tmp_path, capsys):
    """Through the command line (a sweep file sets any run setting): exit 2, one line, nothing run."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"results: {tmp_path / 'results'}\n"
        f"runs:\n  - {{suite: gsm8k, method: lora, model: {tiny_llama}, data_dir: {tiny_gsm8k}, "
        "device: cpu, eval_backend: vllm}\n"
    )
    assert main(["sweep", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert "eval_backend='vllm' cannot run here: vllm is not installed" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_a_run_records_its_backend_and_keeps_its_hash(tiny_model, tiny_glue, results_dir):
    from harness.engine.resolve import resolve
    from harness.spec.run import RunSpec

    assert main(tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "lora")) == 0
    row = pd.read_parquet(results_dir).iloc[-1]
    assert row["status"] == "ok" and row["eval_backend"] == "torch"
    config = json.loads(row["config"])
    assert config["eval_backend"] is None
    spec = RunSpec(
        suite="glue",
        task="sst2",
        model=str(tiny_model),
        method="lora",
        data_dir=str(tiny_glue),
        results_dir=str(results_dir),
        max_steps=4,
        batch_size=16,
        latency_repeats=2,
    )
    assert row["job_hash"] == resolve(spec)[0].job_hash


# The torch path ---------------------------------------------------------------------------------


def test_torch_predictions_are_the_models_outputs_in_order_over_uneven_batches():
    from harness.suites.base import Prepared

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    rows = [{"x": torch.randn(4), "labels": i % 3} for i in range(7)]

    def collate(batch):
        return {"x": torch.stack([r["x"] for r in batch]), "labels": torch.tensor([r["labels"] for r in batch])}

    class Model(torch.nn.Module):  # takes keyword inputs as a transformers model does; labels never reach it
        def __init__(self):
            super().__init__()
            self.linear = model

        def forward(self, x):
            return self.linear(x)

    backend = EVAL_BACKENDS.get("torch")()
    predictions, seconds = backend.predict(
        Model(),
        Prepared(rows, collate, [r["labels"] for r in rows]),
        lambda out: out.argmax(-1).tolist(),
        batch_size=3,
        precision="fp32",
        device=torch.device("cpu"),
        show_progress=False,
    )
    with torch.no_grad():
        expected = model(torch.stack([r["x"] for r in rows])).argmax(-1).tolist()
    assert predictions == expected and seconds > 0


def test_a_suite_scores_what_its_backend_predicts(tiny_model, tiny_glue):
    """Suite.evaluate asks the backend it is given: accuracy of predictions a stand-in makes."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from harness.data.resolve import load_split, locate_split
    from harness.suites.base import SUITES

    suite = SUITES.get("glue")()
    task = suite.get_task("sst2")
    data = load_split(locate_split("nyu-mll/glue", "sst2", "validation", tiny_glue))
    labels = list(data["label"])

    class AllOnes(ForwardBackend):
        def predict(self, model, prepared, predictions_of, **settings):
            return [1] * len(prepared.dataset), 0.5

    run = SimpleNamespace(max_length=32, eval_batch_size=8, precision="fp32")
    evaluation = suite.evaluate(
        None, AutoTokenizer.from_pretrained(tiny_model), task, [("validation", "", data)], run, "cpu", False, AllOnes()
    )
    assert evaluation.metrics["accuracy"] == pytest.approx(sum(labels) / len(labels))
    assert evaluation.seconds == 0.5 and evaluation.samples == len(labels)
