"""Training examples for causal LMs: (prompt, answer) pairs from lm-eval tasks or a hub data set.

Two sources, one table (columns prompt, answer, source) so that the training subset is drawn the
same way from either:
- lm-eval tasks (`train_data=arc_easy,social_iqa`, or by default the evaluated tasks): each task's
  training split in the exact form lm-eval scores it in, its 0-shot context (`fewshot_context`:
  description and `doc_to_text`) as the prompt and the target delimiter and gold answer (the gold
  choice of a multiple-choice task, the target of a generation task) as the answer. A mixture of the
  commonsense tasks' training splits, what Commonsense170K was built from, is such a list.
- a hub data set: Alpaca-shaped rows (instruction, optional input, output: Commonsense170K,
  math_10k, Alpaca) in the Alpaca template LLM-Adapters trains with; question/answer pairs
  (GSM8K, MetaMathQA's query/response) in lm-eval's gsm8k format.
The loss is on the answer's tokens (and EOS) only, unless `train_on_prompt`; the row's
`train_format` says which template and which rule a run used.
"""

from __future__ import annotations

from typing import Any

from harness.core.errors import HarnessError
from harness.suites.base import Prepared
from harness.suites.causal_lm import PromptFormat, prepare_examples

TASK_COLUMN = "source"
DOC_COLUMN = "doc"  # an lm-eval task's training document, by its index in the split

# Stanford Alpaca's prompt (tatsu-lab/stanford_alpaca train.py PROMPT_DICT), which LLM-Adapters'
# finetune.py `generate_prompt` uses for Commonsense170K and math_10k.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
# Question/answer column pairs, in lm-eval's gsm8k format (harness.suites.causal_lm.PromptFormat).
QA_COLUMNS = (("question", "answer"), ("query", "response"), ("prompt", "completion"))


def _table(prompts: list[str], answers: list[str], sources: list[str]):
    from datasets import Dataset

    from harness.suites.base import with_example_ids

    return with_example_ids(Dataset.from_dict({"prompt": prompts, "answer": answers, TASK_COLUMN: sources}), None)


def task_pair(task, doc) -> tuple[str, str]:
    """One document of an lm-eval task as (prompt, answer) in the form lm-eval scores it."""
    output = task.config.output_type
    delimiter = task.config.target_delimiter
    target = task.doc_to_target(doc)
    if output == "multiple_choice":
        choices = task.doc_to_choice(doc)
        text = task.doc_to_text(doc)
        if isinstance(text, int):  # the context is one of the choices (partial scoring: winogrande)
            return choices[text], delimiter + str(target)
        gold = target[0] if isinstance(target, list) else target
        answer = choices[gold] if isinstance(gold, int) else str(gold)
    else:
        answer = target if isinstance(target, str) else str(target)
    return task.fewshot_context(doc=doc, num_fewshot=0), delimiter + answer


def task_pairs(task, rows=None) -> tuple[list[str], list[str]]:
    """An lm-eval task's training documents (`rows`: their indices; None: all) as (prompt, answer)."""
    docs = task.training_docs()
    pairs = [task_pair(task, docs[int(i)]) for i in (range(len(docs)) if rows is None else rows)]
    return [p for p, _ in pairs], [a for _, a in pairs]


def check_trainable(task) -> None:
    output = task.config.output_type
    if output not in ("multiple_choice", "generate_until"):
        raise HarnessError(
            f"lm-eval task {task.task_name!r} ({output}) has no answers to train on; train on a task with "
            "answers (multiple choice or generation) or a data set by hub id"
        )


def lm_eval_pool(tasks, explicit: bool):
    """Every training document of the tasks of `tasks` (lm_eval_tasks.LmEvalTasks) that have a
    training split here, as (source task, document index): formatting waits for the subset a run
    draws (`prepare_training`), since lm-eval renders a few documents a millisecond. A task named to
    train on without a training split is bad input; the evaluated tasks' own training data (not
    `explicit`) is what of it exists, perhaps none (a run that needs none)."""
    from datasets import Dataset

    from harness.suites.base import with_example_ids

    sources: list[str] = []
    rows: list[int] = []
    for leaf in tasks.leaves:
        if not leaf.has_training_docs():
            if explicit:
                raise HarnessError(
                    f"lm-eval task {leaf.task_name!r} has no training split here; name tasks that do "
                    "(ARC, SIQA, OpenBookQA in the mirror) or a data set by hub id"
                )
            continue
        if explicit:
            check_trainable(leaf)
        elif leaf.config.output_type not in ("multiple_choice", "generate_until"):
            continue  # a perplexity task's pages are no question/answer pairs
        count = len(leaf.training_docs())
        sources += [leaf.task_name] * count
        rows += range(count)
    table = Dataset.from_dict({TASK_COLUMN: sources, DOC_COLUMN: rows})
    return with_example_ids(table, None)


