"""The EXECUTORS registry behind `harness sweep --executor`: names and options checked before the
sweep is planned, `harness list executors`, and the commands executor, whose `harness run` lines
build the very RunSpecs (and so job hashes) the sweep planned."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import typer

from harness.cli import main
from harness.cli.app import app
from harness.core.errors import HarnessError
from harness.execution.base import EXECUTORS, flag, make_executor
from harness.execution.commands import command
from harness.execution.local import LocalExecutor, device_slots
from harness.execution.plan import plan
from harness.spec.run import RunSpec, flag_of
from harness.spec.sweep_file import load_sweep


def command_options(name: str) -> dict[str, object]:
    """A `harness` command's click options: every flag spelling -> the option."""
    params = typer.main.get_command(app).commands[name].params
    return {opt: p for p in params for opt in (*p.opts, *getattr(p, "secondary_opts", ()))}


def write_sweep(tmp_path: Path, tiny_model, tiny_glue, results, body: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"results: {results}\ndata_dir: {tiny_glue}\n"
        f"defaults: {{model: {tiny_model}, max_steps: 2, batch_size: 16, latency_repeats: 1, max_eval_samples: 8}}\n"
        + body
    )
    return path


GRID = """\
grid:
  suite: glue
  task: sst2
  method: [none, "lora:r=4,alpha=8"]
  seed: [0, 3]
  lr: 0.0001
  kernel_profile: false
  latency_warmup: 1
"""


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


# The registry ----------------------------------------------------------------------------------


def test_every_executor_has_a_summary_and_options_harness_sweep_has():
    assert {"local", "ray", "slurm", "commands"} <= set(EXECUTORS.names())
    sweep_flags = command_options("sweep")
    for name, cls in EXECUTORS:
        assert cls.name == name and cls.summary()
        assert all(flag(option) in sweep_flags for option in cls.options), name
    assert EXECUTORS.get("local").options == ("devices", "max_parallel")
    assert EXECUTORS.get("slurm").options == ("slurm_folder",)


def test_local_options_become_its_slots():
    local = make_executor("local", {"devices": "0,1", "max_parallel": 3, "slurm_folder": None})
    assert isinstance(local, LocalExecutor)
    assert device_slots(local.devices, 2, local.max_parallel) == ["0", "0", "1"]
    with pytest.raises(HarnessError, match=r"--devices 'a,b': give GPU indices"):
        make_executor("local", {"devices": "a,b"})


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--executor", "rey"],
            "harness: error: unknown executor 'rey'; did you mean ray? (see `harness list executors`)",
        ),
        (
            ["--executor", "ray", "--devices", "0"],
            "harness: error: --devices is not an option of --executor ray "
            "(it takes no options of its own; see `harness list executors`)",
        ),
        (
            ["--executor", "commands", "--max-parallel", "2"],
            "harness: error: --max-parallel is not an option of --executor commands "
            "(it takes no options of its own; see `harness list executors`)",
        ),
        (
            ["--slurm-folder", "logs"],  # the default executor, local
            "harness: error: --slurm-folder is not an option of --executor local "
            "(it takes --devices, --max-parallel; see `harness list executors`)",
        ),
    ],
)
def test_a_wrong_executor_or_option_is_one_line_before_the_sweep_is_read(tmp_path, capsys, args, expected):
    missing = tmp_path / "no-such-sweep.yaml"  # never read: the executor is checked first
    assert main(["sweep", str(missing), *args]) == 2
    assert one_line_error(capsys) == expected


