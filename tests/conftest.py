"""Offline fixtures made by the tests themselves: a tiny random BERT with its own
WordPiece vocabulary, and a tiny GLUE mirror laid out like the hub's Parquet files."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HARNESS_NO_PROGRESS", "1")

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


def _sentence(rng: random.Random, positive: bool) -> str:
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
            {"sentence": [_sentence(rng, bool(y)) for y in labels], "label": labels, "idx": list(range(n))},
            single,
        )
        write_split(
            root,
            "cola",
            split,
            {"sentence": [_sentence(rng, bool(y)) for y in labels], "label": labels, "idx": list(range(n))},
            single,
        )
        s1 = [_sentence(rng, bool(y)) for y in labels]
        write_split(
            root,
            "mrpc",
            split,
            {
                "sentence1": s1,
                "sentence2": [_sentence(rng, bool(y)) for y in labels],
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
                "premise": [_sentence(rng, True) for _ in labels],
                "hypothesis": [_sentence(rng, y == 0) for y in labels],
                "label": labels,
                "idx": list(range(n)),
            },
            mnli,
        )
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_glue(tmp_path_factory) -> Path:
    return make_tiny_glue(tmp_path_factory.mktemp("mirror"))


@pytest.fixture()
def results_dir(tmp_path) -> Path:
    return tmp_path / "results"


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


@pytest.fixture()
def model(tiny_model):
    """A fresh tiny BERT classifier (2 labels), in eval mode."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).eval()


@pytest.fixture(scope="session")
def train_data(tiny_model, tiny_glue):
    """The tiny SST-2 training split, tokenized, as the training loop takes it."""
    from transformers import AutoTokenizer

    from harness.resolve import load_split, locate_split
    from harness.suite import SUITES

    suite = SUITES.get("glue")()
    split = load_split(locate_split("nyu-mll/glue", "sst2", "train", tiny_glue))
    return suite.prepare(split, AutoTokenizer.from_pretrained(tiny_model), suite.get_task("sst2"), 32)


def loss_before_after(pipeline, model, ctx, data, steps: int) -> tuple[float, float]:
    """Apply the pipeline, then the eval-mode loss on 32 training examples before and after
    `steps` steps of the harness's training loop (dropout off for both measurements:
    some initialisers leave train mode on)."""
    import torch

    from harness.train import train

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


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gsm8k(tmp_path_factory) -> Path:
    return make_tiny_gsm8k(tmp_path_factory.mktemp("gsm8k-mirror"))
