"""The command line end to end on a tiny model: rows, failures, bad input, report."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
import pytest

from harness.cli import main
from harness.methods.base import METHODS, Method
from harness.results.store import read_results, result_files
from tests.support import tiny_run_args


def test_run_writes_one_ok_row_with_metrics_and_costs(tiny_model, tiny_glue, results_dir, capsys):
    assert main(tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "lora:r=4")) == 0
    df = read_results(results_dir)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["status"] == "ok" and row["suite"] == "glue" and row["task"] == "sst2"
    assert row["method"] == "lora:r=4"
    assert row["metric"] == "accuracy" and 0.0 <= row["score"] <= 1.0
    assert json.loads(row["metrics"])["accuracy"] == row["score"]
    assert row["train_steps"] == 4 and row["train_seconds"] > 0
    assert row["train_samples_per_s"] == pytest.approx(4 * 16 / row["train_seconds"])
    assert 0 < row["trainable_params"] < row["total_params"]
    assert row["peak_memory_bytes"] > 0 and row["peak_memory_kind"].startswith("cpu_")
    assert row["latency_bs1_p50_ms"] > 0 and row["latency_bs1_p90_ms"] >= row["latency_bs1_p50_ms"]
    assert row["latency_batch_size"] == 48  # eval split has 48 examples, default eval batch 64
    assert row["torch_version"] and row["device"] == "cpu"
    config = json.loads(row["config"])
    assert config["lr"] == 5e-4 and config["epochs"] == 3 and config["max_steps"] == 4
    assert "wrote" in capsys.readouterr().out


def test_mnli_reports_matched_and_mismatched(tiny_model, tiny_glue, results_dir):
    assert main([*tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "bitfit"), "--task", "mnli"]) == 0
    row = read_results(results_dir).iloc[0]
    metrics = json.loads(row["metrics"])
    assert set(metrics) == {"accuracy", "accuracy_mismatched"}
    assert row["eval_split"] == "validation_matched,validation_mismatched"


def test_same_config_same_job_hash_and_reproducible_score(tiny_model, tiny_glue, results_dir):
    for _ in range(2):
        assert main(tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "full")) == 0
    df = read_results(results_dir)
    assert df["job_hash"].nunique() == 1 and df["run_id"].nunique() == 2
    assert df["score"].iloc[0] == df["score"].iloc[1]
    assert df["final_train_loss"].iloc[0] == df["final_train_loss"].iloc[1]


@METHODS.register("test-explodes")
class Explodes(Method):
    """A method that raises while being applied (test only)."""

    name = "test-explodes"

    def apply(self, model, ctx):
        raise RuntimeError("boom at apply")


def test_a_run_that_raises_writes_a_failed_row(tiny_model, tiny_glue, results_dir, capsys):
    assert main(tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "test-explodes")) == 1
    df = read_results(results_dir)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["status"] == "failed"
    assert row["error"] == "RuntimeError: boom at apply"
    assert "Traceback" in row["traceback"] and pd.isna(row["score"])
    err = capsys.readouterr().err
    assert "run failed: RuntimeError: boom at apply" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--suite", "glu", "--method", "lora"], "unknown suite 'glu'; did you mean glue?"),
        (
            ["--suite", "glue", "--task", "sst3", "--method", "lora"],
            "unknown task 'sst3' in suite 'glue'; did you mean sst2",
        ),
        (
            ["--suite", "glue", "--task", "sst2", "--method", "lroa"],
            r"unknown method 'lroa'; did you mean [a-z, ]*\blora\b",
        ),
        (["--suite", "glue", "--task", "sst2", "--method", "lora:rank=4"], "unknown parameter 'rank'"),
        (["--suite", "glue", "--task", "sst2", "--method", "lora:r=-1"], "r=-1: Input should be greater than 0"),
        (["--suite", "glue", "--task", "sst2", "--method", "lora", "--lr", "fast"], "Invalid value for '--lr'"),
        (
            ["--suite", "glue", "--task", "qqp", "--method", "lora"],
            "split 'train' of nyu-mll/glue/qqp is not in the data dir",
        ),
        (
            ["--suite", "glue", "--task", "sst2", "--method", "lora:target_modules=[qery]"],
            "target module 'qery' is not in the model; did you mean query",
        ),
        (["--suite", "glue", "--task", "sst2", "--method", "lora:r=64"], "rank 64 exceeds layer"),
        (["--suite", "glue", "--task", "sst2", "--method", "lisa:n_layers=9"], "n_layers=9"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_model, tiny_glue, results_dir, capsys, args, message):
    base = ["run", "--model", str(tiny_model), "--data-dir", str(tiny_glue), "--results", str(results_dir), "--quiet"]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err), err
    assert len(err.splitlines()) == 1 and err.startswith("harness: error: ")
    assert not results_dir.exists() or not result_files(results_dir)


def test_missing_data_dir_is_bad_input(tiny_model, tmp_path, capsys):
    code = main(
        [
            "run",
            "--suite",
            "glue",
            "--task",
            "sst2",
            "--method",
            "lora",
            "--model",
            str(tiny_model),
            "--data-dir",
            str(tmp_path / "nowhere"),
            "--results",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_console_script_bad_input_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "run",
            "--suite",
            "glue",
            "--method",
            "lora",
            "--lr",
            "abc",
            "--results",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_list_commands(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    for name in ("full", "bitfit", "lora", "dora", "adalora", "vera", "ia3"):
        assert name in out
    assert "0.0005 (Hu et al. 2022 (LoRA), Table 9" in " ".join(out.split())  # each default with its source
    assert main(["list", "tasks"]) == 0
    out = capsys.readouterr().out
    for task in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"):
        assert task in out
    assert main(["list", "suites"]) == 0 and "glue" in capsys.readouterr().out


def test_listings_print_brackets_as_written(capsys):
    """Listings are plain text: `[vllm]` in an install hint is not taken for console markup."""
    assert main(["list", "backends"]) == 0
    out = capsys.readouterr().out
    assert "pip install 'harness[vllm]'" in out
    assert {"torch", "lm-eval-hf", "vllm"} <= {line.split()[0] for line in out.splitlines()[1:] if line.strip()}
