"""Bad input is refused where it enters, with one line and exit status 2, before any training:
non-finite and out-of-range numbers, booleans posing as numbers, unusable result folders,
evaluation splits that cannot be scored, lengths beyond the model's positions, an unreachable hub."""

from __future__ import annotations

import math
import re
import socket
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.core.errors import HarnessError
from harness.methods.pipeline import Pipeline
from harness.results.store import result_files
from harness.spec.run import RunSpec
from tests.support import tiny_run_args


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("harness: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture()
def no_training(monkeypatch):
    """Training must never start: reaching it would turn into a failed row and exit status 1."""
    import harness.engine.job

    def refuse(*args, **kwargs):
        raise AssertionError("training started although the input was bad")

    monkeypatch.setattr(harness.engine.job, "train", refuse)


def refused(capsys, results_dir, argv, pattern) -> str:
    capsys.readouterr()  # what the test's own set-up printed
    code = main(argv)
    err = one_line_error(capsys)
    assert code == 2, err
    assert re.search(pattern, err), err
    assert not results_dir.exists() or not result_files(results_dir)
    return err


# Numbers on the command line ------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, value, pattern",
    [
        ("--lr", "inf", r"--lr=inf: Input should be a finite number"),
        ("--lr", "nan", r"--lr=nan"),
        ("--weight-decay", "inf", r"--weight-decay=inf: Input should be a finite number"),
        ("--epochs", "inf", r"--epochs=inf: Input should be a finite number"),
        ("--epochs", "1e300", r"--epochs=1e\+300: Input should be less than or equal to 1000000"),
        ("--warmup-ratio", "nan", r"--warmup-ratio=nan"),
        ("--max-grad-norm", "inf", r"--max-grad-norm=inf: Input should be a finite number"),
        ("--seed", "-1", r"--seed=-1: Input should be greater than or equal to 0"),
        ("--seed", str(2**32), r"--seed=4294967296: Input should be less than 4294967296"),
        ("--max-steps", str(2**63), r"--max-steps=9223372036854775808: Input should be less than 9223372036854775808"),
        ("--grad-accum", "0", r"--grad-accum=0: Input should be greater than 0"),
    ],
)
def test_bad_numbers_are_refused_naming_the_real_flag(
    tiny_model, tiny_glue, results_dir, capsys, no_training, flag, value, pattern
):
    argv = tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "bitfit", flag, value)
    refused(capsys, results_dir, argv, pattern)


def test_every_flag_an_error_can_name_exists_on_the_command_line(capsys):
    """RunSpec.build names the flag of the field that failed; each must be one `harness run` takes
    (`--set NAME` for an option declared without a flag)."""
    import typer.main

    from harness.cli import app
    from harness.spec.run import RUN_FLAGS, RUN_OPTIONS, flag_of

    command = next(c for c in typer.main.get_command(app).commands.values() if c.name == "run")
    flags = {opt for param in command.params for opt in param.opts + param.secondary_opts}
    assert RUN_FLAGS == {"gradient_accumulation_steps": "--grad-accum", "results_dir": "--results"}
    assert {flag_of(f) for f, opt in RUN_OPTIONS.items() if opt.cli} <= flags
    assert {flag_of(f) for f, opt in RUN_OPTIONS.items() if not opt.cli} == {
        "--set latency_warmup",
        "--set eval_backend",
        "--set tuning_group",
        "--set tuned",
    }
    assert "--set" in flags


@pytest.mark.parametrize(
    "values, pattern",
    [
        ({"seed": True}, r"--seed=True"),
        ({"max_steps": True}, r"--max-steps=True"),
        ({"lr": True}, r"--lr=True: a number"),
        ({"kernel_profile": "no"}, r"--kernel-profile='no'"),
        ({"results_dir": ""}, r"--results=''"),
        ({"results_dir": "   "}, r"--results='   '"),
    ],
)
def test_booleans_are_not_numbers_and_numbers_are_not_booleans(values, pattern):
    with pytest.raises(HarnessError, match=pattern):
        RunSpec.build(suite="glue", method="lora", **values)


