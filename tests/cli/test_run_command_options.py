"""`harness run`'s options are the declared ones: a flag per option declared for the command line,
with its help; `--set key=value` for any option, giving what its flag gives; a suite's own options
as flags of that suite; one line and exit status 2 for a key or value that is wrong."""

from __future__ import annotations

import re

import pytest
import typer.main

from harness.cli import app, main
from harness.core.errors import HarnessError
from harness.engine.resolve import resolve
from harness.spec.run import RUN_OPTIONS, RunSpec, flag_of
from tests.support import tiny_run_args


def _run_command():
    return next(c for c in typer.main.get_command(app).commands.values() if c.name == "run")


def test_the_command_has_exactly_the_declared_flags_with_their_help():
    params = {p.name: p for p in _run_command().params}
    declared = {name: opt for name, opt in RUN_OPTIONS.items() if opt.cli}
    assert set(params) == set(declared) | {"set_", "quiet"}
    for name, opt in declared.items():
        param = params[name]
        assert param.opts == [flag_of(name), *([opt.short] if opt.short else [])], name
        assert param.secondary_opts == ([f"--no-{flag_of(name)[2:]}"] if opt.negatable else []), name
        assert param.help == opt.help and param.required == RunSpec.model_fields[name].is_required(), name
    assert params["gradient_accumulation_steps"].opts == ["--grad-accum"]
    assert params["kernel_profile"].secondary_opts == ["--no-kernel-profile"]
    assert "latency_warmup" not in params and "eval_backend" not in params  # --set only


class Captured(Exception):
    pass


@pytest.fixture()
def captured(monkeypatch):
    """The RunSpec each `harness run` builds; nothing runs."""
    import harness.engine.job

    specs: list[RunSpec] = []

    def capture(spec, show_progress=True):
        specs.append(spec)
        raise HarnessError("captured")

    monkeypatch.setattr(harness.engine.job, "run_job", capture)
    return specs


def test_set_gives_the_run_its_flag_gives(tiny_model, tiny_glue, results_dir, captured):
    flags = ["--warmup-ratio", "0.1", "--grad-accum", "2", "--no-kernel-profile", "--lr", "1e-4", "--seed", "3"]
    sets = ["warmup_ratio=0.1", "gradient_accumulation_steps=2", "kernel_profile=false", "lr=1e-4", "seed=3"]
    assert main(tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "lora", *flags)) == 2
    assert main(tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "lora", *_sets(sets))) == 2
    by_flag, by_set = captured
    assert by_flag == by_set
    assert (by_set.warmup_ratio, by_set.gradient_accumulation_steps, by_set.kernel_profile, by_set.lr) == (
        0.1,
        2,
        False,
        1e-4,
    )
    assert resolve(by_flag)[0].model_dump() == resolve(by_set)[0].model_dump()


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def test_set_reaches_an_option_without_a_flag(tiny_model, tiny_glue, results_dir, captured):
    assert main(tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "lora", "--set", "latency-warmup=1")) == 2
    [spec] = captured
    assert spec.latency_warmup == 1 and resolve(spec)[0].latency_warmup == 1


def test_a_suites_options_are_flags_of_that_suite(captured):
    base = ["run", "--suite", "gsm8k", "--method", "none"]
    assert main([*base, "--num-fewshot", "3", "--packing", "--train-data=acme/qa", "--max-new-tokens", "8"]) == 2
    assert main([*base, *_sets(["num_fewshot=3", "packing=true", "train_data=acme/qa", "max_new_tokens=8"])]) == 2
    assert main([*base, "--no-packing"]) == 2
    by_flag, by_set, unpacked = captured
    assert (
        by_flag
        == by_set
        == RunSpec(suite="gsm8k", method="none", num_fewshot=3, packing=True, train_data="acme/qa", max_new_tokens=8)
    )
    assert unpacked.suite_options == {"packing": False}


