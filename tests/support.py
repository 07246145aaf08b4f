"""Builders the tests share: tiny models, tiny data mirrors, result rows and command lines. Fixtures that
use them are in conftest.py; no test module imports another."""

from __future__ import annotations

import functools
import itertools
import json
import random
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import yaml

from harness.cli import main
from harness.data.vision_models import resnet20
from harness.engine.loop import train
from harness.methods.base import MethodContext
from harness.results.store import write_row
from harness.spec.run import ResolvedRun
from harness.spec.schema import COLUMNS, SCHEMA_VERSION

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def report_row(method, score, trainable, memory, seconds, run_id, status="ok", device="cpu-x", **inference):
    return full_row(
        method=method,
        score=score,
        trainable_params=trainable,
        total_params=10**6,
        peak_memory_bytes=memory,
        train_seconds=seconds,
        run_id=run_id,
        job_hash=f"h{run_id}",
        status=status,
        device_name=device,
        peak_memory_kind="cpu_peak_rss_reset",
        metric="accuracy",
        error=None if status == "ok" else "RuntimeError: x",
        **{
            "flops_per_sample": None,
            "latency_bs1_p50_ms": None,
            "compression_kernel": None,
            "ttft_bs1_p50_ms": None,
            "generation_batch_tokens_per_s": None,
            "concurrent_jobs": 1,
            "init_seconds": 0.0,
            **inference,
        },
    )


MODEL = "bert-base-uncased"


DEVICE = "NVIDIA H100 80GB HBM3"


_run_ids = itertools.count()


def resolved(method="lora:r=8", seed=0, **overrides) -> ResolvedRun:
    """A run as `resolve()` makes it, so that the config column is what a job really writes."""
    values = dict(
        suite="glue",
        task="sst2",
        method=method,
        method_params=[{"method": method.split(":")[0], "params": {}}],
        model=MODEL,
        model_hub_id=MODEL,
        model_location=f"/mirror/models/{MODEL}",
        model_source="mirror",
        seed=seed,
        max_train_samples=2000,
        max_eval_samples=None,
        epochs=1.0,
        max_steps=None,
        lr=3e-4,
        batch_size=32,
        eval_batch_size=64,
        max_length=128,
        warmup_ratio=0.06,
        weight_decay=0.0,
        max_grad_norm=1.0,
        precision="bf16",
        lr_scheduler="linear",
        gradient_accumulation_steps=1,
        gradient_checkpointing=False,
        max_train_tokens=None,
        packing=False,
        train_data=None,
        num_fewshot=None,
        max_new_tokens=None,
        preset=None,
        device="auto",
        latency_warmup=3,
        latency_repeats=20,
        data_dir="/mirror",
        data_sources={"train": "mirror"},
        results_dir="results",
        harness_version="0.4.0",
        method_versions=[1],
        model_digest="hub:0123abcd",
        device_type="cuda",
    )
    values.update(overrides)
    return ResolvedRun(**values)


def run_row(method="lora:r=8", seed=0, config=None, **columns):
    """A complete ok result row of one run with realistic costs; `columns` override any of them."""
    run = resolved(method, seed, **(config or {}))
    row = full_row(
        job_hash=run.job_hash,
        run_id=f"r{next(_run_ids)}",
        suite=run.suite,
        task=run.task,
        method=run.method,
        model=run.model,
        model_hub_id=run.model_hub_id,
        seed=run.seed,
        config=run.model_dump_json(),
        status="ok",
        error=None,
        traceback=None,
        metric="accuracy",
        score=0.90,
        harness_version=run.harness_version,
        device_name=DEVICE,
        git_commit="1111111",
        train_seconds=100.0,
        peak_memory_bytes=3 * 2**30,
        latency_bs1_p50_ms=10.0,
        latency_bs1_p90_ms=10.4,
        latency_batch_p50_ms=40.0,
        latency_batch_p90_ms=41.0,
        ttft_bs1_p50_ms=None,
        trainable_params=600_000,
        model_bytes=438_000_000,
        compressed_model_bytes=None,
        flops_per_sample=2.2e10,
        concurrent_jobs=1,
        device="cuda:0",
    )
    row.update(columns)
    return row


