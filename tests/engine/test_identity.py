"""A job's identity is exactly the experiment: what changes a result is in the job hash, what
does not stays out; models are identified by their content or hub revision; old stores are
re-keyed by `harness store upgrade`, never mixed with new rows."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from harness.core import digests
from harness.data.resolve import model_digest
from harness.engine.resolve import resolve
from harness.methods.base import METHODS, Method
from harness.results.compare import compare_stores, identity_key
from harness.results.store import read_results, result_files, write_row
from harness.spec.model_ref import ResolvedModel
from harness.spec.run import IDENTITY_KEYS, IDENTITY_VERSION, ResolvedRun, RunSpec
from harness.spec.schema import SCHEMA_VERSION
from tests.support import full_row


@pytest.fixture(autouse=True)
def _own_digest_cache(tmp_path, monkeypatch):
    """Each test gets an empty digest cache of its own (on disk and in memory)."""
    monkeypatch.setenv(digests.CACHE_ENV, str(tmp_path / "digest-cache"))
    monkeypatch.setattr(digests, "_MEMO", {})


def run(**overrides) -> ResolvedRun:
    """A fully resolved run with fixed values (no files needed), as `resolve()` makes it."""
    values = dict(
        suite="glue",
        task="sst2",
        method="lora:r=8",
        method_params=[{"method": "lora", "params": {"r": 8}}],
        method_versions=[1],
        model="roberta-base",
        model_hub_id="FacebookAI/roberta-base",
        model_location="FacebookAI/roberta-base",
        model_source="hub",
        model_digest="hub:e2da8e2f811d1448a5b465c236feacd80ffbac7b",
        seed=0,
        max_train_samples=4000,
        max_eval_samples=None,
        epochs=3.0,
        max_steps=None,
        lr=2e-3,
        batch_size=32,
        eval_batch_size=64,
        max_length=128,
        warmup_ratio=0.06,
        weight_decay=0.0,
        max_grad_norm=1.0,
        precision="fp32",
        lr_scheduler="linear",
        gradient_accumulation_steps=1,
        gradient_checkpointing=False,
        max_train_tokens=None,
        packing=False,
        train_data=None,
        num_fewshot=None,
        max_new_tokens=None,
        preset=None,
        kernel_profile=True,
        device="auto",
        device_type="cpu",
        latency_warmup=3,
        latency_repeats=20,
        data_dir="/mirror",
        data_sources={"train": "/mirror/nyu-mll/glue/sst2"},
        results_dir="results",
        harness_version="0.1.0",
    )
    values.update(overrides)
    return ResolvedRun(**values)


# Golden hashes of the current identity scheme (IDENTITY_VERSION 2). A change to how jobs are
# hashed changes them: then bump IDENTITY_VERSION and SCHEMA_VERSION, and teach
# `harness store upgrade` to re-key the rows of the old scheme.
GOLDEN = [
    ({}, "06ab1c55f7bd4a4e"),
    (dict(device_type="cuda", device="cuda:0"), "104126858549e192"),
    (dict(kernel_profile=False), "ff589328e841bdc1"),
    (dict(latency_repeats=200), "b6f1900fce6b01fa"),
    (
        dict(
            method="wanda:sparsity=0.5+lora",
            method_versions=[1, 1],
            method_params=[{"method": "wanda", "params": {"sparsity": 0.5}}, {"method": "lora", "params": {}}],
        ),
        "f21559e312d380eb",
    ),
    (
        dict(
            model="/models/bert",
            model_hub_id="/models/bert",
            model_location="/models/bert",
            model_source="path",
            model_digest="sha256:00112233445566778899",
        ),
        "e1d38e046970b7cf",
    ),
]


@pytest.mark.parametrize("overrides,expected", GOLDEN)
def test_fixed_runs_have_their_documented_hashes(overrides, expected):
    assert run(**overrides).job_hash == expected


def test_the_identity_is_versioned_and_holds_what_changes_a_result():
    identity = run().identity()
    assert identity["identity_version"] == IDENTITY_VERSION == 2
    for key in (
        "device_type",
        "kernel_profile",
        "latency_warmup",
        "latency_repeats",
        "method_versions",
        "model_digest",
    ):
        assert key in identity
    for key in ("harness_version", "method_params", "device", "model_location", "data_dir", "results_dir"):
        assert key not in identity
    assert set(identity) == set(IDENTITY_KEYS) | {"identity_version"}
    # The hash is sha256 over the canonical JSON of the identity, first 16 hex digits.
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    assert run().job_hash == hashlib.sha256(canonical.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    "change",
    [
        dict(device_type="cuda"),
        dict(kernel_profile=False),
        dict(latency_repeats=2),
        dict(latency_warmup=0),
        dict(method_versions=[2]),
        dict(model_digest="hub:0000000000000000000000000000000000000000"),
    ],
)
def test_what_changes_a_result_changes_the_hash(change):
    assert run(**change).job_hash != run().job_hash


@pytest.mark.parametrize(
    "change",
    [
        dict(harness_version="0.0.0+source"),
        dict(device="cuda:1", device_type="cpu"),
        dict(method_params=[{"method": "lora", "params": {"r": 8, "alpha": 16, "new_option": None}}]),
        dict(results_dir="/elsewhere", data_dir="/other-mirror", model_location="/copy/of/roberta"),
    ],
)
def test_what_does_not_change_a_result_leaves_the_hash(change):
    assert run(**change).job_hash == run().job_hash


def test_the_gpu_index_is_not_part_of_the_identity():
    assert run(device="cuda:0", device_type="cuda").job_hash == run(device="cuda:3", device_type="cuda").job_hash


# Through resolve(): the device, the method's code and the model as a job really sees them -----------


def resolved(tiny_model, tiny_glue, tmp_path, **spec):
    values = dict(
        suite="glue",
        task="sst2",
        method="lora",
        model=str(tiny_model),
        data_dir=str(tiny_glue),
        results_dir=str(tmp_path / "results"),
        max_steps=2,
    )
    values.update(spec)
    return resolve(RunSpec(**values))[0]


def test_cpu_and_cuda_runs_of_one_config_are_different_jobs(tiny_model, tiny_glue, tmp_path, monkeypatch):
    cpu = resolved(tiny_model, tiny_glue, tmp_path, device="cpu")
    cuda = resolved(tiny_model, tiny_glue, tmp_path, device="cuda:1")
    assert (cpu.device_type, cuda.device_type) == ("cpu", "cuda")
    assert cpu.job_hash != cuda.job_hash
    # "auto" is the device the job will run on.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolved(tiny_model, tiny_glue, tmp_path, device="auto").job_hash == cuda.job_hash
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolved(tiny_model, tiny_glue, tmp_path, device="auto").job_hash == cpu.job_hash


def test_kernel_profile_and_latency_settings_are_part_of_the_job(tiny_model, tiny_glue, tmp_path):
    base = resolved(tiny_model, tiny_glue, tmp_path, device="cpu")
    assert resolved(tiny_model, tiny_glue, tmp_path, device="cpu", kernel_profile=False).job_hash != base.job_hash
    assert resolved(tiny_model, tiny_glue, tmp_path, device="cpu", latency_repeats=200).job_hash != base.job_hash
    assert resolved(tiny_model, tiny_glue, tmp_path, device="cpu", latency_warmup=10).job_hash != base.job_hash


def _lora_variant(monkeypatch, **attributes):
    """Register, in place of LoRA, a subclass with the given class attributes."""
    lora = METHODS.get("lora")
    variant = type("LoRAVariant", (lora,), attributes)
    monkeypatch.setitem(METHODS._entries, "lora", variant)
    return variant


def test_a_new_parameter_whose_default_keeps_the_old_behaviour_keeps_the_hash(
    tiny_model, tiny_glue, tmp_path, monkeypatch
):
    before = resolved(tiny_model, tiny_glue, tmp_path, device="cpu")
    lora = METHODS.get("lora")
    params = type("Params", (lora.Params,), {"__annotations__": {"new_option": bool}, "new_option": False})
    _lora_variant(monkeypatch, Params=params)
    after = resolved(tiny_model, tiny_glue, tmp_path, device="cpu")
    assert "new_option" in after.method_params[0]["params"]  # the row still shows every parameter
    assert after.job_hash == before.job_hash
    # Setting it is a different experiment.
    assert (
        resolved(tiny_model, tiny_glue, tmp_path, device="cpu", method="lora:new_option=true").job_hash
        != before.job_hash
    )


def test_bumping_a_methods_version_makes_its_old_jobs_stale(tiny_model, tiny_glue, tmp_path, monkeypatch):
    assert Method.version == 1  # a method starts at 1
    wanda, lora = METHODS.get("wanda").version, METHODS.get("lora").version
    before = resolved(tiny_model, tiny_glue, tmp_path, device="cpu", method="wanda+lora")
    _lora_variant(monkeypatch, version=lora + 1)
    after = resolved(tiny_model, tiny_glue, tmp_path, device="cpu", method="wanda+lora")
    assert (before.method_versions, after.method_versions) == ([wanda, lora], [wanda, lora + 1])
    assert after.job_hash != before.job_hash


def test_running_from_a_source_tree_does_not_change_the_hash(tiny_model, tiny_glue, tmp_path):
    installed = resolved(tiny_model, tiny_glue, tmp_path, device="cpu")
    source_tree = installed.model_copy(update={"harness_version": "0.0.0+source"})
    assert source_tree.job_hash == installed.job_hash


# Models by content ------------------------------------------------------------------------------


def _resave(folder: Path, seed: int) -> None:
    """Rewrite the folder's weights with other values of the same shapes (same file size)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    model.save_pretrained(folder)


