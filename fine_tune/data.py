"""Training examples in the study's prompt formats, and token ids with the loss on the response only.

A training prompt is the messages evaluation sends for the same kind of task (the Alpaca template; for gsm8k the
math system prompt without its answer-format sentence, as the sdft scripts train), rendered through the model's
chat template exactly as `bench eval` renders prompts; the response follows, closed by the end-of-turn token.
Alpaca-style records with a non-empty `input` get it on the line after the instruction, as LLaMA-Factory (which the
sdft repository trains with) joins them; LIMA's multi-turn `history` (29 of 1,029 records) is not used.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.data import read_jsonl, sha256_file
from bench.types import ALPACA_TEMPLATE, BenchError, Message
from bench.generation.models import render_prompt
from tasks.alpaca import ALPACA_SYSTEM, ALPACA_USER
from tasks.math import MATH_TRAIN_SYSTEM

IGNORE_INDEX = -100  # label of a token the loss skips (the prompt, and padding)


@dataclass(frozen=True)
class TrainExample:
    id: str
    messages: tuple[Message, ...]  # the prompt: system and user turns
    response: str  # what the model learns to answer (the reference, or SDFT's accepted rewrite)
    reference: str  # the dataset's own answer
    instruction: str  # the question or instruction alone (SDFT's distillation prompt quotes it)
    template: str = "chat"  # or ALPACA_TEMPLATE: sent as plain text in the "study" prompt format


def math_example(record: dict[str, Any], index: int) -> TrainExample:
    messages = ({"role": "system", "content": MATH_TRAIN_SYSTEM}, {"role": "user", "content": record["question"]})
    return TrainExample(str(index), messages, record["answer"], record["answer"], record["question"])


def alpaca_example(record: dict[str, Any], index: int) -> TrainExample:
    instruction = record["instruction"]
    if record.get("input"):
        instruction = f"{instruction}\n{record['input']}"
    messages = ({"role": "system", "content": ALPACA_SYSTEM},
                {"role": "user", "content": ALPACA_USER.format(instruction=instruction)})
    return TrainExample(str(index), messages, record["output"], record["output"], instruction, ALPACA_TEMPLATE)


TRAIN_TASKS: dict[str, tuple[str, Callable[[dict[str, Any], int], TrainExample]]] = {
    "gsm8k": ("gsm8k/train.jsonl", math_example),
    "openfunction": ("openfunction/train.jsonl", alpaca_example),
    "alpaca": ("alpaca/train.jsonl", alpaca_example),
    "dolly": ("dolly/train.jsonl", alpaca_example),
    "lima": ("lima/train.jsonl", alpaca_example),
}


TRAINED_CAPABILITY = {"gsm8k": "math", "openfunction": "tooluse", "alpaca": "helpfulness", "dolly": "helpfulness",
                      "lima": "helpfulness"}  # what a comparison counts as gain rather than forgetting


def load_train_examples(task: str, data_dir: Path | None, limit: int | None = None) -> tuple[list[TrainExample], str]:
    """The task's training examples (the first `limit`) and the sha256 of the file they came from."""
    if task not in TRAIN_TASKS:
        raise BenchError(f"unknown training task {task!r}; choose from: {', '.join(TRAIN_TASKS)}")
    if data_dir is None:
        raise BenchError(f"training task {task}: needs a data directory (--data-dir or $BENCH_DATA_DIR)")
    relative, to_example = TRAIN_TASKS[task]
    path = data_dir / relative
    if not path.is_file():
        raise BenchError(f"training task {task}: dataset not found: {path}")
    examples = []
    for index, (lineno, record) in enumerate(read_jsonl(path)):
        try:
            examples.append(to_example(record, index))
        except KeyError as e:
            raise BenchError(f"{path}:{lineno}: missing field {e} for training task {task}") from None
    return examples[:limit], sha256_file(path)


def tokenize(tokenizer: Any, messages: tuple[Message, ...], response: str, max_length: int,
             plain: bool = False) -> dict[str, list[int]]:
    """input_ids and labels: the prompt's tokens (rendered as `bench eval` renders them; `plain` as in
    render_prompt) are IGNORE_INDEX, the response's and the closing end-of-turn token are learned. Prompt and
    response are tokenized apart, so the boundary is exact. Truncated from the right to `max_length`."""
    prompt = render_prompt(tokenizer, list(messages), plain)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