def store(path, *rows):
    path.mkdir(parents=True, exist_ok=True)
    for row in rows:
        write_row(row, path)
    return path


def cpu_nightly(tmp_path: Path, model: Path, mirror: Path, methods=("none", "bitfit"), seeds=(0,), **defaults) -> Path:
    """configs/nightly-cpu.yaml with the tiny fixtures in place of its model and data, and its grid
    cut to a few quick jobs (the tiny mirror has SST-2 only, and each job is a process of its own):
    `methods` x `seeds` on SST-2; `defaults` override the cut-down settings below."""
    config = yaml.safe_load((CONFIGS / "nightly-cpu.yaml").read_text())
    [glue] = [g for g in config["grid"] if g["suite"] == "glue"]
    config["grid"] = [{**glue, "model": str(model), "task": "sst2", "method": list(methods), "seed": list(seeds)}]
    config.pop("runs", None)
    config["defaults"].update(max_steps=2, max_train_samples=32, max_eval_samples=16, latency_repeats=1)
    config["defaults"].update(defaults)
    config["data_dir"] = str(mirror)
    path = tmp_path / "nightly-cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def full_row(**overrides):
    values = {
        pa.bool_(): True,
        pa.int32(): 1,
        pa.int64(): 7,
        pa.float64(): 0.25,
        pa.string(): "x",
        pa.timestamp("us", tz="UTC"): datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    }
    row = {c.name: values[c.type] for c in COLUMNS}
    row.update(
        schema_version=SCHEMA_VERSION,
        suite="glue",
        task="sst2",
        job_hash="abc",
        run_id="r1",
        method_params=json.dumps([{"method": "lora", "params": {"r": 8}}]),
        identity_upgraded_from=None,
    )
    row.update(overrides)
    return row


def ctx(steps: int = 100) -> MethodContext:
    return MethodContext(task_type="seq_cls", head_modules=("classifier",), total_steps=steps, lr=1e-3, seed=0)


def resnet20_parameter_count(num_classes: int = 10) -> int:
    """6n+2 layers, n=3: a 3x3 stem, three stages of three blocks (two 3x3 convs + two BNs each), a linear head."""
    conv = lambda cin, cout: cin * cout * 9  # noqa: E731 - 3x3, no bias
    bn = lambda c: 2 * c  # noqa: E731 - weight and bias (running stats are buffers)
    total = conv(3, 16) + bn(16)
    cin = 16
    for width in (16, 32, 64):
        for _ in range(3):
            total += conv(cin, width) + bn(width) + conv(width, width) + bn(width)
            cin = width
    return total + 64 * num_classes + num_classes


def save_resnet20_checkpoint(path: Path, num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = resnet20(num_classes)
    with torch.no_grad():  # non-trivial BN statistics, so that loading them is tested too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"net": model.state_dict(), "acc": 0.0, "epoch": 0}, path)
    return model.eval()


def tiny_image_dataset(n: int, classes: int = 10, label_column: str = "label", seed: int = 0):
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    images = [PILImage.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
    features = Features({"img": Image(), label_column: ClassLabel(names=[f"c{i}" for i in range(classes)])})
    return Dataset.from_dict({"img": images, label_column: [i % classes for i in range(n)]}, features=features)


def run_cifar(ckpt: Path, mirror: Path, results: Path, *extra: str) -> int:
    return main(
        [
            "run",
            "--suite",
            "cifar",
            "--task",
            "cifar10",
            "--model",
            str(ckpt),
            "--data-dir",
            str(mirror),
            "--results",
            str(results),
            "--quiet",
            "--latency-repeats",
            "2",
            *extra,
        ]
    )


POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun"]


NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "sad"]


FILLER = ["the", "movie", "film", "plot", "was", "is", "a", "very", "and", "story", "acting", "cast"]


WORDS = POSITIVE + NEGATIVE + FILLER


# A wide initialisation makes the random features informative, so that adapters on a frozen
# random base can still lower the loss in a few steps.
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, initializer_range=0.5)