def test_rewritten_weights_in_the_same_folder_are_another_model(tiny_model, tiny_glue, tmp_path):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_model, folder)
    first = resolved(folder, tiny_glue, tmp_path, device="cpu")
    size = (folder / "model.safetensors").stat().st_size
    _resave(folder, seed=1)
    assert (folder / "model.safetensors").stat().st_size == size
    second = resolved(folder, tiny_glue, tmp_path, device="cpu")
    assert second.model_digest != first.model_digest and second.job_hash != first.job_hash


def test_a_rewrite_that_keeps_size_and_mtime_is_still_seen(tmp_path, monkeypatch):
    """Tools that copy modification times (cp -p, rsync -t) must not make a new file look cached."""
    monkeypatch.setattr(digests, "RACY_SECONDS", 0.0)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"a" * 1000)
    os.utime(weights, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    first = digests.file_digest(weights)
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    assert digests.file_digest(weights) != first == hashlib.sha256(b"a" * 1000).hexdigest()


def test_the_same_weights_in_two_folders_are_one_model(tiny_model, tiny_glue, tmp_path):
    import shutil

    copy = tmp_path / "copy-of-tiny-bert"
    shutil.copytree(tiny_model, copy)
    a, b = resolved(tiny_model, tiny_glue, tmp_path, device="cpu"), resolved(copy, tiny_glue, tmp_path, device="cpu")
    assert a.model_location != b.model_location
    assert a.model_digest == b.model_digest and a.job_hash == b.job_hash


def _model_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"\x00\x01weights")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (folder / "README.md").write_text("notes")  # documentation: not part of the model
    (folder / "optimizer.pt").write_bytes(b"resume state")  # a trainer's resume state: not the model
    return folder