def test_a_suite_option_is_checked_by_the_suite_that_declares_it():
    with pytest.raises(HarnessError, match=r"^--packing=1: Input should be a valid boolean$"):
        RunSpec.build(suite="gsm8k", method="lora", packing=1)
    with pytest.raises(HarnessError, match=r"^--packing=True: an option of gsm8k, lm-eval, not of suite 'glue'"):
        RunSpec.build(suite="glue", method="lora", packing=True)


def test_yaml_style_numbers_still_read():
    """PyYAML reads `1e-4` (no dot) as a string: such a learning rate is still a number."""
    assert RunSpec.build(suite="glue", lr="1e-4").lr == 1e-4


def test_a_spec_survives_the_trip_to_a_worker_unchanged():
    spec = RunSpec.build(suite="glue", method="lora", lr=1 / 3 * 1e-4, epochs=2.5, warmup_ratio=0.06, seed=2**32 - 1)
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec
    # A value that slipped past validation is never turned into "not given" on the way.
    smuggled = RunSpec.model_construct(**{**spec.model_dump(), "lr": math.inf})
    with pytest.raises(ValueError, match="finite"):
        RunSpec.model_validate_json(smuggled.model_dump_json())


# Method parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, pattern",
    [
        ("lora:dropout=nan", r"dropout=nan: not a finite number"),
        ("lora:alpha=inf", r"alpha=inf: not a finite number"),
        ("lora:alpha=-Infinity", r"alpha=-Infinity: not a finite number"),
        ("lora:r=true", r"method 'lora': r=True: Input should be a valid integer"),
        ("lora:merge=1", r"method 'lora': merge=1: Input should be a valid boolean"),
        ("lora:r=4.0", r"method 'lora': r=4.0: Input should be a valid integer"),
    ],
)
def test_method_parameters_are_finite_and_typed(spec, pattern):
    with pytest.raises(HarnessError, match=pattern):
        Pipeline.parse(spec)


def test_method_parameters_given_as_python_values_are_checked_too():
    from harness.methods.base import METHODS

    lora = METHODS.get("lora")
    with pytest.raises(ValueError, match="finite"):
        lora.Params(dropout=float("nan"))
    with pytest.raises(ValueError, match="valid integer"):
        lora.Params(r=True)
    assert lora.Params(alpha=16).alpha == 16  # an integer where a float is asked is still fine


def test_every_method_accepts_its_own_canonical_spec():
    """Strict parameter types still take what the parser makes of each method's own spec."""
    from pydantic import ValidationError

    from harness.methods.base import METHODS

    checked = 0
    for name, cls in METHODS:
        try:
            method = cls()
        except ValidationError:  # a method without defaults for everything (svd: rank or energy)
            continue
        assert Pipeline.parse(method.spec()).spec() == method.spec(), name
        checked += 1
    assert checked >= 30
    for spec in (
        "svd:rank=4",
        "svd:energy=0.9",
        "lora:alpha=8.5,r=4,target_modules=[query,value]",
        "tome:r=[1,2]",
        "gptq:bits=3",
        "wanda:sparsity=0.6",
    ):
        assert Pipeline.parse(spec).spec() == spec


# Sweep files -------------------------------------------------------------------------------------


def _sweep(tmp_path, tiny_model, tiny_glue, results_dir, body: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"results: {results_dir}\ndata_dir: {tiny_glue}\ndefaults:\n  model: {tiny_model}\n  max_steps: 2\n{body}"
    )
    return path


