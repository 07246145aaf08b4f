"""The selection split: held out of the training split with a fixed seed, disjoint from the training
subset, the same for every method and seed, recorded in the row; and the task head's own rate."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from harness.core.errors import HarnessError
from harness.engine.job import deterministic_algorithms, run_job
from harness.engine.resolve import resolve
from harness.methods.optim import default_optimizer, give_head_its_rate
from harness.results.predictions import predictions_path
from harness.spec.run import RunSpec
from harness.spec.subsets import fixed_subset, selection_rule, training_and_selection


def _numbers(n: int):
    from datasets import Dataset

    return Dataset.from_dict({"x": list(range(n))})


def test_selection_is_disjoint_from_training_and_the_same_for_every_training_size():
    data = _numbers(200)
    train, selection = training_and_selection(data, 50, 40)
    assert len(train) == 50 and len(selection) == 40
    assert not set(train["x"]) & set(selection["x"])
    # The training subset is the one drawn without a selection split: adding one leaves old runs' data alone.
    assert list(train["x"]) == list(fixed_subset(data, 50)["x"])
    for size in (10, 100, 160, None):
        other_train, other_selection = training_and_selection(data, size, 40)
        assert list(other_selection["x"]) == list(selection["x"])
        assert not set(other_train["x"]) & set(selection["x"])
    full, _ = training_and_selection(data, None, 40)
    assert sorted(list(full["x"]) + list(selection["x"])) == list(range(200))


@pytest.mark.parametrize(
    "max_train, selection, words",
    [(None, 200, "leaves nothing to train on"), (None, 500, "leaves nothing to train on"), (170, 40, "need 210")],
)
def test_a_selection_split_that_does_not_fit_is_refused(max_train, selection, words):
    with pytest.raises(HarnessError, match=words):
        training_and_selection(_numbers(200), max_train, selection)


def test_the_default_size_is_a_fifth_capped_at_a_thousand():
    assert selection_rule(2490) == 498  # RTE's train split
    assert selection_rule(67349) == 1000  # SST-2's
    assert selection_rule(4) == 1


def _spec(tiny_model, tiny_glue, results_dir, **values):
    settings = dict(
        suite="glue",
        task="sst2",
        method="bitfit",
        model=str(tiny_model),
        data_dir=str(tiny_glue),
        results_dir=str(results_dir),
        max_train_samples=32,
        max_steps=2,
        batch_size=8,
        latency_repeats=1,
        kernel_profile=False,
    )
    return RunSpec(**{**settings, **values})


def test_a_trial_is_scored_on_held_out_training_examples_only(tiny_model, tiny_glue, results_dir):
    from datasets import load_dataset

    trial = run_job(_spec(tiny_model, tiny_glue, results_dir, evaluate_on="selection", selection_samples=24), False)
    row = trial.row
    assert row["status"] == "ok" and row["eval_split"] == "selection" and row["eval_samples"] == 24
    assert "24 examples held out" in row["selection_split"]
    examples = pq.read_table(predictions_path(results_dir, row["job_hash"], row["run_id"])).to_pylist()
    assert {e["split"] for e in examples} == {"selection"} and len(examples) == 24
    # The scored ids are training-split examples the job did not train on.
    files = sorted(str(p) for p in (tiny_glue / "nyu-mll" / "glue" / "sst2").glob("train-*.parquet"))
    split = load_dataset("parquet", data_files=files, split="train")
    train, selection = training_and_selection(split, 32, 24)
    assert sorted(e["example_id"] for e in examples) == sorted(int(i) for i in selection["idx"])
    assert not set(selection["idx"]) & set(train["idx"])
    # The same run reported on the dev split trains on the same 32 examples and holds the same ones out.
    final = run_job(_spec(tiny_model, tiny_glue, results_dir, selection_samples=24), False).row
    assert final["eval_split"] == "validation" and final["train_samples"] == 32
    assert final["selection_split"] == row["selection_split"]
    assert final["job_hash"] != row["job_hash"]
    # Neither option at its default changes a hash: runs made before them keep theirs.
    plain = resolve(_spec(tiny_model, tiny_glue, results_dir))[0]
    assert "selection_samples" not in plain.identity() and "evaluate_on" not in plain.identity()


def test_scoring_on_a_selection_split_needs_one(tiny_model, tiny_glue, results_dir):
    with pytest.raises(HarnessError, match="--evaluate-on selection needs --selection-samples"):
        run_job(_spec(tiny_model, tiny_glue, results_dir, evaluate_on="selection"), False)
    with pytest.raises(HarnessError, match="leaves nothing to train on"):
        run_job(_spec(tiny_model, tiny_glue, results_dir, selection_samples=96, max_train_samples=None), False)
    assert not list(results_dir.rglob("*.parquet"))


def test_suites_without_a_selection_split_or_with_their_own_say_so():
    from harness.suites.base import SUITES

    gsm8k, vtab = SUITES.get("gsm8k")(), SUITES.get("vtab")()
    selection = type("Run", (), {"selection_samples": 100, "evaluate_on": "selection"})()
    with pytest.raises(HarnessError, match="suite 'gsm8k' has no selection split"):
        gsm8k.check_selection(selection)
    with pytest.raises(HarnessError, match="has its own selection split .val200"):
        vtab.check_selection(selection)
    own = type("Run", (), {"selection_samples": None, "evaluate_on": "selection"})()
    vtab.check_selection(own)  # VTAB-1k's val200 needs no size


def test_the_head_trains_at_its_own_rate_whatever_the_optimizer():
    model = torch.nn.Sequential()
    model.add_module("body", torch.nn.Linear(4, 4))
    model.add_module("classifier", torch.nn.Linear(4, 2))
    named = list(model.named_parameters())
    optimizer = default_optimizer(named, lr=1e-3, weight_decay=0.1)
    give_head_its_rate(optimizer, named, ("classifier",), 4e-3)
    rates = {
        (name, group["lr"], group["weight_decay"])
        for group in optimizer.param_groups
        for name, p in named
        if any(p is q for q in group["params"])
    }
    assert rates == {
        ("body.weight", 1e-3, 0.1),
        ("body.bias", 1e-3, 0.0),
        ("classifier.weight", 4e-3, 0.1),
        ("classifier.bias", 4e-3, 0.0),
    }
    # The schedule scales both from their own peak.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [5e-4, 2e-3]
    del scheduler


def test_a_tuned_run_records_its_head_rate_and_role(tiny_model, tiny_glue, results_dir):
    row = run_job(
        _spec(tiny_model, tiny_glue, results_dir, head_lr=4e-3, tuning_group="g1", tuned={"lr": 5e-4}, lr=5e-4), False
    ).row
    config = json.loads(row["config"])
    assert config["head_lr"] == 4e-3 and row["tuning_group"] == "g1" and row["tuning_role"] == "final"
    assert json.loads(row["tuned"]) == {"lr": 5e-4}


def test_deterministic_algorithms_are_on_for_the_job_only():
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("method", ["lora", "galore", "bitfit"])
def test_the_training_loops_optimizer_gives_the_head_its_rate(tiny_model, method):
    """Through the loop's own optimizer (AdamW, or GaLore's), with peft wrapping the head
    (modules_to_save), every trainable head parameter trains at head_lr and nothing else does."""
    from transformers import AutoModelForSequenceClassification

    from harness.engine.loop import build_optimizer
    from harness.methods.base import MethodContext
    from harness.methods.optim import in_head
    from harness.methods.pipeline import Pipeline

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=2)
    pipeline = Pipeline.parse(method)
    ctx = MethodContext(task_type="seq_cls", head_modules=("classifier",), lr=5e-4, head_lr=4e-3, total_steps=4)
    model = pipeline.apply(model, ctx)
    optimizer = build_optimizer(model, pipeline, ctx)
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [n for n, p in trained if in_head(n, ("classifier",))]
    assert head and all(rate[id(p)] == 4e-3 for n, p in trained if n in head)
    assert all(rate[id(p)] == 5e-4 for n, p in trained if n not in head)