def test_list_executors_names_each_with_its_options(capsys):
    assert main(["list", "executors"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == set(EXECUTORS.names())
    assert "--devices --max-parallel" in rows["local"] and "--slurm-folder" in rows["slurm"]
    assert EXECUTORS.get("commands").summary() in rows["commands"]


# The commands executor ---------------------------------------------------------------------------


def test_a_command_line_names_every_setting_quoted_in_field_order():
    spec = RunSpec(
        suite="glue",
        task="sst2",
        method="lora:r=4,alpha=8",
        model="/models/my bert",
        seed=3,
        lr=1e-4,
        epochs=2.5,
        gradient_accumulation_steps=2,
        gradient_checkpointing=True,
        kernel_profile=False,
        latency_warmup=5,
        results_dir="out",
    )
    assert command(spec) == (
        "harness run --suite glue --method lora:r=4,alpha=8 --task sst2 --model '/models/my bert' --seed 3 "
        "--evaluate-on reported --epochs 2.5 --lr 0.0001 --grad-accum 2 --gradient-checkpointing --no-kernel-profile --device auto "
        "--set latency_warmup=5 --latency-repeats 20 --results out"
    )


def test_suite_options_and_options_without_a_flag_are_given_with_set():
    spec = RunSpec(suite="gsm8k", method="lora", num_fewshot=2, train_data="meta-math/MetaMathQA", packing=True)
    assert command(spec).endswith("--set packing=true --set 'train_data=\"meta-math/MetaMathQA\"' --set num_fewshot=2")
    assert parsed_by_harness_run([command(spec)]) == [spec]


def test_every_runspec_field_is_a_flag_or_a_set_key_of_harness_run():
    run_flags = command_options("run")
    assert "--set" in run_flags
    for field, info in RunSpec.model_fields.items():
        if field == "suite_options":
            continue
        flag_ = flag_of(field)
        if not flag_.startswith("--set "):
            assert flag_ in run_flags, field
            if info.default is True:
                assert "--no-" + flag_[2:] in run_flags, field


def parsed_by_harness_run(lines: list[str]) -> list[RunSpec]:
    """The RunSpec `harness run` builds from each line, caught where the job would start."""
    import harness.engine.job

    built: list[RunSpec] = []

    class Parsed(Exception):
        pass

    def capture(spec, show_progress):
        built.append(spec)
        raise Parsed

    original = harness.engine.job.run_job
    harness.engine.job.run_job = capture
    try:
        for line in lines:
            assert shlex.split(line)[:2] == ["harness", "run"]
            with pytest.raises(Parsed):
                main(shlex.split(line)[1:])
    finally:
        harness.engine.job.run_job = original
    return built


def test_the_commands_build_the_planned_specs_and_one_run_gives_its_planned_hash(
    tmp_path, tiny_model, tiny_glue, results_dir, capsys
):
    from harness.results.store import read_results

    sweep = write_sweep(tmp_path, tiny_model, tiny_glue, results_dir, GRID)
    planned = plan(load_sweep(str(sweep))).jobs
    assert main(["sweep", str(sweep), "--executor", "commands"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == len(planned) == 4 and all(line.startswith("harness run --suite glue ") for line in lines)
    assert "4 jobs: 4 todo; 4 to run" in captured.err and "4 planned, not run here" in captured.err
    assert not results_dir.exists()  # nothing ran, nothing was claimed

    # Each line, parsed by `harness run` itself, builds the job's RunSpec exactly.
    assert parsed_by_harness_run(lines) == [job.spec for job in planned]

    # One of them, run for real: its row has the hash the sweep planned for it.
    assert main(shlex.split(lines[3])[1:]) == 0
    capsys.readouterr()
    [row] = read_results(results_dir).to_dict("records")
    assert row["status"] == "ok" and row["job_hash"] == planned[3].job_hash
    # The sweep now sees that job done and prints the other three.
    assert main(["sweep", str(sweep), "--executor", "commands"]) == 0
    assert capsys.readouterr().out.splitlines() == lines[:3]


def test_resources_a_command_cannot_carry_are_said_on_stderr(tmp_path, tiny_model, tiny_glue, results_dir, capsys):
    sweep = write_sweep(
        tmp_path,
        tiny_model,
        tiny_glue,
        results_dir,
        GRID + "runs:\n  - {suite: glue, task: cola, method: none, resources: {timeout: 60}}\n",
    )
    assert main(["sweep", str(sweep), "--executor", "commands"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 5
    assert "note: 1 of these jobs set a timeout, memory limit or retries" in captured.err
