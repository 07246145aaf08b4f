"""Causal-LM training examples: a prompt and its answer, with the loss on the answer only.

The prompt is encoded as lm-evaluation-harness encodes a generation context (the
tokenizer's default special tokens), the answer after it without special tokens and
followed by EOS, so the model is trained on exactly the token sequence it later
continues at evaluation. Labels are -100 on every prompt token, so no loss is taken there.

Batches are padded on the right (labels -100, attention mask 0) or, with packing,
flattened into one row whose position ids restart at each example: transformers then
masks attention block-diagonally, so packing changes speed, not the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.core.errors import HarnessError
from harness.suites.base import Prepared

IGNORE_INDEX = -100  # the label cross-entropy skips (torch's ignore_index default)


@dataclass(frozen=True)
class PromptFormat:
    """Question and answer as text; the default is lm-eval's gsm8k (`doc_to_text`, `target_delimiter`)."""

    template: str = "Question: {question}\nAnswer:"
    delimiter: str = " "

    def prompt(self, question: str) -> str:
        return self.template.format(question=question)


def encode_example(tokenizer, prompt: str, answer: str, max_length: int, delimiter: str = " ") -> dict[str, list[int]]:
    """input_ids = prompt + answer + EOS, labels = -100 on the prompt, the answer tokens after it.

    An answer that does not fit in `max_length` is cut (its loss covers what is left); a
    prompt that leaves no room for any answer token is bad input."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(delimiter + answer, add_special_tokens=False)["input_ids"]
    return join_example(prompt_ids, answer_ids, tokenizer.eos_token_id, max_length)


def join_example(
    prompt_ids: list[int], answer_ids: list[int], eos_id: int, max_length: int, train_on_prompt: bool = False
) -> dict[str, list[int]]:
    answer_ids = answer_ids + [eos_id]
    if len(prompt_ids) >= max_length:
        raise PromptTooLong(len(prompt_ids), max_length)
    input_ids = (prompt_ids + answer_ids)[:max_length]
    masked = prompt_ids if train_on_prompt else [IGNORE_INDEX] * len(prompt_ids)
    labels = (masked + answer_ids)[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


class PromptTooLong(HarnessError):
    def __init__(self, tokens: int, limit: int):
        super().__init__(f"a prompt of {tokens} tokens leaves no room for its answer within {limit} tokens")
        self.tokens, self.limit = tokens, limit


def collator(tokenizer, packing: bool):
    """Right padding with -100 labels, or packing into one row with restarting position ids
    (both transformers' own collators)."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if not packing:
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True, return_tensors="pt")
    flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)

    def pack(examples: list[dict[str, Any]]):
        # Without an attention mask and a KV cache, transformers reads sequence boundaries from
        # the position ids and masks attention block-diagonally (masking_utils, packed sequences).
        batch = flatten([{k: v for k, v in e.items() if k != "attention_mask"} for e in examples])
        batch["use_cache"] = False
        return batch

    return pack


def prepare_examples(
    tokenizer,
    prompts: list[str],
    answers: list[str],
    max_length: int,
    packing: bool,
    delimiter: str = " ",
    what: str = "training",
    train_on_prompt: bool = False,
) -> Prepared:
    """Encode (prompt, answer) pairs; a prompt too long for `max_length` is a one-line error
    that names the example. `train_on_prompt`: the loss covers the prompt's tokens too."""
    from datasets import Dataset

    columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    prompt_ids = tokenizer(list(prompts))["input_ids"]  # batched: the fast tokenizer's threads
    answer_ids = tokenizer([delimiter + a for a in answers], add_special_tokens=False)["input_ids"]
    for i, (p_ids, a_ids) in enumerate(zip(prompt_ids, answer_ids)):
        try:
            encoded = join_example(p_ids, a_ids, tokenizer.eos_token_id, max_length, train_on_prompt)
        except PromptTooLong as exc:
            raise HarnessError(
                f"{what} example {i}: its prompt is {exc.tokens} tokens, and --max-length is {exc.limit}; "
                f"raise --max-length (up to the model's context window) or drop long examples"
            ) from None
        for key, value in encoded.items():
            columns[key].append(value)
    return Prepared(Dataset.from_dict(columns), collator(tokenizer, packing), list(answers), token_labels=True)