@pytest.mark.parametrize(
    "body, pattern",
    [
        (
            "grid:\n  suite: glue\n  task: sst2\n  method: lora\n  lr: .inf\n",
            r"sweep.yaml:10: grid.lr: Input should be a finite number",
        ),
        (
            "grid:\n  suite: glue\n  task: sst2\n  method: lora\n  lr: [1e-4, .nan]\n",
            r"sweep.yaml:10: grid.lr\[1\]: Input should be a finite number",
        ),
        ("grid:\n  suite: glue\n  task: sst2\n  method: 'lora:dropout=.nan'\n", r"dropout='.nan'"),
        (
            "grid:\n  suite: glue\n  task: sst2\n  method: lora\n  packing: true\n",
            r"sweep.yaml:10: grid.packing: an option of gsm8k, lm-eval, not of suite 'glue' \(glue's options: none\)",
        ),
        (
            "grid:\n  suite: glue\n  task: sst2\n  method: lora\nresources:\n  timeout: .inf\n",
            r"resources.timeout: Input should be a finite number",
        ),
        (
            "grid:\n  suite: glue\n  task: sst2\n  method: lora\nresources:\n  memory_limit_gb: .nan\n",
            r"resources.memory_limit_gb: Input should be a finite number",
        ),
        (
            "grid:\n  suite: glue\n  task: sst2\n  method: lora\nresources:\n  retries: true\n",
            r"resources.retries: Input should be a valid integer",
        ),
    ],
)
def test_a_sweep_file_value_is_refused_where_it_is_written(
    tmp_path, tiny_model, tiny_glue, results_dir, capsys, body, pattern
):
    sweep = _sweep(tmp_path, tiny_model, tiny_glue, results_dir, body)
    refused(capsys, results_dir, ["sweep", str(sweep), "--dry-run"], pattern)


@pytest.mark.parametrize("flag, value", [("--timeout", "inf"), ("--timeout", "nan"), ("--max-parallel", "0")])
def test_sweep_command_line_numbers_are_finite(tmp_path, tiny_model, tiny_glue, results_dir, capsys, flag, value):
    sweep = _sweep(tmp_path, tiny_model, tiny_glue, results_dir, "grid:\n  suite: glue\n  task: sst2\n  method: lora\n")
    refused(capsys, results_dir, ["sweep", str(sweep), flag, value], re.escape(flag))


# Result folders ----------------------------------------------------------------------------------


def test_empty_results_folder_is_refused(tiny_model, tiny_glue, tmp_path, capsys, no_training, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = tiny_run_args(tiny_model, tiny_glue, Path("x"), "--method", "bitfit")
    argv[argv.index("--results") + 1] = ""
    refused(capsys, tmp_path / "nothing", argv, r"--results=''")
    assert not list(tmp_path.glob("*.parquet")) and not list(tmp_path.glob("glue*"))


def test_results_folder_under_a_file_is_refused(tiny_model, tiny_glue, tmp_path, capsys, no_training):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    results = blocker / "results"
    refused(
        capsys,
        results,
        tiny_run_args(tiny_model, tiny_glue, results, "--method", "bitfit"),
        r"--results .*a-file/results.* cannot be created",
    )


def test_unwritable_results_folder_is_refused_before_training(tiny_model, tiny_glue, capsys, no_training):
    # sysfs refuses new files even to root, where a chmod-ed folder would not stop a root test run.
    results = Path("/sys/harness-results-probe")
    try:
        results.mkdir()
    except OSError:
        pass
    else:  # pragma: no cover - a machine whose /sys takes new folders
        results.rmdir()
        pytest.skip("/sys is writable here")
    refused(
        capsys,
        results,
        tiny_run_args(tiny_model, tiny_glue, results, "--method", "bitfit"),
        r"--results '/sys/harness-results-probe' is not writable",
    )


# Data and model preconditions ----------------------------------------------------------------------


def _mirror_with_validation(root: Path, columns: dict, features) -> Path:
    """The tiny SST-2 mirror (train as usual) with a validation split the test writes."""
    from tests.support import make_tiny_glue, write_split

    make_tiny_glue(root, n_train=32, n_eval=8)
    folder = root / "nyu-mll" / "glue" / "sst2"
    for f in folder.glob("validation*"):
        f.unlink()
    if columns is not None:
        write_split(root, "sst2", "validation", columns, features)
    return root


def _sst2_features(label="class"):
    from datasets import ClassLabel, Features, Value

    label_feature = ClassLabel(names=["negative", "positive"]) if label == "class" else Value(label)
    return Features({"sentence": Value("string"), "label": label_feature, "idx": Value("int32")})


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("empty", r"split 'validation' of nyu-mll/glue/sst2 has no examples"),
        ("unlabelled", r"split 'validation' of glue/sst2 lacks column\(s\) \['label'\]; has \['sentence', 'idx'\]"),
        ("null labels", r"split 'validation' of glue/sst2: 2 of 4 examples have no label"),
        ("out of range", r"split 'validation' of glue/sst2: label 5 is outside 0..1 \(2 classes\)"),
        ("negative", r"split 'validation' of glue/sst2: label -1 is outside 0..1 \(2 classes\)"),
        ("unreadable", r"could not read split 'validation' of nyu-mll/glue/sst2"),
    ],
)
def test_an_evaluation_split_that_cannot_be_scored_is_refused_before_training(
    tiny_model,
    tmp_path,
    results_dir,
    capsys,
    no_training,
    case,
    pattern,
):
    from datasets import Features, Value

    sentences = ["good movie", "bad film", "fine plot", "dull story"]
    if case == "empty":
        columns, features = {"sentence": [], "label": [], "idx": []}, _sst2_features()
    elif case == "unlabelled":
        columns = {"sentence": sentences, "idx": list(range(4))}
        features = Features({"sentence": Value("string"), "idx": Value("int32")})
    elif case == "null labels":
        columns, features = (
            {"sentence": sentences, "label": [0, None, 1, None], "idx": list(range(4))},
            _sst2_features("int64"),
        )
    elif case == "out of range":
        columns, features = (
            {"sentence": sentences, "label": [0, 1, 5, 1], "idx": list(range(4))},
            _sst2_features("int64"),
        )
    elif case == "negative":
        columns, features = (
            {"sentence": sentences, "label": [0, -1, 1, 1], "idx": list(range(4))},
            _sst2_features("int64"),
        )
    else:
        columns, features = None, None
    mirror = _mirror_with_validation(tmp_path / "mirror", columns, features)
    if case == "unreadable":
        (mirror / "nyu-mll" / "glue" / "sst2" / "validation-00000-of-00001.parquet").write_bytes(b"PAR1 truncated")
    refused(capsys, results_dir, tiny_run_args(tiny_model, mirror, results_dir, "--method", "bitfit"), pattern)