def make_tiny_bert(directory: Path, **overrides) -> Path:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    import inspect

    # transformers 5 takes the vocabulary as `vocab`; 4.x as `vocab_file`.
    key = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    tokenizer = BertTokenizerFast(**{key: str(directory / "vocab.txt")}, do_lower_case=True)
    assert tokenizer.unk_token_id not in tokenizer(" ".join(WORDS))["input_ids"], "test vocabulary not applied"
    config = BertConfig(vocab_size=len(vocab), max_position_embeddings=64, **{**TINY, **overrides})
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def sentence(rng: random.Random, positive: bool) -> str:
    words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if positive else NEGATIVE)]
    rng.shuffle(words)
    return " ".join(words)


def write_split(root: Path, config: str, split: str, columns: dict, features) -> None:
    from datasets import Dataset

    folder = root / "nyu-mll" / "glue" / config
    folder.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(columns, features=features).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))


def make_tiny_glue(root: Path, n_train: int = 96, n_eval: int = 48) -> Path:
    from datasets import ClassLabel, Features, Value

    rng = random.Random(0)
    single = Features(
        {"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"]), "idx": Value("int32")}
    )
    pair = Features(
        {
            "sentence1": Value("string"),
            "sentence2": Value("string"),
            "label": ClassLabel(names=["not_equivalent", "equivalent"]),
            "idx": Value("int32"),
        }
    )
    for split, n in (("train", n_train), ("validation", n_eval)):
        labels = [i % 2 for i in range(n)]
        write_split(
            root,
            "sst2",
            split,
            {"sentence": [sentence(rng, bool(y)) for y in labels], "label": labels, "idx": list(range(n))},
            single,
        )
        write_split(
            root,
            "cola",
            split,
            {"sentence": [sentence(rng, bool(y)) for y in labels], "label": labels, "idx": list(range(n))},
            single,
        )
        s1 = [sentence(rng, bool(y)) for y in labels]
        write_split(
            root,
            "mrpc",
            split,
            {
                "sentence1": s1,
                "sentence2": [sentence(rng, bool(y)) for y in labels],
                "label": labels,
                "idx": list(range(n)),
            },
            pair,
        )
        stsb = Features(
            {
                "sentence1": Value("string"),
                "sentence2": Value("string"),
                "label": Value("float32"),
                "idx": Value("int32"),
            }
        )
        write_split(
            root,
            "stsb",
            split,
            {
                "sentence1": s1,
                "sentence2": s1,
                "label": [float(rng.uniform(0, 5)) for _ in labels],
                "idx": list(range(n)),
            },
            stsb,
        )
    mnli = Features(
        {
            "premise": Value("string"),
            "hypothesis": Value("string"),
            "label": ClassLabel(names=["entailment", "neutral", "contradiction"]),
            "idx": Value("int32"),
        }
    )
    for split, n in (("train", n_train), ("validation_matched", n_eval), ("validation_mismatched", n_eval)):
        labels = [i % 3 for i in range(n)]
        write_split(
            root,
            "mnli",
            split,
            {
                "premise": [sentence(rng, True) for _ in labels],
                "hypothesis": [sentence(rng, y == 0) for y in labels],
                "label": labels,
                "idx": list(range(n)),
            },
            mnli,
        )
    return root


def tiny_run_args(model: Path, mirror: Path, results: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--suite",
        "glue",
        "--task",
        "sst2",
        "--model",
        str(model),
        "--data-dir",
        str(mirror),
        "--results",
        str(results),
        "--max-steps",
        "4",
        "--batch-size",
        "16",
        "--latency-repeats",
        "2",
        "--quiet",
        *extra,
    ]


