"""Causal-LM training pairs: lm-eval tasks' training splits in the form lm-eval scores them, hub
data sets in the Alpaca template or lm-eval's gsm8k format, and where the loss is taken."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.core.errors import HarnessError

pytest.importorskip("lm_eval")

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared data mirror at {SHARED}")

# Stanford Alpaca's PROMPT_DICT (tatsu-lab/stanford_alpaca train.py), written out here so that the
# test checks the text itself, not the module's constant.
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def arc_rows(n: int, offset: int) -> list[dict]:
    return [
        {
            "id": f"q{offset + i}",
            "question": f"Which answer to question {offset + i} is right?",
            "choices": {
                "text": [f"red {offset + i}", f"green {offset + i}", f"blue {offset + i}", f"gold {offset + i}"],
                "label": ["A", "B", "C", "D"] if i % 2 else ["1", "2", "3", "4"],
            },
            "answerKey": ("ABCD" if i % 2 else "1234")[(offset + i) % 4],
        }
        for i in range(n)
    ]


def write_arc(root: Path, splits: dict[str, list[dict]]) -> Path:
    from datasets import Dataset

    folder = root / "allenai" / "ai2_arc" / "ARC-Easy"
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        Dataset.from_list(rows).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.fixture(scope="module")
def tiny_arc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("arc-mirror")
    return write_arc(root, {"train": arc_rows(7, 0), "validation": arc_rows(3, 100), "test": arc_rows(4, 200)})


@pytest.fixture(scope="module")
def arc_and_gsm8k_without_arc_train(tmp_path_factory) -> Path:
    """ARC-Easy without a training split beside a gsm8k with one."""
    from tests.support import make_tiny_gsm8k

    root = tmp_path_factory.mktemp("mixed-mirror")
    write_arc(root, {"validation": arc_rows(3, 100), "test": arc_rows(4, 200)})
    return make_tiny_gsm8k(root, n_train=5, n_test=3)


def parquet_rows(root: Path, folder: str, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(root / folder / f"{split}-00000-of-00001.parquet").to_pylist()


def gold_text(row: dict) -> str:
    return row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])]


def rendered(tasks, table) -> tuple[list[str], list[str]]:
    """The (prompt, answer) texts of a pool's rows (source task, document index), in its order."""
    from harness.suites.lm_training import task_pairs

    leaves = {leaf.task_name: leaf for leaf in tasks.leaves}
    prompts, answers = [], []
    for name in dict.fromkeys(table["source"]):  # the pool holds each task's documents together
        p, a = task_pairs(leaves[name], [d for s, d in zip(table["source"], table["doc"]) if s == name])
        prompts += p
        answers += a
    return prompts, answers


# lm-eval tasks' training splits -------------------------------------------------------------


def test_gsm8k_pairs_are_the_gsm8k_format(tiny_gsm8k):
    from harness.evaluation.lm_eval_tasks import build
    from harness.suites.lm_training import lm_eval_pool

    tasks = build("gsm8k", tiny_gsm8k)
    table = lm_eval_pool(tasks, explicit=False)
    rows = parquet_rows(tiny_gsm8k, "openai/gsm8k/main", "train")
    assert table["source"] == ["gsm8k"] * len(rows)
    assert table["doc"] == list(range(len(rows)))
    assert table["_example_id"] == list(range(len(rows)))
    prompts, answers = rendered(tasks, table)
    assert prompts == [f"Question: {r['question']}\nAnswer:" for r in rows]
    assert answers == [" " + r["answer"] for r in rows]


def check_arc_pairs(tasks, table, rows: list[dict]) -> None:
    assert len(rows) > 0
    assert table["source"] == ["arc_easy"] * len(rows)
    prompts, answers = rendered(tasks, table)
    assert prompts == [f"Question: {r['question']}\nAnswer:" for r in rows]
    assert answers == [" " + gold_text(r) for r in rows]


def test_multiple_choice_answers_are_the_gold_choice(tiny_arc):
    from harness.evaluation.lm_eval_tasks import build
    from harness.suites.lm_training import lm_eval_pool

    rows = parquet_rows(tiny_arc, "allenai/ai2_arc/ARC-Easy", "train")
    # The fixture's gold choices are not all first, and use both label styles ("A".. and "1"..).
    assert len({r["choices"]["label"].index(r["answerKey"]) for r in rows}) > 1
    tasks = build("arc_easy", tiny_arc)
    check_arc_pairs(tasks, lm_eval_pool(tasks, explicit=True), rows)


@needs_shared
def test_arc_easy_pairs_from_the_shared_mirror():
    from harness.evaluation.lm_eval_tasks import build
    from harness.suites.lm_training import lm_eval_pool

    rows = parquet_rows(SHARED, "allenai/ai2_arc/ARC-Easy", "train")
    tasks = build("arc_easy", SHARED)
    table = lm_eval_pool(tasks, explicit=True)
    assert len(table) == 2251
    check_arc_pairs(tasks, table, rows)