def test_out_of_range_training_labels_are_refused_before_training(
    tiny_model, tmp_path, results_dir, capsys, no_training
):
    from tests.support import write_split

    mirror = _mirror_with_validation(
        tmp_path / "mirror", {"sentence": ["good", "bad"], "label": [0, 1], "idx": [0, 1]}, _sst2_features()
    )
    write_split(
        mirror,
        "sst2",
        "train",
        {"sentence": ["good", "bad", "fine"], "label": [0, 1, 2], "idx": [0, 1, 2]},
        _sst2_features("int64"),
    )
    refused(
        capsys,
        results_dir,
        tiny_run_args(tiny_model, mirror, results_dir, "--method", "bitfit"),
        r"split 'train' of glue/sst2: label 2 is outside 0..1",
    )


def test_a_regression_task_needs_real_valued_labels(tiny_model, tmp_path, results_dir, capsys, no_training):
    from datasets import Features, Value

    from tests.support import make_tiny_glue, write_split

    mirror = make_tiny_glue(tmp_path / "mirror", n_train=16, n_eval=4)
    stsb = Features(
        {"sentence1": Value("string"), "sentence2": Value("string"), "label": Value("float32"), "idx": Value("int32")}
    )
    write_split(
        mirror,
        "stsb",
        "validation",
        {"sentence1": ["a", "b"], "sentence2": ["a", "b"], "label": [1.0, float("nan")], "idx": [0, 1]},
        stsb,
    )
    argv = tiny_run_args(tiny_model, mirror, results_dir, "--method", "bitfit", "--task", "stsb")
    refused(capsys, results_dir, argv, r"split 'validation' of glue/stsb: 1 of 2 examples have no label")


def test_max_length_beyond_the_model_positions_is_refused(tiny_model, tiny_glue, results_dir, capsys, no_training):
    # The tiny BERT has 64 positions (tests/conftest.py).
    argv = tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "bitfit", "--max-length", "65")
    refused(capsys, results_dir, argv, r"--max-length 65 exceeds the model's context window of 64 tokens")