@pytest.mark.parametrize(
    "extra, pattern",
    [
        (
            ["--set", "sead=1"],
            r"--set sead=1: unknown setting for suite 'glue'; did you mean seed\? \(glue's options: none\)$",
        ),
        (["--lrr", "1e-3"], r"--lrr: unknown setting for suite 'glue'; did you mean lr\?"),
        (["--set", "warmup_ratio=abc"], r"--set warmup_ratio='abc': Input should be a valid number"),
        (["--set", "warmup_ratio=1.5"], r"--set warmup_ratio=1.5: Input should be less than 1$"),
        (["--set", "warmup_ratio"], r"--set 'warmup_ratio': give KEY=VALUE"),
        (["--set", "lr=[1, 2]"], r"--set lr='\[1, 2\]': one value, not a list or mapping"),
        (["--set", "seed=1", "--set", "seed=2"], r"--set seed is given twice"),
        (["--lr", "1e-3", "--set", "lr=2e-3"], r"--lr and --set lr are both given; pass one"),
        (["--latency-warmup", "1"], r"--latency-warmup is not a flag of `harness run`; pass --set latency_warmup="),
        (
            ["--num-fewshot", "2"],
            r"--num-fewshot: an option of gsm8k, lm-eval, not of suite 'glue' \(glue's options: none\)",
        ),
        (["--set", "num_fewshot=2"], r"--set num_fewshot=2: an option of gsm8k, lm-eval, not of suite 'glue'"),
        (["stray"], r"unexpected argument 'stray'"),
    ],
)
def test_a_wrong_key_or_value_is_one_line(tiny_model, tiny_glue, results_dir, capsys, captured, extra, pattern):
    assert main(tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "lora", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    assert not captured  # refused before the job


@pytest.mark.parametrize(
    "extra, pattern",
    [
        (["--num-fewshot", "-1"], r"--num-fewshot=-1: Input should be greater than or equal to 0"),
        (["--packing=1"], r"--packing=1: Input should be a valid boolean"),
        (["--max-new-tokens"], r"--max-new-tokens needs a value"),
    ],
)
def test_a_bad_suite_flag_value_is_one_line(capsys, captured, extra, pattern):
    assert main(["run", "--suite", "gsm8k", "--method", "none", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    assert not captured


def test_a_sweep_file_takes_suite_options_and_names_the_line_of_a_bad_one(tmp_path, capsys):
    from harness.spec.sweep_file import load_sweep

    good = tmp_path / "good.yaml"
    good.write_text("grid:\n  suite: gsm8k\n  method: none\n  num_fewshot: [0, 5]\n")
    specs = [RunSpec(**job.values) for job in load_sweep(good).jobs]
    assert [s.suite_options for s in specs] == [{"num_fewshot": 0}, {"num_fewshot": 5}]
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  suite: gsm8k\n  method: none\n  packing: 1\n")
    assert main(["sweep", str(bad), "--dry-run"]) == 2
    assert re.search(r"bad.yaml:4: grid.packing: Input should be a valid boolean", capsys.readouterr().err)


def test_list_options_shows_every_option_and_each_suites_own(capsys):
    assert main(["list", "options"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[1:] if line[:1].strip()}
    assert set(RUN_OPTIONS) <= set(rows)
    assert rows["latency_warmup"] == ["all", "--set"] and rows["lr"] == ["all", "--lr"]
    assert rows["num_fewshot"] == ["lm-eval", "--num-fewshot,"]  # the last of the suites that declare it
    assert "[env: HARNESS_DATA_DIR]" in " ".join(out.split())  # help text as written, not read as markup


def test_list_models_names_the_suite_of_each_alias(capsys):
    assert main(["list", "models"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:] if line[:1].strip()}
    assert (rows["roberta-base"], rows["smollm2-135m"], rows["resnet20-cifar10"], rows["vit-tiny"]) == (
        "glue",
        "lm-eval",
        "cifar",
        "imagenet",
    )