def qa_pool(dataset):
    """A hub data set's rows as (prompt, answer) pairs: Alpaca-shaped, else a question/answer pair."""
    columns = set(dataset.column_names)
    if {"instruction", "output"} <= columns:
        inputs = dataset["input"] if "input" in columns else [""] * len(dataset)
        prompts = [
            (ALPACA_WITH_INPUT if extra else ALPACA).format(instruction=instruction, input=extra)
            for instruction, extra in zip(dataset["instruction"], inputs)
        ]
        return _table(prompts, list(dataset["output"]), ["alpaca"] * len(prompts))
    for question, answer in QA_COLUMNS:
        if {question, answer} <= columns:
            fmt = PromptFormat()
            prompts = [fmt.prompt(q) for q in dataset[question]]
            return _table(
                prompts, [fmt.delimiter + a for a in dataset[answer]], [f"{question}/{answer}"] * len(prompts)
            )
    known = "; ".join("/".join(p) for p in (("instruction", "output"), *QA_COLUMNS))
    raise HarnessError(f"training data has columns {dataset.column_names}; expected one of ({known})")


def describe_format(dataset, run) -> dict[str, Any]:
    """The row's train_format: where the prompts come from, their template, and where the loss is."""
    sources = sorted(set(dataset[TASK_COLUMN])) if len(dataset) else []
    if sources == ["alpaca"]:
        template = "Alpaca (LLM-Adapters generate_prompt): " + ALPACA_WITH_INPUT.replace("\n", "\\n")
    elif sources and all("/" in s for s in sources):
        template = "lm-eval gsm8k: " + PromptFormat().template.replace("\n", "\\n") + " {answer}"
    else:
        template = "each lm-eval task's 0-shot context, target delimiter and gold answer"
    return {
        "sources": sources,
        "template": template if sources else None,
        "loss_on": "prompt and answer" if run.suite_options.get("train_on_prompt") else "answer",
    }


class RenderedOnUse:
    """Training examples of lm-eval documents, rendered and encoded when the loader asks for one.

    lm-eval renders a document's prompt in about 3 ms (its Jinja templates), so rendering a 40,000-
    document mixture up front would cost minutes of a run that may train on a few hundred of them.
    A prompt too long for --max-length is the same one-line error, raised when it is met."""

    def __init__(self, tokenizer, tasks, sources: list[str], rows: list[int], max_length: int, train_on_prompt: bool):
        self.tokenizer, self.max_length, self.train_on_prompt = tokenizer, max_length, train_on_prompt
        self.leaves = {leaf.task_name: leaf for leaf in tasks.leaves}
        self.docs = {name: self.leaves[name].training_docs() for name in set(sources)}
        self.sources, self.rows = sources, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, str):  # a column, as a datasets.Dataset gives it (a token budget's mean length)
            return [self[i][index] for i in range(len(self))]
        source = self.sources[index]
        prompt, answer = task_pair(self.leaves[source], self.docs[source][int(self.rows[index])])
        return encode_pair(self.tokenizer, prompt, answer, self.max_length, self.train_on_prompt, index)


def encode_pair(tokenizer, prompt: str, answer: str, max_length: int, train_on_prompt: bool, index: int) -> dict:
    from harness.suites.causal_lm import PromptTooLong, join_example

    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    try:
        return join_example(prompt_ids, answer_ids, tokenizer.eos_token_id, max_length, train_on_prompt)
    except PromptTooLong as exc:
        raise HarnessError(
            f"training example {index}: its prompt is {exc.tokens} tokens, and --max-length is {exc.limit}; "
            f"raise --max-length (up to the model's context window) or drop long examples"
        ) from None


def prepare_training(tokenizer, dataset, run, tasks=None) -> Prepared:
    """The pairs as token sequences, the loss on the answer (and EOS) unless `train_on_prompt`:
    encoded now for a hub data set's table, when used for lm-eval documents (RenderedOnUse)."""
    from harness.suites.causal_lm import collator

    options = run.suite_options
    on_prompt = options.get("train_on_prompt", False)
    if len(dataset) == 0:
        from datasets import Dataset

        empty = Dataset.from_dict({"input_ids": [], "attention_mask": [], "labels": []})
        return Prepared(empty, collator(tokenizer, options["packing"]), [], token_labels=True)
    if "prompt" not in dataset.column_names:
        rendered = RenderedOnUse(
            tokenizer, tasks, list(dataset[TASK_COLUMN]), list(dataset[DOC_COLUMN]), run.max_length, on_prompt
        )
        return Prepared(rendered, collator(tokenizer, options["packing"]), [], token_labels=True)
    return prepare_examples(
        tokenizer,
        list(dataset["prompt"]),
        list(dataset["answer"]),
        run.max_length,
        options["packing"],
        delimiter="",
        train_on_prompt=on_prompt,
    )