def test_default_max_length_is_capped_at_the_model_positions(tiny_model, tiny_glue):
    from harness.engine.resolve import resolve

    run = resolve(
        RunSpec.build(suite="glue", task="sst2", method="bitfit", model=str(tiny_model), data_dir=str(tiny_glue))
    )[0]
    assert run.max_length == 64  # the suite's 128, cut to what the model can embed
    explicit = resolve(
        RunSpec.build(
            suite="glue", task="sst2", method="bitfit", model=str(tiny_model), data_dir=str(tiny_glue), max_length=32
        )
    )[0]
    assert explicit.max_length == 32


def test_roberta_positions_leave_out_the_padding_offset():
    from transformers import RobertaConfig

    from harness.suites.base import text_positions

    # RoBERTa numbers positions from padding_idx + 1: 514 embeddings hold 512 tokens.
    assert text_positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    from transformers import BertConfig

    assert text_positions(BertConfig(max_position_embeddings=64)) == 64


def test_an_empty_or_unreadable_gsm8k_test_split_is_refused_before_training(
    tiny_llama, tmp_path, results_dir, capsys, no_training
):
    from datasets import Dataset, Features, Value

    from tests.support import make_tiny_gsm8k

    mirror = make_tiny_gsm8k(tmp_path / "mirror", n_train=8, n_test=2)
    test_file = mirror / "openai" / "gsm8k" / "main" / "test-00000-of-00001.parquet"
    Dataset.from_dict(
        {"question": [], "answer": []}, features=Features({"question": Value("string"), "answer": Value("string")})
    ).to_parquet(str(test_file))
    argv = [
        "run",
        "--suite",
        "gsm8k",
        "--model",
        str(tiny_llama),
        "--data-dir",
        str(mirror),
        "--results",
        str(results_dir),
        "--method",
        "lora",
        "--max-steps",
        "1",
        "--quiet",
    ]
    refused(capsys, results_dir, argv, r"split 'test' of openai/gsm8k/main has no examples")
    test_file.write_bytes(b"not parquet")
    refused(
        capsys,
        results_dir,
        argv,
        r"could not read split 'test' of openai/gsm8k/main from .*test-00000-of-00001.parquet",
    )


# An unreachable hub ---------------------------------------------------------------------------------


def _uncached_hub_model_is_refused_quickly(tiny_glue, results_dir, capsys) -> str:
    """Runs a hub model that is not cached; asserts exit 2 well before hub retries would end; the error line."""
    start = time.perf_counter()
    code = main(
        [
            "run",
            "--suite",
            "glue",
            "--task",
            "sst2",
            "--method",
            "dora",
            "--data-dir",
            str(tiny_glue),
            "--model",
            "FacebookAI/roberta-base-not-cached",
            "--results",
            str(results_dir),
        ]
    )
    took = time.perf_counter() - start
    err = one_line_error(capsys)
    assert code == 2 and took < 15, (code, took)  # hub retries took about 30 s
    return err


def test_offline_hub_model_fails_at_once_naming_offline_models(tiny_glue, results_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _uncached_hub_model_is_refused_quickly(tiny_glue, results_dir, capsys)
    assert "minilm-l6" in err and "local folder" in err, err


def test_unreachable_hub_is_detected_quickly(tiny_glue, results_dir, capsys, monkeypatch):
    """No offline flag, but no route to the hub: one short connection attempt, not minutes of retries."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    attempts = []

    def unreachable(address, timeout=None, *args, **kwargs):
        attempts.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    err = _uncached_hub_model_is_refused_quickly(tiny_glue, results_dir, capsys)
    assert "hub" in err and "unreachable" in err and "minilm-l6" in err, err
    assert attempts and attempts[0][0][1] == 443 and attempts[0][1] <= 3


def test_offline_default_model_of_glue(results_dir, tiny_glue, capsys, monkeypatch):
    """The design's first command, offline: the default model is not cached here."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    code = main(
        [
            "run",
            "--suite",
            "glue",
            "--task",
            "sst2",
            "--method",
            "dora",
            "--data-dir",
            str(tiny_glue),
            "--results",
            str(results_dir),
        ]
    )
    err = one_line_error(capsys)
    assert code == 2 and time.perf_counter() - start < 15
    assert "roberta-base" in err and "minilm-l6" in err, err