def test_a_folder_digest_is_sha256_over_its_model_files(tmp_path):
    folder = _model_folder(tmp_path / "m")
    lines = "".join(
        f"{name}\t{hashlib.sha256((folder / name).read_bytes()).hexdigest()}\n"
        for name in ("config.json", "model.safetensors", "vocab.txt")
    )
    expected = "sha256:" + hashlib.sha256(lines.encode()).hexdigest()[:16]
    model = ResolvedModel(str(folder), str(folder), str(folder), "path")
    assert model_digest(model) == expected
    (folder / "README.md").write_text("other notes")
    assert model_digest(model) == expected
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n")  # the tokenizer changes the inputs
    assert model_digest(model) != expected


def test_the_digest_cache_spares_rereading_unchanged_files(tmp_path, monkeypatch):
    monkeypatch.setattr(digests, "RACY_SECONDS", 0.0)
    reads = []
    real = digests._hash_file
    monkeypatch.setattr(digests, "_hash_file", lambda path: reads.append(Path(path).name) or real(path))
    folder = _model_folder(tmp_path / "m")
    model = ResolvedModel(str(folder), str(folder), str(folder), "path")
    first = model_digest(model)
    assert sorted(reads) == ["config.json", "model.safetensors", "vocab.txt"]
    monkeypatch.setattr(digests, "_MEMO", {})  # a new process: only the cache on disk
    assert model_digest(model) == first and len(reads) == 3
    assert (Path(os.environ[digests.CACHE_ENV]) / digests.CACHE_FILE).is_file()
    (folder / "model.safetensors").write_bytes(b"\x00\x02weights")  # same size, new content
    assert model_digest(model) != first and reads[3:] == ["model.safetensors"]