def test_a_named_task_without_a_training_split_is_refused(arc_and_gsm8k_without_arc_train):
    from harness.evaluation.lm_eval_tasks import build
    from harness.suites.lm_training import lm_eval_pool

    tasks = build("gsm8k,arc_easy", arc_and_gsm8k_without_arc_train)
    with pytest.raises(HarnessError, match=r"lm-eval task 'arc_easy' has no training split here"):
        lm_eval_pool(tasks, explicit=True)


def test_evaluated_tasks_without_a_training_split_are_skipped(arc_and_gsm8k_without_arc_train):
    from harness.evaluation.lm_eval_tasks import build
    from harness.suites.lm_training import lm_eval_pool

    tasks = build("arc_easy,gsm8k", arc_and_gsm8k_without_arc_train)
    table = lm_eval_pool(tasks, explicit=False)
    rows = parquet_rows(arc_and_gsm8k_without_arc_train, "openai/gsm8k/main", "train")
    assert table["source"] == ["gsm8k"] * len(rows)
    assert rendered(tasks, table)[0] == [f"Question: {r['question']}\nAnswer:" for r in rows]

    empty = lm_eval_pool(build("arc_easy", arc_and_gsm8k_without_arc_train), explicit=False)
    assert len(empty) == 0
    assert {"source", "doc"} <= set(empty.column_names)


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_lm_eval_rows_are_encoded_as_their_rendered_text(tiny_gsm8k, tiny_llama, train_on_prompt):
    """prepare_training of a pool's rows (rendered when used) encodes the gsm8k text itself."""
    from transformers import AutoTokenizer

    from harness.evaluation.lm_eval_tasks import build
    from harness.suites.lm_training import lm_eval_pool, prepare_training

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tasks = build("gsm8k", tiny_gsm8k)
    table = lm_eval_pool(tasks, explicit=False).select([3, 0, 7])
    rows = parquet_rows(tiny_gsm8k, "openai/gsm8k/main", "train")
    prepared = prepare_training(tokenizer, table, run_options(train_on_prompt), tasks)
    assert len(prepared.dataset) == 3
    assert prepared.token_labels
    for i, doc in enumerate([3, 0, 7]):
        prompt_ids = tokenizer(f"Question: {rows[doc]['question']}\nAnswer:")["input_ids"]
        answer_ids = tokenizer(" " + rows[doc]["answer"], add_special_tokens=False)["input_ids"]
        example = prepared.dataset[i]
        assert example["input_ids"] == prompt_ids + answer_ids + [tokenizer.eos_token_id]
        masked = prompt_ids if train_on_prompt else [-100] * len(prompt_ids)
        assert example["labels"] == masked + answer_ids + [tokenizer.eos_token_id]


# hub data sets ------------------------------------------------------------------------------


def test_alpaca_rows_use_the_alpaca_templates():
    from datasets import Dataset

    from harness.suites.lm_training import qa_pool

    rows = {
        "instruction": ["Add the numbers.", "Name a colour."],
        "input": ["2 and 3", ""],
        "output": ["5", "Blue"],
    }
    table = qa_pool(Dataset.from_dict(rows))
    assert table["prompt"] == [
        ALPACA_INPUT.format(instruction="Add the numbers.", input="2 and 3"),
        ALPACA_NO_INPUT.format(instruction="Name a colour."),
    ]
    assert table["prompt"][1] == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nName a colour.\n\n### Response:\n"
    )
    assert table["answer"] == ["5", "Blue"]
    assert table["source"] == ["alpaca", "alpaca"]

    no_input = qa_pool(Dataset.from_dict({"instruction": ["Say hi."], "output": ["Hi"]}))
    assert no_input["prompt"] == [ALPACA_NO_INPUT.format(instruction="Say hi.")]


@pytest.mark.parametrize(
    ("question", "answer"), [("question", "answer"), ("query", "response"), ("prompt", "completion")]
)
def test_question_answer_rows_use_the_gsm8k_format(question, answer):
    from datasets import Dataset

    from harness.suites.lm_training import qa_pool

    table = qa_pool(Dataset.from_dict({question: ["What is 2+3?", "And 4+4?"], answer: ["5\n#### 5", "#### 8"]}))
    assert table["prompt"] == ["Question: What is 2+3?\nAnswer:", "Question: And 4+4?\nAnswer:"]
    assert table["answer"] == [" 5\n#### 5", " #### 8"]
    assert table["source"] == [f"{question}/{answer}"] * 2