def loss_before_after(pipeline, model, ctx, data, steps: int) -> tuple[float, float]:
    """Apply the pipeline, then the eval-mode loss on 32 training examples before and after
    `steps` steps of the harness's training loop (dropout off for both measurements:
    some initialisers leave train mode on)."""
    import torch

    batch = data.collate([data.dataset[i] for i in range(32)])
    wrapped = pipeline.apply(model, ctx).eval()
    with torch.no_grad():
        before = wrapped(**batch).loss.item()
    train(
        wrapped,
        data,
        pipeline,
        ctx,
        batch_size=16,
        steps=steps,
        warmup_ratio=0.0,
        max_grad_norm=1.0,
        precision="fp32",
        device=torch.device("cpu"),
        seed=0,
        show_progress=False,
    )
    wrapped.eval()
    with torch.no_grad():
        return before, wrapped(**batch).loss.item()


# A tiny causal LM for suite gsm8k: a random Llama with its own byte-level BPE vocabulary.
NAMES = ["Tom", "Ann", "Raj", "Mia", "Li", "Sam"]


THINGS = ["apples", "pens", "books", "coins", "cards"]


def gsm8k_example(rng: random.Random) -> dict[str, str]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    question = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
    answer = f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {thing}.\n#### {a + b}"
    return {"question": question, "answer": answer}


def make_tiny_gsm8k(root: Path, n_train: int = 48, n_test: int = 12) -> Path:
    from datasets import Dataset

    rng = random.Random(0)
    folder = root / "openai" / "gsm8k" / "main"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = [gsm8k_example(rng) for _ in range(n)]
        Dataset.from_list(rows).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return root


def make_tiny_llama(directory: Path, max_positions: int = 512) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    corpus = [f"Question: {e['question']}\nAnswer: {e['answer']}" for e in (gsm8k_example(rng) for _ in range(200))]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<pad>", "<eos>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def scripted_gsm8k_lm():
    """An lm-eval LM that answers the first five gsm8k documents with responses of known scores:
    strict needs '#### N' (the first match), flexible takes the last number; ',', '$' and a final
    '.' are ignored."""
    from lm_eval.api.model import LM

    def respond(doc_id: int, target: int) -> str:
        return [
            f"so {target} in all.\n#### {target}",  # strict and flexible
            f"The answer is {target}.",  # flexible only (a final '.' is ignored)
            f"#### {target + 1}",  # neither
            f"It costs ${target}",  # flexible only ('$' is ignored)
            f"#### {target}\n\nThen 999 more",  # strict only: flexible takes the last number
        ][doc_id]

    class Scripted(LM):
        def generate_until(self, requests, disable_tqdm=False):
            return [respond(r.doc_id, int(r.doc["answer"].split("#### ")[-1])) for r in requests]

        def loglikelihood(self, requests, disable_tqdm=False):
            raise AssertionError("gsm8k is generative")

        loglikelihood_rolling = loglikelihood

    return Scripted()


@functools.lru_cache(maxsize=1)
def lm_eval_index():
    """lm-eval's own task index, built here once (not the harness's cached one)."""
    from lm_eval.tasks import TaskManager

    return TaskManager().task_index


def reference_config(task: str, root: Path, splits: dict[str, str], folder: str, **overrides) -> dict:
    """lm-eval's stock YAML of `task` with its data read from Parquet files under root/folder, written
    out by hand (not through the harness): `splits` maps lm-eval split names to file stems."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = lm_eval_index()[task]
    config = load_yaml(entry.yaml_path)
    files = {split: sorted(str(p) for p in (root / folder).glob(f"{stem}-*.parquet")) for split, stem in splits.items()}
    config.update(dataset_path="parquet", dataset_name=None, dataset_kwargs={"data_files": files}, **overrides)
    return config