def test_a_file_changed_just_now_is_hashed_but_not_cached(tmp_path, monkeypatch):
    """Within one timestamp tick a second write cannot be told from the first."""
    reads = []
    real = digests._hash_file
    monkeypatch.setattr(digests, "_hash_file", lambda path: reads.append(path) or real(path))
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"fresh")
    digests.file_digest(weights)
    digests.file_digest(weights)
    assert len(reads) == 2


def test_an_unwritable_cache_costs_time_only(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv(digests.CACHE_ENV, str(blocker / "cache"))
    monkeypatch.setattr(digests, "RACY_SECONDS", 0.0)
    monkeypatch.setattr(digests, "_WARNED", False)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x" * 10)
    with caplog.at_level("WARNING", logger="harness.core.digests"):
        assert digests.file_digest(weights) == hashlib.sha256(b"x" * 10).hexdigest()
        (tmp_path / "v.bin").write_bytes(b"y")
        digests.file_digest(tmp_path / "v.bin")
    assert len([r for r in caplog.records if "digest cache" in r.getMessage()]) == 1


def _fake_hub_cache(root: Path, repo_id: str, commit: str) -> Path:
    folder = root / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / "config.json").write_text("{}")
    return root


def test_a_hub_model_is_identified_by_the_revision_its_cache_holds(tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "e2da8e2f811d1448a5b465c236feacd80ffbac7b"
    monkeypatch.setattr(
        huggingface_hub.constants, "HF_HUB_CACHE", str(_fake_hub_cache(tmp_path / "hub", "org/model", commit))
    )
    assert model_digest(ResolvedModel("org/model", "org/model", "org/model", "hub")) == f"hub:{commit}"
    assert model_digest(ResolvedModel("org/other", "org/other", "org/other", "hub")) == "hub:unresolved"


def test_checkpoints_and_random_init_models_have_digests(tmp_path):
    ckpt = tmp_path / "ckpt.pth"
    ckpt.write_bytes(b"state dict")
    assert (
        model_digest(ResolvedModel(str(ckpt), "x", str(ckpt), "checkpoint"))
        == "sha256:" + hashlib.sha256(b"state dict").hexdigest()[:16]
    )
    assert (
        model_digest(ResolvedModel("vit-tiny", "random-init:vit-tiny", "random-init:vit-tiny", "random-init"))
        == "random-init"
    )


# Compare matches by the same identity ----------------------------------------------------------


def _row(r: ResolvedRun, **columns) -> dict:
    row = full_row(
        job_hash=r.job_hash,
        run_id=columns.pop("run_id", "r1"),
        suite=r.suite,
        task=r.task,
        method=r.method,
        model=r.model,
        model_hub_id=r.model_hub_id,
        seed=r.seed,
        config=r.model_dump_json(),
        status="ok",
        error=None,
        traceback=None,
        metric="accuracy",
        score=0.9,
        device_name="x",
        model_digest=r.model_digest,
        identity_upgraded_from=None,
    )
    row.update(columns)
    return row


def test_compare_never_matches_a_cpu_run_with_a_gpu_run(tmp_path):
    cpu, gpu = run(device_type="cpu"), run(device_type="cuda", device="cuda:0")
    assert identity_key(_row(cpu)) == cpu.job_hash != identity_key(_row(gpu)) == gpu.job_hash
    base, new = tmp_path / "base", tmp_path / "new"
    write_row(_row(cpu), base)
    write_row(_row(gpu), new)
    assert {c.note for c in compare_stores(base, new).changes} == {"missing in new", "new run"}


# Old stores -------------------------------------------------------------------------------------

# What ResolvedRun held before identities were versioned, and how jobs were hashed then.
V1_FIELDS_ADDED = ("method_versions", "model_digest", "device_type")
V1_IDENTITY = (
    "suite",
    "task",
    "method",
    "method_params",
    "model_hub_id",
    "seed",
    "data_seed",
    "max_train_samples",
    "max_eval_samples",
    "epochs",
    "max_steps",
    "lr",
    "batch_size",
    "eval_batch_size",
    "max_length",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "precision",
    "harness_version",
    "lr_scheduler",
    "gradient_accumulation_steps",
    "gradient_checkpointing",
    "max_train_tokens",
    "packing",
    "train_data",
    "num_fewshot",
    "max_new_tokens",
)


def v1_row(r: ResolvedRun, device: str, run_id: str, drop=()) -> dict:
    """A row as the harness wrote it before identities were versioned (schema 1)."""
    config = {k: v for k, v in json.loads(r.model_dump_json()).items() if k not in V1_FIELDS_ADDED + tuple(drop)}
    if config["model_source"] == "path":
        config["model_hub_id"] = config["model_location"]  # a local folder was named by its path
    identity = {k: config.get(k) for k in V1_IDENTITY}
    old_hash = hashlib.sha256(
        json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()[:16]
    row = _row(
        r,
        run_id=run_id,
        job_hash=old_hash,
        config=json.dumps(config),
        schema_version=1,
        device=device,
        model_digest=None,
        model_hub_id=config["model_hub_id"],
    )
    return row


def test_store_upgrade_rekeys_old_rows_exactly(tiny_model, tiny_glue, tmp_path, capsys):
    from harness.cli import main

    cpu = resolved(tiny_model, tiny_glue, tmp_path, device="cpu")
    cuda = resolved(tiny_model, tiny_glue, tmp_path, device="cuda")
    store = tmp_path / "old-store"
    # One config run on a CPU and on a GPU: one job under the old identity.
    old_cpu, old_gpu = v1_row(cpu, "cpu", "a1"), v1_row(cpu.model_copy(update={"device": "auto"}), "cuda:0", "a2")
    assert old_cpu["job_hash"] == old_gpu["job_hash"]
    # A row from before kernel profiling and the causal-LM options existed.
    older = v1_row(
        cpu,
        "cpu",
        "a3",
        drop=(
            "kernel_profile",
            "lr_scheduler",
            "gradient_accumulation_steps",
            "gradient_checkpointing",
            "max_train_tokens",
            "packing",
            "train_data",
            "num_fewshot",
            "max_new_tokens",
            "preset",
        ),
    )
    for row in (old_cpu, old_gpu, older):
        write_row(row, store)
    kernels = store / "_kernels" / f"{old_cpu['job_hash']}.parquet"
    kernels.parent.mkdir()
    kernels.write_bytes(b"kernel table")

    before = result_files(store)
    assert main(["store", "upgrade", "--results", str(store), "--dry-run"]) == 0
    assert result_files(store) == before and "3 rows would be re-keyed" in capsys.readouterr().out

    assert main(["store", "upgrade", "--results", str(store)]) == 0
    out = capsys.readouterr().out
    assert "3 rows re-keyed" in out
    df = read_results(store).set_index("run_id")
    assert len(result_files(store)) == 3
    assert df.loc["a1", "job_hash"] == cpu.job_hash  # exactly what a job resolved today gets
    assert df.loc["a2", "job_hash"] == cuda.job_hash != cpu.job_hash
    assert df.loc["a3", "job_hash"] == cpu.model_copy(update={"kernel_profile": False}).job_hash  # no profiling then
    assert set(df["schema_version"]) == {SCHEMA_VERSION}
    assert dict(df["identity_upgraded_from"]) == {
        "a1": old_cpu["job_hash"],
        "a2": old_cpu["job_hash"],
        "a3": older["job_hash"],
    }
    assert set(df["model_digest"]) == {cpu.model_digest} and set(df["model_hub_id"]) == {cpu.model_hub_id}
    for run_id, row in df.iterrows():
        assert ResolvedRun.model_validate_json(row["config"]).job_hash == row["job_hash"]
        assert (store / "glue" / "sst2" / f"{row['job_hash']}-{run_id}.parquet").is_file()
    # The kernel table's old hash stood for two experiments now told apart: it is left where it was.
    assert kernels.is_file() and "kernel table" in out

    # A second upgrade has nothing to do.
    assert main(["store", "upgrade", "--results", str(store)]) == 0
    assert "0 rows re-keyed" in capsys.readouterr().out


def test_store_upgrade_gives_an_old_kernel_table_to_the_run_that_wrote_it(tiny_model, tiny_glue, tmp_path):
    import pyarrow as pa

    from harness.results.store import kernel_table_path
    from harness.results.upgrade import upgrade_store

    cpu = resolved(tiny_model, tiny_glue, tmp_path, device="cpu")
    store = tmp_path / "old"
    first, latest = v1_row(cpu, "cpu", "b1"), v1_row(cpu, "cpu", "b2")
    first["created_at"] = first["created_at"].replace(year=2025)  # b2 ran later: it wrote the table last
    for row in (first, latest):
        write_row(row, store)
    legacy = store / "_kernels" / f"{first['job_hash']}.parquet"
    legacy.parent.mkdir()
    pq.write_table(pa.table({"job_hash": [first["job_hash"]] * 2, "phase": ["train", "inference"]}), legacy)
    summary = upgrade_store(store)
    assert summary.rekeyed == 2 and summary.kernel_tables_moved == 1 and not legacy.exists()
    table = pq.read_table(kernel_table_path(str(store), cpu.job_hash, "b2")).to_pylist()
    assert table == [
        {"job_hash": cpu.job_hash, "phase": "train", "run_id": "b2"},
        {"job_hash": cpu.job_hash, "phase": "inference", "run_id": "b2"},
    ]


def test_store_upgrade_keeps_a_row_whose_model_is_gone_apart(tiny_model, tiny_glue, tmp_path):
    from harness.results.upgrade import upgrade_store

    cpu = resolved(tiny_model, tiny_glue, tmp_path, device="cpu")
    gone = cpu.model_copy(
        update={"model_location": str(tmp_path / "deleted"), "model_hub_id": str(tmp_path / "deleted")}
    )
    store = tmp_path / "old"
    write_row(v1_row(gone, "cpu", "c1"), store)
    summary = upgrade_store(store)
    [row] = read_results(store).to_dict("records")
    assert row["model_digest"] == "unavailable" and summary.models_unavailable == 1
    assert row["job_hash"] != cpu.job_hash  # it can never pass for a run of a model that exists


def test_store_upgrade_refuses_a_store_from_a_newer_harness(tmp_path):
    from harness.cli import main

    r = run()
    write_row(_row(r, schema_version=SCHEMA_VERSION + 1), tmp_path / "s")
    assert main(["store", "upgrade", "--results", str(tmp_path / "s")]) == 2


def test_compare_matches_an_old_row_to_its_new_run(tiny_model, tiny_glue, tmp_path):
    cpu = resolved(tiny_model, tiny_glue, tmp_path, device="cpu")
    assert identity_key(v1_row(cpu, "cpu", "d1")) == cpu.job_hash
    assert identity_key(v1_row(cpu, "cuda:0", "d2")) != cpu.job_hash


def test_upgraded_files_replace_the_old_ones_only_after_they_are_written(tiny_model, tiny_glue, tmp_path, monkeypatch):
    from harness.results import upgrade as store_upgrade

    cpu = resolved(tiny_model, tiny_glue, tmp_path, device="cpu")
    store = tmp_path / "old"
    old_path = write_row(v1_row(cpu, "cpu", "e1"), store)

    def broken_write(rows, path):
        raise OSError("disk full")

    monkeypatch.setattr(store_upgrade, "write_rows", broken_write)
    with pytest.raises(OSError):
        store_upgrade.upgrade_store(store)
    assert result_files(store) == [old_path] and pq.read_table(old_path).num_rows == 1


def test_a_sweep_never_counts_an_old_row_as_a_new_job_done(tiny_model, tiny_glue, tmp_path):
    """Before the upgrade the old row is another job; after it, the row is keyed as the job but
    measured by an older harness, so the sweep still runs the job again."""
    from harness.results.store import job_status
    from harness.results.upgrade import upgrade_store

    cpu = resolved(tiny_model, tiny_glue, tmp_path, device="cpu")
    store = tmp_path / "old"
    old = v1_row(cpu, "cpu", "f1")
    write_row(old, store)
    assert cpu.job_hash not in job_status(store) and old["job_hash"] in job_status(store)
    upgrade_store(store)
    assert job_status(store) == {}
    assert list(read_results(store)["job_hash"]) == [cpu.job_hash]