def test_other_columns_are_refused_with_the_expected_pairs():
    from datasets import Dataset

    from harness.suites.lm_training import qa_pool

    with pytest.raises(HarnessError) as info:
        qa_pool(Dataset.from_dict({"text": ["a"], "label": [0]}))
    message = str(info.value)
    assert "\n" not in message
    assert "['text', 'label']" in message
    for pair in ("instruction/output", "question/answer", "query/response", "prompt/completion"):
        assert pair in message


# where the loss is taken --------------------------------------------------------------------


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_join_example_labels(train_on_prompt):
    from harness.suites.causal_lm import join_example

    encoded = join_example([5, 6, 7], [8, 9], eos_id=2, max_length=16, train_on_prompt=train_on_prompt)
    assert encoded["input_ids"] == [5, 6, 7, 8, 9, 2]
    assert encoded["attention_mask"] == [1] * 6
    prompt_labels = [5, 6, 7] if train_on_prompt else [-100, -100, -100]
    assert encoded["labels"] == prompt_labels + [8, 9, 2]


def test_join_example_cuts_the_answer_in_both_modes():
    from harness.suites.causal_lm import join_example

    for train_on_prompt, labels in ((False, [-100, -100, -100, 8]), (True, [5, 6, 7, 8])):
        encoded = join_example([5, 6, 7], [8, 9], eos_id=2, max_length=4, train_on_prompt=train_on_prompt)
        assert encoded["input_ids"] == [5, 6, 7, 8]
        assert encoded["labels"] == labels


def training_table():
    from datasets import Dataset

    from harness.suites.lm_training import qa_pool

    return qa_pool(
        Dataset.from_dict(
            {
                "question": ["Tom has 2 apples and gets 3 more.", "Ann has 4 pears."],
                "answer": ["2 + 3 = 5\n#### 5", "#### 4"],
            }
        )
    )


def run_options(train_on_prompt=None, packing=False):
    options = {"packing": packing}
    if train_on_prompt is not None:
        options["train_on_prompt"] = train_on_prompt
    return SimpleNamespace(max_length=128, suite_options=options)


@pytest.mark.parametrize("train_on_prompt", [None, False, True])
def test_prepare_training_labels(tiny_llama, train_on_prompt):
    from transformers import AutoTokenizer

    from harness.suites.lm_training import prepare_training

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    table = training_table()
    prepared = prepare_training(tokenizer, table, run_options(train_on_prompt))
    assert prepared.token_labels
    assert prepared.references == table["answer"]
    assert len(prepared.dataset) == len(table)
    for example, prompt, answer in zip(prepared.dataset, table["prompt"], table["answer"]):
        prompt_ids = tokenizer(prompt)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        assert example["input_ids"] == prompt_ids + answer_ids + [tokenizer.eos_token_id]
        if train_on_prompt:
            assert example["labels"] == example["input_ids"]
        else:
            assert example["labels"] == [-100] * len(prompt_ids) + answer_ids + [tokenizer.eos_token_id]


def test_prepare_training_of_nothing_is_empty(tiny_llama):
    from transformers import AutoTokenizer

    from harness.suites.lm_training import prepare_training

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    empty = training_table().select([])
    prepared = prepare_training(tokenizer, empty, run_options(True))
    assert len(prepared.dataset) == 0
    assert set(prepared.dataset.column_names) == {"input_ids", "attention_mask", "labels"}
    assert prepared.references == []
    assert prepared.token_labels


# train_format -------------------------------------------------------------------------------


def test_describe_format_records_sources_template_and_loss(tiny_gsm8k):
    from datasets import Dataset

    from harness.evaluation.lm_eval_tasks import build
    from harness.suites.lm_training import describe_format, lm_eval_pool, qa_pool

    qa = training_table()
    assert describe_format(qa, run_options()) == {
        "sources": ["question/answer"],
        "template": "lm-eval gsm8k: Question: {question}\\nAnswer: {answer}",
        "loss_on": "answer",
    }
    assert describe_format(qa, run_options(True))["loss_on"] == "prompt and answer"
    assert describe_format(qa, run_options(False))["loss_on"] == "answer"

    alpaca = describe_format(qa_pool(Dataset.from_dict({"instruction": ["i"], "output": ["o"]})), run_options(True))
    assert alpaca["sources"] == ["alpaca"]
    assert alpaca["template"] == "Alpaca (LLM-Adapters generate_prompt): " + ALPACA_INPUT.replace("\n", "\\n")
    assert alpaca["loss_on"] == "prompt and answer"

    tasks = describe_format(lm_eval_pool(build("gsm8k", tiny_gsm8k), explicit=False), run_options())
    assert tasks == {
        "sources": ["gsm8k"],
        "template": "each lm-eval task's 0-shot context, target delimiter and gold answer",
        "loss_on": "answer",
    }

    nothing = describe_format(qa.select([]), run_options())
    assert nothing == {"sources": [], "template": None, "loss_on": "answer"}
